"""One Matrix device the bridge holds, the bot's or a puppet's: its client, store and Olm machine.

Each device is its own crypto account (``account_id`` = the user's ID) in the shared
crypto tables; what every account sees alike (devices, cross-signing keys) is cached once
for all of them. Nothing here logs plaintext or key material.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from mautrix.client import Client
from mautrix.crypto import OlmMachine
from mautrix.errors import MatrixError
from mautrix.types import DeviceID, DeviceIdentity, LoginType, RequestedKeyInfo, SessionID, TrustState, UserID

from bridge.config import BridgeConfig

from .crypto_store import CachedCryptoStore, KeyCache
from .stores import BridgeStateStore

log = logging.getLogger(__name__)
DEVICE_NAME = "matrix-dma-bridge"
# mautrix warns on every message from a user who has not set up cross-signing, or whose
# device is not signed; for a bridge that is ordinary, and would bury the warnings that matter.
ORDINARY_TRUST_NOTES = ("Didn't find cross-signing key", "isn't cross-signed", "Couldn't resolve trust level")


def _demote_trust_notes(record: logging.LogRecord) -> bool:
    if record.levelno == logging.WARNING and any(note in str(record.msg) for note in ORDINARY_TRUST_NOTES):
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
    return True


logging.getLogger("mau.crypto").addFilter(_demote_trust_notes)


class EncryptionSetupError(Exception):
    """The homeserver lacks something end-to-bridge encryption needs; the text says what."""


class BridgeOlmMachine(OlmMachine):
    """mautrix's machine, telling the bridge when a room key arrives (events kept for a late
    key are retried at once) and when someone's devices change (every device's outbound
    sessions in the rooms shared with them must go, not only this one's)."""

    on_session: Callable[[SessionID], None] | None = None
    on_devices: Callable[[UserID], Awaitable[None]] | None = None

    def _mark_session_received(self, session_id: SessionID) -> None:
        super()._mark_session_received(session_id)
        if self.on_session is not None:
            self.on_session(session_id)

    async def on_devices_changed(self, user_id: UserID) -> None:
        await super().on_devices_changed(user_id)
        if self.on_devices is not None:
            await self.on_devices(user_id)


class DeviceCrypto:
    def __init__(
        self,
        config: BridgeConfig,
        user_id: UserID,
        crypto_db: Any,
        pickle_key: str,
        state_store: BridgeStateStore,
        keys: KeyCache,
        http: aiohttp.ClientSession,
        allow_key_share: Callable[[DeviceIdentity, RequestedKeyInfo], Awaitable[bool]],
    ) -> None:
        self.config = config
        self.user_id = user_id
        self.client = Client(
            mxid=user_id,
            base_url=config.homeserver_address,
            token=config.as_token,
            state_store=state_store,
            client_session=http,
        )
        self.client.api.as_user_id = user_id
        self.store = CachedCryptoStore(user_id, pickle_key, crypto_db, keys)
        self.olm = BridgeOlmMachine(self.client, self.store, state_store)
        # Every device of every member gets the room key (Element users rarely verify their
        # devices with a bridge), and keys from unverified devices are accepted.
        self.olm.share_keys_min_trust = TrustState.UNVERIFIED
        self.olm.send_keys_min_trust = TrustState.UNVERIFIED
        self.olm.allow_key_share = allow_key_share
        self.cross_signed = 0  # how often this run made cross-signing keys (tests)

    @property
    def device_id(self) -> DeviceID:
        return self.client.device_id

    async def exists(self) -> bool:
        """Whether this account has a device from an earlier run."""
        await self.store.open()
        return bool(await self.store.get_device_id())

    async def start(self, self_sign: bool) -> None:
        """Create the device or take up the stored one, upload its keys, cross-sign it."""
        await self.store.open()
        device_id = await self.store.get_device_id()
        await self._create_device(device_id)
        await self.olm.load()
        if not device_id:
            await self.store.put_device_id(self.client.device_id)
            await self.olm.share_keys()
            log.info("created the Matrix device %s of %s", self.client.device_id, self.user_id)
        elif self.olm.account.shared and not await self._keys_on_server():
            # The device was deleted on the homeserver (by an admin, or a database reset):
            # its sessions are worthless; start over with a new device instead of failing.
            log.warning("device %s of %s lost its keys on the homeserver; making a new one", device_id, self.user_id)
            await self.store.delete()
            await self.start(self_sign)
            return
        else:
            await self.olm.share_keys()
        if self_sign:
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

    async def _signed_on_server(self) -> bool:
        """Whether the homeserver holds our cross-signing keys and our device's signature
        by the self-signing key: then there is nothing to do (the local trust check alone
        is not enough, as the signatures of our own device are not always in the store,
        and making new keys at every start would show the bot as reset in every client)."""
        response = await self.client.query_keys([self.client.mxid])
        master = response.master_keys.get(self.client.mxid)
        self_signing = response.self_signing_keys.get(self.client.mxid)
        device = response.device_keys.get(self.client.mxid, {}).get(self.client.device_id)
        if master is None or self_signing is None or device is None:
            return False
        signatures = device.signatures.get(self.client.mxid, {})
        return any(key_id in signatures for key_id in self_signing.keys)

    async def _self_sign(self) -> None:
        if await self._signed_on_server():
            return
        trust = await self.olm.resolve_trust(self.olm.own_identity)
        if trust >= TrustState.CROSS_SIGNED_UNTRUSTED:
            return
        try:
            # The recovery key is thrown away: the bridge never needs these cross-signing
            # keys again once its one device is signed, and a key in a log is a leak.
            await self.olm.generate_recovery_key()
        except MatrixError as exc:
            log.warning("could not cross-sign %s's device (%s); clients will show it unverified", self.user_id, exc)
            return
        self.cross_signed += 1
        log.info("cross-signed the device %s of %s", self.client.device_id, self.user_id)

    async def close(self) -> None:
        await self.store.close()


def _new_device_id() -> str:
    return "DMA" + secrets.token_hex(5).upper()
