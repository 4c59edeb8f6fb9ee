"""Media encryption (§7), WhatsApp's scheme, streaming in both directions.

``HKDF-SHA256(media_key, info, 112)`` gives ``iv[0:16] | cipher_key[16:48] |
mac_key[48:80]``; the blob is ``AES-256-CBC(PKCS#7) || HMAC-SHA256(mac_key, iv ||
ciphertext)[:10]``; ``file_enc_sha256 = SHA-256(blob)`` and ``file_sha256 =
SHA-256(plaintext)``. Receivers check the hash, then the MAC, then decrypt: the streaming
decryptor computes all three in one pass but only :func:`decrypt_to_file` releases the
plaintext, by renaming it into place after every check passed. Nothing holds a whole
file in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from bridge.side_work import SideWork
from bridge.signal.kdf import hkdf_sha256

from .errors import GipError, GipErrorCode

MAC_LENGTH = 10
MEDIA_KEY_LENGTH = 32
# (ours, per profile config) limits on one file.
MAX_FILE_BYTES = 100 * 1024 * 1024
MAX_IMAGE_BYTES = 16 * 1024 * 1024


CHUNK = 1 << 20  # what streams move at a time: 1 MiB


class MediaType(Enum):
    IMAGE = b"WhatsApp Image Keys"
    VIDEO = b"WhatsApp Video Keys"
    AUDIO = b"WhatsApp Audio Keys"
    DOCUMENT = b"WhatsApp Document Keys"

    @property
    def max_bytes(self) -> int:
        return MAX_IMAGE_BYTES if self is MediaType.IMAGE else MAX_FILE_BYTES

    @classmethod
    def of_kind(cls, kind: str) -> MediaType:
        """The key type of a Content media field: image, video, audio or document."""
        try:
            return MEDIA_TYPES[kind]
        except KeyError:
            raise GipError(GipErrorCode.BAD_REQUEST, f"not a media kind: {kind}") from None


# The Content field of a media message → its key type (HKDF info).
MEDIA_TYPES = {
    "image": MediaType.IMAGE,
    "video": MediaType.VIDEO,
    "audio": MediaType.AUDIO,
    "document": MediaType.DOCUMENT,
}


@dataclass(frozen=True, slots=True)
class MediaKeys:
    iv: bytes = field(repr=False)
    cipher_key: bytes = field(repr=False)
    mac_key: bytes = field(repr=False)

    @classmethod
    def derive(cls, media_key: bytes, media_type: MediaType) -> MediaKeys:
        if len(media_key) != MEDIA_KEY_LENGTH:
            raise GipError(GipErrorCode.BAD_REQUEST, "media key must be 32 bytes")
        material = hkdf_sha256(media_key, None, media_type.value, 112)
        return cls(material[:16], material[16:48], material[48:80])


@dataclass(frozen=True, slots=True)
class EncryptedMedia:
    """What the content message carries about an uploaded blob."""

    media_key: bytes = field(repr=False)
    file_sha256: bytes
    file_enc_sha256: bytes
    file_length: int


class MediaEncryptor:
    """Feed plaintext with :meth:`update`; :meth:`finalize` returns the last bytes.

    The cipher runs in the caller's thread; the three hashes (plaintext, HMAC, blob) run
    beside it in a worker (:class:`~bridge.side_work.SideWork`)."""

    def __init__(self, media_type: MediaType, media_key: bytes | None = None) -> None:
        self.media_type = media_type
        self.media_key = media_key or os.urandom(MEDIA_KEY_LENGTH)
        keys = MediaKeys.derive(self.media_key, media_type)
        self._cipher = Cipher(algorithms.AES(keys.cipher_key), modes.CBC(keys.iv)).encryptor()
        self._mac = hmac.new(keys.mac_key, keys.iv, hashlib.sha256)
        self._plain_hash = hashlib.sha256()
        self._blob_hash = hashlib.sha256()
        self._side = SideWork()
        self._length = 0
        self._tail = b""
        self.result: EncryptedMedia | None = None

    def update(self, chunk: bytes) -> bytes:
        self._length += len(chunk)
        if self._length > self.media_type.max_bytes:
            self._side.close()
            raise GipError(GipErrorCode.TOO_LARGE, "file is over the size limit")
        self._side.run(len(chunk), self._plain_hash.update, chunk)
        # Keep the last partial block back so finalize can pad it.
        data = self._tail + chunk
        cut = len(data) - len(data) % 16
        self._tail = data[cut:]
        return self._emit(self._cipher.update(data[:cut]))

    def finalize(self) -> bytes:
        pad = 16 - len(self._tail) % 16
        out = self._cipher.update(self._tail + bytes((pad,)) * pad) + self._cipher.finalize()
        out = self._emit(out)
        self._side.close()
        mac = self._mac.digest()[:MAC_LENGTH]
        self._blob_hash.update(mac)
        self.result = EncryptedMedia(self.media_key, self._plain_hash.digest(), self._blob_hash.digest(), self._length)
        return out + mac

    def _emit(self, ciphertext: bytes) -> bytes:
        self._side.run(len(ciphertext), self._hash_ciphertext, ciphertext)
        return ciphertext

    def _hash_ciphertext(self, ciphertext: bytes) -> None:
        self._mac.update(ciphertext)
        self._blob_hash.update(ciphertext)


class MediaDecryptor:
    """Feed the blob with :meth:`update`; :meth:`finalize` checks hash, MAC, padding.

    ``update`` returns plaintext early for streaming to a *temporary* sink; callers must
    not release it before ``finalize`` returned (see :func:`decrypt_to_file`).
    """

    def __init__(
        self,
        media_type: MediaType,
        media_key: bytes,
        file_enc_sha256: bytes,
        file_sha256: bytes | None = None,
    ) -> None:
        keys = MediaKeys.derive(media_key, media_type)
        self.media_type = media_type
        self._expected_blob = file_enc_sha256
        self._expected_plain = file_sha256
        self._cipher = Cipher(algorithms.AES(keys.cipher_key), modes.CBC(keys.iv)).decryptor()
        self._mac = hmac.new(keys.mac_key, keys.iv, hashlib.sha256)
        self._blob_hash = hashlib.sha256()
        self._plain_hash = hashlib.sha256()
        self._side = SideWork()  # the hashes, beside the cipher
        self._held = b""  # the last MAC bytes and the last block, not yet known to be final
        self._length = 0

    def update(self, chunk: bytes) -> bytes:
        self._length += len(chunk)
        if self._length > self.media_type.max_bytes + 16 + MAC_LENGTH:
            self._side.close()
            raise GipError(GipErrorCode.TOO_LARGE, "file is over the size limit")
        data = self._held + chunk
        # Hold back the MAC and one whole block (it may carry the padding).
        keep = MAC_LENGTH + 16
        usable = max(0, len(data) - keep)
        usable -= usable % 16
        self._held = data[usable:]
        ciphertext = data[:usable]
        self._side.run(len(chunk), self._hash_blob, chunk, ciphertext)
        plaintext = self._cipher.update(ciphertext)
        self._side.run(len(plaintext), self._plain_hash.update, plaintext)
        return plaintext

    def close(self) -> None:
        """Let the hashing worker go (after a failure; ``finalize`` does it otherwise)."""
        self._side.abandon()

    def _hash_blob(self, chunk: bytes, ciphertext: bytes) -> None:
        self._blob_hash.update(chunk)
        self._mac.update(ciphertext)

    def finalize(self) -> bytes:
        self._side.close()
        if not hmac.compare_digest(self._blob_hash.digest(), self._expected_blob):
            raise GipError(GipErrorCode.MEDIA_HASH, "media blob does not match its hash")
        held = self._held
        if len(held) < MAC_LENGTH + 16 or (len(held) - MAC_LENGTH) % 16:
            raise GipError(GipErrorCode.MEDIA_MAC, "media blob is truncated")
        ciphertext, mac = held[:-MAC_LENGTH], held[-MAC_LENGTH:]
        self._mac.update(ciphertext)
        if not hmac.compare_digest(self._mac.digest()[:MAC_LENGTH], mac):
            raise GipError(GipErrorCode.MEDIA_MAC, "media blob MAC does not verify")
        padded = self._cipher.update(ciphertext) + self._cipher.finalize()
        pad = padded[-1]
        if not 1 <= pad <= 16 or padded[-pad:] != bytes((pad,)) * pad:
            raise GipError(GipErrorCode.MEDIA_MAC, "media blob padding is invalid")
        tail = padded[:-pad]
        self._plain_hash.update(tail)
        if self._expected_plain is not None and not hmac.compare_digest(
            self._plain_hash.digest(), self._expected_plain
        ):
            raise GipError(GipErrorCode.MEDIA_HASH, "decrypted media does not match its hash")
        return tail


def encrypt_bytes(media_type: MediaType, plaintext: bytes) -> tuple[bytes, EncryptedMedia]:
    encryptor = MediaEncryptor(media_type)
    blob = encryptor.update(plaintext) + encryptor.finalize()
    assert encryptor.result is not None
    return blob, encryptor.result


def decrypt_bytes(
    media_type: MediaType,
    blob: bytes,
    media_key: bytes,
    file_enc_sha256: bytes,
    file_sha256: bytes | None = None,
) -> bytes:
    decryptor = MediaDecryptor(media_type, media_key, file_enc_sha256, file_sha256)
    head = decryptor.update(blob)
    return head + decryptor.finalize()


def encrypt_file(media_type: MediaType, chunks: Iterable[bytes], sink: BinaryIO) -> EncryptedMedia:
    """Encrypt a stream of plaintext chunks into ``sink``."""
    encryptor = MediaEncryptor(media_type)
    for chunk in chunks:
        sink.write(encryptor.update(chunk))
    sink.write(encryptor.finalize())
    assert encryptor.result is not None
    return encryptor.result


async def decrypt_to_file(
    media_type: MediaType,
    chunks: AsyncIterable[bytes],
    destination: Path,
    *,
    media_key: bytes,
    file_enc_sha256: bytes,
    file_sha256: bytes | None = None,
    expected_length: int | None = None,
) -> int:
    """Decrypt a streamed blob into ``destination``, which appears only if every check passed
    (with ``expected_length``, the length the message said, too).

    Returns the plaintext length. On any failure nothing is left at ``destination``.
    """
    decryptor = MediaDecryptor(media_type, media_key, file_enc_sha256, file_sha256)
    partial = destination.with_name(destination.name + ".partial")
    length = 0
    working: asyncio.Future[int] | None = None

    def step(out: BinaryIO, chunk: bytes) -> int:
        data = decryptor.update(chunk)
        out.write(data)
        return len(data)

    def last(out: BinaryIO) -> int:
        tail = decryptor.finalize()
        out.write(tail)
        return len(tail)

    try:
        with partial.open("wb") as out:
            # The crypto and the disk run in a worker thread while the next chunk arrives.
            async for chunk in chunks:
                if working is not None:
                    length += await working
                working = asyncio.ensure_future(asyncio.to_thread(step, out, chunk))
            if working is not None:
                length += await working
            length += await asyncio.to_thread(last, out)
            if expected_length is not None and length != expected_length:
                raise GipError(GipErrorCode.MEDIA_HASH, "the file is not as long as its message says")
        partial.replace(destination)
    except BaseException:
        if working is not None and not working.done():
            await asyncio.wait([working])  # the worker still writes to the file
        decryptor.close()
        partial.unlink(missing_ok=True)
        raise
    return length


async def whole_chunks(stream: asyncio.StreamReader | Any, size: int = CHUNK) -> AsyncIterator[bytes]:
    """A network stream in chunks of ``size`` (the last one shorter): a socket hands over
    whatever arrived, often 64 KiB, and each chunk costs a thread hop."""
    while True:
        try:
            yield await stream.readexactly(size)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                yield exc.partial
            return


def file_chunks(path: Path, size: int = CHUNK) -> Iterable[bytes]:
    with path.open("rb") as source:
        while chunk := source.read(size):
            yield chunk
