"""Encrypted events from Matrix: decrypted in their room's loop, or kept until their key comes.

An event whose room key has not arrived is never dropped. Its ciphertext is stored, the
sender sees a retriable send status, and the room's loop waits for the key in place (a
key a few seconds late keeps the room's order: nothing overtakes the event). After
``key_wait_seconds`` the sender gets a notice saying what to do and the loop moves on; a
key that comes later still (up to ``late_key_hours``, across restarts) bridges the message
from the room's loop and removes the notice. Exactly one path bridges each event:
whoever takes it out of the store first.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from mautrix.errors import DecryptionError, SessionNotFound
from mautrix.types import EncryptedEvent, Event, SessionID

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

    async def send_status(
        self, room_id: str, event_id: str, report: StatusReport, *, txn_id: str | None = None
    ) -> None: ...

    async def send_notice(self, room_id: str, text: str, *, txn_id: str | None = None) -> str: ...

    async def redact_notice(self, room_id: str, event_id: str) -> None: ...


# Queue the bridging of a kept event (room id, event id) in its room's loop.
Resubmit = Callable[[str, str], None]


class EncryptedEvents:
    def __init__(
        self,
        config: EncryptionConfig,
        e2ee: Encryption | None,
        store: UndecryptedStore,
        room: Room,
        resubmit: Resubmit,
        spawn: Callable[[Awaitable[object], str], None],
    ) -> None:
        self.config = config
        self.e2ee = e2ee
        self.store = store
        self.room = room
        self._resubmit = resubmit
        self._spawn = spawn
        if e2ee is not None:
            e2ee.olm.on_session = self._session_arrived

    async def start(self) -> None:
        """Kept events whose wait ended get a try at once: their key may have come while
        the bridge was away. (One still waiting when the bridge stopped waits again in its
        place: its stored Matrix event runs again.)"""
        if self.e2ee is None:
            return
        for item in await self.store.all():
            if item.notice_event_id is not None:
                self._resubmit(item.room_id, item.event_id)

    async def decrypt(self, evt: EncryptedEvent) -> Event | None:
        """The plaintext event, or None when it cannot be bridged now: kept for a late key,
        or undecryptable (the sender has been told either way)."""
        if self.e2ee is None:
            await self._tell(evt.room_id, evt.event_id, SendStatus.FAIL_PERMANENT, NOT_SET_UP)
            return None
        try:
            return await self.e2ee.decrypt(evt)
        except SessionNotFound as exc:
            session_id = SessionID(exc.session_id)
        except DecryptionError as exc:
            log.warning("could not decrypt %s in %s: %s", evt.event_id, evt.room_id, type(exc).__name__)
            await self._tell(evt.room_id, evt.event_id, SendStatus.FAIL_PERMANENT, BROKEN)
            return None
        if await self.store.add(evt.event_id, evt.room_id, session_id, json.dumps(evt.serialize())):
            await self._tell(evt.room_id, evt.event_id, SendStatus.FAIL_RETRIABLE, WAITING, notice=False)
        else:
            kept = await self.store.get(evt.event_id)
            if kept is None or kept.notice_event_id:
                return None  # waited for before (a replay): the late path has it
        if await self.e2ee.wait_for_key(evt, session_id, self.config.key_wait_seconds):
            return await self.late(evt.event_id)
        if await self.store.get(evt.event_id) is None:
            return None  # bridged meanwhile
        notice = await self._tell(
            evt.room_id,
            evt.event_id,
            SendStatus.FAIL_RETRIABLE,
            _no_key_yet(self.config.late_key_hours),
            txn_id=f"dma-nokey-{evt.event_id}",
        )
        await self.store.noticed(evt.event_id, notice)
        return None

    async def _tell(
        self,
        room_id: str,
        event_id: str,
        status: SendStatus,
        text: str,
        *,
        notice: bool = True,
        txn_id: str | None = None,
    ) -> str:
        await self.room.send_status(room_id, event_id, StatusReport(status, UNDECRYPTABLE, text))
        return await self.room.send_notice(room_id, f"⚠️ {text}", txn_id=txn_id) if notice else ""

    def _session_arrived(self, session_id: SessionID) -> None:
        # Looked up beside the Olm machine's handler; the bridging itself runs in each room's loop.
        self._spawn(self._resubmit_session(session_id), f"late key {session_id}")

    async def _resubmit_session(self, session_id: SessionID) -> None:
        for item in await self.store.for_session(session_id):
            self._resubmit(item.room_id, item.event_id)

    async def late(self, event_id: str) -> Event | None:
        """A kept event, decrypted if its key is here now (in its room's loop); the one
        caller that takes it out of the store bridges it."""
        assert self.e2ee is not None
        item = await self.store.get(event_id)
        if item is None:
            return None
        evt = EncryptedEvent.deserialize(json.loads(item.event))
        try:
            decrypted = await self.e2ee.decrypt(evt)
        except SessionNotFound:
            return None  # still waiting
        except DecryptionError as exc:
            log.warning("could not decrypt %s after its key came: %s", event_id, type(exc).__name__)
            if await self.store.remove(event_id):
                await self._tell(item.room_id, event_id, SendStatus.FAIL_PERMANENT, BROKEN)
            return None
        if not await self.store.remove(event_id):
            return None  # another path took it
        if item.notice_event_id:
            await self.room.redact_notice(item.room_id, item.notice_event_id)
        return decrypted

    async def expire(self) -> None:
        """Events whose key never came are given up, and their senders told."""
        cutoff = int((time.time() - self.config.late_key_hours * 3600) * 1000)
        for item in await self.store.expire(cutoff):
            await self._tell(item.room_id, item.event_id, SendStatus.FAIL_PERMANENT, GAVE_UP, notice=False)
