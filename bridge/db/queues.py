"""The durable outbox (Matrix → gatekeeper) and inbox (gatekeeper → Matrix).

Outbox: a Matrix event is accepted once (by room and event id, so that a replay changes
nothing) and keeps its gatekeeper message id for every retry. Its prepared stanza (one
ciphertext per device) is stored with the advanced Signal sessions before it is sent, and
every resend sends that stanza: the gatekeeper's dedupe makes the send exactly-once and no
message key is used twice. After sending, the content stays sealed for a while, to answer
a peer's retry receipt; the retention job erases it.

Inbox: everything from the gatekeeper that must reach a portal: messages (stored with
their session in one transaction, before the delivery receipt), receipts and notices;
accepted once per (sender, kind, id). Contents are sealed while pending and erased once
the item is done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .database import Database, Row
from .later import LaterWrites
from .sealed import Sealer


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class OutboxItem:
    id: int
    receiver: str
    peer: str
    gk_id: str
    kind: str
    room_id: str
    event_id: str
    payload: bytes | None = field(repr=False)
    prepared: bytes | None = field(repr=False)
    state: str
    attempts: int
    last_error: str | None
    created_at: int

    @property
    def message_type(self) -> str:
        return self.kind.split(":")[0]

    @property
    def mapped(self) -> bool:
        """Whether the sent message gets a place in the message map (not reactions,
        edits and deletions, which point at one)."""
        return not self.kind.endswith(":nomap")


@dataclass(frozen=True)
class InboxItem:
    id: int
    receiver: str
    sender: str  # the sending device
    peer: str  # the sending user: the portal's peer
    gk_id: str
    kind: str  # a message type (text, media, reaction, revoke), receipt:*, identity, undecryptable
    payload: bytes | None = field(repr=False)
    state: str
    event_id: str | None
    sent_at: int | None  # the gatekeeper's time, unix ms
    attempts: int
    received_at: int

    @property
    def is_message(self) -> bool:
        return ":" not in self.kind and self.kind not in ("identity", "undecryptable")


_SENT = "UPDATE outbox SET state = 'sent', last_error = NULL, updated_at = $1, done_at = $1 WHERE id = $2"
_POSTED = "UPDATE inbox SET state = 'posted', payload = NULL, event_id = $1, done_at = $2 WHERE id = $3"


class Outbox:
    def __init__(self, db: Database, sealer: Sealer, later: LaterWrites | None = None) -> None:
        self._db = db
        self._sealer = sealer
        self._later = later

    def _open(self, row: Row, column: str) -> bytes | None:
        value = row[column]
        if value is None:
            return None
        context = "outbox" if column == "payload" else f"outbox.{column}"
        return self._sealer.open(value, context, row["receiver"], row["gk_id"])

    def _item(self, row: Row) -> OutboxItem:
        return OutboxItem(
            row["id"],
            row["receiver"],
            row["peer"],
            row["gk_id"],
            row["kind"],
            row["room_id"],
            row["event_id"],
            self._open(row, "payload"),
            self._open(row, "prepared"),
            row["state"],
            row["attempts"],
            row["last_error"],
            row["created_at"],
        )

    async def accept(
        self, *, receiver: str, peer: str, gk_id: str, kind: str, room_id: str, event_id: str, payload: bytes
    ) -> tuple[OutboxItem, bool]:
        """Queue a Matrix event for sending; returns the item and whether it is new."""
        now = _now_ms()
        row = await self._db.fetchrow(
            "INSERT INTO outbox (receiver, peer, gk_id, kind, room_id, event_id, payload, state,"
            " attempts, created_at, updated_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8, $8)"
            " ON CONFLICT (room_id, event_id) DO NOTHING RETURNING *",
            receiver,
            peer,
            gk_id,
            kind,
            room_id,
            event_id,
            self._sealer.seal(payload, "outbox", receiver, gk_id),
            now,
        )
        if row is not None:
            return self._item(row), True
        existing = await self.by_event(room_id, event_id)
        assert existing is not None
        return existing, False

    async def by_event(self, room_id: str, event_id: str) -> OutboxItem | None:
        row = await self._db.fetchrow("SELECT * FROM outbox WHERE room_id = $1 AND event_id = $2", room_id, event_id)
        return self._item(row) if row else None

    async def count_pending(self) -> int:
        return int(await self._db.fetchval("SELECT COUNT(*) FROM outbox WHERE state = 'pending'"))

    async def pending(self, receiver: str | None = None) -> list[OutboxItem]:
        if receiver is None:
            rows = await self._db.fetch("SELECT * FROM outbox WHERE state = 'pending' ORDER BY id")
        else:
            rows = await self._db.fetch(
                "SELECT * FROM outbox WHERE receiver = $1 AND state = 'pending' ORDER BY id", receiver
            )
        return [self._item(r) for r in rows]

    async def pending_for(self, receiver: str, peer: str) -> list[OutboxItem]:
        rows = await self._db.fetch(
            "SELECT * FROM outbox WHERE receiver = $1 AND peer = $2 AND state = 'pending' ORDER BY id", receiver, peer
        )
        return [self._item(r) for r in rows]

    async def by_gk_id(self, receiver: str, gk_id: str) -> OutboxItem | None:
        row = await self._db.fetchrow("SELECT * FROM outbox WHERE receiver = $1 AND gk_id = $2", receiver, gk_id)
        return self._item(row) if row else None

    async def get(self, item_id: int) -> OutboxItem | None:
        row = await self._db.fetchrow("SELECT * FROM outbox WHERE id = $1", item_id)
        return self._item(row) if row else None

    async def set_prepared(self, item: OutboxItem, prepared: bytes) -> None:
        """The stanza as encrypted: called in the transaction that stores its sessions."""
        await self._db.execute(
            "UPDATE outbox SET prepared = $1, updated_at = $2 WHERE id = $3",
            self._sealer.seal(prepared, "outbox.prepared", item.receiver, item.gk_id),
            _now_ms(),
            item.id,
        )

    async def attempted(self, item_id: int, error: str | None) -> int:
        """One more failed attempt; returns how many there were."""
        value = await self._db.fetchval(
            "UPDATE outbox SET attempts = attempts + 1, last_error = $1, updated_at = $2 WHERE id = $3"
            " RETURNING attempts",
            error,
            _now_ms(),
            item_id,
        )
        return int(value or 0)

    async def mark_sent(self, item_id: int) -> None:
        """The gatekeeper stored it. The content stays (sealed) to answer retry receipts."""
        await self._db.execute(_SENT, _now_ms(), item_id)

    async def mark_sent_later(self, item_id: int) -> None:
        """:meth:`mark_sent`, landing a moment later with others (a replay resends the
        same stanza, which the gatekeeper shows once)."""
        if self._later is None:
            await self.mark_sent(item_id)
        else:
            await self._later.add(_SENT, _now_ms(), item_id)

    async def mark_failed(self, item_id: int, error: str) -> None:
        now = _now_ms()
        await self._db.execute(
            "UPDATE outbox SET state = 'failed', payload = NULL, prepared = NULL, last_error = $1, updated_at = $2,"
            " done_at = $2 WHERE id = $3",
            error,
            now,
            item_id,
        )

    async def forget_contents(self, before_ms: int, keep_per_receiver: int) -> int:
        """Erase the contents of sent messages older than ``before_ms``, and beyond the
        newest ``keep_per_receiver`` of each user: retry receipts cannot reach them then."""
        erased = await self._db.execute(
            "UPDATE outbox SET payload = NULL, prepared = NULL WHERE state = 'sent' AND payload IS NOT NULL"
            " AND done_at < $1",
            before_ms,
        )
        erased += await self._db.execute(
            "UPDATE outbox SET payload = NULL, prepared = NULL WHERE id IN (SELECT id FROM ("
            " SELECT id, row_number() OVER (PARTITION BY receiver ORDER BY id DESC) AS newer FROM outbox"
            " WHERE state = 'sent' AND payload IS NOT NULL) ranked WHERE newer > $1)",
            keep_per_receiver,
        )
        return erased

    async def prune(self, before_ms: int) -> int:
        """Done rows older than ``before_ms`` go (a resend of one that old is not possible:
        the gatekeeper's ack came long ago)."""
        return await self._db.execute(
            "DELETE FROM outbox WHERE state IN ('sent', 'failed') AND done_at < $1", before_ms
        )


class Inbox:
    def __init__(self, db: Database, sealer: Sealer, later: LaterWrites | None = None) -> None:
        self._db = db
        self._sealer = sealer
        self._later = later

    def _item(self, row: Row) -> InboxItem:
        payload = row["payload"]
        if payload is not None:
            payload = self._sealer.open(payload, "inbox", row["receiver"], row["sender"], row["gk_id"])
        return InboxItem(
            row["id"],
            row["receiver"],
            row["sender"],
            row["peer"] or row["sender"],
            row["gk_id"],
            row["kind"],
            payload,
            row["state"],
            row["event_id"],
            row["sent_at"],
            row["attempts"],
            row["received_at"],
        )

    async def accept(
        self,
        *,
        receiver: str,
        sender: str,
        peer: str,
        gk_id: str,
        kind: str,
        payload: bytes,
        sent_at: int | None = None,
    ) -> tuple[InboxItem, bool]:
        """Store a gatekeeper event before acknowledging it; a redelivery is not new."""
        row = await self._db.fetchrow(
            "INSERT INTO inbox (receiver, sender, peer, gk_id, kind, payload, state, sent_at, received_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8)"
            " ON CONFLICT (receiver, sender, kind, gk_id) DO NOTHING RETURNING *",
            receiver,
            sender,
            peer,
            gk_id,
            kind,
            self._sealer.seal(payload, "inbox", receiver, sender, gk_id),
            sent_at,
            _now_ms(),
        )
        if row is not None:
            return self._item(row), True
        existing = await self._db.fetchrow(
            "SELECT * FROM inbox WHERE receiver = $1 AND sender = $2 AND kind = $3 AND gk_id = $4",
            receiver,
            sender,
            kind,
            gk_id,
        )
        assert existing is not None
        return self._item(existing), False

    async def get(self, item_id: int) -> InboxItem | None:
        row = await self._db.fetchrow("SELECT * FROM inbox WHERE id = $1", item_id)
        return self._item(row) if row else None

    async def message(self, receiver: str, peer: str, gk_id: str) -> InboxItem | None:
        """A message (not a receipt or notice) from any device of ``peer``, by its id."""
        rows = await self._db.fetch(
            "SELECT * FROM inbox WHERE receiver = $1 AND peer = $2 AND gk_id = $3 ORDER BY id", receiver, peer, gk_id
        )
        items = [self._item(r) for r in rows]
        return next((i for i in items if i.is_message), None)

    async def senders(self, receiver: str, peer: str, gk_ids: list[str]) -> dict[str, str]:
        """The author (the bare user of the sending device) of each of these messages the
        inbox still holds: in a group, who wrote what."""
        found: dict[str, str] = {}
        for start in range(0, len(gk_ids), 500):
            chunk = gk_ids[start : start + 500]
            marks = ", ".join(f"${i}" for i in range(3, len(chunk) + 3))
            rows = await self._db.fetch(
                f"SELECT gk_id, sender, kind FROM inbox WHERE receiver = $1 AND peer = $2 AND gk_id IN ({marks})",  # noqa: S608 - placeholders only
                receiver,
                peer,
                *chunk,
            )
            for row in rows:
                if ":" not in row["kind"] and row["kind"] not in ("identity", "undecryptable", "group"):
                    user, _, server = str(row["sender"]).partition("@")
                    found[row["gk_id"]] = f"{user.split(':', 1)[0]}@{server}"
        return found

    async def count_pending(self) -> int:
        return int(await self._db.fetchval("SELECT COUNT(*) FROM inbox WHERE state = 'pending'"))

    async def pending(self, receiver: str | None = None) -> list[InboxItem]:
        if receiver is None:
            rows = await self._db.fetch("SELECT * FROM inbox WHERE state = 'pending' ORDER BY id")
        else:
            rows = await self._db.fetch(
                "SELECT * FROM inbox WHERE receiver = $1 AND state = 'pending' ORDER BY id", receiver
            )
        return [self._item(r) for r in rows]

    async def pending_for(self, receiver: str, peer: str) -> list[InboxItem]:
        rows = await self._db.fetch(
            "SELECT * FROM inbox WHERE receiver = $1 AND peer = $2 AND state = 'pending' ORDER BY id", receiver, peer
        )
        return [self._item(r) for r in rows]

    async def attempted(self, item_id: int, error: str | None) -> int:
        value = await self._db.fetchval(
            "UPDATE inbox SET attempts = attempts + 1, last_error = $1 WHERE id = $2 RETURNING attempts",
            error,
            item_id,
        )
        return int(value or 0)

    async def mark_posted(self, item_id: int, event_id: str | None) -> None:
        """Done (posted to Matrix, or nothing to post): keep the event id, forget the content."""
        await self._db.execute(_POSTED, event_id, _now_ms(), item_id)

    async def mark_posted_later(self, item_id: int, event_id: str | None) -> None:
        """:meth:`mark_posted`, landing a moment later with others (a replay posts under the
        same transaction id, which the homeserver answers with the same event)."""
        if self._later is None:
            await self.mark_posted(item_id, event_id)
        else:
            await self._later.add(_POSTED, event_id, _now_ms(), item_id)

    async def mark_failed(self, item_id: int, error: str) -> None:
        await self._db.execute(
            "UPDATE inbox SET state = 'failed', payload = NULL, last_error = $1, done_at = $2 WHERE id = $3",
            error,
            _now_ms(),
            item_id,
        )

    async def prune(self, before_ms: int) -> int:
        """Done rows older than ``before_ms`` go. The gatekeeper only redelivers what we did
        not acknowledge, so an old done row no longer guards against a duplicate."""
        return await self._db.execute(
            "DELETE FROM inbox WHERE state IN ('posted', 'failed') AND done_at < $1", before_ms
        )
