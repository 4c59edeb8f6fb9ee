"""The sandbox's durable state in SQLite: a restart loses nothing that was acknowledged.

Every write commits before the caller answers the peer (the message ack, the enlistment
reply), with ``synchronous=FULL``. ``":memory:"`` keeps everything in memory for tests.
Calls are synchronous: each is a single short transaction on a local file.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    iid TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('partner', 'native')),
    uvid TEXT NOT NULL,
    integrator TEXT NOT NULL DEFAULT '',
    authkey BLOB,
    country TEXT,
    opted_in INTEGER NOT NULL DEFAULT 0,
    restricted TEXT NOT NULL DEFAULT '[]',
    read_receipts INTEGER NOT NULL DEFAULT 1,
    suspended INTEGER NOT NULL DEFAULT 0,
    eea_blocked INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    last_connected_at REAL,
    pushed INTEGER NOT NULL DEFAULT 0,
    UNIQUE (kind, integrator, uvid)
);
CREATE TABLE IF NOT EXISTS devices (
    jid TEXT PRIMARY KEY,
    iid TEXT NOT NULL REFERENCES users (iid) ON DELETE CASCADE,
    device_id INTEGER NOT NULL,
    registration_id INTEGER NOT NULL,
    identity BLOB NOT NULL,
    spk_id INTEGER NOT NULL,
    spk_pub BLOB NOT NULL,
    spk_sig BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS prekeys (
    jid TEXT NOT NULL REFERENCES devices (jid) ON DELETE CASCADE,
    key_id INTEGER NOT NULL,
    pub BLOB NOT NULL,
    PRIMARY KEY (jid, key_id)
);
CREATE TABLE IF NOT EXISTS mailbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient TEXT NOT NULL,
    kind TEXT NOT NULL,
    stanza_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    stanza BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS mailbox_recipient ON mailbox (recipient, seq);
CREATE TABLE IF NOT EXISTS seen (
    sender TEXT NOT NULL,
    stanza_id TEXT NOT NULL,
    t REAL NOT NULL,
    PRIMARY KEY (sender, stanza_id)
);
CREATE TABLE IF NOT EXISTS blocks (owner TEXT NOT NULL, blocked TEXT NOT NULL, PRIMARY KEY (owner, blocked));
CREATE TABLE IF NOT EXISTS contacts (a TEXT NOT NULL, b TEXT NOT NULL, t REAL NOT NULL, PRIMARY KEY (a, b));
CREATE TABLE IF NOT EXISTS media (
    ref TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS native_signal (
    jid TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (jid, kind, key)
);
CREATE TABLE IF NOT EXISTS native_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    iid TEXT NOT NULL,
    device TEXT NOT NULL,
    event TEXT NOT NULL,
    t REAL NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class User:
    iid: str
    kind: str
    uvid: str
    integrator: str
    authkey: bytes | None
    country: str | None
    opted_in: bool
    restricted: tuple[str, ...]
    read_receipts: bool
    suspended: bool
    eea_blocked: bool
    created_at: float
    last_connected_at: float | None
    pushed: bool


@dataclass(frozen=True, slots=True)
class DeviceKeys:
    jid: str
    iid: str
    device_id: int
    registration_id: int
    identity: bytes
    spk_id: int
    spk_pub: bytes
    spk_sig: bytes


@dataclass(frozen=True, slots=True)
class MailboxItem:
    seq: int
    recipient: str
    kind: str
    stanza_id: str
    sender: str
    stanza: bytes
    created_at: float


class SandboxStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self._depth = 0
        self.db.execute("PRAGMA foreign_keys = ON")
        if path != ":memory:":
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic, durable unit; nested uses join the outermost one."""
        if self._depth:
            self._depth += 1
            try:
                yield self.db
            finally:
                self._depth -= 1
            return
        self.db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self.db
        except BaseException:
            self._depth = 0
            self.db.execute("ROLLBACK")
            raise
        self._depth = 0
        self.db.execute("COMMIT")

    # ------------------------------------------------------------------ meta

    def get_meta(self, key: str) -> bytes | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row["value"] if row else None

    def set_meta(self, key: str, value: bytes) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # ------------------------------------------------------------------ users

    @staticmethod
    def _user(row: sqlite3.Row | None) -> User | None:
        if row is None:
            return None
        return User(
            row["iid"],
            row["kind"],
            row["uvid"],
            row["integrator"],
            row["authkey"],
            row["country"],
            bool(row["opted_in"]),
            tuple(json.loads(row["restricted"])),
            bool(row["read_receipts"]),
            bool(row["suspended"]),
            bool(row["eea_blocked"]),
            row["created_at"],
            row["last_connected_at"],
            bool(row["pushed"]),
        )

    def user(self, iid: str) -> User | None:
        return self._user(self.db.execute("SELECT * FROM users WHERE iid = ?", (iid,)).fetchone())

    def partner_by_uvid(self, integrator: str, uvid: str) -> User | None:
        row = self.db.execute(
            "SELECT * FROM users WHERE kind = 'partner' AND integrator = ? AND uvid = ?",
            (integrator, uvid),
        ).fetchone()
        return self._user(row)

    def native_by_uvid(self, uvid: str) -> User | None:
        row = self.db.execute("SELECT * FROM users WHERE kind = 'native' AND uvid = ?", (uvid,)).fetchone()
        return self._user(row)

    def users(self, kind: str) -> list[User]:
        rows = self.db.execute("SELECT * FROM users WHERE kind = ? ORDER BY created_at", (kind,)).fetchall()
        return [u for u in (self._user(r) for r in rows) if u is not None]

    def insert_user(self, iid: str, kind: str, uvid: str, now: float, **fields: Any) -> None:
        columns = ["iid", "kind", "uvid", "created_at", *fields]
        values = [iid, kind, uvid, now, *fields.values()]
        marks = ", ".join("?" for _ in columns)
        self.db.execute(f"INSERT INTO users ({', '.join(columns)}) VALUES ({marks})", values)  # noqa: S608

    _USER_FIELDS = frozenset(
        {
            "authkey",
            "country",
            "opted_in",
            "restricted",
            "read_receipts",
            "suspended",
            "eea_blocked",
            "last_connected_at",
            "pushed",
        }
    )

    def update_user(self, iid: str, **fields: Any) -> None:
        unknown = set(fields) - self._USER_FIELDS
        if unknown:
            raise ValueError(f"not user fields: {sorted(unknown)}")
        if "restricted" in fields:
            fields["restricted"] = json.dumps(sorted(fields["restricted"]))
        assignments = ", ".join(f"{name} = ?" for name in fields)
        self.db.execute(f"UPDATE users SET {assignments} WHERE iid = ?", (*fields.values(), iid))  # noqa: S608

    def delete_user(self, iid: str) -> None:
        """Opt-out: the enlistment, its devices and keys, its mailbox, blocks and media."""
        with self.transaction() as db:
            db.execute("DELETE FROM mailbox WHERE recipient = ? OR sender = ?", (iid, iid))
            db.execute("DELETE FROM blocks WHERE owner = ? OR blocked = ?", (iid, iid))
            db.execute("DELETE FROM contacts WHERE a = ? OR b = ?", (iid, iid))
            db.execute("DELETE FROM seen WHERE sender = ?", (iid,))
            db.execute("DELETE FROM media WHERE owner = ?", (iid,))
            db.execute(
                "DELETE FROM native_signal WHERE jid IN (SELECT jid FROM devices WHERE iid = ?)",
                (iid,),
            )
            db.execute("DELETE FROM users WHERE iid = ?", (iid,))

    def count_rows_for(self, iid: str) -> int:
        """How many rows anywhere still name this user (0 after an opt-out)."""
        total = 0
        for table, columns in (
            ("users", ("iid",)),
            ("devices", ("iid",)),
            ("mailbox", ("recipient", "sender")),
            ("blocks", ("owner", "blocked")),
            ("contacts", ("a", "b")),
            ("seen", ("sender",)),
            ("media", ("owner",)),
        ):
            where = " OR ".join(f"{c} = ?" for c in columns)
            row = self.db.execute(f"SELECT count(*) FROM {table} WHERE {where}", (iid,) * len(columns))  # noqa: S608
            total += row.fetchone()[0]
        total += self.db.execute("SELECT count(*) FROM prekeys WHERE jid = ?", (iid,)).fetchone()[0]
        return total

    # ------------------------------------------------------------------ devices and keys

    @staticmethod
    def _device(row: sqlite3.Row | None) -> DeviceKeys | None:
        if row is None:
            return None
        return DeviceKeys(
            row["jid"],
            row["iid"],
            row["device_id"],
            row["registration_id"],
            row["identity"],
            row["spk_id"],
            row["spk_pub"],
            row["spk_sig"],
        )

    def device(self, jid: str) -> DeviceKeys | None:
        return self._device(self.db.execute("SELECT * FROM devices WHERE jid = ?", (jid,)).fetchone())

    def devices_of(self, iid: str) -> list[DeviceKeys]:
        rows = self.db.execute("SELECT * FROM devices WHERE iid = ? ORDER BY device_id", (iid,)).fetchall()
        return [d for d in (self._device(r) for r in rows) if d is not None]

    def put_device(self, keys: DeviceKeys) -> bool:
        """Insert or replace a device's keys; report whether the identity changed."""
        old = self.device(keys.jid)
        with self.transaction() as db:
            if old is not None and old.identity != keys.identity:
                db.execute("DELETE FROM prekeys WHERE jid = ?", (keys.jid,))
            db.execute(
                "INSERT OR REPLACE INTO devices VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    keys.jid,
                    keys.iid,
                    keys.device_id,
                    keys.registration_id,
                    keys.identity,
                    keys.spk_id,
                    keys.spk_pub,
                    keys.spk_sig,
                ),
            )
        return old is not None and old.identity != keys.identity

    def remove_device(self, jid: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM native_signal WHERE jid = ?", (jid,))
            db.execute("DELETE FROM devices WHERE jid = ?", (jid,))

    def rotate_signed_prekey(self, jid: str, key_id: int, public: bytes, signature: bytes) -> None:
        self.db.execute(
            "UPDATE devices SET spk_id = ?, spk_pub = ?, spk_sig = ? WHERE jid = ?",
            (key_id, public, signature, jid),
        )

    def add_prekeys(self, jid: str, keys: list[tuple[int, bytes]]) -> None:
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO prekeys VALUES (?, ?, ?)", [(jid, i, k) for i, k in keys])

    def count_prekeys(self, jid: str) -> int:
        return self.db.execute("SELECT count(*) FROM prekeys WHERE jid = ?", (jid,)).fetchone()[0]

    def take_prekey(self, jid: str) -> tuple[int, bytes] | None:
        """Hand out one one-time prekey and delete it, as the profile requires."""
        with self.transaction() as db:
            row = db.execute("SELECT key_id, pub FROM prekeys WHERE jid = ? ORDER BY key_id LIMIT 1", (jid,)).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM prekeys WHERE jid = ? AND key_id = ?", (jid, row["key_id"]))
        return row["key_id"], row["pub"]

    # ------------------------------------------------------------------ mailbox

    def enqueue(self, recipient: str, kind: str, stanza_id: str, sender: str, stanza: bytes, now: float) -> int:
        cursor = self.db.execute(
            "INSERT INTO mailbox (recipient, kind, stanza_id, sender, stanza, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (recipient, kind, stanza_id, sender, stanza, now),
        )
        return int(cursor.lastrowid or 0)

    def pending(self, recipient: str, after_seq: int = 0) -> list[MailboxItem]:
        rows = self.db.execute(
            "SELECT * FROM mailbox WHERE recipient = ? AND seq > ? ORDER BY seq",
            (recipient, after_seq),
        ).fetchall()
        return [
            MailboxItem(
                r["seq"],
                r["recipient"],
                r["kind"],
                r["stanza_id"],
                r["sender"],
                r["stanza"],
                r["created_at"],
            )
            for r in rows
        ]

    def remove_from_mailbox(self, recipient: str, kind: str, stanza_id: str, sender: str | None = None) -> int:
        if sender is None:
            cursor = self.db.execute(
                "DELETE FROM mailbox WHERE recipient = ? AND kind = ? AND stanza_id = ?",
                (recipient, kind, stanza_id),
            )
        else:
            cursor = self.db.execute(
                "DELETE FROM mailbox WHERE recipient = ? AND kind = ? AND stanza_id = ? AND sender = ?",
                (recipient, kind, stanza_id, sender),
            )
        return cursor.rowcount

    def expire_mailbox(self, before: float) -> int:
        return self.db.execute("DELETE FROM mailbox WHERE created_at < ?", (before,)).rowcount

    def mailbox_count(self, recipient: str) -> int:
        return self.db.execute("SELECT count(*) FROM mailbox WHERE recipient = ?", (recipient,)).fetchone()[0]

    # ------------------------------------------------------------------ dedupe, blocks, contacts

    def mark_seen(self, sender: str, stanza_id: str, now: float) -> bool:
        """Record a message id; False if it was seen before (a resend)."""
        cursor = self.db.execute("INSERT OR IGNORE INTO seen VALUES (?, ?, ?)", (sender, stanza_id, now))
        return cursor.rowcount == 1

    def unmark_seen(self, sender: str, stanza_id: str) -> None:
        self.db.execute("DELETE FROM seen WHERE sender = ? AND stanza_id = ?", (sender, stanza_id))

    def is_blocked(self, owner: str, other: str) -> bool:
        row = self.db.execute("SELECT 1 FROM blocks WHERE owner = ? AND blocked = ?", (owner, other)).fetchone()
        return row is not None

    def set_block(self, owner: str, other: str, blocked: bool) -> None:
        if blocked:
            self.db.execute("INSERT OR IGNORE INTO blocks VALUES (?, ?)", (owner, other))
        else:
            self.db.execute("DELETE FROM blocks WHERE owner = ? AND blocked = ?", (owner, other))

    def blocklist(self, owner: str) -> list[str]:
        rows = self.db.execute("SELECT blocked FROM blocks WHERE owner = ? ORDER BY blocked", (owner,)).fetchall()
        return [r["blocked"] for r in rows]

    def add_contact(self, a: str, b: str, now: float) -> bool:
        """Remember that a and b talked; True the first time (a first contact)."""
        first = self.db.execute("INSERT OR IGNORE INTO contacts VALUES (?, ?, ?)", (a, b, now)).rowcount == 1
        self.db.execute("INSERT OR IGNORE INTO contacts VALUES (?, ?, ?)", (b, a, now))
        return first

    def contacts_of(self, iid: str) -> list[str]:
        return [r["b"] for r in self.db.execute("SELECT b FROM contacts WHERE a = ?", (iid,)).fetchall()]

    def first_contacts_since(self, iid: str, since: float) -> int:
        return self.db.execute("SELECT count(*) FROM contacts WHERE a = ? AND t >= ?", (iid, since)).fetchone()[0]

    # ------------------------------------------------------------------ media

    def add_media(self, ref: str, owner: str, path: str, size: int, now: float) -> None:
        self.db.execute("INSERT INTO media VALUES (?, ?, ?, ?, ?)", (ref, owner, path, size, now))

    def media(self, ref: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM media WHERE ref = ?", (ref,)).fetchone()

    def expired_media(self, before: float) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM media WHERE created_at < ?", (before,)).fetchall()

    def delete_media(self, ref: str) -> None:
        self.db.execute("DELETE FROM media WHERE ref = ?", (ref,))

    # ------------------------------------------------------------------ natives' own state

    def signal_get(self, jid: str, kind: str, key: str) -> bytes | None:
        row = self.db.execute(
            "SELECT value FROM native_signal WHERE jid = ? AND kind = ? AND key = ?",
            (jid, kind, key),
        ).fetchone()
        return row["value"] if row else None

    def signal_put(self, jid: str, kind: str, key: str, value: bytes) -> None:
        self.db.execute("INSERT OR REPLACE INTO native_signal VALUES (?, ?, ?, ?)", (jid, kind, key, value))

    def signal_delete(self, jid: str, kind: str, key: str | None = None) -> None:
        if key is None:
            self.db.execute("DELETE FROM native_signal WHERE jid = ? AND kind = ?", (jid, kind))
        else:
            self.db.execute("DELETE FROM native_signal WHERE jid = ? AND kind = ? AND key = ?", (jid, kind, key))

    def signal_count(self, jid: str, kind: str) -> int:
        return self.db.execute("SELECT count(*) FROM native_signal WHERE jid = ? AND kind = ?", (jid, kind)).fetchone()[
            0
        ]

    def log_native(self, iid: str, device: str, event: dict[str, Any], now: float) -> None:
        self.db.execute(
            "INSERT INTO native_log (iid, device, event, t) VALUES (?, ?, ?, ?)",
            (iid, device, json.dumps(event), now),
        )

    def native_events(self, iid: str, after: int = 0) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT seq, device, event, t FROM native_log WHERE iid = ? AND seq > ? ORDER BY seq",
            (iid, after),
        ).fetchall()
        # logged_at: when the sandbox logged it (a message's own "t" is its sender's, in seconds).
        return [
            {"seq": r["seq"], "device": r["device"], "t": r["t"], "logged_at": r["t"], **json.loads(r["event"])}
            for r in rows
        ]
