"""Streaming Matrix attachments against mautrix's own (whole-file) implementation."""

from __future__ import annotations

import os

import pytest
from mautrix.crypto.attachments import decrypt_attachment, encrypt_attachment
from mautrix.types import EncryptedFile

from bridge.matrix.attachments import AttachmentDecryptor, AttachmentEncryptor, AttachmentError


def test_what_we_encrypt_in_chunks_mautrix_decrypts() -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    encryptor = AttachmentEncryptor()
    ciphertext = b"".join(encryptor.update(data[i : i + 65536]) for i in range(0, len(data), 65536))
    info = encryptor.file("mxc://hs/x", "application/pdf")
    file = EncryptedFile.deserialize(info)
    assert decrypt_attachment(ciphertext, file.key.key, file.hashes["sha256"], file.iv) == data
    # Encrypting again with the same key gives the same bytes (an upload sent twice).
    again = encryptor.again()
    assert again.update(data) == ciphertext


def test_what_mautrix_encrypts_we_decrypt_in_chunks_and_check() -> None:
    data = os.urandom(200_000)
    ciphertext, file = encrypt_attachment(data)
    info = file.serialize()
    decryptor = AttachmentDecryptor(info)
    plain = b"".join(decryptor.update(ciphertext[i : i + 4096]) for i in range(0, len(ciphertext), 4096))
    decryptor.verify()
    assert plain == data
    tampered = AttachmentDecryptor(info)
    tampered.update(ciphertext[:-1] + bytes([ciphertext[-1] ^ 1]))
    with pytest.raises(AttachmentError):
        tampered.verify()


@pytest.mark.parametrize(
    "broken",
    [
        {},
        {"key": {"alg": "A128CTR", "kty": "oct", "k": "AAAA"}, "iv": "AAAA", "hashes": {"sha256": "AAAA"}},
        {"key": {"alg": "A256CTR", "kty": "oct", "k": "AAAA"}, "iv": "AAAA", "hashes": {"sha256": "AAAA"}},
        {"key": "nope", "iv": 5, "hashes": None},
    ],
)
def test_broken_encryption_info_is_refused(broken: dict) -> None:
    with pytest.raises(AttachmentError):
        AttachmentDecryptor(broken)
