"""Store protocols of the Signal layer and their in-memory implementations.

The protocols are async because the bridge's implementation lives in its database; the
in-memory ones serve the tests, the sandbox's simulated clients and the benchmarks. They
keep records serialized, as a real store must, so that every use exercises the format.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .curve import PublicKey
from .prekeys import IdentityKeyPair, PreKeyRecord, SignedPreKeyRecord
from .state import SessionRecord

if TYPE_CHECKING:
    from .sender_keys import SenderKeyRecord


@dataclass(frozen=True, slots=True, order=True)
class ProtocolAddress:
    """One device of one peer: the peer's name (a UVID, for the bridge) and device id."""

    name: str
    device_id: int

    def __str__(self) -> str:
        return f"{self.name}.{self.device_id}"


class IdentityChange(Enum):
    NEW_OR_UNCHANGED = "new_or_unchanged"
    REPLACED_EXISTING = "replaced_existing"


class Direction(Enum):
    SENDING = "sending"
    RECEIVING = "receiving"


@runtime_checkable
class IdentityKeyStore(Protocol):
    async def get_identity_key_pair(self) -> IdentityKeyPair: ...

    async def get_local_registration_id(self) -> int: ...

    async def save_identity(self, address: ProtocolAddress, key: PublicKey) -> IdentityChange:
        """Remember ``key`` for ``address``; report whether it replaced another key."""
        ...

    async def is_trusted_identity(self, address: ProtocolAddress, key: PublicKey, direction: Direction) -> bool: ...

    async def get_identity(self, address: ProtocolAddress) -> PublicKey | None: ...


@runtime_checkable
class PreKeyStore(Protocol):
    async def load_pre_key(self, pre_key_id: int) -> PreKeyRecord | None: ...

    async def store_pre_key(self, record: PreKeyRecord) -> None: ...

    async def remove_pre_key(self, pre_key_id: int) -> None: ...


@runtime_checkable
class SignedPreKeyStore(Protocol):
    async def load_signed_pre_key(self, signed_pre_key_id: int) -> SignedPreKeyRecord | None: ...

    async def store_signed_pre_key(self, record: SignedPreKeyRecord) -> None: ...


@runtime_checkable
class SessionStore(Protocol):
    async def load_session(self, address: ProtocolAddress) -> SessionRecord | None: ...

    async def store_session(self, address: ProtocolAddress, record: SessionRecord) -> None: ...


@runtime_checkable
class SenderKeyStore(Protocol):
    async def load_sender_key(self, sender: ProtocolAddress, distribution_id: str) -> SenderKeyRecord | None: ...

    async def store_sender_key(
        self, sender: ProtocolAddress, distribution_id: str, record: SenderKeyRecord
    ) -> None: ...


class SignalStore(IdentityKeyStore, PreKeyStore, SignedPreKeyStore, SessionStore, Protocol):
    """Everything a pairwise session needs, as one object."""


class MemoryIdentityKeyStore:
    """Trust on first use; by default a changed key is accepted and reported as a change,
    as WhatsApp clients do, or refused until saved when ``accept_changes`` is false."""

    def __init__(self, identity: IdentityKeyPair, registration_id: int, *, accept_changes: bool = True) -> None:
        self._identity = identity
        self._registration_id = registration_id
        self._accept_changes = accept_changes
        self._known: dict[ProtocolAddress, PublicKey] = {}

    async def get_identity_key_pair(self) -> IdentityKeyPair:
        return self._identity

    async def get_local_registration_id(self) -> int:
        return self._registration_id

    async def save_identity(self, address: ProtocolAddress, key: PublicKey) -> IdentityChange:
        previous = self._known.get(address)
        self._known[address] = key
        if previous is not None and previous != key:
            return IdentityChange.REPLACED_EXISTING
        return IdentityChange.NEW_OR_UNCHANGED

    async def is_trusted_identity(self, address: ProtocolAddress, key: PublicKey, direction: Direction) -> bool:
        known = self._known.get(address)
        return known is None or known == key or self._accept_changes

    async def get_identity(self, address: ProtocolAddress) -> PublicKey | None:
        return self._known.get(address)


class MemoryPreKeyStore:
    def __init__(self) -> None:
        self._pre_keys: dict[int, bytes] = {}

    async def load_pre_key(self, pre_key_id: int) -> PreKeyRecord | None:
        data = self._pre_keys.get(pre_key_id)
        return PreKeyRecord.deserialize(data) if data is not None else None

    async def store_pre_key(self, record: PreKeyRecord) -> None:
        self._pre_keys[record.id] = record.serialize()

    async def store_pre_keys(self, records: list[PreKeyRecord]) -> None:
        for record in records:
            await self.store_pre_key(record)

    async def remove_pre_key(self, pre_key_id: int) -> None:
        self._pre_keys.pop(pre_key_id, None)

    def count(self) -> int:
        return len(self._pre_keys)


class MemorySignedPreKeyStore:
    def __init__(self) -> None:
        self._signed_pre_keys: dict[int, bytes] = {}

    async def load_signed_pre_key(self, signed_pre_key_id: int) -> SignedPreKeyRecord | None:
        data = self._signed_pre_keys.get(signed_pre_key_id)
        return SignedPreKeyRecord.deserialize(data) if data is not None else None

    async def store_signed_pre_key(self, record: SignedPreKeyRecord) -> None:
        self._signed_pre_keys[record.id] = record.serialize()


class MemorySessionStore:
    def __init__(self) -> None:
        self._sessions: dict[ProtocolAddress, bytes] = {}

    async def load_session(self, address: ProtocolAddress) -> SessionRecord | None:
        data = self._sessions.get(address)
        return SessionRecord.deserialize(data) if data is not None else None

    async def store_session(self, address: ProtocolAddress, record: SessionRecord) -> None:
        self._sessions[address] = record.serialize()


class MemorySenderKeyStore:
    def __init__(self) -> None:
        self._records: dict[tuple[ProtocolAddress, str], bytes] = {}

    async def load_sender_key(self, sender: ProtocolAddress, distribution_id: str) -> SenderKeyRecord | None:
        from .sender_keys import SenderKeyRecord

        data = self._records.get((sender, distribution_id))
        return SenderKeyRecord.deserialize(data) if data is not None else None

    async def store_sender_key(self, sender: ProtocolAddress, distribution_id: str, record: SenderKeyRecord) -> None:
        self._records[(sender, distribution_id)] = record.serialize()


class MemorySignalStore(
    MemoryIdentityKeyStore,
    MemoryPreKeyStore,
    MemorySignedPreKeyStore,
    MemorySessionStore,
    MemorySenderKeyStore,
):
    """All stores of one local device in memory."""

    def __init__(self, identity: IdentityKeyPair, registration_id: int, *, accept_changes: bool = True) -> None:
        MemoryIdentityKeyStore.__init__(self, identity, registration_id, accept_changes=accept_changes)
        MemoryPreKeyStore.__init__(self)
        MemorySignedPreKeyStore.__init__(self)
        MemorySessionStore.__init__(self)
        MemorySenderKeyStore.__init__(self)
