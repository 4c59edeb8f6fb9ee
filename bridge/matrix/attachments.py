"""Matrix encrypted attachments (``EncryptedFile``, v2: AES-256-CTR, SHA-256 of the
ciphertext), streaming both ways.

mautrix's ``encrypt_attachment``/``decrypt_attachment`` take the whole file in memory;
these take it a chunk at a time, so that a 100 MiB file costs the bridge a few chunks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from bridge.side_work import SideWork


class AttachmentError(Exception):
    """An EncryptedFile that cannot be used or whose ciphertext does not match its hash."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str, *, urlsafe: bool = False) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    return base64.urlsafe_b64decode(padded) if urlsafe else base64.b64decode(padded)


@dataclass
class AttachmentEncryptor:
    """Encrypts a stream; :meth:`file` describes the result once the stream has ended.

    The same key and IV encrypt the same bytes the same way, so an upload that must be
    sent again is encrypted again by a fresh encryptor with :meth:`again`."""

    key: bytes = field(default_factory=lambda: os.urandom(32), repr=False)
    # The spec's counter block: 8 random bytes, then a 64-bit counter from zero.
    iv: bytes = field(default_factory=lambda: os.urandom(8) + bytes(8))

    def __post_init__(self) -> None:
        self._cipher = Cipher(algorithms.AES(self.key), modes.CTR(self.iv)).encryptor()
        self._hash = hashlib.sha256()
        self._side = SideWork()  # the hash, beside the cipher

    def again(self) -> AttachmentEncryptor:
        return AttachmentEncryptor(self.key, self.iv)

    def update(self, chunk: bytes) -> bytes:
        out = self._cipher.update(chunk)
        self._side.run(len(out), self._hash.update, out)
        return out

    def file(self, url: str, mimetype: str | None = None) -> dict[str, Any]:
        self._side.close()
        info: dict[str, Any] = {
            "v": "v2",
            "url": url,
            "key": {
                "kty": "oct",
                "key_ops": ["encrypt", "decrypt"],
                "alg": "A256CTR",
                "k": base64.urlsafe_b64encode(self.key).decode().rstrip("="),
                "ext": True,
            },
            "iv": _b64(self.iv),
            "hashes": {"sha256": _b64(self._hash.digest())},
        }
        if mimetype:
            info["mimetype"] = mimetype
        return info


class AttachmentDecryptor:
    """Decrypts a stream of an EncryptedFile; :meth:`verify` checks the ciphertext's hash
    at the end, and nothing decrypted may be released before it passed."""

    def __init__(self, file: dict[str, Any]) -> None:
        try:
            key = file["key"]
            if key.get("alg") != "A256CTR" or key.get("kty") != "oct":
                raise AttachmentError("the file is not encrypted with AES-256-CTR")
            secret = _unb64(key["k"], urlsafe=True)
            iv = _unb64(file["iv"])
            self._expected = _unb64(file["hashes"]["sha256"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise AttachmentError(f"the file's encryption info is incomplete ({type(exc).__name__})") from None
        if len(secret) != 32 or len(iv) != 16 or len(self._expected) != 32:
            raise AttachmentError("the file's key, IV or hash has the wrong length")
        self._cipher = Cipher(algorithms.AES(secret), modes.CTR(iv)).decryptor()
        self._hash = hashlib.sha256()
        self._side = SideWork()  # the hash, beside the cipher

    def update(self, chunk: bytes) -> bytes:
        self._side.run(len(chunk), self._hash.update, chunk)
        return self._cipher.update(chunk)

    def verify(self) -> None:
        self._side.close()
        if not hmac.compare_digest(self._hash.digest(), self._expected):
            raise AttachmentError("the file does not match its hash")
