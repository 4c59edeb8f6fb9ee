"""The v3 wire messages: SignalMessage, PreKeySignalMessage, and the legacy Sender Keys pair.

Layouts (``WhisperTextProtocol.proto``, the schema WhatsApp-lineage clients use):

* SignalMessage: ``version || protobuf(ratchetKey=1, counter=2, previousCounter=3,
  ciphertext=4) || MAC[8]``
* PreKeySignalMessage: ``version || protobuf(preKeyId=1, baseKey=2, identityKey=3,
  message=4, registrationId=5, signedPreKeyId=6)``, no MAC
* SenderKeyMessage: ``version || protobuf(id=1, iteration=2, ciphertext=3) || signature[64]``
* SenderKeyDistributionMessage: ``version || protobuf(id=1, iteration=2, chainKey=3,
  signingKey=4)``

We emit version byte 0x33, as WhatsApp-lineage code does (libsignal-node rejects the 0x34
that current libsignal writes), and accept any byte whose high nibble is 3.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from hashlib import sha256

from . import protobuf
from .curve import SIGNATURE_LENGTH, KeyPair, PublicKey
from .errors import (
    InvalidKeyError,
    InvalidMacError,
    InvalidMessageError,
    LegacyVersionError,
    UnsupportedVersionError,
)

CURRENT_VERSION = 3
VERSION_BYTE = (CURRENT_VERSION << 4) | CURRENT_VERSION  # 0x33
MAC_LENGTH = 8
MAX_UINT32 = 0xFFFFFFFF


class MessageType(IntEnum):
    """Ciphertext message types, numbered as libsignal's ``CiphertextMessageType``."""

    WHISPER = 2
    PREKEY = 3
    SENDER_KEY = 7


def _check_version(data: bytes) -> int:
    if not data:
        raise InvalidMessageError("empty message")
    version = data[0] >> 4
    if version < CURRENT_VERSION:
        raise LegacyVersionError(f"message version {version} is too old")
    if version > CURRENT_VERSION:
        raise UnsupportedVersionError(f"message version {version} is not supported")
    return version


def _public_key(fields: dict[int, int | bytes], number: int, what: str) -> PublicKey:
    value = protobuf.get_bytes(fields, number)
    if value is None:
        raise InvalidMessageError(f"{what} is missing")
    try:
        return PublicKey.deserialize(value)
    except InvalidKeyError as exc:
        raise InvalidMessageError(f"{what} is invalid: {exc}") from exc


def _optional_uint32(fields: dict[int, int | bytes], number: int, what: str) -> int | None:
    value = protobuf.get_int(fields, number)
    if value is not None and value > MAX_UINT32:
        raise InvalidMessageError(f"{what} is out of range")
    return value


def _uint32(fields: dict[int, int | bytes], number: int, what: str) -> int:
    value = _optional_uint32(fields, number, what)
    if value is None:
        raise InvalidMessageError(f"{what} is missing")
    return value


def _mac(mac_key: bytes, sender_identity: PublicKey, receiver_identity: PublicKey, body: bytes) -> bytes:
    data = sender_identity.serialize() + receiver_identity.serialize() + body
    return hmac.digest(mac_key, data, sha256)[:MAC_LENGTH]


@dataclass(frozen=True, slots=True)
class SignalMessage:
    """A message of an established session (libsignal's ``SignalMessage``, type WHISPER)."""

    message_version: int
    sender_ratchet_key: PublicKey
    counter: int
    previous_counter: int
    ciphertext: bytes = field(repr=False)
    serialized: bytes = field(repr=False)

    @classmethod
    def create(
        cls,
        *,
        mac_key: bytes,
        sender_ratchet_key: PublicKey,
        counter: int,
        previous_counter: int,
        ciphertext: bytes,
        sender_identity: PublicKey,
        receiver_identity: PublicKey,
    ) -> SignalMessage:
        body = bytes((VERSION_BYTE,)) + protobuf.encode(
            (
                (1, sender_ratchet_key.serialize()),
                (2, counter),
                (3, previous_counter),
                (4, ciphertext),
            )
        )
        mac = _mac(mac_key, sender_identity, receiver_identity, body)
        return cls(
            CURRENT_VERSION,
            sender_ratchet_key,
            counter,
            previous_counter,
            ciphertext,
            body + mac,
        )

    @classmethod
    def deserialize(cls, data: bytes) -> SignalMessage:
        data = bytes(data)
        if len(data) < 1 + MAC_LENGTH:
            raise InvalidMessageError("SignalMessage is too short")
        version = _check_version(data)
        fields = protobuf.decode(data[1:-MAC_LENGTH])
        ciphertext = protobuf.get_bytes(fields, 4)
        if ciphertext is None:
            raise InvalidMessageError("SignalMessage has no ciphertext")
        counter = _uint32(fields, 2, "counter")
        previous = _optional_uint32(fields, 3, "previous counter")
        return cls(
            version,
            _public_key(fields, 1, "ratchet key"),
            counter,
            previous or 0,
            ciphertext,
            data,
        )

    def verify_mac(self, sender_identity: PublicKey, receiver_identity: PublicKey, mac_key: bytes) -> None:
        expected = _mac(mac_key, sender_identity, receiver_identity, self.serialized[:-MAC_LENGTH])
        if not hmac.compare_digest(expected, self.serialized[-MAC_LENGTH:]):
            raise InvalidMacError("MAC verification failed")


@dataclass(frozen=True, slots=True)
class PreKeySignalMessage:
    """The first messages of a session, carrying what the responder needs for X3DH."""

    message_version: int
    registration_id: int
    pre_key_id: int | None
    signed_pre_key_id: int
    base_key: PublicKey
    identity_key: PublicKey
    message: SignalMessage
    serialized: bytes = field(repr=False)

    @classmethod
    def create(
        cls,
        *,
        registration_id: int,
        pre_key_id: int | None,
        signed_pre_key_id: int,
        base_key: PublicKey,
        identity_key: PublicKey,
        message: SignalMessage,
    ) -> PreKeySignalMessage:
        body = bytes((VERSION_BYTE,)) + protobuf.encode(
            (
                (1, pre_key_id),
                (2, base_key.serialize()),
                (3, identity_key.serialize()),
                (4, message.serialized),
                (5, registration_id),
                (6, signed_pre_key_id),
            )
        )
        return cls(
            CURRENT_VERSION,
            registration_id,
            pre_key_id,
            signed_pre_key_id,
            base_key,
            identity_key,
            message,
            body,
        )

    @classmethod
    def deserialize(cls, data: bytes) -> PreKeySignalMessage:
        data = bytes(data)
        version = _check_version(data)
        fields = protobuf.decode(data[1:])
        inner = protobuf.get_bytes(fields, 4)
        if inner is None:
            raise InvalidMessageError("PreKeySignalMessage has no inner message")
        signed_pre_key_id = _uint32(fields, 6, "signed prekey id")
        message = SignalMessage.deserialize(inner)
        if message.message_version != version:
            raise InvalidMessageError("inner message version differs from the outer one")
        return cls(
            version,
            _optional_uint32(fields, 5, "registration id") or 0,
            _optional_uint32(fields, 1, "prekey id"),
            signed_pre_key_id,
            _public_key(fields, 2, "base key"),
            _public_key(fields, 3, "identity key"),
            message,
            data,
        )


class SenderKeySchema(Enum):
    """Field layout of the Sender Keys messages; the crypto is the same in both.

    ``LEGACY`` (``id=1, iteration=2, …``) is what WhatsApp-lineage clients speak and what
    the bridge uses. ``DISTRIBUTION_ID`` is current libsignal's layout, which leads with a
    16-byte distribution UUID; it exists so the tests can check our Sender Keys crypto
    against official libsignal.
    """

    LEGACY = "legacy"
    DISTRIBUTION_ID = "distribution_id"


# Field numbers per schema: (distribution id, key id, iteration, chain key or
# ciphertext, signing key).
_SENDER_KEY_FIELDS = {
    SenderKeySchema.LEGACY: (None, 1, 2, 3, 4),
    SenderKeySchema.DISTRIBUTION_ID: (1, 2, 3, 4, 5),
}


def _encode_sender_key(
    schema: SenderKeySchema, distribution_id: bytes | None, values: tuple[int | bytes, ...]
) -> bytes:
    """``version || protobuf`` with ``values`` (key id, iteration, …) in ``schema``'s fields."""
    numbers = _SENDER_KEY_FIELDS[schema]
    fields: list[tuple[int, int | bytes | None]] = []
    if numbers[0] is not None:
        if distribution_id is None or len(distribution_id) != 16:
            raise ValueError("this schema needs a 16-byte distribution id")
        fields.append((numbers[0], distribution_id))
    fields += zip(numbers[1:], values, strict=False)
    return bytes((VERSION_BYTE,)) + protobuf.encode(fields)


def _distribution_id(fields: dict[int, int | bytes], number: int | None, schema: SenderKeySchema) -> bytes | None:
    if number is None:
        return None
    value = protobuf.get_bytes(fields, number)
    if value is None or len(value) != 16:
        raise InvalidMessageError(f"{schema.value} sender key message needs a 16-byte distribution id")
    return value


@dataclass(frozen=True, slots=True)
class SenderKeyMessage:
    """A group message under a sender key, signed by the sender's signing key."""

    message_version: int
    key_id: int
    iteration: int
    ciphertext: bytes = field(repr=False)
    serialized: bytes = field(repr=False)
    distribution_id: bytes | None = None

    @classmethod
    def create(
        cls,
        *,
        key_id: int,
        iteration: int,
        ciphertext: bytes,
        signing_key: KeyPair,
        schema: SenderKeySchema = SenderKeySchema.LEGACY,
        distribution_id: bytes | None = None,
    ) -> SenderKeyMessage:
        body = _encode_sender_key(schema, distribution_id, (key_id, iteration, ciphertext))
        has_id = _SENDER_KEY_FIELDS[schema][0] is not None
        return cls(
            CURRENT_VERSION,
            key_id,
            iteration,
            ciphertext,
            body + signing_key.sign(body),
            distribution_id if has_id else None,
        )

    @classmethod
    def deserialize(cls, data: bytes, schema: SenderKeySchema = SenderKeySchema.LEGACY) -> SenderKeyMessage:
        data = bytes(data)
        if len(data) < 1 + SIGNATURE_LENGTH:
            raise InvalidMessageError("SenderKeyMessage is too short")
        version = _check_version(data)
        uuid_field, id_field, iteration_field, ciphertext_field, _ = _SENDER_KEY_FIELDS[schema]
        fields = protobuf.decode(data[1:-SIGNATURE_LENGTH])
        key_id = _uint32(fields, id_field, "sender key id")
        iteration = _uint32(fields, iteration_field, "iteration")
        ciphertext = protobuf.get_bytes(fields, ciphertext_field)
        if ciphertext is None:
            raise InvalidMessageError("SenderKeyMessage has no ciphertext")
        distribution_id = _distribution_id(fields, uuid_field, schema)
        return cls(version, key_id, iteration, ciphertext, data, distribution_id)

    def verify_signature(self, signing_key: PublicKey) -> bool:
        return signing_key.verify(self.serialized[:-SIGNATURE_LENGTH], self.serialized[-SIGNATURE_LENGTH:])


@dataclass(frozen=True, slots=True)
class SenderKeyDistributionMessage:
    """Hands a sender key to one group member; it travels inside a pairwise session."""

    message_version: int
    key_id: int
    iteration: int
    chain_key: bytes = field(repr=False)
    signing_key: PublicKey
    serialized: bytes = field(repr=False)
    distribution_id: bytes | None = None

    @classmethod
    def create(
        cls,
        *,
        key_id: int,
        iteration: int,
        chain_key: bytes,
        signing_key: PublicKey,
        schema: SenderKeySchema = SenderKeySchema.LEGACY,
        distribution_id: bytes | None = None,
    ) -> SenderKeyDistributionMessage:
        body = _encode_sender_key(schema, distribution_id, (key_id, iteration, chain_key, signing_key.serialize()))
        has_id = _SENDER_KEY_FIELDS[schema][0] is not None
        return cls(
            CURRENT_VERSION,
            key_id,
            iteration,
            chain_key,
            signing_key,
            body,
            distribution_id if has_id else None,
        )

    @classmethod
    def deserialize(cls, data: bytes, schema: SenderKeySchema = SenderKeySchema.LEGACY) -> SenderKeyDistributionMessage:
        data = bytes(data)
        version = _check_version(data)
        uuid_field, id_field, iteration_field, chain_field, signing_field = _SENDER_KEY_FIELDS[schema]
        fields = protobuf.decode(data[1:])
        key_id = _uint32(fields, id_field, "sender key id")
        iteration = _uint32(fields, iteration_field, "iteration")
        chain_key = protobuf.get_bytes(fields, chain_field)
        if chain_key is None or len(chain_key) != 32:
            raise InvalidMessageError("SenderKeyDistributionMessage chain key must be 32 bytes")
        return cls(
            version,
            key_id,
            iteration,
            chain_key,
            _public_key(fields, signing_field, "signing key"),
            data,
            _distribution_id(fields, uuid_field, schema),
        )
