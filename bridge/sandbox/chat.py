"""One Partner client's chat connection at the gatekeeper: handshake, checks, stanzas."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

from bridge.gip import groups as gp
from bridge.gip import stanzas as st
from bridge.gip.errors import GipError, GipErrorCode
from bridge.gip.jid import Jid
from bridge.gip.stanza import Node, encode
from bridge.gip.transport import WS_MAX_MESSAGE, NoiseChannel, server_handshake

from .gatekeeper import Gatekeeper, native_jid
from .store import User

log = logging.getLogger(__name__)
KEEPALIVE_TIMEOUT = 180


class ChatConnection:
    """Serves one WebSocket; implements ``PartnerConnection`` for the gatekeeper."""

    def __init__(self, gatekeeper: Gatekeeper, channel: NoiseChannel, user: User) -> None:
        self.gk = gatekeeper
        self.channel = channel
        self.user = user
        self.iid = user.iid
        self.ready = False
        self._send_lock = asyncio.Lock()
        self.closed = asyncio.Event()

    async def send_raw(self, stanza: bytes) -> None:
        async with self._send_lock:
            await self.channel.send_raw(stanza)

    async def send(self, node: Node) -> None:
        async with self._send_lock:
            await self.channel.send(node)

    async def kick(self, failure: Node) -> None:
        with contextlib.suppress(GipError, ConnectionError, RuntimeError):
            await self.send(failure)
        await self.channel.close()
        self.closed.set()

    async def serve(self) -> None:
        try:
            while not self.channel.closed:
                try:
                    node = await self.channel.receive(timeout=KEEPALIVE_TIMEOUT)
                except TimeoutError:
                    break
                except GipError as exc:
                    if exc.code is not GipErrorCode.CLOSED:
                        log.info("closing %s after a bad frame: %s", self.iid, exc.code.value)
                        await self.channel.fail(exc.code)
                    break
                try:
                    await self.handle(node)
                except GipError as exc:
                    if node.tag == "iq" and node.get("id"):
                        await self.send(st.iq_error(node.attrs["id"], exc.code, exc.text))
                    else:
                        await self.channel.fail(exc.code)
                        break
                user = self.gk.store.user(self.iid)
                if user is None:  # opted out
                    await self.channel.close()
                    break
                self.user = user
        finally:
            self.gk.detach(self)
            self.closed.set()

    # ------------------------------------------------------------------ dispatch

    async def handle(self, node: Node) -> None:
        if node.tag == "iq":
            await self._iq(node)
        elif node.tag == "message":
            await self._message(node)
        elif node.tag == "receipt":
            receipt = st.Receipt.parse(node, direction="to")
            async with self.gk.batch():
                await self.gk.partner_receipt(self.user, receipt)
        elif node.tag == "ack":
            self.gk.partner_ack(self.user, node)
        elif node.tag == "chatstate":
            await self._chatstate(node)
        elif node.tag == "presence" and node.get("type") == "unavailable":
            # The proxy's client went away: its connection must end with it (RO 7.6.2.3).
            await self.channel.close()
        else:
            raise GipError(GipErrorCode.BAD_REQUEST, f"unknown stanza <{node.tag}>")

    async def _message(self, node: Node) -> None:
        try:
            to = Jid.parse(node.attr("to"))
            message = gp.OutgoingGroupMessage.parse(node) if gp.is_group(to) else st.OutgoingMessage.parse(node)
        except GipError as exc:
            stanza_id = node.get("id")
            if not stanza_id or len(stanza_id) > st.MAX_ID_LENGTH:
                raise
            # Well-formed XML with wrong content: refuse this message, keep the connection.
            await self.send(st.ack(stanza_id, "message", error=exc.code))
            return
        async with self.gk.batch():
            if isinstance(message, gp.OutgoingGroupMessage):
                ack, followups = await self.gk.groups.accept_message(self.user, message)
            else:
                ack, followups = await self.gk.accept_message(self.user, message)
        # Committed: only now is the message acknowledged.
        if self.gk.faults.ack_delay:
            await asyncio.sleep(self.gk.faults.ack_delay)
        await self.send(ack)
        async with self.gk.batch():
            for followup in followups:
                await followup()

    async def _chatstate(self, node: Node) -> None:
        peer, state = st.parse_chatstate(node, direction="to")
        if gp.is_group(peer):
            await self.gk.groups.chatstate(self.user, str(peer), state)
            return
        native = self.gk.store.user(str(peer.bare))
        if native is not None and native.kind == "partner" and not self.gk.store.is_blocked(native.iid, self.iid):
            other = self.gk.connection(native.iid)
            if other is not None and other.ready:  # typing is transient: never stored
                await other.send_raw(encode(st.chatstate(Jid.parse(self.iid), state, direction="from")))
            return
        if native is not None and native.kind == "native" and self.gk.reachable(self.user, native):
            self.gk.store.log_native(
                native.iid,
                str(peer),
                {"event": "chatstate", "from": self.iid, "state": state.value},
                self.gk.clock.now(),
            )

    async def _iq(self, node: Node) -> None:
        stanza_id = st.check_id(node.attr("id"))
        xmlns, kind = node.get("xmlns"), node.get("type")
        gk, user = self.gk, self.user
        result: list[Node] = []
        if xmlns == st.XMLNS_PING:
            pass
        elif xmlns == st.XMLNS_KEYS and kind == "set" and node.child("list") is not None:
            gk.upload_prekeys(user.iid, st.parse_upload_prekeys(node))
        elif xmlns == st.XMLNS_KEYS and kind == "set" and node.child("rotate") is not None:
            key = st.parse_rotate_signed_prekey(node)
            device = gk.store.device(user.iid)
            from bridge.signal import PublicKey

            if device is None or not PublicKey(device.identity).verify(
                PublicKey(key.public).serialize(), key.signature
            ):
                raise GipError(GipErrorCode.BAD_REQUEST, "signed prekey signature does not verify")
            gk.store.rotate_signed_prekey(user.iid, key.id, key.public, key.signature)
        elif xmlns == st.XMLNS_KEYS and kind == "get" and node.child("count") is not None:
            result.append(st.count_node(gk.store.count_prekeys(user.iid)))
        elif xmlns == st.XMLNS_KEYS and kind == "get" and node.child("key") is not None:
            result.append(st.bundle_list(await gk.fetch_bundles(user, st.parse_fetch_bundles(node))))
        elif xmlns == gp.XMLNS_GROUPS:
            async with gk.batch():
                result.extend(await gk.groups.handle_iq(user, node))
        elif xmlns == st.XMLNS_DEVICES and kind == "get":
            for target in st.parse_get_devices(node):
                other = gk.store.user(str(target))
                # A native is reachable for its keys when opted in, or in a group with us.
                visible = other is not None and (
                    other.kind != "native" or gk.reachable(user, other) or gk.groups.shares_group(user.iid, other.iid)
                )
                if other is None or not visible:
                    raise GipError(GipErrorCode.NOT_FOUND, "not found")
                result.append(st.device_list_node(target, gk.device_list(other.iid)))
        elif xmlns == st.XMLNS_REACH and kind == "get":
            uvid = node.require_child("lookup").attr("uvid")
            native = gk.lookup(user, uvid)
            result.append(Node("user", {"uvid": uvid, "jid": str(native_jid(native))}))
        elif xmlns == st.XMLNS_REACH and kind == "set":
            target = Jid.parse(node.require_child("ping").attr("jid"))
            native = gk.store.user(str(target.bare))
            if native is None or native.kind != "native" or not gk.reachable(user, native):
                raise GipError(GipErrorCode.NOT_FOUND, "not found")
            gk.store.log_native(native.iid, "-", {"event": "reach_ping", "from": user.iid}, gk.clock.now())
        elif xmlns == st.XMLNS_BLOCKLIST and kind == "get":
            result.append(st.blocklist_node(Jid.parse(j) for j in gk.store.blocklist(user.iid)))
        elif xmlns == st.XMLNS_BLOCKLIST and kind == "set":
            item = node.require_child("item")
            action = item.attr("action")
            if action not in ("block", "unblock"):
                raise GipError(GipErrorCode.BAD_REQUEST, "action must be block or unblock")
            gk.store.set_block(user.iid, str(Jid.parse(item.attr("jid")).bare), action == "block")
        elif xmlns == st.XMLNS_ACCOUNT and kind == "set" and node.child("delete") is not None:
            await gk.opt_out(user.iid)
            await self.send(st.iq_result(stanza_id))
            await self.channel.close()
            return
        else:
            raise GipError(GipErrorCode.BAD_REQUEST, "unknown iq")
        await self.send(st.iq_result(stanza_id, *result))


async def chat_handler(gatekeeper: Gatekeeper, request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse(max_msg_size=WS_MAX_MESSAGE, heartbeat=None)
    await ws.prepare(request)
    try:
        channel, payload = await server_handshake(ws, gatekeeper.noise_static)
    except (GipError, TimeoutError, ConnectionError):
        await ws.close()
        return ws
    try:
        user = await gatekeeper.authenticate(payload, channel.remote_static)
    except GipError as exc:
        with contextlib.suppress(GipError, ConnectionError, RuntimeError):
            await channel.send(st.failure(exc.code, exc.retry_after))
        await channel.close()
        return ws
    connection = ChatConnection(gatekeeper, channel, user)
    offline = await gatekeeper.attach(connection)
    await connection.send(st.success(int(gatekeeper.clock.now()), offline))
    await gatekeeper.flush_mailbox(connection)
    await connection.serve()
    return ws
