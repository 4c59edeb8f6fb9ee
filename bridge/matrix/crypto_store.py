"""mautrix's Postgres/SQLite crypto store with the hot reads in memory.

Decrypting one Megolm event cost five statements (the inbound session, the sender's
device, their cross-signing keys, the replay check, and a rewrite of the session only to
note which index was seen); encrypting one cost two. Each statement is a round trip of
about 230 µs of CPU, against about 80 µs for the Megolm work itself. The bridge is the
only writer of its crypto tables, so reads can be served from memory, with every cache
emptied by the writes that could change it. What stays a statement: the replay check and
the outbound session's index, both written before the event they concern goes anywhere,
since a lost index would let one be used twice. The rewrite of an inbound session that is
only bookkeeping (its ratchet-safety notes, which only the key-deletion options read, and
those are off) is written behind, grouped, within a second.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
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

log = logging.getLogger(__name__)
INBOUND_CACHE = 4096
FLUSH_DELAY = 1.0


@dataclass
class KeyCache:
    """What every account's store reads alike (the crypto tables of devices, cross-signing
    keys and signatures have no account column): one cache for all the bridge's devices,
    so that a write through any store empties it for all."""

    devices: dict[UserID, dict[DeviceID, DeviceIdentity] | None] = field(default_factory=dict)
    device_by_key: dict[tuple[UserID, IdentityKey], DeviceIdentity | None] = field(default_factory=dict)
    cross_signing: dict[UserID, dict[CrossSigningUsage, TOFUSigningKey]] = field(default_factory=dict)
    signed_by: dict[tuple[CrossSigner, CrossSigner], bool] = field(default_factory=dict)

    def clear(self) -> None:
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
        session = await super().get_group_session(room_id, session_id)
        if session is not None:
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
                self._flush_task = asyncio.get_running_loop().create_task(self._flush_later())
            return
        self._dirty.pop(key, None)
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
        await self.flush_sessions()
        self._inbound.clear()

    async def redact_group_session(self, room_id: RoomID, session_id: SessionID, reason: str) -> None:
        await self._forget_inbound()
        await super().redact_group_session(room_id, session_id, reason)

    async def redact_group_sessions(
        self, room_id: RoomID | None, sender_key: IdentityKey | None, reason: str
    ) -> list[SessionID]:
        await self._forget_inbound()
        return await super().redact_group_sessions(room_id, sender_key, reason)

    async def redact_expired_group_sessions(self) -> list[SessionID]:
        await self._forget_inbound()
        return await super().redact_expired_group_sessions()

    async def redact_outdated_group_sessions(self) -> list[SessionID]:
        await self._forget_inbound()
        return await super().redact_outdated_group_sessions()

    # ------------------------------------------------------------------ outbound Megolm sessions

    async def get_outbound_group_session(self, room_id: RoomID) -> OutboundGroupSession | None:
        if room_id not in self._outbound:
            self._outbound[room_id] = await super().get_outbound_group_session(room_id)
        return self._outbound[room_id]

    async def add_outbound_group_session(self, session: OutboundGroupSession) -> None:
        await super().add_outbound_group_session(session)
        self._outbound[session.room_id] = session

    async def update_outbound_group_session(self, session: OutboundGroupSession) -> None:
        await super().update_outbound_group_session(session)  # the index, before the event leaves
        self._outbound[session.room_id] = session

    async def remove_outbound_group_session(self, room_id: RoomID) -> None:
        self._outbound.pop(room_id, None)
        await super().remove_outbound_group_session(room_id)

    async def remove_outbound_group_sessions(self, rooms: list[RoomID]) -> None:
        for room_id in rooms:
            self._outbound.pop(room_id, None)
        await super().remove_outbound_group_sessions(rooms)

    async def remove_every_accounts_outbound_sessions(self, rooms: list[RoomID]) -> None:
        """Every device's outbound session in these rooms, loaded or not, goes (someone in
        them has a new device, which the old sessions were never shared with). The other
        stores' caches are emptied by their owner."""
        for room_id in rooms:
            self._outbound.pop(room_id, None)
            await self.db.execute("DELETE FROM crypto_megolm_outbound_session WHERE room_id = $1", room_id)

    def forget_outbound(self, rooms: list[RoomID]) -> None:
        for room_id in rooms:
            self._outbound.pop(room_id, None)

    # ------------------------------------------------------------------ devices and cross-signing

    async def get_devices(self, user_id: UserID) -> dict[DeviceID, DeviceIdentity] | None:
        if user_id not in self.keys.devices:
            self.keys.devices[user_id] = await super().get_devices(user_id)
        return self.keys.devices[user_id]

    async def find_device_by_key(self, user_id: UserID, identity_key: IdentityKey) -> DeviceIdentity | None:
        key = (user_id, identity_key)
        if key not in self.keys.device_by_key:
            self.keys.device_by_key[key] = await super().find_device_by_key(user_id, identity_key)
        return self.keys.device_by_key[key]

    async def put_devices(self, user_id: UserID, devices: dict[DeviceID, DeviceIdentity]) -> None:
        self._forget_devices(user_id)
        await super().put_devices(user_id, devices)

    def _forget_devices(self, user_id: UserID) -> None:
        self.keys.devices.pop(user_id, None)
        for key in [k for k in self.keys.device_by_key if k[0] == user_id]:
            del self.keys.device_by_key[key]

    async def get_cross_signing_keys(self, user_id: UserID) -> dict[CrossSigningUsage, TOFUSigningKey]:
        if user_id not in self.keys.cross_signing:
            self.keys.cross_signing[user_id] = await super().get_cross_signing_keys(user_id)
        return self.keys.cross_signing[user_id]

    async def put_cross_signing_key(self, user_id: UserID, usage: CrossSigningUsage, key: SigningKey) -> None:
        self.keys.cross_signing.pop(user_id, None)
        await super().put_cross_signing_key(user_id, usage, key)

    async def is_key_signed_by(self, target: CrossSigner, signer: CrossSigner) -> bool:
        key = (target, signer)
        if key not in self.keys.signed_by:
            self.keys.signed_by[key] = await super().is_key_signed_by(target, signer)
        return self.keys.signed_by[key]

    async def put_signature(self, target: CrossSigner, signer: CrossSigner, signature: str) -> None:
        self.keys.signed_by.clear()
        await super().put_signature(target, signer, signature)

    async def drop_signatures_by_key(self, signer: CrossSigner) -> int:
        self.keys.signed_by.clear()
        return await super().drop_signatures_by_key(signer)

    # ------------------------------------------------------------------ the whole store

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
