"""One serial loop per chat (mautrix-go bridgev2's portal event loop).

Every event of a portal, from either side, runs in the order it was queued; different
portals run in parallel. A head that fails blocks its own portal, with backoff, and no
later event of that portal overtakes it: a failure worth waiting out (the other side is
down, a rate limit) is retried for as long as it lasts, without counting; a failure of the
item itself counts, and after ``max_attempts`` the item fails for good with a status and
a notice (:meth:`Work.give_up`), and the loop moves on.

The queue in memory is bounded and holds only references: what a loop does is stored
before it is queued (the inbox, the outbox, the Matrix transaction store). A queue that
overflows forgets what it could not hold and reloads it from the database when it has
caught up; at start-up, stored work is loaded the same way before new events come in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field

from bridge.tasks import detached

from .errors import Final, is_transient, retry_after

log = logging.getLogger(__name__)
LoopKey = Hashable


class Work:
    """One queued item. Subclasses implement :meth:`run` and, if durable, the rest.

    ``run`` must be idempotent: it is tried again after a failure and after a restart, so it
    starts by reading its item's stored state and does only what is left.
    """

    name: str = "work"
    durable: bool = True  # stored, so reloaded after an overflow or a restart

    async def run(self) -> None:
        raise NotImplementedError

    async def attempted(self, error: BaseException) -> int:
        """Record one more failed attempt of the item's own; returns how many so far."""
        return 1

    async def waiting(self, error: BaseException) -> None:
        """The first failure: tell the user it is delayed (a send status), if it matters."""

    async def give_up(self, error: BaseException) -> None:
        """Out of attempts: store the failure and tell the user why."""


class Transient(Work):
    """A hint (typing, say): run once in its portal's order, never stored, never retried."""

    durable = False

    def __init__(self, name: str, step: Callable[[], Awaitable[None]]) -> None:
        self.name = name
        self._step = step

    async def run(self) -> None:
        try:
            await self._step()
        except Exception as exc:
            log.debug("%s did not go through: %s", self.name, type(exc).__name__)


@dataclass(frozen=True)
class LoopPolicy:
    max_attempts: int = 5
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    # Waiting for an unavailable side: quick at first, never longer than this between tries.
    unavailable_cap: float = 30.0
    queue_limit: int = 1000
    idle_exit: float = 60.0


Reload = Callable[[LoopKey], Awaitable[list[Work]]]


@dataclass
class _Loop:
    key: LoopKey
    queue: deque[Work] = field(default_factory=deque)
    overflowed: bool = False
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # new work, or stopping
    retry: asyncio.Event = field(default_factory=asyncio.Event)  # cut a backoff short
    task: asyncio.Task[None] | None = None
    head: Work | None = None


class PortalLoops:
    def __init__(self, policy: LoopPolicy | None = None, reload: Reload | None = None) -> None:
        self.policy = policy or LoopPolicy()
        self._reload = reload
        self._loops: dict[LoopKey, _Loop] = {}
        self._stopping = False

    # ------------------------------------------------------------------ the queue side

    def submit(self, key: LoopKey, work: Work) -> None:
        """Queue ``work`` behind everything queued for ``key``; never blocks, never drops
        durable work (what does not fit in memory is reloaded from its store)."""
        if self._stopping:
            return  # durable work is replayed at the next start
        loop = self._loops.get(key)
        if loop is None:
            loop = self._loops[key] = _Loop(key)
        if loop.overflowed or len(loop.queue) >= self.policy.queue_limit:
            if work.durable and self._reload is not None:
                loop.overflowed = True
            else:
                log.warning("dropped %s: the queue of its chat is full", work.name)
        else:
            loop.queue.append(work)
        loop.arrived.set()
        if loop.task is None or loop.task.done():
            # Its own context: a loop may be started inside a caller's transaction.
            loop.task = detached(self._run(loop), f"portal loop {key}")

    def wake(self, predicate: Callable[[LoopKey], bool] = lambda key: True) -> None:
        """Cut the backoff of the matching loops short (the connection came back, say)."""
        for key, loop in self._loops.items():
            if predicate(key):
                loop.retry.set()

    def depth(self) -> int:
        """How many items wait in memory, over every loop."""
        return sum(len(loop.queue) + (loop.head is not None) for loop in self._loops.values())

    def busy(self, key: LoopKey) -> bool:
        loop = self._loops.get(key)
        return loop is not None and (bool(loop.queue) or loop.head is not None or loop.overflowed)

    async def settle(self) -> None:
        """Wait until every loop is empty (tests, benchmarks)."""
        while any(self.busy(key) for key in list(self._loops)):
            await asyncio.sleep(0.01)

    async def stop(self, timeout: float = 10.0) -> None:
        """Take no more work; let each loop finish the item it is on, then stop. What is
        left stays stored and runs at the next start."""
        self._stopping = True
        for loop in self._loops.values():
            loop.arrived.set()
            loop.retry.set()
        tasks = [loop.task for loop in self._loops.values() if loop.task is not None and not loop.task.done()]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)

    # ------------------------------------------------------------------ the loop side

    async def _run(self, loop: _Loop) -> None:
        try:
            while not self._stopping:
                if not loop.queue and loop.overflowed:
                    loop.overflowed = False
                    loop.queue.extend(await self._reload_safely(loop))
                if not loop.queue:
                    loop.arrived.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.policy.idle_exit):
                            await loop.arrived.wait()
                    if not loop.queue and not loop.overflowed:
                        break
                    continue
                loop.head = loop.queue.popleft()
                try:
                    await self._execute(loop, loop.head)
                finally:
                    loop.head = None
        except asyncio.CancelledError:
            raise
        except Exception:
            # Never silently: the loop's own machinery failed. The items are stored; the
            # next submit starts a new loop and reloads them.
            log.exception("the loop of %s stopped", loop.key)
            loop.overflowed = self._reload is not None
        finally:
            if self._loops.get(loop.key) is loop and not loop.queue and not loop.overflowed:
                del self._loops[loop.key]

    async def _reload_safely(self, loop: _Loop) -> list[Work]:
        assert self._reload is not None
        delay = self.policy.backoff_base
        while not self._stopping:
            try:
                return await self._reload(loop.key)
            except Exception as exc:
                log.warning("could not reload the queue of %s (%s); trying again", loop.key, type(exc).__name__)
                await self._sleep(loop, delay, wakeable=True)
                delay = min(delay * 2, self.policy.unavailable_cap)
        return []

    async def _execute(self, loop: _Loop, work: Work) -> None:
        policy = self.policy
        backoff = policy.backoff_base
        told = False
        while True:
            try:
                await work.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = exc
            exact = retry_after(error)
            if exact is not None:
                wait, wakeable = exact, False  # a rate limit is honoured exactly
            elif is_transient(error):
                wait, wakeable = min(backoff, policy.unavailable_cap), True
                backoff = min(backoff * 2, policy.backoff_cap)
            else:
                attempts = await self._count(work, error)
                if attempts >= policy.max_attempts or isinstance(error, Final):
                    log.warning("%s in %s failed for good after %d attempts: %s", work.name, loop.key, attempts, error)
                    await self._give_up(loop, work, error)
                    return
                log.warning("%s in %s failed (attempt %d): %s", work.name, loop.key, attempts, error, exc_info=error)
                wait, wakeable = backoff * random.uniform(0.5, 1.0), True
                backoff = min(backoff * 2, policy.backoff_cap)
            if not told:
                told = True
                await self._quietly(work.waiting(error), f"the delay notice of {work.name}")
            log.info("%s in %s waits %.1f s: %s", work.name, loop.key, wait, type(error).__name__)
            await self._sleep(loop, wait, wakeable=wakeable)
            if self._stopping:
                return

    async def _count(self, work: Work, error: BaseException) -> int:
        try:
            return await work.attempted(error)
        except Exception as exc:
            log.warning("could not record a failed attempt of %s: %s", work.name, type(exc).__name__)
            return 0

    async def _give_up(self, loop: _Loop, work: Work, error: BaseException) -> None:
        """Store the failure and tell the user, through an outage if need be."""
        delay = self.policy.backoff_base
        while not self._stopping:
            try:
                await work.give_up(error)
                return
            except Exception as exc:
                if not is_transient(exc):
                    log.exception("could not record the failure of %s", work.name)
                    return
            await self._sleep(loop, delay, wakeable=True)
            delay = min(delay * 2, self.policy.unavailable_cap)

    async def _quietly(self, step: Awaitable[None], what: str) -> None:
        try:
            await step
        except Exception as exc:
            log.info("could not send %s: %s", what, type(exc).__name__)

    async def _sleep(self, loop: _Loop, seconds: float, *, wakeable: bool) -> None:
        if not wakeable:
            await asyncio.sleep(seconds)
            return
        loop.retry.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await loop.retry.wait()
