"""Group chats end to end: two local users and natives in one group, on Synapse and the
sandbox, in one portal room that each local user's connection feeds."""

from __future__ import annotations

import asyncio

import pytest

from devstack.matrix_user import MatrixUser
from tests.integration.conftest import Stack
from tests.integration.test_bridge import log_in

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def natives_got(stack: Stack, native: dict, group: str, text: str, devices: int = 1, timeout: float = 30) -> None:
    for _ in range(int(timeout * 10)):
        events = await stack.sandbox.events(native["iid"], "message")
        got = {e["device"] for e in events if e.get("group") == group and e["content"].get("text") == text}
        if len(got) >= devices:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{native['iid']} did not get {text!r} on {devices} devices")


def member_event(event: dict, room: str, mxid: str, membership: str) -> bool:
    return (
        event.get("room_id") == room
        and event.get("state_key") == mxid
        and event.get("content", {}).get("membership") == membership
    )


def copies(user: MatrixUser, room: str, body: str) -> int:
    """Distinct events with this text in the room, as the user's client saw them (decrypted)."""
    return len({e["event_id"] for e in user.events if in_room(room, body)(e)})


def in_room(room: str, body: str):
    return lambda e: e.get("room_id") == room and e.get("content", {}).get("body") == body


async def group_room(user: MatrixUser, timeout: float = 30) -> str:
    """The group portal the user was invited to (and joined)."""
    joined = await user.wait_for(
        lambda e: (
            e.get("type") == "m.room.member"
            and e.get("state_key") == user.mxid
            and e["content"].get("membership") == "join"
            and e.get("sender") == user.mxid
            and e.get("room_id") != user.management_room
        ),
        timeout,
    )
    return joined["room_id"]


async def test_a_group_of_two_local_users_and_natives(stack: Stack) -> None:
    alice, bob = await stack.user(), await stack.user()
    for user in (alice, bob):
        user.management_room = await log_in(stack, user)
    alice_iid = (await stack.bridge.core.logins.get(alice.mxid)).iid
    bob_iid = (await stack.bridge.core.logins.get(bob.mxid)).iid
    phone, other = await stack.sandbox.native(devices=2), await stack.sandbox.native()
    made = await stack.sandbox.control(
        "POST",
        "/groups",
        {"creator": phone["iid"], "subject": "Book club", "participants": [alice_iid, bob_iid, other["iid"]]},
    )
    group = made["jid"]
    room = await group_room(alice)
    assert await group_room(bob) == room, "one portal room for the group, whoever is in it"
    name = await alice.wait_for(lambda e: e.get("room_id") == room and e.get("type") == "m.room.name")
    assert name["content"]["name"] == "Book club"

    # A native writes: both local users' connections get it, the room shows it once.
    await stack.sandbox.control("POST", f"/natives/{phone['iid']}/send", {"group": group, "text": "hello all"})
    await alice.wait_for(in_room(room, "hello all"))
    await bob.wait_for(in_room(room, "hello all"))
    await asyncio.sleep(1)
    assert copies(alice, room, "hello all") == copies(bob, room, "hello all") == 1, "posted once for both"

    # Alice writes: every native device reads it; bob's copy does not post it again.
    sent = await alice.say(room, "hi from alice")
    await alice.status_of(sent)
    await natives_got(stack, phone, group, "hi from alice", devices=2)
    await natives_got(stack, other, group, "hi from alice")
    await asyncio.sleep(1)
    assert copies(bob, room, "hi from alice") == 1, "bob's copy from the gatekeeper is not posted again"

    # Bob writes with his own login.
    await bob.status_of(await bob.say(room, "and bob"))
    await natives_got(stack, other, group, "and bob")

    # The other native leaves: its puppet leaves the room, and it reads nothing more.
    await stack.sandbox.control("POST", f"/groups/{group}/change", {"actor": other["iid"], "action": "leave"})
    puppet = (await stack.bridge.core.puppets.get(other["iid"])).mxid
    await alice.wait_for(
        lambda e: (
            e.get("room_id") == room and e.get("state_key") == puppet and e["content"].get("membership") == "leave"
        )
    )
    await alice.status_of(await alice.say(room, "after the leave"))
    await natives_got(stack, phone, group, "after the leave", devices=2)
    events = await stack.sandbox.events(other["iid"], "message")
    assert not any(e["content"].get("text") == "after the leave" for e in events)

    # A new subject at the gatekeeper renames the room.
    await stack.sandbox.control(
        "POST", f"/groups/{group}/change", {"actor": phone["iid"], "action": "subject", "subject": "Readers"}
    )
    await alice.wait_for(
        lambda e: e.get("room_id") == room and e.get("type") == "m.room.name" and e["content"].get("name") == "Readers"
    )
    for user in (alice, bob):
        await user.close()


async def test_a_member_without_a_login_cannot_write_to_the_group(stack: Stack) -> None:
    alice = await stack.user()
    alice.management_room = await log_in(stack, alice)
    alice_iid = (await stack.bridge.core.logins.get(alice.mxid)).iid
    phone = await stack.sandbox.native()
    await stack.sandbox.control(
        "POST", "/groups", {"creator": phone["iid"], "subject": "Open", "participants": [alice_iid]}
    )
    room = await group_room(alice)
    guest = await stack.user()
    await alice.client.invite_user(room, guest.mxid)
    await guest.wait_for(
        lambda e: (
            e.get("room_id") == room and e.get("state_key") == guest.mxid and e["content"].get("membership") == "join"
        )
    )
    attempt = await guest.say(room, "can I write?")
    await guest.status_of(attempt, "FAIL_PERMANENT")
    await guest.notice(room, "there is no relay")
    for user in (alice, guest):
        await user.close()


async def test_membership_from_matrix_and_a_refusal_explained(stack: Stack) -> None:
    alice = await stack.user()
    alice.management_room = await log_in(stack, alice)
    alice_iid = (await stack.bridge.core.logins.get(alice.mxid)).iid
    phone, friend, shy = await stack.sandbox.native(), await stack.sandbox.native(), await stack.sandbox.native()
    await stack.sandbox.control("POST", f"/natives/{shy['iid']}/opt_in", {"opted_in": False})
    made = await stack.sandbox.control(
        "POST", "/groups", {"creator": phone["iid"], "subject": "Club", "participants": [alice_iid]}
    )
    group = made["jid"]
    # The creator makes alice an admin, so that she may add and remove.
    await stack.sandbox.control(
        "POST", f"/groups/{group}/change", {"actor": phone["iid"], "action": "promote", "participants": [alice_iid]}
    )
    room = await group_room(alice)
    config = stack.bridge.config

    def puppet_of(native: dict) -> str:
        return f"@{config.puppet_localpart(native['uvid'])}:{config.homeserver_domain}"

    # Inviting a puppet adds that person at the gatekeeper; they then read the group.
    await alice.client.invite_user(room, puppet_of(friend))
    for _ in range(100):
        members = [p["jid"] for p in (await stack.sandbox.control("GET", f"/groups/{group}"))["participants"]]
        if friend["iid"] in members:
            break
        await asyncio.sleep(0.1)
    assert friend["iid"] in members
    await alice.wait_for(lambda e: member_event(e, room, puppet_of(friend), "join"))
    await alice.status_of(await alice.say(room, "welcome"))
    await natives_got(stack, friend, group, "welcome")
    # Someone the gatekeeper will not add: the invitation is withdrawn and explained.
    await alice.client.invite_user(room, puppet_of(shy))
    await alice.notice(room, "cannot be reached")
    await alice.wait_for(lambda e: member_event(e, room, puppet_of(shy), "leave"))
    # Removing a puppet removes the person.
    await alice.client.kick_user(room, puppet_of(friend), "bye")
    for _ in range(100):
        members = [p["jid"] for p in (await stack.sandbox.control("GET", f"/groups/{group}"))["participants"]]
        if friend["iid"] not in members:
            break
        await asyncio.sleep(0.1)
    assert friend["iid"] not in members
    # Leaving the room leaves the group.
    await alice.client.leave_room(room)
    for _ in range(100):
        members = [p["jid"] for p in (await stack.sandbox.control("GET", f"/groups/{group}"))["participants"]]
        if alice_iid not in members:
            break
        await asyncio.sleep(0.1)
    assert alice_iid not in members
    await alice.close()


async def test_a_later_member_reads_new_messages_and_a_restart_hands_no_key_out_again(stack: Stack) -> None:
    from bridge.app import BridgeApp
    from bridge.gip.outgoing import PreparedMessage

    alice = await stack.user()
    alice.management_room = await log_in(stack, alice)
    alice_iid = (await stack.bridge.core.logins.get(alice.mxid)).iid
    phone = await stack.sandbox.native(devices=2)
    made = await stack.sandbox.control(
        "POST", "/groups", {"creator": phone["iid"], "subject": "Later", "participants": [alice_iid]}
    )
    group = made["jid"]
    room = await group_room(alice)

    async def handed_to(event_id: str) -> set[str]:
        item = await stack.bridge.core.outbox.by_event(room, event_id)
        return {str(d) for d in PreparedMessage.deserialize(item.prepared).devices}

    first = await alice.say(room, "first")
    await alice.status_of(first)
    assert len(await handed_to(first)) == 2, "the key went to both of the phone's devices"
    late = await stack.sandbox.native()
    await stack.sandbox.control(
        "POST", f"/groups/{group}/change", {"actor": phone["iid"], "action": "add", "participants": [late["iid"]]}
    )
    await asyncio.sleep(1)
    second = await alice.say(room, "for the newcomer too")
    await alice.status_of(second)
    await natives_got(stack, late, group, "for the newcomer too")
    assert await handed_to(second) == {late["iid"]}, "only the new device gets the key"

    await stack.bridge.stop()
    stack.bridge = BridgeApp(stack.bridge.config)
    await stack.bridge.start()
    third = await alice.say(room, "after a restart")
    await alice.status_of(third, timeout=60)
    await natives_got(stack, late, group, "after a restart")
    assert await handed_to(third) == set(), "a restart hands the key to nobody again"
    await alice.close()
