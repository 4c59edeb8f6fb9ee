"""Interop with official libsignal 0.72.1 and libsignal-node 6.0.0, in both roles."""

from __future__ import annotations

import itertools
import os

import pytest

from bridge.signal import (
    DuplicateMessageError,
    Fingerprint,
    IdentityChange,
    MessageType,
    ProtocolAddress,
    PublicKey,
    SenderKeyDistributionMessage,
    SenderKeySchema,
    SessionRecord,
    TooFarInFutureError,
)
from bridge.signal.group_cipher import GroupCipher
from bridge.signal.stores import MemorySenderKeyStore
from devstack.signal_client import (
    IMPLEMENTATIONS,
    NodeSignalPeer,
    PeerError,
    RemoteParty,
    b64,
    unb64,
)
from devstack.signal_parties import LocalParty, to_bundle

pytestmark = pytest.mark.peers
_names = itertools.count()


def fresh_pair(peer: NodeSignalPeer, impl: str) -> tuple[LocalParty, RemoteParty]:
    n = next(_names)
    return LocalParty(f"py{n}", 1000 + n), RemoteParty(peer, f"js{n}", impl, 2000 + n)


async def establish(py: LocalParty, js: RemoteParty, *, python_initiates: bool, one_time: bool) -> None:
    """Open a session and exchange one message each way, so both sides have sent."""
    if python_initiates:
        await py.process_bundle(js.name, js.make_bundle(one_time=one_time))
        t, body = await py.encrypt(js.name, b"hi")
        assert js.decrypt(py.name, t, body) == b"hi"
        t, body = js.encrypt(py.name, b"hello")
        assert await py.decrypt(js.name, t, body) == b"hello"
    else:
        js.process_bundle(py.name, await py.make_bundle(one_time=one_time))
        t, body = js.encrypt(py.name, b"hi")
        assert await py.decrypt(js.name, t, body) == b"hi"
        t, body = await py.encrypt(js.name, b"hello")
        assert js.decrypt(py.name, t, body) == b"hello"


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("python_initiates", [True, False], ids=["py-alice", "py-bob"])
@pytest.mark.parametrize("one_time", [True, False], ids=["opk", "no-opk"])
async def test_prekey_messages_and_ratchet_round_trips(
    signal_peer: NodeSignalPeer, impl: str, python_initiates: bool, one_time: bool
) -> None:
    py, js = fresh_pair(signal_peer, impl)
    if python_initiates:
        await py.process_bundle(js.name, js.make_bundle(one_time=one_time))
        first = [await py.encrypt(js.name, f"pre {i}".encode()) for i in range(2)]
        assert all(t == MessageType.PREKEY for t, _ in first)
        for i, (t, body) in enumerate(first):
            assert js.decrypt(py.name, t, body) == f"pre {i}".encode()
    else:
        js.process_bundle(py.name, await py.make_bundle(one_time=one_time))
        first = [js.encrypt(py.name, f"pre {i}".encode()) for i in range(2)]
        assert all(t == MessageType.PREKEY for t, _ in first)
        for i, (t, body) in enumerate(first):
            assert await py.decrypt(js.name, t, body) == f"pre {i}".encode()
        if one_time:
            assert py.store.count() == 0, "the one-time prekey is consumed"
    for round_trip in range(4):
        for i in range(3):
            t, body = js.encrypt(py.name, f"js {round_trip}.{i}".encode())
            assert t == MessageType.WHISPER or round_trip == 0
            assert await py.decrypt(js.name, t, body) == f"js {round_trip}.{i}".encode()
        for i in range(3):
            t, body = await py.encrypt(js.name, f"py {round_trip}.{i}".encode())
            assert t == MessageType.WHISPER
            assert js.decrypt(py.name, t, body) == f"py {round_trip}.{i}".encode()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
async def test_out_of_order_from_peer_including_late_last_message_of_a_chain(
    signal_peer: NodeSignalPeer, impl: str
) -> None:
    py, js = fresh_pair(signal_peer, impl)
    await establish(py, js, python_initiates=True, one_time=True)
    chain_one = [js.encrypt(py.name, f"a{i}".encode()) for i in range(4)]
    # Reordered within the chain; the last message is held back.
    for i in (2, 0):
        assert await py.decrypt(js.name, *chain_one[i]) == f"a{i}".encode()
    t, body = await py.encrypt(js.name, b"reply")
    assert js.decrypt(py.name, t, body) == b"reply"
    chain_two = [js.encrypt(py.name, f"b{i}".encode()) for i in range(2)]
    assert await py.decrypt(js.name, *chain_two[1]) == b"b1"
    # The last message of the previous chain arrives after the next chain started.
    assert await py.decrypt(js.name, *chain_one[3]) == b"a3"
    assert await py.decrypt(js.name, *chain_one[1]) == b"a1"
    assert await py.decrypt(js.name, *chain_two[0]) == b"b0"


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
async def test_out_of_order_to_peer_including_late_last_message_of_a_chain(
    signal_peer: NodeSignalPeer, impl: str
) -> None:
    py, js = fresh_pair(signal_peer, impl)
    await establish(py, js, python_initiates=False, one_time=True)
    chain_one = [await py.encrypt(js.name, f"a{i}".encode()) for i in range(3)]
    assert js.decrypt(py.name, *chain_one[0]) == b"a0"
    t, body = js.encrypt(py.name, b"reply")
    assert await py.decrypt(js.name, t, body) == b"reply"
    chain_two = [await py.encrypt(js.name, f"b{i}".encode()) for i in range(2)]
    assert js.decrypt(py.name, *chain_two[0]) == b"b0"
    # Our last message of chain one arrives late; the peer must not depend on a
    # previous_counter other than libsignal's.
    assert js.decrypt(py.name, *chain_one[2]) == b"a2"
    assert js.decrypt(py.name, *chain_one[1]) == b"a1"
    assert js.decrypt(py.name, *chain_two[1]) == b"b1"


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
async def test_duplicates_rejected_both_ways(signal_peer: NodeSignalPeer, impl: str) -> None:
    py, js = fresh_pair(signal_peer, impl)
    await establish(py, js, python_initiates=True, one_time=True)
    incoming = js.encrypt(py.name, b"once")
    assert await py.decrypt(js.name, *incoming) == b"once"
    before = await py.store.load_session(ProtocolAddress(js.name, 1))
    with pytest.raises(DuplicateMessageError):
        await py.decrypt(js.name, *incoming)
    after = await py.store.load_session(ProtocolAddress(js.name, 1))
    assert before == after, "a refused duplicate leaves the session untouched"
    outgoing = await py.encrypt(js.name, b"once")
    assert js.decrypt(py.name, *outgoing) == b"once"
    with pytest.raises(PeerError):
        js.decrypt(py.name, *outgoing)
    # Both sessions still work.
    t, body = await py.encrypt(js.name, b"still fine")
    assert js.decrypt(py.name, t, body) == b"still fine"


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
async def test_gap_of_2000_accepted_and_larger_refused_cleanly(signal_peer: NodeSignalPeer, impl: str) -> None:
    py, js = fresh_pair(signal_peer, impl)
    await establish(py, js, python_initiates=True, one_time=True)
    address = ProtocolAddress(js.name, 1)
    messages = [js.encrypt(py.name, b"m%d" % i) for i in range(2002)]
    # Counter 2000 after nothing in this chain: a jump of exactly 2,000.
    assert await py.decrypt(js.name, *messages[2000]) == b"m2000"
    record = await py.store.load_session(address)
    assert record is not None
    assert record.current is not None
    chain = record.current.receiver_chains[-1]
    assert len(chain.skipped) == 2000
    assert await py.decrypt(js.name, *messages[0]) == b"m0"
    assert await py.decrypt(js.name, *messages[1999]) == b"m1999"
    assert await py.decrypt(js.name, *messages[2001]) == b"m2001"

    # A new chain from the peer, and a jump of 2,001 within it.
    t, body = await py.encrypt(js.name, b"turn")
    assert js.decrypt(py.name, t, body) == b"turn"
    far = [js.encrypt(py.name, b"f%d" % i) for i in range(2002)]
    before = await py.store.load_session(address)
    with pytest.raises(TooFarInFutureError):
        await py.decrypt(js.name, *far[2001])
    assert await py.store.load_session(address) == before
    assert await py.decrypt(js.name, *far[5]) == b"f5"
    assert await py.decrypt(js.name, *far[2001]) == b"f2001"


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
async def test_peer_reinstall_archives_old_session_when_we_initiate(signal_peer: NodeSignalPeer, impl: str) -> None:
    py, js = fresh_pair(signal_peer, impl)
    await establish(py, js, python_initiates=True, one_time=True)
    address = ProtocolAddress(js.name, 1)
    old_identity = js.identity_key
    js.reinstall()
    assert js.identity_key != old_identity
    change = await py.cipher(js.name).process_bundle(to_bundle(js.make_bundle(one_time=True)))
    assert change == IdentityChange.REPLACED_EXISTING
    record = await py.store.load_session(address)
    assert record is not None
    assert record.current is not None
    assert len(record.previous) == 1
    assert record.previous[0].remote_identity.serialize() == old_identity
    assert record.current.remote_identity.serialize() == js.identity_key
    t, body = await py.encrypt(js.name, b"after reinstall")
    assert t == MessageType.PREKEY
    assert js.decrypt(py.name, t, body) == b"after reinstall"
    t, body = js.encrypt(py.name, b"welcome back")
    assert await py.decrypt(js.name, t, body) == b"welcome back"


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
async def test_peer_reinstall_archives_old_session_when_peer_initiates(signal_peer: NodeSignalPeer, impl: str) -> None:
    py, js = fresh_pair(signal_peer, impl)
    await establish(py, js, python_initiates=False, one_time=True)
    address = ProtocolAddress(js.name, 1)
    js.reinstall()
    js.process_bundle(py.name, await py.make_bundle(one_time=True))
    t, body = js.encrypt(py.name, b"new phone")
    result = await py.cipher(js.name).decrypt(MessageType(t), body)
    assert result.plaintext == b"new phone"
    assert result.identity_change == IdentityChange.REPLACED_EXISTING
    record = await py.store.load_session(address)
    assert record is not None
    assert record.current is not None
    assert len(record.previous) == 1
    assert record.current.remote_identity.serialize() == js.identity_key
    t, body = await py.encrypt(js.name, b"ok")
    assert js.decrypt(py.name, t, body) == b"ok"


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
async def test_a_late_message_from_the_old_install_leaves_the_new_session_open(
    signal_peer: NodeSignalPeer, impl: str
) -> None:
    """Defect: decrypting on an archived session promoted it and flipped the identity
    back, so our next message went to a session the reinstalled peer no longer has."""
    py, js = fresh_pair(signal_peer, impl)
    await establish(py, js, python_initiates=False, one_time=True)
    late = js.encrypt(py.name, b"sent before the reinstall, delivered after")
    js.reinstall()
    js.process_bundle(py.name, await py.make_bundle(one_time=True))
    t, body = js.encrypt(py.name, b"new phone")
    assert await py.decrypt(js.name, t, body) == b"new phone"
    assert await py.decrypt(js.name, *late) == b"sent before the reinstall, delivered after"
    identity = await py.store.get_identity(ProtocolAddress(js.name, 1))
    assert identity is not None and identity.serialize() == js.identity_key, "the newest identity stays trusted"
    for i in range(3):
        t, body = await py.encrypt(js.name, b"ours %d" % i)
        assert js.decrypt(py.name, t, body) == b"ours %d" % i
        t, body = js.encrypt(py.name, b"theirs %d" % i)
        assert await py.decrypt(js.name, t, body) == b"theirs %d" % i


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
async def test_simultaneous_initiation_goes_on_both_ways(signal_peer: NodeSignalPeer, impl: str) -> None:
    py, js = fresh_pair(signal_peer, impl)
    await py.process_bundle(js.name, js.make_bundle(one_time=True))
    js.process_bundle(py.name, await py.make_bundle(one_time=True))
    ours = await py.encrypt(js.name, b"hello from py")
    theirs = js.encrypt(py.name, b"hello from js")
    assert js.decrypt(py.name, *ours) == b"hello from py"
    assert await py.decrypt(js.name, *theirs) == b"hello from js"
    for i in range(4):
        t, body = await py.encrypt(js.name, b"py %d" % i)
        assert js.decrypt(py.name, t, body) == b"py %d" % i
        t, body = js.encrypt(py.name, b"js %d" % i)
        assert await py.decrypt(js.name, t, body) == b"js %d" % i


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
async def test_xeddsa_signatures_accepted_both_ways(signal_peer: NodeSignalPeer, impl: str) -> None:
    py, js = fresh_pair(signal_peer, impl)
    for i in range(24):
        message = os.urandom(33 + i)
        ours = py.identity.sign(message)
        assert signal_peer.call(
            "verify", impl=impl, key=b64(py.identity_key), message=b64(message), signature=b64(ours)
        )["valid"]
        theirs = js.sign(message)
        assert PublicKey.deserialize(js.identity_key).verify(message, theirs)
        assert not PublicKey.deserialize(js.identity_key).verify(message + b"x", theirs)
    # Fresh identities, so both Edwards sign bits are exercised on both sides.
    for _ in range(16):
        other = LocalParty("signer", 1)
        message = os.urandom(33)
        assert signal_peer.call(
            "verify",
            impl=impl,
            key=b64(other.identity_key),
            message=b64(message),
            signature=b64(other.identity.sign(message)),
        )["valid"]


async def test_safety_numbers_equal_to_libsignal(signal_peer: NodeSignalPeer) -> None:
    py, js = fresh_pair(signal_peer, "libsignal-client")
    local_id, remote_id = b"+4915112345678", b"+33612345678"
    ours = Fingerprint.create(
        local_id=local_id,
        local_key=py.identity.public,
        remote_id=remote_id,
        remote_key=PublicKey.deserialize(js.identity_key),
    )
    theirs = signal_peer.call(
        "fingerprint",
        iterations=5200,
        version=1,
        local_id=b64(local_id),
        local_key=b64(py.identity_key),
        remote_id=b64(remote_id),
        remote_key=b64(js.identity_key),
    )
    assert len(ours.display) == 60
    assert ours.display == theirs["display"]
    assert ours.scannable() == unb64(theirs["scannable"])
    # The peer's view (its local is our remote) matches our scannable code and vice versa.
    peer_view = signal_peer.call(
        "fingerprint",
        iterations=5200,
        version=1,
        local_id=b64(remote_id),
        local_key=b64(js.identity_key),
        remote_id=b64(local_id),
        remote_key=b64(py.identity_key),
    )
    assert peer_view["display"] == ours.display
    assert ours.matches_scanned(unb64(peer_view["scannable"]))
    assert signal_peer.call(
        "fingerprint_compare",
        iterations=5200,
        version=1,
        local_id=b64(remote_id),
        local_key=b64(js.identity_key),
        remote_id=b64(local_id),
        remote_key=b64(py.identity_key),
        scanned=b64(ours.scannable()),
    )["matches"]
    stranger = LocalParty("mallory", 9)
    forged = Fingerprint.create(
        local_id=remote_id,
        local_key=stranger.identity.public,
        remote_id=local_id,
        remote_key=py.identity.public,
    )
    assert not ours.matches_scanned(forged.scannable())


async def test_sender_key_crypto_matches_libsignal(signal_peer: NodeSignalPeer) -> None:
    """Our Sender Keys against official libsignal, in its (distribution id) field layout.

    The bridge speaks the legacy layout, which no installable peer speaks; the crypto
    (chain, message keys, AES-CBC, XEdDSA over the serialized message) is the same.
    """
    distribution = "d1b2c3d4-0000-4000-8000-00000000abcd"
    uuid_bytes = bytes.fromhex(distribution.replace("-", ""))
    py, js = fresh_pair(signal_peer, "libsignal-client")
    js_address = {"name": js.name, "device_id": 1}
    py_address = {"name": py.name, "device_id": 1}
    schema = SenderKeySchema.DISTRIBUTION_ID
    store = MemorySenderKeyStore()
    group = GroupCipher(store, distribution, schema=schema, distribution_uuid=uuid_bytes)

    skdm = unb64(signal_peer.call("sk_create", party=js.name, own=js_address, distribution_id=distribution)["skdm"])
    await group.process_distribution_message(
        ProtocolAddress(js.name, 1), SenderKeyDistributionMessage.deserialize(skdm, schema)
    )
    bodies = [
        unb64(
            signal_peer.call(
                "sk_encrypt",
                party=js.name,
                own=js_address,
                distribution_id=distribution,
                plaintext=b64(b"group %d" % i),
            )["body"]
        )
        for i in range(4)
    ]
    for i in (1, 0, 3, 2):
        assert await group.decrypt(ProtocolAddress(js.name, 1), bodies[i]) == b"group %d" % i
    with pytest.raises(DuplicateMessageError):
        await group.decrypt(ProtocolAddress(js.name, 1), bodies[0])

    ours = await group.create_distribution_message(ProtocolAddress(py.name, 1))
    signal_peer.call("sk_process", party=js.name, sender=py_address, skdm=b64(ours.serialized))
    for i in range(3):
        message = await group.encrypt(ProtocolAddress(py.name, 1), b"from py %d" % i)
        answer = signal_peer.call("sk_decrypt", party=js.name, sender=py_address, body=b64(message.serialized))
        assert unb64(answer["plaintext"]) == b"from py %d" % i
    tampered = bytearray(message.serialized)
    tampered[-1] ^= 1
    with pytest.raises(PeerError):
        signal_peer.call("sk_decrypt", party=js.name, sender=py_address, body=b64(bytes(tampered)))


def test_session_record_round_trips_after_interop_shapes() -> None:
    assert SessionRecord.deserialize(SessionRecord().serialize()) == SessionRecord()
