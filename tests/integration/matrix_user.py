"""A Matrix user for the tests: a real /sync client (mautrix) that records what it sees."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from mautrix.client import Client
from mautrix.types import EventType, Membership, StateEvent, UserID

STATUS = "com.beeper.message_send_status"


class MatrixUser:
    def __init__(self, base: str, mxid: str) -> None:
        self.mxid = mxid
        self.client = Client(mxid=UserID(mxid), base_url=base)
        self.events: list[dict[str, Any]] = []
        self._arrived = asyncio.Condition()
        self._sync: asyncio.Task[Any] | None = None

    async def login(self, password: str) -> None:
        await self.client.login(identifier=self.mxid.split(":")[0][1:], password=password)
        self.client.add_event_handler(EventType.ALL, self._record)
        self._sync = self.client.start(None)

    async def _record(self, evt: Any) -> None:
        raw = evt.serialize()
        invited = isinstance(evt, StateEvent) and evt.type == EventType.ROOM_MEMBER and evt.state_key == self.mxid
        if invited and evt.content.membership == Membership.INVITE:
            await self.client.join_room(evt.room_id)
        async with self._arrived:
            self.events.append(raw)
            self._arrived.notify_all()

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20) -> dict[str, Any]:
        async def find() -> dict[str, Any]:
            async with self._arrived:
                while True:
                    for event in self.events:
                        if predicate(event):
                            return event
                    await self._arrived.wait()

        return await asyncio.wait_for(find(), timeout)

    async def notice(self, room_id: str, contains: str, timeout: float = 20) -> dict[str, Any]:
        return await self.wait_for(
            lambda e: (
                e.get("room_id") == room_id
                and e.get("type") == "m.room.message"
                and e["content"].get("msgtype") == "m.notice"
                and contains in e["content"].get("body", "")
            ),
            timeout,
        )

    async def status_of(self, event_id: str, status: str = "SUCCESS", timeout: float = 20) -> dict[str, Any]:
        return await self.wait_for(
            lambda e: (
                e.get("type") == STATUS
                and e["content"].get("status") == status
                and e["content"].get("m.relates_to", {}).get("event_id") == event_id
            ),
            timeout,
        )

    async def say(self, room_id: str, text: str) -> str:
        return await self.client.send_text(room_id, text)

    async def close(self) -> None:
        self.client.stop()
        if self._sync is not None:
            self._sync.cancel()
        await self.client.api.session.close()
