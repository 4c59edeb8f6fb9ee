"""The cached crypto store: reads from memory, every write where a fresh process finds it."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator

import pytest
from mautrix.crypto import InboundGroupSession, OutboundGroupSession, PgCryptoStore
from mautrix.errors import GroupSessionWithheldError
from mautrix.types import (
    CrossSigner,
    CrossSigningUsage,
    DeviceID,
    DeviceIdentity,
    IdentityKey,
    RoomID,
    SessionID,
    SigningKey,
    TrustState,
    UserID,
)
from mautrix.util.async_db import Database

from bridge.matrix import crypto_store
from bridge.matrix.crypto_store import CachedCryptoStore, KeyCache
from bridge.matrix.stores import MautrixDatabases

ROOM = RoomID("!room:test")
ALICE = UserID("@alice:test")
SENDER_KEY = IdentityKey("c" * 43)


@pytest.fixture
async def databases(db_uri: str) -> AsyncIterator[MautrixDatabases]:
    databases = MautrixDatabases(db_uri)
    await databases.start()
    yield databases
    await databases.stop()


async def open_store(db: Database) -> CachedCryptoStore:
    store = CachedCryptoStore("@bot:test", "pickle key", db)
    await store.open()
    await store.put_device_id(DeviceID("BOT"))
    return store


def inbound(room: RoomID = ROOM) -> InboundGroupSession:
    outbound = OutboundGroupSession(room)
    return InboundGroupSession(outbound.session_key, SigningKey("s" * 43), SENDER_KEY, room)


class Counting:
    """Counts the statements the store sends (wrapping the database's execute and fetches)."""

    def __init__(self, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        for name in ("execute", "fetch", "fetchrow", "fetchval"):
            original = getattr(db, name)

            async def counted(*args, original=original, **kwargs):
                self.count += 1
                return await original(*args, **kwargs)

            monkeypatch.setattr(db, name, counted)


async def test_inbound_sessions_are_read_once_and_their_bookkeeping_written_behind(
    databases: MautrixDatabases, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(crypto_store, "FLUSH_DELAY", 0.01)
    store = await open_store(databases.crypto)
    session = inbound()
    session_id = SessionID(session.id)
    await store.put_group_session(ROOM, SENDER_KEY, session_id, session)
    counting = Counting(databases.crypto, monkeypatch)
    assert await store.get_group_session(ROOM, session_id) is session
    assert counting.count == 0
    # Decryption noting an index rewrites the same object: not at once, but soon.
    session.ratchet_safety.next_index = 7
    await store.put_group_session(ROOM, SENDER_KEY, session_id, session)
    assert counting.count == 0
    await store.close()
    assert counting.count == 1
    fresh = await open_store(databases.crypto)
    stored = await fresh.get_group_session(ROOM, session_id)
    assert stored is not None and stored.ratchet_safety.next_index == 7


async def test_redaction_empties_the_cache(databases: MautrixDatabases) -> None:
    store = await open_store(databases.crypto)
    session = inbound()
    await store.put_group_session(ROOM, SENDER_KEY, SessionID(session.id), session)
    assert await store.get_group_session(ROOM, SessionID(session.id)) is session
    await store.redact_group_session(ROOM, SessionID(session.id), "test")
    # mautrix keeps a redacted session's row and raises on reading it: it is not the cached one.
    with pytest.raises(GroupSessionWithheldError):
        await store.get_group_session(ROOM, SessionID(session.id))


async def test_outbound_index_is_written_through(databases: MautrixDatabases, monkeypatch: pytest.MonkeyPatch) -> None:
    store = await open_store(databases.crypto)
    outbound = OutboundGroupSession(ROOM)
    outbound.shared = True
    await store.add_outbound_group_session(outbound)
    counting = Counting(databases.crypto, monkeypatch)
    session = await store.get_outbound_group_session(ROOM)
    assert session is outbound and counting.count == 0
    session.encrypt("{}")
    await store.update_outbound_group_session(session)
    assert counting.count == 1
    fresh = await open_store(databases.crypto)
    assert (await fresh.get_outbound_group_session(ROOM)).message_count == 1
    await store.remove_outbound_group_session(ROOM)
    assert await store.get_outbound_group_session(ROOM) is None


async def test_device_and_cross_signing_caches_follow_writes(
    databases: MautrixDatabases, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await open_store(databases.crypto)
    device = DeviceIdentity(ALICE, DeviceID("A1"), SENDER_KEY, SigningKey("s" * 43), TrustState.UNVERIFIED, False, "a")
    await store.put_devices(ALICE, {device.device_id: device})
    assert (await store.find_device_by_key(ALICE, SENDER_KEY)).device_id == "A1"
    assert list(await store.get_devices(ALICE)) == ["A1"]
    counting = Counting(databases.crypto, monkeypatch)
    assert (await store.find_device_by_key(ALICE, SENDER_KEY)).device_id == "A1"
    assert list(await store.get_devices(ALICE)) == ["A1"]
    assert counting.count == 0
    renamed = DeviceIdentity(ALICE, DeviceID("A1"), SENDER_KEY, device.signing_key, TrustState.VERIFIED, False, "b")
    await store.put_devices(ALICE, {renamed.device_id: renamed})
    assert (await store.get_devices(ALICE))["A1"].trust == TrustState.VERIFIED

    master, other = SigningKey("m" * 43), SigningKey("n" * 43)
    await store.put_cross_signing_key(ALICE, CrossSigningUsage.MASTER, master)
    assert (await store.get_cross_signing_keys(ALICE))[CrossSigningUsage.MASTER].key == master
    await store.put_cross_signing_key(ALICE, CrossSigningUsage.MASTER, other)
    assert (await store.get_cross_signing_keys(ALICE))[CrossSigningUsage.MASTER].key == other
    target, signer = CrossSigner(ALICE, other), CrossSigner(ALICE, master)
    assert not await store.is_key_signed_by(target, signer)
    await store.put_signature(target, signer, "signature")
    assert await store.is_key_signed_by(target, signer)


async def test_every_account_sees_a_device_change_made_through_another(databases: MautrixDatabases) -> None:
    """The bot's store and a puppet's share the device tables, and so one cache."""
    keys = KeyCache()
    bot = CachedCryptoStore("@bot:test", "pickle key", databases.crypto, keys)
    puppet = CachedCryptoStore("@puppet:test", "pickle key", databases.crypto, keys)
    first = DeviceIdentity(ALICE, DeviceID("A1"), SENDER_KEY, SigningKey("s" * 43), TrustState.UNVERIFIED, False, "a")
    await bot.put_devices(ALICE, {first.device_id: first})
    assert list(await puppet.get_devices(ALICE)) == ["A1"]
    second = DeviceIdentity(
        ALICE, DeviceID("A2"), IdentityKey("d" * 43), SigningKey("t" * 43), TrustState.UNVERIFIED, False, "b"
    )
    await bot.put_devices(ALICE, {first.device_id: first, second.device_id: second})
    assert sorted(await puppet.get_devices(ALICE)) == ["A1", "A2"]


async def test_a_new_device_ends_every_accounts_outbound_session(databases: MautrixDatabases) -> None:
    bot, puppet = await open_store(databases.crypto), CachedCryptoStore("@puppet:test", "k", databases.crypto)
    for store in (bot, puppet):
        session = OutboundGroupSession(ROOM)
        session.shared = True
        await store.add_outbound_group_session(session)
    await bot.remove_every_accounts_outbound_sessions([ROOM])
    puppet.forget_outbound([ROOM])
    assert await bot.get_outbound_group_session(ROOM) is None
    assert await puppet.get_outbound_group_session(ROOM) is None


async def test_a_read_that_overlaps_a_write_is_not_cached(
    databases: MautrixDatabases, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device list fetched while another task reads it: the reader may see the old list,
    but the cache must not keep it once the write is done."""
    store = await open_store(databases.crypto)
    first = DeviceIdentity(ALICE, DeviceID("A1"), SENDER_KEY, SigningKey("s" * 43), TrustState.UNVERIFIED, False, "a")
    second = DeviceIdentity(
        ALICE, DeviceID("A2"), IdentityKey("d" * 43), SigningKey("t" * 43), TrustState.UNVERIFIED, False, "b"
    )
    await store.put_devices(ALICE, {first.device_id: first})
    entered, release = asyncio.Event(), asyncio.Event()
    original = PgCryptoStore.put_devices

    async def slow(self: PgCryptoStore, user_id: UserID, devices: dict) -> None:
        entered.set()
        await release.wait()
        await original(self, user_id, devices)

    monkeypatch.setattr(PgCryptoStore, "put_devices", slow)
    writer = asyncio.get_running_loop().create_task(store.put_devices(ALICE, {"A1": first, "A2": second}))
    await entered.wait()
    assert list(await store.get_devices(ALICE)) == ["A1"]  # read while the write is under way
    release.set()
    await writer
    assert sorted(await store.get_devices(ALICE)) == ["A1", "A2"]


async def test_a_read_before_a_transaction_commits_is_not_cached(databases: MautrixDatabases) -> None:
    """mautrix stores a fetched device list in a transaction; a reader between the write
    and the commit sees the old list, which must not outlive the commit."""
    if databases.crypto.scheme.value == "sqlite":
        pytest.skip("SQLite has one connection: no reader runs beside a transaction")
    store = await open_store(databases.crypto)
    reader = CachedCryptoStore("@puppet:test", "pickle key", databases.crypto, store.keys)
    first = DeviceIdentity(ALICE, DeviceID("A1"), SENDER_KEY, SigningKey("s" * 43), TrustState.UNVERIFIED, False, "a")
    second = DeviceIdentity(
        ALICE, DeviceID("A2"), IdentityKey("d" * 43), SigningKey("t" * 43), TrustState.UNVERIFIED, False, "b"
    )
    await store.put_devices(ALICE, {first.device_id: first})
    async with store.transaction():
        await store.put_devices(ALICE, {"A1": first, "A2": second})
        # Another task outside the transaction (a fresh context: another connection).
        seen = await asyncio.get_running_loop().create_task(reader.get_devices(ALICE), context=contextvars.Context())
        assert list(seen) == ["A1"]
    assert sorted(await reader.get_devices(ALICE)) == ["A1", "A2"]
