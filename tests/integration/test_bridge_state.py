"""The bridge state pull endpoint, as mautrix bridges serve it."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.conftest import Stack
from tests.integration.test_bridge import log_in

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_the_state_of_the_bridge_and_of_a_login_can_be_pulled(stack: Stack) -> None:
    config = stack.bridge.config
    url = f"{config.appservice_address}/_matrix/app/com.beeper.bridge_state"
    alice = await stack.user()
    headers = {"Authorization": f"Bearer {config.hs_token}"}
    async with stack.http.post(url, params={"user_id": alice.mxid}, headers=headers) as response:
        assert response.status == 200
        before = await response.json()
    assert before["bridgeState"]["state_event"] == "RUNNING" and before["remoteState"] == {}

    await log_in(stack, alice)
    login = await stack.bridge.core.logins.get(alice.mxid)
    async with stack.http.get(url, params={"user_id": alice.mxid}, headers=headers) as response:
        state = (await response.json())["remoteState"][login.iid]
    assert state["state_event"] == "CONNECTED" and state["ttl"] == 21600 and state["remote_name"] == login.uvid

    # The gatekeeper suspends the user (its connection is closed with 403).
    await stack.sandbox.control("POST", f"/partners/{login.iid}/suspend", {"suspended": True})
    for _ in range(100):
        async with stack.http.get(url, params={"user_id": alice.mxid}, headers=headers) as response:
            state = (await response.json())["remoteState"][login.iid]
        if state["state_event"] != "CONNECTED":
            break
        await asyncio.sleep(0.1)
    assert state["state_event"] == "BAD_CREDENTIALS" and state["error"] == "dma-suspended" and state["ttl"] == 3600
    assert "suspended" in state["message"]

    for bad in ({}, {"Authorization": "Bearer wrong"}):
        async with stack.http.get(url, params={"user_id": alice.mxid}, headers=bad) as response:
            assert response.status == 401
    await stack.sandbox.control("POST", f"/partners/{login.iid}/suspend", {"suspended": False})
    await alice.close()
