"""The Matrix edge: every event of an appservice transaction, stored before the 200.

As Synapse keeps its own appservice outbox (``create_appservice_txn`` → send →
``complete_appservice_txn``), the bridge keeps what a transaction brought until it has
handled it: the homeserver hears 200 only once the events are durable, a resent
transaction conflicts on (txn_id, seq) and changes nothing, and one event that fails is
retried or failed on its own, never taking the others with it. Bodies are sealed (room
events of unencrypted rooms are plaintext).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from .database import Database, Row
from .sealed import Sealer

# What a row holds: a room event, a read receipt (ephemeral), a to-device event, or a
# device-list change (MSC3202) that must not be lost any more than a room key.
KINDS = ("event", "receipt", "to_device", "device_lists")


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class StoredEvent:
    id: int
    txn_id: str
    seq: int
    kind: str
    room_id: str | None
    event_id: str | None
    body: dict[str, Any] = field(repr=False)
    attempts: int
    created_at: int


@dataclass(frozen=True)
class NewEvent:
    kind: str
    body: dict[str, Any] = field(repr=False)
    room_id: str | None = None
    event_id: str | None = None


class MatrixEventStore:
    def __init__(self, db: Database, sealer: Sealer) -> None:
        self._db = db
        self._sealer = sealer

    def _event(self, row: Row) -> StoredEvent:
        body = json.loads(self._sealer.open(row["body"], "matrix_events", row["txn_id"], str(row["seq"])))
        return StoredEvent(
            row["id"],
            row["txn_id"],
            row["seq"],
            row["kind"],
            row["room_id"],
            row["event_id"],
            body,
            row["attempts"],
            row["created_at"],
        )

    async def store_transaction(self, txn_id: str, events: list[NewEvent]) -> list[StoredEvent]:
        """Store a transaction's events in one statement; returns the rows it added, in
        order, or nothing for a transaction stored before (the homeserver resent it)."""
        if not events:
            return []
        now = _now_ms()
        values: list[Any] = []
        rows: list[str] = []
        for seq, event in enumerate(events):
            body = json.dumps(event.body, separators=(",", ":")).encode()
            sealed = self._sealer.seal(body, "matrix_events", txn_id, str(seq))
            n = len(values)
            rows.append(f"(${n + 1}, ${n + 2}, ${n + 3}, ${n + 4}, ${n + 5}, ${n + 6}, 'pending', 0, ${n + 7})")
            values.extend((txn_id, seq, event.room_id, event.event_id, event.kind, sealed, now))
        # The statement holds placeholders only ($1, $2, …): one per value, numbered here.
        columns = "txn_id, seq, room_id, event_id, kind, body, state, attempts, created_at"
        # A resent transaction conflicts on (txn_id, seq); a room event that catch-up took in
        # before its transaction came conflicts on event_id: either way it is stored once.
        tail = "ON CONFLICT DO NOTHING RETURNING id, seq"
        query = f"INSERT INTO matrix_events ({columns}) VALUES {', '.join(rows)} {tail}"  # noqa: S608
        inserted = await self._db.fetch(query, *values)
        ids = {row["seq"]: row["id"] for row in inserted}
        return [
            StoredEvent(ids[seq], txn_id, seq, e.kind, e.room_id, e.event_id, e.body, 0, now)
            for seq, e in enumerate(events)
            if seq in ids
        ]

    async def known(self, event_ids: list[str]) -> set[str]:
        """Which of these room events a transaction brought (in the last day: older rows go)."""
        if not event_ids:
            return set()
        marks = ", ".join(f"${i + 1}" for i in range(len(event_ids)))
        query = f"SELECT event_id FROM matrix_events WHERE event_id IN ({marks})"  # noqa: S608 - placeholders only
        return {row["event_id"] for row in await self._db.fetch(query, *event_ids)}

    async def active_rooms(self, since_ms: int) -> list[str]:
        """Rooms that had events since ``since_ms``."""
        rows = await self._db.fetch(
            "SELECT DISTINCT room_id FROM matrix_events WHERE created_at >= $1 AND room_id IS NOT NULL", since_ms
        )
        return [row["room_id"] for row in rows]

    async def pending(self, kinds: tuple[str, ...] = KINDS) -> list[StoredEvent]:
        rows = await self._db.fetch("SELECT * FROM matrix_events WHERE state = 'pending' ORDER BY id")
        return [self._event(r) for r in rows if r["kind"] in kinds]

    async def pending_in_room(self, room_id: str) -> list[StoredEvent]:
        rows = await self._db.fetch(
            "SELECT * FROM matrix_events WHERE state = 'pending' AND room_id = $1 ORDER BY id", room_id
        )
        return [self._event(r) for r in rows]

    async def get(self, event_row: int) -> StoredEvent | None:
        row = await self._db.fetchrow("SELECT * FROM matrix_events WHERE id = $1 AND state = 'pending'", event_row)
        return self._event(row) if row else None

    async def attempted(self, event_row: int, error: str) -> int:
        value = await self._db.fetchval(
            "UPDATE matrix_events SET attempts = attempts + 1, last_error = $1 WHERE id = $2 RETURNING attempts",
            error,
            event_row,
        )
        return int(value or 0)

    async def mark_done(self, event_row: int) -> None:
        """Handled: the body goes (what must stay, the outbox holds)."""
        await self._db.execute(
            "UPDATE matrix_events SET state = 'done', body = NULL, done_at = $1 WHERE id = $2", _now_ms(), event_row
        )

    async def mark_failed(self, event_row: int, error: str) -> None:
        await self._db.execute(
            "UPDATE matrix_events SET state = 'failed', body = NULL, last_error = $1, done_at = $2 WHERE id = $3",
            error,
            _now_ms(),
            event_row,
        )

    async def prune(self, before_ms: int) -> int:
        """Handled rows go after a while; a homeserver resends a transaction within minutes."""
        return await self._db.execute(
            "DELETE FROM matrix_events WHERE state IN ('done', 'failed') AND done_at < $1", before_ms
        )
