"""End-to-bridge encryption, proven with Element's own crypto stack (matrix-js-sdk with its
Rust crypto, in devstack/element) and with python-olm (mautrix): encrypted portals both
ways, a second device, a restart, a late key, the `encrypt` command, missing homeserver
settings, and no plaintext in Synapse's database or the bridge's."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from dataclasses import replace
from typing import Any

import asyncpg
import pytest
from mautrix.errors import MatrixError

from bridge.app import BridgeApp
from bridge.matrix.connector import StartupError
from bridge.matrix.device import DeviceCrypto
from devstack.element_client import ElementPeer, ElementUser
from devstack.matrix_user import MatrixUser
from tests.integration.conftest import Stack, build_stack, tear_down
from tests.integration.test_bridge import log_in, open_chat
from tests.integration.test_chat_features import native_events

pytestmark = pytest.mark.asyncio(loop_scope="session")
STATUS = "com.beeper.message_send_status"
UNDECRYPTABLE = "com.beeper.undecryptable_event"
# Every plaintext the conversations below exchange, for the search of the databases.
PLAINTEXTS: list[str] = []


def secret(label: str) -> str:
    text = f"{label} {uuid.uuid4().hex}"
    PLAINTEXTS.append(text)
    return text


def body_is(room: str, text: str):
    return lambda e: e.get("room_id") == room and e.get("type") == "m.room.message" and e["content"].get("body") == text


def redaction_of(room: str, event_id: str):
    return lambda e: (
        e.get("room_id") == room
        and e.get("type") == "m.room.redaction"
        and event_id in (e.get("redacts"), e["content"].get("redacts"))
    )


async def new_user(stack: Stack, element: ElementPeer, kind: str) -> MatrixUser | ElementUser:
    return await stack.element_user(element) if kind == "element" else await stack.user()


async def chat(stack: Stack, user: MatrixUser | ElementUser) -> tuple[str, dict[str, Any], str]:
    room = await log_in(stack, user)
    native = await stack.sandbox.native()
    portal = await open_chat(stack, user, room, native)
    login = await stack.bridge.core.logins.get(user.mxid)
    assert login is not None
    return portal, native, login.iid


def bridge_posts(stack: Stack, user: MatrixUser | ElementUser, portal: str) -> list[dict[str, Any]]:
    """What the bridge posted into the portal (puppet messages, reactions, notices, statuses)."""
    return [
        e
        for e in user.events
        if e.get("room_id") == portal
        and e.get("type") in ("m.room.message", "m.reaction", STATUS)
        and e.get("sender") != user.mxid
    ]


@pytest.mark.parametrize("kind", ["element", "mautrix"])
async def test_an_encrypted_portal_carries_everything_both_ways(
    e2ee_stack: Stack, element: ElementPeer, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # everything the bridge and mautrix log, for the search below
    stack = e2ee_stack
    user = await new_user(stack, element, kind)
    portal, native, iid = await chat(stack, user)
    assert await stack.bridge.matrix.is_encrypted(portal)
    if isinstance(user, ElementUser):
        # Element shows the bridge's device as verified by its owner (self-signed).
        bridge = stack.bridge.matrix
        assert await user.device_status(bridge.bot_mxid, bridge.e2ee.device_id) == {
            "known": True,
            "signedByOwner": True,
        }

    # Matrix → native: a text, a reply, an edit and a deletion.
    question, answer, corrected = secret("question"), secret("answer"), secret("question?")
    first = await user.say(portal, question)
    await user.status_of(first)
    reply = await user.send(
        portal,
        "m.room.message",
        {"msgtype": "m.text", "body": answer, "m.relates_to": {"m.in_reply_to": {"event_id": first}}},
    )
    await user.status_of(reply)
    edit = await user.send(
        portal,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": f"* {corrected}",
            "m.new_content": {"msgtype": "m.text", "body": corrected},
            "m.relates_to": {"rel_type": "m.replace", "event_id": first},
        },
    )
    await user.status_of(edit)
    await user.status_of(await user.redact(portal, first))
    messages = await native_events(stack, native, "message", 4)
    first_id = messages[0]["id"]
    assert messages[0]["content"]["text"] == question
    assert messages[1]["content"]["extendedText"] == {"text": answer, "contextInfo": {"stanzaId": first_id}}
    assert messages[2]["content"]["edit"]["text"] == corrected
    assert messages[3]["content"]["revoke"]["key"]["id"] == first_id

    # Native → Matrix: a text, a reply, a reaction, an edit and a deletion.
    send = f"/natives/{native['iid']}/send"
    hello, fine, typo, fixed = secret("hello"), secret("fine"), secret("typo"), secret("fixed")
    sent = await stack.sandbox.control("POST", send, {"to": iid, "text": hello})
    theirs = await user.wait_for(body_is(portal, hello))
    await stack.sandbox.control("POST", send, {"to": iid, "text": fine, "reply_to": {"id": messages[1]["id"]}})
    their_reply = await user.wait_for(body_is(portal, fine))
    assert their_reply["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == reply
    await stack.sandbox.control("POST", send, {"to": iid, "reaction": {"id": messages[1]["id"], "emoji": "❤"}})
    reaction = await user.wait_for(lambda e: e.get("room_id") == portal and e.get("type") == "m.reaction")
    assert reaction["content"]["m.relates_to"] == {"rel_type": "m.annotation", "event_id": reply, "key": "❤"}
    original = await stack.sandbox.control("POST", send, {"to": iid, "text": typo})
    typo_event = await user.wait_for(body_is(portal, typo))
    await stack.sandbox.control("POST", send, {"to": iid, "edit": {"id": original["id"], "text": fixed}})
    their_edit = await user.wait_for(
        lambda e: e.get("room_id") == portal and e["content"].get("m.new_content", {}).get("body") == fixed
    )
    assert their_edit["content"]["m.relates_to"] == {"rel_type": "m.replace", "event_id": typo_event["event_id"]}
    await stack.sandbox.control("POST", send, {"to": iid, "revoke": {"id": original["id"]}})
    await user.wait_for(redaction_of(portal, typo_event["event_id"]))

    # A reaction from Matrix to the native's message, and its removal.
    mine = await user.send(
        portal,
        "m.reaction",
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": theirs["event_id"], "key": "👍"}},
    )
    await user.status_of(mine)
    await user.status_of(await user.redact(portal, mine))
    reactions = [m["content"]["reaction"] for m in (await native_events(stack, native, "message", 6))[-2:]]
    assert reactions[0]["key"]["id"] == sent["id"] and reactions[0]["text"] == "👍"
    assert reactions[1].get("text", "") == ""

    # Everything the bridge posted arrived encrypted and decrypted; nothing failed.
    posted = bridge_posts(stack, user, portal)
    assert len(posted) >= 10
    assert all(e.get("encrypted") for e in posted), [e["type"] for e in posted if not e.get("encrypted")]
    assert not user.undecryptable
    assert not [e for e in posted if e["content"].get("reason") == UNDECRYPTABLE]
    if isinstance(user, ElementUser):
        # Element draws no shield on anything the bridge posted: the puppet's messages come
        # from the puppet's own cross-signed device, the statuses from the bot's.
        redacted = {
            e.get("redacts") or e["content"].get("redacts") for e in user.events if e["type"] == "m.room.redaction"
        }
        shields = {
            e["event_id"]: await user.shield(portal, e["event_id"]) for e in posted if e["event_id"] not in redacted
        }
        shielded = {k: v for k, v in shields.items() if v != {"colour": 0, "reason": None}}
        assert not shielded, [
            (e["type"], e["sender"], shielded[e["event_id"]]) for e in posted if e["event_id"] in shielded
        ]
        puppet = theirs["sender"]
        assert await user.device_status(puppet, theirs["sender_device"]) == {"known": True, "signedByOwner": True}
    # Each device of the bridge replaced its room key every 5 messages (this stack's setting).
    uses = Counter(e["session_id"] for e in posted)
    assert len(uses) >= 2 and max(uses.values()) <= 5, uses
    # And no plaintext went to the log, even at DEBUG.
    logged = caplog.text
    assert "Megolm" in logged or "megolm" in logged or "group session" in logged.lower()
    assert not [text for text in PLAINTEXTS if text in logged]
    await user.close()


async def test_a_puppet_whose_device_is_refused_still_speaks_encrypted(
    e2ee_stack: Stack, element: ElementPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The homeserver refuses a puppet's device: the bot's device encrypts for it instead."""
    stack = e2ee_stack
    user = await stack.element_user(element)
    portal, native, iid = await chat(stack, user)

    async def refused(self: DeviceCrypto, self_sign: bool) -> None:
        raise MatrixError("the homeserver said no")

    monkeypatch.setattr(DeviceCrypto, "start", refused)
    text = secret("from a puppet without a device")
    await stack.sandbox.control("POST", f"/natives/{native['iid']}/send", {"to": iid, "text": text})
    event = await user.wait_for(body_is(portal, text))
    assert event["encrypted"] and event["sender_device"] == stack.bridge.matrix.e2ee.device_id
    assert not user.undecryptable
    await user.close()


async def test_a_second_device_reads_and_writes(e2ee_stack: Stack, element: ElementPeer) -> None:
    stack = e2ee_stack
    first = await stack.element_user(element)
    portal, native, iid = await chat(stack, first)
    send = f"/natives/{native['iid']}/send"
    before = secret("before the second device")
    await stack.sandbox.control("POST", send, {"to": iid, "text": before})
    before_event = await first.wait_for(body_is(portal, before))

    joined_at = int(time.time() * 1000)
    second = await stack.element_user(element, first.mxid.split(":")[0][1:])
    assert second.device_id != first.device_id
    # The homeserver tells the bridge of the new device (MSC3202 device lists).
    store = stack.bridge.matrix.e2ee.store
    for _ in range(100):
        devices = await store.get_devices(first.mxid) or {}
        if second.device_id in devices:
            break
        await asyncio.sleep(0.1)
    assert second.device_id in devices

    after = secret("after the second device")
    await stack.sandbox.control("POST", send, {"to": iid, "text": after})
    await first.wait_for(body_is(portal, after))
    await second.wait_for(body_is(portal, after))
    written = secret("from the second device")
    event_id = await second.say(portal, written)
    await second.status_of(event_id)
    await first.wait_for(body_is(portal, written))
    texts = [m["content"].get("text") for m in await native_events(stack, native, "message", 1)]
    assert written in texts
    assert not first.undecryptable
    # History from before the device existed is all it cannot read (there is no key backup).
    assert before_event["event_id"] in second.undecryptable
    assert not second.undecryptable_after(joined_at)
    await second.close()
    await first.close()


async def test_a_restart_keeps_the_device_and_its_sessions(e2ee_stack: Stack, element: ElementPeer) -> None:
    stack = e2ee_stack
    user = await stack.element_user(element)
    portal, native, iid = await chat(stack, user)
    send = f"/natives/{native['iid']}/send"
    device = stack.bridge.matrix.e2ee.device_id
    mine = await user.say(portal, secret("before the restart"))
    await user.status_of(mine)
    reply = secret("reply before the restart")
    await stack.sandbox.control("POST", send, {"to": iid, "text": reply})
    await user.wait_for(body_is(portal, reply))

    await stack.bridge.stop()
    # Written while the bridge is away: Synapse cannot deliver them and marks the bridge
    # down. The room key rotates among them (every 5 messages here), and Synapse drops the
    # to-device events of that moment: the bot device's own sync brings the key back.
    while_away = [secret(f"while the bridge was away {i}") for i in range(7)]
    away_events = [await user.say(portal, text) for text in while_away]
    await asyncio.sleep(1)
    stack.bridge = BridgeApp(stack.bridge.config)
    await stack.bridge.start()
    assert stack.bridge.matrix.e2ee.device_id == device
    assert stack.bridge.matrix.e2ee.bot.cross_signed == 0, "the same cross-signing keys as before"
    for event_id in away_events:
        await user.status_of(event_id, timeout=40)
    received = [m["content"].get("text") for m in await native_events(stack, native, "message", 8)]
    assert received[1:8] == while_away, "every one, once, in order"

    later = secret("after the restart")
    mine_later = await user.say(portal, later)
    await user.status_of(mine_later)
    reply_later = secret("reply after the restart")
    await stack.sandbox.control("POST", send, {"to": iid, "text": reply_later})
    await user.wait_for(body_is(portal, reply_later))
    texts = [m["content"].get("text") for m in await native_events(stack, native, "message", 9)]
    assert texts[-1] == later
    assert not user.undecryptable
    assert not [e for e in bridge_posts(stack, user, portal) if e["content"].get("reason") == UNDECRYPTABLE]
    assert not await stack.bridge.matrix.encrypted.store.all()
    await user.close()


async def test_a_late_key_still_bridges_the_message_even_after_a_restart(e2ee_stack: Stack) -> None:
    stack = e2ee_stack
    alice = await stack.user()
    portal, native, _ = await chat(stack, alice)
    await alice.status_of(await alice.say(portal, secret("warm-up")))
    # Alice's to-device traffic is held back, and she starts a new room key: the bridge
    # gets her next message before its key.
    held: list[tuple[Any, ...]] = []
    original = alice.client.send_to_device

    async def hold(*args: Any, **kwargs: Any) -> None:
        held.append((args, kwargs))

    alice.client.send_to_device = hold  # type: ignore[method-assign]
    await alice.crypto_store.remove_outbound_group_session(portal)
    late = secret("late key")
    event_id = await alice.say(portal, late)
    waiting = await alice.status_of(event_id, "FAIL_RETRIABLE")
    assert waiting["content"]["reason"] == UNDECRYPTABLE
    # The bounded wait (4 s in this stack) runs out: the sender hears what to do.
    notice = await alice.notice(portal, "never received its decryption key", timeout=30)
    assert [m for m in await stack.sandbox.events(native["iid"], "message") if m["content"].get("text") == late] == []
    # The kept ciphertext outlives a restart of the bridge.
    await stack.bridge.stop()
    stack.bridge = BridgeApp(stack.bridge.config)
    await stack.bridge.start()
    assert [item.event_id for item in await stack.bridge.matrix.encrypted.store.all()] == [event_id]

    alice.client.send_to_device = original  # type: ignore[method-assign]
    for args, kwargs in held:
        await original(*args, **kwargs)
    await alice.status_of(event_id)
    await alice.wait_for(redaction_of(portal, notice["event_id"]))
    for _ in range(50):
        delivered = [
            m for m in await stack.sandbox.events(native["iid"], "message") if m["content"].get("text") == late
        ]
        if delivered:
            break
        await asyncio.sleep(0.1)
    assert len(delivered) == 1
    assert not await stack.bridge.matrix.encrypted.store.all()
    await alice.close()


async def test_the_encrypt_command_encrypts_an_existing_portal(e2ee_stack: Stack) -> None:
    stack = e2ee_stack
    core = stack.bridge.core
    config = core.config
    core.config = replace(config, encryption=replace(config.encryption, default=False))
    try:
        alice = await stack.user()
        portal, native, iid = await chat(stack, alice)
    finally:
        core.config = config
    assert not await stack.bridge.matrix.is_encrypted(portal)
    send = f"/natives/{native['iid']}/send"
    await stack.sandbox.control("POST", send, {"to": iid, "text": "before encryption"})
    plain = await alice.wait_for(body_is(portal, "before encryption"))
    assert not plain.get("encrypted")

    await alice.say(portal, "!dma encrypt")
    await alice.notice(portal, "encrypted now")
    assert (await core.portals.by_room(portal)).encrypted
    after = secret("after encryption")
    await stack.sandbox.control("POST", send, {"to": iid, "text": after})
    assert (await alice.wait_for(body_is(portal, after))).get("encrypted")
    mine = secret("mine, encrypted")
    await alice.status_of(await alice.say(portal, mine))
    texts = [m["content"].get("text") for m in await native_events(stack, native, "message", 1)]
    assert mine in texts
    assert not alice.undecryptable
    await alice.close()


async def test_no_plaintext_reaches_synapse_or_the_bridge_database(e2ee_stack: Stack) -> None:
    """Runs after the conversations above, in the same stack."""
    stack = e2ee_stack
    assert len(PLAINTEXTS) > 20
    # Synapse: every file of its SQLite database. A room name (plaintext state) is there,
    # which shows that the search finds what is stored.
    data = b"".join(path.read_bytes() for path in (stack.synapse.directory / "data").glob("homeserver.db*"))
    puppet = await stack.bridge.core.puppets.by_mxid(next(iter(await _puppet_mxids(stack))))
    assert puppet is not None and puppet.displayname.encode() in data
    leaked = [text for text in PLAINTEXTS if text.encode() in data]
    assert not leaked, f"Synapse stored plaintext: {leaked[:3]}"

    # The bridge's Postgres database: every row of every table, as text.
    connection = await asyncpg.connect(stack.bridge.config.database_uri)
    try:
        tables = [
            r["tablename"] for r in await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
        ]
        rows = [row[0] for table in tables for row in await connection.fetch(f'SELECT t::text FROM "{table}" AS t')]
    finally:
        await connection.close()
    dump = "\n".join(rows)
    assert any(table.startswith("crypto_") for table in tables) and "undecrypted_events" in tables
    assert puppet.mxid in dump
    leaked = [text for text in PLAINTEXTS if text in dump or text.encode().hex() in dump]
    assert not leaked, f"the bridge stored plaintext: {leaked[:3]}"


async def _puppet_mxids(stack: Stack) -> list[str]:
    rows = await stack.bridge.core.db.fetch("SELECT mxid FROM puppets")
    return [r["mxid"] for r in rows]


async def test_missing_homeserver_settings_stop_startup(tmp_path) -> None:
    """A registration without MSC3202, and a bridge config that disagrees with the
    registration on MSC4190: start-up names what is missing."""

    def strip(document: dict[str, Any]) -> None:
        document.pop("org.matrix.msc3202", None)

    built, admin, database = await build_stack(tmp_path, "whatsapp", registration_tweak=strip, start_bridge=False)
    config = built.bridge.config
    try:
        built.bridge = BridgeApp(replace(config, encryption=replace(config.encryption, msc4190=False)))
        with pytest.raises(StartupError, match="refused the appservice login"):
            await built.bridge.start()
        await built.bridge.stop()
        built.bridge = BridgeApp(config)
        with pytest.raises(StartupError, match="MSC3202"):
            await built.bridge.start()
    finally:
        await tear_down(built, admin, database)


async def test_a_homeserver_that_keeps_to_device_events_stops_startup(tmp_path) -> None:
    """Without ephemeral events in the registration, Synapse never pushes to-device events:
    the bridge's own test message does not come back, and start-up says what to set."""

    def strip(document: dict[str, Any]) -> None:
        document.pop("de.sorunome.msc2409.push_ephemeral", None)
        document.pop("receive_ephemeral", None)

    built, admin, database = await build_stack(tmp_path, "whatsapp", registration_tweak=strip, start_bridge=False)
    try:
        with pytest.raises(StartupError, match="does not push to-device events to the bridge \\(MSC2409\\)"):
            await built.bridge.start()
    finally:
        await tear_down(built, admin, database)
