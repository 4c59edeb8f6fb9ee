"""The appservice and the intents of the bot and the puppets; implements core's MatrixAPI.

Event handlers run synchronously within the homeserver's transaction: they only store
what they must (the outbox write is idempotent by event id), so a failure fails the
transaction and the homeserver sends it again, rather than an event being acknowledged
and lost. Sending to the gatekeeper and running commands happen beside the transaction.

In encrypted rooms every message event the bridge posts is Megolm-encrypted; when that is
impossible the send fails, it never goes out in plaintext. Encrypted events coming in are
decrypted, or kept until their key comes, by ``encrypted_events.EncryptedEvents``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
from typing import Any

from aiohttp import web
from mautrix.appservice import AppService
from mautrix.errors import MatrixError
from mautrix.types import (
    EncryptedEvent,
    EventType,
    Format,
    Membership,
    MessageEvent,
    MessageType,
    ReactionEvent,
    ReceiptEvent,
    ReceiptType,
    RedactionEvent,
    RoomEncryptionStateEventContent,
    RoomID,
    StateEvent,
    TextMessageEventContent,
    TypingEvent,
    UserID,
)

from bridge.config import BridgeConfig
from bridge.core.bridge import BridgeCore
from bridge.core.commands import CommandState, dispatch
from bridge.core.matrix_api import BridgeInfo, StatusReport
from bridge.db.undecrypted import UndecryptedStore

from .e2ee import Encryption, EncryptionSetupError
from .encrypted_events import EncryptedEvents
from .stores import BridgeStateStore, MautrixDatabases

log = logging.getLogger(__name__)
STATUS_EVENT = EventType.find("com.beeper.message_send_status", EventType.Class.MESSAGE)
BRIDGE_STATE = ("m.bridge", "uk.half-shot.bridge")
COMMAND_PREFIX = "!dma"
MEGOLM = "m.megolm.v1.aes-sha2"


class StartupError(Exception):
    """Start-up cannot go on; the message says what to fix."""


class EncryptionUnavailable(Exception):
    """A message for an encrypted room that the bridge cannot encrypt; it is not sent."""


def pickle_key(at_rest_key: bytes) -> str:
    """The key that seals the Olm account and sessions in the crypto store, derived from
    the at-rest key so that the database alone never opens them."""
    digest = hmac.new(at_rest_key, b"matrix-dma-bridge olm pickle key", hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


class MatrixConnector:
    def __init__(self, config: BridgeConfig, routes: list[web.RouteDef]) -> None:
        self.config = config
        self.databases = MautrixDatabases(config.database_uri)
        self.state_store = BridgeStateStore(self.databases.state)
        self.az = AppService(
            server=config.homeserver_address,
            domain=config.homeserver_domain,
            as_token=config.as_token,
            hs_token=config.hs_token,
            bot_localpart=config.bot_username,
            id=config.appservice_id,
            state_store=self.state_store,
            ephemeral_events=True,
            encryption_events=config.encryption.allow,
            verify_ssl=config.verify_ssl,
        )
        self.az.synchronous_handlers = True
        self.az.app.add_routes(routes)
        self.az.matrix_event_handler(self._handle)
        self.bot_mxid = f"@{config.bot_username}:{config.homeserver_domain}"
        prefix, suffix = (re.escape(part) for part in config.username_template.split("{uvid}"))
        self._puppet_pattern = re.compile(f"^@{prefix}.+{suffix}:{re.escape(config.homeserver_domain)}$")
        self.core: BridgeCore | None = None
        self.commands = CommandState()
        self._management_rooms: set[str] = set()
        self._typing: dict[str, set[str]] = {}
        self.e2ee: Encryption | None = None
        self._encrypted: EncryptedEvents | None = None

    @property
    def encrypted(self) -> EncryptedEvents:
        """Encrypted events from Matrix (set up at start)."""
        assert self._encrypted is not None, "used before start()"
        return self._encrypted

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Listen first (the homeserver may call at once), then check it can reach us; with
        encryption, the crypto handlers are in place before the listener starts, since the
        homeserver drops to-device events it cannot deliver."""
        assert self.core is not None
        try:
            await self.databases.start()
        except Exception as exc:
            raise StartupError(f"database.uri: cannot prepare the Matrix state and crypto tables: {exc}") from exc
        if self.config.encryption.allow:
            self.e2ee = Encryption(
                self.config,
                self.az,
                self.state_store,
                self.databases.crypto,
                pickle_key(self.config.at_rest_key),
                self.is_puppet,
            )
            self.e2ee.install_handlers()
        self._encrypted = EncryptedEvents(
            self.config.encryption, self.e2ee, UndecryptedStore(self.core.db), self, self._handle, self.core.spawn
        )
        await self.az.start(self.config.hostname, self.config.port)
        try:
            await self.az.intent.ensure_registered()
            await self.az.intent.set_displayname(self.config.bot_displayname)
        except Exception as exc:
            await self.az.stop()
            raise StartupError(
                f"cannot use the homeserver at {self.config.homeserver_address} as the appservice: {exc}. Check "
                "homeserver.address, and that registration.yaml is installed in the homeserver with these tokens."
            ) from exc
        try:
            await self.az.ping_self()
        except Exception as exc:
            await self.az.stop()
            raise StartupError(
                f"the homeserver cannot reach the bridge at {self.config.appservice_address} ({exc}). Check "
                "appservice.address in the config and the url in registration.yaml, and that nothing blocks it."
            ) from exc
        if self.e2ee is not None:
            try:
                await self.e2ee.start()
                await self.e2ee.check_pushes()
            except EncryptionSetupError as exc:
                await self.stop()
                raise StartupError(f"bridge.encryption: {exc}") from exc
            log.info("end-to-bridge encryption ready; the bridge's device is %s", self.e2ee.device_id)
            await self.encrypted.start()

    async def stop(self) -> None:
        if self._encrypted is not None:
            self._encrypted.stop()
        await self.az.stop()
        if self.e2ee is not None:
            await self.e2ee.stop()
        await self.databases.stop()

    # ------------------------------------------------------------------ events from Matrix

    def is_puppet(self, user: str) -> bool:
        return bool(self._puppet_pattern.match(user))

    def _ours(self, user: str) -> bool:
        return user == self.bot_mxid or self.is_puppet(user)

    async def _handle(self, evt: Any) -> None:
        core = self.core
        if core is None:
            return
        if isinstance(evt, StateEvent):
            await self.state_store.update_state(evt)
            if evt.type == EventType.ROOM_MEMBER:
                if self.e2ee is not None:
                    await self.e2ee.handle_member(evt)
                await self._member(evt)
            return
        elif isinstance(evt, ReceiptEvent):
            for event_id, receipts in evt.content.items():
                for user in receipts.get(ReceiptType.READ, {}):
                    if not self._ours(user):
                        await core.handle_matrix_read(evt.room_id, user, event_id)
        elif isinstance(evt, TypingEvent):
            now = {u for u in evt.content.user_ids if not self._ours(u)}
            before = self._typing.get(evt.room_id, set())
            self._typing[evt.room_id] = now
            for user in now - before:
                await core.handle_matrix_typing(evt.room_id, user, True)
            for user in before - now:
                await core.handle_matrix_typing(evt.room_id, user, False)
        elif self._ours(getattr(evt, "sender", "")):
            return
        elif isinstance(evt, EncryptedEvent):
            await self.encrypted.handle(evt)
        elif isinstance(evt, MessageEvent) and evt.type == EventType.ROOM_MESSAGE:
            await self._message(evt)
        elif isinstance(evt, ReactionEvent):
            relates = evt.content.relates_to
            await core.handle_matrix_reaction(evt.room_id, evt.event_id, evt.sender, relates.event_id, relates.key)
        elif isinstance(evt, RedactionEvent) and evt.redacts:
            await core.handle_matrix_redaction(evt.room_id, evt.event_id, evt.sender, evt.redacts)

    async def _member(self, evt: StateEvent) -> None:
        if evt.state_key == self.bot_mxid and evt.content.membership == Membership.INVITE:
            await self.az.intent.join_room(evt.room_id)
            await self._load_room_state(evt.room_id)
            members = await self.az.intent.get_joined_members(evt.room_id)
            if len(members) <= 2 and self.core is not None and not await self.core.portals.by_room(evt.room_id):
                self._management_rooms.add(evt.room_id)
                await self.send_notice(
                    evt.room_id,
                    f"Hello! I bridge your Matrix account to {self.core.network}. Send `help` to see what I can do.",
                )

    async def _message(self, evt: MessageEvent) -> None:
        core = self.core
        assert core is not None
        body = evt.content.body if isinstance(getattr(evt.content, "body", None), str) else ""
        portal = await core.portals.by_room(evt.room_id)
        is_command = body.startswith(COMMAND_PREFIX + " ")
        if portal is not None and not is_command:
            await core.handle_matrix_message(evt.room_id, evt.event_id, evt.sender, evt.content.serialize())
            return
        if portal is None and not is_command and evt.room_id not in self._management_rooms:
            login = await core.logins.get(evt.sender)
            if login is None or login.management_room != evt.room_id:
                return
        text = body.removeprefix(COMMAND_PREFIX).strip() if is_command else body
        core.spawn(dispatch(core, self.commands, evt.room_id, evt.sender, text, portal), f"command {evt.event_id}")

    async def _load_room_state(self, room_id: RoomID) -> None:
        """The state of a room the bot just joined: events from before the join (the room's
        encryption above all) never come in a transaction."""
        for state in await self.az.intent.get_state(room_id):
            await self.state_store.update_state(state)
        if not await self.state_store.knows_encryption(room_id):
            await self.state_store.set_unencrypted(room_id)

    # ------------------------------------------------------------------ sending

    async def _send(
        self, room_id: str, sender: str, event_type: EventType, content: Any, timestamp: int | None = None
    ) -> str:
        """Send a message event, Megolm-encrypted when the room is; never plaintext there."""
        room = RoomID(room_id)
        intent = self.az.intent.user(UserID(sender)) if sender != self.bot_mxid else self.az.intent
        if await self.is_encrypted(room_id):
            if self.e2ee is None:
                raise EncryptionUnavailable(f"{room_id} is encrypted and bridge.encryption.allow is false")
            content = await self.e2ee.encrypt(room, event_type, content, sender)
            event_type = EventType.ROOM_ENCRYPTED
        return await intent.send_message_event(room, event_type, content, timestamp=timestamp)

    async def is_encrypted(self, room_id: str) -> bool:
        encrypted = await self.state_store.is_encrypted(RoomID(room_id))
        if encrypted is None:
            await self._load_room_state(RoomID(room_id))
            encrypted = await self.state_store.is_encrypted(RoomID(room_id))
        return bool(encrypted)

    def _encryption_content(self) -> dict[str, Any]:
        rules = self.config.encryption
        return {
            "algorithm": MEGOLM,
            "rotation_period_ms": rules.rotation_ms,
            "rotation_period_msgs": rules.rotation_messages,
        }

    async def enable_encryption(self, room_id: str) -> None:
        content = self._encryption_content()
        await self.az.intent.send_state_event(RoomID(room_id), EventType.ROOM_ENCRYPTION, content)
        await self.state_store.set_encryption_info(
            RoomID(room_id), RoomEncryptionStateEventContent.deserialize(content)
        )

    # ------------------------------------------------------------------ MatrixAPI

    async def ensure_puppet(self, mxid: str, displayname: str) -> None:
        intent = self.az.intent.user(UserID(mxid))
        await intent.ensure_registered()
        await intent.set_displayname(displayname)

    async def create_portal(
        self, *, puppet: str, receiver: str, name: str, topic: str, info: BridgeInfo, encrypted: bool
    ) -> str:
        intent = self.az.intent.user(UserID(puppet))
        state: list[dict[str, Any]] = [
            {"type": event_type, "state_key": info.state_key, "content": info.content} for event_type in BRIDGE_STATE
        ]
        if encrypted:
            if self.e2ee is None:
                raise EncryptionUnavailable("an encrypted portal needs bridge.encryption.allow")
            state.append({"type": str(EventType.ROOM_ENCRYPTION), "content": self._encryption_content()})
        room_id = await intent.create_room(
            name=name,
            topic=topic,
            is_direct=True,
            invitees=[UserID(receiver), UserID(self.bot_mxid)],
            initial_state=state,
            # The creator (the puppet) has full power by its role; room version 12 forbids listing it.
            power_level_override={"users": {self.bot_mxid: 100, receiver: 50}},
        )
        # Known before anything is sent: whom to share room keys with, and that it is encrypted.
        await self.state_store.set_membership(room_id, UserID(puppet), Membership.JOIN)
        await self.state_store.set_membership(room_id, UserID(receiver), Membership.INVITE)
        if encrypted:
            content = RoomEncryptionStateEventContent.deserialize(self._encryption_content())
            await self.state_store.set_encryption_info(room_id, content)
        else:
            await self.state_store.set_unencrypted(room_id)
        await self.az.intent.ensure_joined(room_id)
        return room_id

    async def send_message(self, room_id: str, sender: str, content: dict[str, Any], timestamp_ms: int) -> str:
        return await self._send(room_id, sender, EventType.ROOM_MESSAGE, content, timestamp_ms)

    async def send_reaction(self, room_id: str, sender: str, target_event: str, key: str) -> str:
        content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": target_event, "key": key}}
        return await self._send(room_id, sender, EventType.REACTION, content)

    async def redact(self, room_id: str, sender: str, event_id: str) -> None:
        await self.az.intent.user(UserID(sender)).redact(RoomID(room_id), event_id)

    async def send_receipt(self, room_id: str, sender: str, event_id: str) -> None:
        await self.az.intent.user(UserID(sender)).send_receipt(RoomID(room_id), event_id)

    async def set_typing(self, room_id: str, sender: str, typing: bool) -> None:
        await self.az.intent.user(UserID(sender)).set_typing(RoomID(room_id), timeout=30_000 if typing else 0)

    async def send_notice(self, room_id: str, text: str) -> str:
        html = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
        html = re.sub(r"`([^`]+)`", r"<code>\1</code>", html).replace("\n", "<br/>")
        plain = text.replace("**", "")
        content = TextMessageEventContent(msgtype=MessageType.NOTICE, body=plain)
        if html != text:
            content.format, content.formatted_body = Format.HTML, html
        return await self._send(room_id, self.bot_mxid, EventType.ROOM_MESSAGE, content)

    async def redact_notice(self, room_id: str, event_id: str) -> None:
        try:
            await self.az.intent.redact(RoomID(room_id), event_id, "No longer true.")
        except MatrixError:
            log.info("could not remove a notice in %s", room_id)

    async def send_status(self, room_id: str, event_id: str, report: StatusReport) -> None:
        portal = await self.core.portals.by_room(room_id) if self.core else None
        network = self.core.bridge_state_key(portal.peer) if self.core and portal else self.config.appservice_id
        content: dict[str, Any] = {
            "network": network,
            "m.relates_to": {"rel_type": "m.reference", "event_id": event_id},
            "status": report.status.value,
        }
        if report.reason:
            content["reason"] = report.reason
        if report.message:
            content["message"] = report.message
        if report.delivered_to:
            content["delivered_to_users"] = list(report.delivered_to)
        try:
            await self._send(room_id, self.bot_mxid, STATUS_EVENT, content)
        except (MatrixError, EncryptionUnavailable) as exc:
            log.warning("could not send a message status into %s: %s", room_id, exc)

    async def leave_portal(self, room_id: str, puppet: str, receiver: str) -> None:
        bot = self.az.intent
        try:
            await bot.kick_user(RoomID(room_id), UserID(receiver), "The portal was deleted.")
        except MatrixError:
            log.info("could not remove %s from %s", receiver, room_id)
        for intent in (self.az.intent.user(UserID(puppet)), bot):
            try:
                await intent.leave_room(RoomID(room_id))
            except MatrixError:
                log.info("could not leave %s", room_id)
