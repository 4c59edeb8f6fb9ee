"""A unit of work over a Signal store: operations run against it, nothing is written
until :meth:`StagedSignalStore.commit`.

Decrypting a message advances its session; the advanced session must become durable in
the same transaction as the decrypted message (or the outgoing ciphertext), never before
and never without it. A cipher driven by this store reads what it staged and stages what
it writes; the caller commits inside its own transaction, or drops the stage (a failure)
and the store is as it was. Pure: no I/O of its own beyond the wrapped store's reads.
"""

from __future__ import annotations

from .curve import PublicKey
from .prekeys import IdentityKeyPair, PreKeyRecord, SignedPreKeyRecord
from .sender_keys import SenderKeyRecord
from .state import SessionRecord
from .stores import Direction, IdentityChange, ProtocolAddress, SenderKeyStore, SignalStore


class StagedSignalStore:
    def __init__(self, base: SignalStore) -> None:
        self._base = base
        self._sessions: dict[ProtocolAddress, SessionRecord] = {}
        self._identities: dict[ProtocolAddress, PublicKey] = {}
        self._stored_pre_keys: dict[int, PreKeyRecord] = {}
        self._removed_pre_keys: set[int] = set()
        self._sender_keys: dict[tuple[ProtocolAddress, str], SenderKeyRecord] = {}
        self.identity_changes: dict[ProtocolAddress, IdentityChange] = {}
        self.committed = False

    @property
    def dirty(self) -> bool:
        return bool(
            self._sessions or self._identities or self._stored_pre_keys or self._removed_pre_keys or self._sender_keys
        )

    async def commit(self) -> None:
        """Write what was staged to the wrapped store: sessions first, then identities,
        and consumed one-time prekeys last (a crash in between must leave a state from
        which the message still decrypts; inside one transaction it is all or nothing)."""
        for address, record in self._sessions.items():
            await self._base.store_session(address, record)
        for address, key in self._identities.items():
            await self._base.save_identity(address, key)
        for record in self._stored_pre_keys.values():
            await self._base.store_pre_key(record)
        for pre_key_id in self._removed_pre_keys:
            await self._base.remove_pre_key(pre_key_id)
        if self._sender_keys:
            groups = self._group_store()
            for (sender, distribution_id), key in self._sender_keys.items():
                await groups.store_sender_key(sender, distribution_id, key)
        self.committed = True

    # ------------------------------------------------------------------ identity

    async def get_identity_key_pair(self) -> IdentityKeyPair:
        return await self._base.get_identity_key_pair()

    async def get_local_registration_id(self) -> int:
        return await self._base.get_local_registration_id()

    async def get_identity(self, address: ProtocolAddress) -> PublicKey | None:
        staged = self._identities.get(address)
        return staged if staged is not None else await self._base.get_identity(address)

    async def save_identity(self, address: ProtocolAddress, key: PublicKey) -> IdentityChange:
        known = await self.get_identity(address)
        self._identities[address] = key
        change = (
            IdentityChange.REPLACED_EXISTING if known is not None and known != key else IdentityChange.NEW_OR_UNCHANGED
        )
        if change is IdentityChange.REPLACED_EXISTING or address not in self.identity_changes:
            self.identity_changes[address] = change
        return change

    async def is_trusted_identity(self, address: ProtocolAddress, key: PublicKey, direction: Direction) -> bool:
        staged = self._identities.get(address)
        if staged is not None and staged == key:
            return True
        return await self._base.is_trusted_identity(address, key, direction)

    # ------------------------------------------------------------------ prekeys

    async def load_pre_key(self, pre_key_id: int) -> PreKeyRecord | None:
        if pre_key_id in self._removed_pre_keys:
            return None
        staged = self._stored_pre_keys.get(pre_key_id)
        return staged if staged is not None else await self._base.load_pre_key(pre_key_id)

    async def store_pre_key(self, record: PreKeyRecord) -> None:
        self._removed_pre_keys.discard(record.id)
        self._stored_pre_keys[record.id] = record

    async def remove_pre_key(self, pre_key_id: int) -> None:
        self._stored_pre_keys.pop(pre_key_id, None)
        self._removed_pre_keys.add(pre_key_id)

    async def load_signed_pre_key(self, signed_pre_key_id: int) -> SignedPreKeyRecord | None:
        return await self._base.load_signed_pre_key(signed_pre_key_id)

    async def store_signed_pre_key(self, record: SignedPreKeyRecord) -> None:
        # Signed prekeys belong to key upkeep, which stores them before it uploads them.
        await self._base.store_signed_pre_key(record)

    # ------------------------------------------------------------------ sessions

    async def load_session(self, address: ProtocolAddress) -> SessionRecord | None:
        staged = self._sessions.get(address)
        return staged if staged is not None else await self._base.load_session(address)

    async def store_session(self, address: ProtocolAddress, record: SessionRecord) -> None:
        self._sessions[address] = record

    # ------------------------------------------------------------------ sender keys (groups)

    def _group_store(self) -> SenderKeyStore:
        if not hasattr(self._base, "load_sender_key"):
            raise TypeError("the wrapped store keeps no sender keys")
        return self._base  # type: ignore[return-value]

    async def load_sender_key(self, sender: ProtocolAddress, distribution_id: str) -> SenderKeyRecord | None:
        staged = self._sender_keys.get((sender, distribution_id))
        return staged if staged is not None else await self._group_store().load_sender_key(sender, distribution_id)

    async def store_sender_key(self, sender: ProtocolAddress, distribution_id: str, record: SenderKeyRecord) -> None:
        self._sender_keys[(sender, distribution_id)] = record
