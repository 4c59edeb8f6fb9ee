"""Message content (§5): the ``Content`` protobuf and the padding around it (ours: schema).

The Signal plaintext is ``Content`` followed by ``n`` bytes of value ``n``, ``n`` random
in 1..15, as WhatsApp-lineage clients pad; the receiver checks and strips it.
"""

from __future__ import annotations

import secrets

from google.protobuf.message import DecodeError

from .errors import GipError, GipErrorCode
from .proto.content_pb2 import (
    Content,
    ContextInfo,
    Edit,
    ExtendedText,
    Media,
    MessageKey,
    Reaction,
    Revoke,
    SenderKeyDistribution,
)

__all__ = [
    "Content",
    "ContextInfo",
    "Edit",
    "ExtendedText",
    "Media",
    "MessageKey",
    "Reaction",
    "Revoke",
    "SenderKeyDistribution",
    "decode_content",
    "encode_content",
    "pad",
    "unpad",
]

MAX_PADDING = 15


def pad(data: bytes) -> bytes:
    n = secrets.randbelow(MAX_PADDING) + 1
    return data + bytes((n,)) * n


def unpad(data: bytes) -> bytes:
    """Strip and check the padding; a malformed one is a GipError 400."""
    if not data:
        raise GipError(GipErrorCode.BAD_REQUEST, "empty plaintext")
    n = data[-1]
    if not 1 <= n <= MAX_PADDING or len(data) < n or data[-n:] != bytes((n,)) * n:
        raise GipError(GipErrorCode.BAD_REQUEST, "invalid plaintext padding")
    return data[:-n]


def encode_content(content: Content) -> bytes:
    """Serialize and pad, ready for Signal encryption."""
    return pad(content.SerializeToString())


def decode_content(plaintext: bytes) -> Content:
    """Unpad and parse a decrypted plaintext; GipError 400 if either fails."""
    content = Content()
    try:
        content.ParseFromString(unpad(plaintext))
    except DecodeError:
        raise GipError(GipErrorCode.BAD_REQUEST, "plaintext is not a Content message") from None
    if content.WhichOneof("body") is None and not content.HasField("sender_key_distribution"):
        raise GipError(GipErrorCode.BAD_REQUEST, "content has no body")
    return content
