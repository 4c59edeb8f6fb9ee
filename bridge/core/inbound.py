"""Gatekeeper → Matrix: one stored inbox item posted to its portal, exactly once.

Each item became durable (with its advanced Signal session) before the gatekeeper got its
delivery receipt; here, in the portal's loop, it is posted. Every event the bridge makes
for an item carries a transaction id derived from the item, so that a retry after a
timeout or a crash gives back the same event, and the message carries the time it was
sent on the other side. An item is marked done after it is posted; whatever fails in
between is posted again under the same transaction id, never twice.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING

from bridge.db.logins import Login
from bridge.db.portals import MessageRef, Portal, Puppet
from bridge.db.queues import InboxItem
from bridge.gip import stanzas as st
from bridge.gip.content import Content
from bridge.metrics import TO_MATRIX
from bridge.msgconv import convert

from .errors import Refused
from .groups import bare, group_txn_id, is_group
from .matrix_api import SendStatus, StatusReport
from .media import DownloadDelayed
from .portal_loop import Work

if TYPE_CHECKING:
    from .bridge import BridgeCore

log = logging.getLogger(__name__)


def txn_id(item: InboxItem, part: str = "") -> str:
    if is_group(item.peer):
        return group_txn_id(item.peer, item.sender, item.gk_id, part)
    return f"dma-in-{item.id}{'-' + part if part else ''}"


class InboxWork(Work):
    def __init__(self, core: BridgeCore, item_id: int, kind: str, item: InboxItem | None = None) -> None:
        self.core = core
        self.item_id = item_id
        self.name = f"inbox {item_id} ({kind})"
        # The item as just stored saves reading it back on the first try; every later try
        # (and a replay) reads what the store holds now.
        self._fresh = item

    async def run(self) -> None:
        core = self.core
        item, self._fresh = self._fresh, None
        if item is None:
            item = await core.inbox.get(self.item_id)
        if item is None or item.state != "pending" or item.payload is None or core.posted.seen(item.id):
            # Done already: a replay, a reload after an overflow, or a resend that was
            # posted in the place of its undecryptable first copy (its end is not written yet).
            return
        login = await core.logins.get(item.receiver)
        if login is None:
            return  # logged out: the row went with the login
        event_id = await self._apply(login, item)
        # The item's end (and the map entry posting made) land a moment later, grouped.
        await core.inbox.mark_posted_later(item.id, event_id)
        core.posted.add(item.id)
        if item.is_message:
            core.metrics.bridged(TO_MATRIX, item.kind, time.time() - item.received_at / 1000)

    async def _apply(self, login: Login, item: InboxItem) -> str | None:
        core = self.core
        if item.kind.startswith("receipt:"):  # stored by an earlier version
            assert item.payload is not None
            ids = json.loads(item.payload)
            await ReceiptWork(core, login.mxid, item.peer, item.kind.split(":", 1)[1], item.gk_id, ids).run()
            return None
        if is_group(item.peer):
            return await self._apply_group(login, item)
        portal, puppet = await core.ensure_portal(login, item.peer)
        assert portal.room_id is not None
        if item.kind == "identity":
            return await core.matrix.send_notice(portal.room_id, core.texts.identity_changed, txn_id=txn_id(item))
        if item.kind == "undecryptable":
            if item.gk_id.endswith("/gave-up"):
                return await core.matrix.send_notice(portal.room_id, core.texts.gave_up_decrypting, txn_id=txn_id(item))
            if await self._resent_in_time(item):
                return None  # the phone sent it again: posted in its place, nothing to explain
            return await core.matrix.send_notice(portal.room_id, core.texts.undecryptable, txn_id=txn_id(item))
        content = Content()
        assert item.payload is not None
        content.ParseFromString(item.payload)
        return await self._post(login, portal, puppet, item, convert.gip_content(content))

    async def _apply_group(self, login: Login, item: InboxItem) -> str | None:
        """A group's change, or a group message posted once for every local member."""
        core = self.core
        assert item.payload is not None
        if item.kind == "group":
            await core.groups.apply(login, item.payload)
            return None
        portal = await core.groups.ensure(login, item.peer)
        assert portal.room_id is not None
        present, event_id = await core.groups.mapped_copy(login, portal, item.peer, item.sender, item.gk_id)
        content = Content()
        content.ParseFromString(item.payload)
        if present and content.WhichOneof("body") not in ("reaction", "revoke", "edit"):
            return event_id
        mentions = await core.groups.mentions_to_matrix(convert.mentioned_iids(content))
        incoming = convert.gip_content(content, mentions)
        author = await core.logins.by_iid(bare(item.sender))
        if author is not None:
            return None  # a local member's own edit, reaction or deletion: done in Matrix already
        puppet = await core.ensure_puppet(bare(item.sender))
        await core.matrix.join_puppet(portal.room_id, puppet.mxid)
        return await self._post(login, portal, puppet, item, incoming)

    async def _resent_in_time(self, item: InboxItem) -> bool:
        """A message that did not decrypt holds its place in the portal for a short while:
        the bridge asked the phone to send it again, and the resend usually comes within a
        second. It is posted here, before anything that came after it."""
        core = self.core
        message_id = item.gk_id.rsplit("/", 1)[0]
        deadline = item.received_at + core.resend_wait_ms
        while True:
            resent = await core.inbox.message(item.receiver, item.peer, message_id)
            if resent is not None:
                if resent.state == "pending":
                    await InboxWork(core, resent.id, resent.kind).run()
                return True
            remaining = (deadline - int(time.time() * 1000)) / 1000
            if remaining <= 0:
                return False
            await core.resend_arrived(item.receiver, item.peer, message_id, remaining)

    async def _post(
        self, login: Login, portal: Portal, puppet: Puppet, item: InboxItem, incoming: convert.Incoming
    ) -> str | None:
        core = self.core
        room = portal.room_id
        assert room is not None
        ts = item.sent_at or item.received_at
        target = await core.messages.by_gk_id(login.mxid, portal.peer, incoming.target) if incoming.target else None
        if incoming.kind == "reaction":
            if target is None:
                return None
            old = await core.messages.reaction_by_target(login.mxid, portal.peer, incoming.target or "", False)
            if old is not None:
                await core.matrix.redact(room, puppet.mxid, old["event_id"], txn_id=txn_id(item, "undo"))
                await core.messages.delete_reaction(room, old["event_id"])
            if not incoming.emoji:
                return None
            event_id = await core.matrix.send_reaction(
                room, puppet.mxid, target.event_id, incoming.emoji, txn_id=txn_id(item), timestamp_ms=ts
            )
            await core.messages.put_reaction(
                room, event_id, login.mxid, portal.peer, incoming.target or "", False, incoming.emoji
            )
            return event_id
        if incoming.kind == "revoke":
            if target is not None and not target.from_me:
                await core.matrix.redact(room, puppet.mxid, target.event_id, txn_id=txn_id(item))
            return None
        content = dict(incoming.content)
        if incoming.media is not None:
            kind, media = incoming.media
            content = await core.media.incoming(login.mxid, room, kind, media)
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
        event_id = await core.matrix.send_message(room, puppet.mxid, content, txn_id=txn_id(item), timestamp_ms=ts)
        if incoming.kind in ("message", "media"):
            await core.messages.put_later(MessageRef(login.mxid, portal.peer, item.gk_id, False, room, event_id, ts))
        return event_id

    async def attempted(self, error: BaseException) -> int:
        return await self.core.inbox.attempted(self.item_id, type(error).__name__)

    async def waiting(self, error: BaseException) -> None:
        """A peer's file the gatekeeper cannot hand over now: the user hears it is coming
        (once per item), since everything after it in the chat waits behind it."""
        if not isinstance(error, DownloadDelayed):
            return
        item = await self.core.inbox.get(self.item_id)
        portal = await self.core.portals.get(item.receiver, item.peer) if item is not None else None
        if item is None or portal is None or portal.room_id is None:
            return
        await self.core.matrix.send_notice(
            portal.room_id,
            f"⏳ A {error.noun} from this contact cannot be downloaded from {error.network} right now; the bridge "
            "keeps trying, and it will appear here (with what came after it) once it is downloaded.",
            txn_id=txn_id(item, "delayed"),
        )

    async def give_up(self, error: BaseException) -> None:
        core = self.core
        item = await core.inbox.get(self.item_id)
        await core.inbox.mark_failed(self.item_id, type(error).__name__)
        if item is None or not item.is_message:
            return
        core.metrics.failed(TO_MATRIX, item.kind)
        reason = error.text if isinstance(error, Refused) else "the homeserver would not take it"
        login = await core.logins.get(item.receiver)
        portal = await core.portals.get(item.receiver, item.peer)
        room = portal.room_id if portal is not None and portal.room_id else (login.management_room if login else None)
        if room is not None:
            await core.matrix.send_notice(
                room, f"⚠️ A message from this contact could not be shown here: {reason}.", txn_id=txn_id(item, "fail")
            )


class ReceiptWork(Work):
    """A delivery or read receipt from the peer, shown in Matrix: the "delivered" status of
    our message, or the puppet's read marker. Not stored: a hint, retried while the
    homeserver is away, lost only with the process."""

    durable = False

    def __init__(
        self, core: BridgeCore, receiver: str, peer: str, kind: str, gk_id: str, ids: list[str], *, reader: str = ""
    ) -> None:
        self.core = core
        self.receiver = receiver
        self.peer = peer
        self.reader = reader or peer  # in a group, the participant who got or read it
        self.kind = kind
        self.gk_id = gk_id
        self.ids = ids or [gk_id]
        self.name = f"{kind} receipt {gk_id}"

    async def run(self) -> None:
        core = self.core
        portal = await core.portals.get(self.receiver, self.peer)
        puppet = await core.puppets.get(self.reader)
        if portal is None or portal.room_id is None or puppet is None:
            return
        if self.kind == st.ReceiptType.DELIVERED.value:
            event_id = await core.event_of(self.receiver, self.peer, self.gk_id)
            if event_id is not None:
                report = StatusReport(SendStatus.SUCCESS, delivered_to=(puppet.mxid,))
                core.statuses.send(portal.room_id, event_id, report, txn_id=f"dma-delivered-{event_id}")
        elif self.kind == st.ReceiptType.READ.value:
            newest: str | None = None
            for message_id in self.ids:  # oldest first
                newest = await core.event_of(self.receiver, self.peer, message_id) or newest
            if newest is not None:
                await core.matrix.send_receipt(portal.room_id, puppet.mxid, newest)
