"""Session state and session records, immutable, with a versioned byte serialization.

Every operation returns a new value and leaves the old one untouched, so a caller that
fails to persist the result still holds a record that decrypts what it decrypted
before. Limits follow libsignal (``rust/protocol/src/consts.rs``) where WhatsApp-lineage
clients agree with it; the forward-jump limit follows the WhatsApp lineage (2,000).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace

from . import protobuf
from .curve import KeyPair, PublicKey
from .errors import InvalidKeyError, InvalidMessageError, InvalidRecordError
from .kdf import ChainKey, MessageKeys, RootKey

MAX_RECEIVER_CHAINS = 5
MAX_MESSAGE_KEYS = 2000
MAX_FORWARD_JUMPS = 2000
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

    def archive_current(self) -> SessionRecord:
        """Move the current state to the archive, leaving no current session."""
        if self.current is None:
            return self
        return SessionRecord(None, (self.current, *self.previous)[:ARCHIVED_STATES_MAX_LENGTH])

    def promote_matching(self, version: int, alice_base_key: bytes) -> SessionRecord | None:
        """The record with the state set up by this base key made current, if there is one."""
        current = self.current
        if (
            current is not None
            and current.session_version == version
            and current.alice_base_key == alice_base_key
        ):
            return self
        for index, state in enumerate(self.previous):
            if state.session_version == version and state.alice_base_key == alice_base_key:
                return self.promote_previous(index, state)
        return None

    def has_usable_sender_chain(self, now_ms: int) -> bool:
        state = self.current
        if state is None:
            return False
        pending = state.pending_pre_key
        return not (
            pending is not None
            and now_ms - pending.timestamp_ms > MAX_UNACKNOWLEDGED_SESSION_AGE_MS
        )

    def serialize(self) -> bytes:
        fields: list[tuple[int, int | bytes | None]] = []
        if self.current is not None:
            fields.append((1, _serialize_state(self.current)))
        fields.extend((2, _serialize_state(state)) for state in self.previous)
        return bytes((RECORD_FORMAT_VERSION,)) + protobuf.encode(fields)

    @classmethod
    def deserialize(cls, data: bytes) -> SessionRecord:
        if not data or data[0] != RECORD_FORMAT_VERSION:
            raise InvalidRecordError("unknown session record format")
        try:
            fields = protobuf.decode_repeated(bytes(data[1:]))
            current = fields.get(1, [])
            if len(current) > 1:
                raise InvalidRecordError("session record has two current states")
            previous = fields.get(2, [])
            if len(previous) > ARCHIVED_STATES_MAX_LENGTH:
                raise InvalidRecordError("session record has too many archived states")
            return cls(
                _deserialize_state(_as_bytes(current[0])) if current else None,
                tuple(_deserialize_state(_as_bytes(item)) for item in previous),
            )
        except (InvalidMessageError, InvalidKeyError, struct.error) as exc:
            raise InvalidRecordError(f"corrupt session record: {exc}") from exc


def _as_bytes(value: int | bytes) -> bytes:
    if not isinstance(value, bytes):
        raise InvalidRecordError("expected a length-delimited field")
    return value


def _one(fields: dict[int, list[int | bytes]], number: int) -> int | bytes | None:
    values = fields.get(number)
    return values[-1] if values else None


def _req_bytes(
    fields: dict[int, list[int | bytes]], number: int, length: int | None = None
) -> bytes:
    value = _one(fields, number)
    if not isinstance(value, bytes) or (length is not None and len(value) != length):
        raise InvalidRecordError(f"session record field {number} is missing or malformed")
    return value


def _req_int(fields: dict[int, list[int | bytes]], number: int, default: int | None = None) -> int:
    value = _one(fields, number)
    if value is None and default is not None:
        return default
    if not isinstance(value, int):
        raise InvalidRecordError(f"session record field {number} is missing or malformed")
    return value


def _serialize_state(state: SessionState) -> bytes:
    fields: list[tuple[int, int | bytes | None]] = [
        (1, state.session_version),
        (2, state.local_identity.serialize()),
        (3, state.remote_identity.serialize()),
        (4, state.root_key.key),
        (5, state.previous_counter),
        (6, state.sender_ratchet.private),
        (7, state.sender_ratchet.public.serialize()),
        (8, state.sender_chain.key),
        (9, state.sender_chain.index),
        (10, state.alice_base_key),
        (11, state.local_registration_id),
        (12, state.remote_registration_id),
    ]
    for chain in state.receiver_chains:
        skipped = b"".join(
            _SKIPPED_KEY.pack(k.counter, k.cipher_key, k.mac_key, k.iv) for k in chain.skipped
        )
        fields.append(
            (
                13,
                protobuf.encode(
                    (
                        (1, chain.ratchet_key.serialize()),
                        (2, chain.chain_key.key),
                        (3, chain.chain_key.index),
                        (4, skipped or None),
                    )
                ),
            )
        )
    pending = state.pending_pre_key
    if pending is not None:
        fields.append(
            (
                14,
                protobuf.encode(
                    (
                        (1, pending.pre_key_id),
                        (2, pending.signed_pre_key_id),
                        (3, pending.base_key.serialize()),
                        (4, pending.timestamp_ms),
                    )
                ),
            )
        )
    return protobuf.encode(fields)


def _deserialize_state(data: bytes) -> SessionState:
    f = protobuf.decode_repeated(data)
    chains = []
    for raw in f.get(13, []):
        c = protobuf.decode_repeated(_as_bytes(raw))
        blob = _one(c, 4) or b""
        if not isinstance(blob, bytes) or len(blob) % _SKIPPED_KEY.size:
            raise InvalidRecordError("malformed skipped message keys")
        skipped = tuple(
            MessageKeys(cipher, mac, iv, counter)
            for counter, cipher, mac, iv in _SKIPPED_KEY.iter_unpack(blob)
        )
        if len(skipped) > MAX_MESSAGE_KEYS:
            raise InvalidRecordError("too many skipped message keys")
        chains.append(
            ReceiverChain(
                PublicKey.deserialize(_req_bytes(c, 1, 33)),
                ChainKey(_req_bytes(c, 2, 32), _req_int(c, 3)),
                skipped,
            )
        )
    if len(chains) > MAX_RECEIVER_CHAINS:
        raise InvalidRecordError("too many receiver chains")
    pending = None
    if 14 in f:
        p = protobuf.decode_repeated(_as_bytes(f[14][-1]))
        pre_key_id = _one(p, 1)
        if pre_key_id is not None and not isinstance(pre_key_id, int):
            raise InvalidRecordError("malformed pending prekey id")
        pending = PendingPreKey(
            pre_key_id,
            _req_int(p, 2),
            PublicKey.deserialize(_req_bytes(p, 3, 33)),
            _req_int(p, 4, 0),
        )
    return SessionState(
        session_version=_req_int(f, 1),
        local_identity=PublicKey.deserialize(_req_bytes(f, 2, 33)),
        remote_identity=PublicKey.deserialize(_req_bytes(f, 3, 33)),
        root_key=RootKey(_req_bytes(f, 4, 32)),
        previous_counter=_req_int(f, 5, 0),
        sender_ratchet=KeyPair.from_stored(
            _req_bytes(f, 6, 32), PublicKey.deserialize(_req_bytes(f, 7, 33))
        ),
        sender_chain=ChainKey(_req_bytes(f, 8, 32), _req_int(f, 9, 0)),
        alice_base_key=_req_bytes(f, 10),
        local_registration_id=_req_int(f, 11, 0),
        remote_registration_id=_req_int(f, 12, 0),
        receiver_chains=tuple(chains),
        pending_pre_key=pending,
    )
