"""Puppet names for both gatekeeper profiles."""

from __future__ import annotations

import pytest

from bridge.config import EXAMPLE_PATH, parse_config, read_yaml
from bridge.core.bridge import BridgeCore
from bridge.db.database import create_database
from bridge.db.sealed import Sealer
from bridge.db.stores import Stores


def core_for(profile: str) -> BridgeCore:
    data = read_yaml(EXAMPLE_PATH)
    data["gatekeeper"]["profile"] = profile
    data["appservice"]["as_token"] = data["appservice"]["hs_token"] = "x" * 32
    data["encryption_at_rest"]["key"] = "A" * 43 + "="
    # The stores only hold the (unstarted) database; naming needs no query.
    stores = Stores.create(create_database("sqlite:///:memory:"), Sealer(bytes(32)))
    return BridgeCore(parse_config(data), stores, None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("profile", "uvid", "name", "localpart"),
    [
        ("whatsapp", "+4915112345678", "+49 1511 2345678", "dma_=2b4915112345678"),
        ("messenger", "jane.doe", "jane.doe", "dma_jane.doe"),
        ("whatsapp", None, "WhatsApp user 6789", None),
        ("messenger", None, "Messenger user 6789", None),
    ],
)
def test_puppets_are_named_after_the_uvid(profile: str, uvid: str | None, name: str, localpart: str | None) -> None:
    core = core_for(profile)
    assert core.display_name(uvid, "123456789@native") == name
    if localpart is not None:
        assert core.config.puppet_localpart(uvid) == localpart
    assert core.network == {"whatsapp": "WhatsApp", "messenger": "Messenger"}[profile]
