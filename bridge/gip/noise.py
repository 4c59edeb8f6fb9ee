"""Noise ``XX_25519_AESGCM_SHA256`` for the GIP chat channel (ours: prologue, size limit).

Written here rather than taken from ``noiseprotocol`` because GIP carries one stanza of up
to 1 MiB in one Noise transport message, above the 65,535 bytes that the Noise spec (and
that library) allow; the handshake keeps the spec's limit. It is held to the published
cacophony vectors in the tests.

    XX:  -> e
         <- e, ee, s, es
         -> s, se
"""

from __future__ import annotations

import hmac
import os
import struct
from dataclasses import dataclass, field
from hashlib import sha256

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import GipError, GipErrorCode

PROTOCOL_NAME = b"Noise_XX_25519_AESGCM_SHA256"
PROLOGUE = b"GIP\x01"
DH_LENGTH = 32
TAG_LENGTH = 16
HANDSHAKE_MAX = 65535
# (ours) a stanza of at most 1 MiB plus the AEAD tag.
TRANSPORT_MAX = (1 << 20) + TAG_LENGTH
_MAX_NONCE = (1 << 64) - 1


def _hkdf2(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    temp = hmac.digest(chaining_key, ikm, sha256)
    first = hmac.digest(temp, b"\x01", sha256)
    return first, hmac.digest(temp, first + b"\x02", sha256)


@dataclass(slots=True)
class StaticKey:
    """A Curve25519 key pair for Noise; the private half never leaves this object's repr."""

    private: bytes = field(repr=False)
    public: bytes

    @classmethod
    def generate(cls) -> StaticKey:
        return cls.from_private(os.urandom(DH_LENGTH))

    @classmethod
    def from_private(cls, private: bytes) -> StaticKey:
        key = X25519PrivateKey.from_private_bytes(private)
        return cls(private, key.public_key().public_bytes_raw())

    def dh(self, public: bytes) -> bytes:
        try:
            return X25519PrivateKey.from_private_bytes(self.private).exchange(X25519PublicKey.from_public_bytes(public))
        except ValueError as exc:
            raise GipError(GipErrorCode.HANDSHAKE, "invalid Noise public key") from exc


class CipherState:
    """AES-256-GCM with a 64-bit counter nonce, as Noise's CipherState."""

    __slots__ = ("_aead", "_nonce", "max_length")

    def __init__(self, key: bytes | None, max_length: int = TRANSPORT_MAX) -> None:
        self._aead = AESGCM(key) if key is not None else None
        self._nonce = 0
        self.max_length = max_length

    @property
    def has_key(self) -> bool:
        return self._aead is not None

    def _next_nonce(self) -> bytes:
        if self._nonce >= _MAX_NONCE:
            raise GipError(GipErrorCode.HANDSHAKE, "Noise nonce exhausted")
        nonce = b"\x00\x00\x00\x00" + struct.pack(">Q", self._nonce)
        self._nonce += 1
        return nonce

    def encrypt(self, ad: bytes, plaintext: bytes) -> bytes:
        if self._aead is None:
            return plaintext
        if len(plaintext) + TAG_LENGTH > self.max_length:
            raise GipError(GipErrorCode.TOO_LARGE, "message too large for one Noise message")
        return self._aead.encrypt(self._next_nonce(), plaintext, ad)

    def decrypt(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self._aead is None:
            return ciphertext
        if len(ciphertext) > self.max_length:
            raise GipError(GipErrorCode.TOO_LARGE, "Noise message too large")
        nonce = self._next_nonce()
        try:
            return self._aead.decrypt(nonce, ciphertext, ad)
        except InvalidTag as exc:
            raise GipError(GipErrorCode.DECRYPT, "Noise message failed authentication") from exc


class _SymmetricState:
    def __init__(self) -> None:
        self.h = PROTOCOL_NAME.ljust(32, b"\x00") if len(PROTOCOL_NAME) <= 32 else sha256(PROTOCOL_NAME).digest()
        self.ck = self.h
        self.cipher = CipherState(None, HANDSHAKE_MAX)

    def mix_hash(self, data: bytes) -> None:
        self.h = sha256(self.h + data).digest()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, key = _hkdf2(self.ck, ikm)
        self.cipher = CipherState(key, HANDSHAKE_MAX)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        first, second = _hkdf2(self.ck, b"")
        return CipherState(first), CipherState(second)


@dataclass(slots=True)
class TransportState:
    """The two directions after the handshake, and what the handshake established."""

    send: CipherState
    receive: CipherState
    remote_static: bytes
    handshake_hash: bytes

    def encrypt(self, plaintext: bytes) -> bytes:
        return self.send.encrypt(b"", plaintext)

    def decrypt(self, ciphertext: bytes) -> bytes:
        return self.receive.decrypt(b"", ciphertext)


def _known(key: bytes | None) -> bytes:
    if key is None:
        raise GipError(GipErrorCode.HANDSHAKE, "handshake out of order")
    return key


class XXHandshake:
    """One side of an XX handshake; call :meth:`write` and :meth:`read` in turn."""

    def __init__(
        self,
        *,
        initiator: bool,
        static: StaticKey,
        prologue: bytes = PROLOGUE,
        ephemeral: StaticKey | None = None,
    ) -> None:
        self.initiator = initiator
        self._s = static
        self._e = ephemeral
        self._re: bytes | None = None
        self._rs: bytes | None = None
        self._ss = _SymmetricState()
        self._ss.mix_hash(prologue)
        self._step = 0
        self.result: TransportState | None = None

    @property
    def remote_static(self) -> bytes | None:
        """The peer's static public key, once its handshake message that carries it is read."""
        return self._rs

    @property
    def my_turn(self) -> bool:
        return (self._step % 2 == 0) == self.initiator

    def write(self, payload: bytes = b"") -> bytes:
        if not self.my_turn or self.result is not None:
            raise GipError(GipErrorCode.HANDSHAKE, "not our turn in the handshake")
        ss = self._ss
        out = b""
        if self._step == 0:
            out += self._write_e()
        elif self._step == 1:
            out += self._write_e()
            ss.mix_key(self._ephemeral().dh(_known(self._re)))
            out += ss.encrypt_and_hash(self._s.public)
            ss.mix_key(self._s.dh(_known(self._re)))
        else:
            out += ss.encrypt_and_hash(self._s.public)
            ss.mix_key(self._s.dh(_known(self._re)))
        out += ss.encrypt_and_hash(payload)
        if len(out) > HANDSHAKE_MAX:
            raise GipError(GipErrorCode.TOO_LARGE, "handshake message too large")
        self._advance()
        return out

    def read(self, message: bytes) -> bytes:
        if self.my_turn or self.result is not None:
            raise GipError(GipErrorCode.HANDSHAKE, "unexpected handshake message")
        if len(message) > HANDSHAKE_MAX:
            raise GipError(GipErrorCode.TOO_LARGE, "handshake message too large")
        ss = self._ss
        rest = message
        if self._step == 0:
            rest = self._read_e(rest)
        elif self._step == 1:
            rest = self._read_e(rest)
            ss.mix_key(self._ephemeral().dh(_known(self._re)))
            rest = self._read_s(rest)
            ss.mix_key(self._ephemeral().dh(_known(self._rs)))
        else:
            rest = self._read_s(rest)
            ss.mix_key(self._ephemeral().dh(_known(self._rs)))
        payload = ss.decrypt_and_hash(rest)
        self._advance()
        return payload

    def _ephemeral(self) -> StaticKey:
        if self._e is None:
            raise GipError(GipErrorCode.HANDSHAKE, "handshake out of order")
        return self._e

    def _write_e(self) -> bytes:
        if self._e is None:
            self._e = StaticKey.generate()
        self._ss.mix_hash(self._e.public)
        return self._e.public

    def _read_e(self, message: bytes) -> bytes:
        if len(message) < DH_LENGTH:
            raise GipError(GipErrorCode.HANDSHAKE, "truncated handshake message")
        self._re = message[:DH_LENGTH]
        self._ss.mix_hash(self._re)
        return message[DH_LENGTH:]

    def _read_s(self, message: bytes) -> bytes:
        length = DH_LENGTH + (TAG_LENGTH if self._ss.cipher.has_key else 0)
        if len(message) < length:
            raise GipError(GipErrorCode.HANDSHAKE, "truncated handshake message")
        self._rs = self._ss.decrypt_and_hash(message[:length])
        return message[length:]

    def _advance(self) -> None:
        self._step += 1
        if self._step == 3:
            first, second = self._ss.split()
            send, receive = (first, second) if self.initiator else (second, first)
            self.result = TransportState(send, receive, _known(self._rs), self._ss.h)
