"""Room events the homeserver never pushed: found in the rooms' timelines and taken in.

Synapse keeps the events it is about to push to an appservice in memory: when it shuts
down (an upgrade, a restart), the last events of that moment are in its database but
never reach the bridge, and it does not send them again. The bridge therefore watches the
homeserver with one long-poll ``/sync`` of the bridge bot that asks for nothing: a
restart breaks it, however short. When the homeserver answers again, at the bridge's
start, and every ``interval`` seconds, the bridge reads the latest events of the portal
rooms active in the last ``window`` seconds and hands every one it never received to the
Matrix intake, as if a transaction had brought it (stored first, then in its room's
loop; the store keeps one row per event id, so an event that is pushed as well is taken
once). An event found this way arrives after events that the homeserver pushed later: it
is not lost, but it can come out of order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import aiohttp
from mautrix.api import Method, Path
from mautrix.errors import MatrixRequestError
from mautrix.types import RoomID

from bridge.db.matrix_events import MatrixEventStore

from .intake import MatrixIntake

if TYPE_CHECKING:
    from mautrix.appservice import IntentAPI

log = logging.getLogger(__name__)
BRIDGED_TYPES = ("m.room.message", "m.room.encrypted", "m.reaction", "m.room.redaction", "m.sticker")
PROBE = 5.0  # seconds between two tries while the homeserver does not answer
POLL_MS = 30_000  # how long the homeserver holds the watching sync open
LIMIT = 50  # events read back per room
# A sync that brings nothing: no rooms, presence or account data, only a position.
NOTHING = json.dumps(
    {
        "room": {"rooms": [], "account_data": {"not_types": ["*"]}, "ephemeral": {"not_types": ["*"]}},
        "presence": {"not_types": ["*"]},
        "account_data": {"not_types": ["*"]},
    },
    separators=(",", ":"),
)


class CatchUp:
    def __init__(
        self,
        intent: IntentAPI,
        base_url: str,
        as_token: str,
        store: MatrixEventStore,
        intake: MatrixIntake,
        ours: Any,
        *,
        interval: float = 300.0,
        window: float = 900.0,
    ) -> None:
        self._intent = intent
        self._base_url = base_url
        self._as_token = as_token
        self._store = store
        self._intake = intake
        self._ours = ours
        self._interval = interval
        self._window = window
        self._task: asyncio.Task[None] | None = None
        self.found = 0  # events taken in
        self.rounds = 0  # looks at the rooms
        self.outages = 0  # times the watching sync broke

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="Matrix catch-up")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _poll(self, http: aiohttp.ClientSession, since: str | None) -> str | None:
        """One watching sync; returns the next position, or raises when it broke."""
        # As the bot (an ordinary user of the namespace): the appservice's sender may not sync.
        query = {
            "user_id": str(self._intent.mxid),
            "filter": NOTHING,
            "set_presence": "offline",
            "timeout": str(POLL_MS if since else 0),
        }
        if since:
            query["since"] = since
        headers = {"Authorization": f"Bearer {self._as_token}"}
        async with http.get(f"{self._base_url}/_matrix/client/v3/sync", params=query, headers=headers) as response:
            if response.status != 200:
                raise ConnectionError(f"the homeserver answered {response.status}")
            body = await response.json()
        return body.get("next_batch") if isinstance(body, dict) else None

    async def _watch(self) -> None:
        timeout = aiohttp.ClientTimeout(total=POLL_MS / 1000 + 30)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            since: str | None = None
            down = True  # at start: whatever the homeserver lost while the bridge was away
            last_round = 0.0
            while True:
                try:
                    since = await self._poll(http, since) or since
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.outages += 1
                    if not down:
                        log.info("the homeserver went away (%s): looking for lost events once it is back", exc)
                    down = True
                    since = None
                    await asyncio.sleep(PROBE)
                    continue
                now = time.monotonic()
                if down or now - last_round >= self._interval:
                    try:
                        await self.run_once()
                        last_round, down = now, False
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        log.warning("could not look for events the homeserver did not push: %s", exc)
                        await asyncio.sleep(PROBE)

    async def run_once(self) -> int:
        """One look at the active rooms; returns how many events it took in."""
        since_ms = int((time.time() - self._window) * 1000)
        found = 0
        for room_id in await self._store.active_rooms(since_ms):
            try:
                found += await self._room(room_id, since_ms)
            except MatrixRequestError as exc:
                if not 400 <= exc.http_status < 500 or exc.http_status == 429:
                    raise
                # A room the bot is not in any more (it left, or was removed): nothing of it
                # is ours to take in, and it must not stop the look at the others.
                log.debug("skipped %s in the look for lost events: %s", room_id, exc.errcode)
        if found:
            log.warning("took in %d room events the homeserver had not pushed (did it restart?)", found)
        self.found += found
        self.rounds += 1
        return found

    async def _room(self, room_id: str, since_ms: int) -> int:
        response = await self._intent.api.request(
            Method.GET, Path.v3.rooms[RoomID(room_id)].messages, query_params={"dir": "b", "limit": str(LIMIT)}
        )
        events = [
            e
            for e in response.get("chunk") or []
            if isinstance(e, dict)
            and e.get("type") in BRIDGED_TYPES
            and isinstance(e.get("event_id"), str)
            and int(e.get("origin_server_ts") or 0) >= since_ms
            and not self._ours(str(e.get("sender", "")))
        ]
        known = await self._store.known([e["event_id"] for e in events])
        missed = [e for e in reversed(events) if e["event_id"] not in known]  # oldest first
        if not missed:
            return 0
        for event in missed:
            event.setdefault("room_id", room_id)
        await self._intake.receive(f"catch-up/{missed[0]['event_id']}", {"events": missed})
        return len(missed)
