"""Known-answer tests: RFC 5869/7748 primitives and libsignal's own vectors.

libsignal vectors: ``rust/protocol/src/ratchet/keys.rs::test_chain_key_derivation``,
``rust/protocol/tests/ratchet.rs`` at tag v0.74.0 (X3DH without a one-time prekey), and
``rust/core/src/curve/curve25519.rs::test_signature`` / ``test_agreement``.
"""

from __future__ import annotations

import pytest

from bridge.signal.curve import KeyPair, PublicKey
from bridge.signal.kdf import ChainKey, hkdf_sha256
from bridge.signal.prekeys import IdentityKeyPair
from bridge.signal.x3dh import initialize_alice_session, initialize_bob_session

h = bytes.fromhex


@pytest.mark.parametrize(
    ("ikm", "salt", "info", "length", "okm"),
    [
        (  # RFC 5869 A.1
            "0b" * 22,
            "000102030405060708090a0b0c",
            "f0f1f2f3f4f5f6f7f8f9",
            42,
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
        ),
        (  # RFC 5869 A.3: no salt, no info
            "0b" * 22,
            "",
            "",
            42,
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
        ),
    ],
)
def test_hkdf_rfc5869(ikm: str, salt: str, info: str, length: int, okm: str) -> None:
    assert hkdf_sha256(h(ikm), h(salt) or None, h(info), length).hex() == okm


def test_x25519_agreement_vector() -> None:
    alice = KeyPair.from_private(h("c806439dc9d2c476ffed8f2580c0888d58ab406bf7ae3698879021b96bb4bf59"))
    bob = KeyPair.from_private(h("b03b34c33a1c44f225b662d2bf4859b8135411fa7b0386d45fb75dc5b91b4466"))
    assert alice.public.raw.hex() == ("1bb75966f2e93a3691dfff942bb2a466a1c08b8d78ca3f4d6df8b8bfa2e4ee28")
    assert bob.public.raw.hex() == "653614993d2b15ee9e5fd3d86ce719ef4ec1daae1886a87b3f5fa9565a27a22f"
    shared = "325f239328941ced6e673b86ba41017448e99b649a9c3806c1dd7ca4c477e629"
    assert alice.agree(bob.public).hex() == shared
    assert bob.agree(alice.public).hex() == shared


def test_chain_key_derivation() -> None:
    seed = h("8ab72d6f4cc5ac0d387eaf463378ddb28edd07385b1cb01250c715982e7ad48f")
    chain = ChainKey(seed, 0)
    keys = chain.message_keys()
    assert keys.cipher_key.hex() == ("bf51e9d75e0e31031051f82a2491ffc084fa298b7793bd9db620056febf45217")
    assert keys.mac_key.hex() == "c6c77d6a73a354337a56435e34607dfe48e3ace14e77314dc6abc172e7a7030b"
    assert chain.next().key.hex() == ("28e8f8fee54b801eef7c5cfb2f17f32c7b334485bbb70fac6ec10342a246d15d")
    assert keys.counter == 0
    assert chain.next().index == 1
    assert chain.next().message_keys().counter == 1


BOB_EPHEMERAL_PUBLIC = h("052cb49776b8770205745a3a6e24f579cdb4ba7a89041005928ebbadc9c05ad458")
BOB_EPHEMERAL_PRIVATE = h("a1cab48f7c893fafa9880a28c3b4999d28d6329562d27a4ea4e22e9ff1bdd65a")
BOB_IDENTITY_PUBLIC = h("05f1f43874f6966956c2dd473f8fa15adeb71d1cb991b2341692324cefb1c5e626")
BOB_IDENTITY_PRIVATE = h("4875cc69ddf8ea0719ec947d61081135868d5fd801f02c0225e516df2156605e")
BOB_SIGNED_PREKEY_PUBLIC = h("05ac248a8f263be6863576eb0362e28c828f0107a3379d34bab1586bf8c770cd67")
BOB_SIGNED_PREKEY_PRIVATE = h("583900131fb727998b7803fe6ac22cc591f342e4e42a8c8d5d78194209b8d253")
ALICE_BASE_PUBLIC = h("05472d1fb1a9862c3af6beaca8920277e2b26f4a79213ec7c906aeb35e03cf8950")
ALICE_BASE_PRIVATE = h("11ae7c64d1e61cd596b76a0db5012673391cae66edbfcf073b4da80516a47449")
ALICE_IDENTITY_PUBLIC = h("05b4a8455660ada65b401007f615e654041746432e3339c6875149bceefcb42b4a")
ALICE_IDENTITY_PRIVATE = h("9040f0d4e09cf38f6dc7c13779c908c015a1da4fa78737a080eb0a6f4f5f8f58")


def _pair(private: bytes, public: bytes) -> KeyPair:
    # As libsignal's KeyPair::from_public_and_private: the vectors' pairs are taken as
    # given (Bob's ephemeral pair does not even match, and its public half is unused).
    return KeyPair.from_stored(private, PublicKey.deserialize(public))


def test_ratcheting_session_as_bob() -> None:
    state = initialize_bob_session(
        our_identity=IdentityKeyPair(_pair(BOB_IDENTITY_PRIVATE, BOB_IDENTITY_PUBLIC)),
        our_signed_pre_key=_pair(BOB_SIGNED_PREKEY_PRIVATE, BOB_SIGNED_PREKEY_PUBLIC),
        our_one_time_pre_key=None,
        our_ratchet_key=_pair(BOB_EPHEMERAL_PRIVATE, BOB_EPHEMERAL_PUBLIC),
        their_identity=PublicKey.deserialize(ALICE_IDENTITY_PUBLIC),
        their_base_key=PublicKey.deserialize(ALICE_BASE_PUBLIC),
    )
    assert state.local_identity.serialize() == BOB_IDENTITY_PUBLIC
    assert state.remote_identity.serialize() == ALICE_IDENTITY_PUBLIC
    assert state.sender_chain.key.hex() == ("9797caca53c989bbe229a40ca7727010eb2604fc14945d77958a0aeda088b44d")
    assert state.session_version == 3


def test_ratcheting_session_as_alice() -> None:
    bob_ephemeral = PublicKey.deserialize(BOB_EPHEMERAL_PUBLIC)
    state = initialize_alice_session(
        our_identity=IdentityKeyPair(_pair(ALICE_IDENTITY_PRIVATE, ALICE_IDENTITY_PUBLIC)),
        our_base_key=KeyPair.from_private(ALICE_BASE_PRIVATE),
        their_identity=PublicKey.deserialize(BOB_IDENTITY_PUBLIC),
        their_signed_pre_key=PublicKey.deserialize(BOB_SIGNED_PREKEY_PUBLIC),
        their_one_time_pre_key=None,
        their_ratchet_key=bob_ephemeral,
    )
    found = state.find_receiver_chain(bob_ephemeral)
    assert found is not None
    assert found[1].chain_key.key.hex() == ("ab9be50e5cb22a925446ab90ee5670545f4fd32902459ec274b6ad0ae5d6031a")
    assert state.remote_identity.serialize() == BOB_IDENTITY_PUBLIC
    assert state.session_version == 3


SIGNATURE_KEY = h("ab7e717d4a163b7d9a1d8071dfe9dcf8cdcd1cea3339b6356be84d887e322c64")
SIGNATURE_MESSAGE = h("05edce9d9c415ca78cb7252e72c2c4a554d3eb29485a0e1d503118d1a82d99fb4a")
SIGNATURE = h(
    "5de88ca9a89b4a115da79109c67c9c7464a3e4180274f1cb8c63c2984e286dfb"
    "ede82deb9dcd9fae0bfbb821569b3d9001bd8130cd11d486cef047bd60b86e88"
)


def test_xeddsa_verification_vector() -> None:
    key = PublicKey(SIGNATURE_KEY)
    assert SIGNATURE[63] & 0x80, "the vector exercises libsignal's sign-bit convention"
    assert key.verify(SIGNATURE_MESSAGE, SIGNATURE)


@pytest.mark.parametrize("index", range(64))
def test_xeddsa_vector_bit_flips_refused(index: int) -> None:
    tampered = bytearray(SIGNATURE)
    tampered[index] ^= 0x01
    assert not PublicKey(SIGNATURE_KEY).verify(SIGNATURE_MESSAGE, bytes(tampered))


def test_xeddsa_private_vector_derives_public() -> None:
    private = h("c097248412e58bf05df48796820513279417 8e367637f5818f81e0e6ce73e865".replace(" ", ""))
    assert KeyPair.from_private(private).public.raw == SIGNATURE_KEY


def test_own_signatures_verify_for_many_keys() -> None:
    # Half of all keys have Edwards sign bit 1; both halves must round-trip.
    bits = set()
    for _ in range(32):
        pair = KeyPair.generate()
        signature = pair.sign(b"message")
        bits.add(signature[63] >> 7)
        assert pair.public.verify(b"message", signature)
        assert not pair.public.verify(b"messagf", signature)
    assert bits == {0, 1}
