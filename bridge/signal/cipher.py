"""Session operations driven by the store protocols, for one peer device.

The record is stored only after an operation succeeded, and a consumed one-time prekey
is removed only after the record that used it is stored: a crash in between leaves a
state from which the message still decrypts. Callers serialize operations per address
(the bridge does so with its per-user queue); two concurrent decrypts for one address
would each store their own record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import session
from .errors import NoSessionError, UntrustedIdentityError
from .messages import MessageType, PreKeySignalMessage, SignalMessage
from .prekeys import PreKeyBundle
from .state import SessionRecord
from .stores import Direction, IdentityChange, ProtocolAddress, SignalStore


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class DecryptResult:
    plaintext: bytes = field(repr=False)
    identity_change: IdentityChange


class SessionCipher:
    def __init__(
        self,
        store: SignalStore,
        address: ProtocolAddress,
        *,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self._store = store
        self._address = address
        self._clock = clock

    async def process_bundle(self, bundle: PreKeyBundle) -> IdentityChange:
        """Open a new session from the peer's bundle; an existing one is archived."""
        if not await self._store.is_trusted_identity(self._address, bundle.identity_key, Direction.SENDING):
            raise UntrustedIdentityError(f"untrusted identity for {self._address}")
        record = await self._store.load_session(self._address) or SessionRecord()
        record = session.process_bundle(
            record,
            bundle,
            our_identity=await self._store.get_identity_key_pair(),
            our_registration_id=await self._store.get_local_registration_id(),
            now_ms=self._clock(),
        )
        await self._store.store_session(self._address, record)
        return await self._store.save_identity(self._address, bundle.identity_key)

    async def has_session(self) -> bool:
        record = await self._store.load_session(self._address)
        return record is not None and record.has_usable_sender_chain(self._clock())

    async def encrypt(self, plaintext: bytes) -> session.CiphertextMessage:
        record = await self._store.load_session(self._address)
        if record is None or record.current is None:
            raise NoSessionError(f"no session with {self._address}")
        if not await self._store.is_trusted_identity(self._address, record.current.remote_identity, Direction.SENDING):
            raise UntrustedIdentityError(f"untrusted identity for {self._address}")
        record, message = session.encrypt(record, plaintext, now_ms=self._clock())
        await self._store.store_session(self._address, record)
        return message

    async def decrypt(self, message_type: MessageType, data: bytes) -> DecryptResult:
        """Decrypt a WHISPER or PREKEY message from this device.

        Raises:
            SignalError: a subclass naming why the message cannot be decrypted.
        """
        if message_type == MessageType.PREKEY:
            return await self._decrypt_prekey(PreKeySignalMessage.deserialize(data))
        if message_type == MessageType.WHISPER:
            return await self._decrypt_whisper(SignalMessage.deserialize(data))
        raise ValueError(f"not a pairwise message type: {message_type!r}")

    async def _decrypt_whisper(self, message: SignalMessage) -> DecryptResult:
        record = await self._store.load_session(self._address)
        if record is None:
            raise NoSessionError(f"no session with {self._address}")
        record, plaintext = session.decrypt_signal_message(record, message)
        assert record.current is not None
        remote_identity = record.current.remote_identity
        if not await self._store.is_trusted_identity(self._address, remote_identity, Direction.RECEIVING):
            raise UntrustedIdentityError(f"untrusted identity for {self._address}")
        await self._store.store_session(self._address, record)
        change = await self._store.save_identity(self._address, remote_identity)
        return DecryptResult(plaintext, change)

    async def _decrypt_prekey(self, message: PreKeySignalMessage) -> DecryptResult:
        if not await self._store.is_trusted_identity(self._address, message.identity_key, Direction.RECEIVING):
            raise UntrustedIdentityError(f"untrusted identity for {self._address}")
        record = await self._store.load_session(self._address) or SessionRecord()
        # Until the peer hears from us, each of its messages is a PreKey message for a
        # session we already have: the prekeys are needed only to build a new one.
        known = record.find_matching(message.message_version, message.base_key.serialize())
        one_time = signed = None
        if not known:
            signed = await self._store.load_signed_pre_key(message.signed_pre_key_id)
            if message.pre_key_id is not None:
                one_time = await self._store.load_pre_key(message.pre_key_id)
        record, plaintext, consumed = session.decrypt_prekey_message(
            record,
            message,
            our_identity=await self._store.get_identity_key_pair(),
            our_registration_id=await self._store.get_local_registration_id(),
            signed_pre_key=signed,
            one_time_pre_key=one_time,
        )
        await self._store.store_session(self._address, record)
        # The open session's identity: a late message from an old install does not flip
        # the trusted identity back to the key that install had.
        assert record.current is not None
        change = await self._store.save_identity(self._address, record.current.remote_identity)
        if consumed is not None:
            await self._store.remove_pre_key(consumed)
        return DecryptResult(plaintext, change)
