"""docker-compose.example.yml, without a Docker engine: its services are wired as its
comments tell the admin to configure the bridge, and those settings are ones the bridge
accepts (a rehearsal that the bridge would refuse to start is no rehearsal)."""

from __future__ import annotations

import re
from pathlib import Path

from ruamel.yaml import YAML

from bridge.config import EXAMPLE_PATH, merge_into_example, parse_config, read_yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.example.yml"


def _compose() -> dict:
    return YAML(typ="safe").load(COMPOSE.read_text())


def _advised_settings() -> dict[str, str]:
    """The `key: value` pairs of the comment block that says how to edit config.yaml."""
    text = COMPOSE.read_text()
    block = text[text.index("# The bridge's config.yaml for this file:") : text.index("# The sandbox shares")]
    pairs = re.findall(r"([a-z_]+\.[a-z_.]+): (\S+)", block)
    return dict(pairs)


def test_every_service_an_admin_rehearses_with_is_there() -> None:
    services = _compose()["services"]
    assert set(services) == {"postgres", "synapse", "bridge", "sandbox", "prometheus"}
    assert services["bridge"]["build"] == "." and services["sandbox"]["build"] == "."
    # The sandbox shares the bridge's network: the bridge speaks plain http to loopback only.
    assert services["sandbox"]["network_mode"] == "service:bridge"
    assert services["sandbox"]["entrypoint"][:3] == ["python", "-m", "bridge.sandbox"]
    # Synapse reads the registration the bridge writes into its volume.
    assert "./data/bridge:/bridge:ro" in services["synapse"]["volumes"]
    assert "./data/bridge:/data" in services["bridge"]["volumes"]


def test_the_advised_config_is_one_the_bridge_accepts() -> None:
    settings = _advised_settings()
    data = read_yaml(EXAMPLE_PATH)
    for dotted, value in settings.items():
        section, _, key = dotted.partition(".")
        if dotted == "gatekeeper.static_key":
            value = ""  # the sandbox's own; empty is allowed on loopback
        elif value in ("true", "false"):
            value = value == "true"
        data[section][key] = value
    config = parse_config(merge_into_example(data, read_yaml(EXAMPLE_PATH)), require_tokens=False)
    postgres = _compose()["services"]["postgres"]["environment"]
    assert config.database_uri == (
        f"postgres://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}@postgres/{postgres['POSTGRES_DB']}"
    )
    assert config.appservice_address == "http://bridge:29318"


def test_prometheus_scrapes_the_bridges_metrics_port() -> None:
    scrape = YAML(typ="safe").load((ROOT / "contrib" / "prometheus.yml").read_text())
    targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    port = _advised_settings()["metrics.listen"].rsplit(":", 1)[1]
    assert targets == [f"bridge:{port}"]
    volume = _compose()["services"]["prometheus"]["volumes"][0]
    assert volume.startswith("./contrib/prometheus.yml:")
