"""One async database interface over asyncpg (Postgres) and aiosqlite (SQLite).

Queries are written once, with Postgres' ``$1`` placeholders; for SQLite they become
``?1``, which it understands. A transaction binds its connection to a ContextVar, so store
methods called inside ``async with db.transaction():`` share it and compose atomically
(the pattern of mautrix-python's ``async_db``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

import aiosqlite
import asyncpg

Row = Mapping[str, Any]
T = TypeVar("T")
_PLACEHOLDER = re.compile(r"\$(\d+)")


class Database(ABC):
    """The common interface; use :func:`create_database`."""

    dialect: str

    @abstractmethod
    async def start(self) -> None:
        """Open or close the connection(s)."""

    @abstractmethod
    async def close(self) -> None:
        """Open or close the connection(s)."""

    @abstractmethod
    def transaction(self) -> Any:
        """An async context manager; statements inside it commit or roll back together."""

    @abstractmethod
    async def execute(self, query: str, *args: Any) -> int:
        """Run a statement; returns the number of rows it changed."""

    @abstractmethod
    async def executemany(self, query: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement for each row of arguments."""

    @abstractmethod
    async def fetch(self, query: str, *args: Any) -> list[Row]:
        """All result rows, as mappings."""

    async def fetchrow(self, query: str, *args: Any) -> Row | None:
        rows = await self.fetch(query, *args)
        return rows[0] if rows else None

    async def fetchval(self, query: str, *args: Any) -> Any:
        row = await self.fetchrow(query, *args)
        return next(iter(row.values())) if row else None


async def no_reset(connection: asyncpg.Connection) -> None:
    return None


class PostgresDatabase(Database):
    dialect = "postgres"

    def __init__(self, dsn: str, max_connections: int = 10) -> None:
        self._dsn = dsn
        self._max = max_connections
        self._pool: asyncpg.Pool | None = None
        self._conn: ContextVar[asyncpg.Connection | None] = ContextVar("pg_conn", default=None)

    async def start(self) -> None:
        # No reset query on release: the bridge keeps no session state (no LISTEN, advisory
        # locks or SET), and the default reset costs a round trip per statement.
        self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=self._max, reset=no_reset)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    @asynccontextmanager
    async def _acquire(self) -> AsyncIterator[asyncpg.Connection]:
        current = self._conn.get()
        if current is not None:
            yield current
            return
        assert self._pool is not None, "database not started"
        async with self._pool.acquire() as conn:
            yield conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        if self._conn.get() is not None:
            yield  # nested: part of the caller's transaction
            return
        assert self._pool is not None, "database not started"
        async with self._pool.acquire() as conn, conn.transaction():
            token = self._conn.set(conn)
            try:
                yield
            finally:
                self._conn.reset(token)

    async def execute(self, query: str, *args: Any) -> int:
        async with self._acquire() as conn:
            status = await conn.execute(query, *args)
        last = status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    async def executemany(self, query: str, rows: Sequence[Sequence[Any]]) -> None:
        async with self._acquire() as conn:
            await conn.executemany(query, rows)

    async def fetch(self, query: str, *args: Any) -> list[Row]:
        async with self._acquire() as conn:
            return [dict(r) for r in await conn.fetch(query, *args)]


_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


class _Batch:
    """Writes sharing one transaction; ``committed`` resolves when it is durable."""

    __slots__ = ("committed", "writes")

    def __init__(self) -> None:
        self.committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.writes = 0


class SqliteDatabase(Database):
    """One connection, one writer (SQLite has one), with group commit.

    A write outside an explicit transaction joins the open batch and returns only once
    that batch is committed, so "stored before acknowledged" holds as with autocommit;
    but every writer queued at that moment shares one COMMIT (one fsync with
    ``synchronous = FULL``) instead of paying for its own.
    """

    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self._path = path
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._in_tx: ContextVar[bool] = ContextVar("sqlite_tx", default=False)
        self._batch: _Batch | None = None
        self._committer: asyncio.Task[None] | None = None
        self.commits = 0

    async def start(self) -> None:
        self._db = await aiosqlite.connect(self._path, isolation_level=None)
        self._db.row_factory = aiosqlite.Row
        await self._db.execute("PRAGMA foreign_keys = ON")
        if self._path != ":memory:":
            await self._db.execute("PRAGMA journal_mode = WAL")
            await self._db.execute("PRAGMA synchronous = FULL")

    async def close(self) -> None:
        if self._db is not None:
            async with self._lock:
                await self._commit_locked()
            await self._db.close()

    @property
    def db(self) -> aiosqlite.Connection:
        assert self._db is not None, "database not started"
        return self._db

    async def _commit_locked(self) -> None:
        """Commit the open batch, if any (the lock is held)."""
        batch, self._batch = self._batch, None
        if batch is None:
            return
        try:
            await self.db.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await self.db.execute("ROLLBACK")
            batch.committed.set_exception(exc)
            return
        self.commits += 1
        batch.committed.set_result(None)

    async def _commit_soon(self) -> None:
        # Writers already queued on the lock get it first (asyncio.Lock is FIFO) and join.
        async with self._lock:
            await self._commit_locked()

    async def _write(self, run: Callable[[], Awaitable[T]]) -> T:
        if self._in_tx.get():
            return await run()
        async with self._lock:
            if self._batch is None:
                await self.db.execute("BEGIN IMMEDIATE")
                self._batch = _Batch()
                self._committer = asyncio.get_running_loop().create_task(self._commit_soon())
            batch = self._batch
            result = await run()
            batch.writes += 1
        await asyncio.shield(batch.committed)
        return result

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        if self._in_tx.get():
            yield
            return
        async with self._lock:
            await self._commit_locked()  # an explicit transaction stands alone
            token = self._in_tx.set(True)
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
            else:
                await self.db.execute("COMMIT")
                self.commits += 1
            finally:
                self._in_tx.reset(token)

    @staticmethod
    def _convert(query: str) -> str:
        return _PLACEHOLDER.sub(r"?\1", query)

    async def execute(self, query: str, *args: Any) -> int:
        async def run() -> int:
            cursor = await self.db.execute(self._convert(query), args)
            return cursor.rowcount

        return await self._write(run)

    async def executemany(self, query: str, rows: Sequence[Sequence[Any]]) -> None:
        async def run() -> None:
            await self.db.executemany(self._convert(query), rows)

        await self._write(run)

    async def fetch(self, query: str, *args: Any) -> list[Row]:
        async def run() -> list[Row]:
            return [dict(r) for r in await self.db.execute_fetchall(self._convert(query), args)]

        if query.lstrip()[:7].upper().startswith(_WRITES):  # INSERT … RETURNING and the like
            return await self._write(run)
        if self._in_tx.get():
            return await run()
        async with self._lock:
            return await run()


def create_database(uri: str, max_connections: int = 10) -> Database:
    parsed = urlparse(uri)
    if parsed.scheme in ("postgres", "postgresql"):
        return PostgresDatabase(uri, max_connections)
    if parsed.scheme == "sqlite":
        # sqlite:///relative.db, sqlite:////absolute/path.db, sqlite:///:memory:
        if not uri.startswith("sqlite:///"):
            raise ValueError("an SQLite URI looks like sqlite:///path/to/file.db")
        return SqliteDatabase(unquote(uri[len("sqlite:///") :]) or ":memory:")
    raise ValueError(f"unsupported database URI scheme {parsed.scheme!r}")


def sqlalchemy_url(uri: str) -> str:
    """Our URI as SQLAlchemy's async drivers name it, for alembic."""
    parsed = urlparse(uri)
    if parsed.scheme in ("postgres", "postgresql"):
        return "postgresql+asyncpg://" + uri.split("://", 1)[1]
    if parsed.scheme == "sqlite":
        return "sqlite+aiosqlite://" + uri.split("://", 1)[1]
    raise ValueError(f"unsupported database URI scheme {parsed.scheme!r}")
