"""The §9 stanzas: every builder parses back to what it was made from, and bad input is a
400, never a crash."""

from __future__ import annotations

import pytest

from bridge.gip import groups as gp
from bridge.gip.errors import GipError, GipErrorCode
from bridge.gip.jid import Jid
from bridge.gip.outgoing import PreparedMessage
from bridge.gip.stanza import Node, decode, encode
from bridge.gip.stanzas import Enc, EncType, iq

G = Jid.parse("120363000000000001@group")
ALICE, BOB = Jid.parse("1-100@interop"), Jid.parse("4915112345678@native")


def roundtrip(node):
    return decode(encode(node))


def test_group_info_and_results_roundtrip() -> None:
    info = gp.GroupInfo(
        G, "Team", ALICE, 1700000000, "00ff00ff00ff00ff", (gp.Participant(ALICE, True), gp.Participant(BOB))
    )
    assert gp.GroupInfo.parse(roundtrip(info.node())) == info
    result = gp.GroupResult(info, (Jid.parse("4915100000000@native"),))
    holder = roundtrip(iq("1", "result", gp.XMLNS_GROUPS, *result.nodes()))
    assert gp.GroupResult.parse(holder) == result
    assert info.admins == [ALICE] and info.members == [ALICE, BOB]


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        (gp.create("1", "Team", [BOB]), gp.GroupRequest(gp.GroupAction.CREATE, None, "Team", (BOB,))),
        (gp.query("2", G), gp.GroupRequest(None, G)),
        (gp.list_mine("3"), gp.GroupRequest(None)),
        (gp.change("4", gp.GroupAction.REMOVE, G, [BOB]), gp.GroupRequest(gp.GroupAction.REMOVE, G, "", (BOB,))),
        (gp.leave("5", G), gp.GroupRequest(gp.GroupAction.LEAVE, G)),
        (gp.set_subject("6", G, "New"), gp.GroupRequest(gp.GroupAction.SUBJECT, G, "New")),
    ],
)
def test_requests_roundtrip(node, expected) -> None:
    assert gp.parse_request(roundtrip(node)) == expected


def test_notices_and_messages_roundtrip() -> None:
    notice = gp.GroupNotice("N1", G, ALICE, 1700000000, gp.GroupAction.ADD, (BOB,))
    assert gp.GroupNotice.parse(roundtrip(notice.node())) == notice
    subject = gp.GroupNotice("N2", G, ALICE, 1, gp.GroupAction.SUBJECT, subject="Hello")
    assert gp.GroupNotice.parse(roundtrip(subject.node())) == subject
    body = Enc(EncType.SKMSG, b"sealed")
    outgoing = gp.OutgoingGroupMessage("M1", G, "text", 1, "ab", ((BOB, Enc(EncType.PKMSG, b"key")),), body)
    assert gp.OutgoingGroupMessage.parse(roundtrip(outgoing.node())) == outgoing
    incoming = gp.IncomingGroupMessage("M1", G, ALICE, "text", 1, Enc(EncType.MSG, b"key"), body, sender_uvid="@a:b")
    assert gp.IncomingGroupMessage.parse(roundtrip(incoming.node())) == incoming
    prepared = PreparedMessage("M1", G, "text", 1, "ab", ((BOB, Enc(EncType.PKMSG, b"key")),), body)
    assert PreparedMessage.deserialize(prepared.serialize()) == prepared
    assert prepared.stanza() == outgoing


@pytest.mark.parametrize(
    "xml_node",
    [
        Node("iq", {"id": "1", "type": "set", "xmlns": "groups"}),
        Node("iq", {"id": "1", "type": "set", "xmlns": "groups"}, [Node("explode", {"jid": str(G)})]),
        Node("iq", {"id": "1", "type": "set", "xmlns": "groups"}, [Node("add", {"jid": str(G)})]),
        Node("iq", {"id": "1", "type": "set", "xmlns": "groups"}, [Node("leave", {"jid": str(BOB)})]),
        Node("iq", {"id": "1", "type": "set", "xmlns": "groups"}, [Node("subject", {"jid": str(G)}, text="x" * 101)]),
    ],
)
def test_bad_requests_are_400(xml_node) -> None:
    with pytest.raises(GipError) as refused:
        gp.parse_request(xml_node)
    assert refused.value.code is GipErrorCode.BAD_REQUEST


def test_a_group_body_must_be_a_sender_key_message_and_a_pairwise_one_must_not() -> None:
    bad_body = gp.OutgoingGroupMessage("M1", G, "text", 1, "ab", (), Enc(EncType.MSG, b"x")).node()
    with pytest.raises(GipError):
        gp.OutgoingGroupMessage.parse(bad_body)
    empty = gp.OutgoingGroupMessage("M1", G, "text", 1, "ab", (), None).node()
    with pytest.raises(GipError):
        gp.OutgoingGroupMessage.parse(empty)
    assert gp.group_hash([ALICE, BOB]) == gp.group_hash([BOB, ALICE, BOB])
