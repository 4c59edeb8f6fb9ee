"""Bot commands guarded: a portal is its owner's, a revoked user is told and no longer
bridged but may still erase their data, and logout erases whatever the gatekeeper says."""

from __future__ import annotations

import dataclasses

from bridge.config import PermissionLevel
from bridge.core.commands import CommandState, dispatch
from bridge.db.logins import LoginState
from bridge.gip.errors import GipError, GipErrorCode
from tests.core.conftest import ALICE, PEER, Harness

MALLORY = "@mallory:test"
ADMIN = "@admin:test"


async def _command(harness: Harness, room_id: str, sender: str, text: str) -> list[str]:
    before = len(harness.matrix.notices)
    portal = await harness.core.portals.by_room(room_id)
    await dispatch(harness.core, CommandState(), room_id, sender, text, portal)
    return [text for _, text in harness.matrix.notices[before:]]


async def test_only_the_owner_or_an_admin_steers_a_portal(harness: Harness) -> None:
    room = await harness.room()
    said = await _command(harness, room, MALLORY, "delete-portal")
    assert said == ["Only the owner of this chat (or a bridge admin) can use commands here."]
    assert await harness.core.portals.by_room(room) is not None, "the portal is still there"
    said = await _command(harness, room, ADMIN, "block")
    assert said == ["Only the owner of this chat (or a bridge admin) can use commands here."], (
        "not on their own account"
    )
    await _command(harness, room, ADMIN, "delete-portal")
    assert await harness.core.portals.get(ALICE, PEER) is None, "an admin may"


async def test_a_revoked_user_is_not_bridged_is_told_once_and_may_still_log_out(harness: Harness) -> None:
    room = await harness.room()
    harness.core.config = dataclasses.replace(
        harness.core.config, permissions={**harness.core.config.permissions, ALICE: PermissionLevel.NONE}
    )
    await harness.core.tell_revoked()
    await harness.core.tell_revoked()  # a second start tells nothing new
    told = [text for room_id, text in harness.matrix.notices if room_id == "!management:test"]
    assert len(told) == 1 and "no longer allows you" in told[0]

    event_id = harness.outgoing(room, "still there?")
    await harness.until(lambda: any(e == event_id for e, _ in harness.matrix.statuses))
    await harness.core.settle()
    assert harness.gatekeeper.prepared == [], "nothing goes to the gatekeeper for them"
    assert "not allowed" in (await _command(harness, "!management:test", ALICE, "status"))[0]

    said = await _command(harness, "!management:test", ALICE, "logout")
    assert said and said[-1].startswith("Logged out.")
    assert await harness.core.logins.get(ALICE) is None


async def test_logout_erases_locally_when_the_gatekeeper_no_longer_knows_the_user(harness: Harness) -> None:
    await harness.room()

    async def gone(mxid: str) -> None:
        raise GipError(GipErrorCode.NOT_ENLISTED, "not enlisted")

    harness.gatekeeper.opt_out = gone  # type: ignore[method-assign]
    said = await _command(harness, "!management:test", ALICE, "logout")
    assert "no longer had an enlistment" in said[-1]
    assert await harness.core.logins.get(ALICE) is None
    assert await harness.core.portals.of_receiver(ALICE) == []


async def test_logout_of_a_login_the_gatekeeper_removed_still_erases(harness: Harness) -> None:
    await harness.core.logins.set_state(ALICE, LoginState.LOGGED_OUT)
    harness.gatekeeper.online.discard(ALICE)
    said = await _command(harness, "!management:test", ALICE, "logout")
    assert said[-1].startswith("Logged out.")
    assert await harness.core.logins.get(ALICE) is None
