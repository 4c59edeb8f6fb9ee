"""The database layer and the migrations, on SQLite and Postgres alike."""

from __future__ import annotations

import asyncio

import pytest
from alembic import command

from bridge.db.database import Database, create_database, sqlalchemy_url
from bridge.db.upgrade import alembic_config, upgrade

TABLES = {
    "logins",
    "sender_key_holders",
    "signal_pre_keys",
    "signal_signed_pre_keys",
    "signal_sessions",
    "signal_identities",
    "signal_sender_keys",
    "puppets",
    "portals",
    "messages",
    "reactions",
    "receipts",
    "outbox",
    "inbox",
    "undecrypted_events",
    "matrix_events",
    "retry_receipts",
    "kv",
    "to_device_seen",
}


async def _tables(db: Database) -> set[str]:
    if db.dialect == "sqlite":
        rows = await db.fetch("SELECT name FROM sqlite_master WHERE type = 'table'")
    else:
        rows = await db.fetch("SELECT tablename AS name FROM pg_tables WHERE schemaname = 'public'")
    return {r["name"] for r in rows}


async def test_0006_keeps_every_portal_and_message_and_lets_a_group_room_be_shared(db: Database, db_uri: str) -> None:
    """The SQLite upgrade recreates ``portals``: the rows that point at it must stay."""
    from bridge.db.logins import LoginStore
    from bridge.db.portals import MessageRef, MessageStore, PortalStore
    from bridge.db.sealed import Sealer
    from devstack.logins import enlisted_login

    await asyncio.to_thread(command.downgrade, alembic_config(db_uri), "0005")
    logins, portals, messages = LoginStore(db, Sealer(bytes(32))), PortalStore(db), MessageStore(db)
    for mxid in ("@a:x", "@b:x"):
        await logins.insert(enlisted_login(mxid, iid=f"1-{len(mxid)}{mxid[1]}@interop"))
    await portals.insert("@a:x", "9@native", "!dm:x", False)
    await messages.put(MessageRef("@a:x", "9@native", "GK1", True, "!dm:x", "$e1", 1))
    await upgrade(db_uri)
    assert await db.fetchval("SELECT COUNT(*) FROM messages WHERE gk_id = 'GK1'") == 1
    await portals.insert("@a:x", "12@group", "!group:x", True)
    await portals.insert("@b:x", "12@group", "!group:x", True)  # one room, a row per member
    assert [p.receiver for p in await portals.of_peer("12@group")] == ["@a:x", "@b:x"]


async def test_migrations_create_the_schema_and_are_idempotent(db: Database, db_uri: str) -> None:
    assert await _tables(db) >= TABLES
    assert await db.fetchval("SELECT version_num FROM alembic_version") == "0006"
    await upgrade(db_uri)  # running again changes nothing
    await asyncio.to_thread(command.downgrade, alembic_config(db_uri), "base")
    assert not (TABLES & await _tables(db))
    await upgrade(db_uri)
    assert await _tables(db) >= TABLES


async def test_placeholders_bytes_and_transactions(db: Database) -> None:
    await db.execute(
        "INSERT INTO puppets (iid, uvid, mxid, displayname) VALUES ($1, $2, $3, $4)",
        "1@native",
        "+4915112345678",
        "@dma_x:example.org",
        "+49 1511 2345678",
    )
    assert await db.fetchval("SELECT uvid FROM puppets WHERE iid = $1", "1@native") == "+4915112345678"

    async def failing_update() -> None:
        async with db.transaction():
            await db.execute("UPDATE puppets SET displayname = $1 WHERE iid = $2", "changed", "1@native")
            raise RuntimeError("roll back")

    with pytest.raises(RuntimeError, match="roll back"):
        await failing_update()
    assert await db.fetchval("SELECT displayname FROM puppets WHERE iid = $1", "1@native") == "+49 1511 2345678"
    async with db.transaction(), db.transaction():  # nested: joins the outer one
        await db.execute("UPDATE puppets SET displayname = $1 WHERE iid = $2", "kept", "1@native")
    assert await db.fetchval("SELECT displayname FROM puppets WHERE iid = $1", "1@native") == "kept"
    assert await db.execute("DELETE FROM puppets WHERE iid = $1", "nobody") == 0


async def test_concurrent_transactions_do_not_interleave(db: Database) -> None:
    await db.execute("INSERT INTO puppets (iid, uvid, mxid, displayname) VALUES ('c', 'u', '@c:x', '0')")

    async def bump() -> None:
        async with db.transaction():
            value = int(
                await db.fetchval("SELECT displayname FROM puppets WHERE iid = 'c' FOR UPDATE")
                if db.dialect == "postgres"
                else await db.fetchval("SELECT displayname FROM puppets WHERE iid = 'c'")
            )
            await asyncio.sleep(0)
            await db.execute("UPDATE puppets SET displayname = $1 WHERE iid = 'c'", str(value + 1))

    await asyncio.gather(*(bump() for _ in range(20)))
    assert await db.fetchval("SELECT displayname FROM puppets WHERE iid = 'c'") == "20"


def test_uris() -> None:
    assert sqlalchemy_url("postgres://u@h/d") == "postgresql+asyncpg://u@h/d"
    assert sqlalchemy_url("sqlite:///x.db") == "sqlite+aiosqlite:///x.db"
    with pytest.raises(ValueError, match="unsupported database URI scheme 'mysql'"):
        create_database("mysql://x")
    with pytest.raises(ValueError, match=r"sqlite:///path/to/file\.db"):
        create_database("sqlite://relative.db")


async def test_sqlite_group_commit_shares_commits_and_returns_only_when_durable(tmp_path) -> None:
    import sqlite3

    uri = f"sqlite:///{tmp_path / 'group.db'}"
    await upgrade(uri)
    db = create_database(uri)
    await db.start()
    try:
        insert = "INSERT INTO puppets (iid, uvid, mxid, displayname) VALUES ($1, $2, $3, $4)"
        await db.execute(insert, "first", "u", "@first:x", "d")
        # Returned means committed: another connection already sees it.
        other = sqlite3.connect(tmp_path / "group.db")
        assert other.execute("SELECT count(*) FROM puppets").fetchone()[0] == 1
        before = db.commits
        await asyncio.gather(*(db.execute(insert, f"p{i}", "u", f"@p{i}:x", "d") for i in range(50)))
        assert other.execute("SELECT count(*) FROM puppets").fetchone()[0] == 51
        assert db.commits - before < 10, "concurrent writers share commits"
        # INSERT … RETURNING goes through the same path.
        row = await db.fetchrow(insert + " RETURNING iid", "returning", "u", "@r:x", "d")
        assert row == {"iid": "returning"}
        assert other.execute("SELECT count(*) FROM puppets WHERE iid = 'returning'").fetchone()[0] == 1
        # A failing write fails alone; the others in its batch are kept.
        results = await asyncio.gather(
            db.execute(insert, "ok1", "u", "@ok1:x", "d"),
            db.execute(insert, "first", "u", "@dup:x", "d"),  # primary key taken
            db.execute(insert, "ok2", "u", "@ok2:x", "d"),
            return_exceptions=True,
        )
        assert isinstance(results[1], Exception) and results[0] == 1 and results[2] == 1
        assert other.execute("SELECT count(*) FROM puppets WHERE iid IN ('ok1', 'ok2')").fetchone()[0] == 2

        # An explicit transaction stands alone and still rolls back as a whole.
        async def failing() -> None:
            async with db.transaction():
                await db.execute(insert, "tx", "u", "@tx:x", "d")
                raise RuntimeError("roll back")

        pending = asyncio.ensure_future(db.execute(insert, "batched", "u", "@b:x", "d"))
        with pytest.raises(RuntimeError, match="roll back"):
            await failing()
        await pending
        assert other.execute("SELECT count(*) FROM puppets WHERE iid = 'tx'").fetchone()[0] == 0
        assert other.execute("SELECT count(*) FROM puppets WHERE iid = 'batched'").fetchone()[0] == 1
        other.close()
    finally:
        await db.close()


async def test_a_batch_carries_its_writes_in_one_round_trip_all_or_nothing(db: Database) -> None:
    seen: list[str] = []
    before = db.statements
    async with db.batch():
        await db.execute("INSERT INTO kv (name, value, updated_at) VALUES ('a', '1', 1)")
        await db.execute("INSERT INTO kv (name, value, updated_at) VALUES ('b', '2', 1)")
        db.after_commit(lambda: seen.append("done"))
        assert seen == [] and await db.fetchval("SELECT count(*) FROM kv") == 0, "nothing before the batch ends"
        # A statement that returns rows takes the waiting writes with it.
        row = await db.fetchrow("INSERT INTO kv (name, value, updated_at) VALUES ('c', '3', 1) RETURNING value")
        assert row["value"] == "3"
        assert await db.fetchval("SELECT count(*) FROM kv") == 3
        await db.execute("UPDATE kv SET value = 'x' WHERE name = 'a'")
    assert seen == ["done"]
    assert await db.fetchval("SELECT value FROM kv WHERE name = 'a'") == "x"
    # Three reads, and two round trips of writes: one with the RETURNING, one at the end.
    assert db.statements - before == 5

    async def conflicting() -> None:
        async with db.batch():
            await db.execute("INSERT INTO kv (name, value, updated_at) VALUES ('d', '4', 1)")
            await db.execute("INSERT INTO kv (name, value, updated_at) VALUES ('a', 'dup', 1)")

    with pytest.raises(Exception):  # noqa: B017, PT011 - either backend's integrity error
        await conflicting()
    assert await db.fetchval("SELECT count(*) FROM kv WHERE name = 'd'") == 0, "the failed group left nothing"

    async def failing() -> None:
        async with db.batch():
            await db.execute("INSERT INTO kv (name, value, updated_at) VALUES ('e', '5', 1)")
            raise RuntimeError("the step failed before its end")

    with pytest.raises(RuntimeError):
        await failing()
    assert await db.fetchval("SELECT count(*) FROM kv WHERE name = 'e'") == 0


async def test_a_loop_started_inside_a_transaction_does_not_run_inside_it(db: Database) -> None:
    """asyncio copies the creator's context into a new task, and the database keeps its
    transaction (and on Postgres its connection) in one: a portal loop started inside a
    transaction must not go on using them once that transaction is over."""
    from bridge.core.portal_loop import LoopPolicy, PortalLoops, Work

    seen: list[bool] = []
    committed = asyncio.Event()

    class Later(Work):
        async def run(self) -> None:
            await committed.wait()
            seen.append(db.in_transaction)
            await db.execute("INSERT INTO kv (name, value, updated_at) VALUES ($1, $2, 0)", "loop", "ran")

    loops = PortalLoops(LoopPolicy(idle_exit=0.2))
    try:
        async with db.transaction():
            await db.execute("INSERT INTO kv (name, value, updated_at) VALUES ($1, $2, 0)", "tx", "1")
            loops.submit("key", Later())
        committed.set()
        await loops.settle()
        assert seen == [False]
        assert await db.fetchval("SELECT value FROM kv WHERE name = $1", "loop") == "ran"
    finally:
        await loops.stop()
