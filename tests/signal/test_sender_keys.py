"""Sender Keys in the legacy (WhatsApp) layout: golden vectors and behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.signal import (
    DuplicateMessageError,
    InvalidSignatureError,
    NoSenderKeyStateError,
    ProtocolAddress,
    SenderKeyDistributionMessage,
    SenderKeyMessage,
    SenderKeyRecord,
    TooFarInFutureError,
    protobuf,
)
from bridge.signal.curve import KeyPair
from bridge.signal.group_cipher import GroupCipher
from bridge.signal.sender_keys import (
    MAX_SENDER_KEY_STATES,
    SenderChainKey,
    SenderKeyState,
    create_distribution_message,
    group_decrypt,
    group_encrypt,
    process_distribution_message,
)
from bridge.signal.stores import MemorySenderKeyStore

VECTORS = json.loads((Path(__file__).parent / "vectors" / "sender_keys_legacy.json").read_text())


def _golden_sender_record() -> SenderKeyRecord:
    signing = KeyPair.from_private(bytes.fromhex(VECTORS["signing_private"]))
    chain = SenderChainKey(VECTORS["iteration"], bytes.fromhex(VECTORS["chain_key"]))
    return SenderKeyRecord((SenderKeyState(VECTORS["key_id"], chain, signing.public, signing),))


def test_distribution_message_matches_golden_bytes_and_legacy_layout() -> None:
    _, skdm = create_distribution_message(_golden_sender_record())
    assert skdm.serialized.hex() == VECTORS["distribution_message"]
    assert skdm.serialized[0] == 0x33
    fields = protobuf.decode(skdm.serialized[1:])
    assert fields[1] == VECTORS["key_id"]
    assert fields[2] == VECTORS["iteration"]
    assert fields[3] == bytes.fromhex(VECTORS["chain_key"])
    assert fields[4] == bytes.fromhex(VECTORS["signing_public"])


def test_golden_messages_decrypt() -> None:
    skdm = SenderKeyDistributionMessage.deserialize(bytes.fromhex(VECTORS["distribution_message"]))
    record = process_distribution_message(SenderKeyRecord(), skdm)
    for item in VECTORS["messages"]:
        message = SenderKeyMessage.deserialize(bytes.fromhex(item["message"]))
        fields = protobuf.decode(message.serialized[1:-64])
        assert set(fields) == {1, 2, 3}
        record, plaintext = group_decrypt(record, message)
        assert plaintext.hex() == item["plaintext"]


def test_our_encryption_reproduces_golden_bodies() -> None:
    # The XEdDSA nonce is random, so everything but the signature is compared.
    record = _golden_sender_record()
    for item in VECTORS["messages"]:
        record, message = group_encrypt(record, bytes.fromhex(item["plaintext"]))
        assert message.serialized[:-64].hex() == item["message"][:-128]


def test_tampered_signature_and_body_refused() -> None:
    skdm = SenderKeyDistributionMessage.deserialize(bytes.fromhex(VECTORS["distribution_message"]))
    record = process_distribution_message(SenderKeyRecord(), skdm)
    golden = bytes.fromhex(VECTORS["messages"][1]["message"])
    for index in (len(golden) - 1, len(golden) - 40, 5, len(golden) - 70):
        tampered = bytearray(golden)
        tampered[index] ^= 0x04
        with pytest.raises((InvalidSignatureError, NoSenderKeyStateError)):
            group_decrypt(record, SenderKeyMessage.deserialize(bytes(tampered)))
    # The untouched message still decrypts: a refused one changed nothing.
    group_decrypt(record, SenderKeyMessage.deserialize(golden))


def test_signing_key_from_another_sender_refused() -> None:
    skdm = SenderKeyDistributionMessage.deserialize(bytes.fromhex(VECTORS["distribution_message"]))
    record = process_distribution_message(SenderKeyRecord(), skdm)
    impostor = KeyPair.generate()
    forged = SenderKeyMessage.create(
        key_id=VECTORS["key_id"], iteration=9, ciphertext=b"\x00" * 16, signing_key=impostor
    )
    with pytest.raises(InvalidSignatureError):
        group_decrypt(record, forged)


async def test_round_trip_out_of_order_duplicates_and_limits() -> None:
    alice, _bob = ProtocolAddress("alice", 1), ProtocolAddress("bob", 1)
    alice_group = GroupCipher(MemorySenderKeyStore(), "group-1")
    bob_group = GroupCipher(MemorySenderKeyStore(), "group-1")
    skdm = await alice_group.create_distribution_message(alice)
    await bob_group.process_distribution_message(alice, skdm)
    messages = [await alice_group.encrypt(alice, b"m%d" % i) for i in range(6)]
    for i in (3, 0, 5, 1, 2, 4):
        assert await bob_group.decrypt(alice, messages[i].serialized) == b"m%d" % i
    with pytest.raises(DuplicateMessageError):
        await bob_group.decrypt(alice, messages[2].serialized)
    # Re-processing the same distribution message must not rewind the chain.
    await bob_group.process_distribution_message(alice, skdm)
    with pytest.raises(DuplicateMessageError):
        await bob_group.decrypt(alice, messages[4].serialized)

    far = [await alice_group.encrypt(alice, b"f%d" % i) for i in range(2002)]
    with pytest.raises(TooFarInFutureError):
        await bob_group.decrypt(alice, far[2001].serialized)
    assert await bob_group.decrypt(alice, far[2000].serialized) == b"f2000"
    assert await bob_group.decrypt(alice, far[3].serialized) == b"f3"


async def test_no_state_for_unknown_sender() -> None:
    alice = ProtocolAddress("alice", 1)
    sender = GroupCipher(MemorySenderKeyStore(), "g")
    await sender.create_distribution_message(alice)
    message = await sender.encrypt(alice, b"x")
    with pytest.raises(NoSenderKeyStateError):
        await GroupCipher(MemorySenderKeyStore(), "g").decrypt(alice, message.serialized)
    with pytest.raises(NoSenderKeyStateError):
        await GroupCipher(MemorySenderKeyStore(), "g").encrypt(alice, b"x")


def test_at_most_five_states_newest_first() -> None:
    record = SenderKeyRecord()
    ids = []
    for key_id in range(1, 9):
        signing = KeyPair.generate()
        record = process_distribution_message(
            record,
            SenderKeyDistributionMessage.create(
                key_id=key_id, iteration=0, chain_key=bytes(32), signing_key=signing.public
            ),
        )
        ids.append(key_id)
    assert [s.key_id for s in record.states] == ids[::-1][:MAX_SENDER_KEY_STATES]
    assert SenderKeyRecord.deserialize(record.serialize()) == record


def test_record_serialization_keeps_skipped_keys_and_private_key() -> None:
    record, _ = create_distribution_message(SenderKeyRecord())
    for _ in range(3):
        record, _message = group_encrypt(record, b"x")
    receiver = process_distribution_message(
        SenderKeyRecord(),
        SenderKeyDistributionMessage.create(
            key_id=record.states[0].key_id,
            iteration=0,
            chain_key=bytes(32),
            signing_key=record.states[0].signing_public,
        ),
    )
    restored = SenderKeyRecord.deserialize(record.serialize())
    assert restored == record
    assert restored.states[0].signing_private is not None
    assert SenderKeyRecord.deserialize(receiver.serialize()).states[0].signing_private is None
