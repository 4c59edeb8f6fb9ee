"""Encryption at rest for secrets and pending message contents.

AES-256-GCM under the key from ``encryption_at_rest.key``. The associated data names
what a value is (table and row), so a sealed value copied into another row does not open.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = 1
NONCE_LENGTH = 12


class SealError(Exception):
    """A sealed value did not open: the at-rest key is wrong or the value was tampered with."""


class Sealer:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the at-rest key must be 32 bytes")
        self._aead = AESGCM(key)

    @staticmethod
    def _context(parts: tuple[str, ...]) -> bytes:
        return "\x00".join(parts).encode()

    def seal(self, plaintext: bytes, *context: str) -> bytes:
        nonce = os.urandom(NONCE_LENGTH)
        return bytes((VERSION,)) + nonce + self._aead.encrypt(nonce, plaintext, self._context(context))

    def open(self, sealed: bytes, *context: str) -> bytes:
        sealed = bytes(sealed)
        if len(sealed) < 1 + NONCE_LENGTH + 16 or sealed[0] != VERSION:
            raise SealError("not a sealed value")
        nonce = sealed[1 : 1 + NONCE_LENGTH]
        try:
            return self._aead.decrypt(nonce, sealed[1 + NONCE_LENGTH :], self._context(context))
        except InvalidTag:
            raise SealError(
                "a stored secret does not open: encryption_at_rest.key is not the key this database was "
                "written with, or the row was altered"
            ) from None
