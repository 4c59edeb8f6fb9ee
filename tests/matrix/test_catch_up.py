"""The look for events a restarted homeserver never pushed goes on past a room the bot
cannot read any more (one it left): the other rooms' lost events are still taken in."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any
from urllib.parse import unquote

from mautrix.errors import MForbidden

from bridge.matrix.catch_up import CatchUp


class RecordingApi:
    def __init__(self) -> None:
        self.asked: list[str] = []

    async def request(self, method: Any, path: Any, query_params: dict[str, str]) -> dict[str, Any]:
        room = unquote(str(path).split("/rooms/")[1].split("/")[0])
        self.asked.append(room)
        if room.startswith("!left"):
            raise MForbidden(403, "User not in room, and room previews are disabled")
        now = int(time.time() * 1000)
        return {
            "chunk": [
                {
                    "event_id": f"$lost-in-{room}",
                    "type": "m.room.message",
                    "sender": "@a:x",
                    "origin_server_ts": now,
                    "content": {"body": "hi"},
                }
            ]
        }


class Rooms:
    async def active_rooms(self, since_ms: int) -> list[str]:
        return ["!left:x", "!kept:x"]

    async def known(self, event_ids: list[str]) -> set[str]:
        return set()


class Intake:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []

    async def receive(self, txn_id: str, body: dict[str, Any]) -> None:
        self.received.append(body)


async def test_a_room_the_bot_left_does_not_stop_the_look_at_the_others() -> None:
    api, intake = RecordingApi(), Intake()
    catch_up = CatchUp(
        SimpleNamespace(api=api, mxid="@bot:x"),  # type: ignore[arg-type]
        "http://127.0.0.1:1",
        "token",
        Rooms(),  # type: ignore[arg-type]
        intake,  # type: ignore[arg-type]
        lambda sender: False,
    )
    assert await catch_up.run_once() == 1
    assert api.asked == ["!left:x", "!kept:x"]
    assert [e["event_id"] for body in intake.received for e in body["events"]] == ["$lost-in-!kept:x"]
