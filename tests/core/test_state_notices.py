"""What the bot says about a user's connection: lasting trouble at once, a retried
disconnection only once it has lasted, never a notice per flap, and each with its state."""

from __future__ import annotations

import asyncio
from typing import Any

from bridge.config import StateNoticesConfig
from bridge.core.state_notices import StateNotices
from bridge.gatekeeper.state import ConnectionState, StateChange
from bridge.gip.errors import GipErrorCode
from devstack.logins import enlisted_login

DOWN = StateChange(ConnectionState.TRANSIENT_DISCONNECT, GipErrorCode.UNAVAILABLE, "gatekeeper down", retry_in=1)
CONNECTING = StateChange(ConnectionState.CONNECTING, None, "Connecting to the gatekeeper.")
UP = StateChange(ConnectionState.CONNECTED, None, "Connected to the gatekeeper.")
SUSPENDED = StateChange(ConnectionState.SUSPENDED, GipErrorCode.FORBIDDEN, "The gatekeeper suspended your account.")


class Room:
    """The management room: what the bot said, and the states the notices carried."""

    def __init__(self) -> None:
        self.said: list[tuple[str, dict[str, Any]]] = []

    def tell(self, login: Any, text: str, state: dict[str, Any]) -> None:
        self.said.append((text, state))

    @property
    def states(self) -> list[str]:
        return [state["state_event"] for _, state in self.said]


def notices(level: str = "errors", delay: float = 0.2) -> tuple[StateNotices, Room, dict[str, StateChange]]:
    room, current = Room(), {}
    return StateNotices(StateNoticesConfig(level, delay), room.tell, current.get), room, current


async def walk(notices: StateNotices, current: dict[str, StateChange], login: Any, *changes: StateChange) -> None:
    for change in changes:
        current[login.mxid] = change
        notices.changed(login, change)
        await asyncio.sleep(0.01)


async def test_a_connection_that_flaps_says_nothing() -> None:
    state, room, current = notices()
    login = enlisted_login("@alice:example.org", management_room="!m:example.org")
    for _ in range(5):
        await walk(state, current, login, DOWN, CONNECTING, UP)
    await asyncio.sleep(0.3)
    assert room.said == []


async def test_a_disconnection_that_lasts_is_told_once_then_its_end() -> None:
    state, room, current = notices()
    login = enlisted_login("@alice:example.org", management_room="!m:example.org")
    await walk(state, current, login, DOWN, CONNECTING, DOWN, CONNECTING)
    await asyncio.sleep(0.3)
    await walk(state, current, login, DOWN, CONNECTING)
    await asyncio.sleep(0.3)
    assert room.states == ["TRANSIENT_DISCONNECT"], "one notice for the whole outage"
    text, bridge_state = room.said[0]
    assert "unavailable" in text and "keeps retrying" in text
    assert bridge_state["error"] == "dma-transient" and bridge_state["remote_id"] == login.iid
    await walk(state, current, login, UP)
    assert room.states == ["TRANSIENT_DISCONNECT", "CONNECTED"]
    assert "again" in room.said[-1][0]
    # The next outage is timed from its own start.
    await walk(state, current, login, DOWN, UP)
    await asyncio.sleep(0.3)
    assert len(room.said) == 2


async def test_a_lasting_problem_is_told_at_once() -> None:
    state, room, current = notices(delay=60)
    login = enlisted_login("@alice:example.org", management_room="!m:example.org")
    await walk(state, current, login, DOWN, SUSPENDED)
    assert room.said[0][0] == SUSPENDED.message
    assert room.said[0][1]["state_event"] == "BAD_CREDENTIALS" and room.said[0][1]["error"] == "dma-suspended"
    await walk(state, current, login, CONNECTING, UP)
    assert room.states == ["BAD_CREDENTIALS", "CONNECTED"]
    state.close()


async def test_levels_all_and_none() -> None:
    login = enlisted_login("@alice:example.org", management_room="!m:example.org")
    every, room, current = notices("all", delay=60)
    await walk(every, current, login, CONNECTING, UP, DOWN)
    assert room.states == ["CONNECTING", "CONNECTED", "TRANSIENT_DISCONNECT"]
    every.close()
    silent, room, current = notices("none", delay=0)
    await walk(silent, current, login, DOWN, SUSPENDED, UP)
    await asyncio.sleep(0.05)
    assert room.said == []
