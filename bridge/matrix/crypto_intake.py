"""To-device events for the bridge's devices: from the transactions and from the bot's
own ``/sync``, each handled once, one at a time.

A homeserver pushes to-device events in appservice transactions (MSC2409), but Synapse
drops them while it counts the bridge as down (a restart): it keeps only room events for
an appservice's catch-up. A room key lost there is a message nobody can read. The bot's
device therefore also syncs its to-device stream (``/sync`` as the device, with every room
filtered out): the homeserver keeps a device's to-device messages until that device has
acknowledged them with its next sync token, which the bridge stores only after handling
them. The same event comes both ways; a digest of it (kept in ``to_device_seen``) lets
only the first through, so that a handled Olm message is never decrypted twice (which
mautrix would answer by replacing the session with the sender).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from mautrix.api import Method, Path
from mautrix.errors import MatrixRequestError

from bridge.db.database import Database
from bridge.db.kv import KeyValueStore
from bridge.db.matrix_events import MatrixEventStore, StoredEvent

if TYPE_CHECKING:
    from .e2ee import Encryption

log = logging.getLogger(__name__)
RECENT = 4096
# Only the to-device stream: no rooms, presence or account data.
SYNC_FILTER = json.dumps(
    {
        "room": {"rooms": [], "account_data": {"types": []}},
        "presence": {"types": []},
        "account_data": {"types": []},
    },
    separators=(",", ":"),
)
SYNC_TIMEOUT_MS = 30_000


def digest(event: dict[str, Any], to_user: str, to_device: str) -> str:
    canonical = json.dumps(
        [event.get("sender"), event.get("type"), event.get("content"), to_user, to_device],
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class CryptoIntake:
    def __init__(self, e2ee: Encryption, store: MatrixEventStore, db: Database) -> None:
        self._e2ee = e2ee
        self._store = store
        self._db = db
        self._queue: asyncio.Queue[StoredEvent] = asyncio.Queue()
        self._serial = asyncio.Lock()
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._worker: asyncio.Task[None] | None = None
        self.handled = 0
        self.duplicates = 0

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="crypto intake")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    def submit(self, event: StoredEvent) -> None:
        """A stored event from a transaction."""
        self._queue.put_nowait(event)

    async def idle(self) -> None:
        """Wait until every submitted event is handled (start-up, tests)."""
        while not self._queue.empty() or self._serial.locked():
            await asyncio.sleep(0.01)

    async def _work(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                async with self._serial:
                    if event.kind == "device_lists":
                        await self._e2ee.handle_device_lists(event.body)
                    else:
                        await self._once(event.body, "push")
                await self._store.mark_done(event.id)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Handled as far as it can be: an event that breaks the Olm machine is not
                # retried forever. It stays visible in the log.
                log.exception("could not handle a to-device event from %s", event.body.get("sender"))
                with contextlib.suppress(Exception):
                    await self._store.mark_failed(event.id, "handler")

    async def synced(self, events: list[dict[str, Any]], device_lists: dict[str, Any] | None) -> None:
        """What the bot's sync brought; returns once it is handled (the token may move)."""
        async with self._serial:
            for event in events:
                event = {**event, "to_user_id": self._e2ee.bot.user_id, "to_device_id": self._e2ee.bot.device_id}
                try:
                    await self._once(event, "sync")
                except Exception:
                    log.exception("could not handle a synced to-device event from %s", event.get("sender"))
            if device_lists and (device_lists.get("changed") or device_lists.get("left")):
                await self._e2ee.handle_device_lists(device_lists)

    async def _once(self, event: dict[str, Any], source: str) -> None:
        if source == "push" and self._e2ee.is_push_check(event):
            return
        key = digest(event, str(event.get("to_user_id")), str(event.get("to_device_id")))
        if key in self._recent or await self._db.fetchval("SELECT 1 FROM to_device_seen WHERE digest = $1", key):
            self.duplicates += 1
            return
        await self._e2ee.handle_to_device(event)
        self.handled += 1
        await self._db.execute(
            "INSERT INTO to_device_seen (digest, seen_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            key,
            int(time.time() * 1000),
        )
        self._recent[key] = None
        while len(self._recent) > RECENT:
            self._recent.popitem(last=False)


async def prune_seen(db: Database, before_ms: int) -> int:
    return await db.execute("DELETE FROM to_device_seen WHERE seen_at < $1", before_ms)


class BotSync:
    """The bot device's to-device stream, position stored after what it brought is handled."""

    def __init__(self, e2ee: Encryption, intake: CryptoIntake, kv: KeyValueStore) -> None:
        self._e2ee = e2ee
        self._intake = intake
        self._kv = kv
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="bot to-device sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        client = self._e2ee.bot.client
        name = f"to_device_sync/{self._e2ee.bot.device_id}"
        token = await self._retrying(lambda: self._kv.get(name))
        delay = 1.0
        while True:
            query = {"timeout": str(SYNC_TIMEOUT_MS), "filter": SYNC_FILTER, "set_presence": "offline"}
            if token:
                query["since"] = token
            try:
                response = await client.api.request(Method.GET, Path.v3.sync, query_params=query)
            except asyncio.CancelledError:
                raise
            except MatrixRequestError as exc:
                if 400 <= exc.http_status < 500 and exc.http_status != 429:
                    log.warning(
                        "the homeserver refuses the bot device's sync (%s); to-device events come only pushed, and "
                        "one dropped while the bridge was away is lost",
                        exc.errcode,
                    )
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            except Exception as exc:
                log.info("the bot device's sync failed (%s); trying again", type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            events = (response.get("to_device") or {}).get("events") or []
            if token is None:
                # The first sync of a device: what waits is what the pushes already brought
                # (the homeserver never deletes a device's messages on pushing them).
                if events:
                    log.info("the bot device's first sync skipped %d to-device events it already had", len(events))
            else:
                try:
                    await self._intake.synced(events, response.get("device_lists"))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # A device-list change needs the homeserver again (keys/query): with it
                    # gone, the round is taken again from the same position, later.
                    log.info("the bot device's sync could not be handled (%s); trying again", type(exc).__name__)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                    continue
            delay = 1.0
            counts = response.get("device_one_time_keys_count")
            if counts:
                with contextlib.suppress(Exception):
                    await self._e2ee.handle_key_counts(
                        {self._e2ee.bot.user_id: {self._e2ee.bot.device_id: counts}}, synced=True
                    )
            token = response.get("next_batch") or token
            if token:
                await self._retrying(lambda: self._kv.put(name, token))  # noqa: B023 - awaited at once
            self.rounds += 1

    @staticmethod
    async def _retrying(step: Any) -> Any:
        delay = 0.5
        while True:
            try:
                return await step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("the bot device's sync position could not be read or stored: %s", type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
