"""What the tests count to prove a login was erased."""

from __future__ import annotations

from bridge.db.database import Database

USER_TABLES = (
    ("logins", "mxid"),
    ("signal_pre_keys", "mxid"),
    ("signal_signed_pre_keys", "mxid"),
    ("signal_sessions", "mxid"),
    ("signal_identities", "mxid"),
    ("signal_sender_keys", "mxid"),
    ("portals", "receiver"),
    ("messages", "receiver"),
    ("reactions", "receiver"),
    ("receipts", "receiver"),
    ("outbox", "receiver"),
    ("inbox", "receiver"),
    ("retry_receipts", "receiver"),
    ("partner_media", "owner"),
)


async def rows_left(db: Database, mxid: str) -> dict[str, int]:
    """Tables that still hold rows of ``mxid`` (empty after an erase)."""
    left = {}
    for table, column in USER_TABLES:
        count = await db.fetchval(f"SELECT count(*) FROM {table} WHERE {column} = $1", mxid)
        if count:
            left[table] = count
    return left
