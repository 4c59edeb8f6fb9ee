"""The bridge end to end: Synapse, Postgres, the sandbox gatekeeper and a Matrix client."""

from __future__ import annotations

import pytest

from devstack import bot
from devstack.element_client import ElementUser
from devstack.matrix_user import MatrixUser
from tests.integration.conftest import Stack

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def management_room(stack: Stack, user: MatrixUser | ElementUser) -> str:
    return await bot.management_room(user, stack.bridge.matrix.bot_mxid)


async def log_in(stack: Stack, user: MatrixUser | ElementUser) -> str:
    room = await management_room(stack, user)
    await bot.log_in(user, room)
    return room


async def open_chat(stack: Stack, user: MatrixUser | ElementUser, room: str, native: dict) -> str:
    return await bot.open_chat(user, room, native["uvid"])


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
