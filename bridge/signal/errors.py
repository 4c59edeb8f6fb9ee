"""Typed errors of the Signal Protocol layer.

Every failure of parsing, verification or decryption raises a subclass of
:class:`SignalError`; no other exception type escapes the public functions of
``bridge.signal`` for bad input. Messages never contain key material or plaintext.
"""


class SignalError(Exception):
    """Base class of every error raised by ``bridge.signal`` for bad input or state."""


class InvalidMessageError(SignalError):
    """The bytes are not a well-formed message of the expected type."""


class InvalidKeyError(SignalError):
    """A key has the wrong length, type byte or value."""


class InvalidSignatureError(SignalError):
    """An XEdDSA signature did not verify."""


class InvalidMacError(InvalidMessageError):
    """A message's MAC did not verify."""


class LegacyVersionError(InvalidMessageError):
    """The message's version is older than v3."""


class UnsupportedVersionError(InvalidMessageError):
    """The message's version is newer than we speak (v4 PQXDH/SPQR, for example)."""


class DuplicateMessageError(SignalError):
    """The message key was already used: the message was delivered before."""


class TooFarInFutureError(InvalidMessageError):
    """The message counter jumps further ahead than the skipped-key limit allows."""


class NoSessionError(SignalError):
    """There is no usable session with the peer."""


class UntrustedIdentityError(SignalError):
    """The peer's identity key differs from the one the store trusts."""


class InvalidPreKeyIdError(SignalError):
    """A PreKey message names a one-time or signed prekey the store does not hold."""


class InvalidRecordError(SignalError):
    """A serialized session or sender-key record cannot be read."""


class NoSenderKeyStateError(SignalError):
    """No sender-key state matches the message's key id."""
