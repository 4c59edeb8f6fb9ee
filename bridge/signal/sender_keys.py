"""Sender Keys for group chats: one signed symmetric chain per sender and group.

Crypto as in libsignal's ``sender_keys.rs``/``group_cipher.rs`` and the WhatsApp lineage:
chain ``seed = HMAC(CK, 0x01)``, ``CK' = HMAC(CK, 0x02)``; message keys
``HKDF(seed, info="WhisperGroup", 48)`` = ``iv[16] || key[32]``; AES-256-CBC; every
message signed with XEdDSA by the sender's signing key. A record keeps at most five
states (newest first), each with at most 2,000 skipped message keys.
"""

from __future__ import annotations

import hmac
import os
import secrets
import struct
from dataclasses import dataclass, field, replace
from hashlib import sha256

from . import protobuf
from .curve import KeyPair, PublicKey
from .errors import (
    InvalidKeyError,
    InvalidMessageError,
    InvalidRecordError,
    InvalidSignatureError,
    NoSenderKeyStateError,
)
from .kdf import INFO_GROUP, aes_cbc_decrypt, aes_cbc_encrypt, hkdf_sha256
from .messages import SenderKeyDistributionMessage, SenderKeyMessage, SenderKeySchema
from .skipped_keys import MAX_MESSAGE_KEYS, keys_for_counter

MAX_SENDER_KEY_STATES = 5
RECORD_FORMAT_VERSION = 1
_SKIPPED = struct.Struct(">I16s32s")


@dataclass(frozen=True, slots=True)
class SenderMessageKey:
    iteration: int
    iv: bytes = field(repr=False)
    cipher_key: bytes = field(repr=False)

    @property
    def counter(self) -> int:
        return self.iteration

    @classmethod
    def derive(cls, seed: bytes, iteration: int) -> SenderMessageKey:
        material = hkdf_sha256(seed, None, INFO_GROUP, 48)
        return cls(iteration, material[:16], material[16:])


@dataclass(frozen=True, slots=True)
class SenderChainKey:
    iteration: int
    seed: bytes = field(repr=False)

    @property
    def index(self) -> int:
        return self.iteration

    def next(self) -> SenderChainKey:
        return SenderChainKey(self.iteration + 1, hmac.digest(self.seed, b"\x02", sha256))

    def message_keys(self) -> SenderMessageKey:
        return SenderMessageKey.derive(hmac.digest(self.seed, b"\x01", sha256), self.iteration)


@dataclass(frozen=True, slots=True)
class SenderKeyState:
    key_id: int
    chain_key: SenderChainKey
    signing_public: PublicKey
    signing_private: KeyPair | None = field(default=None, repr=False)
    skipped: tuple[SenderMessageKey, ...] = ()  # newest first


@dataclass(frozen=True, slots=True)
class SenderKeyRecord:
    states: tuple[SenderKeyState, ...] = ()  # newest first

    def state_for(self, key_id: int) -> tuple[int, SenderKeyState] | None:
        for index, state in enumerate(self.states):
            if state.key_id == key_id:
                return index, state
        return None

    def with_state(self, index: int, state: SenderKeyState) -> SenderKeyRecord:
        return SenderKeyRecord((*self.states[:index], state, *self.states[index + 1 :]))

    def add_state(self, state: SenderKeyState) -> SenderKeyRecord:
        """Put ``state`` first; a state with its key id but another signing key goes."""
        others = tuple(s for s in self.states if s.key_id != state.key_id)
        return SenderKeyRecord((state, *others)[:MAX_SENDER_KEY_STATES])

    def serialize(self) -> bytes:
        states = []
        for state in self.states:
            skipped = b"".join(_SKIPPED.pack(k.iteration, k.iv, k.cipher_key) for k in state.skipped)
            states.append(
                (
                    1,
                    protobuf.encode(
                        (
                            (1, state.key_id),
                            (2, state.chain_key.iteration),
                            (3, state.chain_key.seed),
                            (4, state.signing_public.serialize()),
                            (5, state.signing_private.private if state.signing_private else None),
                            (6, skipped or None),
                        )
                    ),
                )
            )
        return bytes((RECORD_FORMAT_VERSION,)) + protobuf.encode(states)

    @classmethod
    def deserialize(cls, data: bytes) -> SenderKeyRecord:
        if not data or data[0] != RECORD_FORMAT_VERSION:
            raise InvalidRecordError("unknown sender key record format")
        try:
            raw_states = protobuf.decode_repeated(bytes(data[1:])).get(1, [])
            if len(raw_states) > MAX_SENDER_KEY_STATES:
                raise InvalidRecordError("too many sender key states")
            return cls(tuple(_deserialize_state(raw) for raw in raw_states))
        except (InvalidMessageError, InvalidKeyError, struct.error) as exc:
            raise InvalidRecordError(f"corrupt sender key record: {exc}") from exc


def _deserialize_state(raw: int | bytes) -> SenderKeyState:
    if not isinstance(raw, bytes):
        raise InvalidRecordError("malformed sender key state")
    f = protobuf.decode(raw)
    key_id = protobuf.get_int(f, 1)
    iteration = protobuf.get_int(f, 2)
    seed = protobuf.get_bytes(f, 3)
    signing = protobuf.get_bytes(f, 4)
    private = protobuf.get_bytes(f, 5)
    skipped_blob = protobuf.get_bytes(f, 6) or b""
    if key_id is None or iteration is None or seed is None or signing is None:
        raise InvalidRecordError("incomplete sender key state")
    if len(skipped_blob) % _SKIPPED.size or len(skipped_blob) // _SKIPPED.size > MAX_MESSAGE_KEYS:
        raise InvalidRecordError("malformed skipped sender keys")
    public = PublicKey.deserialize(signing)
    pair = KeyPair.from_stored(private, public) if private is not None else None
    skipped = tuple(SenderMessageKey(i, iv, key) for i, iv, key in _SKIPPED.iter_unpack(skipped_blob))
    return SenderKeyState(key_id, SenderChainKey(iteration, seed), public, pair, skipped)


def create_distribution_message(
    record: SenderKeyRecord,
    *,
    schema: SenderKeySchema = SenderKeySchema.LEGACY,
    distribution_id: bytes | None = None,
) -> tuple[SenderKeyRecord, SenderKeyDistributionMessage]:
    """Our own sender key for a group (created on first use) as a message for members."""
    if not record.states or record.states[0].signing_private is None:
        signing = KeyPair.generate()
        state = SenderKeyState(
            key_id=secrets.randbits(31),
            chain_key=SenderChainKey(0, os.urandom(32)),
            signing_public=signing.public,
            signing_private=signing,
        )
        record = SenderKeyRecord((state,))
    state = record.states[0]
    message = SenderKeyDistributionMessage.create(
        key_id=state.key_id,
        iteration=state.chain_key.iteration,
        chain_key=state.chain_key.seed,
        signing_key=state.signing_public,
        schema=schema,
        distribution_id=distribution_id,
    )
    return record, message


def process_distribution_message(record: SenderKeyRecord, message: SenderKeyDistributionMessage) -> SenderKeyRecord:
    """Store a member's sender key; a repeat of a key we hold changes nothing."""
    found = record.state_for(message.key_id)
    if found is not None and found[1].signing_public == message.signing_key:
        return record
    return record.add_state(
        SenderKeyState(
            message.key_id,
            SenderChainKey(message.iteration, message.chain_key),
            message.signing_key,
        )
    )


def group_encrypt(
    record: SenderKeyRecord,
    plaintext: bytes,
    *,
    schema: SenderKeySchema = SenderKeySchema.LEGACY,
    distribution_id: bytes | None = None,
) -> tuple[SenderKeyRecord, SenderKeyMessage]:
    if not record.states or record.states[0].signing_private is None:
        raise NoSenderKeyStateError("no sender key of our own for this group")
    state = record.states[0]
    assert state.signing_private is not None
    key = state.chain_key.message_keys()
    message = SenderKeyMessage.create(
        key_id=state.key_id,
        iteration=key.iteration,
        ciphertext=aes_cbc_encrypt(key.cipher_key, key.iv, plaintext),
        signing_key=state.signing_private,
        schema=schema,
        distribution_id=distribution_id,
    )
    return record.with_state(0, replace(state, chain_key=state.chain_key.next())), message


def group_decrypt(record: SenderKeyRecord, message: SenderKeyMessage) -> tuple[SenderKeyRecord, bytes]:
    found = record.state_for(message.key_id)
    if found is None:
        raise NoSenderKeyStateError("no sender key state for this key id")
    index, state = found
    if not message.verify_signature(state.signing_public):
        raise InvalidSignatureError("sender key message signature did not verify")
    chain_key, skipped, key = keys_for_counter(state.chain_key, state.skipped, message.iteration)
    state = replace(state, chain_key=chain_key, skipped=skipped)
    plaintext = aes_cbc_decrypt(key.cipher_key, key.iv, message.ciphertext)
    return record.with_state(index, state), plaintext
