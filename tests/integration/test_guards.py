"""Strangers on the homeserver get nothing: the bot declines their invites, and events
of rooms that are neither portals nor management rooms are dropped unstored."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import pytest

from bridge.config import PermissionLevel
from tests.integration.conftest import Stack
from tests.integration.test_durability import put_transaction

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_the_bot_declines_an_invite_from_someone_not_allowed(stack: Stack) -> None:
    stranger = await stack.user()
    connector = stack.bridge.matrix
    before = connector.config
    connector.config = dataclasses.replace(
        before, permissions={**before.permissions, stranger.mxid: PermissionLevel.NONE}
    )
    try:
        room = await stranger.create_dm(connector.bot_mxid)
        for _ in range(100):
            members = await stranger.client.get_joined_members(room)
            state = await stranger.client.get_state_event(room, "m.room.member", connector.bot_mxid)
            if state.get("membership") == "leave":
                break
            await asyncio.sleep(0.1)
        assert state.get("membership") == "leave", "the invite was declined"
        assert connector.bot_mxid not in members
    finally:
        connector.config = before
        await stranger.close()


async def test_events_of_unrelated_rooms_are_not_stored(stack: Stack) -> None:
    event_id = f"$stranger-{uuid.uuid4().hex}"
    encrypted = {
        "type": "m.room.encrypted",
        "room_id": "!nobodys-room:localhost",
        "sender": "@someone:localhost",
        "event_id": event_id,
        "origin_server_ts": 1,
        "content": {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AAAA", "session_id": "x", "device_id": "D"},
    }
    dropped = stack.bridge.matrix.intake.dropped
    assert await put_transaction(stack, f"guards-{uuid.uuid4().hex}", {"events": [encrypted]}) == 200
    rows = await stack.bridge.core.db.fetch("SELECT id FROM matrix_events WHERE event_id = $1", event_id)
    assert rows == [], "not stored, so no status, no task, no key request"
    assert stack.bridge.matrix.intake.dropped == dropped + 1
