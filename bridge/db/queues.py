"""The durable outbox (Matrix → gatekeeper) and inbox (gatekeeper → Matrix).

Outbox: a Matrix event is accepted once (by room and event id, so a homeserver's resend
of a transaction changes nothing) and keeps its gatekeeper message id for every retry, so
the gatekeeper's dedupe makes the send exactly-once across crashes. Inbox: a gatekeeper
message is stored before its delivery receipt goes out and is accepted once per (sender,
id). Contents are sealed while pending and erased once the item is done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .database import Database, Row
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
    state: str
    attempts: int
    last_error: str | None


@dataclass(frozen=True)
class InboxItem:
    id: int
    receiver: str
    sender: str
    gk_id: str
    kind: str
    payload: bytes | None = field(repr=False)
    state: str
    event_id: str | None


class Outbox:
    def __init__(self, db: Database, sealer: Sealer) -> None:
        self._db = db
        self._sealer = sealer

    def _item(self, row: Row) -> OutboxItem:
        payload = row["payload"]
        if payload is not None:
            payload = self._sealer.open(payload, "outbox", row["receiver"], row["gk_id"])
        return OutboxItem(
            row["id"],
            row["receiver"],
            row["peer"],
            row["gk_id"],
            row["kind"],
            row["room_id"],
            row["event_id"],
            payload,
            row["state"],
            row["attempts"],
            row["last_error"],
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
        existing = await self._db.fetchrow(
            "SELECT * FROM outbox WHERE room_id = $1 AND event_id = $2", room_id, event_id
        )
        assert existing is not None
        return self._item(existing), False

    async def pending(self, receiver: str | None = None) -> list[OutboxItem]:
        if receiver is None:
            rows = await self._db.fetch("SELECT * FROM outbox WHERE state = 'pending' ORDER BY id")
        else:
            rows = await self._db.fetch(
                "SELECT * FROM outbox WHERE receiver = $1 AND state = 'pending' ORDER BY id", receiver
            )
        return [self._item(r) for r in rows]

    async def by_gk_id(self, receiver: str, gk_id: str) -> OutboxItem | None:
        row = await self._db.fetchrow("SELECT * FROM outbox WHERE receiver = $1 AND gk_id = $2", receiver, gk_id)
        return self._item(row) if row else None

    async def get(self, item_id: int) -> OutboxItem | None:
        row = await self._db.fetchrow("SELECT * FROM outbox WHERE id = $1", item_id)
        return self._item(row) if row else None

    async def attempted(self, item_id: int, error: str | None) -> None:
        await self._db.execute(
            "UPDATE outbox SET attempts = attempts + 1, last_error = $1, updated_at = $2 WHERE id = $3",
            error,
            _now_ms(),
            item_id,
        )

    async def mark_sent(self, item_id: int) -> None:
        """The gatekeeper stored it: forget the content."""
        await self._db.execute(
            "UPDATE outbox SET state = 'sent', payload = NULL, last_error = NULL, updated_at = $1 WHERE id = $2",
            _now_ms(),
            item_id,
        )

    async def mark_failed(self, item_id: int, error: str) -> None:
        await self._db.execute(
            "UPDATE outbox SET state = 'failed', payload = NULL, last_error = $1, updated_at = $2 WHERE id = $3",
            error,
            _now_ms(),
            item_id,
        )


class Inbox:
    def __init__(self, db: Database, sealer: Sealer) -> None:
        self._db = db
        self._sealer = sealer

    def _item(self, row: Row) -> InboxItem:
        payload = row["payload"]
        if payload is not None:
            payload = self._sealer.open(payload, "inbox", row["receiver"], row["sender"], row["gk_id"])
        return InboxItem(
            row["id"],
            row["receiver"],
            row["sender"],
            row["gk_id"],
            row["kind"],
            payload,
            row["state"],
            row["event_id"],
        )

    async def accept(
        self, *, receiver: str, sender: str, gk_id: str, kind: str, payload: bytes
    ) -> tuple[InboxItem, bool]:
        """Store a decrypted gatekeeper message before acknowledging it; a redelivery is not new."""
        row = await self._db.fetchrow(
            "INSERT INTO inbox (receiver, sender, gk_id, kind, payload, state, received_at)"
            " VALUES ($1, $2, $3, $4, $5, 'pending', $6)"
            " ON CONFLICT (receiver, sender, gk_id) DO NOTHING RETURNING *",
            receiver,
            sender,
            gk_id,
            kind,
            self._sealer.seal(payload, "inbox", receiver, sender, gk_id),
            _now_ms(),
        )
        if row is not None:
            return self._item(row), True
        existing = await self._db.fetchrow(
            "SELECT * FROM inbox WHERE receiver = $1 AND sender = $2 AND gk_id = $3", receiver, sender, gk_id
        )
        assert existing is not None
        return self._item(existing), False

    async def get(self, item_id: int) -> InboxItem | None:
        row = await self._db.fetchrow("SELECT * FROM inbox WHERE id = $1", item_id)
        return self._item(row) if row else None

    async def pending(self, receiver: str | None = None) -> list[InboxItem]:
        if receiver is None:
            rows = await self._db.fetch("SELECT * FROM inbox WHERE state = 'pending' ORDER BY id")
        else:
            rows = await self._db.fetch(
                "SELECT * FROM inbox WHERE receiver = $1 AND state = 'pending' ORDER BY id", receiver
            )
        return [self._item(r) for r in rows]

    async def mark_posted(self, item_id: int, event_id: str) -> None:
        """Posted to Matrix: keep the event id for dedupe, forget the content."""
        await self._db.execute(
            "UPDATE inbox SET state = 'posted', payload = NULL, event_id = $1 WHERE id = $2",
            event_id,
            item_id,
        )

    async def mark_failed(self, item_id: int) -> None:
        await self._db.execute("UPDATE inbox SET state = 'failed', payload = NULL WHERE id = $1", item_id)
