"""Identity key pairs, registration ids, signed and one-time prekeys, and bundles."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from . import protobuf
from .curve import KeyPair, PublicKey
from .errors import InvalidKeyError, InvalidMessageError, InvalidRecordError

# Prekey ids are 24-bit ("Medium" in libsignal-java); they wrap within 1..0xFFFFFE.
MAX_PREKEY_ID = 0xFFFFFF
_REGISTRATION_ID_MAX = 16380


def generate_registration_id() -> int:
    """A random 14-bit registration id, 1..16380, as libsignal clients pick them."""
    return secrets.randbelow(_REGISTRATION_ID_MAX) + 1


def next_prekey_id(prekey_id: int, step: int = 1) -> int:
    """The id ``step`` places after ``prekey_id``, wrapping within 1..0xFFFFFE."""
    return (prekey_id - 1 + step) % (MAX_PREKEY_ID - 1) + 1


@dataclass(frozen=True, slots=True)
class IdentityKeyPair:
    key_pair: KeyPair = field(repr=False)

    @property
    def public(self) -> PublicKey:
        return self.key_pair.public

    @classmethod
    def generate(cls) -> IdentityKeyPair:
        return cls(KeyPair.generate())

    def sign(self, message: bytes) -> bytes:
        return self.key_pair.sign(message)

    def serialize(self) -> bytes:
        return protobuf.encode((((1, self.public.serialize())), (2, self.key_pair.private)))

    @classmethod
    def deserialize(cls, data: bytes) -> IdentityKeyPair:
        fields = _decode_record(data)
        private = protobuf.get_bytes(fields, 2)
        public = protobuf.get_bytes(fields, 1)
        if private is None or public is None:
            raise InvalidRecordError("identity key pair record is incomplete")
        pair = _key_pair(private)
        if pair.public.serialize() != public:
            raise InvalidRecordError("identity key pair record does not match its public key")
        return cls(pair)


@dataclass(frozen=True, slots=True)
class PreKeyRecord:
    """A one-time prekey: consumed by the first PreKey message that names it."""

    id: int
    key_pair: KeyPair = field(repr=False)

    def serialize(self) -> bytes:
        return protobuf.encode(((1, self.id), (2, self.key_pair.private)))

    @classmethod
    def deserialize(cls, data: bytes) -> PreKeyRecord:
        fields = _decode_record(data)
        key_id = protobuf.get_int(fields, 1)
        private = protobuf.get_bytes(fields, 2)
        if key_id is None or private is None:
            raise InvalidRecordError("prekey record is incomplete")
        return cls(key_id, _key_pair(private))


@dataclass(frozen=True, slots=True)
class SignedPreKeyRecord:
    """A medium-term prekey signed by the identity key, rotated on a schedule."""

    id: int
    key_pair: KeyPair = field(repr=False)
    signature: bytes
    timestamp_ms: int

    @classmethod
    def generate(cls, identity: IdentityKeyPair, key_id: int, timestamp_ms: int) -> SignedPreKeyRecord:
        key_pair = KeyPair.generate()
        return cls(key_id, key_pair, identity.sign(key_pair.public.serialize()), timestamp_ms)

    def serialize(self) -> bytes:
        return protobuf.encode(((1, self.id), (2, self.key_pair.private), (3, self.signature), (4, self.timestamp_ms)))

    @classmethod
    def deserialize(cls, data: bytes) -> SignedPreKeyRecord:
        fields = _decode_record(data)
        key_id = protobuf.get_int(fields, 1)
        private = protobuf.get_bytes(fields, 2)
        signature = protobuf.get_bytes(fields, 3)
        timestamp = protobuf.get_int(fields, 4, 0)
        if key_id is None or private is None or signature is None or timestamp is None:
            raise InvalidRecordError("signed prekey record is incomplete")
        return cls(key_id, _key_pair(private), signature, timestamp)


def generate_prekeys(start_id: int, count: int) -> list[PreKeyRecord]:
    """``count`` one-time prekeys with consecutive ids from ``start_id``, wrapping."""
    return [PreKeyRecord(next_prekey_id(start_id, i), KeyPair.generate()) for i in range(count)]


@dataclass(frozen=True, slots=True)
class PreKeyBundle:
    """What a peer publishes so that others can open a session with it without a round trip."""

    registration_id: int
    device_id: int
    pre_key_id: int | None
    pre_key: PublicKey | None
    signed_pre_key_id: int
    signed_pre_key: PublicKey
    signed_pre_key_signature: bytes
    identity_key: PublicKey

    def __post_init__(self) -> None:
        if (self.pre_key_id is None) != (self.pre_key is None):
            raise InvalidKeyError("a one-time prekey needs both an id and a key")


def _decode_record(data: bytes) -> dict[int, int | bytes]:
    try:
        return protobuf.decode(bytes(data))
    except InvalidMessageError as exc:
        raise InvalidRecordError(f"corrupt key record: {exc}") from exc


def _key_pair(private: bytes) -> KeyPair:
    try:
        return KeyPair.from_private(private)
    except InvalidKeyError as exc:
        raise InvalidRecordError(f"corrupt key record: {exc}") from exc
