"""Pure session operations: set-up from a bundle or a PreKey message, encrypt, decrypt.

Each function takes a :class:`SessionRecord` and returns a new one; nothing is mutated
and nothing is stored, so the caller decides when the new record is durable.
Behaviour follows libsignal's ``session_cipher.rs``/``session_management.rs``:

* the current state is tried first, then archived states in order; one that decrypts
  is advanced where it is and never made current again (libsignal-node, WhatsApp's
  lineage, never moves its open session for a late message: promoting, as current Rust
  libsignal does, would send our next message to a session the peer has closed); a
  duplicate is reported at once without trying other states;
* ``previous_counter`` is sent as libsignal sends it (last counter used) and never
  relied on: skipped keys are derived on demand from up to five receiving chains;
* the initiator wraps its messages as PreKey messages until the first reply decrypts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .curve import KeyPair
from .errors import (
    DuplicateMessageError,
    InvalidMessageError,
    InvalidPreKeyIdError,
    NoSessionError,
    SignalError,
)
from .kdf import aes_cbc_decrypt, aes_cbc_encrypt
from .messages import MessageType, PreKeySignalMessage, SignalMessage
from .prekeys import IdentityKeyPair, PreKeyBundle, PreKeyRecord, SignedPreKeyRecord
from .skipped_keys import keys_for_counter
from .state import (
    ARCHIVED_STATES_MAX_LENGTH,
    PendingPreKey,
    ReceiverChain,
    SessionRecord,
    SessionState,
)
from .x3dh import initialize_alice_session, initialize_bob_session


@dataclass(frozen=True, slots=True)
class CiphertextMessage:
    type: MessageType
    serialized: bytes = field(repr=False)


def process_bundle(
    record: SessionRecord,
    bundle: PreKeyBundle,
    *,
    our_identity: IdentityKeyPair,
    our_registration_id: int,
    now_ms: int,
) -> SessionRecord:
    """Open a session as initiator; the previous current session, if any, is archived.

    Raises:
        InvalidSignatureError: the signed prekey is not signed by the bundle's identity.
    """
    bundle.identity_key.verify_or_raise(bundle.signed_pre_key.serialize(), bundle.signed_pre_key_signature)
    base_key = KeyPair.generate()
    state = initialize_alice_session(
        our_identity=our_identity,
        our_base_key=base_key,
        their_identity=bundle.identity_key,
        their_signed_pre_key=bundle.signed_pre_key,
        their_one_time_pre_key=bundle.pre_key,
        their_ratchet_key=bundle.signed_pre_key,
    )
    state = replace(
        state,
        local_registration_id=our_registration_id,
        remote_registration_id=bundle.registration_id,
        pending_pre_key=PendingPreKey(bundle.pre_key_id, bundle.signed_pre_key_id, base_key.public, now_ms),
    )
    return record.promote_state(state)


def encrypt(record: SessionRecord, plaintext: bytes, *, now_ms: int) -> tuple[SessionRecord, CiphertextMessage]:
    """Encrypt under the current session's sending chain.

    Raises:
        NoSessionError: no current session, or its PreKey wrapper went unanswered for
            more than 30 days (the peer has most likely lost it).
    """
    if not record.has_usable_sender_chain(now_ms):
        raise NoSessionError("no usable session to encrypt with")
    state = record.current
    assert state is not None
    chain = state.sender_chain
    keys = chain.message_keys()
    message = SignalMessage.create(
        mac_key=keys.mac_key,
        sender_ratchet_key=state.sender_ratchet.public,
        counter=chain.index,
        previous_counter=state.previous_counter,
        ciphertext=aes_cbc_encrypt(keys.cipher_key, keys.iv, plaintext),
        sender_identity=state.local_identity,
        receiver_identity=state.remote_identity,
    )
    pending = state.pending_pre_key
    if pending is None:
        result = CiphertextMessage(MessageType.WHISPER, message.serialized)
    else:
        wrapped = PreKeySignalMessage.create(
            registration_id=state.local_registration_id,
            pre_key_id=pending.pre_key_id,
            signed_pre_key_id=pending.signed_pre_key_id,
            base_key=pending.base_key,
            identity_key=state.local_identity,
            message=message,
        )
        result = CiphertextMessage(MessageType.PREKEY, wrapped.serialized)
    return SessionRecord(replace(state, sender_chain=chain.next()), record.previous), result


def decrypt_signal_message(record: SessionRecord, message: SignalMessage) -> tuple[SessionRecord, bytes]:
    """Decrypt with the current state, else an archived one, which stays archived.

    Raises:
        NoSessionError: the record holds no session at all.
        DuplicateMessageError: the message's key was already used.
        SignalError: no state could decrypt it (the current state's error is raised).
    """
    if record.current is None and not record.previous:
        raise NoSessionError("no session with this device")
    first_error: SignalError | None = None
    if record.current is not None:
        try:
            state, plaintext = _decrypt_with_state(record.current, message)
            return SessionRecord(state, record.previous), plaintext
        except DuplicateMessageError:
            raise
        except SignalError as exc:
            first_error = exc
    for index, previous in enumerate(record.previous):
        try:
            state, plaintext = _decrypt_with_state(previous, message)
        except DuplicateMessageError:
            raise
        except SignalError as exc:
            first_error = first_error or exc
            continue
        if record.current is None:
            return record.promote_previous(index, state), plaintext  # no open session to keep
        return record.update_previous(index, state), plaintext
    assert first_error is not None
    raise first_error


def process_prekey_message(
    record: SessionRecord,
    message: PreKeySignalMessage,
    *,
    our_identity: IdentityKeyPair,
    our_registration_id: int,
    signed_pre_key: SignedPreKeyRecord | None,
    one_time_pre_key: PreKeyRecord | None,
) -> tuple[SessionRecord, int | None]:
    """Make current the session this PreKey message belongs to, setting it up if new.

    Returns the record and the id of the one-time prekey the new session consumed
    (``None`` when the session already existed or the sender used none).

    Raises:
        InvalidPreKeyIdError: the keys the message names were not supplied.
    """
    if record.find_matching(message.message_version, message.base_key.serialize()):
        # A session we have (a late PreKey message, or a repeat of one): decrypted where
        # it is, current or archived; the open session stays the newest one.
        return record, None
    if signed_pre_key is None or signed_pre_key.id != message.signed_pre_key_id:
        raise InvalidPreKeyIdError("unknown signed prekey")
    if message.pre_key_id is not None and (one_time_pre_key is None or one_time_pre_key.id != message.pre_key_id):
        raise InvalidPreKeyIdError("unknown or already used one-time prekey")
    state = initialize_bob_session(
        our_identity=our_identity,
        our_signed_pre_key=signed_pre_key.key_pair,
        our_one_time_pre_key=one_time_pre_key.key_pair if message.pre_key_id is not None else None,
        our_ratchet_key=signed_pre_key.key_pair,
        their_identity=message.identity_key,
        their_base_key=message.base_key,
    )
    state = replace(
        state,
        local_registration_id=our_registration_id,
        remote_registration_id=message.registration_id,
    )
    current = record.current
    if (
        current is not None
        and current.pending_pre_key is not None
        and current.remote_identity.serialize() == message.identity_key.serialize()
    ):
        # Both sides started a session at once (the same install: the same identity). The
        # peer makes ours its open session when our PreKey message reaches it, and
        # libsignal-node corrupts its open session while it tries it on a message of
        # another; so ours stays open here, and theirs is archived to decrypt with.
        return SessionRecord(current, (state, *record.previous)[:ARCHIVED_STATES_MAX_LENGTH]), message.pre_key_id
    return record.promote_state(state), message.pre_key_id


def decrypt_prekey_message(
    record: SessionRecord,
    message: PreKeySignalMessage,
    *,
    our_identity: IdentityKeyPair,
    our_registration_id: int,
    signed_pre_key: SignedPreKeyRecord | None,
    one_time_pre_key: PreKeyRecord | None,
) -> tuple[SessionRecord, bytes, int | None]:
    """:func:`process_prekey_message` followed by decryption of the inner message.

    Returns the new record, the plaintext and the consumed one-time prekey id, which
    the caller removes from its store only after the record is stored.
    """
    record, consumed = process_prekey_message(
        record,
        message,
        our_identity=our_identity,
        our_registration_id=our_registration_id,
        signed_pre_key=signed_pre_key,
        one_time_pre_key=one_time_pre_key,
    )
    record, plaintext = decrypt_signal_message(record, message.message)
    return record, plaintext, consumed


def _decrypt_with_state(state: SessionState, message: SignalMessage) -> tuple[SessionState, bytes]:
    if message.message_version != state.session_version:
        raise InvalidMessageError("message version differs from the session version")
    their_ratchet = message.sender_ratchet_key
    found = state.find_receiver_chain(their_ratchet)
    chain_index: int | None
    if found is not None:
        chain_index, chain = found
    else:
        # A new ratchet key from the peer: one DH step to its receiving chain, one more to
        # a fresh sending chain of ours.
        root_key, receiving = state.root_key.create_chain(their_ratchet, state.sender_ratchet)
        our_new_ratchet = KeyPair.generate()
        root_key, sending = root_key.create_chain(their_ratchet, our_new_ratchet)
        state = replace(
            state,
            root_key=root_key,
            previous_counter=max(state.sender_chain.index, 1) - 1,
            sender_ratchet=our_new_ratchet,
            sender_chain=sending,
        )
        chain_index, chain = None, ReceiverChain(their_ratchet, receiving)
    chain_key, skipped, keys = keys_for_counter(chain.chain_key, chain.skipped, message.counter)
    chain = ReceiverChain(chain.ratchet_key, chain_key, skipped)
    message.verify_mac(state.remote_identity, state.local_identity, keys.mac_key)
    plaintext = aes_cbc_decrypt(keys.cipher_key, keys.iv, message.ciphertext)
    state = state.with_receiver_chain(chain_index, chain)
    if state.pending_pre_key is not None:
        state = replace(state, pending_pre_key=None)
    return state, plaintext
