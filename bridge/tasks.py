"""Background tasks with strong references, names, and logged failures.

Shared by the bridge and the sandbox: a task nobody references can be garbage-collected
mid-flight, and one whose exception nobody reads fails silently.

Every such task starts in a context of its own (:func:`detached`). asyncio copies the
creator's context variables into a new task, and the databases keep the connection of an
open transaction in one: a task started inside a transaction (a portal loop woken by a
receipt stored with a Signal session, a status posted while mautrix holds a connection)
would go on using that connection after the transaction handed it back, beside its next
user ("another operation is in progress"), or believe itself inside a transaction that
has long committed.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)


def detached(coro: Any, name: str | None = None) -> asyncio.Task[Any]:
    """A task that inherits no context variables (no transaction, no connection)."""
    return asyncio.get_running_loop().create_task(coro, name=name, context=contextvars.Context())


class BackgroundTasks:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Awaitable[Any], name: str) -> None:
        async def run() -> None:
            try:
                await coro
            except Exception:
                log.exception("background task %s failed", name)

        task = detached(run(), name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        """Wait until no task is left (including ones spawned meanwhile)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def settle_for(self, timeout: float) -> None:
        """Wait for the tasks at most ``timeout`` seconds, then cancel what is left."""
        try:
            await asyncio.wait_for(self.settle(), timeout)
        except TimeoutError:
            self.cancel()
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def every(
        self, interval: float, job: Callable[[], Awaitable[Any]], name: str, *, first: float | None = None
    ) -> None:
        """Run ``job`` every ``interval`` seconds for as long as the tasks live: a failure
        is logged and the next round comes as planned (a periodic job never dies)."""

        async def rounds() -> None:
            await asyncio.sleep(interval if first is None else first)
            while True:
                try:
                    await job()
                except Exception:
                    log.exception("periodic job %s failed; it runs again in %.0f s", name, interval)
                await asyncio.sleep(interval)

        task = detached(rounds(), name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def __len__(self) -> int:
        return len(self._tasks)

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()
