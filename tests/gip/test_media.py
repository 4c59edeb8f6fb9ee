"""Media crypto (§7): the scheme, check order, streaming without holding a file."""

from __future__ import annotations

import hashlib
import hmac
import os
import tracemalloc

import pytest

from bridge.gip.errors import GipError, GipErrorCode
from bridge.gip.media import (
    MAC_LENGTH,
    MediaDecryptor,
    MediaEncryptor,
    MediaKeys,
    MediaType,
    decrypt_bytes,
    encrypt_bytes,
)


def test_scheme_matches_the_profile() -> None:
    plaintext = b"hello media"
    blob, info = encrypt_bytes(MediaType.DOCUMENT, plaintext)
    keys = MediaKeys.derive(info.media_key, MediaType.DOCUMENT)
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    ciphertext, mac = blob[:-MAC_LENGTH], blob[-MAC_LENGTH:]
    assert mac == hmac.digest(keys.mac_key, keys.iv + ciphertext, hashlib.sha256)[:10]
    decryptor = Cipher(algorithms.AES(keys.cipher_key), modes.CBC(keys.iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    assert padded[: -padded[-1]] == plaintext
    assert info.file_enc_sha256 == hashlib.sha256(blob).digest()
    assert info.file_sha256 == hashlib.sha256(plaintext).digest()
    # Each media type has its own keys.
    assert MediaKeys.derive(info.media_key, MediaType.IMAGE) != keys


def test_checks_hash_then_mac() -> None:
    blob, info = encrypt_bytes(MediaType.IMAGE, os.urandom(1000))
    tampered = blob[:-1] + bytes((blob[-1] ^ 1,))
    with pytest.raises(GipError) as excinfo:
        decrypt_bytes(MediaType.IMAGE, tampered, info.media_key, info.file_enc_sha256)
    assert excinfo.value.code is GipErrorCode.MEDIA_HASH
    with pytest.raises(GipError) as excinfo:
        decrypt_bytes(MediaType.IMAGE, tampered, info.media_key, hashlib.sha256(tampered).digest())
    assert excinfo.value.code is GipErrorCode.MEDIA_MAC
    with pytest.raises(GipError) as excinfo:
        decrypt_bytes(MediaType.IMAGE, blob, info.media_key, info.file_enc_sha256, hashlib.sha256(b"x").digest())
    assert excinfo.value.code is GipErrorCode.MEDIA_HASH
    with pytest.raises(GipError):
        decrypt_bytes(MediaType.IMAGE, blob[:5], info.media_key, hashlib.sha256(blob[:5]).digest())


def test_image_size_limit() -> None:
    encryptor = MediaEncryptor(MediaType.IMAGE)
    with pytest.raises(GipError) as excinfo:
        encryptor.update(bytes(MediaType.IMAGE.max_bytes + 1))
    assert excinfo.value.code is GipErrorCode.TOO_LARGE


def test_hundred_mebibytes_stream_in_bounded_memory() -> None:
    chunk = os.urandom(1 << 20)
    total = 100
    tracemalloc.start()
    encryptor = MediaEncryptor(MediaType.VIDEO)
    blob_hash = hashlib.sha256()
    pieces: list[bytes] = []
    for _ in range(total):
        out = encryptor.update(chunk)
        blob_hash.update(out)
        pieces.append(out[:16]) if len(pieces) < 2 else None
    blob_hash.update(encryptor.finalize())
    info = encryptor.result
    assert info is not None
    assert info.file_length == total << 20
    assert blob_hash.digest() == info.file_enc_sha256
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 16 << 20, f"peak {peak} bytes: the file must never sit whole in memory"

    # Decrypt the same stream again (regenerated chunk by chunk) in bounded memory.
    regenerated = MediaEncryptor(MediaType.VIDEO, info.media_key)
    decryptor = MediaDecryptor(MediaType.VIDEO, info.media_key, info.file_enc_sha256, info.file_sha256)
    tracemalloc.start()
    plain_length = 0
    for _ in range(total):
        plain_length += len(decryptor.update(regenerated.update(chunk)))
    plain_length += len(decryptor.update(regenerated.finalize()))
    plain_length += len(decryptor.finalize())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert plain_length == total << 20
    assert peak < 16 << 20
