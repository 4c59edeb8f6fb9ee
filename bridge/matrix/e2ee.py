"""End-to-bridge encryption: the bridge's Matrix device and its Olm/Megolm machine.

Appservice mode only: to-device events, device-list changes and one-time-key counts come
in the homeserver's transactions (MSC2409, MSC3202), and the device is created by the
bridge itself (MSC4190) or, for homeservers without it, by an appservice login. Nothing
here logs plaintext or key material.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import aiohttp
from mautrix.appservice import AppService
from mautrix.client import Client
from mautrix.crypto import OlmMachine, RejectKeyShare
from mautrix.errors import EncryptionError, MatrixError
from mautrix.types import (
    ASToDeviceEvent,
    DeviceID,
    DeviceIdentity,
    DeviceLists,
    DeviceOTKCount,
    EncryptedEvent,
    EncryptedMegolmEventContent,
    Event,
    EventType,
    LoginType,
    Membership,
    RequestedKeyInfo,
    RoomID,
    RoomKeyWithheldCode,
    SessionID,
    StateEvent,
    TrustState,
    UserID,
)

from bridge.config import BridgeConfig

from .crypto_store import CachedCryptoStore
from .stores import BridgeStateStore

log = logging.getLogger(__name__)
SELF_TEST = EventType.find("fi.dma_bridge.push_check", EventType.Class.TO_DEVICE)
DEVICE_NAME = "matrix-dma-bridge"


class EncryptionSetupError(Exception):
    """The homeserver lacks something end-to-bridge encryption needs; the text says what."""


class _BridgeOlmMachine(OlmMachine):
    """mautrix's machine, telling the bridge whenever a room key arrives, so that events
    kept for a late key are retried at once, not only while something waits for it."""

    on_session: Callable[[SessionID], None] | None = None

    def _mark_session_received(self, session_id: SessionID) -> None:
        super()._mark_session_received(session_id)
        if self.on_session is not None:
            self.on_session(session_id)


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
        self.client = Client(
            mxid=az.bot_mxid,
            base_url=config.homeserver_address,
            token=config.as_token,
            state_store=state_store,
            client_session=aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=None if config.verify_ssl else False)
            ),
        )
        self.client.api.as_user_id = az.bot_mxid
        self.store = CachedCryptoStore(az.bot_mxid, pickle_key, crypto_db)
        self.olm = _BridgeOlmMachine(self.client, self.store, state_store)
        # Every device of every member gets the room key (Element users rarely verify their
        # devices with a bridge), and keys from unverified devices are accepted.
        self.olm.share_keys_min_trust = TrustState.UNVERIFIED
        self.olm.send_keys_min_trust = TrustState.UNVERIFIED
        self.olm.allow_key_share = self._allow_key_share
        self._share_locks: defaultdict[RoomID, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._push_check: asyncio.Future[None] | None = None
        self._push_nonce = ""
        self._otk_count_seen = asyncio.Event()

    @property
    def device_id(self) -> str:
        return str(self.client.device_id)

    # ------------------------------------------------------------------ pushes from the homeserver

    def install_handlers(self) -> None:
        """Route the transaction's crypto parts to the machine; before the listener starts."""
        self.az.to_device_handler = self._to_device
        self.az.otk_handler = self._otk_counts
        self.az.device_list_handler = self._device_lists

    async def _to_device(self, evt: ASToDeviceEvent) -> None:
        if evt.type == SELF_TEST:
            nonce = evt.content.get("nonce") if isinstance(evt.content, dict) else getattr(evt.content, "nonce", None)
            if self._push_check is not None and not self._push_check.done() and nonce == self._push_nonce:
                self._push_check.set_result(None)
            return
        await self.olm.handle_as_to_device_event(evt)

    async def _otk_counts(self, counts: dict[UserID, dict[DeviceID, DeviceOTKCount]]) -> None:
        # Only our device's: the homeserver also reports devices of the bot that are not ours.
        ours = counts.get(self.az.bot_mxid, {}).get(self.client.device_id)
        if ours is not None:
            self._otk_count_seen.set()
            await self.olm.handle_as_otk_counts({self.az.bot_mxid: {self.client.device_id: ours}})

    async def _device_lists(self, lists: DeviceLists) -> None:
        await self.olm.handle_as_device_lists(lists)

    # ------------------------------------------------------------------ start-up

    async def start(self) -> None:
        """Open the store, create or reuse the device, upload keys, cross-sign, check pushes."""
        await self.store.open()
        device_id = await self.store.get_device_id()
        await self._create_device(device_id)
        await self.olm.load()
        if not device_id:
            await self.store.put_device_id(self.client.device_id)
            await self.olm.share_keys()
            log.info("created the bridge's Matrix device %s", self.client.device_id)
        elif self.olm.account.shared and not await self._keys_on_server():
            # The device was deleted on the homeserver (by an admin, or a database reset):
            # its sessions are worthless; start over with a new device instead of failing.
            log.warning("the bridge's device %s lost its keys on the homeserver; creating a new one", device_id)
            await self.store.delete()
            await self.start()
            return
        else:
            await self.olm.share_keys()
        if self.config.encryption.self_sign:
            await self._self_sign()

    async def _create_device(self, device_id: DeviceID | None) -> None:
        if self.config.encryption.msc4190:
            try:
                await self.client.create_device_msc4190(device_id or DeviceID(_new_device_id()), DEVICE_NAME)
            except MatrixError as exc:
                raise EncryptionSetupError(
                    f"the homeserver refused to create the bridge's device through MSC4190 ({exc}). Add "
                    "`io.element.msc4190: true` to registration.yaml (Synapse 1.127 or newer), or set "
                    "bridge.encryption.msc4190 to false on homeservers that allow appservice logins."
                ) from exc
            return
        flows = await self.client.get_login_flows()
        if not flows.supports_type(LoginType.APPSERVICE):
            raise EncryptionSetupError(
                "the homeserver offers no appservice login (m.login.application_service); set "
                "bridge.encryption.msc4190 to true and add `io.element.msc4190: true` to registration.yaml."
            )
        try:
            await self.client.login(
                login_type=LoginType.APPSERVICE,
                device_name=DEVICE_NAME,
                device_id=device_id,
                store_access_token=True,
                update_hs_url=False,
            )
        except MatrixError as exc:
            raise EncryptionSetupError(
                f"the homeserver refused the appservice login ({exc}). With `io.element.msc4190: true` in "
                "registration.yaml, set bridge.encryption.msc4190 to true as well."
            ) from exc

    async def _keys_on_server(self) -> bool:
        response = await self.client.query_keys([self.client.mxid])
        keys = response.device_keys.get(self.client.mxid, {}).get(self.client.device_id)
        return keys is not None and len(keys.keys) > 0

    async def _self_sign(self) -> None:
        trust = await self.olm.resolve_trust(self.olm.own_identity)
        if trust >= TrustState.CROSS_SIGNED_UNTRUSTED:
            return
        try:
            # The recovery key is thrown away: the bridge never needs its cross-signing
            # keys again once its one device is signed, and a key in a log is a leak.
            await self.olm.generate_recovery_key()
        except MatrixError as exc:
            log.warning("could not cross-sign the bridge's device (%s); clients will show it unverified", exc)
            return
        log.info("cross-signed the bridge's device %s", self.client.device_id)

    async def check_pushes(self, timeout: float = 15.0) -> None:
        """Send a to-device event to our own device and wait for it in a transaction; the
        same transaction must carry our one-time-key count. Missing either means the
        homeserver or the registration lacks a setting, and encryption would fail later."""
        self._push_nonce = secrets.token_hex(8)
        self._push_check = asyncio.get_running_loop().create_future()
        device = self.client.device_id
        await self.client.send_to_device(SELF_TEST, {self.client.mxid: {device: {"nonce": self._push_nonce}}})
        try:
            await asyncio.wait_for(asyncio.shield(self._push_check), timeout)
        except TimeoutError:
            raise EncryptionSetupError(
                "the homeserver does not push to-device events to the bridge (MSC2409). In homeserver.yaml set "
                "experimental_features: {msc2409_to_device_messages_enabled: true, msc3202_transaction_extensions: "
                "true}, and in registration.yaml `de.sorunome.msc2409.push_ephemeral: true` and "
                "`org.matrix.msc3202: true`; then restart the homeserver."
            ) from None
        try:
            await asyncio.wait_for(self._otk_count_seen.wait(), 5)
        except TimeoutError:
            raise EncryptionSetupError(
                "the homeserver does not send the bridge's one-time-key counts and device lists (MSC3202). Set "
                "experimental_features.msc3202_transaction_extensions: true in homeserver.yaml and "
                "`org.matrix.msc3202: true` in registration.yaml; then restart the homeserver."
            ) from None

    async def stop(self) -> None:
        await self.store.close()
        await self.client.api.session.close()

    # ------------------------------------------------------------------ rooms

    async def handle_member(self, evt: StateEvent) -> None:
        """A member left or was removed: the next message needs a new room key. Puppets and
        the bot have no devices of their own and never change who can read."""
        if self._is_puppet(evt.state_key) or evt.state_key == self.az.bot_mxid:
            return
        await self.olm.handle_member_event(evt)

    async def encrypt(self, room_id: RoomID, event_type: EventType, content: Any) -> EncryptedMegolmEventContent:
        try:
            return await self.olm.encrypt_megolm_event(room_id, event_type, content)
        except EncryptionError:
            async with self._share_locks[room_id]:
                try:  # another sender shared a session while we waited for the lock
                    return await self.olm.encrypt_megolm_event(room_id, event_type, content)
                except EncryptionError:
                    await self.olm.share_group_session(room_id, await self._readers(room_id))
            return await self.olm.encrypt_megolm_event(room_id, event_type, content)

    async def _readers(self, room_id: RoomID) -> list[UserID]:
        members = await self.state_store.get_members(room_id, (Membership.JOIN, Membership.INVITE))
        return [m for m in members if not self._is_puppet(m) and m != self.az.bot_mxid]

    async def decrypt(self, evt: EncryptedEvent) -> Event:
        """The plaintext event; raises SessionNotFound when the room key has not come yet."""
        return await self.olm.decrypt_megolm_event(evt)

    async def wait_for_key(self, evt: EncryptedEvent, session_id: SessionID, timeout: float) -> bool:
        """Wait for a room key, asking the sending device for it after a short while."""
        content = evt.content
        assert isinstance(content, EncryptedMegolmEventContent)
        if await self.olm.wait_for_session(evt.room_id, session_id, timeout=min(3.0, timeout)):
            return True
        if await self.store.has_group_session(evt.room_id, session_id):
            return True
        devices = {evt.sender: [content.device_id]} if content.device_id else {}
        if devices:
            try:
                return await self.olm.request_room_key(
                    evt.room_id, content.sender_key, session_id, devices, timeout=max(timeout - 3.0, 1.0)
                )
            except MatrixError as exc:
                log.warning("could not request a room key in %s: %s", evt.room_id, exc)
        return await self.olm.wait_for_session(evt.room_id, session_id, timeout=max(timeout - 3.0, 1.0))

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


def _new_device_id() -> str:
    return "DMA" + secrets.token_hex(5).upper()
