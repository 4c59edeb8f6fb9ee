"""Noise XX against the published cacophony vector, and GIP's own rules."""

from __future__ import annotations

import pytest

from bridge.gip.errors import GipError, GipErrorCode
from bridge.gip.noise import TRANSPORT_MAX, StaticKey, XXHandshake

h = bytes.fromhex

# cacophony vectors/cacophony.txt, entry "Noise_XX_25519_AESGCM_SHA256".
VECTOR = {
    "prologue": "4a6f686e2047616c74",
    "init_static": "e61ef9919cde45dd5f82166404bd08e38bceb5dfdfded0a34c8df7ed542214d1",
    "init_ephemeral": "893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a",
    "resp_static": "4a3acbfdb163dec651dfa3194dece676d437029c62a408b4c5ea9114246e4893",
    "resp_ephemeral": "bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b",
    "handshake_hash": "1b7aefb1125762aa21a252890d00af54519638b76437444538f9a52f21e2e0dc",
    "messages": [
        (
            "4c756477696720766f6e204d69736573",
            "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c79444c756477696720766f6e204d69736573",
        ),
        (
            "4d757272617920526f746862617264",
            "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f144808843"
            "757117acceb05bd7a45733bc22015c97a9d0cbaf41b80446d5988ff5127235d7"
            "6b79eade70f473d6a4ef521fdcbeda5340d01e028ba793fc059f2724a83af05f"
            "12dda0448a7621a926b379a92477fd",
        ),
        (
            "462e20412e20486179656b",
            "c90f1cf77eba4e50edb038991565e36c9758943a989229b6051244dc4fbecb69"
            "46744b401af2ee1a5881b65fbb87fd07cb6a328ececc9ce6ce84c399dc332d4f"
            "d521fa4bb7f467ce909395",
        ),
        ("4361726c204d656e676572", "bc3fa77f6aca3e8466d7dc6bea10013e88a6a29add5132b461806c"),
        (
            "4a65616e2d426170746973746520536179",
            "250b01074cdfe0df2ecf8ccbf1737b15a2ddb5b52fd9a396604e9c793cee3b3bb9",
        ),
        (
            "457567656e2042f6686d20766f6e2042617765726b",
            "449d4d433b3cdc3d02bf6fc881774b9df54366ebcffb9689bb13f14709822cd7ef42bcdb4d",
        ),
    ],
}


def _sides() -> tuple[XXHandshake, XXHandshake]:
    prologue = h(VECTOR["prologue"])
    initiator = XXHandshake(
        initiator=True,
        static=StaticKey.from_private(h(VECTOR["init_static"])),
        ephemeral=StaticKey.from_private(h(VECTOR["init_ephemeral"])),
        prologue=prologue,
    )
    responder = XXHandshake(
        initiator=False,
        static=StaticKey.from_private(h(VECTOR["resp_static"])),
        ephemeral=StaticKey.from_private(h(VECTOR["resp_ephemeral"])),
        prologue=prologue,
    )
    return initiator, responder


def test_cacophony_vector() -> None:
    initiator, responder = _sides()
    messages = VECTOR["messages"]
    sender, receiver = initiator, responder
    for payload, ciphertext in messages[:3]:
        written = sender.write(h(payload))
        assert written.hex() == ciphertext
        assert receiver.read(written) == h(payload)
        sender, receiver = receiver, sender
    assert initiator.result is not None
    assert responder.result is not None
    assert initiator.result.handshake_hash.hex() == VECTOR["handshake_hash"]
    assert responder.result.handshake_hash.hex() == VECTOR["handshake_hash"]
    assert initiator.result.remote_static == StaticKey.from_private(h(VECTOR["resp_static"])).public
    # Transport messages alternate, starting with the responder.
    transports = [responder.result, initiator.result]
    for index, (payload, ciphertext) in enumerate(messages[3:]):
        sending, receiving = transports[index % 2], transports[(index + 1) % 2]
        written = sending.encrypt(h(payload))
        assert written.hex() == ciphertext
        assert receiving.decrypt(written) == h(payload)


def test_tampered_handshake_and_transport_refused() -> None:
    initiator, responder = _sides()
    responder.read(initiator.write())
    second = bytearray(responder.write(b"x"))
    second[40] ^= 1
    with pytest.raises(GipError) as excinfo:
        initiator.read(bytes(second))
    assert excinfo.value.code is GipErrorCode.DECRYPT


def test_truncated_handshake_message_refused() -> None:
    initiator, responder = _sides()
    with pytest.raises(GipError) as excinfo:
        responder.read(initiator.write()[:20])
    assert excinfo.value.code is GipErrorCode.HANDSHAKE


def _established() -> tuple:
    initiator = XXHandshake(initiator=True, static=StaticKey.generate())
    responder = XXHandshake(initiator=False, static=StaticKey.generate())
    responder.read(initiator.write())
    initiator.read(responder.write())
    responder.read(initiator.write(b"payload"))
    return initiator.result, responder.result


def test_transport_carries_a_one_mebibyte_stanza_and_no_more() -> None:
    client, server = _established()
    big = b"a" * (1 << 20)
    assert server.decrypt(client.encrypt(big)) == big
    with pytest.raises(GipError) as excinfo:
        client.encrypt(big + b"a")
    assert excinfo.value.code is GipErrorCode.TOO_LARGE
    with pytest.raises(GipError):
        server.decrypt(b"\x00" * (TRANSPORT_MAX + 1))


def test_replayed_transport_message_refused() -> None:
    client, server = _established()
    message = client.encrypt(b"once")
    assert server.decrypt(message) == b"once"
    with pytest.raises(GipError):
        server.decrypt(message)


def test_out_of_turn_calls_refused() -> None:
    initiator = XXHandshake(initiator=True, static=StaticKey.generate())
    with pytest.raises(GipError):
        initiator.read(b"\x00" * 32)
