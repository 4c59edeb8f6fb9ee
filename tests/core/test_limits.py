"""The bridge's own per-user limits, below the gatekeeper's: past them nothing goes to
the gatekeeper, each message gets a failed status, and the user one notice."""

from __future__ import annotations

from bridge.config import LimitsConfig
from bridge.core.commands import CommandState, dispatch
from bridge.core.limits import SlidingWindow, UserLimits
from tests.core.conftest import ALICE, Harness


def test_a_sliding_window_forgets_what_is_older_than_it() -> None:
    now = [0.0]
    window = SlidingWindow(2, 60, lambda: now[0])
    assert window.allow("a") and window.allow("a") and not window.allow("a")
    assert window.allow("b"), "per key"
    assert window.retry_in("a") == 60
    now[0] = 60.0
    assert window.allow("a")


async def test_a_flood_is_stopped_at_the_users_own_limit(harness: Harness) -> None:
    harness.core.limits = UserLimits(LimitsConfig(messages_per_minute=3, first_contacts_per_day=50))
    room = await harness.room()
    events = [harness.outgoing(room, f"m{i}") for i in range(6)]
    await harness.until(lambda: len(harness.gatekeeper.delivered) == 3)
    await harness.until(lambda: len([e for e, r in harness.matrix.statuses if r.reason == "m.no_permission"]) == 3)
    await harness.core.settle()
    assert [s.text for s in harness.gatekeeper.delivered] == ["m0", "m1", "m2"]
    refused = {e for e, r in harness.matrix.statuses if r.reason == "m.no_permission"}
    assert refused == set(events[3:])
    told = [text for room_id, text in harness.matrix.notices if room_id == room and "faster than" in text]
    assert len(told) == 1, "one notice for the flood"


async def test_first_contacts_are_limited_per_day(harness: Harness) -> None:
    harness.core.limits = UserLimits(LimitsConfig(messages_per_minute=300, first_contacts_per_day=2))
    peers = iter(f"{n}@native" for n in range(100, 200))

    async def lookup(mxid: str, uvid: str) -> str:
        return next(peers)

    harness.gatekeeper.lookup = lookup  # type: ignore[method-assign]
    said = []
    for number in ("+4915100000001", "+4915100000002", "+4915100000003"):
        before = len(harness.matrix.notices)
        await dispatch(harness.core, CommandState(), "!management:test", ALICE, f"start-chat {number}", None)
        said += [text for _, text in harness.matrix.notices[before:]]
    assert [s.startswith("Opened a chat with") for s in said[:2]] == [True, True]
    assert "as many as this bridge allows in a day" in said[2]
    assert len(await harness.core.portals.of_receiver(ALICE)) == 2
