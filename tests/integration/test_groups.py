"""Group chats end to end: two local users and natives in one group, on Synapse and the
sandbox, in one portal room that each local user's connection feeds."""

from __future__ import annotations

import asyncio
import base64
import io

import pytest
from mautrix.types import EventType
from PIL import Image

from bridge.gip.outgoing import PreparedMessage
from bridge.signal import ProtocolAddress
from devstack.element_client import ElementPeer
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


def delivered(events: list[dict], group: str, text: str) -> dict[str, int]:
    """How many times each of a native's devices got a group message with this text."""
    counts: dict[str, int] = {}
    for e in events:
        content = e.get("content", {})
        said = content.get("text") or content.get("extendedText", {}).get("text")
        if e.get("group") == group and said == text:
            counts[e["device"]] = counts.get(e["device"], 0) + 1
    return counts


async def exactly_once(stack: Stack, natives: list[dict], group: str, text: str) -> None:
    """Every device of every native got the message, each once."""
    for native in natives:
        await natives_got(stack, native, group, text, devices=len(native["devices"]))
    await asyncio.sleep(0.5)
    for native in natives:
        counts = delivered(await stack.sandbox.events(native["iid"], "message"), group, text)
        assert len(counts) == len(native["devices"]) and set(counts.values()) == {1}, (native["iid"], counts)


def png() -> str:
    """A small real PNG, base64: what matters is that it crosses once, not what it shows."""
    out = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 60, 20)).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


async def own_sender_key(stack: Stack, mxid: str, iid: str, group: str) -> int | None:
    """The key id of the sender key ``mxid``'s login writes into ``group`` under, now."""
    login = await stack.bridge.core.logins.get(mxid)
    record = await stack.bridge.connections.device(login).store.load_sender_key(ProtocolAddress(iid, 0), group)
    return record.states[0].key_id if record is not None and record.states else None


async def status_of(user, event_id: str) -> None:
    await user.status_of(event_id, timeout=60)


def pill(mxid: str, name: str) -> str:
    return f'<a href="https://matrix.to/#/{mxid}">{name}</a>'


async def test_a_group_of_two_local_users_and_three_natives(stack: Stack, element: ElementPeer) -> None:
    """Alice on Element's crypto stack and bob on mautrix's, three natives (one with a
    companion device), in one encrypted portal: everything both ways, each once."""
    alice, bob = await stack.element_user(element), await stack.user()
    for user in (alice, bob):
        user.management_room = await log_in(stack, user)
    alice_iid = (await stack.bridge.core.logins.get(alice.mxid)).iid
    bob_iid = (await stack.bridge.core.logins.get(bob.mxid)).iid
    phone = await stack.sandbox.native(devices=2)
    other, third = await stack.sandbox.native(), await stack.sandbox.native()
    made = await stack.sandbox.control(
        "POST",
        "/groups",
        {
            "creator": phone["iid"],
            "subject": "Book club",
            "participants": [alice_iid, bob_iid, other["iid"], third["iid"]],
        },
    )
    group = made["jid"]
    room = await group_room(alice)
    assert await group_room(bob) == room, "one portal room for the group, whoever is in it"
    assert (await stack.bridge.core.portals.by_room(room)).encrypted, "end-to-bridge encrypted like a 1:1 portal"
    assert (await bob.client.get_state_event(room, EventType.ROOM_NAME)).name == "Book club"
    config = stack.bridge.config

    def puppet_of(native: dict) -> str:
        return f"@{config.puppet_localpart(native['uvid'])}:{config.homeserver_domain}"

    # A native writes: both local users' connections get it, the room shows it once.
    hello = await stack.sandbox.control("POST", f"/natives/{phone['iid']}/send", {"group": group, "text": "hello all"})
    shown = await alice.wait_for(in_room(room, "hello all"))
    await bob.wait_for(in_room(room, "hello all"))
    assert shown["sender"] == puppet_of(phone)
    await asyncio.sleep(1)
    await alice.refresh()
    assert copies(alice, room, "hello all") == copies(bob, room, "hello all") == 1, "posted once for both"

    # Alice writes: every native device reads it once; bob's copy does not post it again.
    sent = await alice.say(room, "hi from alice")
    await status_of(alice, sent)
    await exactly_once(stack, [phone, other, third], group, "hi from alice")
    assert copies(bob, room, "hi from alice") == 1, "bob's copy from the gatekeeper is not posted again"

    # Bob mentions the phone's owner with a pill: the native reads its token and IID.
    content = {
        "msgtype": "m.text",
        "body": "+49 look, this",
        "format": "org.matrix.custom.html",
        "formatted_body": f"{pill(puppet_of(phone), 'Phone')} look, this",
        "m.mentions": {"user_ids": [puppet_of(phone)]},
    }
    await bob.status_of(await bob.send(room, "m.room.message", content))
    token = "@" + phone["iid"].split("@")[0]
    for _ in range(100):
        got = [
            e
            for e in await stack.sandbox.events(phone["iid"], "message")
            if e.get("group") == group and "extendedText" in e["content"]
        ]
        if got:
            break
        await asyncio.sleep(0.1)
    ext = got[-1]["content"]["extendedText"]
    assert ext["text"] == f"{token} look, this" and ext["contextInfo"]["mentioned"] == [phone["iid"]]

    # A native mentions alice: a pill to her, and m.mentions, in her Element.
    alice_token = "@" + alice_iid.split("@")[0]
    await stack.sandbox.control(
        "POST",
        f"/natives/{other['iid']}/send",
        {"group": group, "text": f"{alice_token} are you in?", "mentioned": [alice_iid]},
    )
    mention = await alice.wait_for(
        lambda e: e.get("room_id") == room and "are you in?" in e.get("content", {}).get("body", "")
    )
    assert mention["content"]["m.mentions"] == {"user_ids": [alice.mxid]}
    assert f'href="https://matrix.to/#/{alice.mxid}"' in mention["content"]["formatted_body"]

    # Replies, reactions, edits and deletions from a native, each once in the room.
    alice_msg = (await stack.bridge.core.messages.by_event(room, sent)).gk_id
    the_reply = await stack.sandbox.control(
        "POST",
        f"/natives/{third['iid']}/send",
        {"group": group, "text": "a reply", "reply_to": {"id": alice_msg, "participant": alice_iid}},
    )
    reply = await alice.wait_for(in_room(room, "a reply"))
    assert reply["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == sent
    await stack.sandbox.control(
        "POST",
        f"/natives/{third['iid']}/send",
        {"group": group, "reaction": {"id": alice_msg, "emoji": "👍", "from_me": False}},
    )
    reaction = await alice.wait_for(lambda e: e.get("room_id") == room and e.get("type") == "m.reaction")
    assert reaction["content"]["m.relates_to"] == {"rel_type": "m.annotation", "event_id": sent, "key": "👍"}
    await stack.sandbox.control(
        "POST", f"/natives/{phone['iid']}/send", {"group": group, "edit": {"id": hello["id"], "text": "hello, all"}}
    )
    edit = await alice.wait_for(
        lambda e: e.get("room_id") == room and e.get("content", {}).get("m.new_content", {}).get("body") == "hello, all"
    )
    assert edit["content"]["m.relates_to"]["event_id"] == shown["event_id"]
    await stack.sandbox.control(
        "POST", f"/natives/{phone['iid']}/send", {"group": group, "revoke": {"id": hello["id"]}}
    )
    await alice.wait_for(
        lambda e: (
            e.get("room_id") == room
            and e.get("type") == "m.room.redaction"
            and shown["event_id"] in (e.get("redacts"), e.get("content", {}).get("redacts"))
        )
    )
    await asyncio.sleep(1)
    await alice.refresh()
    assert len([e for e in alice.events if e.get("room_id") == room and e.get("type") == "m.reaction"]) == 1
    assert copies(alice, room, "a reply") == copies(bob, room, "a reply") == 1

    # Alice replies and reacts: the natives read the reference to the native's message.
    native_msg = the_reply["id"]
    native_event = reply["event_id"]
    await alice.send(
        room, "m.reaction", {"m.relates_to": {"rel_type": "m.annotation", "event_id": native_event, "key": "🎉"}}
    )
    for _ in range(100):
        reactions = [
            e["content"]["reaction"]
            for e in await stack.sandbox.events(other["iid"], "message")
            if e.get("group") == group and e["content"].get("reaction", {}).get("text") == "🎉"
        ]
        if reactions:
            break
        await asyncio.sleep(0.1)
    assert reactions and reactions[-1]["key"]["id"] == native_msg

    # Alice reads the reply: its author gets a read receipt naming her.
    await alice.read(room, native_event)
    for _ in range(100):
        receipts = [
            e
            for e in await stack.sandbox.events(third["iid"], "receipt")
            if e.get("group") == group and e.get("type") == "read" and e.get("from") == alice_iid
        ]
        if receipts:
            break
        await asyncio.sleep(0.1)
    assert native_msg in receipts[-1]["ids"]

    # A photo from a native, posted once, readable on both Matrix clients.
    await stack.sandbox.control(
        "POST",
        f"/natives/{other['iid']}/send",
        {"group": group, "media": {"kind": "image", "data": png(), "mimetype": "image/png", "caption": "the cover"}},
    )
    photo = await alice.wait_for(
        lambda e: e.get("room_id") == room and e.get("content", {}).get("msgtype") == "m.image"
    )
    await bob.wait_for(lambda e: e.get("room_id") == room and e.get("content", {}).get("msgtype") == "m.image")
    assert photo["sender"] == puppet_of(other)
    await asyncio.sleep(1)
    await alice.refresh()
    assert (
        len([e for e in alice.events if e.get("room_id") == room and e.get("content", {}).get("msgtype") == "m.image"])
        == 1
    )

    # The other native leaves: its puppet leaves the room, alice's sender key is replaced
    # and handed to every device still in the group, and the leaver reads nothing more.
    sender_key = await own_sender_key(stack, alice.mxid, alice_iid, group)
    await stack.sandbox.control("POST", f"/groups/{group}/change", {"actor": other["iid"], "action": "leave"})
    await alice.wait_for(lambda e: member_event(e, room, puppet_of(other), "leave"))
    after = await alice.say(room, "after the leave")
    await status_of(alice, after)
    await exactly_once(stack, [phone, third], group, "after the leave")
    assert not delivered(await stack.sandbox.events(other["iid"], "message"), group, "after the leave")
    assert await own_sender_key(stack, alice.mxid, alice_iid, group) != sender_key, "a new sender key"
    item = await stack.bridge.core.outbox.by_event(room, after)
    handed = {str(d) for d in PreparedMessage.deserialize(item.prepared).devices}
    assert handed == {f"{phone['iid'].split('@')[0]}:1@native", phone["iid"], third["iid"], bob_iid}, handed
    assert all(
        count == 1
        for count in delivered(await stack.sandbox.events(phone["iid"], "message"), group, "after the leave").values()
    )

    # Subject both ways: the gatekeeper's renames the room, an admin's room name renames the group.
    await stack.sandbox.control(
        "POST", f"/groups/{group}/change", {"actor": phone["iid"], "action": "subject", "subject": "Readers"}
    )
    await alice.wait_for(
        lambda e: e.get("room_id") == room and e.get("type") == "m.room.name" and e["content"].get("name") == "Readers"
    )
    # Admins both ways: the phone makes bob an admin (power 50); bob, in Matrix, renames the
    # room and makes the third native an admin, and the group follows.
    await stack.sandbox.control(
        "POST", f"/groups/{group}/change", {"actor": phone["iid"], "action": "promote", "participants": [bob_iid]}
    )
    await bob.wait_for(
        lambda e: (
            e.get("room_id") == room
            and e.get("type") == "m.room.power_levels"
            and e["content"].get("users", {}).get(bob.mxid) == 50
        ),
        timeout=30,
    )
    await bob.client.send_state_event(room, EventType.ROOM_NAME, {"name": "Readers and friends"})
    levels = (await bob.client.get_state_event(room, EventType.ROOM_POWER_LEVELS)).serialize()
    levels["users"][puppet_of(third)] = 50
    await bob.client.send_state_event(room, EventType.ROOM_POWER_LEVELS, levels)
    for _ in range(100):
        info = await stack.sandbox.control("GET", f"/groups/{group}")
        admins = {p["jid"] for p in info["participants"] if p["admin"]}
        if info["subject"] == "Readers and friends" and third["iid"] in admins:
            break
        await asyncio.sleep(0.1)
    assert info["subject"] == "Readers and friends" and third["iid"] in admins, info
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
    # A name the gatekeeper will not take: explained, and the room keeps the group's subject.
    await alice.wait_for(
        lambda e: (
            e.get("room_id") == room
            and e.get("type") == "m.room.power_levels"
            and e["content"].get("users", {}).get(alice.mxid) == 50
        )
    )
    await alice.client.send_state_event(room, EventType.ROOM_NAME, {"name": "x" * 150})
    await alice.notice(room, "longer than")
    await alice.wait_for(
        lambda e: e.get("room_id") == room and e.get("type") == "m.room.name" and e["content"].get("name") == "Club"
    )
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
