"""mautrix's Postgres/SQLite crypto store with the hot reads in memory.

Decrypting one Megolm event cost five statements (the inbound session, the sender's
device, their cross-signing keys, the replay check, and a rewrite of the session only to
note which index was seen); encrypting one cost two. Each statement is a round trip of
about 230 µs of CPU, against about 80 µs for the Megolm work itself. The bridge is the
only writer of its crypto tables, so reads can be served from memory, with every cache
emptied by the writes that could change it, and a read that overlapped a write is
never cached (it may hold what the write replaced). What stays a statement: the replay check and
the outbound session's index, both written before the event they concern goes anywhere,
since a lost index would let one be used twice. The rewrite of an inbound session that is
only bookkeeping (its ratchet-safety notes, which only the key-deletion options read, and
those are off) is written behind, grouped, within a second.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from mautrix.crypto import InboundGroupSession, OutboundGroupSession, PgCryptoStore
from mautrix.types import (
    CrossSigner,
    CrossSigningUsage,
    DeviceID,
    DeviceIdentity,
    IdentityKey,
    RoomID,
    SessionID,
    SigningKey,
    TOFUSigningKey,
    UserID,
)

from bridge.tasks import detached

log = logging.getLogger(__name__)
INBOUND_CACHE = 4096
FLUSH_DELAY = 1.0


class Writes:
    """Counts writes, so that a read which overlapped one (the database answering with what
    the write was replacing) is returned but never cached."""

    def __init__(self) -> None:
        self.count = 0
        self.active = 0

    def mark(self) -> int | None:
        return None if self.active else self.count

    def unchanged(self, mark: int | None) -> bool:
        return mark is not None and mark == self.count and not self.active

    @contextmanager
    def writing(self) -> Iterator[None]:
        self.count += 1
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            self.count += 1


@dataclass
class KeyCache:
    """What every account's store reads alike (the crypto tables of devices, cross-signing
    keys and signatures have no account column): one cache for all the bridge's devices,
    so that a write through any store empties it for all."""

    devices: dict[UserID, dict[DeviceID, DeviceIdentity] | None] = field(default_factory=dict)
    device_by_key: dict[tuple[UserID, IdentityKey], DeviceIdentity | None] = field(default_factory=dict)
    cross_signing: dict[UserID, dict[CrossSigningUsage, TOFUSigningKey]] = field(default_factory=dict)
    signed_by: dict[tuple[CrossSigner, CrossSigner], bool] = field(default_factory=dict)
    writes: Writes = field(default_factory=Writes)

    def clear(self) -> None:
        """Every cached entry (the write count stays)."""
        self.devices.clear()
        self.device_by_key.clear()
        self.cross_signing.clear()
        self.signed_by.clear()


class CachedCryptoStore(PgCryptoStore):
    def __init__(self, account_id: str, pickle_key: str, db: Any, keys: KeyCache | None = None) -> None:
        super().__init__(account_id, pickle_key, db)
        self._inbound: OrderedDict[tuple[RoomID, SessionID], InboundGroupSession] = OrderedDict()
        self._dirty: dict[tuple[RoomID, SessionID], tuple[IdentityKey, InboundGroupSession]] = {}
        self._flush_task: asyncio.Task[None] | None = None
        self._outbound: dict[RoomID, OutboundGroupSession | None] = {}
        self._writes = Writes()  # of this account's sessions
        self.keys = keys if keys is not None else KeyCache()

    # ------------------------------------------------------------------ inbound Megolm sessions

    def _remember(self, key: tuple[RoomID, SessionID], session: InboundGroupSession) -> None:
        self._inbound[key] = session
        self._inbound.move_to_end(key)
        while len(self._inbound) > INBOUND_CACHE:
            self._inbound.popitem(last=False)  # a dirty one is still written: _dirty holds it

    async def get_group_session(self, room_id: RoomID, session_id: SessionID) -> InboundGroupSession | None:
        key = (room_id, session_id)
        cached = self._inbound.get(key)
        if cached is not None:
            self._inbound.move_to_end(key)
            return cached
        mark = self._writes.mark()
        session = await super().get_group_session(room_id, session_id)
        if session is not None and self._writes.unchanged(mark):
            self._remember(key, session)
        return session

    async def put_group_session(
        self, room_id: RoomID, sender_key: IdentityKey, session_id: SessionID, session: InboundGroupSession
    ) -> None:
        key = (room_id, session_id)
        if self._inbound.get(key) is session:
            # The same session object again: decryption noted which index it saw.
            self._dirty[key] = (sender_key, session)
            if self._flush_task is None or self._flush_task.done():
                self._flush_task = detached(self._flush_later(), "crypto store flush")
            return
        self._dirty.pop(key, None)
        with self._writes.writing():
            await super().put_group_session(room_id, sender_key, session_id, session)
        self._remember(key, session)

    async def _flush_later(self) -> None:
        await asyncio.sleep(FLUSH_DELAY)
        await self.flush_sessions()

    async def flush_sessions(self) -> None:
        """Write the sessions whose bookkeeping changed (also on close)."""
        while self._dirty:
            key, (sender_key, session) = self._dirty.popitem()
            try:
                await super().put_group_session(key[0], sender_key, key[1], session)
            except Exception:
                log.exception("could not store the bookkeeping of a room key; it is rewritten on next use")

    async def _forget_inbound(self) -> None:
        """Before a redaction: what is cached may be what it removes."""
        await self.flush_sessions()
        self._inbound.clear()

    async def redact_group_session(self, room_id: RoomID, session_id: SessionID, reason: str) -> None:
        await self._forget_inbound()
        with self._writes.writing():
            await super().redact_group_session(room_id, session_id, reason)

    async def redact_group_sessions(
        self, room_id: RoomID | None, sender_key: IdentityKey | None, reason: str
    ) -> list[SessionID]:
        await self._forget_inbound()
        with self._writes.writing():
            return await super().redact_group_sessions(room_id, sender_key, reason)

    async def redact_expired_group_sessions(self) -> list[SessionID]:
        await self._forget_inbound()
        with self._writes.writing():
            return await super().redact_expired_group_sessions()

    async def redact_outdated_group_sessions(self) -> list[SessionID]:
        await self._forget_inbound()
        with self._writes.writing():
            return await super().redact_outdated_group_sessions()

    # ------------------------------------------------------------------ outbound Megolm sessions

    async def get_outbound_group_session(self, room_id: RoomID) -> OutboundGroupSession | None:
        if room_id in self._outbound:
            return self._outbound[room_id]
        mark = self._writes.mark()
        session = await super().get_outbound_group_session(room_id)
        if self._writes.unchanged(mark):
            self._outbound[room_id] = session
        return session

    async def add_outbound_group_session(self, session: OutboundGroupSession) -> None:
        with self._writes.writing():
            await super().add_outbound_group_session(session)
        self._outbound[session.room_id] = session

    async def update_outbound_group_session(self, session: OutboundGroupSession) -> None:
        with self._writes.writing():
            await super().update_outbound_group_session(session)  # the index, before the event leaves
        self._outbound[session.room_id] = session

    async def remove_outbound_group_session(self, room_id: RoomID) -> None:
        self._outbound.pop(room_id, None)
        with self._writes.writing():
            await super().remove_outbound_group_session(room_id)
        self._outbound.pop(room_id, None)

    async def remove_outbound_group_sessions(self, rooms: list[RoomID]) -> None:
        self.forget_outbound(rooms)
        with self._writes.writing():
            await super().remove_outbound_group_sessions(rooms)
        self.forget_outbound(rooms)

    async def remove_every_accounts_outbound_sessions(self, rooms: list[RoomID]) -> None:
        """Every device's outbound session in these rooms, loaded or not, goes (someone in
        them has a new device, which the old sessions were never shared with). The other
        stores' caches are emptied by their owner."""
        self.forget_outbound(rooms)
        with self._writes.writing():
            for room_id in rooms:
                await self.db.execute("DELETE FROM crypto_megolm_outbound_session WHERE room_id = $1", room_id)
        self.forget_outbound(rooms)

    def forget_outbound(self, rooms: list[RoomID]) -> None:
        for room_id in rooms:
            self._outbound.pop(room_id, None)

    # ------------------------------------------------------------------ devices and cross-signing

    async def get_devices(self, user_id: UserID) -> dict[DeviceID, DeviceIdentity] | None:
        if user_id in self.keys.devices:
            return self.keys.devices[user_id]
        mark = self.keys.writes.mark()
        devices = await super().get_devices(user_id)
        if self.keys.writes.unchanged(mark):
            self.keys.devices[user_id] = devices
        return devices

    async def find_device_by_key(self, user_id: UserID, identity_key: IdentityKey) -> DeviceIdentity | None:
        key = (user_id, identity_key)
        if key in self.keys.device_by_key:
            return self.keys.device_by_key[key]
        mark = self.keys.writes.mark()
        device = await super().find_device_by_key(user_id, identity_key)
        if self.keys.writes.unchanged(mark):
            self.keys.device_by_key[key] = device
        return device

    async def put_devices(self, user_id: UserID, devices: dict[DeviceID, DeviceIdentity]) -> None:
        self._forget_devices(user_id)
        with self.keys.writes.writing():
            await super().put_devices(user_id, devices)
        self._forget_devices(user_id)

    def _forget_devices(self, user_id: UserID) -> None:
        self.keys.devices.pop(user_id, None)
        for key in [k for k in self.keys.device_by_key if k[0] == user_id]:
            del self.keys.device_by_key[key]

    async def get_cross_signing_keys(self, user_id: UserID) -> dict[CrossSigningUsage, TOFUSigningKey]:
        if user_id in self.keys.cross_signing:
            return self.keys.cross_signing[user_id]
        mark = self.keys.writes.mark()
        keys = await super().get_cross_signing_keys(user_id)
        if self.keys.writes.unchanged(mark):
            self.keys.cross_signing[user_id] = keys
        return keys

    async def put_cross_signing_key(self, user_id: UserID, usage: CrossSigningUsage, key: SigningKey) -> None:
        self.keys.cross_signing.pop(user_id, None)
        with self.keys.writes.writing():
            await super().put_cross_signing_key(user_id, usage, key)
        self.keys.cross_signing.pop(user_id, None)

    async def is_key_signed_by(self, target: CrossSigner, signer: CrossSigner) -> bool:
        key = (target, signer)
        if key in self.keys.signed_by:
            return self.keys.signed_by[key]
        mark = self.keys.writes.mark()
        signed = await super().is_key_signed_by(target, signer)
        if self.keys.writes.unchanged(mark):
            self.keys.signed_by[key] = signed
        return signed

    async def put_signature(self, target: CrossSigner, signer: CrossSigner, signature: str) -> None:
        self.keys.signed_by.clear()
        with self.keys.writes.writing():
            await super().put_signature(target, signer, signature)
        self.keys.signed_by.clear()

    async def drop_signatures_by_key(self, signer: CrossSigner) -> int:
        self.keys.signed_by.clear()
        with self.keys.writes.writing():
            dropped = await super().drop_signatures_by_key(signer)
        self.keys.signed_by.clear()
        return dropped

    # ------------------------------------------------------------------ the whole store

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """mautrix stores a fetched device list in one transaction: until it commits, what
        other connections read is the old list, so nothing read meanwhile is cached, and
        what was cached goes once it has committed."""
        with self.keys.writes.writing():
            async with super().transaction():
                yield
            self.keys.clear()

    async def delete(self) -> None:
        self._dirty.clear()
        self._inbound.clear()
        self._outbound.clear()
        self.keys.clear()
        await super().delete()

    async def close(self) -> None:
        if self._flush_task is not None:
            self._flush_task.cancel()
        await self.flush_sessions()
        await super().close()
