"""Matrix → gatekeeper: a Matrix event into the outbox, and an outbox item to the gatekeeper.

A Matrix event (already stored at the Matrix edge) is converted and accepted into the
outbox under a gatekeeper id fixed at that moment; from then on the outbox item is what
runs, in the portal's loop: encrypted once (ciphertext and advanced sessions committed
together), sent, and marked sent when the gatekeeper stored it. Every resend sends the
stored ciphertext under the same id. Every handled event gets a message send status.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from bridge.db.logins import Login, LoginState
from bridge.db.portals import MessageRef, Portal
from bridge.db.queues import OutboxItem
from bridge.gip.content import Content
from bridge.gip.errors import GipError, GipErrorCode
from bridge.metrics import TO_GATEKEEPER
from bridge.msgconv import convert, media

from .errors import Unavailable, retry_after
from .groups import is_group
from .matrix_api import SendStatus, StatusReport
from .portal_loop import Work

if TYPE_CHECKING:
    from .bridge import BridgeCore

log = logging.getLogger(__name__)
Stored = Callable[[], Awaitable[None]]

# Refusals that no retry changes: the item fails at once, with what it means.
FINAL_REFUSALS = {
    GipErrorCode.FORBIDDEN: (
        "m.no_permission",
        "This person cannot be reached: they have not turned on chats with other apps, or one of you blocked the "
        "other.",
    ),
    GipErrorCode.NOT_FOUND: (
        "m.foreign_network_error",
        "None of this person's devices can receive messages right now (they may have left the service).",
    ),
    GipErrorCode.BAD_REQUEST: ("m.foreign_network_error", "The gatekeeper refused the message as malformed."),
    GipErrorCode.TOO_LARGE: ("com.beeper.unsupported_event", "The message is too large for the gatekeeper."),
}


async def _nothing() -> None:
    return None


class OutboxWork(Work):
    def __init__(self, core: BridgeCore, item_id: int, item: OutboxItem | None = None) -> None:
        self.core = core
        self.item_id = item_id
        self.name = f"outbox {item_id}"
        # The item as just stored saves reading it back on the first try; every later try
        # (and a replay) reads what the store holds now.
        self._fresh = item
        self._item: OutboxItem | None = None

    async def run(self) -> None:
        core = self.core
        item, self._fresh = self._fresh, None
        if item is None:
            item = await core.outbox.get(self.item_id)
        if item is None or item.state != "pending" or item.payload is None:
            return
        self._item = item
        gatekeeper = core.gatekeeper
        if not gatekeeper.connected(item.receiver):
            raise Unavailable("not connected to the gatekeeper")
        content = Content()
        content.ParseFromString(item.payload)

        async def persist(prepared: bytes) -> None:
            await core.outbox.set_prepared(item, prepared)

        try:
            prepared = item.prepared or await gatekeeper.prepare(
                item.receiver, item.peer, item.gk_id, item.message_type, content, persist
            )
            await gatekeeper.send(item.receiver, prepared, content, persist)
        except GipError as exc:
            if exc.code.value.isdigit():
                core.metrics.refused(exc.code.value)  # the gatekeeper's own answer, not a local failure
            if exc.code in FINAL_REFUSALS:
                await self.give_up(exc)
                return
            raise
        # Sent: the map entry and the item's end land a moment later, grouped.
        if item.mapped:
            now = int(time.time() * 1000)
            await core.messages.put_later(
                MessageRef(item.receiver, item.peer, item.gk_id, True, item.room_id, item.event_id, now)
            )
        await core.outbox.mark_sent_later(item.id)
        core.metrics.bridged(TO_GATEKEEPER, item.message_type, time.time() - item.created_at / 1000)
        core.statuses.send(
            item.room_id, item.event_id, StatusReport(SendStatus.SUCCESS), txn_id=f"dma-out-{item.id}-ok"
        )

    async def attempted(self, error: BaseException) -> int:
        return await self.core.outbox.attempted(self.item_id, type(error).__name__)

    async def waiting(self, error: BaseException) -> None:
        item = self._item
        if item is None:
            return
        wait = retry_after(error)
        if wait is not None:
            text = (
                "The gatekeeper is limiting how fast you send; this goes out by itself in about "
                f"{max(1, round(wait))} s."
            )
        elif isinstance(error, Unavailable) or (isinstance(error, GipError) and error.code is GipErrorCode.CLOSED):
            text = "Waiting for the connection to the gatekeeper; it will be sent then."
        else:
            text = "Sending failed; the bridge is trying again."
        self.core.statuses.send(
            item.room_id, item.event_id, StatusReport(SendStatus.PENDING, "m.foreign_network_error", text)
        )

    async def give_up(self, error: BaseException) -> None:
        core = self.core
        item = self._item or await core.outbox.get(self.item_id)
        if item is None:
            return
        code = error.code if isinstance(error, GipError) else None
        reason, text = FINAL_REFUSALS.get(
            code,  # type: ignore[arg-type]
            ("m.foreign_network_error", f"The bridge could not send it after {core.loops.policy.max_attempts} tries."),
        )
        await core.outbox.mark_failed(item.id, code.value if code else type(error).__name__)
        core.metrics.failed(TO_GATEKEEPER, item.message_type)
        core.statuses.send(
            item.room_id,
            item.event_id,
            StatusReport(SendStatus.FAIL_PERMANENT, reason, text),
            txn_id=f"dma-out-{item.id}-failed",
        )
        await core.matrix.send_notice(item.room_id, f"⚠️ Not delivered: {text}", txn_id=f"dma-out-{item.id}-fail")


class MatrixFlow:
    """The Matrix side's handlers, run in the portal's loop by the Matrix connector."""

    def __init__(self, core: BridgeCore) -> None:
        self.core = core

    async def _portal_of(self, room_id: str, sender: str, event_id: str | None = None) -> tuple[Portal, Login] | None:
        """The portal and its owner's login, when ``sender`` may bridge from this room.

        For an event that cannot be bridged, the sender is told why (``event_id`` given).
        """
        core = self.core
        portal = await core.portals.by_room(room_id)
        if portal is None:
            return None
        if is_group(portal.peer):
            # A group's room is shared: each member writes with their own login. There is
            # no relay: someone without one cannot write to the other side.
            own = await core.portals.get(sender, portal.peer)
            if own is None:
                if event_id is not None:
                    text = (
                        f"Only members who logged in to {core.network} and are in this group there can write to it "
                        "(there is no relay); send `login` to the bridge bot."
                    )
                    await self._not_delivered(room_id, event_id, text)
                return None
            portal = own
        elif portal.receiver != sender:
            if event_id is not None:
                self._refuse(
                    room_id, event_id, "m.no_permission", "Only the owner of this chat can write to the other side."
                )
            return None
        if core.revoked(sender):
            if event_id is not None:
                await self._not_delivered(
                    room_id, event_id, "The bridge's admin no longer allows you to use this bridge."
                )
            return None
        login = await core.logins.get(sender)
        if login is None or login.state is not LoginState.ENLISTED:
            if event_id is not None:
                text = f"You are not logged in to {core.network}; send `login` to the bridge bot."
                await self._not_delivered(room_id, event_id, text)
            return None
        if event_id is not None and not core.limits.messages.allow(sender):
            window = core.limits.messages
            text = (
                f"You are sending faster than this bridge allows ({window.limit} a minute), so this was not "
                f"delivered; wait {window.retry_in(sender):.0f} s."
            )
            # One notice for a flood, a status for each message.
            await self._not_delivered(room_id, event_id, text, notice=core.limits.tell_once(sender, window))
            return None
        return portal, login

    def _refuse(self, room_id: str, event_id: str, reason: str, text: str) -> None:
        self.core.statuses.send(room_id, event_id, StatusReport(SendStatus.FAIL_PERMANENT, reason, text))

    async def _not_delivered(
        self, room_id: str, event_id: str, text: str, *, reason: str = "m.no_permission", notice: bool = True
    ) -> None:
        """A failed status on the event and, unless told not to, a notice in the room."""
        self._refuse(room_id, event_id, reason, text)
        if notice:
            await self.core.matrix.send_notice(room_id, f"⚠️ Not delivered: {text}", txn_id=f"dma-refused-{event_id}")

    async def message(
        self, room_id: str, event_id: str, sender: str, content: dict[str, Any], stored: Stored = _nothing
    ) -> None:
        core = self.core
        found = await self._portal_of(room_id, sender, event_id)
        if found is None:
            await stored()
            return None
        portal, login = found
        relates = content.get("m.relates_to") or {}
        edit_of = reply_to = None
        if relates.get("rel_type") == "m.replace":
            ref = await core.messages.by_event(room_id, relates.get("event_id", ""))
            if ref is None or not ref.from_me:
                self._refuse(room_id, event_id, "m.event_not_handled", "Only your own bridged messages can be edited.")
                await stored()
                return None
            edit_of = ref.gk_id
        elif isinstance(relates.get("m.in_reply_to"), dict):
            ref = await core.messages.by_event(room_id, relates["m.in_reply_to"].get("event_id", ""))
            reply_to = ref.gk_id if ref else None
        mentions = await core.groups.mentions_from_matrix(content) if is_group(portal.peer) else []
        try:
            if edit_of is None and media.is_media(content):
                outgoing = await core.media.outgoing(sender, content, reply_to=reply_to)
            else:
                outgoing = convert.matrix_message(content, reply_to=reply_to, edit_of=edit_of, mentions=mentions)
        except convert.Unsupported as exc:
            await self._not_delivered(room_id, event_id, exc.text, reason=exc.reason)
            await stored()
            return None
        return await self._queue(login, portal, event_id, outgoing, remember=edit_of is None, stored=stored)

    async def reaction(
        self, room_id: str, event_id: str, sender: str, target: str, key: str, stored: Stored = _nothing
    ) -> OutboxWork | None:
        core = self.core
        found = await self._portal_of(room_id, sender, event_id)
        if found is None:
            await stored()
            return None
        portal, login = found
        ref = await core.messages.by_event(room_id, target)
        if ref is None:
            self._refuse(
                room_id, event_id, "m.event_not_handled", "The message you reacted to is not a bridged message."
            )
            await stored()
            return None
        try:
            outgoing = convert.matrix_reaction(key, ref.gk_id, from_me=ref.from_me)
        except convert.Unsupported as exc:
            self._refuse(room_id, event_id, exc.reason, exc.text)
            await stored()
            return None
        await core.messages.put_reaction(room_id, event_id, login.mxid, portal.peer, ref.gk_id, True, key)
        return await self._queue(login, portal, event_id, outgoing, remember=False, stored=stored)

    async def redaction(
        self, room_id: str, event_id: str, sender: str, redacts: str, stored: Stored = _nothing
    ) -> OutboxWork | None:
        core = self.core
        found = await self._portal_of(room_id, sender, event_id)
        if found is None:
            await stored()
            return None
        portal, login = found
        reaction = await core.messages.reaction(room_id, redacts)
        if reaction is not None:
            outgoing = convert.matrix_reaction_removal(reaction["target_gk_id"], from_me=not bool(reaction["from_me"]))
            work = await self._queue(login, portal, event_id, outgoing, remember=False, stored=stored)
            await core.messages.delete_reaction(room_id, redacts)
            return work
        ref = await core.messages.by_event(room_id, redacts)
        if ref is None or not ref.from_me:
            self._refuse(
                room_id, event_id, "m.event_not_handled", "Only your own bridged messages can be deleted for everyone."
            )
            await stored()
            return None
        return await self._queue(
            login, portal, event_id, convert.matrix_redaction(ref.gk_id), remember=False, stored=stored
        )

    async def read(self, room_id: str, sender: str, event_id: str) -> None:
        core = self.core
        found = await self._portal_of(room_id, sender)
        if found is None:
            return
        portal, login = found
        read_up_to = await core.messages.by_event(room_id, event_id)
        if read_up_to is None or not core.gatekeeper.connected(login.mxid):
            return  # not recorded: the next read receipt covers these too
        since = int(time.time() * 1000) - core.config.retention.days * 86_400_000
        refs = await core.messages.unread_from_peer(login.mxid, portal.peer, room_id, read_up_to.timestamp, since)
        unread = [ref.gk_id for ref in refs]
        if not unread:
            return
        try:
            if is_group(portal.peer):
                unread = await self._read_in_group(login, portal.peer, unread)
            else:
                await core.gatekeeper.send_read(login.mxid, portal.peer, unread)
        except GipError as exc:
            log.info("a read receipt did not go out: %s", exc.code.value)
            return
        await core.messages.record_receipts(login.mxid, portal.peer, unread, "read")

    async def _read_in_group(self, login: Login, group: str, unread: list[str]) -> list[str]:
        """A group's read receipt names the author (§9): one for each native author of the
        messages read. A local member's message needs none (their Matrix client shows it)."""
        core = self.core
        authors = await core.inbox.senders(login.mxid, group, unread)
        by_author: dict[str, list[str]] = {}
        for gk_id in unread:
            author = authors.get(gk_id)
            if author is not None and await core.logins.by_iid(author) is None:
                by_author.setdefault(author, []).append(gk_id)
        for author, ids in by_author.items():
            await core.gatekeeper.send_group_read(login.mxid, group, author, ids)
        return unread

    async def typing(self, room_id: str, sender: str, typing: bool) -> None:
        core = self.core
        found = await self._portal_of(room_id, sender)
        if found is None or not core.gatekeeper.connected(sender):
            return
        try:
            await core.gatekeeper.send_typing(sender, found[0].peer, typing)
        except GipError:
            return  # typing is a hint: one lost is no loss

    async def _queue(
        self, login: Login, portal: Portal, event_id: str, outgoing: convert.Outgoing, *, remember: bool, stored: Stored
    ) -> OutboxWork:
        core = self.core
        assert portal.room_id is not None
        async with core.db.batch():
            # The Matrix event is done once its outbox item is stored: one round trip.
            await stored()
            item, new = await core.outbox.accept(
                receiver=login.mxid,
                peer=portal.peer,
                gk_id=secrets.token_hex(10).upper(),
                kind=outgoing.message_type if remember else f"{outgoing.message_type}:nomap",
                room_id=portal.room_id,
                event_id=event_id,
                payload=outgoing.content.SerializeToString(),
            )
        # Sending is the rest of this event's handling, in the same place of the portal's
        # order: the caller runs the outbox item next.
        return OutboxWork(core, item.id, item if new else None)
