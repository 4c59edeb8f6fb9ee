"""Curve25519 keys as libsignal serializes them, and XEdDSA signatures.

Public keys travel as ``0x05 || 32 bytes`` (libsignal's ``KeyType::Djb``). Identity keys
are X25519 keys that also sign with XEdDSA. libsignal's signer keeps the Edwards sign bit
of the derived public key in the top bit of ``sig[63]`` (for compatibility with
libsignal-protocol-java) instead of forcing it to zero as the XEdDSA spec does, and its
verifier reads it back from there; we do the same, or a third of signatures fail.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field

import xeddsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from .errors import InvalidKeyError, InvalidSignatureError

DJB_TYPE = 0x05
KEY_LENGTH = 32
SERIALIZED_PUBLIC_LENGTH = 33
SIGNATURE_LENGTH = 64


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A Curve25519 public key; ``raw`` is the 32-byte Montgomery u-coordinate."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != KEY_LENGTH:
            raise InvalidKeyError("public key must be 32 bytes")

    def serialize(self) -> bytes:
        return bytes((DJB_TYPE,)) + self.raw

    @classmethod
    def deserialize(cls, data: bytes) -> PublicKey:
        """Parse ``0x05 || key``; any other type byte or length is an :class:`InvalidKeyError`."""
        if len(data) != SERIALIZED_PUBLIC_LENGTH:
            raise InvalidKeyError(f"serialized public key must be 33 bytes, got {len(data)}")
        if data[0] != DJB_TYPE:
            raise InvalidKeyError(f"unknown public key type {data[0]:#04x}")
        return cls(bytes(data[1:]))

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Check a libsignal-style XEdDSA signature in constant time with respect to secrets."""
        if len(signature) != SIGNATURE_LENGTH:
            return False
        sign_bit = signature[63] >> 7
        ed_signature = signature[:63] + bytes((signature[63] & 0x7F,))
        try:
            ed_public = xeddsa.curve25519_pub_to_ed25519_pub(self.raw, bool(sign_bit))
            return bool(xeddsa.ed25519_verify(ed_signature, ed_public, message))
        except xeddsa.XEdDSAException:
            return False

    def verify_or_raise(self, message: bytes, signature: bytes) -> None:
        if not self.verify(message, signature):
            raise InvalidSignatureError("signature did not verify")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PublicKey):
            return NotImplemented
        return hmac.compare_digest(self.raw, other.raw)

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"PublicKey({self.raw[:4].hex()}…)"


@dataclass(frozen=True, slots=True, eq=False)
class KeyPair:
    """A Curve25519 key pair. ``repr`` never shows the private key."""

    private: bytes = field(repr=False)
    public: PublicKey
    _x25519: list[X25519PrivateKey] = field(default_factory=list, repr=False, compare=False)
    # The Edwards sign bit of the XEdDSA public key, cached because deriving it costs
    # about a third of a signature.
    _sign_bit: list[int] = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def generate(cls) -> KeyPair:
        return cls.from_private(os.urandom(KEY_LENGTH))

    @classmethod
    def from_private(cls, private: bytes) -> KeyPair:
        """Build a key pair from a private scalar, clamping it as X25519 does.

        X25519 clamps on every use, so clamping here changes no shared secret; it matters
        for XEdDSA, which signs with the scalar as stored.
        """
        if len(private) != KEY_LENGTH:
            raise InvalidKeyError("private key must be 32 bytes")
        clamped = bytearray(private)
        clamped[0] &= 248
        clamped[31] = (clamped[31] & 127) | 64
        key = X25519PrivateKey.from_private_bytes(bytes(clamped))
        return cls(bytes(clamped), PublicKey(key.public_key().public_bytes_raw()), [key])

    @classmethod
    def from_stored(cls, private: bytes, public: PublicKey) -> KeyPair:
        """Rebuild a pair we serialized ourselves, skipping the public-key derivation.

        Loading a session record does this on every message, and deriving the public
        key would cost as much as the rest of the load.
        """
        if len(private) != KEY_LENGTH:
            raise InvalidKeyError("private key must be 32 bytes")
        return cls(bytes(private), public)

    def agree(self, their_public: PublicKey) -> bytes:
        """X25519; a low-order peer key (all-zero shared secret) is an InvalidKeyError."""
        if not self._x25519:
            self._x25519.append(X25519PrivateKey.from_private_bytes(self.private))
        try:
            return self._x25519[0].exchange(X25519PublicKey.from_public_bytes(their_public.raw))
        except ValueError as exc:
            raise InvalidKeyError("key agreement with an invalid public key") from exc

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeyPair):
            return NotImplemented
        return hmac.compare_digest(self.private, other.private) and self.public == other.public

    def __hash__(self) -> int:
        return hash(self.public)

    def sign(self, message: bytes) -> bytes:
        if not self._sign_bit:
            self._sign_bit.append(xeddsa.priv_to_ed25519_pub(self.private)[31] & 0x80)
        signature = bytearray(xeddsa.ed25519_priv_sign(self.private, message))
        signature[63] = (signature[63] & 0x7F) | self._sign_bit[0]
        return bytes(signature)
