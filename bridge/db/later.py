"""Writes that may land a moment later, grouped: many items' bookkeeping in one round trip.

An item's end (an inbox item posted, an outbox item sent, a Matrix event handled) and the
message-map rows that go with it acknowledge nothing to anyone: what had to be durable
was stored before the item's edge was acknowledged. If the process dies before such a
write lands, the item runs again after the restart and does the same thing again, under
the same transaction id at the homeserver and the same message id at the gatekeeper, so
nothing shows twice. That is what lets them wait a few milliseconds and go together:
under load one round trip carries the bookkeeping of many messages (group commit).

Writes keep their order; a failed flush (the database restarting) is tried again until it
lands, and when too much waits, writers wait for the flush (bounded memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from bridge.tasks import detached

from .database import Database, Statement

log = logging.getLogger(__name__)
DELAY = 0.01  # seconds a write may wait for others to join it
LIMIT = 5000  # writes waiting at most before the writers wait for the flush
JOINED = 40  # up to this many go as one statement; more as one pipelined transaction


class LaterWrites:
    def __init__(self, db: Database, delay: float = DELAY, limit: int = LIMIT) -> None:
        self._db = db
        self._delay = delay
        self._limit = limit
        self._waiting: list[Statement] = []
        self._flusher: asyncio.Task[None] | None = None
        self._drained = asyncio.Event()
        self._drained.set()
        self._now = asyncio.Event()  # cuts the flusher's wait short
        self.flushes = 0

    async def add(self, query: str, *args: object) -> None:
        """Queue one write; returns at once unless too much waits already."""
        self._waiting.append((query, args))
        self._drained.clear()
        if self._flusher is None or self._flusher.done():
            self._flusher = detached(self._flush_soon(), "later writes")
        if len(self._waiting) >= self._limit:
            await self._drained.wait()

    async def _flush_soon(self) -> None:
        delay = 0.1
        while self._waiting:
            # Let others join: what comes while one flush is on its way waits for the next.
            if len(self._waiting) < self._limit:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._delay):
                        await self._now.wait()
            self._now.clear()
            statements, self._waiting = self._waiting, []
            try:
                await self._write(statements)
                self.flushes += 1
                delay = 0.1
            except Exception as exc:
                # Kept, in order, in front of what came meanwhile: nothing is dropped.
                self._waiting = statements + self._waiting
                log.warning("could not write %d bookkeeping rows (%s); trying again", len(statements), exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        self._drained.set()

    async def _write(self, statements: list[Statement]) -> None:
        """A few writes as one joined statement; many as one transaction of one pipelined
        ``executemany`` per kind (so that the statement texts, and the prepared statements
        the driver caches for them, stay few). Their order within one flush does not
        matter: each is one item's bookkeeping, and no two touch the same row differently."""
        if len(statements) <= JOINED:
            async with self._db.batch():
                for query, args in statements:
                    await self._db.execute(query, *args)
            return
        kinds: dict[str, list[tuple[object, ...]]] = {}
        for query, args in statements:
            kinds.setdefault(query, []).append(args)
        async with self._db.transaction():
            for query, rows in kinds.items():
                await self._db.executemany(query, rows)

    async def flush(self) -> None:
        """Write what waits now, and return once it landed (shutdown, tests)."""
        while self._waiting or (self._flusher is not None and not self._flusher.done()):
            if self._flusher is None or self._flusher.done():
                self._flusher = detached(self._flush_soon(), "later writes")
            self._now.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._flusher)

    @property
    def pending(self) -> int:
        return len(self._waiting)
