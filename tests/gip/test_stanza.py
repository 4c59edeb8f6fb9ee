"""The stanza codec (§3 parsing rules) and the §4 builders/parsers round-tripping."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st_

from bridge.gip import stanzas as st
from bridge.gip.errors import GipError, GipErrorCode
from bridge.gip.jid import Jid
from bridge.gip.stanza import MAX_STANZA_BYTES, Node, decode, encode


def test_round_trip_keeps_xmlns_and_prefixed_names() -> None:
    node = st.iq("id1", "get", "w:p", Node("ping"))
    assert decode(encode(node)) == node
    error = decode(b'<stream:error code="400"/>')
    assert error.tag == "stream:error"
    assert error.attrs == {"code": "400"}


def test_escaping_round_trips() -> None:
    node = Node("x", {"a": '<&>"\n\t'}, text="<b>&amp;</b>")
    assert decode(encode(node)) == node


@pytest.mark.parametrize(
    "data",
    [
        b'<!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>',
        b"<?pi data?><x/>",
        b"<x>&undefined;</x>",
        b"<x>\xff</x>",
        b"<x>" * 17 + b"</x>" * 17,
        b'<x a="' + b"v" * 4097 + b'"/>',
        b"<x>",
        b"",
        b"<x/><y/>",
    ],
)
def test_forbidden_or_malformed_input_is_400(data: bytes) -> None:
    with pytest.raises(GipError) as excinfo:
        decode(data)
    assert excinfo.value.code is GipErrorCode.BAD_REQUEST


def test_size_limits() -> None:
    with pytest.raises(GipError) as excinfo:
        decode(b"<x>" + b"a" * MAX_STANZA_BYTES + b"</x>")
    assert excinfo.value.code is GipErrorCode.TOO_LARGE
    with pytest.raises(GipError):
        encode(Node("x", text="a" * MAX_STANZA_BYTES))
    deep = Node("a")
    for _ in range(16):
        deep = Node("a", children=[deep])
    with pytest.raises(GipError):
        encode(deep)
    with pytest.raises(GipError):
        encode(Node("x", text="bell \x07"))


@settings(max_examples=300, deadline=None)
@given(st_.binary(max_size=400))
def test_arbitrary_bytes_only_raise_gip_error(data: bytes) -> None:
    with contextlib.suppress(GipError):
        decode(data)


def test_jids() -> None:
    assert str(Jid.parse("1-123@interop")) == "1-123@interop"
    device = Jid.parse("456:3@native")
    assert device.device == 3
    assert str(device.bare) == "456@native"
    assert Jid.parse("456:0@native") == Jid.parse("456@native")
    for bad in ("", "a@", "@b", "a:b@c", "a@B", "x" * 70 + "@native"):
        with pytest.raises(GipError):
            Jid.parse(bad)


def test_bundle_and_receipt_round_trips() -> None:
    bundle = st.Bundle(
        Jid.parse("9@native"),
        1234,
        b"i" * 32,
        st.SignedPreKey(7, b"s" * 32, b"g" * 64),
        st.PreKey(5, b"p" * 32),
    )
    parsed = st.parse_bundle_list(
        decode(encode(st.bundle_list([bundle, st.BundleError(Jid.parse("8@native"), GipErrorCode.NOT_FOUND)])))
    )
    assert parsed[0] == bundle
    assert parsed[1] == st.BundleError(Jid.parse("8@native"), GipErrorCode.NOT_FOUND)
    retry = st.Receipt(
        "m1",
        Jid.parse("9@native"),
        st.ReceiptType.RETRY,
        retry_count=2,
        retry_t=5,
        registration_id=99,
        keys=bundle,
    )
    assert st.Receipt.parse(decode(encode(retry.node(direction="to"))), direction="to") == retry
    read = st.Receipt("m1", Jid.parse("9@native"), st.ReceiptType.READ, ("m1", "m2"))
    assert st.Receipt.parse(decode(encode(read.node(direction="from"))), direction="from") == read
    too_many = st.Receipt("m1", Jid.parse("9@native"), st.ReceiptType.RETRY, retry_count=6)
    with pytest.raises(GipError):
        st.Receipt.parse(decode(encode(too_many.node(direction="to"))), direction="to")


def test_message_round_trips_and_validation() -> None:
    enc = st.Enc(st.EncType.PKMSG, b"\x33ciphertext")
    message = st.OutgoingMessage(
        "abc",
        Jid.parse("9@native"),
        "text",
        100,
        st.device_list_hash([0, 1]),
        ((Jid.parse("9@native"), enc), (Jid.parse("9:1@native"), enc)),
    )
    assert st.OutgoingMessage.parse(decode(encode(message.node()))) == message
    bad = message.node()
    bad.attrs["type"] = "sticker"
    with pytest.raises(GipError):
        st.OutgoingMessage.parse(bad)
    with pytest.raises(GipError):
        st.check_id("x" * 65)
    assert st.device_list_hash([1, 0]) == st.device_list_hash([0, 1, 1])
    assert st.device_list_hash([0]) != st.device_list_hash([0, 1])


def test_iq_errors_raise() -> None:
    with pytest.raises(GipError) as excinfo:
        st.raise_for_iq_error(decode(encode(st.iq_error("1", GipErrorCode.RATE_LIMITED, "slow", 7))))
    assert excinfo.value.code is GipErrorCode.RATE_LIMITED
    assert excinfo.value.retry_after == 7
    with pytest.raises(GipError):
        st.b64d("not base64!")
