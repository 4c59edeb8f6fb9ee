"""``bridge.signal``'s store protocols on the bridge database, for one login.

Private keys, sessions and sender keys are sealed with the at-rest key; a peer's public
identity key is stored plainly. Identity changes are accepted and reported (the portal
then shows a security notice), as WhatsApp clients do.
"""

from __future__ import annotations

import time

from bridge.signal import (
    Direction,
    IdentityChange,
    IdentityKeyPair,
    PreKeyRecord,
    ProtocolAddress,
    PublicKey,
    SenderKeyRecord,
    SessionRecord,
    SignedPreKeyRecord,
)

from .database import Database
from .sealed import Sealer


class DbSignalStore:
    def __init__(self, db: Database, sealer: Sealer, mxid: str, identity: IdentityKeyPair, registration_id: int):
        self._db = db
        self._sealer = sealer
        self.mxid = mxid
        self._identity = identity
        self._registration_id = registration_id
        # Write-through caches: one store per login (the connection manager's), and every
        # change to a session or a peer identity goes through it. A write enters the cache
        # only once its transaction committed, so the cache never holds what a rollback
        # undid; the per-peer lock of the client keeps readers out until then.
        self._sessions: dict[str, SessionRecord] = {}
        self._identities: dict[str, bytes] = {}

    # ------------------------------------------------------------------ identity

    async def get_identity_key_pair(self) -> IdentityKeyPair:
        return self._identity

    async def get_local_registration_id(self) -> int:
        return self._registration_id

    def _cache_identity(self, address: str, serialized: bytes) -> None:
        self._db.after_commit(lambda: self._identities.__setitem__(address, serialized))

    async def save_identity(self, address: ProtocolAddress, key: PublicKey) -> IdentityChange:
        serialized = key.serialize()
        name = str(address)
        if self._identities.get(name) == serialized:
            return IdentityChange.NEW_OR_UNCHANGED
        async with self._db.transaction():
            old = await self._db.fetchval(
                "SELECT identity_key FROM signal_identities WHERE mxid = $1 AND address = $2", self.mxid, name
            )
            if old is not None and bytes(old) == serialized:
                self._cache_identity(name, serialized)
                return IdentityChange.NEW_OR_UNCHANGED
            await self._db.execute(
                "INSERT INTO signal_identities (mxid, address, identity_key, changed_at) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (mxid, address) DO UPDATE SET identity_key = excluded.identity_key,"
                " changed_at = excluded.changed_at",
                self.mxid,
                name,
                serialized,
                int(time.time() * 1000),
            )
            self._cache_identity(name, serialized)
            return IdentityChange.NEW_OR_UNCHANGED if old is None else IdentityChange.REPLACED_EXISTING

    async def is_trusted_identity(self, address: ProtocolAddress, key: PublicKey, direction: Direction) -> bool:
        return True

    async def get_identity(self, address: ProtocolAddress) -> PublicKey | None:
        cached = self._identities.get(str(address))
        if cached is not None:
            return PublicKey.deserialize(cached)
        value = await self._db.fetchval(
            "SELECT identity_key FROM signal_identities WHERE mxid = $1 AND address = $2",
            self.mxid,
            str(address),
        )
        return PublicKey.deserialize(bytes(value)) if value is not None else None

    # ------------------------------------------------------------------ prekeys

    async def load_pre_key(self, pre_key_id: int) -> PreKeyRecord | None:
        value = await self._db.fetchval(
            "SELECT record FROM signal_pre_keys WHERE mxid = $1 AND key_id = $2", self.mxid, pre_key_id
        )
        if value is None:
            return None
        return PreKeyRecord.deserialize(self._sealer.open(value, "pre_key", self.mxid, str(pre_key_id)))

    async def store_pre_key(self, record: PreKeyRecord) -> None:
        sealed = self._sealer.seal(record.serialize(), "pre_key", self.mxid, str(record.id))
        await self._db.execute(
            "INSERT INTO signal_pre_keys (mxid, key_id, record) VALUES ($1, $2, $3)"
            " ON CONFLICT (mxid, key_id) DO UPDATE SET record = excluded.record",
            self.mxid,
            record.id,
            sealed,
        )

    async def store_pre_keys(self, records: list[PreKeyRecord]) -> None:
        rows = [(self.mxid, r.id, self._sealer.seal(r.serialize(), "pre_key", self.mxid, str(r.id))) for r in records]
        await self._db.executemany(
            "INSERT INTO signal_pre_keys (mxid, key_id, record) VALUES ($1, $2, $3)"
            " ON CONFLICT (mxid, key_id) DO UPDATE SET record = excluded.record",
            rows,
        )

    async def remove_pre_key(self, pre_key_id: int) -> None:
        await self._db.execute("DELETE FROM signal_pre_keys WHERE mxid = $1 AND key_id = $2", self.mxid, pre_key_id)

    async def count_pre_keys(self) -> int:
        return int(await self._db.fetchval("SELECT count(*) FROM signal_pre_keys WHERE mxid = $1", self.mxid))

    async def load_signed_pre_key(self, signed_pre_key_id: int) -> SignedPreKeyRecord | None:
        value = await self._db.fetchval(
            "SELECT record FROM signal_signed_pre_keys WHERE mxid = $1 AND key_id = $2",
            self.mxid,
            signed_pre_key_id,
        )
        if value is None:
            return None
        return SignedPreKeyRecord.deserialize(
            self._sealer.open(value, "signed_pre_key", self.mxid, str(signed_pre_key_id))
        )

    async def store_signed_pre_key(self, record: SignedPreKeyRecord) -> None:
        sealed = self._sealer.seal(record.serialize(), "signed_pre_key", self.mxid, str(record.id))
        await self._db.execute(
            "INSERT INTO signal_signed_pre_keys (mxid, key_id, record, created_at) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (mxid, key_id) DO UPDATE SET record = excluded.record",
            self.mxid,
            record.id,
            sealed,
            record.timestamp_ms,
        )

    async def remove_signed_pre_keys_older_than(self, keep_id: int, before_ms: int) -> int:
        """Drop superseded signed prekeys once late PreKey messages can no longer need them."""
        return await self._db.execute(
            "DELETE FROM signal_signed_pre_keys WHERE mxid = $1 AND key_id <> $2 AND created_at < $3",
            self.mxid,
            keep_id,
            before_ms,
        )

    # ------------------------------------------------------------------ sessions and sender keys

    async def load_session(self, address: ProtocolAddress) -> SessionRecord | None:
        cached = self._sessions.get(str(address))
        if cached is not None:
            return cached
        value = await self._db.fetchval(
            "SELECT record FROM signal_sessions WHERE mxid = $1 AND address = $2", self.mxid, str(address)
        )
        if value is None:
            return None
        record = SessionRecord.deserialize(self._sealer.open(value, "session", self.mxid, str(address)))
        self._sessions[str(address)] = record
        return record

    async def store_session(self, address: ProtocolAddress, record: SessionRecord) -> None:
        # Cached only once the write committed: a failed store must not leave a state the
        # database does not have (records are immutable, so keeping the object is safe).
        name = str(address)
        sealed = self._sealer.seal(record.serialize(), "session", self.mxid, name)
        await self._db.execute(
            "INSERT INTO signal_sessions (mxid, address, record) VALUES ($1, $2, $3)"
            " ON CONFLICT (mxid, address) DO UPDATE SET record = excluded.record",
            self.mxid,
            name,
            sealed,
        )
        self._db.after_commit(lambda: self._sessions.__setitem__(name, record))

    async def load_sender_key(self, sender: ProtocolAddress, distribution_id: str) -> SenderKeyRecord | None:
        value = await self._db.fetchval(
            "SELECT record FROM signal_sender_keys WHERE mxid = $1 AND sender = $2 AND distribution_id = $3",
            self.mxid,
            str(sender),
            distribution_id,
        )
        if value is None:
            return None
        return SenderKeyRecord.deserialize(
            self._sealer.open(value, "sender_key", self.mxid, str(sender), distribution_id)
        )

    async def store_sender_key(self, sender: ProtocolAddress, distribution_id: str, record: SenderKeyRecord) -> None:
        sealed = self._sealer.seal(record.serialize(), "sender_key", self.mxid, str(sender), distribution_id)
        await self._db.execute(
            "INSERT INTO signal_sender_keys (mxid, sender, distribution_id, record) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (mxid, sender, distribution_id) DO UPDATE SET record = excluded.record",
            self.mxid,
            str(sender),
            distribution_id,
            sealed,
        )
