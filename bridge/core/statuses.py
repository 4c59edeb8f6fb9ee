"""Message send statuses, posted beside the portal loops.

A status needs no place in a portal's order and must not hold the portal up while the
homeserver takes it, so statuses go out in the background: per room, in order, the
newest status of an event replacing one not yet posted (a "sent" that the "delivered"
overtakes within ``COALESCE`` seconds is never posted on its own: one request instead of
two per message), a few rooms at a time, each retried briefly through a homeserver
hiccup. A status lost to a long outage is only a status: the message itself is stored,
and a permanent failure also gets a notice from the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from bridge.tasks import BackgroundTasks

from .errors import is_transient
from .matrix_api import MatrixAPI, StatusReport

log = logging.getLogger(__name__)
TRIES = 4
COALESCE = 0.1  # seconds a status waits for a newer one of the same event


class StatusSender:
    def __init__(
        self, matrix: MatrixAPI, tasks: BackgroundTasks, *, concurrency: int = 8, coalesce: float = COALESCE
    ) -> None:
        self._matrix = matrix
        self._tasks = tasks
        self._coalesce = coalesce
        self._rooms: dict[str, OrderedDict[str, tuple[StatusReport, str | None]]] = {}
        self._slots = asyncio.Semaphore(concurrency)
        self.posted = 0
        self.replaced = 0

    def send(self, room_id: str, event_id: str, report: StatusReport, *, txn_id: str | None = None) -> None:
        pending = self._rooms.get(room_id)
        if pending is None:
            pending = self._rooms[room_id] = OrderedDict()
            self._tasks.spawn(self._drain(room_id, pending), f"statuses in {room_id}")
        if pending.pop(event_id, None) is not None:
            self.replaced += 1
        pending[event_id] = (report, txn_id)

    async def _drain(self, room_id: str, pending: OrderedDict[str, tuple[StatusReport, str | None]]) -> None:
        try:
            await asyncio.sleep(self._coalesce)
            async with self._slots:
                while pending:
                    event_id, (report, txn_id) = pending.popitem(last=False)
                    await self._post(room_id, event_id, report, txn_id)
        finally:
            if self._rooms.get(room_id) is pending:
                del self._rooms[room_id]

    async def _post(self, room_id: str, event_id: str, report: StatusReport, txn_id: str | None) -> None:
        delay = 0.5
        for attempt in range(TRIES):
            try:
                await self._matrix.send_status(room_id, event_id, report, txn_id=txn_id)
                self.posted += 1
                return
            except Exception as exc:
                if not is_transient(exc) or attempt == TRIES - 1:
                    log.warning("could not send a message status into %s: %s", room_id, type(exc).__name__)
                    return
            await asyncio.sleep(delay)
            delay *= 2
