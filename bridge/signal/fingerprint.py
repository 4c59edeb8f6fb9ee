"""Safety numbers: libsignal's numeric fingerprint (60 digits) and its scannable form.

Each side's half is ``SHA-512`` iterated ``iterations`` times (5,200 in Signal and
WhatsApp) over ``version(2 bytes, 0) || identity key || stable id`` and then
``hash || identity key``; its first 30 bytes become six 5-digit groups. The two halves are
shown lower first, so both parties see the same 60 digits. The scannable form is the
``CombinedFingerprints`` protobuf of the first 32 bytes of each half.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from hashlib import sha512

from . import protobuf
from .curve import PublicKey
from .errors import InvalidMessageError, SignalError

DEFAULT_ITERATIONS = 5200
SCANNABLE_VERSION = 1
_FINGERPRINT_VERSION = b"\x00\x00"


class FingerprintVersionMismatchError(SignalError):
    """The scanned code uses another fingerprint version than ours."""


def _half(iterations: int, stable_id: bytes, key: PublicKey) -> bytes:
    serialized = key.serialize()
    digest = _FINGERPRINT_VERSION + serialized + stable_id
    for _ in range(iterations):
        digest = sha512(digest + serialized).digest()
    return digest


def _display_half(digest: bytes) -> str:
    return "".join(f"{int.from_bytes(digest[offset : offset + 5], 'big') % 100000:05d}" for offset in range(0, 30, 5))


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """The safety number of a pair of identities, from the local side's point of view."""

    display: str
    local: bytes
    remote: bytes
    version: int = SCANNABLE_VERSION

    @classmethod
    def create(
        cls,
        *,
        local_id: bytes,
        local_key: PublicKey,
        remote_id: bytes,
        remote_key: PublicKey,
        iterations: int = DEFAULT_ITERATIONS,
        version: int = SCANNABLE_VERSION,
    ) -> Fingerprint:
        local = _half(iterations, local_id, local_key)
        remote = _half(iterations, remote_id, remote_key)
        local_display, remote_display = _display_half(local), _display_half(remote)
        display = local_display + remote_display if local_display <= remote_display else remote_display + local_display
        return cls(display, local[:32], remote[:32], version)

    def display_groups(self) -> str:
        """The 60 digits in twelve groups of five, as apps show them."""
        return " ".join(self.display[i : i + 5] for i in range(0, 60, 5))

    def scannable(self) -> bytes:
        return protobuf.encode(
            (
                (1, self.version),
                (2, protobuf.encode(((1, self.local),))),
                (3, protobuf.encode(((1, self.remote),))),
            )
        )

    def matches_scanned(self, scanned: bytes) -> bool:
        """Whether the peer's scannable code shows the same pair of identities.

        Raises:
            FingerprintVersionMismatchError: the code is of another version.
            InvalidMessageError: the code is not a scannable fingerprint.
        """
        fields = protobuf.decode(scanned)
        version = protobuf.get_int(fields, 1)
        if version != self.version:
            raise FingerprintVersionMismatchError(f"fingerprint version {version} is not ours")
        theirs_local = protobuf.get_bytes(protobuf.decode(protobuf.get_bytes(fields, 2) or b""), 1)
        theirs_remote = protobuf.get_bytes(protobuf.decode(protobuf.get_bytes(fields, 3) or b""), 1)
        if theirs_local is None or theirs_remote is None:
            raise InvalidMessageError("scannable fingerprint is incomplete")
        # Their local half is our remote one and vice versa.
        same_remote = hmac.compare_digest(theirs_local, self.remote)
        same_local = hmac.compare_digest(theirs_remote, self.local)
        return same_remote and same_local
