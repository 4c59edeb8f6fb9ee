"""A Matrix user for the tests: a real /sync client (mautrix + python-olm) that records what it sees.

It encrypts in encrypted rooms and decrypts what arrives encrypted, waiting a bounded time
for a room key that has not come yet; events it cannot decrypt are kept in
``undecryptable``, so that a test can assert there were none.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from mautrix.client import Client, DecryptionDispatcher
from mautrix.client.state_store.memory import MemoryStateStore
from mautrix.crypto import OlmMachine
from mautrix.crypto import StateStore as CryptoStateStore
from mautrix.crypto.store.memory import MemoryCryptoStore
from mautrix.errors import DecryptionError, SessionNotFound
from mautrix.types import (
    CrossSigningUsage,
    EncryptedEvent,
    EventType,
    Membership,
    PaginationDirection,
    RoomID,
    SigningKey,
    StateEvent,
    TrustState,
    UserID,
)

from devstack.waits import WaitsForEvents


class _StateStore(MemoryStateStore, CryptoStateStore):
    async def find_shared_rooms(self, user_id: UserID) -> list[RoomID]:
        return [
            room
            for room, members in self.members.items()
            if user_id in members and members[user_id].membership == Membership.JOIN
        ]


class _CryptoStore(MemoryCryptoStore):
    """mautrix 0.21.1's memory store assigns to a NamedTuple when a cross-signing key is
    seen again; replace the tuple instead."""

    async def put_cross_signing_key(self, user_id: UserID, usage: CrossSigningUsage, key: SigningKey) -> None:
        current = self._cross_signing_keys.get(user_id, {}).get(usage)
        if current is None:
            await super().put_cross_signing_key(user_id, usage, key)
        else:
            self._cross_signing_keys[user_id][usage] = current._replace(key=key)


class MatrixUser(WaitsForEvents):
    def __init__(self, base: str, mxid: str) -> None:
        self.mxid = mxid
        self.state_store = _StateStore()
        self.crypto_store = _CryptoStore(account_id=mxid, pickle_key="test")
        self.client = Client(mxid=UserID(mxid), base_url=base, state_store=self.state_store)
        self.olm: OlmMachine | None = None
        self.events: list[dict[str, Any]] = []
        self.undecryptable: list[str] = []
        self._arrived = asyncio.Condition()
        self._sync: asyncio.Task[Any] | None = None

    async def login(self, password: str) -> None:
        await self.client.login(identifier=self.mxid.split(":")[0][1:], password=password)
        await self.crypto_store.put_device_id(self.client.device_id)
        self.olm = OlmMachine(self.client, self.crypto_store, self.state_store)
        # As Element does: room keys go to every device, verified or not.
        self.olm.share_keys_min_trust = TrustState.UNVERIFIED
        await self.olm.load()
        self.client.crypto = self.olm
        self.client.remove_dispatcher(DecryptionDispatcher)  # decrypted below, with a wait for late keys
        await self.olm.share_keys()
        self.client.add_event_handler(EventType.ALL, self._record)
        self._sync = self.client.start(None)

    @property
    def device_id(self) -> str:
        return str(self.client.device_id)

    async def _record(self, evt: Any) -> None:
        if isinstance(evt, EncryptedEvent):
            asyncio.get_running_loop().create_task(self._decrypt(evt))
            return
        await self._append(evt.serialize())
        invited = isinstance(evt, StateEvent) and evt.type == EventType.ROOM_MEMBER and evt.state_key == self.mxid
        if invited and evt.content.membership == Membership.INVITE:
            await self.client.join_room(evt.room_id)

    async def _decrypt(self, evt: EncryptedEvent) -> None:
        assert self.olm is not None
        try:
            try:
                decrypted = await self.olm.decrypt_megolm_event(evt)
            except SessionNotFound as exc:
                if not await self.olm.wait_for_session(evt.room_id, exc.session_id, timeout=15):
                    raise
                decrypted = await self.olm.decrypt_megolm_event(evt)
        except DecryptionError:
            self.undecryptable.append(evt.event_id)
            return
        raw = decrypted.serialize()
        raw["encrypted"] = True
        raw["session_id"] = evt.content.session_id
        await self._append(raw)

    async def _append(self, raw: dict[str, Any]) -> None:
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

    async def history(self, room_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The room's latest events as the homeserver holds them, oldest first (a /sync after
        a gap can leave some out of ``events``)."""
        response = await self.client.get_messages(RoomID(room_id), direction=PaginationDirection.BACKWARD, limit=limit)
        return [event.serialize() for event in reversed(response.events)]

    async def create_dm(self, invitee: str, encrypted: bool = False) -> str:
        initial_state = [{"type": "m.room.encryption", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]
        return await self.client.create_room(
            invitees=[UserID(invitee)], is_direct=True, initial_state=initial_state if encrypted else []
        )

    async def redact(self, room_id: str, event_id: str) -> str:
        return await self.client.redact(RoomID(room_id), event_id)

    async def send(self, room_id: str, event_type: str, content: dict[str, Any]) -> str:
        """Any message event, encrypted when the room is (as Element sends it)."""
        kind = EventType.find(event_type, EventType.Class.MESSAGE)
        return await self.client.send_message_event(RoomID(room_id), kind, content)

    async def say(self, room_id: str, text: str) -> str:
        return await self.client.send_text(room_id, text)

    async def close(self) -> None:
        self.client.stop()
        if self._sync is not None:
            self._sync.cancel()
        await self.client.api.session.close()
