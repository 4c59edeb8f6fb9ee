"""Session state rules: limits, archiving, PreKey wrapping, serialization, prekey ids."""

from __future__ import annotations

import pytest

from bridge.signal import (
    InvalidPreKeyIdError,
    InvalidSignatureError,
    LegacyVersionError,
    MessageType,
    NoSessionError,
    PreKeySignalMessage,
    ProtocolAddress,
    SessionRecord,
    SignalMessage,
    UnsupportedVersionError,
    UntrustedIdentityError,
    generate_prekeys,
    generate_registration_id,
    next_prekey_id,
)
from bridge.signal.state import (
    ARCHIVED_STATES_MAX_LENGTH,
    MAX_RECEIVER_CHAINS,
    MAX_UNACKNOWLEDGED_SESSION_AGE_MS,
)
from bridge.signal.stores import MemorySignalStore
from devstack.signal_parties import LocalParty, to_bundle


async def _pair(clock=None) -> tuple[LocalParty, LocalParty]:
    alice, bob = LocalParty("alice", 1, clock), LocalParty("bob", 2)
    await alice.process_bundle("bob", await bob.make_bundle(one_time=True))
    return alice, bob


async def test_prekey_wrapper_kept_until_first_reply_decrypts() -> None:
    alice, bob = await _pair()
    for i in range(3):
        message_type, body = await alice.encrypt("bob", b"%d" % i)
        assert message_type == MessageType.PREKEY
        assert await bob.decrypt("alice", message_type, body) == b"%d" % i
    reply = await bob.encrypt("alice", b"reply")
    assert reply[0] == MessageType.WHISPER
    assert (await alice.encrypt("bob", b"unanswered"))[0] == MessageType.PREKEY
    await alice.decrypt("bob", *reply)
    assert (await alice.encrypt("bob", b"after"))[0] == MessageType.WHISPER


async def test_sender_sends_previous_counter_as_libsignal() -> None:
    alice, bob = await _pair()
    for _ in range(3):
        await bob.decrypt("alice", *await alice.encrypt("bob", b"x"))
    await alice.decrypt("bob", *await bob.encrypt("alice", b"y"))
    _, body = await alice.encrypt("bob", b"z")
    # After three messages on its first chain, the last counter used was 2.
    assert SignalMessage.deserialize(body).previous_counter == 2


async def test_encrypt_and_decrypt_do_not_mutate_the_input_record() -> None:
    from bridge.signal import session

    alice, bob = await _pair()
    record = await alice.store.load_session(ProtocolAddress("bob", 1))
    snapshot = record.serialize()
    new_record, message = session.encrypt(record, b"x", now_ms=0)
    assert record.serialize() == snapshot
    assert new_record != record
    bob_record = SessionRecord()
    prekey = PreKeySignalMessage.deserialize(message.serialized)
    with pytest.raises(InvalidPreKeyIdError):
        session.decrypt_prekey_message(
            bob_record,
            prekey,
            our_identity=bob.identity,
            our_registration_id=2,
            signed_pre_key=None,
            one_time_pre_key=None,
        )
    assert bob_record == SessionRecord()


async def test_consumed_one_time_prekey_is_removed_and_replay_needs_session() -> None:
    alice, bob = await _pair()
    first = await alice.encrypt("bob", b"first")
    assert bob.store.count() == 1
    await bob.decrypt("alice", *first)
    assert bob.store.count() == 0
    # The same PreKey message again is matched to its session: a duplicate, not a new one.
    from bridge.signal import DuplicateMessageError

    with pytest.raises(DuplicateMessageError):
        await bob.decrypt("alice", *first)
    # On a device that lost the session, the consumed prekey makes it fail cleanly.
    bob.store._sessions.clear()
    with pytest.raises(InvalidPreKeyIdError):
        await bob.decrypt("alice", *first)


async def test_at_most_five_receiver_chains() -> None:
    alice, bob = await _pair()
    await bob.decrypt("alice", *await alice.encrypt("bob", b"x"))
    for i in range(8):
        await alice.decrypt("bob", *await bob.encrypt("alice", b"b%d" % i))
        await bob.decrypt("alice", *await alice.encrypt("bob", b"a%d" % i))
    record = await bob.store.load_session(ProtocolAddress("alice", 1))
    assert len(record.current.receiver_chains) == MAX_RECEIVER_CHAINS


async def test_archived_session_decrypts_and_stays_archived() -> None:
    alice, bob = await _pair()
    await bob.decrypt("alice", *await alice.encrypt("bob", b"x"))
    await alice.decrypt("bob", *await bob.encrypt("alice", b"y"))
    first = await alice.store.load_session(ProtocolAddress("bob", 1))
    # Alice opens a second session; the first is archived.
    await alice.process_bundle("bob", await bob.make_bundle(one_time=False))
    record = await alice.store.load_session(ProtocolAddress("bob", 1))
    assert record.previous[0].alice_base_key == first.current.alice_base_key
    # Bob still speaks the first session: alice finds it in the archive and decrypts there,
    # but keeps the newer session open (as libsignal-node does).
    second = record.current.alice_base_key
    assert await alice.decrypt("bob", *await bob.encrypt("alice", b"old")) == b"old"
    record = await alice.store.load_session(ProtocolAddress("bob", 1))
    assert record.current.alice_base_key == second
    assert record.previous[0].alice_base_key == first.current.alice_base_key
    assert len(record.previous) == 1
    assert await alice.decrypt("bob", *await bob.encrypt("alice", b"old again")) == b"old again"


async def test_archive_holds_at_most_forty_states() -> None:
    from bridge.signal import SignalError

    alice, bob = await _pair()
    await bob.decrypt("alice", *await alice.encrypt("bob", b"x"))
    await alice.decrypt("bob", *await bob.encrypt("alice", b"y"))
    for _ in range(ARCHIVED_STATES_MAX_LENGTH + 1):
        await alice.process_bundle("bob", await bob.make_bundle(one_time=False))
    record = await alice.store.load_session(ProtocolAddress("bob", 1))
    assert len(record.previous) == ARCHIVED_STATES_MAX_LENGTH
    # The first session fell off the end of the archive.
    with pytest.raises(SignalError):
        await alice.decrypt("bob", *await bob.encrypt("alice", b"too old"))
    assert await alice.store.load_session(ProtocolAddress("bob", 1)) == record


async def test_unanswered_session_expires_after_thirty_days() -> None:
    now = [1_000_000]
    alice, _bob = await _pair(clock=lambda: now[0])
    await alice.encrypt("bob", b"fine")
    now[0] += MAX_UNACKNOWLEDGED_SESSION_AGE_MS + 1
    with pytest.raises(NoSessionError):
        await alice.encrypt("bob", b"too late")
    assert not await alice.cipher("bob").has_session()


async def test_bundle_with_bad_signature_refused() -> None:
    alice, bob = LocalParty("alice", 1), LocalParty("bob", 2)
    bundle = await bob.make_bundle(one_time=True)
    forged = dict(bundle, signed_pre_key=(await bob.make_bundle(one_time=False))["signed_pre_key"])
    with pytest.raises(InvalidSignatureError):
        await alice.process_bundle("bob", forged)
    assert await alice.store.load_session(ProtocolAddress("bob", 1)) is None


async def test_untrusted_identity_when_changes_are_not_accepted() -> None:
    alice, bob = LocalParty("alice", 1), LocalParty("bob", 2)
    alice.store = MemorySignalStore(alice.identity, 1, accept_changes=False)
    await alice.process_bundle("bob", await bob.make_bundle(one_time=True))
    bob.reinstall()
    with pytest.raises(UntrustedIdentityError):
        await alice.cipher("bob").process_bundle(to_bundle(await bob.make_bundle(one_time=True)))


@pytest.mark.parametrize(
    ("first_byte", "error"),
    [(0x22, LegacyVersionError), (0x44, UnsupportedVersionError), (0x11, LegacyVersionError)],
)
async def test_version_bytes(first_byte: int, error: type[Exception]) -> None:
    alice, bob = await _pair()
    await bob.decrypt("alice", *await alice.encrypt("bob", b"x"))
    _, body = await alice.encrypt("bob", b"y")
    with pytest.raises(error):
        SignalMessage.deserialize(bytes((first_byte,)) + body[1:])


async def test_accepts_0x34_as_current_libsignal_writes() -> None:
    alice, bob = await _pair()
    await bob.decrypt("alice", *await alice.encrypt("bob", b"x"))
    await alice.decrypt("bob", *await bob.encrypt("alice", b"y"))
    _, body = await alice.encrypt("bob", b"z")
    assert body[0] == 0x33
    parsed = SignalMessage.deserialize(b"\x34" + body[1:])
    assert parsed.message_version == 3


async def test_record_serialization_round_trip() -> None:
    alice, bob = await _pair()
    await bob.decrypt("alice", *await alice.encrypt("bob", b"x"))
    skipped = [await alice.encrypt("bob", b"s%d" % i) for i in range(5)]
    await bob.decrypt("alice", *skipped[4])
    record = await bob.store.load_session(ProtocolAddress("alice", 1))
    assert len(record.current.receiver_chains[0].skipped) == 4
    assert SessionRecord.deserialize(record.serialize()) == record
    assert record.serialize()[0] == 1


def test_prekey_ids_are_24_bit_and_wrap() -> None:
    assert next_prekey_id(0xFFFFFE) == 1
    keys = generate_prekeys(0xFFFFFD, 4)
    assert [k.id for k in keys] == [0xFFFFFD, 0xFFFFFE, 1, 2]
    assert all(1 <= generate_registration_id() <= 16380 for _ in range(1000))
