"""X3DH session set-up (v3, no post-quantum part) for both roles.

The master secret is ``0xFF * 32 || DH(IK_A, SPK_B) || DH(EK_A, IK_B) || DH(EK_A, SPK_B)
[|| DH(EK_A, OPK_B)]``; the one-time prekey's DH is left out when the responder had none.
The responder's first ratchet key is its signed prekey in the protocol, but it is a
parameter here because libsignal's known-answer tests use a separate key.
"""

from __future__ import annotations

from .curve import KeyPair, PublicKey
from .kdf import derive_initial_keys
from .messages import CURRENT_VERSION
from .prekeys import IdentityKeyPair
from .state import ReceiverChain, SessionState

_DISCONTINUITY = b"\xff" * 32


def initialize_alice_session(
    *,
    our_identity: IdentityKeyPair,
    our_base_key: KeyPair,
    their_identity: PublicKey,
    their_signed_pre_key: PublicKey,
    their_one_time_pre_key: PublicKey | None,
    their_ratchet_key: PublicKey,
    our_sending_ratchet: KeyPair | None = None,
) -> SessionState:
    """The initiator's state: a receiving chain for the responder's ratchet key and one
    DH-ratchet step to a sending chain of its own."""
    secret = (
        _DISCONTINUITY
        + our_identity.key_pair.agree(their_signed_pre_key)
        + our_base_key.agree(their_identity)
        + our_base_key.agree(their_signed_pre_key)
    )
    if their_one_time_pre_key is not None:
        secret += our_base_key.agree(their_one_time_pre_key)
    root_key, receiving_chain = derive_initial_keys(secret)
    sending_ratchet = our_sending_ratchet or KeyPair.generate()
    root_key, sending_chain = root_key.create_chain(their_ratchet_key, sending_ratchet)
    return SessionState(
        session_version=CURRENT_VERSION,
        local_identity=our_identity.public,
        remote_identity=their_identity,
        root_key=root_key,
        previous_counter=0,
        sender_ratchet=sending_ratchet,
        sender_chain=sending_chain,
        alice_base_key=our_base_key.public.serialize(),
        receiver_chains=(ReceiverChain(their_ratchet_key, receiving_chain),),
    )


def initialize_bob_session(
    *,
    our_identity: IdentityKeyPair,
    our_signed_pre_key: KeyPair,
    our_one_time_pre_key: KeyPair | None,
    our_ratchet_key: KeyPair,
    their_identity: PublicKey,
    their_base_key: PublicKey,
) -> SessionState:
    """The responder's state: its first sending chain, under its ratchet key."""
    secret = (
        _DISCONTINUITY
        + our_signed_pre_key.agree(their_identity)
        + our_identity.key_pair.agree(their_base_key)
        + our_signed_pre_key.agree(their_base_key)
    )
    if our_one_time_pre_key is not None:
        secret += our_one_time_pre_key.agree(their_base_key)
    root_key, sending_chain = derive_initial_keys(secret)
    return SessionState(
        session_version=CURRENT_VERSION,
        local_identity=our_identity.public,
        remote_identity=their_identity,
        root_key=root_key,
        previous_counter=0,
        sender_ratchet=our_ratchet_key,
        sender_chain=sending_chain,
        alice_base_key=their_base_key.serialize(),
    )
