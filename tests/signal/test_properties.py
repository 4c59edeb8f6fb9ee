"""Property tests: random delivery schedules and arbitrary bytes.

Two Python parties exchange messages under schedules of sends, drops, reorders and
duplicates. Every delivery must decrypt to what was sent or fail with a SignalError; a
first delivery may fail only when its chain was legitimately evicted (more than five
newer receiving chains); and afterwards the session still works both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.signal import (
    IdentityKeyPair,
    InvalidRecordError,
    MessageType,
    PreKeySignalMessage,
    ProtocolAddress,
    PublicKey,
    SenderKeyDistributionMessage,
    SenderKeyMessage,
    SenderKeyRecord,
    SenderKeySchema,
    SessionRecord,
    SignalError,
    SignalMessage,
)
from bridge.signal.fingerprint import Fingerprint
from bridge.signal.prekeys import PreKeyRecord, SignedPreKeyRecord
from devstack.signal_parties import LocalParty, to_bundle


@dataclass
class InFlight:
    sender: str
    message_type: int
    body: bytes
    plaintext: bytes
    ratchet_key: bytes
    delivered: bool = False


def _ratchet_key(message_type: int, body: bytes) -> bytes:
    if message_type == MessageType.PREKEY:
        return PreKeySignalMessage.deserialize(body).message.sender_ratchet_key.raw
    return SignalMessage.deserialize(body).sender_ratchet_key.raw


async def _run_schedule(ops: list[tuple[str, int]]) -> None:
    alice, bob = LocalParty("alice", 1), LocalParty("bob", 2)
    parties = {"alice": alice, "bob": bob}
    peer_of = {"alice": "bob", "bob": "alice"}
    await alice.process_bundle("bob", await bob.make_bundle(one_time=True))
    bob_can_send = False
    in_flight: list[InFlight] = []
    # Ratchet keys each receiver has seen, in order, to tell eviction from a bug.
    seen: dict[str, list[bytes]] = {"alice": [], "bob": []}
    counter = 0
    for op, arg in ops:
        if op == "send":
            sender = "alice" if arg % 2 == 0 or not bob_can_send else "bob"
            counter += 1
            plaintext = f"{sender} {counter}".encode()
            message_type, body = await parties[sender].encrypt(peer_of[sender], plaintext)
            in_flight.append(InFlight(sender, message_type, body, plaintext, _ratchet_key(message_type, body)))
        elif op in ("deliver", "duplicate") and in_flight:
            item = in_flight[arg % len(in_flight)]
            if op == "deliver" and item.delivered:
                continue
            receiver = peer_of[item.sender]
            record = await parties[receiver].store.load_session(ProtocolAddress(item.sender, 1))
            live_chains = (
                {c.ratchet_key.raw for c in record.current.receiver_chains}
                if record is not None and record.current is not None
                else set()
            )
            evicted = item.ratchet_key in seen[receiver] and item.ratchet_key not in live_chains
            try:
                plaintext = await parties[receiver].decrypt(item.sender, item.message_type, item.body)
            except SignalError:
                assert item.delivered or evicted, "a first delivery failed without eviction"
            else:
                assert plaintext == item.plaintext
                assert not item.delivered, "a duplicate decrypted twice"
                if receiver == "bob":
                    bob_can_send = True
                if item.ratchet_key not in seen[receiver]:
                    seen[receiver].append(item.ratchet_key)
            item.delivered = True
        elif op == "drop" and in_flight:
            in_flight.pop(arg % len(in_flight))
    # The sessions are not corrupted: a fresh exchange works both ways.
    if not bob_can_send:
        message_type, body = await alice.encrypt("bob", b"final")
        assert await bob.decrypt("alice", message_type, body) == b"final"
    message_type, body = await bob.encrypt("alice", b"final reply")
    assert await alice.decrypt("bob", message_type, body) == b"final reply"
    message_type, body = await alice.encrypt("bob", b"final ack")
    assert await bob.decrypt("alice", message_type, body) == b"final ack"


operations = st.lists(
    st.tuples(
        st.sampled_from(["send", "send", "deliver", "deliver", "duplicate", "drop"]),
        st.integers(min_value=0, max_value=1000),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_random_schedules_decrypt_or_fail_typed_and_never_corrupt(
    ops: list[tuple[str, int]],
) -> None:
    asyncio.run(_run_schedule(ops))


def _parsers() -> list:
    key = PublicKey(bytes(range(32)))
    fingerprint = Fingerprint.create(local_id=b"a", local_key=key, remote_id=b"b", remote_key=key, iterations=1)
    return [
        SignalMessage.deserialize,
        PreKeySignalMessage.deserialize,
        SenderKeyMessage.deserialize,
        lambda d: SenderKeyMessage.deserialize(d, SenderKeySchema.DISTRIBUTION_ID),
        SenderKeyDistributionMessage.deserialize,
        lambda d: SenderKeyDistributionMessage.deserialize(d, SenderKeySchema.DISTRIBUTION_ID),
        SessionRecord.deserialize,
        SenderKeyRecord.deserialize,
        PublicKey.deserialize,
        PreKeyRecord.deserialize,
        SignedPreKeyRecord.deserialize,
        IdentityKeyPair.deserialize,
        fingerprint.matches_scanned,
    ]


PARSERS = _parsers()


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_the_typed_error(data: bytes) -> None:
    for parse in PARSERS:
        with contextlib.suppress(SignalError):
            parse(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=40), st.integers(min_value=0, max_value=10_000))
def test_mutated_messages_only_raise_the_typed_error(noise: bytes, position: int) -> None:
    asyncio.run(_mutated(noise, position))


async def _samples() -> tuple[LocalParty, LocalParty, list[tuple[int, bytes]]]:
    alice, bob = LocalParty("alice", 1), LocalParty("bob", 2)
    await alice.process_bundle("bob", await bob.make_bundle(one_time=True))
    prekey = await alice.encrypt("bob", b"first")
    await bob.decrypt("alice", *prekey)
    whisper = await bob.encrypt("alice", b"second")
    return alice, bob, [prekey, whisper]


async def _mutated(noise: bytes, position: int) -> None:
    alice, bob, samples = await _samples()
    for (message_type, body), receiver, sender in zip(samples, (bob, alice), ("alice", "bob"), strict=True):
        cut = position % (len(body) + 1)
        for mutated in (
            body[:cut] + noise + body[cut + len(noise) :],
            body[:cut],
            body[:cut] + noise + body[cut:],
        ):
            if mutated == body:
                continue
            before = await receiver.store.load_session(ProtocolAddress(sender, 1))
            try:
                await receiver.decrypt(sender, message_type, mutated)
            except SignalError:
                after = await receiver.store.load_session(ProtocolAddress(sender, 1))
                assert after == before, "a refused message leaves the session untouched"


def test_truncated_record_is_typed_error() -> None:
    record = SessionRecord()
    data = record.serialize()
    try:
        SessionRecord.deserialize(data[:0])
    except InvalidRecordError:
        pass
    else:
        raise AssertionError("empty record bytes must be refused")


async def test_bundle_round_trip_helper_builds_valid_bundle() -> None:
    bob = LocalParty("bob", 2)
    bundle = to_bundle(await bob.make_bundle(one_time=False))
    assert bundle.pre_key is None
    assert bundle.identity_key.verify(bundle.signed_pre_key.serialize(), bundle.signed_pre_key_signature)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(max_size=70), st.binary(max_size=40))
def test_verify_with_arbitrary_key_and_signature_returns_false(key: bytes, signature: bytes, message: bytes) -> None:
    # Points off the curve and malformed signatures are a plain "no", never an exception.
    assert PublicKey(key).verify(message, signature) in (True, False)
    assert not PublicKey(key).verify(message, signature[:63])
