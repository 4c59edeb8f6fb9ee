"""The Messenger profile through the whole bridge: usernames instead of phone numbers."""

from __future__ import annotations

import pytest

from tests.integration.conftest import Stack
from tests.integration.test_bridge import log_in, open_chat

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_messenger_login_chat_and_names(messenger_stack: Stack) -> None:
    stack = messenger_stack
    alice = await stack.user()
    room = await log_in(stack, alice)
    native = await stack.sandbox.native(uvid="jane.doe")
    await alice.say(room, "resolve +4915112345678")
    await alice.notice(room, "Messenger username")
    portal = await open_chat(stack, alice, room, native)
    members = await alice.client.get_joined_members(portal)
    puppet = next(user for user in members if user != alice.mxid and "dmabot" not in user)
    assert puppet.startswith("@dma_jane.doe:")
    assert members[puppet].displayname == "jane.doe"
    await alice.status_of(await alice.say(portal, "hi jane"))
    login = await stack.bridge.core.logins.get(alice.mxid)
    await stack.sandbox.control("POST", f"/natives/{native['iid']}/send", {"to": login.iid, "text": "hi!"})
    await alice.wait_for(
        lambda e: e.get("room_id") == portal and e.get("sender") == puppet and e["content"].get("body") == "hi!"
    )
    await alice.close()


async def test_suspension_is_explained_in_the_management_room(messenger_stack: Stack) -> None:
    stack = messenger_stack
    bob = await stack.user()
    room = await log_in(stack, bob)
    login = await stack.bridge.core.logins.get(bob.mxid)
    await stack.sandbox.control("POST", f"/partners/{login.iid}/suspend", {"suspended": True})
    await bob.notice(room, "suspended your account")
    await bob.say(room, "status")
    await bob.notice(room, "suspended")
    await bob.close()
