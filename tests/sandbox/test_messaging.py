"""Messages both ways through the sandbox, with fan-out, receipts, retries and media."""

from __future__ import annotations

import asyncio
import base64
import hashlib

import pytest

from bridge.gip import stanzas as st
from bridge.gip.client import MessageEvent, ReceiptEvent, UndecryptableEvent
from bridge.gip.content import Content, ContextInfo, ExtendedText, MessageKey, Reaction, Revoke
from bridge.gip.errors import GipError, GipErrorCode
from bridge.gip.jid import Jid
from devstack.sandbox import PartnerServer, Sandbox, new_partner


async def test_text_both_ways_with_receipts(sandbox: Sandbox, partner_server: PartnerServer) -> None:
    alice = await new_partner(sandbox, partner_server)
    native = await sandbox.native()
    bob = Jid.parse(native["iid"])
    assert await alice.client.lookup(native["uvid"]) == bob

    message_id = await alice.client.send_message(bob, Content(text="hello from matrix"))
    received = await sandbox.events(native["iid"], "message")
    assert received[-1]["id"] == message_id
    assert received[-1]["content"] == {"text": "hello from matrix"}
    delivered = await alice.wait_for(
        lambda e: isinstance(e, ReceiptEvent) and e.receipt.type is st.ReceiptType.DELIVERED
    )
    assert delivered.receipt.id == message_id
    read = await alice.wait_for(lambda e: isinstance(e, ReceiptEvent) and e.receipt.type is st.ReceiptType.READ)
    assert message_id in read.receipt.message_ids

    reply = await sandbox.control(
        "POST", f"/natives/{native['iid']}/send", {"to": alice.client.iid, "text": "hello from whatsapp"}
    )
    event = await alice.wait_for(lambda e: isinstance(e, MessageEvent) and e.id == reply["id"])
    assert event.content.text == "hello from whatsapp"
    assert event.sender.bare == bob
    receipts = await sandbox.events(native["iid"], "receipt")
    assert any(r["id"] == reply["id"] and r["type"] == "delivered" for r in receipts)
    info = await sandbox.control("GET", f"/partners/{alice.client.iid}")
    assert info["mailbox"] == 0, "the delivery receipt emptied the mailbox"
    await alice.client.close()


async def test_offline_messages_push_once_wait_and_arrive_once(sandbox: Sandbox, partner_server: PartnerServer) -> None:
    alice = await new_partner(sandbox, partner_server)
    native = await sandbox.native()
    await alice.client.send_message(Jid.parse(native["iid"]), Content(text="hi"))
    await alice.client.close()
    ids = []
    for i in range(3):
        sent = await sandbox.control(
            "POST", f"/natives/{native['iid']}/send", {"to": alice.client.iid, "text": f"m{i}"}
        )
        ids.append(sent["id"])
    await sandbox.gatekeeper.settle()
    assert len(partner_server.pushes) == 1, "one push until the user connects"
    assert partner_server.pushes[0]["body"] == {"to": alice.uvid}
    assert partner_server.pushes[0]["auth"].startswith("Bearer ")
    info = await sandbox.control("GET", f"/partners/{alice.client.iid}")
    assert info["mailbox"] >= 3

    offline = await alice.connect()
    assert offline >= 3
    for message_id in ids:
        event = await alice.wait_for(lambda e, m=message_id: isinstance(e, MessageEvent) and e.id == m)
        assert event.offline
    await asyncio.sleep(0.2)
    info = await sandbox.control("GET", f"/partners/{alice.client.iid}")
    assert info["mailbox"] == 0
    # Reconnecting does not bring them again.
    await alice.client.close()
    before = len(alice.messages())
    await alice.connect()
    await alice.client.ping()
    assert len(alice.messages()) == before


async def test_push_token_verifies_against_gatekeeper_jwks(sandbox: Sandbox, partner_server: PartnerServer) -> None:
    from bridge.gip.tokens import GATEKEEPER_TOKEN_MAX_TTL, parse_jwks, verify_token

    alice = await new_partner(sandbox, partner_server)
    native = await sandbox.native()
    await alice.client.send_message(Jid.parse(native["iid"]), Content(text="hi"))
    await alice.client.close()
    await sandbox.control("POST", f"/natives/{native['iid']}/send", {"to": alice.client.iid, "text": "wake up"})
    await sandbox.gatekeeper.settle()
    async with sandbox.http.get(f"{sandbox.base}/.well-known/jwks") as response:
        keys = parse_jwks(await response.read())
    token = partner_server.pushes[-1]["auth"].removeprefix("Bearer ")
    claims = verify_token(
        token,
        keys,
        issuer="WHATSAPP",
        audience="test-bridge",
        max_ttl=GATEKEEPER_TOKEN_MAX_TTL,
        now=sandbox.gatekeeper.clock.now(),
    )
    assert claims["iss"] == "WHATSAPP"


async def test_retry_receipt_from_partner_gets_a_resend(sandbox: Sandbox, partner_server: PartnerServer) -> None:
    alice = await new_partner(sandbox, partner_server)
    native = await sandbox.native()
    await alice.client.send_message(Jid.parse(native["iid"]), Content(text="hi"))
    await sandbox.control("POST", "/faults", {"corrupt_next_from": native["iid"]})
    sent = await sandbox.control("POST", f"/natives/{native['iid']}/send", {"to": alice.client.iid, "text": "fragile"})
    failure = await alice.wait_for(lambda e: isinstance(e, UndecryptableEvent) and e.id == sent["id"])
    assert failure.retry_count == 1
    event = await alice.wait_for(lambda e: isinstance(e, MessageEvent) and e.id == sent["id"])
    assert event.content.text == "fragile"
    assert any(e["event"] == "resent" for e in await sandbox.events(native["iid"]))


async def test_retry_receipt_from_native_gets_a_resend_and_fresh_bundle(
    sandbox: Sandbox, partner_server: PartnerServer
) -> None:
    alice = await new_partner(sandbox, partner_server)
    native = await sandbox.native()
    bob = Jid.parse(native["iid"])
    await alice.client.send_message(bob, Content(text="first"))
    # The native loses its session state (as after a restore); our next message fails there.
    sandbox.gatekeeper.store.signal_delete(str(bob), "session")
    message_id = await alice.client.send_message(bob, Content(text="after the loss"))
    retry = await alice.wait_for(lambda e: isinstance(e, ReceiptEvent) and e.receipt.type is st.ReceiptType.RETRY)
    assert retry.receipt.id == message_id
    assert retry.receipt.registration_id is not None

    # The first retry resend goes over the existing (to the native, unknown) session and fails
    # again; the second retry carries a fresh bundle, the session is rebuilt, and it arrives.
    async def delivered() -> list:
        return [e for e in await sandbox.events(native["iid"], "message") if e["id"] == message_id]

    for _ in range(50):
        if await delivered():
            break
        await asyncio.sleep(0.1)
    arrived = await delivered()
    assert len(arrived) == 1
    assert arrived[0]["content"] == {"text": "after the loss"}
    retries = [e for e in alice.events if isinstance(e, ReceiptEvent) and e.receipt.type is st.ReceiptType.RETRY]
    assert retries[-1].receipt.retry_count == 2
    assert retries[-1].receipt.keys is not None


async def test_identity_notification_on_native_reinstall(sandbox: Sandbox, partner_server: PartnerServer) -> None:
    from bridge.gip.client import NotificationEvent

    alice = await new_partner(sandbox, partner_server)
    native = await sandbox.native()
    bob = Jid.parse(native["iid"])
    await alice.client.send_message(bob, Content(text="before"))
    await sandbox.control("POST", f"/natives/{native['iid']}/reinstall", {"device": 0})
    notice = await alice.wait_for(lambda e: isinstance(e, NotificationEvent) and e.kind == "identity")
    assert notice.sender == bob
    sent = await sandbox.control(
        "POST", f"/natives/{native['iid']}/send", {"to": alice.client.iid, "text": "new phone"}
    )
    event = await alice.wait_for(lambda e: isinstance(e, MessageEvent) and e.id == sent["id"])
    assert event.identity_changed
    # And our messages reach the new installation (the old session fails, retry rebuilds it).
    message_id = await alice.client.send_message(bob, Content(text="welcome back"))
    for _ in range(50):
        if any(e["id"] == message_id for e in await sandbox.events(native["iid"], "message")):
            break
        await asyncio.sleep(0.1)
    assert any(e["id"] == message_id for e in await sandbox.events(native["iid"], "message"))


async def test_replies_reactions_revokes_edits_typing_and_read(sandbox: Sandbox, partner_server: PartnerServer) -> None:
    from bridge.gip.client import ChatStateEvent
    from bridge.gip.content import Edit

    alice = await new_partner(sandbox, partner_server)
    native = await sandbox.native(read_receipts=False)
    bob = Jid.parse(native["iid"])
    first = await alice.client.send_message(bob, Content(text="question"))
    reply = Content(extended_text=ExtendedText(text="answer", context_info=ContextInfo(stanza_id=first)))
    await alice.client.send_message(bob, reply)
    await alice.client.send_message(
        bob, Content(reaction=Reaction(key=MessageKey(id=first, from_me=True), text="👍")), "reaction"
    )
    await alice.client.send_message(bob, Content(edit=Edit(key=MessageKey(id=first, from_me=True), text="question?")))
    await alice.client.send_message(bob, Content(revoke=Revoke(key=MessageKey(id=first, from_me=True))), "revoke")
    await alice.client.send_typing(bob, st.ChatState.COMPOSING)
    await alice.client.ping()
    contents = [e["content"] for e in await sandbox.events(native["iid"], "message")]
    assert contents[1]["extendedText"]["contextInfo"]["stanzaId"] == first
    assert contents[2]["reaction"]["text"] == "👍"
    assert contents[3]["edit"]["text"] == "question?"
    assert contents[4]["revoke"]["key"]["id"] == first
    assert (await sandbox.events(native["iid"], "chatstate"))[-1]["state"] == "composing"

    # Native side: reply, reaction, typing, an aggregated read receipt.
    native_reply = await sandbox.control(
        "POST",
        f"/natives/{native['iid']}/send",
        {"to": alice.client.iid, "text": "ok", "reply_to": {"id": first, "quoted": "question"}},
    )
    event = await alice.wait_for(lambda e: isinstance(e, MessageEvent) and e.id == native_reply["id"])
    assert event.content.extended_text.context_info.stanza_id == first
    reaction = await sandbox.control(
        "POST",
        f"/natives/{native['iid']}/send",
        {"to": alice.client.iid, "reaction": {"id": first, "emoji": "❤"}},
    )
    event = await alice.wait_for(lambda e: isinstance(e, MessageEvent) and e.id == reaction["id"])
    assert event.type == "reaction" and event.content.reaction.text == "❤"
    await sandbox.control("POST", f"/natives/{native['iid']}/typing", {"to": alice.client.iid, "state": "composing"})
    typing = await alice.wait_for(lambda e: isinstance(e, ChatStateEvent))
    assert typing.state is st.ChatState.COMPOSING
    second = await alice.client.send_message(bob, Content(text="more"))
    await sandbox.control("POST", f"/natives/{native['iid']}/read", {"to": alice.client.iid, "ids": [first, second]})
    read = await alice.wait_for(lambda e: isinstance(e, ReceiptEvent) and e.receipt.type is st.ReceiptType.READ)
    assert set(read.receipt.message_ids) == {first, second}
    # Our aggregated read receipt reaches the native.
    await alice.client.send_read(bob, [native_reply["id"], reaction["id"]])
    await alice.client.ping()
    reads = [e for e in await sandbox.events(native["iid"], "receipt") if e["type"] == "read"]
    assert set(reads[-1]["ids"]) == {native_reply["id"], reaction["id"]}


async def test_media_both_ways_through_the_proxy(sandbox: Sandbox, partner_server: PartnerServer, tmp_path) -> None:
    from bridge.gip.content import Media
    from bridge.gip.media import MediaType, decrypt_to_file, encrypt_bytes

    alice = await new_partner(sandbox, partner_server)
    native = await sandbox.native()
    bob = Jid.parse(native["iid"])
    # Partner → native: the blob lives on the Partner; the native fetches it via the gatekeeper.
    picture = bytes(range(256)) * 300
    blob, info = encrypt_bytes(MediaType.IMAGE, picture)
    partner_server.media["ref1"] = blob
    media = Media(
        direct_path="/interop/download/test-bridge/ref1/",
        media_key=info.media_key,
        file_sha256=info.file_sha256,
        file_enc_sha256=info.file_enc_sha256,
        file_length=info.file_length,
        mimetype="image/png",
        width=10,
        height=10,
    )
    message_id = await alice.client.send_message(bob, Content(image=media), "media")
    fetched = [e for e in await sandbox.events(native["iid"], "media") if e["id"] == message_id]
    assert fetched[0]["ok"] is True
    assert fetched[0]["sha256"] == hashlib.sha256(picture).hexdigest()
    assert partner_server.media_requests[-1].startswith("Bearer "), "G fetches with its own token"
    # A tampered blob is refused by the native.
    partner_server.media["ref2"] = blob[:-1] + bytes((blob[-1] ^ 1,))
    media.direct_path = "/interop/download/test-bridge/ref2/"
    bad_id = await alice.client.send_message(bob, Content(image=media), "media")
    refused = [e for e in await sandbox.events(native["iid"], "media") if e["id"] == bad_id]
    assert refused[0]["ok"] is False

    # Native → Partner: the blob lives on the gatekeeper at /v/t<ref>.
    voice = b"OggS" + bytes(5000)
    sent = await sandbox.control(
        "POST",
        f"/natives/{native['iid']}/send",
        {
            "to": alice.client.iid,
            "media": {
                "kind": "audio",
                "data": base64.b64encode(voice).decode(),
                "mimetype": "audio/ogg",
                "ptt": True,
                "seconds": 3,
            },
        },
    )
    event = await alice.wait_for(lambda e: isinstance(e, MessageEvent) and e.id == sent["id"])
    audio = event.content.audio
    assert audio.direct_path.startswith("/v/t") and audio.ptt

    async def chunks(url: str):
        async with sandbox.http.get(url) as response:
            assert response.status == 200
            async for chunk in response.content.iter_chunked(1024):
                yield chunk

    target = tmp_path / "voice.ogg"
    length = await decrypt_to_file(
        MediaType.AUDIO,
        chunks(sandbox.base + audio.direct_path),
        target,
        media_key=audio.media_key,
        file_enc_sha256=audio.file_enc_sha256,
        file_sha256=audio.file_sha256,
    )
    assert length == len(voice) and target.read_bytes() == voice
    wrong = tmp_path / "tampered.ogg"
    with pytest.raises(GipError) as excinfo:
        await decrypt_to_file(
            MediaType.AUDIO,
            chunks(sandbox.base + audio.direct_path),
            wrong,
            media_key=audio.media_key,
            file_enc_sha256=hashlib.sha256(b"other").digest(),
        )
    assert excinfo.value.code is GipErrorCode.MEDIA_HASH
    assert not wrong.exists()


async def test_native_media_from_a_file_with_faults_and_expiry(
    sandbox: Sandbox, partner_server: PartnerServer, tmp_path
) -> None:
    """The control API sends a native's file from disk (large files), with a preview and a
    waveform; injects a tampered blob and a slow network; and its clock expires blobs."""
    import time

    from bridge.gip.media import MediaType, decrypt_bytes

    alice = await new_partner(sandbox, partner_server)
    native = await sandbox.native()
    source = tmp_path / "voice.ogg"
    source.write_bytes(b"OggS" + bytes(300_000))

    async def send(**media) -> MessageEvent:
        sent = await sandbox.control(
            "POST", f"/natives/{native['iid']}/send", {"to": alice.client.iid, "media": {"kind": "audio", **media}}
        )
        return await alice.wait_for(lambda e: isinstance(e, MessageEvent) and e.id == sent["id"])

    event = await send(
        path=str(source), ptt=True, waveform=list(range(64)), thumbnail=base64.b64encode(b"jpg").decode()
    )
    audio = event.content.audio
    assert (list(audio.waveform), audio.jpeg_thumbnail, audio.file_length) == (list(range(64)), b"jpg", 300_004)

    async def fetch(path: str) -> tuple[int, bytes]:
        async with sandbox.http.get(sandbox.base + path) as response:
            return response.status, await response.read()

    status, blob = await fetch(audio.direct_path)
    args = (audio.media_key, audio.file_enc_sha256, audio.file_sha256)
    assert status == 200 and decrypt_bytes(MediaType.AUDIO, blob, *args) == source.read_bytes()

    # A slow network: 100 KB/s makes a 300 KB blob take about three seconds.
    await sandbox.control("POST", "/faults", {"media_bytes_per_second": 100_000})
    started = time.monotonic()
    status, slow = await fetch(audio.direct_path)
    assert status == 200 and slow == blob and time.monotonic() - started > 2
    await sandbox.control("POST", "/faults", {"media_bytes_per_second": 0})

    tampered = (await send(path=str(source), tamper=True)).content.audio
    _, bad = await fetch(tampered.direct_path)
    assert hashlib.sha256(bad).digest() != tampered.file_enc_sha256

    with pytest.raises(Exception, match=r"media\.data"):
        await sandbox.control(
            "POST", f"/natives/{native['iid']}/send", {"to": alice.client.iid, "media": {"kind": "audio", "data": "%%"}}
        )
    # Thirty days on the gatekeeper's clock, and the blob is gone.
    await sandbox.control("POST", "/clock/advance", {"seconds": 31 * 86400})
    assert (await fetch(audio.direct_path))[0] == 404


async def test_between_two_partner_users(sandbox: Sandbox, partner_server: PartnerServer) -> None:
    from bridge.gip.client import ChatStateEvent

    alice = await new_partner(sandbox, partner_server)
    carol = await new_partner(sandbox, partner_server)
    carol_jid = Jid.parse(carol.client.iid)
    message_id = await alice.client.send_message(carol_jid, Content(text="partner to partner"))
    event = await carol.wait_for(lambda e: isinstance(e, MessageEvent) and e.id == message_id)
    assert event.content.text == "partner to partner"
    assert event.sender == Jid.parse(alice.client.iid)
    delivered = await alice.wait_for(lambda e: isinstance(e, ReceiptEvent) and e.receipt.id == message_id)
    assert delivered.receipt.peer == carol_jid
    await alice.client.send_typing(carol_jid, st.ChatState.COMPOSING)
    typing = await carol.wait_for(lambda e: isinstance(e, ChatStateEvent))
    assert typing.sender == Jid.parse(alice.client.iid)
    await carol.client.send_read(Jid.parse(alice.client.iid), [message_id])
    read = await alice.wait_for(lambda e: isinstance(e, ReceiptEvent) and e.receipt.type is st.ReceiptType.READ)
    assert read.receipt.message_ids == (message_id,)
    assert (await sandbox.control("GET", f"/partners/{carol.client.iid}"))["mailbox"] == 0


async def test_a_handler_may_make_requests_while_handling_an_event(
    sandbox: Sandbox, partner_server: PartnerServer
) -> None:
    """Handlers run beside the reader, so awaiting a reply inside one cannot deadlock."""
    alice = await new_partner(sandbox, partner_server)
    native = await sandbox.native()
    await alice.client.send_message(Jid.parse(native["iid"]), Content(text="hi"))
    counted: list[int] = []

    async def handler(event) -> None:
        await alice.on_event(event)
        if isinstance(event, MessageEvent):
            counted.append(await alice.client.count_prekeys())

    alice.client.on_event = handler
    sent = await sandbox.control("POST", f"/natives/{native['iid']}/send", {"to": alice.client.iid, "text": "x"})
    await asyncio.wait_for(alice.wait_for(lambda e: isinstance(e, MessageEvent) and e.id == sent["id"]), 5)
    for _ in range(50):
        if counted:
            break
        await asyncio.sleep(0.02)
    assert counted and counted[0] >= 0


async def test_messages_from_natives_carry_their_identifier(sandbox: Sandbox, partner_server: PartnerServer) -> None:
    alice = await new_partner(sandbox, partner_server)
    native = await sandbox.native()
    sent = await sandbox.control("POST", f"/natives/{native['iid']}/send", {"to": alice.client.iid, "text": "hi"})
    event = await alice.wait_for(lambda e: isinstance(e, MessageEvent) and e.id == sent["id"])
    assert event.sender_uvid == native["uvid"]
