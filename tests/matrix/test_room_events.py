"""A stored Matrix event is marked handled only once that mark is durable."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.db.database import Database
from bridge.db.matrix_events import NewEvent
from bridge.db.sealed import Sealer
from bridge.db.stores import Stores
from bridge.matrix.room_events import MatrixEventWork


class _Connector:
    """Handles an event the way the flow does: its end and its effect in one batch. The
    first batch's round trip fails, as when the database restarts under it."""

    def __init__(self, stores: Stores) -> None:
        self.stores = stores
        self.handled = 0

    async def handle_stored(self, stored: Any, mark_done: Any) -> None:
        self.handled += 1
        async with self.stores.db.batch():
            await mark_done()
            await self.stores.kv.put(f"effect/{stored.event_id}", str(self.handled))
            if self.handled == 1:
                raise ConnectionError("the database went away before the batch was written")

    async def pending_outbox(self, room_id: str, event_id: str) -> None:
        return None


async def test_a_failed_batch_leaves_the_event_to_be_handled_again(db: Database) -> None:
    stores = Stores.create(db, Sealer(bytes(32)))
    body = {"type": "m.room.message", "event_id": "$e", "room_id": "!r", "sender": "@a:x", "content": {}}
    [stored] = await stores.matrix_events.store_transaction("t1", [NewEvent("event", body, "!r", "$e")])
    connector = _Connector(stores)
    work = MatrixEventWork(connector, stored, fresh=True)  # type: ignore[arg-type]
    with pytest.raises(ConnectionError):
        await work.run()
    assert (await stores.matrix_events.get(stored.id)) is not None  # still pending: nothing was written
    await work.run()  # the loop's next try
    assert connector.handled == 2
    assert await stores.kv.get("effect/$e") == "2"
    assert [e.id for e in await stores.matrix_events.pending_in_room("!r")] == []
