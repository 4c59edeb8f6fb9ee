"""The Grafana dashboard shipped in contrib/ asks only for series the bridge exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bridge.metrics import TO_GATEKEEPER, Metrics

DASHBOARD = Path(__file__).resolve().parents[1] / "contrib" / "grafana-dashboard.json"


async def test_every_series_of_the_dashboard_is_exported() -> None:
    metrics = Metrics()
    # Touch each labelled series once so that its samples appear.
    metrics.bridged(TO_GATEKEEPER, "text", 0.1)
    metrics.failed(TO_GATEKEEPER, "text")
    metrics.refused("429")
    metrics.undecryptable("matrix")
    metrics.retry_receipt("sent")
    metrics.pushed()
    metrics.connections.labels("connected").set(1)
    metrics.logins.labels("enlisted").set(1)
    exported = {
        sample.name
        for family in text_string_to_metric_families((await metrics.exposition()).decode())
        for sample in family.samples
    }
    panels = json.loads(DASHBOARD.read_text())["panels"]
    asked = {
        name
        for panel in panels
        for target in panel["targets"]
        for name in re.findall(r"\b(?:dma|bridge)_[a-z_]+\b", target["expr"])
    }
    assert asked and asked <= exported, asked - exported
