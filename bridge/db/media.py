"""Rows of the Partner media store: which blob files exist, whose, how large, since when.

The blobs are files (``bridge.gatekeeper.media_store``); a row is written once its file is
complete, so a row always names a whole file, and a file without a row is an orphan of a
crash that the collector removes.
"""

from __future__ import annotations

from dataclasses import dataclass

from .database import Database


@dataclass(frozen=True)
class PartnerMediaRow:
    ref: str
    owner: str
    size: int
    created_at: int


class PartnerMediaRows:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def put(self, row: PartnerMediaRow) -> None:
        await self._db.execute(
            "INSERT INTO partner_media (ref, owner, size, created_at) VALUES ($1, $2, $3, $4)",
            row.ref,
            row.owner,
            row.size,
            row.created_at,
        )

    async def get(self, ref: str) -> PartnerMediaRow | None:
        row = await self._db.fetchrow("SELECT ref, owner, size, created_at FROM partner_media WHERE ref = $1", ref)
        return PartnerMediaRow(row["ref"], row["owner"], row["size"], row["created_at"]) if row else None

    async def used_by(self, owner: str) -> int:
        """Bytes of ``owner``'s blobs in the store."""
        return int(await self._db.fetchval("SELECT COALESCE(SUM(size), 0) FROM partner_media WHERE owner = $1", owner))

    async def expired(self, before_ms: int, limit: int = 1000) -> list[str]:
        rows = await self._db.fetch(
            "SELECT ref FROM partner_media WHERE created_at < $1 ORDER BY created_at LIMIT $2", before_ms, limit
        )
        return [row["ref"] for row in rows]

    async def known(self, refs: list[str]) -> set[str]:
        """Which of ``refs`` have a row."""
        found: set[str] = set()
        for start in range(0, len(refs), 500):
            chunk = refs[start : start + 500]
            marks = ", ".join(f"${i + 1}" for i in range(len(chunk)))
            rows = await self._db.fetch(f"SELECT ref FROM partner_media WHERE ref IN ({marks})", *chunk)  # noqa: S608
            found.update(row["ref"] for row in rows)
        return found

    async def delete(self, refs: list[str]) -> None:
        await self._db.executemany("DELETE FROM partner_media WHERE ref = $1", [(ref,) for ref in refs])
