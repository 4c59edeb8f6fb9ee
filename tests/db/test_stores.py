"""Stores on both backends: sealing, logins, the Signal store, the outbox and inbox."""

from __future__ import annotations

import os

import pytest

from bridge.db.database import Database, create_database
from bridge.db.logins import Login, LoginState, LoginStore
from bridge.db.queues import Inbox, Outbox
from bridge.db.sealed import Sealer, SealError
from bridge.db.signal_store import DbSignalStore
from bridge.signal import (
    IdentityChange,
    IdentityKeyPair,
    MessageType,
    PreKeyBundle,
    ProtocolAddress,
    SessionCipher,
    SignedPreKeyRecord,
    generate_prekeys,
)
from devstack.signal_parties import LocalParty, to_bundle
from tests.db.rows import rows_left

KEY = bytes(range(32))
MXID = "@alice:example.org"


def sealer() -> Sealer:
    return Sealer(KEY)


def login(mxid: str = MXID, **changes) -> Login:
    values = dict(
        mxid=mxid,
        uvid=mxid,
        iid=None,
        state=LoginState.ENLISTING,
        consented_at=1,
        eea_attested=True,
        country="DE",
        noise_private=os.urandom(32),
        registration_id=77,
        identity=IdentityKeyPair.generate(),
        signed_pre_key_id=1,
        next_pre_key_id=1,
        management_room="!mgmt:example.org",
        created_at=1,
    )
    values.update(changes)
    return Login(**values)


def test_sealer_binds_context_and_key() -> None:
    box = sealer()
    sealed = box.seal(b"secret", "table", "row")
    assert box.open(sealed, "table", "row") == b"secret"
    assert b"secret" not in sealed
    with pytest.raises(SealError):
        box.open(sealed, "table", "other row")
    with pytest.raises(SealError, match=r"encryption_at_rest\.key"):
        Sealer(bytes(32)).open(sealed, "table", "row")
    with pytest.raises(SealError):
        box.open(b"\x01short", "table", "row")


async def test_logins_round_trip_and_reserve_ids(db: Database) -> None:
    store = LoginStore(db, sealer())
    original = login(next_pre_key_id=0xFFFFFD)
    await store.insert(original)
    loaded = await store.get(MXID)
    assert loaded is not None
    assert loaded.identity.public == original.identity.public
    assert loaded.noise_private == original.noise_private
    assert await store.reserve_pre_key_ids(MXID, 4) == 0xFFFFFD
    assert (await store.get(MXID)).next_pre_key_id == 3  # 0xFFFFFD, 0xFFFFFE, 1, 2 reserved
    await store.set_enlisted(MXID, "1-123@interop")
    enlisted = await store.by_iid("1-123@interop")
    assert enlisted is not None and enlisted.state is LoginState.ENLISTED
    assert [item.mxid for item in await store.all(LoginState.ENLISTED)] == [MXID]


async def _establish(store: DbSignalStore, peer: LocalParty) -> None:
    """A session with a Memory-store peer: we initiate, it answers."""
    bundle = to_bundle(await peer.make_bundle(one_time=True))
    cipher = SessionCipher(store, ProtocolAddress(peer.name, 1))
    await cipher.process_bundle(bundle)
    message = await cipher.encrypt(b"hello")
    assert await peer.decrypt(MXID, int(message.type), message.serialized) == b"hello"
    reply_type, reply = await peer.encrypt(MXID, b"hi back")
    assert (await cipher.decrypt(MessageType(reply_type), reply)).plaintext == b"hi back"


async def _device(db: Database) -> tuple[LoginStore, Login, DbSignalStore, SignedPreKeyRecord]:
    """A stored login with its Signal store and a signed prekey."""
    logins = LoginStore(db, sealer())
    row = login()
    await logins.insert(row)
    store = DbSignalStore(db, sealer(), row.mxid, row.identity, row.registration_id)
    signed = SignedPreKeyRecord.generate(row.identity, 1, 5)
    await store.store_signed_pre_key(signed)
    return logins, row, store, signed


async def test_signal_store_in_a_conversation_and_across_a_restart(db: Database, db_uri: str) -> None:
    _, _, store, _ = await _device(db)
    await store.store_pre_keys(generate_prekeys(1, 3))
    assert await store.count_pre_keys() == 3
    peer = LocalParty("+4915112345678", 9)
    await _establish(store, peer)

    # The bridge restarts: a new connection and new store objects read the same rows.
    again = create_database(db_uri)
    await again.start()
    try:
        reloaded = await LoginStore(again, sealer()).get(MXID)
        restarted = DbSignalStore(again, sealer(), reloaded.mxid, reloaded.identity, reloaded.registration_id)
        cipher = SessionCipher(restarted, ProtocolAddress(peer.name, 1))
        for i in range(3):
            message = await cipher.encrypt(b"after restart %d" % i)
            assert message.type == MessageType.WHISPER
            assert await peer.decrypt(MXID, int(message.type), message.serialized) == b"after restart %d" % i
            reply_type, reply = await peer.encrypt(MXID, b"reply %d" % i)
            assert (await cipher.decrypt(MessageType(reply_type), reply)).plaintext == b"reply %d" % i
    finally:
        await again.close()


async def test_peer_prekey_message_consumes_our_one_time_prekey(db: Database) -> None:
    _, row, store, signed = await _device(db)
    [opk] = generate_prekeys(40, 1)
    await store.store_pre_key(opk)
    peer = LocalParty("peer", 3)
    await peer.cipher(MXID).process_bundle(
        PreKeyBundle(
            77,
            1,
            opk.id,
            opk.key_pair.public,
            signed.id,
            signed.key_pair.public,
            signed.signature,
            row.identity.public,
        )
    )
    message_type, body = await peer.encrypt(MXID, b"first contact")
    result = await SessionCipher(store, ProtocolAddress("peer", 1)).decrypt(MessageType(message_type), body)
    assert result.plaintext == b"first contact"
    assert await store.load_pre_key(opk.id) is None
    # The peer reinstalls: the identity change is reported.
    peer.reinstall()
    await peer.cipher(MXID).process_bundle(
        PreKeyBundle(77, 1, None, None, signed.id, signed.key_pair.public, signed.signature, row.identity.public)
    )
    message_type, body = await peer.encrypt(MXID, b"new phone")
    result = await SessionCipher(store, ProtocolAddress("peer", 1)).decrypt(MessageType(message_type), body)
    assert result.identity_change is IdentityChange.REPLACED_EXISTING


async def _all_bytes(db: Database) -> bytes:
    tables = [
        "logins",
        "signal_pre_keys",
        "signal_signed_pre_keys",
        "signal_sessions",
        "signal_identities",
        "outbox",
        "inbox",
    ]
    out = bytearray()
    for table in tables:
        for row in await db.fetch(f"SELECT * FROM {table}"):
            for value in row.values():
                if isinstance(value, (bytes, bytearray, memoryview)):
                    out += bytes(value)
                elif value is not None:
                    out += str(value).encode()
    return bytes(out)


async def test_no_key_material_or_plaintext_in_any_row(db: Database) -> None:
    _, row, store, signed = await _device(db)
    prekeys = generate_prekeys(1, 2)
    await store.store_pre_keys(prekeys)
    peer = LocalParty("peer", 3)
    await _establish(store, peer)
    secret_text = b"the launch code is 0000"
    await Outbox(db, sealer()).accept(
        receiver=MXID,
        peer="1@native",
        gk_id="G1",
        kind="text",
        room_id="!r:x",
        event_id="$e1",
        payload=secret_text,
    )
    await Inbox(db, sealer()).accept(
        receiver=MXID, sender="1@native", peer="1@native", gk_id="N1", kind="text", payload=secret_text
    )
    dump = await _all_bytes(db)
    assert secret_text not in dump
    assert row.identity.key_pair.private not in dump
    assert row.noise_private not in dump
    assert signed.key_pair.private not in dump
    assert all(p.key_pair.private not in dump for p in prekeys)
    record = await store.load_session(ProtocolAddress(peer.name, 1))
    assert record.current.root_key.key not in dump


async def test_erasing_a_login_leaves_no_row(db: Database) -> None:
    logins, _, store, _ = await _device(db)
    await logins.insert(login("@bob:example.org"))
    await store.store_pre_keys(generate_prekeys(1, 2))
    await _establish(store, LocalParty("peer", 3))
    await db.execute(
        "INSERT INTO portals (receiver, peer, room_id, encrypted, created_at) VALUES ($1, $2, $3, $4, 1)",
        MXID,
        "1@native",
        "!room:x",
        False,
    )
    await db.execute(
        "INSERT INTO messages (receiver, peer, gk_id, from_me, room_id, event_id, timestamp)"
        " VALUES ($1, $2, 'G', $3, '!room:x', '$e', 1)",
        MXID,
        "1@native",
        True,
    )
    await Outbox(db, sealer()).accept(
        receiver=MXID,
        peer="1@native",
        gk_id="G2",
        kind="text",
        room_id="!room:x",
        event_id="$e2",
        payload=b"x",
    )
    await Inbox(db, sealer()).accept(
        receiver=MXID, sender="1@native", peer="1@native", gk_id="N1", kind="text", payload=b"y"
    )
    await db.execute(
        "INSERT INTO retry_receipts (receiver, sender, gk_id, count, updated_at) VALUES ($1, '1@native', 'N2', 1, 1)",
        MXID,
    )
    await logins.delete(MXID)
    assert await rows_left(db, MXID) == {}
    assert await logins.get("@bob:example.org") is not None


async def test_outbox_accepts_each_event_once_and_forgets_sent_content(db: Database) -> None:
    await LoginStore(db, sealer()).insert(login())
    outbox = Outbox(db, sealer())
    args = dict(receiver=MXID, peer="1@native", kind="text", room_id="!r:x", payload=b"hello")
    first, new = await outbox.accept(gk_id="G1", event_id="$1", **args)
    again, new_again = await outbox.accept(gk_id="G-other", event_id="$1", **args)
    assert new and not new_again
    assert again.id == first.id and again.gk_id == "G1", "a resent Matrix event keeps its gatekeeper id"
    second, _ = await outbox.accept(gk_id="G2", event_id="$2", **args)
    assert [i.id for i in await outbox.pending(MXID)] == [first.id, second.id]
    await outbox.attempted(first.id, "429: rate limited")
    assert (await outbox.get(first.id)).attempts == 1
    await outbox.set_prepared(first, b"the prepared stanza")
    assert (await outbox.get(first.id)).prepared == b"the prepared stanza"
    await outbox.mark_sent(first.id)
    sent = await outbox.get(first.id)
    # Kept (sealed) to answer a retry receipt, until the retention erases it.
    assert sent.state == "sent" and sent.payload == b"hello" and sent.prepared == b"the prepared stanza"
    await outbox.mark_failed(second.id, "403: not reachable")
    failed = await outbox.get(second.id)
    assert failed.state == "failed" and failed.payload is None
    assert await outbox.pending(MXID) == []


async def test_inbox_accepts_each_message_once(db: Database) -> None:
    await LoginStore(db, sealer()).insert(login())
    inbox = Inbox(db, sealer())
    args = dict(receiver=MXID, sender="1:2@native", peer="1@native", gk_id="N1")
    item, new = await inbox.accept(kind="text", payload=b"hi", sent_at=1_700_000_000_000, **args)
    again, new_again = await inbox.accept(kind="text", payload=b"hi", **args)
    assert new and not new_again and again.id == item.id and again.payload == b"hi"
    assert item.peer == "1@native" and item.sent_at == 1_700_000_000_000
    # A receipt with the same id is another event (another kind), stored beside it.
    receipt, receipt_new = await inbox.accept(kind="receipt:read", payload=b'["N1"]', **args)
    assert receipt_new and receipt.id != item.id
    assert [i.id for i in await inbox.pending_for(MXID, "1@native")] == [item.id, receipt.id]
    assert await inbox.attempted(item.id, "Refused") == 1
    assert await inbox.attempted(item.id, "Refused") == 2
    await inbox.mark_posted(item.id, "$posted")
    await inbox.mark_failed(receipt.id, "Refused")
    assert await inbox.pending() == []
    repeat, repeat_new = await inbox.accept(kind="text", payload=b"hi", **args)
    assert not repeat_new and repeat.state == "posted" and repeat.event_id == "$posted"


async def test_unread_messages_and_receipts(db: Database) -> None:
    from bridge.db.portals import MessageRef, MessageStore, PortalStore

    await LoginStore(db, sealer()).insert(login())
    await PortalStore(db).insert(MXID, "9@native", "!room:x", False)
    messages = MessageStore(db)
    for i, from_me in enumerate((False, True, False, False)):
        await messages.put(MessageRef(MXID, "9@native", f"G{i}", from_me, "!room:x", f"$e{i}", 100 + i))
    unread = await messages.unread_from_peer(MXID, "9@native", "!room:x", 102)
    assert [m.gk_id for m in unread] == ["G0", "G2"]
    await messages.record_receipts(MXID, "9@native", ["G0", "G2"], "read")
    assert [m.gk_id for m in await messages.unread_from_peer(MXID, "9@native", "!room:x", 103)] == ["G3"]
    await messages.record_receipts(MXID, "9@native", ["G2"], "read")  # repeats are harmless
    assert await messages.record_receipt(MXID, "9@native", "G3", "delivered")
    assert not await messages.record_receipt(MXID, "9@native", "G3", "delivered")


async def test_retention_prunes_done_rows_and_erases_old_contents(db: Database) -> None:
    await LoginStore(db, sealer()).insert(login())
    outbox, inbox = Outbox(db, sealer()), Inbox(db, sealer())
    args = dict(receiver=MXID, peer="1@native", kind="text", room_id="!r:x", payload=b"hello")
    items = [(await outbox.accept(gk_id=f"G{i}", event_id=f"${i}", **args))[0] for i in range(4)]
    for item in items[:3]:
        await outbox.mark_sent(item.id)
    # The newest two sent messages keep their content (the count bound), older ones not.
    assert await outbox.forget_contents(before_ms=0, keep_per_receiver=2) == 1
    assert [(await outbox.get(i.id)).payload for i in items] == [None, b"hello", b"hello", b"hello"]
    # Past the age bound every sent content goes; the pending one is untouched.
    await outbox.forget_contents(before_ms=10**15, keep_per_receiver=2)
    assert [(await outbox.get(i.id)).payload for i in items] == [None, None, None, b"hello"]
    assert await outbox.prune(before_ms=10**15) == 3
    assert [i.id for i in await outbox.pending()] == [items[3].id]
    item, _ = await inbox.accept(
        receiver=MXID, sender="1@native", peer="1@native", gk_id="N", kind="text", payload=b"y"
    )
    assert await inbox.prune(before_ms=10**15) == 0, "a pending item is never pruned"
    await inbox.mark_posted(item.id, "$e")
    assert await inbox.prune(before_ms=0) == 0
    assert await inbox.prune(before_ms=10**15) == 1


async def test_a_resent_matrix_transaction_is_stored_once_and_sealed(db: Database) -> None:
    from bridge.db.matrix_events import MatrixEventStore, NewEvent

    store = MatrixEventStore(db, sealer())
    body = {"type": "m.room.message", "room_id": "!r:x", "event_id": "$1", "content": {"body": "the secret plan"}}
    parts = [NewEvent("to_device", {"type": "m.room.encrypted"}), NewEvent("event", body, "!r:x", "$1")]
    stored = await store.store_transaction("7/abc", parts)
    assert [e.kind for e in stored] == ["to_device", "event"] and stored[1].body == body
    assert await store.store_transaction("7/abc", parts) == [], "the homeserver's resend changes nothing"
    assert b"the secret plan" not in await _all_bytes(db)
    assert [e.id for e in await store.pending(("event",))] == [stored[1].id]
    assert [e.event_id for e in await store.pending_in_room("!r:x")] == ["$1"]
    # Catch-up found $1 and $2 in the timeline: $1 came already, $2 is new, once.
    body2 = {**body, "event_id": "$2"}
    caught = [NewEvent("event", body, "!r:x", "$1"), NewEvent("event", body2, "!r:x", "$2")]
    assert [e.event_id for e in await store.store_transaction("catch-up/$1", caught)] == ["$2"]
    assert await store.known(["$1", "$2", "$3"]) == {"$1", "$2"}
    assert await store.store_transaction("8/def", [NewEvent("event", body2, "!r:x", "$2")]) == []
    second = await store.pending_in_room("!r:x")
    assert [e.event_id for e in second] == ["$1", "$2"]
    await store.mark_done(second[1].id)
    assert await store.attempted(stored[1].id, "Refused") == 1
    await store.mark_done(stored[1].id)
    await store.mark_failed(stored[0].id, "handler")
    assert await store.pending() == [] and await store.get(stored[1].id) is None
    assert await store.prune(before_ms=10**15) == 3


async def test_retry_counts_outlive_a_connection_and_sent_messages_are_found(db: Database) -> None:
    from bridge.db.retries import DbRetryStore
    from bridge.gip.jid import Jid
    from bridge.gip.outgoing import PreparedMessage
    from bridge.gip.stanzas import Enc, EncType

    await LoginStore(db, sealer()).insert(login())
    outbox = Outbox(db, sealer())
    sender = Jid.parse("1:2@native")
    assert await DbRetryStore(db, outbox, MXID).count_failure(sender, "M1") == 1
    # A new connection (a new store object) keeps counting.
    assert await DbRetryStore(db, outbox, MXID).count_failure(sender, "M1") == 2
    assert await DbRetryStore(db, outbox, MXID).count_failure(sender, "M2") == 1
    item, _ = await outbox.accept(
        receiver=MXID, peer="1@native", gk_id="G1", kind="text", room_id="!r:x", event_id="$1", payload=b"content"
    )
    store = DbRetryStore(db, outbox, MXID)
    assert (await store.sent("G1")).devices == ()
    prepared = PreparedMessage("G1", Jid.parse("1@native"), "text", 1, "h", ((sender, Enc(EncType.MSG, b"x")),))
    await outbox.set_prepared(item, prepared.serialize())
    sent = await store.sent("G1")
    assert sent.to == Jid.parse("1@native") and sent.content == b"content" and sent.devices == (sender,)
    assert await store.sent("unknown") is None


async def test_a_puppet_keeps_every_field_it_was_given(db: Database) -> None:
    from bridge.db.portals import Puppet, PuppetStore

    puppets = PuppetStore(db)
    await puppets.put(Puppet("1@native", "+491", "@dma_old:x", "Old"))
    await puppets.put(Puppet("1@native", "+491", "@dma_new:x", "New"))
    assert (await PuppetStore(db).get("1@native")).mxid == "@dma_new:x", "the row holds what the cache says"


async def test_after_commit_runs_only_for_what_committed(db: Database) -> None:
    seen: list[str] = []
    async with db.transaction():
        await db.execute("INSERT INTO kv (name, value, updated_at) VALUES ('a', '1', 1)")
        db.after_commit(lambda: seen.append("committed"))
        assert seen == [], "not before the commit"
    assert seen == ["committed"]

    async def failing() -> None:
        async with db.transaction():
            await db.execute("INSERT INTO kv (name, value, updated_at) VALUES ('b', '1', 1)")
            db.after_commit(lambda: seen.append("rolled back"))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await failing()
    assert seen == ["committed"]
    db.after_commit(lambda: seen.append("outside"))
    assert seen == ["committed", "outside"]
