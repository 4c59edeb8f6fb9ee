"""The retry-receipt store of one login (``bridge.gip.outgoing.RetryStore``), durable.

Sent messages are the outbox's: a sent message keeps its content (sealed) and the devices
it was fanned out to until the retention job erases them (by age and count, as whatsmeow
bounds its own), so that a peer's retry receipt can be answered after a reconnect or a
restart. The count of our own retry receipts per message lives in ``retry_receipts``, so
that it keeps rising across reconnects (the fresh-bundle retry is reached, the give-up
holds, and the "could not be decrypted" notice is said once).
"""

from __future__ import annotations

import time

from bridge.gip.errors import GipError
from bridge.gip.jid import Jid
from bridge.gip.outgoing import PreparedMessage, SentMessage

from .database import Database
from .queues import Outbox


class DbRetryStore:
    def __init__(self, db: Database, outbox: Outbox, receiver: str) -> None:
        self._db = db
        self._outbox = outbox
        self._receiver = receiver

    async def sent(self, message_id: str) -> SentMessage | None:
        item = await self._outbox.by_gk_id(self._receiver, message_id)
        if item is None or item.payload is None:
            return None
        devices: tuple[Jid, ...] = ()
        if item.prepared is not None:
            try:
                devices = PreparedMessage.deserialize(item.prepared).devices
            except GipError:
                devices = ()
        return SentMessage(item.gk_id, Jid.parse(item.peer), item.message_type, item.payload, devices)

    async def remember_sent(self, message: SentMessage) -> None:
        return None  # the outbox holds it already

    async def count_failure(self, sender: Jid, message_id: str) -> int:
        value = await self._db.fetchval(
            "INSERT INTO retry_receipts (receiver, sender, gk_id, count, updated_at) VALUES ($1, $2, $3, 1, $4)"
            " ON CONFLICT (receiver, sender, gk_id) DO UPDATE SET count = retry_receipts.count + 1,"
            " updated_at = excluded.updated_at RETURNING count",
            self._receiver,
            str(sender.bare),
            message_id,
            int(time.time() * 1000),
        )
        return int(value)


async def prune_retry_counts(db: Database, before_ms: int) -> int:
    return await db.execute("DELETE FROM retry_receipts WHERE updated_at < $1", before_ms)
