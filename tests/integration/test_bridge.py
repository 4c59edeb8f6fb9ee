"""The bridge end to end: Synapse, Postgres, the sandbox gatekeeper and a Matrix client."""

from __future__ import annotations

import pytest

from tests.integration.conftest import Stack
from tests.integration.matrix_user import MatrixUser
from tests.peers.element_peer import ElementUser

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def management_room(stack: Stack, user: MatrixUser | ElementUser) -> str:
    room_id = await user.create_dm(stack.bridge.matrix.bot_mxid)
    await user.notice(room_id, "Send `help`")
    return room_id


async def log_in(stack: Stack, user: MatrixUser | ElementUser) -> str:
    room = await management_room(stack, user)
    await user.say(room, "login")
    await user.notice(room, "Do you agree?")
    await user.say(room, "yes")
    await user.notice(room, "European Economic Area")
    await user.say(room, "yes")
    await user.notice(room, "Logged in", timeout=30)
    return room


async def open_chat(stack: Stack, user: MatrixUser | ElementUser, room: str, native: dict) -> str:
    await user.say(room, f"start-chat {native['uvid']}")
    reply = await user.notice(room, "Opened a chat")
    portal = reply["content"]["body"].rsplit("/", 1)[1]
    await user.wait_for(
        lambda e: (
            e.get("room_id") == portal
            and e.get("type") == "m.room.member"
            and e.get("state_key") == user.mxid
            and e["content"].get("membership") == "join"
        )
    )
    return portal


async def test_login_start_chat_and_text_both_ways(stack: Stack) -> None:
    alice = await stack.user()
    room = await log_in(stack, alice)
    login = await stack.bridge.core.logins.get(alice.mxid)
    assert login is not None and login.iid
    info = await stack.sandbox.control("GET", f"/partners/{login.iid}")
    assert info["enlisted"] and info["connected"]

    native = await stack.sandbox.native()
    portal = await open_chat(stack, alice, room, native)
    # The portal carries the bridge info state.
    state = await alice.client.get_state(portal)
    assert any(e.type.t == "m.bridge" for e in state) and any(e.type.t == "uk.half-shot.bridge" for e in state)

    event_id = await alice.say(portal, "hello from Element")
    await alice.status_of(event_id)
    received = [e for e in await stack.sandbox.events(native["iid"], "message")]
    assert received[-1]["content"] == {"text": "hello from Element"}
    # Delivery confirmed by the native's phone: a status naming the puppet.
    await alice.wait_for(
        lambda e: e.get("type") == "com.beeper.message_send_status" and e["content"].get("delivered_to_users")
    )

    reply = await stack.sandbox.control(
        "POST", f"/natives/{native['iid']}/send", {"to": login.iid, "text": "*hello* from WhatsApp"}
    )
    message = await alice.wait_for(
        lambda e: (
            e.get("room_id") == portal
            and e.get("type") == "m.room.message"
            and e["content"].get("body") == "*hello* from WhatsApp"
        )
    )
    assert message["sender"] != alice.mxid
    assert message["content"]["formatted_body"] == "<strong>hello</strong> from WhatsApp"
    assert reply["id"]
    await alice.close()


async def test_user_without_permission_is_refused(stack: Stack) -> None:
    config = stack.bridge.config
    original = dict(config.permissions)
    from bridge.config import PermissionLevel

    # The bot joined while mallory was allowed (it declines invites from the others).
    mallory = await stack.user()
    room = await management_room(stack, mallory)
    config.permissions.clear()
    config.permissions["@admin:localhost"] = PermissionLevel.ADMIN
    try:
        await mallory.say(room, "login")
        await mallory.notice(room, "not allowed to use this bridge")
        assert await stack.bridge.core.logins.get(mallory.mxid) is None
        await mallory.close()
    finally:
        config.permissions.clear()
        config.permissions.update(original)


async def test_bad_commands_are_answered_clearly(stack: Stack) -> None:
    bob = await stack.user()
    room = await management_room(stack, bob)
    await bob.say(room, "frobnicate")
    await bob.notice(room, "Unknown command `frobnicate`")
    await bob.say(room, "start-chat +4915112345678")
    await bob.notice(room, "You are not logged in")
    await bob.say(room, "help")
    await bob.notice(room, "start-chat")
    await bob.close()
