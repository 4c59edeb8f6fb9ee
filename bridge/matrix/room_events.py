"""A stored Matrix room event (or read receipt) as an item of its room's loop.

The connector dispatches every stored room event, in the order the homeserver sent them,
to the loop of its portal (or, for other rooms, a loop of the room's own): decrypting,
bridging and commands run there, in order with everything else of that chat. What an
event leads to (an outbox item) continues as the rest of the same item, so that nothing
of the chat overtakes it; the stored row is marked done once its effect is stored.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from mautrix.types import Event, EventType, ReceiptType

from bridge.core.errors import Refused
from bridge.core.matrix_api import SendStatus, StatusReport
from bridge.core.portal_loop import Work
from bridge.db.matrix_events import StoredEvent

if TYPE_CHECKING:
    from .connector import MatrixConnector

log = logging.getLogger(__name__)
FAILED = "The bridge could not handle this message, so it was not delivered. Send it again."


def parse_event(body: dict[str, Any]) -> Event:
    raw = dict(body)
    if raw.get("unsigned") is None:
        raw.pop("unsigned", None)
    unsigned = raw.setdefault("unsigned", {})
    if "prev_content" in raw and "prev_content" not in unsigned:
        unsigned["prev_content"] = raw["prev_content"]
    event = Event.deserialize(raw)
    if getattr(event, "state_key", None) is not None:
        event.type = event.type.with_class(EventType.Class.STATE)
    else:
        event.type = event.type.with_class(EventType.Class.MESSAGE)
    return event


def plain_message(body: dict[str, Any]) -> tuple[str, str, str, dict[str, Any]] | None:
    """(room, event id, sender, content) of a plain ``m.room.message``, read straight from
    the stored JSON: the common case needs none of mautrix's event objects."""
    content, sender = body.get("content"), body.get("sender")
    room_id, event_id = body.get("room_id"), body.get("event_id")
    if (
        body.get("type") != "m.room.message"
        or "state_key" in body
        or not isinstance(content, dict)
        or not isinstance(sender, str)
        or not isinstance(room_id, str)
        or not isinstance(event_id, str)
    ):
        return None
    return room_id, event_id, sender, content


class MatrixEventWork(Work):
    def __init__(self, connector: MatrixConnector, stored: StoredEvent, *, fresh: bool) -> None:
        self.connector = connector
        self.stored = stored
        self.name = f"Matrix {stored.kind} {stored.event_id or stored.id}"
        # A fresh item came straight from the transaction: it is pending. A replayed or
        # reloaded one may have been handled meanwhile, which the store says.
        self._fresh = fresh
        self._done = False
        self.delegate: Work | None = None

    async def _mark_done(self) -> None:
        if not self._done:
            await self.connector.stores.matrix_events.mark_done(self.stored.id)
            # Done once that write is durable: inside a batch it waits for the batch's round
            # trip, which can still fail (the database restarting), and then nothing of the
            # step was written; the next try must handle the event again, not skip it.
            self.connector.stores.db.after_commit(self._handled)

    def _handled(self) -> None:
        self._done = True

    async def run(self) -> None:
        if self.delegate is not None:
            await self.delegate.run()
            return
        if not self._done and not self._fresh and await self.connector.stores.matrix_events.get(self.stored.id) is None:
            self._done = True
        if self._done:
            await self._continue_sending()
            return
        self._fresh = False
        self.delegate = await self.connector.handle_stored(self.stored, self._mark_done)
        await self._mark_done()
        if self.delegate is not None:
            await self.delegate.run()

    async def _continue_sending(self) -> None:
        """Handled already: what it left in the outbox, if anything, goes on."""
        if self.stored.kind != "event" or self.stored.room_id is None or self.stored.event_id is None:
            return
        work = await self.connector.pending_outbox(self.stored.room_id, self.stored.event_id)
        if work is not None:
            self.delegate = work
            await work.run()

    async def attempted(self, error: BaseException) -> int:
        if self.delegate is not None:
            return await self.delegate.attempted(error)
        if self._done:
            return 1
        return await self.connector.stores.matrix_events.attempted(self.stored.id, type(error).__name__)

    async def waiting(self, error: BaseException) -> None:
        if self.delegate is not None:
            await self.delegate.waiting(error)

    async def give_up(self, error: BaseException) -> None:
        if self.delegate is not None:
            await self.delegate.give_up(error)
            return
        await self.connector.stores.matrix_events.mark_failed(self.stored.id, type(error).__name__)
        stored = self.stored
        if stored.kind == "event" and stored.room_id and stored.event_id and "state_key" not in stored.body:
            # A refusal says what was refused (a file the homeserver no longer has, say).
            text = f"{error.text[:1].upper()}{error.text[1:]}." if isinstance(error, Refused) else FAILED
            await self.connector.send_status(
                stored.room_id,
                stored.event_id,
                StatusReport(SendStatus.FAIL_PERMANENT, "m.event_not_handled", text),
                txn_id=f"dma-failed-{stored.event_id}",
            )
            if isinstance(error, Refused):
                await self.connector.send_notice(
                    stored.room_id, f"⚠️ Not delivered: {text}", txn_id=f"dma-failed-notice-{stored.event_id}"
                )


class LateEventWork(Work):
    """A kept encrypted event whose key may have come: bridged if it decrypts now."""

    def __init__(self, connector: MatrixConnector, room_id: str, event_id: str) -> None:
        self.connector = connector
        self.room_id = room_id
        self.event_id = event_id
        self.name = f"late event {event_id}"
        self.delegate: Work | None = None

    async def run(self) -> None:
        if self.delegate is None:
            decrypted = await self.connector.encrypted.late(self.event_id)
            if decrypted is None:
                return
            self.delegate = await self.connector.handle_event(decrypted, None)
        if self.delegate is not None:
            await self.delegate.run()

    async def attempted(self, error: BaseException) -> int:
        return await self.delegate.attempted(error) if self.delegate is not None else 1

    async def waiting(self, error: BaseException) -> None:
        if self.delegate is not None:
            await self.delegate.waiting(error)

    async def give_up(self, error: BaseException) -> None:
        if self.delegate is not None:
            await self.delegate.give_up(error)


def read_receipts(body: dict[str, Any]) -> list[tuple[str, str]]:
    """(event id, user) pairs of the read receipts in an ``m.receipt`` EDU."""
    pairs: list[tuple[str, str]] = []
    for event_id, receipts in (body.get("content") or {}).items():
        if not isinstance(receipts, dict):
            continue
        for user in receipts.get(str(ReceiptType.READ), {}) or {}:
            pairs.append((event_id, user))
    return pairs
