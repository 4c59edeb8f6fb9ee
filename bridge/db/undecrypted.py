"""Encrypted Matrix events waiting for their room key (ciphertext only, never plaintext)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from .database import Database, Row


@dataclass(frozen=True)
class Undecrypted:
    event_id: str
    room_id: str
    session_id: str
    event: str  # the event as the homeserver sent it, JSON
    received_at: int
    notice_event_id: str | None


class UndecryptedStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, event_id: str, room_id: str, session_id: str, event: str) -> bool:
        """Keep an event; False when it is already kept (the homeserver resent it)."""
        added = await self._db.execute(
            "INSERT INTO undecrypted_events (event_id, room_id, session_id, event, received_at) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING",
            event_id,
            room_id,
            session_id,
            event,
            int(time.time() * 1000),
        )
        return added > 0

    async def get(self, event_id: str) -> Undecrypted | None:
        row = await self._db.fetchrow("SELECT * FROM undecrypted_events WHERE event_id = $1", event_id)
        return _row(row) if row is not None else None

    async def for_session(self, session_id: str) -> list[Undecrypted]:
        rows = await self._db.fetch(
            "SELECT * FROM undecrypted_events WHERE session_id = $1 ORDER BY received_at", session_id
        )
        return [_row(row) for row in rows]

    async def all(self) -> list[Undecrypted]:
        return [_row(row) for row in await self._db.fetch("SELECT * FROM undecrypted_events ORDER BY received_at")]

    async def noticed(self, event_id: str, notice_event_id: str) -> None:
        await self._db.execute(
            "UPDATE undecrypted_events SET notice_event_id = $2 WHERE event_id = $1", event_id, notice_event_id
        )

    async def remove(self, event_id: str) -> bool:
        """Take an event out; False when another task took it first (it is handled once)."""
        return await self._db.execute("DELETE FROM undecrypted_events WHERE event_id = $1", event_id) > 0

    async def expire(self, before_ms: int) -> list[Undecrypted]:
        rows = await self._db.fetch("SELECT * FROM undecrypted_events WHERE received_at < $1", before_ms)
        gone = [_row(row) for row in rows]
        for item in gone:
            await self.remove(item.event_id)
        return gone


def _row(row: Row) -> Undecrypted:
    return Undecrypted(
        row["event_id"], row["room_id"], row["session_id"], row["event"], row["received_at"], row["notice_event_id"]
    )
