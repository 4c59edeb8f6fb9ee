"""Session state and session records, immutable, with a versioned byte serialization.

Every operation returns a new value and leaves the old one untouched, so a caller that
fails to persist the result still holds a record that decrypts what it decrypted
before. Limits follow libsignal (``rust/protocol/src/consts.rs``) where WhatsApp-lineage
clients agree with it; see :mod:`.skipped_keys` for the per-chain ones.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace

from .curve import KeyPair, PublicKey
from .errors import InvalidKeyError, InvalidRecordError
from .kdf import ChainKey, MessageKeys, RootKey
from .skipped_keys import MAX_MESSAGE_KEYS

MAX_RECEIVER_CHAINS = 5
ARCHIVED_STATES_MAX_LENGTH = 40
MAX_UNACKNOWLEDGED_SESSION_AGE_MS = 30 * 24 * 3600 * 1000

RECORD_FORMAT_VERSION = 1
_SKIPPED_KEY = struct.Struct(">I32s32s16s")


@dataclass(frozen=True, slots=True)
class ReceiverChain:
    """The receiving chain for one of the peer's ratchet keys, with its skipped keys.

    ``skipped`` is newest first and holds at most :data:`MAX_MESSAGE_KEYS` keys.
    """

    ratchet_key: PublicKey
    chain_key: ChainKey
    skipped: tuple[MessageKeys, ...] = ()


@dataclass(frozen=True, slots=True)
class PendingPreKey:
    """What the initiator repeats in every message until the first reply decrypts."""

    pre_key_id: int | None
    signed_pre_key_id: int
    base_key: PublicKey
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class SessionState:
    session_version: int
    local_identity: PublicKey
    remote_identity: PublicKey
    root_key: RootKey
    previous_counter: int
    sender_ratchet: KeyPair = field(repr=False)
    sender_chain: ChainKey
    alice_base_key: bytes
    local_registration_id: int = 0
    remote_registration_id: int = 0
    receiver_chains: tuple[ReceiverChain, ...] = ()  # oldest first
    pending_pre_key: PendingPreKey | None = None

    def __post_init__(self) -> None:
        # The record format stores it in a fixed 33-byte slot.
        if len(self.alice_base_key) != 33:
            raise InvalidKeyError("alice base key must be a serialized public key")

    def find_receiver_chain(self, ratchet_key: PublicKey) -> tuple[int, ReceiverChain] | None:
        for index, chain in enumerate(self.receiver_chains):
            if chain.ratchet_key == ratchet_key:
                return index, chain
        return None

    def with_receiver_chain(self, index: int | None, chain: ReceiverChain) -> SessionState:
        """Replace the chain at ``index``, or append a new one and drop the oldest past 5."""
        chains = list(self.receiver_chains)
        if index is None:
            chains.append(chain)
            del chains[: max(0, len(chains) - MAX_RECEIVER_CHAINS)]
        else:
            chains[index] = chain
        return replace(self, receiver_chains=tuple(chains))


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A peer device's current session and up to 40 archived ones (newest first)."""

    current: SessionState | None = None
    previous: tuple[SessionState, ...] = ()

    def promote_state(self, state: SessionState) -> SessionRecord:
        """Make ``state`` current, archiving the current one in front of the others."""
        previous = self.previous
        if self.current is not None:
            previous = (self.current, *previous)[:ARCHIVED_STATES_MAX_LENGTH]
        return SessionRecord(state, previous)

    def promote_previous(self, index: int, state: SessionState) -> SessionRecord:
        """Make the (updated) archived state at ``index`` current."""
        rest = self.previous[:index] + self.previous[index + 1 :]
        return SessionRecord(self.current, rest).promote_state(state)

    def update_previous(self, index: int, state: SessionState) -> SessionRecord:
        """The archived state at ``index`` replaced by its advanced self, still archived."""
        return SessionRecord(self.current, (*self.previous[:index], state, *self.previous[index + 1 :]))

    def find_matching(self, version: int, alice_base_key: bytes) -> bool:
        """Whether a state (current or archived) was set up by this base key."""
        return any(
            state is not None and state.session_version == version and state.alice_base_key == alice_base_key
            for state in (self.current, *self.previous)
        )

    def archive_current(self) -> SessionRecord:
        """Move the current state to the archive, leaving no current session."""
        if self.current is None:
            return self
        return SessionRecord(None, (self.current, *self.previous)[:ARCHIVED_STATES_MAX_LENGTH])

    def has_usable_sender_chain(self, now_ms: int) -> bool:
        state = self.current
        if state is None:
            return False
        pending = state.pending_pre_key
        return not (pending is not None and now_ms - pending.timestamp_ms > MAX_UNACKNOWLEDGED_SESSION_AGE_MS)

    def serialize(self) -> bytes:
        states = [] if self.current is None else [self.current]
        states.extend(self.previous)
        parts = [_RECORD_HEADER.pack(RECORD_FORMAT_VERSION, self.current is not None, len(states))]
        for state in states:
            body = _serialize_state(state)
            parts.append(_LENGTH.pack(len(body)))
            parts.append(body)
        return b"".join(parts)

    @classmethod
    def deserialize(cls, data: bytes) -> SessionRecord:
        data = bytes(data)
        try:
            version, has_current, count = _RECORD_HEADER.unpack_from(data, 0)
            if version != RECORD_FORMAT_VERSION:
                raise InvalidRecordError("unknown session record format")
            if has_current > 1 or count > ARCHIVED_STATES_MAX_LENGTH + 1 or count < has_current:
                raise InvalidRecordError("session record has an impossible state count")
            offset = _RECORD_HEADER.size
            states = []
            for _ in range(count):
                (length,) = _LENGTH.unpack_from(data, offset)
                offset += _LENGTH.size
                if offset + length > len(data):
                    raise InvalidRecordError("truncated session record")
                states.append(_deserialize_state(data[offset : offset + length]))
                offset += length
            if offset != len(data):
                raise InvalidRecordError("trailing bytes after session record")
            if has_current:
                return cls(states[0], tuple(states[1:]))
            if len(states) > ARCHIVED_STATES_MAX_LENGTH:
                raise InvalidRecordError("session record has too many archived states")
            return cls(None, tuple(states))
        except (InvalidKeyError, struct.error) as exc:
            raise InvalidRecordError(f"corrupt session record: {exc}") from exc


# The record format is ours and fixed-width where it can be: packing a handful of structs
# costs a few microseconds, where a varint codec in Python cost more than the crypto.
_RECORD_HEADER = struct.Struct(">BBB")
_LENGTH = struct.Struct(">I")
# version, previous counter, sender chain index, local and remote registration ids,
# receiver chain count, has-pending flag, local and remote identity, root key, sender
# ratchet private and public, sender chain key, alice base key.
_STATE = struct.Struct(">BIIIIBB33s33s32s32s33s32s33s")
# ratchet key, chain key, chain index, skipped key count
_CHAIN = struct.Struct(">33s32sII")
# has one-time prekey, one-time prekey id, signed prekey id, timestamp, base key
_PENDING = struct.Struct(">BIIQ33s")


def _serialize_state(state: SessionState) -> bytes:
    pending = state.pending_pre_key
    parts = [
        _STATE.pack(
            state.session_version,
            state.previous_counter,
            state.sender_chain.index,
            state.local_registration_id,
            state.remote_registration_id,
            len(state.receiver_chains),
            pending is not None,
            state.local_identity.serialize(),
            state.remote_identity.serialize(),
            state.root_key.key,
            state.sender_ratchet.private,
            state.sender_ratchet.public.serialize(),
            state.sender_chain.key,
            state.alice_base_key,
        )
    ]
    for chain in state.receiver_chains:
        parts.append(
            _CHAIN.pack(
                chain.ratchet_key.serialize(),
                chain.chain_key.key,
                chain.chain_key.index,
                len(chain.skipped),
            )
        )
        parts.extend(_SKIPPED_KEY.pack(k.counter, k.cipher_key, k.mac_key, k.iv) for k in chain.skipped)
    if pending is not None:
        parts.append(
            _PENDING.pack(
                pending.pre_key_id is not None,
                pending.pre_key_id or 0,
                pending.signed_pre_key_id,
                pending.timestamp_ms,
                pending.base_key.serialize(),
            )
        )
    return b"".join(parts)


def _deserialize_state(data: bytes) -> SessionState:
    (
        version,
        previous_counter,
        sender_index,
        local_registration_id,
        remote_registration_id,
        chain_count,
        has_pending,
        local_identity,
        remote_identity,
        root_key,
        sender_private,
        sender_public,
        sender_chain_key,
        alice_base_key,
    ) = _STATE.unpack_from(data, 0)
    if chain_count > MAX_RECEIVER_CHAINS or has_pending > 1:
        raise InvalidRecordError("malformed session state")
    offset = _STATE.size
    chains = []
    for _ in range(chain_count):
        ratchet_key, chain_key, index, skipped_count = _CHAIN.unpack_from(data, offset)
        offset += _CHAIN.size
        if skipped_count > MAX_MESSAGE_KEYS:
            raise InvalidRecordError("too many skipped message keys")
        end = offset + skipped_count * _SKIPPED_KEY.size
        if end > len(data):
            raise InvalidRecordError("truncated skipped message keys")
        skipped = tuple(
            MessageKeys(cipher, mac, iv, counter)
            for counter, cipher, mac, iv in _SKIPPED_KEY.iter_unpack(data[offset:end])
        )
        offset = end
        chains.append(ReceiverChain(PublicKey.deserialize(ratchet_key), ChainKey(chain_key, index), skipped))
    pending = None
    if has_pending:
        has_one_time, pre_key_id, signed_pre_key_id, timestamp, base_key = _PENDING.unpack_from(data, offset)
        offset += _PENDING.size
        pending = PendingPreKey(
            pre_key_id if has_one_time else None,
            signed_pre_key_id,
            PublicKey.deserialize(base_key),
            timestamp,
        )
    if offset != len(data):
        raise InvalidRecordError("trailing bytes in session state")
    return SessionState(
        session_version=version,
        local_identity=PublicKey.deserialize(local_identity),
        remote_identity=PublicKey.deserialize(remote_identity),
        root_key=RootKey(root_key),
        previous_counter=previous_counter,
        sender_ratchet=KeyPair.from_stored(sender_private, PublicKey.deserialize(sender_public)),
        sender_chain=ChainKey(sender_chain_key, sender_index),
        alice_base_key=alice_base_key,
        local_registration_id=local_registration_id,
        remote_registration_id=remote_registration_id,
        receiver_chains=tuple(chains),
        pending_pre_key=pending,
    )
