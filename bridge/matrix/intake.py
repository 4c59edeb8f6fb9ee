"""The Matrix edge: a transaction is stored whole, then its parts go where they belong.

Room events and read receipts go to their room's loop (through the connector), to-device
events and device-list changes to the crypto intake, in the order the homeserver sent
them. Typing notifications and one-time-key counts are hints that the next transaction
repeats: they are handed on at once and not stored.

Each consumer opens when the bridge is ready for it (the crypto intake once the Olm
machine is loaded, the rooms once the core has loaded its stored work): until then the
listener already stores what comes, and opening first takes up everything stored, then
what arrives, so that the homeserver never has to hold anything for the bridge.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from bridge.db.matrix_events import MatrixEventStore, NewEvent, StoredEvent

log = logging.getLogger(__name__)
Consumer = Callable[[StoredEvent], None]
Hint = Callable[[Any], Awaitable[None]]
RoomFilter = Callable[[str, dict[str, Any]], Awaitable[bool]]
ROOM_KINDS = ("event", "receipt")
CRYPTO_KINDS = ("to_device", "device_lists")


def _fallback(data: dict[str, Any], name: str, prefix: str) -> Any:
    return data.get(name) if data.get(name) is not None else data.get(f"{prefix}.{name}")


class Gate:
    """Stored events for one consumer: held back until it opens, then handed on in order."""

    def __init__(self, store: MatrixEventStore, kinds: tuple[str, ...]) -> None:
        self._store = store
        self._kinds = kinds
        self._consumer: Consumer | None = None
        self._replaying = False
        self._buffer: list[StoredEvent] = []

    @property
    def open(self) -> bool:
        return self._consumer is not None

    def offer(self, event: StoredEvent) -> None:
        if self._consumer is not None:
            self._consumer(event)
        elif self._replaying:
            self._buffer.append(event)
        # Otherwise it waits in the store for open().

    async def take_up(self) -> list[StoredEvent]:
        """Start collecting what arrives and return what was stored before (oldest
        first); :meth:`open` then hands on what arrived meanwhile."""
        self._replaying = True
        return await self._store.pending(self._kinds)

    def open_with(self, consumer: Consumer, taken: list[StoredEvent]) -> None:
        seen = {event.id for event in taken}
        self._consumer = consumer
        self._replaying = False
        buffered, self._buffer = self._buffer, []
        for event in buffered:
            if event.id not in seen:
                consumer(event)

    def close(self) -> None:
        self._consumer = None
        self._replaying = False
        self._buffer = []


class MatrixIntake:
    def __init__(self, store: MatrixEventStore) -> None:
        self._store = store
        self.rooms = Gate(store, ROOM_KINDS)
        self.crypto = Gate(store, CRYPTO_KINDS)
        self.on_typing: Hint | None = None  # an m.typing EDU
        self.on_key_counts: Hint | None = None  # MSC3202 one-time-key counts
        # Which rooms' events are the bridge's business; the others are dropped unstored.
        self.room_filter: RoomFilter | None = None
        self.transactions = 0
        self.dropped = 0

    async def receive(self, key: str, data: dict[str, Any]) -> None:
        """Store one transaction (raises when it could not be stored: answer 500)."""
        parts: list[NewEvent] = []
        for raw in _fallback(data, "to_device", "de.sorunome.msc2409") or []:
            if isinstance(raw, dict):
                parts.append(NewEvent("to_device", raw))
        device_lists = _fallback(data, "device_lists", "org.matrix.msc3202")
        if isinstance(device_lists, dict) and (device_lists.get("changed") or device_lists.get("left")):
            parts.append(NewEvent("device_lists", device_lists))
        typing: list[dict[str, Any]] = []
        for raw in _fallback(data, "ephemeral", "de.sorunome.msc2409") or []:
            if not isinstance(raw, dict):
                continue
            if raw.get("type") == "m.receipt":
                if await self._wanted(raw):
                    parts.append(NewEvent("receipt", raw, room_id=raw.get("room_id")))
            elif raw.get("type") == "m.typing":
                typing.append(raw)
        for raw in data.get("events") or []:
            if isinstance(raw, dict) and await self._wanted(raw):
                parts.append(NewEvent("event", raw, room_id=raw.get("room_id"), event_id=raw.get("event_id")))
        stored = await self._store.store_transaction(key, parts)
        self.transactions += 1
        # Durable from here on: what follows only hands on, and never fails the transaction.
        for event in stored:
            (self.crypto if event.kind in CRYPTO_KINDS else self.rooms).offer(event)
        counts = _fallback(data, "device_one_time_keys_count", "org.matrix.msc3202")
        if counts and self.on_key_counts is not None and self.crypto.open:
            await self._hint(self.on_key_counts, counts, "key counts")
        if self.on_typing is not None and self.rooms.open:
            for raw in typing:
                await self._hint(self.on_typing, raw, "typing")

    async def _wanted(self, raw: dict[str, Any]) -> bool:
        room_id = raw.get("room_id")
        if self.room_filter is None or not isinstance(room_id, str):
            return True
        if await self.room_filter(room_id, raw):
            return True
        self.dropped += 1
        return False

    @staticmethod
    async def _hint(handler: Hint, value: Any, what: str) -> None:
        try:
            await handler(value)
        except Exception:
            log.exception("could not handle %s from the homeserver", what)
