"""Hostile input on the chat channel: each gets its error, the connection is closed, the
sandbox keeps serving everyone else and loses no stored message."""

from __future__ import annotations

import aiohttp
import pytest

from bridge.gip.client import MessageEvent
from bridge.gip.content import Content
from bridge.gip.errors import GipError, GipErrorCode
from bridge.gip.jid import Jid
from bridge.gip.noise import StaticKey
from bridge.gip.transport import CHAT_PATH, WS_MAX_MESSAGE, client_handshake
from devstack.sandbox import Partner, PartnerServer, Sandbox, new_partner

BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
    b'<iq id="1" type="get" xmlns="w:p">&lol3;</iq>'
)
HOSTILE = {
    "billion_laughs": BILLION_LAUGHS,
    "dtd": b'<!DOCTYPE iq SYSTEM "http://127.0.0.1:9/evil.dtd">' + b'<iq id="1" type="get" xmlns="w:p"><ping/></iq>',
    "external_entity": (
        b'<!DOCTYPE iq [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>' + b'<iq id="1" type="get" xmlns="w:p">&xxe;</iq>'
    ),
    "processing_instruction": b'<?evil x?><iq id="1" type="get" xmlns="w:p"><ping/></iq>',
    "two_mib_stanza": b'<iq id="1" type="get" xmlns="w:p"><ping>' + b"a" * (2 << 20) + b"</ping></iq>",
    "deep_nesting": b"<a>" * 10_000 + b"</a>" * 10_000,
    "invalid_utf8": b'<iq id="1" type="get" xmlns="w:p"><ping>\xff\xfe</ping></iq>',
    "not_xml": b"\x00\x01\x02 definitely not a stanza",
    "huge_attribute": b'<iq id="' + b"i" * 5000 + b'" type="get" xmlns="w:p"><ping/></iq>',
}


async def _raw_channel(sandbox: Sandbox, partner: Partner, session: aiohttp.ClientSession):
    ws = await session.ws_connect(sandbox.base.replace("http", "ws") + CHAT_PATH, max_msg_size=WS_MAX_MESSAGE)
    channel = await client_handshake(
        ws,
        partner.client.noise_static,
        {"v": 1, "login": partner.client.iid, "token": partner.server.token(partner.uvid)},
    )
    first = await channel.receive(timeout=5)
    assert first.tag == "success"
    # Let the attacker encrypt more than a legitimate client would.
    channel._state.send.max_length = 8 << 20
    return ws, channel


async def _expect_stream_error_and_close(channel) -> None:
    node = await channel.receive(timeout=5)
    while node.tag == "ib":  # the offline marker that follows <success/>
        node = await channel.receive(timeout=5)
    assert node.tag == "stream:error", "the profile answers a broken stanza with <stream:error/>"
    assert node.attrs["code"] == "400"
    with pytest.raises(GipError) as excinfo:
        await channel.receive(timeout=5)
    assert excinfo.value.code is GipErrorCode.CLOSED


@pytest.mark.parametrize("payload", list(HOSTILE), ids=list(HOSTILE))
async def test_hostile_stanza_is_refused_and_nothing_is_lost(
    sandbox: Sandbox, partner_server: PartnerServer, payload: str
) -> None:
    attacker = await new_partner(sandbox, partner_server, connect=False)
    bystander = await new_partner(sandbox, partner_server)
    absent = await new_partner(sandbox, partner_server)
    native = await sandbox.native()
    await absent.client.send_message(Jid.parse(native["iid"]), Content(text="hi"))
    await absent.client.close()
    queued = await sandbox.control(
        "POST", f"/natives/{native['iid']}/send", {"to": absent.client.iid, "text": "keep me"}
    )

    async with aiohttp.ClientSession() as session:
        ws, channel = await _raw_channel(sandbox, attacker, session)
        await channel.send_raw(HOSTILE[payload])
        await _expect_stream_error_and_close(channel)
        await ws.close()

    # Everyone else is still served, and the stored message is still there.
    await bystander.client.ping()
    await absent.connect()
    event = await absent.wait_for(lambda e: isinstance(e, MessageEvent) and e.id == queued["id"])
    assert event.content.text == "keep me"


async def test_truncated_noise_frame_closes_the_connection(sandbox: Sandbox, partner_server: PartnerServer) -> None:
    attacker = await new_partner(sandbox, partner_server, connect=False)
    bystander = await new_partner(sandbox, partner_server)
    async with aiohttp.ClientSession() as session:
        ws, channel = await _raw_channel(sandbox, attacker, session)
        frame = channel._state.encrypt(b'<iq id="1" type="get" xmlns="w:p"><ping/></iq>')
        await ws.send_bytes(frame[:-5])
        await _expect_stream_error_and_close(channel)
    await bystander.client.ping()


async def test_text_frame_and_garbage_handshake_are_refused(sandbox: Sandbox, partner_server: PartnerServer) -> None:
    bystander = await new_partner(sandbox, partner_server)
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(sandbox.base.replace("http", "ws") + CHAT_PATH)
        await ws.send_bytes(b"\x01" * 10)  # a truncated first handshake message
        message = await ws.receive(timeout=5)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        ws = await session.ws_connect(sandbox.base.replace("http", "ws") + CHAT_PATH)
        await ws.send_str("hello")
        message = await ws.receive(timeout=5)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        # A handshake from a key that is not enlisted gets 405/401, not a crash.
        ws = await session.ws_connect(sandbox.base.replace("http", "ws") + CHAT_PATH)
        channel = await client_handshake(ws, StaticKey.generate(), {"v": 1, "login": "1-1@interop", "token": "x"})
        first = await channel.receive(timeout=5)
        assert first.tag == "failure"
        assert first.attrs["reason"] == "405"
    await bystander.client.ping()


async def test_a_wrong_message_is_refused_alone_and_the_connection_stays(
    sandbox: Sandbox, partner_server: PartnerServer
) -> None:
    from bridge.gip.stanza import Node

    alice = await new_partner(sandbox, partner_server)
    native = await sandbox.native()
    bob = Jid.parse(native["iid"])
    wrong = Node(
        "message", {"id": "W1", "to": str(bob), "type": "sticker", "t": "1", "phash": "x"}, [Node("participants")]
    )
    ack = await alice.client._await(("ack", "W1"), wrong)
    assert ack.attrs["error"] == "400"
    await alice.client.ping()
    await alice.client.send_message(bob, Content(text="still fine"))
