"""One async database interface over asyncpg (Postgres) and aiosqlite (SQLite).

Queries are written once, with Postgres' ``$1`` placeholders; for SQLite they become
``?1``, which it understands. A transaction binds its connection to a ContextVar, so store
methods called inside ``async with db.transaction():`` share it and compose atomically
(the pattern of mautrix-python's ``async_db``). :meth:`Database.after_commit` lets a store
update its cache only once what it wrote is durable: a rolled-back write never shows.

The round trips, not the queries, are what a message costs: ``async with db.batch():``
carries the writes of one step (a session and the message it decrypted, say) to the
database together. ``statements`` and ``commits`` count round trips, for the benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from abc import ABC, abstractmethod
from collections import deque
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
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")
Callback = Callable[[], None]
Statement = tuple[str, tuple[Any, ...]]


def is_write(query: str) -> bool:
    return query.lstrip()[:7].upper().startswith(_WRITES)


class Database(ABC):
    """The common interface; use :func:`create_database`."""

    dialect: str
    statements: int = 0
    commits: int = 0

    def __init__(self) -> None:
        # The callbacks waiting for the open transaction of this task to commit.
        self._on_commit: ContextVar[list[Callback] | None] = ContextVar("on_commit", default=None)

    def after_commit(self, callback: Callback) -> None:
        """Run ``callback`` once the open transaction commits (dropped if it rolls back);
        outside a transaction, at once: the write it follows already returned durable."""
        pending = self._on_commit.get()
        if pending is None:
            callback()
        else:
            pending.append(callback)

    @property
    def in_transaction(self) -> bool:
        return self._on_commit.get() is not None

    @asynccontextmanager
    async def _collecting_callbacks(self) -> AsyncIterator[list[Callback]]:
        callbacks: list[Callback] = []
        token = self._on_commit.set(callbacks)
        try:
            yield callbacks
        finally:
            self._on_commit.reset(token)

    @staticmethod
    def _run_callbacks(callbacks: list[Callback]) -> None:
        for callback in callbacks:
            callback()

    @abstractmethod
    async def start(self) -> None:
        """Open the connection(s)."""

    @abstractmethod
    async def close(self) -> None:
        """Close the connection(s)."""

    @abstractmethod
    def transaction(self) -> Any:
        """An async context manager; statements inside it commit or roll back together."""

    @abstractmethod
    def batch(self) -> Any:
        """An async context manager for the writes of one step, carried together.

        A write inside it waits; the next statement that returns rows (an ``INSERT … RETURNING``)
        takes every waiting write with it in one atomic round trip, and the end of the batch
        takes what is left. So a batch is one or more atomic groups: put the writes that
        must be durable together before the statement that returns rows, or leave that
        statement out. Inside a batch, a write's row count is not known (0), and a plain
        read does not see the waiting writes. Nothing is held while the batch is open, so
        its owner may wait on anything meanwhile (the homeserver, say).
        """

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


class _Connections:
    """Postgres connections handed out one at a time: asyncpg's pool does more per use
    (holders, timeouts, resets) than the bridge needs, at about 60 µs of CPU a query."""

    def __init__(self, dsn: str, size: int) -> None:
        self._dsn = dsn
        self._size = size
        self._idle: deque[asyncpg.Connection] = deque()
        self._waiters: deque[asyncio.Future[asyncpg.Connection]] = deque()
        self._opened = 0
        self._all: set[asyncpg.Connection] = set()

    async def _open(self) -> asyncpg.Connection:
        self._opened += 1
        try:
            conn = await asyncpg.connect(self._dsn)
        except BaseException:
            self._opened -= 1
            raise
        self._all.add(conn)
        return conn

    async def start(self) -> None:
        self._idle.append(await self._open())

    async def acquire(self) -> asyncpg.Connection:
        while self._idle:
            conn = self._idle.popleft()
            if not conn.is_closed():
                return conn
            self._forget(conn)
        if self._opened < self._size:
            return await self._open()
        waiter: asyncio.Future[asyncpg.Connection] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(waiter.result())
            raise

    def release(self, conn: asyncpg.Connection) -> None:
        if conn.is_closed() or conn.is_in_transaction():
            # A broken connection (the server restarted), or one a cancellation left in a
            # transaction: never handed out again.
            self._forget(conn)
            if not conn.is_closed():
                conn.terminate()
            if self._waiters:
                asyncio.get_running_loop().create_task(self._replace())
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    async def _replace(self) -> None:
        try:
            conn = await self._open()
        except Exception as exc:
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(exc)
                    return
            return
        self.release(conn)

    def _forget(self, conn: asyncpg.Connection) -> None:
        if conn in self._all:
            self._all.discard(conn)
            self._opened -= 1

    async def close(self) -> None:
        for conn in list(self._all):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)
        self._all.clear()
        self._idle.clear()
        self._opened = 0


def renumber(query: str, offset: int) -> str:
    """``$1`` becomes ``$(1 + offset)``: statements joined into one keep their arguments."""
    if not offset:
        return query
    return _PLACEHOLDER.sub(lambda m: f"${int(m.group(1)) + offset}", query)


_JOINED: dict[tuple[str, ...], str] = {}  # the same few combinations come again and again


def joined(statements: list[Statement]) -> Statement:
    """Several writes as one Postgres statement: each a data-modifying CTE, the last one's
    rows the result. (They run on one snapshot: none sees another's rows.)"""
    queries = tuple(query for query, _ in statements)
    args: list[Any] = []
    for _, values in statements:
        args.extend(values)
    text = _JOINED.get(queries)
    if text is None:
        parts: list[str] = []
        offset = 0
        for index, (query, values) in enumerate(statements):
            query = renumber(query.strip(), offset)
            if "RETURNING" not in query.upper():
                query += " RETURNING 1"
            parts.append(f"w{index} AS ({query})")
            offset += len(values)
        # Only the bridge's own statements are joined; their values stay parameters.
        last = f"w{len(statements) - 1}"
        text = f"WITH {', '.join(parts)} SELECT * FROM {last}"  # noqa: S608
        if len(_JOINED) < 1024:
            _JOINED[queries] = text
    return text, tuple(args)


class PostgresDatabase(Database):
    dialect = "postgres"

    def __init__(self, dsn: str, max_connections: int = 10) -> None:
        super().__init__()
        self._dsn = dsn
        self._max = max_connections
        self._connections: _Connections | None = None
        self._conn: ContextVar[asyncpg.Connection | None] = ContextVar("pg_conn", default=None)
        self._queued: ContextVar[list[Statement] | None] = ContextVar("pg_batch", default=None)

    async def start(self) -> None:
        self._connections = _Connections(self._dsn, self._max)
        await self._connections.start()

    async def close(self) -> None:
        if self._connections is not None:
            await self._connections.close()

    @asynccontextmanager
    async def _acquire(self) -> AsyncIterator[asyncpg.Connection]:
        current = self._conn.get()
        if current is not None:
            yield current
            return
        assert self._connections is not None, "database not started"
        conn = await self._connections.acquire()
        try:
            yield conn
        finally:
            self._connections.release(conn)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        if self._conn.get() is not None or self._queued.get() is not None:
            yield  # nested: part of the caller's transaction or batch
            return
        async with self._collecting_callbacks() as callbacks, self._acquire() as conn:
            async with conn.transaction():
                token = self._conn.set(conn)
                try:
                    yield
                finally:
                    self._conn.reset(token)
            self.commits += 1
        self._run_callbacks(callbacks)

    def batch(self) -> _PgBatch:
        return _PgBatch(self)

    async def _run_joined(self, statements: list[Statement]) -> list[Row]:
        query, args = statements[0] if len(statements) == 1 else joined(statements)
        return [dict(r) for r in await self._call("fetch", query, args)]

    async def _call(self, method: str, query: str, args: Sequence[Any]) -> Any:
        """One round trip, on the transaction's connection or a free one (no context
        manager: this runs for every statement)."""
        self.statements += 1
        conn = self._conn.get()
        if conn is not None:
            return await getattr(conn, method)(query, *args)
        connections = self._connections
        assert connections is not None, "database not started"
        conn = await connections.acquire()
        try:
            return await getattr(conn, method)(query, *args)
        finally:
            connections.release(conn)

    async def execute(self, query: str, *args: Any) -> int:
        queued = self._queued.get()
        if queued is not None:
            queued.append((query, args))
            return 0
        status = await self._call("execute", query, args)
        last = status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    async def executemany(self, query: str, rows: Sequence[Sequence[Any]]) -> None:
        queued = self._queued.get()
        if queued is not None:
            queued.extend((query, tuple(row)) for row in rows)
            return
        await self._call("executemany", query, (rows,))

    async def fetch(self, query: str, *args: Any) -> list[Row]:
        queued = self._queued.get()
        if queued is not None and is_write(query):
            statements = [*queued, (query, args)]
            queued.clear()
            return await self._run_joined(statements)
        return [dict(r) for r in await self._call("fetch", query, args)]


class _PgBatch:
    """``async with db.batch():`` on Postgres (a class, not a generator: it runs for every
    message)."""

    __slots__ = ("_callbacks", "_db", "_nested", "_queued", "_tokens")

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db
        self._nested = False
        self._queued: list[Statement] = []
        self._callbacks: list[Callback] = []
        self._tokens: tuple[Any, Any] | None = None

    async def __aenter__(self) -> None:
        db = self._db
        if db._conn.get() is not None or db._queued.get() is not None:
            self._nested = True
            return
        self._tokens = (db._queued.set(self._queued), db._on_commit.set(self._callbacks))

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: Any) -> None:
        if self._nested:
            return
        db = self._db
        assert self._tokens is not None
        db._queued.reset(self._tokens[0])
        db._on_commit.reset(self._tokens[1])
        if kind is not None:
            return  # nothing of a failed step is written
        if self._queued:
            await db._run_joined(list(self._queued))
        Database._run_callbacks(self._callbacks)


class _Batch:
    """Writes sharing one transaction; ``committed`` resolves when it is durable."""

    __slots__ = ("committed", "writes")

    def __init__(self) -> None:
        self.committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.writes = 0


class SqliteDatabase(Database):
    """One connection, one writer (SQLite has one), with group commit.

    A write, and a transaction too, joins the open group and returns only once that group
    is committed, so "stored before acknowledged" holds as with autocommit; but every
    writer queued at that moment shares one COMMIT (one fsync with ``synchronous = FULL``)
    instead of paying for its own. A transaction is a savepoint inside the group: when it
    fails, only its own writes are undone.
    """

    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        super().__init__()
        self._path = path
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._in_tx: ContextVar[bool] = ContextVar("sqlite_tx", default=False)
        self._queued: ContextVar[list[Statement] | None] = ContextVar("sqlite_batch", default=None)
        self._group: _Batch | None = None
        self._committer: asyncio.Task[None] | None = None

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
        """Commit the open group, if any (the lock is held)."""
        group, self._group = self._group, None
        if group is None:
            return
        try:
            await self.db.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await self.db.execute("ROLLBACK")
            group.committed.set_exception(exc)
            return
        self.commits += 1
        group.committed.set_result(None)

    async def _commit_soon(self) -> None:
        # Writers already queued on the lock get it first (asyncio.Lock is FIFO) and join.
        async with self._lock:
            await self._commit_locked()

    async def _join_group(self) -> _Batch:
        """The open group (the lock is held), begun if there is none."""
        if self._group is None:
            await self.db.execute("BEGIN IMMEDIATE")
            self._group = _Batch()
            self._committer = asyncio.get_running_loop().create_task(self._commit_soon())
        return self._group

    async def _write(self, run: Callable[[], Awaitable[T]]) -> T:
        if self._in_tx.get():
            return await run()
        async with self._lock:
            group = await self._join_group()
            result = await run()
            group.writes += 1
        await asyncio.shield(group.committed)
        return result

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        if self._in_tx.get():
            yield
            return
        async with self._collecting_callbacks() as callbacks:
            async with self._lock:
                group = await self._join_group()
                token = self._in_tx.set(True)
                await self.db.execute("SAVEPOINT unit")
                try:
                    yield
                except BaseException:
                    await self.db.execute("ROLLBACK TO unit")
                    await self.db.execute("RELEASE unit")
                    raise
                else:
                    await self.db.execute("RELEASE unit")
                    group.writes += 1
                finally:
                    self._in_tx.reset(token)
            await asyncio.shield(group.committed)
        self._run_callbacks(callbacks)

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        # As on Postgres, writes wait and go together: the lock is never held while the
        # batch's owner waits on something else (the homeserver, say).
        if self._in_tx.get() or self._queued.get() is not None:
            yield
            return
        queued: list[Statement] = []
        async with self._collecting_callbacks() as callbacks:
            token = self._queued.set(queued)
            try:
                yield
            finally:
                self._queued.reset(token)
            if queued:
                await self._run_together(list(queued))
        self._run_callbacks(callbacks)

    async def _run_together(self, statements: list[Statement]) -> list[Row]:
        """The statements in one savepoint of the open group; the last one's rows."""
        self.statements += 1
        rows: list[Row] = []
        async with self._lock:
            group = await self._join_group()
            await self.db.execute("SAVEPOINT unit")
            try:
                for query, args in statements:
                    rows = [dict(r) for r in await self.db.execute_fetchall(self._convert(query), args)]
            except BaseException:
                await self.db.execute("ROLLBACK TO unit")
                await self.db.execute("RELEASE unit")
                raise
            await self.db.execute("RELEASE unit")
            group.writes += 1
        await asyncio.shield(group.committed)
        return rows

    @staticmethod
    def _convert(query: str) -> str:
        return _PLACEHOLDER.sub(r"?\1", query)

    async def execute(self, query: str, *args: Any) -> int:
        queued = self._queued.get()
        if queued is not None:
            queued.append((query, args))
            return 0
        self.statements += 1

        async def run() -> int:
            cursor = await self.db.execute(self._convert(query), args)
            return cursor.rowcount

        return await self._write(run)

    async def executemany(self, query: str, rows: Sequence[Sequence[Any]]) -> None:
        queued = self._queued.get()
        if queued is not None:
            queued.extend((query, tuple(row)) for row in rows)
            return
        self.statements += 1

        async def run() -> None:
            await self.db.executemany(self._convert(query), rows)

        await self._write(run)

    async def fetch(self, query: str, *args: Any) -> list[Row]:
        queued = self._queued.get()
        if queued is not None and is_write(query):
            statements = [*queued, (query, args)]
            queued.clear()
            return await self._run_together(statements)
        self.statements += 1

        async def run() -> list[Row]:
            return [dict(r) for r in await self.db.execute_fetchall(self._convert(query), args)]

        if is_write(query):  # INSERT … RETURNING and the like
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
