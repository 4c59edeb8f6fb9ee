"""The one error type of the GIP layer, with a closed set of codes.

Codes are the profile's numeric ones where it has them (the ``<failure reason>`` of the
chat handshake, ``<ack error>``, ``<iq type="error">``); the rest name local failures.
Messages never carry key material or message content.
"""

from __future__ import annotations

from enum import Enum


class GipErrorCode(Enum):
    BAD_REQUEST = "400"  # malformed stanza or frame
    UNAUTHORIZED = "401"  # bad token or static key
    FORBIDDEN = "403"  # suspended, not reachable, or blocked
    NOT_FOUND = "404"
    NOT_ENLISTED = "405"
    NOT_ACCEPTABLE = "406"  # over a group's limits
    CONFLICT = "409"  # replaced connection, or a stale device list
    TOO_LARGE = "413"
    VERSION = "426"
    UNENLISTED = "428"  # un-enlisted after 30 days without a connection
    RATE_LIMITED = "429"
    NOT_IN_EEA = "451"
    SERVER_ERROR = "500"
    UNAVAILABLE = "503"
    # Local failures, never sent on the wire.
    HANDSHAKE = "handshake"
    UNTRUSTED_SERVER = "untrusted_server"  # the server proved another Noise key than the pinned one
    DECRYPT = "decrypt"
    MEDIA_HASH = "media_hash"
    MEDIA_MAC = "media_mac"
    QUOTA = "quota"  # the Partner media store holds as much of a user's files as it may
    TOKEN = "token"  # noqa: S105 - an error code, not a secret
    CLOSED = "closed"
    TIMEOUT = "timeout"

    @classmethod
    def from_wire(cls, code: str) -> GipErrorCode:
        try:
            return cls(code)
        except ValueError:
            return cls.SERVER_ERROR


class GipError(Exception):
    """A GIP failure: ``code`` says what kind, ``text`` says it for a human."""

    def __init__(self, code: GipErrorCode, text: str = "", *, retry_after: int | None = None):
        super().__init__(f"{code.value}: {text}" if text else code.value)
        self.code = code
        self.text = text
        self.retry_after = retry_after
