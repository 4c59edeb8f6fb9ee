"""The bot device's own /sync outlives any failure of what a round brings, and takes the
failed round again from the same position instead of skipping it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from mautrix.errors import MatrixConnectionError

from bridge.db.database import Database
from bridge.db.kv import KeyValueStore
from bridge.matrix.crypto_intake import BotSync


class RecordingApi:
    """The homeserver's /sync: a new batch per call, recording the `since` it was asked."""

    def __init__(self) -> None:
        self.since: list[str | None] = []

    async def request(self, method: Any, path: Any, query_params: dict[str, str]) -> dict[str, Any]:
        self.since.append(query_params.get("since"))
        await asyncio.sleep(0.01)
        return {"next_batch": f"s{len(self.since)}", "device_lists": {"changed": ["@peer:example.org"]}}


class FlakyIntake:
    """Handles device lists, but the first time the homeserver has gone away (keys/query)."""

    def __init__(self) -> None:
        self.handled = 0
        self.failures = 1

    async def synced(self, events: list[dict[str, Any]], device_lists: dict[str, Any] | None) -> None:
        if self.failures:
            self.failures -= 1
            raise MatrixConnectionError("Server disconnected")
        self.handled += 1


async def test_a_round_that_fails_is_taken_again_and_the_sync_goes_on(db: Database, monkeypatch) -> None:
    monkeypatch.setattr("bridge.matrix.crypto_intake.asyncio.sleep", _no_wait(asyncio.sleep))
    api, intake, kv = RecordingApi(), FlakyIntake(), KeyValueStore(db)
    await kv.put("to_device_sync/BOTDEVICE", "s0")
    bot = SimpleNamespace(client=SimpleNamespace(api=api), device_id="BOTDEVICE", user_id="@bot:example.org")
    sync = BotSync(SimpleNamespace(bot=bot), intake, kv)  # type: ignore[arg-type]
    sync.start()
    try:
        for _ in range(500):
            if intake.handled >= 2:
                break
            await asyncio.sleep(0.01)
    finally:
        await sync.stop()
    assert intake.handled >= 2, "the sync stopped after the failed round"
    # The failed round (since s0) was asked for again, not skipped: its position was not stored.
    assert api.since[:2] == ["s0", "s0"]
    assert api.since[2] == "s2"


def _no_wait(sleep: Any) -> Any:
    """The retry back-off without its wait (the sync's own polling keeps a tiny sleep)."""

    async def short(seconds: float) -> None:
        await sleep(min(seconds, 0.01))

    return short
