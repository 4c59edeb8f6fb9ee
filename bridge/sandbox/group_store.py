"""The sandbox's groups in its SQLite file: participants in the order they joined (the
longest-standing member is promoted when the last admin leaves), admins, subject."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from .store import SandboxStore

GROUP_SCHEMA = """
CREATE TABLE IF NOT EXISTS groups (
    jid TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    creator TEXT NOT NULL,
    t INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS group_participants (
    grp TEXT NOT NULL REFERENCES groups (jid) ON DELETE CASCADE,
    iid TEXT NOT NULL,
    admin INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL,
    PRIMARY KEY (grp, iid)
);
CREATE INDEX IF NOT EXISTS group_participants_iid ON group_participants (iid);
"""


@dataclass(frozen=True, slots=True)
class GroupRow:
    jid: str
    subject: str
    creator: str
    t: int


class GroupStore:
    def __init__(self, store: SandboxStore) -> None:
        self._db = store.db
        self._db.executescript(GROUP_SCHEMA)

    def create(self, subject: str, creator: str, t: int) -> str:
        jid = f"{secrets.randbelow(10**18):018d}@group"
        self._db.execute(
            "INSERT INTO groups (jid, subject, creator, t) VALUES (?, ?, ?, ?)", (jid, subject, creator, t)
        )
        return jid

    def group(self, jid: str) -> GroupRow | None:
        row = self._db.execute("SELECT jid, subject, creator, t FROM groups WHERE jid = ?", (jid,)).fetchone()
        return GroupRow(row["jid"], row["subject"], row["creator"], row["t"]) if row else None

    def participants(self, jid: str) -> list[tuple[str, bool]]:
        rows = self._db.execute("SELECT iid, admin FROM group_participants WHERE grp = ? ORDER BY seq", (jid,))
        return [(r["iid"], bool(r["admin"])) for r in rows.fetchall()]

    def is_member(self, jid: str, iid: str) -> bool:
        row = self._db.execute("SELECT 1 FROM group_participants WHERE grp = ? AND iid = ?", (jid, iid)).fetchone()
        return row is not None

    def is_admin(self, jid: str, iid: str) -> bool:
        row = self._db.execute("SELECT admin FROM group_participants WHERE grp = ? AND iid = ?", (jid, iid)).fetchone()
        return bool(row and row["admin"])

    def add(self, jid: str, iid: str, *, admin: bool = False) -> None:
        seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM group_participants WHERE grp = ?", (jid,))
        self._db.execute(
            "INSERT OR IGNORE INTO group_participants (grp, iid, admin, seq) VALUES (?, ?, ?, ?)",
            (jid, iid, int(admin), seq.fetchone()[0]),
        )

    def remove(self, jid: str, iid: str) -> None:
        self._db.execute("DELETE FROM group_participants WHERE grp = ? AND iid = ?", (jid, iid))

    def set_admin(self, jid: str, iid: str, admin: bool) -> None:
        self._db.execute("UPDATE group_participants SET admin = ? WHERE grp = ? AND iid = ?", (int(admin), jid, iid))

    def set_subject(self, jid: str, subject: str) -> None:
        self._db.execute("UPDATE groups SET subject = ? WHERE jid = ?", (subject, jid))

    def groups_of(self, iid: str) -> list[str]:
        rows = self._db.execute("SELECT grp FROM group_participants WHERE iid = ? ORDER BY grp", (iid,))
        return [r["grp"] for r in rows.fetchall()]

    def delete(self, jid: str) -> None:
        self._db.execute("DELETE FROM groups WHERE jid = ?", (jid,))
