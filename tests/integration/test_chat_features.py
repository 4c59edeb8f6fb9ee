"""Every chat feature in both directions, identity changes, retries, fan-out, logout."""

from __future__ import annotations

import asyncio

import pytest

from devstack.matrix_user import MatrixUser
from tests.db.rows import rows_left
from tests.integration.conftest import Stack
from tests.integration.test_bridge import log_in, open_chat

pytestmark = pytest.mark.asyncio(loop_scope="session")


def in_room(room: str, kind: str = "m.room.message"):
    return lambda e: e.get("room_id") == room and e.get("type") == kind


async def chat(stack: Stack, **native_args) -> tuple[MatrixUser, str, str, dict, str]:
    alice = await stack.user()
    room = await log_in(stack, alice)
    native = await stack.sandbox.native(**native_args)
    portal = await open_chat(stack, alice, room, native)
    login = await stack.bridge.core.logins.get(alice.mxid)
    return alice, room, portal, native, login.iid


async def native_events(stack: Stack, native: dict, kind: str, count: int, timeout: float = 15) -> list[dict]:
    for _ in range(int(timeout * 10)):
        events = await stack.sandbox.events(native["iid"], kind)
        if len(events) >= count:
            return events
        await asyncio.sleep(0.1)
    raise AssertionError(f"the native saw {len(events)} {kind} events, expected {count}")


async def test_replies_reactions_edits_and_deletions_from_matrix(stack: Stack) -> None:
    alice, _, portal, native, _ = await chat(stack)
    first = await alice.say(portal, "question")
    await alice.status_of(first)
    reply = await alice.send(
        portal,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": "> <@x> question\n\nanswer",
            "m.relates_to": {"m.in_reply_to": {"event_id": first}},
        },
    )
    await alice.status_of(reply)
    edit = await alice.send(
        portal,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": "* question?",
            "m.new_content": {"msgtype": "m.text", "body": "question?"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": first},
        },
    )
    await alice.status_of(edit)
    redaction = await alice.client.redact(portal, first)
    await alice.status_of(redaction)
    messages = await native_events(stack, native, "message", 4)
    first_id = messages[0]["id"]
    assert messages[1]["content"]["extendedText"] == {"text": "answer", "contextInfo": {"stanzaId": first_id}}
    assert messages[2]["content"]["edit"]["text"] == "question?"
    assert messages[3]["content"]["revoke"]["key"]["id"] == first_id

    # A reaction to the native's message, then its removal.
    login_iid = (await stack.bridge.core.logins.get(alice.mxid)).iid
    sent = await stack.sandbox.control("POST", f"/natives/{native['iid']}/send", {"to": login_iid, "text": "nice"})
    theirs = await alice.wait_for(lambda e: in_room(portal)(e) and e["content"].get("body") == "nice")
    reaction = await alice.client.react(portal, theirs["event_id"], "👍")
    await alice.status_of(reaction)
    removal = await alice.client.redact(portal, reaction)
    await alice.status_of(removal)
    reactions = [m["content"]["reaction"] for m in (await native_events(stack, native, "message", 6))[-2:]]
    assert reactions[0]["key"]["id"] == sent["id"] and reactions[0]["text"] == "👍"
    assert reactions[1]["key"]["id"] == sent["id"] and reactions[1].get("text", "") == ""
    await alice.close()


async def test_replies_reactions_edits_deletions_typing_and_read_from_the_native(stack: Stack) -> None:
    alice, _, portal, native, iid = await chat(stack, read_receipts=False)
    mine = await alice.say(portal, "how are you?")
    await alice.status_of(mine)
    my_gk_id = (await native_events(stack, native, "message", 1))[0]["id"]
    send = f"/natives/{native['iid']}/send"
    await stack.sandbox.control("POST", send, {"to": iid, "text": "fine", "reply_to": {"id": my_gk_id}})
    reply = await alice.wait_for(lambda e: in_room(portal)(e) and e["content"].get("body") == "fine")
    assert reply["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == mine
    await stack.sandbox.control("POST", send, {"to": iid, "reaction": {"id": my_gk_id, "emoji": "❤"}})
    reaction = await alice.wait_for(in_room(portal, "m.reaction"))
    assert reaction["content"]["m.relates_to"] == {"rel_type": "m.annotation", "event_id": mine, "key": "❤"}
    original = await stack.sandbox.control("POST", send, {"to": iid, "text": "typo"})
    typo = await alice.wait_for(lambda e: in_room(portal)(e) and e["content"].get("body") == "typo")
    await stack.sandbox.control("POST", send, {"to": iid, "edit": {"id": original["id"], "text": "fixed"}})
    edit = await alice.wait_for(lambda e: in_room(portal)(e) and e["content"].get("m.new_content"))
    assert edit["content"]["m.relates_to"] == {"rel_type": "m.replace", "event_id": typo["event_id"]}
    assert edit["content"]["m.new_content"]["body"] == "fixed"
    await stack.sandbox.control("POST", send, {"to": iid, "revoke": {"id": original["id"]}})
    await alice.wait_for(lambda e: in_room(portal, "m.room.redaction")(e) and e.get("redacts") == typo["event_id"])
    await stack.sandbox.control("POST", f"/natives/{native['iid']}/typing", {"to": iid, "state": "composing"})
    await alice.wait_for(
        lambda e: e.get("type") == "m.typing" and e.get("room_id") == portal and e["content"]["user_ids"]
    )
    await stack.sandbox.control("POST", f"/natives/{native['iid']}/read", {"to": iid, "ids": [my_gk_id]})
    await alice.wait_for(lambda e: e.get("type") == "m.receipt" and e.get("room_id") == portal and mine in e["content"])
    # Our read receipt and typing reach the native.
    await alice.client.send_receipt(portal, reply["event_id"])
    for _ in range(100):
        reads = [r for r in await stack.sandbox.events(native["iid"], "receipt") if r["type"] == "read"]
        if reads:
            break
        await asyncio.sleep(0.1)
    assert reads, "our read receipt reached the native"
    await alice.client.set_typing(portal, timeout=5000)
    await native_events(stack, native, "chatstate", 1)
    await alice.close()


async def test_identity_change_posts_a_security_notice(stack: Stack) -> None:
    alice, _, portal, native, iid = await chat(stack)
    first = await alice.say(portal, "before")
    await alice.status_of(first)
    await stack.sandbox.control("POST", f"/natives/{native['iid']}/reinstall", {"device": 0})
    await alice.notice(portal, "security code changed")
    await stack.sandbox.control("POST", f"/natives/{native['iid']}/send", {"to": iid, "text": "new phone"})
    await alice.wait_for(lambda e: in_room(portal)(e) and e["content"].get("body") == "new phone")
    after = await alice.say(portal, "welcome back")
    await alice.status_of(after)
    texts = [m["content"].get("text") for m in await native_events(stack, native, "message", 2, timeout=20)]
    assert "welcome back" in texts
    await alice.close()


async def test_a_key_swapped_without_notification_is_noticed_by_the_bridge(stack: Stack) -> None:
    """Defect: the identity results of bundles were thrown away; the only security notice
    came from the gatekeeper's notification, so a key it swapped silently went unseen."""
    alice, _, portal, native, _ = await chat(stack)
    await alice.status_of(await alice.say(portal, "before"))
    await alice.say(portal, "!dma verify")
    before = (await alice.notice(portal, "Safety number"))["content"]["body"]
    await stack.sandbox.control("POST", f"/natives/{native['iid']}/reinstall", {"device": 0, "notify": False})
    await alice.say(portal, "after")
    # The new install cannot read the old session: it asks again with its new keys.
    await alice.notice(portal, "security code changed", timeout=30)
    texts = [m["content"].get("text") for m in await native_events(stack, native, "message", 2, timeout=30)]
    assert "after" in texts
    await alice.say(portal, "!dma verify")
    await alice.wait_for(
        lambda e: (
            in_room(portal)(e)
            and "Safety number" in (e["content"].get("body") or "")
            and e["content"]["body"] != before
        )
    )
    await alice.close()


async def test_undecryptable_message_is_retried_and_arrives(stack: Stack) -> None:
    alice, _, portal, native, iid = await chat(stack)
    await alice.status_of(await alice.say(portal, "hi"))
    await stack.sandbox.control("POST", "/faults", {"corrupt_next_from": native["iid"]})
    await stack.sandbox.control("POST", f"/natives/{native['iid']}/send", {"to": iid, "text": "survives"})
    await stack.sandbox.control("POST", f"/natives/{native['iid']}/send", {"to": iid, "text": "the next one"})
    await alice.wait_for(lambda e: in_room(portal)(e) and e["content"].get("body") == "the next one")
    bodies = [e["content"].get("body") for e in alice.events if in_room(portal)(e)]
    # The phone sent it again at the bridge's request; it kept its place and needed no notice.
    assert bodies.index("survives") < bodies.index("the next one")
    assert not [b for b in bodies if b and "could not be decrypted" in b]
    retries = [r for r in await stack.sandbox.events(native["iid"], "receipt") if r["type"] == "retry"]
    assert len(retries) == 1
    await alice.close()


async def test_new_native_device_gets_messages_after_a_409(stack: Stack) -> None:
    alice, _, portal, native, _ = await chat(stack)
    await alice.status_of(await alice.say(portal, "one device"))
    await stack.sandbox.control("POST", f"/natives/{native['iid']}/devices")
    # Drop the notification's effect: the bridge's cached list is stale until the 409.
    event_id = await alice.say(portal, "two devices")
    await alice.status_of(event_id)
    received = [
        e for e in await native_events(stack, native, "message", 3) if e["content"].get("text") == "two devices"
    ]
    assert {e["device"].split("@")[0].split(":")[-1] for e in received} >= {native["iid"].split("@")[0]}
    assert len(received) == 2
    await alice.close()


async def test_unsupported_content_gets_a_failed_status_and_a_notice(stack: Stack) -> None:
    alice, _, portal, _, _ = await chat(stack)
    event_id = await alice.send(
        portal, "m.room.message", {"msgtype": "m.location", "body": "here", "geo_uri": "geo:52.5,13.4"}
    )
    status = await alice.status_of(event_id, "FAIL_PERMANENT")
    assert status["content"]["reason"] == "com.beeper.unsupported_event"
    await alice.notice(portal, "Not delivered")
    await alice.close()


async def test_logout_opts_out_and_leaves_no_row(stack: Stack) -> None:
    alice, room, portal, _native, iid = await chat(stack)
    await alice.status_of(await alice.say(portal, "bye"))
    await alice.say(room, "logout")
    await alice.notice(room, "Logged out")
    core = stack.bridge.core
    db = core.db
    assert await rows_left(db, alice.mxid) == {}
    info = await stack.sandbox.control("GET", f"/partners/{iid}")
    assert info["enlisted"] is False and info["rows"] == 0
    await alice.close()


async def test_status_resolve_block_verify_and_delete_portal(stack: Stack) -> None:
    alice, room, portal, native, _ = await chat(stack)
    await alice.say(room, "status")
    await alice.notice(room, "Connected to the gatekeeper")
    await alice.say(room, f"resolve {native['uvid']}")
    await alice.notice(room, "can be reached")
    await alice.say(room, "resolve +4915199999999")
    await alice.notice(room, "cannot be reached")
    await alice.say(room, "resolve 12345")
    await alice.notice(room, "not a valid identifier")
    await alice.status_of(await alice.say(portal, "hello"))
    await alice.say(portal, "!dma verify")
    safety = await alice.notice(portal, "Safety number")
    digits = safety["content"]["body"].split("\n")[-1].replace(" ", "")
    assert len(digits) == 60 and digits.isdigit()
    await alice.say(portal, "!dma block")
    await alice.notice(portal, "Blocked.")
    login = await stack.bridge.core.logins.get(alice.mxid)
    assert (await stack.sandbox.control("GET", f"/partners/{login.iid}"))["blocklist"] == [native["iid"]]
    await alice.say(portal, "!dma unblock")
    await alice.notice(portal, "Unblocked.")
    await alice.say(room, "version")
    await alice.notice(room, "matrix-dma-bridge")
    await alice.say(portal, "!dma delete-portal")
    await alice.wait_for(
        lambda e: (
            e.get("room_id") == portal
            and e.get("type") == "m.room.member"
            and e.get("state_key") == alice.mxid
            and e["content"].get("membership") == "leave"
        )
    )
    assert await stack.bridge.core.portals.by_room(portal) is None
    await alice.close()


async def test_writing_after_logout_or_as_a_stranger_is_explained(stack: Stack) -> None:
    alice, _, portal, _, _ = await chat(stack)
    # A stranger in the room: their message cannot go to the other side.
    carol = await stack.user()
    await alice.client.invite_user(portal, carol.mxid)
    await carol.wait_for(
        lambda e: (
            e.get("room_id") == portal
            and e.get("type") == "m.room.member"
            and e.get("state_key") == carol.mxid
            and e["content"].get("membership") == "join"
        )
    )
    stranger = await carol.say(portal, "hello?")
    status = await carol.status_of(stranger, "FAIL_PERMANENT")
    assert status["content"]["reason"] == "m.no_permission"
    # After a logout the portal says why nothing goes out.
    await stack.bridge.core.logins.set_state(
        alice.mxid, __import__("bridge.db.logins", fromlist=["x"]).LoginState.LOGGED_OUT
    )
    late = await alice.say(portal, "anyone?")
    status = await alice.status_of(late, "FAIL_PERMANENT")
    assert "not logged in" in status["content"]["message"]
    await alice.notice(portal, "not logged in")
    await alice.close()
    await carol.close()


async def test_a_message_that_failed_to_post_is_retried(stack: Stack) -> None:
    alice, _, portal, native, iid = await chat(stack)
    core = stack.bridge.core
    original = core.matrix.send_message
    failures = []

    async def flaky(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise RuntimeError("the homeserver is briefly down")
        return await original(*args, **kwargs)

    core.matrix.send_message = flaky
    try:
        await stack.sandbox.control("POST", f"/natives/{native['iid']}/send", {"to": iid, "text": "eventually"})
        for _ in range(100):
            if failures:
                break
            await asyncio.sleep(0.05)
        assert failures, "the first post failed"
        # The portal's loop tries again by itself, under the same transaction id.
        await alice.wait_for(lambda e: e.get("room_id") == portal and e["content"].get("body") == "eventually")
    finally:
        core.matrix.send_message = original
    await alice.close()


async def test_reconnect_takes_the_connection_back(stack: Stack) -> None:
    alice = await stack.user()
    room = await log_in(stack, alice)
    login = await stack.bridge.core.logins.get(alice.mxid)
    # Another client of the same user takes over: the bridge's connection gets 409.
    from bridge.gip.client import GipClient
    from bridge.gip.noise import StaticKey

    store = stack.bridge.connections.get(alice.mxid).client.store
    intruder = GipClient(
        base_url=stack.sandbox.base,
        store=store,
        noise_static=StaticKey.from_private(login.noise_private),
        iid=login.iid,
        keepalive=0,
    )
    await intruder.connect(stack.bridge.connections.tokens.for_login(login))
    taken = await alice.notice(room, "Another connection for your account took over")
    # The notice carries the state, as mautrix bridges' do.
    assert taken["content"]["fi.mau.bridge_state"]["state_event"] == "UNKNOWN_ERROR"
    assert taken["content"]["fi.mau.bridge_state"]["error"] == "dma-replaced"
    await alice.say(room, "reconnect")
    await alice.notice(room, "Connected to the gatekeeper")
    await intruder.closed.wait()
    await intruder.close()
    await alice.close()
