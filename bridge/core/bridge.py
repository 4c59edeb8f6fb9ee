"""The core: the durable flow between Matrix and the gatekeeper for every login and portal.

Gatekeeper → Matrix: a message is decrypted, stored in the inbox (sealed), and only then
acknowledged (the client sends the delivery receipt when ``on_event`` returns); it is
posted to the portal by the puppet afterwards and, once posted, its content is erased.
Matrix → gatekeeper: an event is converted, stored in the outbox under a gatekeeper id
fixed at that moment, sent, and marked sent when the gatekeeper stored it; every handled
event gets a message send status. Both directions of one portal run in order under one
lock; different portals run in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Awaitable
from typing import Any

import phonenumbers

from bridge.config import BridgeConfig
from bridge.db.database import Database
from bridge.db.logins import Login, LoginState, LoginStore
from bridge.db.portals import MessageRef, MessageStore, Portal, PortalStore, Puppet, PuppetStore
from bridge.db.queues import Inbox, InboxItem, Outbox, OutboxItem
from bridge.db.sealed import Sealer
from bridge.gatekeeper.connections import ConnectionManager
from bridge.gatekeeper.state import ConnectionState, StateChange
from bridge.gip import stanzas as st
from bridge.gip.client import (
    ChatStateEvent,
    Event,
    GipClient,
    MessageEvent,
    NotificationEvent,
    ReceiptEvent,
    UndecryptableEvent,
)
from bridge.gip.content import Content
from bridge.gip.errors import GipError, GipErrorCode
from bridge.gip.jid import Jid
from bridge.msgconv import convert
from bridge.tasks import BackgroundTasks

from .matrix_api import BridgeInfo, MatrixAPI, SendStatus, StatusReport

log = logging.getLogger(__name__)
PROTOCOL_NAMES = {"whatsapp": "WhatsApp", "messenger": "Messenger"}
# What a refusal of a message means, for the person who sent it.
SEND_FAILURES = {
    GipErrorCode.FORBIDDEN: (
        SendStatus.FAIL_PERMANENT,
        "This person cannot be reached: they have not turned "
        "on chats with other apps, or one of you blocked the other.",
    ),
    GipErrorCode.RATE_LIMITED: (
        SendStatus.FAIL_RETRIABLE,
        "The gatekeeper is limiting how fast you send; the message goes out by itself as soon as it allows.",
    ),
    GipErrorCode.NOT_FOUND: (
        SendStatus.FAIL_PERMANENT,
        "This person no longer has an account that can be reached.",
    ),
}


# Refusals that retry by themselves but that the user should still hear about.
TRANSIENT_EXPLANATIONS = {
    GipErrorCode.RATE_LIMITED: "The gatekeeper is rate limiting the bridge's connection for you; it retries by "
    "itself in about {seconds} s. Messages you send meanwhile go out then.",
    GipErrorCode.UNAVAILABLE: "The gatekeeper is unavailable right now; the bridge retries by itself in about "
    "{seconds} s. Messages you send meanwhile go out then.",
}


def _now_ms() -> int:
    return int(time.time() * 1000)


class BridgeCore:
    def __init__(self, config: BridgeConfig, db: Database, sealer: Sealer, matrix: MatrixAPI) -> None:
        self.config = config
        self.db = db
        self.sealer = sealer
        self.matrix = matrix
        self.logins = LoginStore(db, sealer)
        self.portals = PortalStore(db)
        self.puppets = PuppetStore(db)
        self.messages = MessageStore(db)
        self.outbox = Outbox(db, sealer)
        self.inbox = Inbox(db, sealer)
        self.connections: ConnectionManager | None = None
        self.states: dict[str, StateChange] = {}
        self._told_trouble: set[str] = set()
        self._locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self._tasks = BackgroundTasks()

    def spawn(self, coro: Awaitable[Any], name: str) -> None:
        self._tasks.spawn(coro, name)

    async def settle(self) -> None:
        """Wait for background work to finish (tests, shutdown)."""
        await self._tasks.settle()

    @property
    def network(self) -> str:
        return PROTOCOL_NAMES[self.config.profile]

    # ------------------------------------------------------------------ puppets and portals

    def display_name(self, uvid: str | None, iid: str) -> str:
        if uvid and self.config.profile == "whatsapp":
            try:
                number = phonenumbers.parse(uvid, None)
                return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
            except phonenumbers.NumberParseException:
                return uvid
        return uvid or f"{self.network} user {iid.split('@')[0][-4:]}"

    async def ensure_puppet(self, iid: str, uvid: str | None) -> Puppet:
        existing = await self.puppets.get(iid)
        if existing is not None and (uvid is None or existing.uvid == uvid):
            return existing
        uvid = uvid or (existing.uvid if existing else iid.split("@")[0])
        localpart = self.config.puppet_localpart(uvid)
        puppet = Puppet(iid, uvid, f"@{localpart}:{self.config.homeserver_domain}", self.display_name(uvid, iid))
        await self.matrix.ensure_puppet(puppet.mxid, puppet.displayname)
        await self.puppets.put(puppet)
        return puppet

    def bridge_state_key(self, peer: str) -> str:
        return f"{self.config.appservice_id}://{self.config.profile}/{peer}"

    def bridge_info(self, login: Login, peer: str) -> BridgeInfo:
        return BridgeInfo(
            self.bridge_state_key(peer),
            {
                "bridgebot": self.matrix.bot_mxid,
                "creator": login.mxid,
                "protocol": {"id": self.config.profile, "displayname": self.network},
                "channel": {"id": peer},
            },
        )

    async def ensure_portal(self, login: Login, peer: str, uvid: str | None = None) -> tuple[Portal, Puppet]:
        """The portal of ``login``'s chat with ``peer``, created on first use."""
        puppet = await self.ensure_puppet(peer, uvid)
        async with self._locks[("portal-create", login.mxid + peer)]:
            portal = await self.portals.get(login.mxid, peer)
            if portal is not None and portal.room_id:
                return portal, puppet
            room_id = await self.matrix.create_portal(
                puppet=puppet.mxid,
                receiver=login.mxid,
                name=puppet.displayname,
                topic=f"{self.network} chat with {puppet.displayname}, bridged by matrix-dma-bridge",
                info=self.bridge_info(login, peer),
                encrypted=self.config.encryption.default,
            )
            portal = await self.portals.insert(login.mxid, peer, room_id, self.config.encryption.default)
            return portal, puppet

    # ------------------------------------------------------------------ the connection sink

    async def on_state(self, login: Login, change: StateChange) -> None:
        self.states[login.mxid] = change
        if change.state is ConnectionState.CONNECTED:
            self.spawn(self.flush_outbox(login.mxid), f"flush outbox {login.mxid}")
            if login.mxid in self._told_trouble:
                self._told_trouble.discard(login.mxid)
                await self._tell(login, "Connected to the gatekeeper again.")
        elif change.final:
            await self._tell(login, change.message)
        elif change.code in TRANSIENT_EXPLANATIONS and login.mxid not in self._told_trouble:
            # Said once per outage: a flapping connection must not flood the room.
            self._told_trouble.add(login.mxid)
            await self._tell(login, TRANSIENT_EXPLANATIONS[change.code].format(seconds=round(change.retry_in or 0)))

    async def _tell(self, login: Login, text: str) -> None:
        room = (await self.logins.get(login.mxid) or login).management_room
        if room:
            await self.matrix.send_notice(room, text)

    async def on_event(self, login: Login, event: Event) -> None:
        if isinstance(event, MessageEvent):
            # Durable before the delivery receipt goes out (when this returns).
            await self.ensure_puppet(str(event.sender.bare), event.sender_uvid)
            item, new = await self.inbox.accept(
                receiver=login.mxid,
                sender=str(event.sender),
                gk_id=event.id,
                kind=event.type,
                payload=event.content.SerializeToString(),
            )
            if new:
                self.spawn(self.post(item), f"post {event.id}")
        elif isinstance(event, ReceiptEvent):
            await self._receipt(login, event.receipt)
        elif isinstance(event, ChatStateEvent):
            portal = await self.portals.get(login.mxid, str(event.sender.bare))
            puppet = await self.puppets.get(str(event.sender.bare))
            if portal and portal.room_id and puppet:
                await self.matrix.set_typing(portal.room_id, puppet.mxid, event.state is st.ChatState.COMPOSING)
        elif isinstance(event, NotificationEvent) and event.kind == "identity" and event.sender is not None:
            await self._notice_in_portal(
                login,
                event.sender,
                "🔐 This contact's security code changed: they reinstalled the app or changed phones. "
                "Send `verify` here to compare the new safety number with them.",
            )
        elif isinstance(event, UndecryptableEvent) and event.retry_count == 1:
            await self._notice_in_portal(
                login,
                event.sender,
                "⚠️ A message from this contact could not be decrypted. The bridge asked their phone to "
                "send it again; it will appear here when it arrives.",
            )

    async def _notice_in_portal(self, login: Login, peer: Jid, text: str) -> None:
        """A notice in the chat with ``peer``, if that chat has a room."""
        portal = await self.portals.get(login.mxid, str(peer.bare))
        if portal is not None and portal.room_id:
            await self.matrix.send_notice(portal.room_id, text)

    async def _receipt(self, login: Login, receipt: st.Receipt) -> None:
        peer = str(receipt.peer.bare)
        portal = await self.portals.get(login.mxid, peer)
        puppet = await self.puppets.get(peer)
        if portal is None or portal.room_id is None or puppet is None:
            return
        if receipt.type is st.ReceiptType.DELIVERED:
            event_id = await self._event_of(login.mxid, peer, receipt.id)
            if event_id is not None and await self.messages.record_receipt(login.mxid, peer, receipt.id, "delivered"):
                await self.matrix.send_status(
                    portal.room_id, event_id, StatusReport(SendStatus.SUCCESS, delivered_to=(puppet.mxid,))
                )
        elif receipt.type is st.ReceiptType.READ:
            newest: str | None = None
            for message_id in receipt.message_ids:
                event_id = await self._event_of(login.mxid, peer, message_id)
                await self.messages.record_receipt(login.mxid, peer, message_id, "read")
                newest = event_id or newest  # the ids come oldest first
            if newest is not None:
                await self.matrix.send_receipt(portal.room_id, puppet.mxid, newest)

    async def _event_of(self, receiver: str, peer: str, gk_id: str) -> str | None:
        """The Matrix event of one of our messages; the outbox knows it before the map does
        (a receipt can overtake the bookkeeping that follows the gatekeeper's ack)."""
        ref = await self.messages.by_gk_id(receiver, peer, gk_id)
        if ref is not None:
            return ref.event_id
        item = await self.outbox.by_gk_id(receiver, gk_id)
        return item.event_id if item is not None and item.peer == peer else None

    # ------------------------------------------------------------------ gatekeeper → Matrix

    async def post_pending(self) -> None:
        for item in await self.inbox.pending():
            try:
                await self.post(item)
            except Exception:
                # The homeserver may be down: the item stays pending for the next round.
                log.exception("could not post a stored message; will retry")

    async def retry_pending(self, interval: float = 30.0) -> None:
        """Forever: post what waits in the inbox and send what waits in the outbox, so that
        a failure on either side is retried without waiting for a restart."""
        while True:
            await asyncio.sleep(interval)
            await self.post_pending()
            for item in await self.outbox.pending():
                if self.client_for(item.receiver) is not None:
                    await self._send(item)

    async def post(self, item: InboxItem) -> None:
        """Post one stored message to Matrix; on failure it stays pending for the next try."""
        login = await self.logins.get(item.receiver)
        if login is None or item.payload is None:
            return
        peer = str(Jid.parse(item.sender).bare)
        async with self._locks[(login.mxid, peer)]:
            current = await self.inbox.get(item.id)
            if current is None or current.state != "pending":
                return  # posted meanwhile
            content = Content()
            content.ParseFromString(item.payload)
            incoming = convert.gip_content(content)
            portal, puppet = await self.ensure_portal(login, peer)
            assert portal.room_id is not None
            event_id = await self._apply(login, portal, puppet, item, incoming)
            await self.inbox.mark_posted(item.id, event_id or "")

    async def _apply(
        self, login: Login, portal: Portal, puppet: Puppet, item: InboxItem, incoming: convert.Incoming
    ) -> str | None:
        room = portal.room_id
        assert room is not None
        target = await self.messages.by_gk_id(login.mxid, portal.peer, incoming.target) if incoming.target else None
        if incoming.kind == "reaction":
            if target is None:
                return None
            old = await self.messages.reaction_by_target(login.mxid, portal.peer, incoming.target or "", False)
            if old is not None:
                await self.matrix.redact(room, puppet.mxid, old["event_id"])
                await self.messages.delete_reaction(room, old["event_id"])
            if not incoming.emoji:
                return None
            event_id = await self.matrix.send_reaction(room, puppet.mxid, target.event_id, incoming.emoji)
            await self.messages.put_reaction(
                room, event_id, login.mxid, portal.peer, incoming.target or "", False, incoming.emoji
            )
            return event_id
        if incoming.kind == "revoke":
            if target is not None and not target.from_me:
                await self.matrix.redact(room, puppet.mxid, target.event_id)
            return None
        content = dict(incoming.content)
        if incoming.kind == "edit":
            if target is None or target.from_me:
                return None
            content = {
                "msgtype": content["msgtype"],
                "body": f"* {content['body']}",
                "m.new_content": content,
                "m.relates_to": {"rel_type": "m.replace", "event_id": target.event_id},
            }
        elif target is not None:
            content["m.relates_to"] = {"m.in_reply_to": {"event_id": target.event_id}}
        event_id = await self.matrix.send_message(room, puppet.mxid, content, _now_ms())
        if incoming.kind == "message":
            await self.messages.put(MessageRef(login.mxid, portal.peer, item.gk_id, False, room, event_id, _now_ms()))
        return event_id

    # ------------------------------------------------------------------ Matrix → gatekeeper

    async def _portal_of(self, room_id: str, sender: str, event_id: str | None = None) -> tuple[Portal, Login] | None:
        """The portal and its owner's login, when ``sender`` may bridge from this room.

        For an event that cannot be bridged, the sender is told why (``event_id`` given).
        """
        portal = await self.portals.by_room(room_id)
        if portal is None:
            return None
        if portal.receiver != sender:
            if event_id is not None:
                await self._status(
                    room_id,
                    event_id,
                    SendStatus.FAIL_PERMANENT,
                    "m.no_permission",
                    "Only the owner of this chat can write to the other side.",
                )
            return None
        login = await self.logins.get(sender)
        if login is None or login.state is not LoginState.ENLISTED:
            if event_id is not None:
                text = f"You are not logged in to {self.network}; send `login` to the bridge bot."
                await self._status(room_id, event_id, SendStatus.FAIL_PERMANENT, "m.no_permission", text)
                await self.matrix.send_notice(room_id, f"⚠️ Not delivered: {text}")
            return None
        return portal, login

    async def handle_matrix_message(self, room_id: str, event_id: str, sender: str, content: dict[str, Any]) -> None:
        found = await self._portal_of(room_id, sender, event_id)
        if found is None:
            return
        portal, login = found
        relates = content.get("m.relates_to") or {}
        edit_of = reply_to = None
        if relates.get("rel_type") == "m.replace":
            ref = await self.messages.by_event(room_id, relates.get("event_id", ""))
            if ref is None or not ref.from_me:
                await self._status(
                    room_id,
                    event_id,
                    SendStatus.FAIL_PERMANENT,
                    "m.event_not_handled",
                    "Only your own bridged messages can be edited.",
                )
                return
            edit_of = ref.gk_id
        elif isinstance(relates.get("m.in_reply_to"), dict):
            ref = await self.messages.by_event(room_id, relates["m.in_reply_to"].get("event_id", ""))
            reply_to = ref.gk_id if ref else None
        try:
            outgoing = convert.matrix_message(content, reply_to=reply_to, edit_of=edit_of)
        except convert.Unsupported as exc:
            await self._status(room_id, event_id, SendStatus.FAIL_PERMANENT, exc.reason, exc.text)
            await self.matrix.send_notice(room_id, f"⚠️ Not delivered: {exc.text}")
            return
        await self._queue(login, portal, event_id, outgoing, remember=edit_of is None)

    async def handle_matrix_reaction(self, room_id: str, event_id: str, sender: str, target: str, key: str) -> None:
        found = await self._portal_of(room_id, sender, event_id)
        if found is None:
            return
        portal, login = found
        ref = await self.messages.by_event(room_id, target)
        if ref is None:
            await self._status(
                room_id,
                event_id,
                SendStatus.FAIL_PERMANENT,
                "m.event_not_handled",
                "The message you reacted to is not a bridged message.",
            )
            return
        try:
            outgoing = convert.matrix_reaction(key, ref.gk_id, from_me=ref.from_me)
        except convert.Unsupported as exc:
            await self._status(room_id, event_id, SendStatus.FAIL_PERMANENT, exc.reason, exc.text)
            return
        await self.messages.put_reaction(room_id, event_id, login.mxid, portal.peer, ref.gk_id, True, key)
        await self._queue(login, portal, event_id, outgoing, remember=False)

    async def handle_matrix_redaction(self, room_id: str, event_id: str, sender: str, redacts: str) -> None:
        found = await self._portal_of(room_id, sender, event_id)
        if found is None:
            return
        portal, login = found
        reaction = await self.messages.reaction(room_id, redacts)
        if reaction is not None:
            await self.messages.delete_reaction(room_id, redacts)
            outgoing = convert.matrix_reaction_removal(reaction["target_gk_id"], from_me=not bool(reaction["from_me"]))
            await self._queue(login, portal, event_id, outgoing, remember=False)
            return
        ref = await self.messages.by_event(room_id, redacts)
        if ref is None or not ref.from_me:
            await self._status(
                room_id,
                event_id,
                SendStatus.FAIL_PERMANENT,
                "m.event_not_handled",
                "Only your own bridged messages can be deleted for everyone.",
            )
            return
        await self._queue(login, portal, event_id, convert.matrix_redaction(ref.gk_id), remember=False)

    async def handle_matrix_read(self, room_id: str, sender: str, event_id: str) -> None:
        found = await self._portal_of(room_id, sender)
        if found is None:
            return
        portal, login = found
        read_up_to = await self.messages.by_event(room_id, event_id)
        if read_up_to is None:
            return
        client = self.client_for(login.mxid)
        if client is None:
            return  # not recorded: read again once connected, the receipt still goes out
        refs = await self.messages.unread_from_peer(login.mxid, portal.peer, room_id, read_up_to.timestamp)
        unread = [ref.gk_id for ref in refs]
        if not unread:
            return
        with contextlib.suppress(GipError):
            await client.send_read(Jid.parse(portal.peer), unread)
            await self.messages.record_receipts(login.mxid, portal.peer, unread, "read")

    async def handle_matrix_typing(self, room_id: str, sender: str, typing: bool) -> None:
        found = await self._portal_of(room_id, sender)
        client = self.client_for(sender)
        if found is None or client is None:
            return
        state = st.ChatState.COMPOSING if typing else st.ChatState.PAUSED
        with contextlib.suppress(GipError):
            await client.send_typing(Jid.parse(found[0].peer), state)

    def client_for(self, mxid: str) -> GipClient | None:
        """The user's live gatekeeper client, or None while not connected."""
        connection = self.connections.get(mxid) if self.connections else None
        if connection is None or connection.client is None or not connection.client.connected:
            return None
        return connection.client

    async def _status(
        self,
        room_id: str,
        event_id: str,
        status: SendStatus,
        reason: str | None = None,
        message: str | None = None,
    ) -> None:
        try:
            await self.matrix.send_status(room_id, event_id, StatusReport(status, reason, message))
        except Exception:
            log.exception("could not send a message status")

    async def _queue(
        self, login: Login, portal: Portal, event_id: str, outgoing: convert.Outgoing, *, remember: bool
    ) -> None:
        assert portal.room_id is not None
        item, new = await self.outbox.accept(
            receiver=login.mxid,
            peer=portal.peer,
            gk_id=secrets.token_hex(10).upper(),
            kind=outgoing.message_type if remember else f"{outgoing.message_type}:nomap",
            room_id=portal.room_id,
            event_id=event_id,
            payload=outgoing.content.SerializeToString(),
        )
        if not new and item.state != "pending":
            return  # the homeserver resent an event we already handled
        # Stored: the transaction may be acknowledged; sending happens beside it, in portal order.
        self.spawn(self._send(item), f"send {item.id}")

    async def flush_outbox(self, mxid: str) -> None:
        for item in await self.outbox.pending(mxid):
            await self._send(item)

    async def _send(self, item: OutboxItem) -> None:
        async with self._locks[(item.receiver, item.peer)]:
            current = await self.outbox.get(item.id)
            if current is None or current.state != "pending" or current.payload is None:
                return
            client = self.client_for(item.receiver)
            if client is None:
                await self._status(
                    item.room_id,
                    item.event_id,
                    SendStatus.PENDING,
                    "m.foreign_network_error",
                    "Waiting for the connection to the gatekeeper; it will be sent then.",
                )
                return
            content = Content()
            content.ParseFromString(current.payload)
            message_type = current.kind.split(":")[0]
            try:
                await client.send_message(Jid.parse(item.peer), content, message_type, message_id=item.gk_id)
            except GipError as exc:
                await self._send_failed(current, exc)
                return
            await self.outbox.mark_sent(item.id)
            if not current.kind.endswith(":nomap"):
                await self.messages.put(
                    MessageRef(item.receiver, item.peer, item.gk_id, True, item.room_id, item.event_id, _now_ms())
                )
        await self._status(item.room_id, item.event_id, SendStatus.SUCCESS)

    async def _send_failed(self, item: OutboxItem, exc: GipError) -> None:
        await self.outbox.attempted(item.id, exc.code.value)
        status, text = SEND_FAILURES.get(
            exc.code,
            (
                SendStatus.FAIL_RETRIABLE,
                "The connection to the gatekeeper failed; it will be sent when it is back.",
            ),
        )
        if status is SendStatus.FAIL_PERMANENT:
            await self.outbox.mark_failed(item.id, exc.code.value)
            await self.matrix.send_notice(item.room_id, f"⚠️ Not delivered: {text}")
        elif exc.retry_after:
            self.spawn(self._retry_later(item, exc.retry_after), f"retry {item.id}")
        reason = "m.no_permission" if exc.code is GipErrorCode.FORBIDDEN else "m.foreign_network_error"
        await self._status(item.room_id, item.event_id, status, reason, text)

    async def _retry_later(self, item: OutboxItem, delay: int) -> None:
        await asyncio.sleep(min(delay, 300))
        await self._send(item)
