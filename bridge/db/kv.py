"""Small durable values of the bridge's own (a sync position, say), by name."""

from __future__ import annotations

import time

from .database import Database


class KeyValueStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, name: str) -> str | None:
        return await self._db.fetchval("SELECT value FROM kv WHERE name = $1", name)

    async def put(self, name: str, value: str) -> None:
        await self._db.execute(
            "INSERT INTO kv (name, value, updated_at) VALUES ($1, $2, $3)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            name,
            value,
            int(time.time() * 1000),
        )
