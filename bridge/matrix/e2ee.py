"""End-to-bridge encryption: the bridge's Matrix devices and the routing between them.

Appservice mode only: to-device events, device-list changes and one-time-key counts come
in the homeserver's transactions (MSC2409, MSC3202), and devices are created by the bridge
itself (MSC4190) or, for the bot on homeservers without it, by an appservice login.

The bot's device decrypts everything Matrix users send and encrypts what the bot posts
(notices, send statuses). With ``puppet_devices`` each puppet gets a device of its own,
cross-signed by the puppet's own keys, and encrypts what it posts: Element then shows the
puppet's messages like any user's, instead of with the red "encrypted by an unknown or
deleted device" shield it draws when the bot's device speaks for another user. Nothing
here logs plaintext or key material.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import aiohttp
from mautrix.appservice import AppService
from mautrix.crypto import RejectKeyShare
from mautrix.errors import EncryptionError, MatrixError
from mautrix.types import (
    ASToDeviceEvent,
    DeviceIdentity,
    DeviceLists,
    DeviceOTKCount,
    EncryptedEvent,
    EncryptedMegolmEventContent,
    EncryptionAlgorithm,
    Event,
    EventType,
    KeyRequestAction,
    Membership,
    RequestedKeyInfo,
    RoomCreatePreset,
    RoomID,
    RoomKeyRequestEventContent,
    RoomKeyWithheldCode,
    SessionID,
    StateEvent,
    TrustState,
    UserID,
)

from bridge.config import BridgeConfig

from .crypto_store import CachedCryptoStore, KeyCache
from .device import BridgeOlmMachine, DeviceCrypto, EncryptionSetupError
from .stores import BridgeStateStore

log = logging.getLogger(__name__)
SELF_TEST = EventType.find("fi.dma_bridge.push_check", EventType.Class.TO_DEVICE)
PUPPET_RETRY = 3600.0  # seconds before a puppet whose device could not be made is tried again

__all__ = ["Encryption", "EncryptionSetupError"]


class Encryption:
    def __init__(
        self,
        config: BridgeConfig,
        az: AppService,
        state_store: BridgeStateStore,
        crypto_db: Any,
        pickle_key: str,
        is_puppet: Callable[[str], bool],
    ) -> None:
        self.config = config
        self.az = az
        self.state_store = state_store
        self._is_puppet = is_puppet
        self._crypto_db = crypto_db
        self._pickle_key = pickle_key
        self._keys = KeyCache()
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=None if config.verify_ssl else False))
        self._key_requests: dict[SessionID, asyncio.Task[bool]] = {}
        self.bot = self._device(UserID(az.bot_mxid))
        self.bot.olm.on_devices = self._devices_changed
        self._puppets: dict[UserID, DeviceCrypto] = {}
        self._puppet_locks: defaultdict[UserID, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._puppet_failures: dict[UserID, float] = {}
        self._share_locks: defaultdict[tuple[UserID, RoomID], asyncio.Lock] = defaultdict(asyncio.Lock)
        self._push_check: asyncio.Future[None] | None = None
        self._push_nonces: set[str] = set()
        self._otk_count_seen = asyncio.Event()

    def _device(self, user_id: UserID) -> DeviceCrypto:
        return DeviceCrypto(
            self.config,
            user_id,
            self._crypto_db,
            self._pickle_key,
            self.state_store,
            self._keys,
            self._http,
            self._allow_key_share,
        )

    # The bot's device is the one that decrypts; these name its parts.
    @property
    def olm(self) -> BridgeOlmMachine:
        return self.bot.olm

    @property
    def store(self) -> CachedCryptoStore:
        return self.bot.store

    @property
    def device_id(self) -> str:
        return str(self.bot.device_id)

    # ------------------------------------------------------------------ puppets' devices

    async def puppet(self, user_id: str, *, create: bool = True) -> DeviceCrypto | None:
        """A puppet's device, started on first use; ``create=False`` only takes up one that
        exists from an earlier run (a to-device event for it after a restart)."""
        mxid = UserID(user_id)
        device = self._puppets.get(mxid)
        if device is not None:
            return device
        async with self._puppet_locks[mxid]:
            if mxid in self._puppets:
                return self._puppets[mxid]
            device = self._device(mxid)
            if not create and not await device.exists():
                return None
            await device.start(self.config.encryption.self_sign)
            self._puppets[mxid] = device
            return device

    async def _puppet_or_bot(self, sender: str) -> DeviceCrypto:
        """The puppet's device; if the homeserver will not make one, the bot's, so that the
        message still goes out encrypted (with Element's shield on it), and a retry later."""
        failed_at = self._puppet_failures.get(UserID(sender))
        if failed_at is not None and time.monotonic() - failed_at < PUPPET_RETRY:
            return self.bot
        try:
            device = await self.puppet(sender)
        except (EncryptionSetupError, MatrixError) as exc:
            log.warning("could not set up %s's device, the bot's device speaks for it: %s", sender, exc)
            self._puppet_failures[UserID(sender)] = time.monotonic()
            return self.bot
        self._puppet_failures.pop(UserID(sender), None)
        return device or self.bot

    def _sender_device(self, sender: str) -> bool:
        return self.config.encryption.puppet_devices and self._is_puppet(sender)

    # ------------------------------------------------------------------ from the homeserver

    def is_push_check(self, event: dict[str, Any]) -> bool:
        """Whether a pushed to-device event is our own start-up check (and note it)."""
        if event.get("type") != SELF_TEST.t:
            return False
        content = event.get("content")
        nonce = content.get("nonce") if isinstance(content, dict) else None
        if self._push_check is not None and not self._push_check.done() and nonce in self._push_nonces:
            self._push_check.set_result(None)
        return True

    async def _owner(self, user_id: str, device_id: str | None) -> DeviceCrypto | None:
        if user_id == self.az.bot_mxid:
            device: DeviceCrypto | None = self.bot
        elif self._is_puppet(user_id):
            device = await self.puppet(user_id, create=False)
        else:
            return None
        return device if device is not None and device_id == device.device_id else None

    async def handle_to_device(self, raw: dict[str, Any]) -> None:
        """One to-device event for one of our devices (``to_user_id``/``to_device_id``)."""
        evt = ASToDeviceEvent.deserialize(raw)
        device = await self._owner(evt.to_user_id, evt.to_device_id)
        if device is not None:
            await device.olm.handle_as_to_device_event(evt)

    async def handle_key_counts(self, counts: dict[str, Any], *, synced: bool = False) -> None:
        # Only our devices' counts: the homeserver also reports the bot's cross-signing keys as devices.
        for user_id, devices in counts.items():
            for device_id, count in devices.items():
                device = await self._owner(user_id, device_id)
                if device is None:
                    continue
                if device is self.bot and not synced:
                    self._otk_count_seen.set()
                parsed = count if isinstance(count, DeviceOTKCount) else DeviceOTKCount.deserialize(count)
                await device.olm.handle_otk_count(parsed)

    async def handle_device_lists(self, raw: dict[str, Any]) -> None:
        # The bot's machine fetches the changed keys into the tables every device shares.
        await self.bot.olm.handle_device_lists(DeviceLists.deserialize(raw))

    async def _devices_changed(self, user_id: UserID) -> None:
        """Someone's devices changed: no device of ours may go on with a room key that the
        new device never got, in any room shared with them."""
        rooms = await self.state_store.find_shared_rooms(user_id)
        if rooms:
            await self.bot.store.remove_every_accounts_outbound_sessions(rooms)
            for device in self._puppets.values():
                device.store.forget_outbound(rooms)

    # ------------------------------------------------------------------ start-up

    async def start(self) -> None:
        """The bot's device: created or taken up, keys uploaded, cross-signed."""
        await self.bot.start(self.config.encryption.self_sign)

    async def check_pushes(self, timeout: float = 15.0) -> None:
        """Send a to-device event to our own device and wait for it in a transaction; the
        same transaction must carry our one-time-key count. Missing either means the
        homeserver or the registration lacks a setting, and encryption would fail later.

        The event is sent again every 2 s: a homeserver that marked the bridge down while
        it was away keeps only room events for it until it has caught up, and drops the
        to-device events of that moment (Synapse does)."""
        self._push_check = asyncio.get_running_loop().create_future()
        client, device = self.bot.client, self.bot.device_id
        deadline = time.monotonic() + timeout
        nudged = False
        while not self._push_check.done() and time.monotonic() < deadline:
            nonce = secrets.token_hex(8)
            self._push_nonces.add(nonce)
            await client.send_to_device(SELF_TEST, {client.mxid: {device: {"nonce": nonce}}})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._push_check), min(2.0, max(deadline - time.monotonic(), 0)))
            if not self._push_check.done() and not nudged:
                nudged = True
                await self._wake_appservice_scheduler()
        if not self._push_check.done():
            raise EncryptionSetupError(
                "the homeserver does not push to-device events to the bridge (MSC2409). In homeserver.yaml set "
                "experimental_features: {msc2409_to_device_messages_enabled: true, msc3202_transaction_extensions: "
                "true}, and in registration.yaml `de.sorunome.msc2409.push_ephemeral: true` and "
                "`org.matrix.msc3202: true`; then restart the homeserver."
            )
        try:
            await asyncio.wait_for(self._otk_count_seen.wait(), 5)
        except TimeoutError:
            raise EncryptionSetupError(
                "the homeserver does not send the bridge's one-time-key counts and device lists (MSC3202). Set "
                "experimental_features.msc3202_transaction_extensions: true in homeserver.yaml and "
                "`org.matrix.msc3202: true` in registration.yaml; then restart the homeserver."
            ) from None

    async def _wake_appservice_scheduler(self) -> None:
        """Synapse starts sending to appservices, and retrying one it marked down before a
        restart, only when a room event for an appservice comes after its own start; until
        then every to-device event for the bridge is dropped. A room of the bot's own,
        made and left at once, is that event."""
        client = self.bot.client
        try:
            room_id = await client.create_room(name="bridge start-up", preset=RoomCreatePreset.PRIVATE)
            await client.leave_room(room_id)
            await client.forget_room(room_id)
            log.info("the homeserver sent nothing yet: woke its appservice sender with a room of the bot's own")
        except MatrixError as exc:
            log.warning("could not wake the homeserver's appservice sender: %s", exc)

    async def stop(self) -> None:
        for device in [self.bot, *self._puppets.values()]:
            await device.close()
        await self._http.close()

    # ------------------------------------------------------------------ rooms

    async def handle_member(self, evt: StateEvent) -> None:
        """A member left or was removed: the next message needs a new room key, from every
        device of ours that speaks there. Puppets and the bot never change who can read."""
        if self._is_puppet(evt.state_key) or evt.state_key == self.az.bot_mxid:
            return
        await self.bot.olm.handle_member_event(evt)
        speakers = await self.state_store.get_members(evt.room_id, (Membership.JOIN,))
        for puppet in speakers:
            device = self._puppets.get(puppet)
            if device is not None:
                await device.olm.handle_member_event(evt)

    async def encrypt(
        self, room_id: RoomID, event_type: EventType, content: Any, sender: str | None = None
    ) -> EncryptedMegolmEventContent:
        """Encrypt as ``sender``'s device (a puppet's, with puppet_devices) or the bot's."""
        device = self.bot
        if sender is not None and self._sender_device(sender):
            device = await self._puppet_or_bot(sender)
        olm = device.olm
        try:
            return await olm.encrypt_megolm_event(room_id, event_type, content)
        except EncryptionError:
            async with self._share_locks[(device.user_id, room_id)]:
                try:  # another sender shared a session while we waited for the lock
                    return await olm.encrypt_megolm_event(room_id, event_type, content)
                except EncryptionError:
                    await olm.share_group_session(room_id, await self._readers(room_id))
            return await olm.encrypt_megolm_event(room_id, event_type, content)

    async def _readers(self, room_id: RoomID) -> list[UserID]:
        members = await self.state_store.get_members(room_id, (Membership.JOIN, Membership.INVITE))
        return [m for m in members if not self._is_puppet(m) and m != self.az.bot_mxid]

    async def decrypt(self, evt: EncryptedEvent) -> Event:
        """The plaintext event; raises SessionNotFound when the room key has not come yet."""
        return await self.bot.olm.decrypt_megolm_event(evt)

    async def wait_for_key(self, evt: EncryptedEvent, session_id: SessionID, timeout: float) -> bool:
        """Wait for a room key, asking the sending device for it after a short while.

        One request per session however many events wait for it (mautrix keeps one waiter
        per session and breaks when asked twice); every waiter waits on the session itself.
        """
        olm = self.bot.olm
        deadline = time.monotonic() + timeout
        if await olm.wait_for_session(evt.room_id, session_id, timeout=min(3.0, timeout)):
            return True
        content = evt.content
        assert isinstance(content, EncryptedMegolmEventContent)
        if session_id not in self._key_requests and content.device_id:
            self._key_requests[session_id] = asyncio.get_running_loop().create_task(
                self._request_key(evt, content, session_id, max(deadline - time.monotonic(), 1.0)),
                name=f"key request {session_id}",
            )
        return await olm.wait_for_session(evt.room_id, session_id, timeout=max(deadline - time.monotonic(), 0.1))

    async def _request_key(
        self, evt: EncryptedEvent, content: EncryptedMegolmEventContent, session_id: SessionID, timeout: float
    ) -> bool:
        request_id = secrets.token_hex(12)
        body = RequestedKeyInfo(
            algorithm=EncryptionAlgorithm.MEGOLM_V1,
            room_id=evt.room_id,
            sender_key=content.sender_key,
            session_id=session_id,
        )
        client = self.bot.client
        request = RoomKeyRequestEventContent(
            action=KeyRequestAction.REQUEST, body=body, request_id=request_id, requesting_device_id=client.device_id
        )
        cancel = RoomKeyRequestEventContent(
            action=KeyRequestAction.CANCEL, request_id=request_id, requesting_device_id=client.device_id
        )
        try:
            await client.send_to_device(EventType.ROOM_KEY_REQUEST, {evt.sender: {content.device_id: request}})
            got = await self.bot.olm.wait_for_session(evt.room_id, session_id, timeout=timeout)
            await client.send_to_device(EventType.ROOM_KEY_REQUEST, {evt.sender: {content.device_id: cancel}})
            return got
        except MatrixError as exc:
            log.warning("could not request a room key in %s: %s", evt.room_id, exc)
            return False
        finally:
            self._key_requests.pop(session_id, None)

    async def _allow_key_share(self, device: DeviceIdentity, request: RequestedKeyInfo) -> bool:
        """A member's device may have the keys of the room it is in (a new device asking for
        recent history); others are told why not."""
        if device.trust == TrustState.BLACKLISTED:
            raise RejectKeyShare(
                "blacklisted device", code=RoomKeyWithheldCode.BLACKLISTED, reason="This device is blacklisted."
            )
        member = await self.state_store.get_member(request.room_id, device.user_id)
        if member is None or member.membership != Membership.JOIN:
            raise RejectKeyShare(
                "not a member", code=RoomKeyWithheldCode.UNAUTHORIZED, reason="You are not in this room."
            )
        return True
