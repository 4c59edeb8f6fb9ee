"""The Signal Protocol (v3: X3DH, Double Ratchet, legacy Sender Keys), pure.

No I/O and no database: state goes in and comes out as immutable values, and the store
protocols in :mod:`.stores` say what a persistent implementation must provide.
"""

from .cipher import DecryptResult, SessionCipher
from .curve import KeyPair, PublicKey
from .errors import (
    DuplicateMessageError,
    InvalidKeyError,
    InvalidMacError,
    InvalidMessageError,
    InvalidPreKeyIdError,
    InvalidRecordError,
    InvalidSignatureError,
    LegacyVersionError,
    NoSenderKeyStateError,
    NoSessionError,
    SignalError,
    TooFarInFutureError,
    UnsupportedVersionError,
    UntrustedIdentityError,
)
from .fingerprint import Fingerprint
from .group_cipher import GroupCipher
from .messages import (
    MessageType,
    PreKeySignalMessage,
    SenderKeyDistributionMessage,
    SenderKeyMessage,
    SenderKeySchema,
    SignalMessage,
)
from .prekeys import (
    IdentityKeyPair,
    PreKeyBundle,
    PreKeyRecord,
    SignedPreKeyRecord,
    generate_prekeys,
    generate_registration_id,
    next_prekey_id,
)
from .sender_keys import SenderKeyRecord
from .session import CiphertextMessage
from .staged import StagedSignalStore
from .state import SessionRecord
from .stores import (
    Direction,
    IdentityChange,
    IdentityKeyStore,
    MemorySignalStore,
    PreKeyStore,
    ProtocolAddress,
    SenderKeyStore,
    SessionStore,
    SignalStore,
    SignedPreKeyStore,
)

__all__ = [
    "CiphertextMessage",
    "DecryptResult",
    "Direction",
    "DuplicateMessageError",
    "Fingerprint",
    "GroupCipher",
    "IdentityChange",
    "IdentityKeyPair",
    "IdentityKeyStore",
    "InvalidKeyError",
    "InvalidMacError",
    "InvalidMessageError",
    "InvalidPreKeyIdError",
    "InvalidRecordError",
    "InvalidSignatureError",
    "KeyPair",
    "LegacyVersionError",
    "MemorySignalStore",
    "MessageType",
    "NoSenderKeyStateError",
    "NoSessionError",
    "PreKeyBundle",
    "PreKeyRecord",
    "PreKeySignalMessage",
    "PreKeyStore",
    "ProtocolAddress",
    "PublicKey",
    "SenderKeyDistributionMessage",
    "SenderKeyMessage",
    "SenderKeyRecord",
    "SenderKeySchema",
    "SenderKeyStore",
    "SessionCipher",
    "SessionRecord",
    "SessionStore",
    "SignalError",
    "SignalMessage",
    "SignalStore",
    "SignedPreKeyRecord",
    "SignedPreKeyStore",
    "StagedSignalStore",
    "TooFarInFutureError",
    "UnsupportedVersionError",
    "UntrustedIdentityError",
    "generate_prekeys",
    "generate_registration_id",
    "next_prekey_id",
]
