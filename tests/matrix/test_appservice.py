"""The transaction endpoint compares the homeserver's token in constant time."""

from __future__ import annotations

import hmac

import pytest
from aiohttp.test_utils import make_mocked_request

from bridge.matrix import appservice
from bridge.matrix.appservice import BridgeAppService


@pytest.mark.parametrize(("header", "accepted"), [("Bearer right-token", True), ("Bearer wrong-token", False)])
def test_the_hs_token_is_compared_in_constant_time(monkeypatch, header: str, accepted: bool) -> None:
    compared: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return original(a, b)

    monkeypatch.setattr(appservice.hmac, "compare_digest", recording)
    service = BridgeAppService.__new__(BridgeAppService)
    service.hs_token = "right-token"
    request = make_mocked_request("PUT", "/_matrix/app/v1/transactions/1", headers={"Authorization": header})
    assert service._check_token(request) is accepted
    assert compared == [(header.removeprefix("Bearer ").encode(), b"right-token")]
