"""What the tests wait for in a Matrix client's timeline, whichever client records it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

STATUS = "com.beeper.message_send_status"


class WaitsForEvents:
    """Given ``wait_for(predicate, timeout)`` over recorded events (dicts shaped like Matrix
    events), the bridge's notices and send statuses."""

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20) -> dict[str, Any]:
        raise NotImplementedError

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
