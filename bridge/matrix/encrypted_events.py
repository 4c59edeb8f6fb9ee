"""Encrypted events from Matrix: decrypted and handed on, or kept until their key comes.

An event whose room key has not arrived is never dropped. Its ciphertext is stored, the
sender sees a retriable send status, and the bridge waits for the key beside the
homeserver's transaction: the key comes in a later transaction, which this one would
otherwise hold up. After a bounded wait the sender gets a notice saying what to do; a key
that comes later still (up to ``late_key_hours``, across restarts) bridges the message and
removes the notice. Exactly one path bridges each event: whoever takes it out of the
store first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from mautrix.errors import DecryptionError, SessionNotFound
from mautrix.types import EncryptedEvent, SessionID

from bridge.config import EncryptionConfig
from bridge.core.matrix_api import SendStatus, StatusReport
from bridge.db.undecrypted import UndecryptedStore

from .e2ee import Encryption

log = logging.getLogger(__name__)
UNDECRYPTABLE = "com.beeper.undecryptable_event"
NOT_SET_UP = (
    "This bridge is not set up for encrypted rooms, so your message was not delivered. Ask the bridge's admin to "
    "turn on bridge.encryption, or use an unencrypted room."
)
BROKEN = (
    "The bridge could not decrypt this message, so it was not delivered. Send it again; if this keeps happening, "
    "sign out of the device you sent it from and in again."
)
WAITING = "The bridge has not received the key for this message yet; it is waiting for it."
GAVE_UP = "The key for this message never arrived, so it was not delivered. Send it again."


def _no_key_yet(hours: float) -> str:
    return (
        "Your message has not been delivered: the bridge never received its decryption key from your device. It "
        f"goes out by itself if the key still arrives in the next {hours:g} hours (keep the device you sent it "
        "from online). Otherwise send it again, and if this keeps happening, verify that device or sign in again."
    )


class Room(Protocol):
    """What this needs of the connector: the bot's voice in a room."""

    async def send_status(self, room_id: str, event_id: str, report: StatusReport) -> None: ...

    async def send_notice(self, room_id: str, text: str) -> str: ...

    async def redact_notice(self, room_id: str, event_id: str) -> None: ...


class EncryptedEvents:
    def __init__(
        self,
        config: EncryptionConfig,
        e2ee: Encryption | None,
        store: UndecryptedStore,
        room: Room,
        handle: Callable[[Any], Awaitable[None]],
        spawn: Callable[[Awaitable[Any], str], None],
    ) -> None:
        self.config = config
        self.e2ee = e2ee
        self.store = store
        self.room = room
        self._handle = handle
        self._spawn = spawn
        self._expiry: asyncio.Task[None] | None = None
        if e2ee is not None:
            e2ee.olm.on_session = self._session_arrived

    async def start(self) -> None:
        """Events kept before a restart: bridged if their key came, else waited for again."""
        if self.e2ee is None:
            return
        self._expiry = asyncio.get_running_loop().create_task(self._expire(), name="late keys")
        for item in await self.store.all():
            if item.notice_event_id is None:
                evt = EncryptedEvent.deserialize(json.loads(item.event))
                self._spawn(self._await_key(evt, SessionID(item.session_id)), f"key for {item.event_id}")
            else:
                self._spawn(self.retry(item.event_id), f"retry {item.event_id}")

    def stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()

    async def handle(self, evt: EncryptedEvent) -> None:
        """Within the transaction: decrypt and hand on, or keep and wait beside it."""
        if self.e2ee is None:
            await self._tell(evt.room_id, evt.event_id, SendStatus.FAIL_PERMANENT, NOT_SET_UP)
            return
        try:
            decrypted = await self.e2ee.decrypt(evt)
        except SessionNotFound as exc:
            if await self.store.add(evt.event_id, evt.room_id, exc.session_id, json.dumps(evt.serialize())):
                await self._tell(evt.room_id, evt.event_id, SendStatus.FAIL_RETRIABLE, WAITING, notice=False)
                self._spawn(self._await_key(evt, SessionID(exc.session_id)), f"key for {evt.event_id}")
            return
        except DecryptionError as exc:
            log.warning("could not decrypt %s in %s: %s", evt.event_id, evt.room_id, type(exc).__name__)
            await self._tell(evt.room_id, evt.event_id, SendStatus.FAIL_PERMANENT, BROKEN)
            return
        await self._handle(decrypted)

    async def _tell(self, room_id: str, event_id: str, status: SendStatus, text: str, notice: bool = True) -> str:
        await self.room.send_status(room_id, event_id, StatusReport(status, UNDECRYPTABLE, text))
        return await self.room.send_notice(room_id, f"⚠️ {text}") if notice else ""

    async def _await_key(self, evt: EncryptedEvent, session_id: SessionID) -> None:
        assert self.e2ee is not None
        if await self.e2ee.wait_for_key(evt, session_id, self.config.key_wait_seconds):
            await self.retry(evt.event_id)
            return
        if await self.store.get(evt.event_id) is None:
            return  # bridged meanwhile
        notice = await self._tell(
            evt.room_id, evt.event_id, SendStatus.FAIL_RETRIABLE, _no_key_yet(self.config.late_key_hours)
        )
        await self.store.noticed(evt.event_id, notice)
        await self.retry(evt.event_id)  # the key may have come while we told them

    def _session_arrived(self, session_id: SessionID) -> None:
        self._spawn(self._retry_session(session_id), f"late key {session_id}")

    async def _retry_session(self, session_id: SessionID) -> None:
        for item in await self.store.for_session(session_id):
            await self.retry(item.event_id)

    async def retry(self, event_id: str) -> None:
        """Bridge a kept event if its key is here now."""
        assert self.e2ee is not None
        item = await self.store.get(event_id)
        if item is None:
            return
        evt = EncryptedEvent.deserialize(json.loads(item.event))
        try:
            decrypted = await self.e2ee.decrypt(evt)
        except SessionNotFound:
            return  # still waiting
        except DecryptionError as exc:
            log.warning("could not decrypt %s after its key came: %s", event_id, type(exc).__name__)
            if await self.store.remove(event_id):
                await self._tell(item.room_id, event_id, SendStatus.FAIL_PERMANENT, BROKEN)
            return
        if not await self.store.remove(event_id):
            return  # another path took it
        if item.notice_event_id:
            await self.room.redact_notice(item.room_id, item.notice_event_id)
        await self._handle(decrypted)

    async def _expire(self) -> None:
        """Hourly: events whose key never came are given up, and their senders told."""
        while True:
            cutoff = int((time.time() - self.config.late_key_hours * 3600) * 1000)
            for item in await self.store.expire(cutoff):
                await self._tell(item.room_id, item.event_id, SendStatus.FAIL_PERMANENT, GAVE_UP, notice=False)
            await asyncio.sleep(3600)
