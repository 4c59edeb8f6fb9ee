"""Key derivation of the v3 Double Ratchet and Sender Keys, and the body cipher.

HKDF is written on :func:`hmac.digest` (RFC 5869) because building a ``cryptography``
HKDF object per message costs more than the derivation itself; it is checked against
the RFC's vectors in the tests.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from hashlib import sha256

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .curve import KeyPair, PublicKey
from .errors import InvalidMessageError

_ZERO_SALT = bytes(32)
_MESSAGE_KEY_SEED = b"\x01"
_CHAIN_KEY_SEED = b"\x02"

INFO_TEXT = b"WhisperText"
INFO_RATCHET = b"WhisperRatchet"
INFO_MESSAGE_KEYS = b"WhisperMessageKeys"
INFO_GROUP = b"WhisperGroup"


def hkdf_sha256(ikm: bytes, salt: bytes | None, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869); a ``None`` salt is 32 zero bytes."""
    prk = hmac.digest(salt or _ZERO_SALT, ikm, sha256)
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes((counter,)), sha256)
        out += block
        counter += 1
    return out[:length]


@dataclass(frozen=True, slots=True)
class MessageKeys:
    """The keys of one message: AES-256 key, HMAC key, CBC IV, and the message counter."""

    cipher_key: bytes = field(repr=False)
    mac_key: bytes = field(repr=False)
    iv: bytes = field(repr=False)
    counter: int

    @classmethod
    def derive(cls, seed: bytes, counter: int) -> MessageKeys:
        material = hkdf_sha256(seed, None, INFO_MESSAGE_KEYS, 80)
        return cls(material[:32], material[32:64], material[64:80], counter)


@dataclass(frozen=True, slots=True)
class ChainKey:
    """A symmetric-ratchet chain key and its index (the counter of its next message)."""

    key: bytes = field(repr=False)
    index: int

    def next(self) -> ChainKey:
        return ChainKey(hmac.digest(self.key, _CHAIN_KEY_SEED, sha256), self.index + 1)

    def message_keys(self) -> MessageKeys:
        return MessageKeys.derive(hmac.digest(self.key, _MESSAGE_KEY_SEED, sha256), self.index)


@dataclass(frozen=True, slots=True)
class RootKey:
    key: bytes = field(repr=False)

    def create_chain(self, their_ratchet: PublicKey, our_ratchet: KeyPair) -> tuple[RootKey, ChainKey]:
        """One DH-ratchet step: a new root key and a fresh chain at index 0."""
        material = hkdf_sha256(our_ratchet.agree(their_ratchet), self.key, INFO_RATCHET, 64)
        return RootKey(material[:32]), ChainKey(material[32:], 0)


def derive_initial_keys(secret: bytes) -> tuple[RootKey, ChainKey]:
    """The X3DH master secret to the first root key and chain key."""
    material = hkdf_sha256(secret, None, INFO_TEXT, 64)
    return RootKey(material[:32]), ChainKey(material[32:], 0)


def aes_cbc_encrypt(key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    pad = 16 - len(plaintext) % 16
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return encryptor.update(plaintext + bytes((pad,)) * pad) + encryptor.finalize()


def aes_cbc_decrypt(key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    """Decrypt and strip PKCS#7 padding; any malformed input is an InvalidMessageError.

    Callers verify the MAC (or signature) first, so padding errors leak nothing an
    attacker could not already see.
    """
    if not ciphertext or len(ciphertext) % 16:
        raise InvalidMessageError("ciphertext is not a whole number of AES blocks")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    pad = padded[-1]
    if not 1 <= pad <= 16 or padded[-pad:] != bytes((pad,)) * pad:
        raise InvalidMessageError("invalid padding")
    return padded[:-pad]
