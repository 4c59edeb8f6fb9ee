"""The appservice and the intents of the bot and the puppets; implements core's MatrixAPI.

Events come in through the bridge's own transaction endpoint (``appservice``), which
stores each transaction before it answers 200 (``intake``); a dispatcher then hands every
stored room event, in the homeserver's order, to the loop of its portal or room, where it
is decrypted, bridged or run as a command (``room_events``). To-device traffic goes to the
crypto intake, which also takes the bot device's own sync (``crypto_intake``).

Everything posted is idempotent: it carries a transaction id derived from the stored item
it comes from. In encrypted rooms every message event the bridge posts is
Megolm-encrypted; when that is impossible the send fails, it never goes out in plaintext.
Failures of the homeserver reach the core as ``Unavailable``/``RetryAfter`` (try again)
or ``Refused`` (this event will not go).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path as FilePath
from typing import Any

import aiohttp
from aiohttp import web
from mautrix.api import Method, Path
from mautrix.errors import MatrixConnectionError, MatrixError, MatrixRequestError
from mautrix.types import (
    EncryptedEvent,
    Event,
    EventType,
    Format,
    Membership,
    MessageEvent,
    MessageType,
    ReactionEvent,
    RedactionEvent,
    RoomEncryptionStateEventContent,
    RoomID,
    StateEvent,
    TextMessageEventContent,
    UserID,
)

from bridge.config import BridgeConfig, PermissionLevel
from bridge.core.bridge import BridgeCore, portal_key, room_key
from bridge.core.bridge_state import bridge_state, remote_state
from bridge.core.commands import CommandState, dispatch
from bridge.core.errors import Refused, RetryAfter, Unavailable
from bridge.core.groups import ADMIN_LEVEL
from bridge.core.matrix_api import BridgeInfo, StatusReport
from bridge.core.outbound import OutboxWork
from bridge.core.portal_loop import LoopKey, Transient, Work
from bridge.db.matrix_events import StoredEvent
from bridge.db.stores import Stores
from bridge.tasks import BackgroundTasks

from .appservice import BridgeAppService
from .catch_up import CatchUp
from .crypto_intake import BotSync, CryptoIntake
from .e2ee import Encryption, EncryptionSetupError
from .encrypted_events import EncryptedEvents
from .intake import MatrixIntake
from .media import HomeserverMedia
from .room_events import LateEventWork, MatrixEventWork, parse_event, plain_message, read_receipts
from .stores import BridgeStateStore, MautrixDatabases

log = logging.getLogger(__name__)
STATUS_EVENT = EventType.find("com.beeper.message_send_status", EventType.Class.MESSAGE)
BRIDGE_STATE = ("m.bridge", "uk.half-shot.bridge")
COMMAND_PREFIX = "!dma"
MEGOLM = "m.megolm.v1.aes-sha2"
PING_TRIES = 3
Stored = Callable[[], Awaitable[None]]


class StartupError(Exception):
    """Start-up cannot go on; the message says what to fix."""


class EncryptionUnavailable(Exception):
    """A message for an encrypted room that the bridge cannot encrypt; it is not sent."""


def pickle_key(at_rest_key: bytes) -> str:
    """The key that seals the Olm account and sessions in the crypto store, derived from
    the at-rest key so that the database alone never opens them."""
    digest = hmac.new(at_rest_key, b"matrix-dma-bridge olm pickle key", hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def _core_error(exc: Exception) -> Exception:
    """A homeserver failure in the core's terms."""
    if isinstance(exc, MatrixRequestError):
        if exc.http_status == 429:
            retry_ms = getattr(exc, "retry_after_ms", None) or 1000
            return RetryAfter(retry_ms / 1000, f"the homeserver is rate limiting ({exc.errcode})")
        if exc.http_status >= 500 or exc.http_status == 0:
            return Unavailable(f"the homeserver answered {exc.http_status}")
        return Refused(exc.errcode or "M_UNKNOWN", f"the homeserver refused it ({exc.errcode}: {exc.message})")
    if isinstance(exc, MatrixConnectionError | aiohttp.ClientError | TimeoutError | ConnectionError | OSError):
        return Unavailable(f"the homeserver cannot be reached ({type(exc).__name__})")
    return exc


async def _calling_homeserver(call: Awaitable[Any]) -> Any:
    try:
        return await call
    except (MatrixError, aiohttp.ClientError, TimeoutError, ConnectionError, OSError) as exc:
        raise _core_error(exc) from exc


class MatrixConnector:
    def __init__(self, config: BridgeConfig, routes: list[web.RouteDef], stores: Stores) -> None:
        self.config = config
        self.stores = stores
        self.databases = MautrixDatabases(config.database_uri)
        self.state_store = BridgeStateStore(self.databases.state)
        self.az = BridgeAppService(
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
        self.intake = MatrixIntake(stores.matrix_events)
        self.intake.room_filter = self._bridged_room
        self.intake.on_typing = self._typing
        self.az.transaction_sink = self.intake.receive
        self.az.add_state_route()
        self.az.app.add_routes(routes)
        self.bot_mxid = f"@{config.bot_username}:{config.homeserver_domain}"
        prefix, suffix = (re.escape(part) for part in config.username_template.split("{uvid}"))
        self._puppet_pattern = re.compile(f"^@{prefix}.+{suffix}:{re.escape(config.homeserver_domain)}$")
        self.core: BridgeCore | None = None
        self.commands = CommandState()
        self._management_rooms: set[str] = set()
        self._typing_now: dict[str, set[str]] = {}
        self.e2ee: Encryption | None = None
        self.crypto: CryptoIntake | None = None
        self.sync: BotSync | None = None
        self.catch_up: CatchUp | None = None
        self._encrypted: EncryptedEvents | None = None
        self._dispatch: asyncio.Queue[tuple[StoredEvent, bool]] = asyncio.Queue()
        self._dispatcher: asyncio.Task[None] | None = None
        self._jobs = BackgroundTasks()
        self._media: HomeserverMedia | None = None

    @property
    def media(self) -> HomeserverMedia:
        """Files on the homeserver (set up at start, once the appservice's session exists)."""
        if self._media is None:
            self._media = HomeserverMedia(
                self.az.intent.api.session,
                self.config.homeserver_address,
                self.config.as_token,
                self.bot_mxid,
                self.is_encrypted,
            )
        return self._media

    @property
    def encrypted(self) -> EncryptedEvents:
        """Encrypted events from Matrix (set up at start)."""
        assert self._encrypted is not None, "used before start()"
        return self._encrypted

    @property
    def live(self) -> bool:
        return self.az.live

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Listen first: from now on every transaction is stored (the homeserver may call at
        once, and drops to-device events it cannot deliver); then the bot, the ping, and
        with encryption the device, the crypto intake and the check that pushes come."""
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
        self._encrypted = EncryptedEvents(
            self.config.encryption,
            self.e2ee,
            self.stores.undecrypted,
            self,
            self._resubmit_late,
            self.core.spawn,
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
            await self._ping()
        except Exception as exc:
            await self.az.stop()
            raise StartupError(
                f"the homeserver cannot reach the bridge at {self.config.appservice_address} ({exc}). Check "
                "appservice.address in the config and the url in registration.yaml, and that nothing blocks it."
            ) from exc
        if self.e2ee is not None:
            try:
                await self._start_crypto(self.e2ee)
            except EncryptionSetupError as exc:
                await self.stop()
                raise StartupError(f"bridge.encryption: {exc}") from exc
            log.info("end-to-bridge encryption ready; the bridge's device is %s", self.e2ee.device_id)

    async def _ping(self, tries: int = PING_TRIES) -> None:
        """The homeserver pings the bridge through its listener. A refusal repeats: a ping
        that crosses the homeserver's own catch-up after a restart can fail once (Synapse
        answers 502 "AlreadyCalled" then)."""
        for attempt in range(tries):
            try:
                await self.az.ping_self()
                return
            except Exception as exc:
                if attempt == tries - 1:
                    raise
                log.info("the homeserver's ping failed (%s); trying again", exc)
                await asyncio.sleep(1.0)

    async def _start_crypto(self, e2ee: Encryption) -> None:
        await e2ee.start()
        self.crypto = CryptoIntake(e2ee, self.stores.matrix_events, self.stores.db)
        self.intake.on_key_counts = e2ee.handle_key_counts
        taken = await self.intake.crypto.take_up()
        self.crypto.start()
        for event in taken:
            self.crypto.submit(event)
        self.intake.crypto.open_with(self.crypto.submit, taken)
        await e2ee.check_pushes()
        self.sync = BotSync(e2ee, self.crypto, self.stores.kv)
        self.sync.start()
        self._jobs.every(3600, self.encrypted.expire, "late keys", first=60)

    async def open_rooms(self) -> None:
        """Start handing stored room events to the loops: first what the listener stored
        before (and while) the bridge got ready, then each as it comes."""
        assert self.core is not None
        self.core.room_reload = self._reload_room
        taken = await self.intake.rooms.take_up()
        self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch_in_order(), name="Matrix dispatch")
        for event in taken:
            self._dispatch.put_nowait((event, False))
        self.intake.rooms.open_with(lambda event: self._dispatch.put_nowait((event, True)), taken)
        await self.encrypted.start()
        self.catch_up = CatchUp(
            self.az.intent,
            self.config.homeserver_address,
            self.config.as_token,
            self.stores.matrix_events,
            self.intake,
            self._ours,
        )
        self.catch_up.start()
        self.az.state_source = self._bridge_state
        self.az.ready = True

    async def stop(self) -> None:
        self.az.ready = False
        self.intake.rooms.close()
        self.intake.crypto.close()
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
        self._jobs.cancel()
        if self.catch_up is not None:
            await self.catch_up.stop()
        if self.sync is not None:
            await self.sync.stop()
        if self.crypto is not None:
            await self.crypto.stop()
        await self.az.stop()
        if self.e2ee is not None:
            await self.e2ee.stop()
        await self.databases.stop()

    async def stop_listening(self) -> None:
        """The first step of a shutdown: no new transactions (the homeserver keeps them)."""
        self.az.transaction_sink = None
        self.intake.rooms.close()

    # ------------------------------------------------------------------ dispatch to the loops

    def is_puppet(self, user: str) -> bool:
        return bool(self._puppet_pattern.match(user))

    async def _bridged_room(self, room_id: str, raw: dict[str, Any]) -> bool:
        """Whether an event of this room is the bridge's business: messages, reactions,
        redactions and receipts are kept (stored) only for portals and rooms the bot joined
        (management rooms)."""
        if "state_key" in raw:
            # State (memberships above all: invites are judged in _member) is kept: the room
            # state must be whole even for a portal whose row is written a moment later.
            return True
        if room_id in self._management_rooms or await self.stores.portals.by_room(room_id) is not None:
            return True
        membership = await self.state_store.get_membership(RoomID(room_id), UserID(self.bot_mxid))
        return membership == Membership.JOIN

    async def _bridge_state(self, user_id: str) -> dict[str, Any]:
        """``GlobalBridgeState``: the bridge's own state and the user's login's."""
        assert self.core is not None
        login = await self.core.logins.get(user_id)
        remote = {}
        if login is not None:
            state = remote_state(login, self.core.states.get(user_id))
            remote[state["remote_id"]] = state
        return {"remoteState": remote, "bridgeState": bridge_state(self.az.ready)}

    def _ours(self, user: str) -> bool:
        return user == self.bot_mxid or self.is_puppet(user)

    async def _key_of_room(self, room_id: str) -> LoopKey:
        assert self.core is not None
        return self.core.key_for_room(await self.core.portals.by_room(room_id), room_id)

    async def _dispatch_in_order(self) -> None:
        """One at a time, in the homeserver's order: each event to its room's loop."""
        assert self.core is not None
        while True:
            event, fresh = await self._dispatch.get()
            delay = 0.5
            while True:
                try:
                    key = await self._key_of_room(event.room_id) if event.room_id else room_key("")
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("could not find the room of a Matrix event (%s); trying again", type(exc).__name__)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
            self.core.loops.submit(key, MatrixEventWork(self, event, fresh=fresh))

    async def _reload_room(self, room_id: str) -> list[tuple[int, Work]]:
        return [
            (event.created_at, MatrixEventWork(self, event, fresh=False))
            for event in await self.stores.matrix_events.pending_in_room(room_id)
        ]

    def _resubmit_late(self, room_id: str, event_id: str) -> None:
        self.core.spawn(self._submit_late(room_id, event_id), f"late {event_id}")  # type: ignore[union-attr]

    async def _submit_late(self, room_id: str, event_id: str) -> None:
        assert self.core is not None
        self.core.loops.submit(await self._key_of_room(room_id), LateEventWork(self, room_id, event_id))

    async def pending_outbox(self, room_id: str, event_id: str) -> Work | None:
        assert self.core is not None
        item = await self.core.outbox.by_event(room_id, event_id)
        return OutboxWork(self.core, item.id) if item is not None and item.state == "pending" else None

    # ------------------------------------------------------------------ handling, in the loops

    async def handle_stored(self, stored: StoredEvent, mark_done: Stored) -> Work | None:
        """One stored event, in its room's loop; returns the work it leaves (an outbox item)."""
        core = self.core
        assert core is not None
        if stored.kind == "receipt":
            room_id = stored.room_id or ""
            for event_id, user in read_receipts(stored.body):
                if not self._ours(user):
                    await core.flow.read(room_id, user, event_id)
            return None
        plain = await self._plain_portal_message(stored)
        if plain is not None:
            return await plain(mark_done)
        return await self.handle_event(parse_event(stored.body), mark_done)

    async def _plain_portal_message(self, stored: StoredEvent) -> Callable[[Stored], Awaitable[Work | None]] | None:
        """The common case, without building mautrix's event objects: a plain message in a
        portal from someone else than the bridge, not a command."""
        core = self.core
        plain = plain_message(stored.body)
        if core is None or plain is None:
            return None
        room_id, event_id, sender, content = plain
        text = content.get("body")
        if self._ours(sender) or (isinstance(text, str) and text.startswith(COMMAND_PREFIX + " ")):
            return None
        if await core.portals.by_room(room_id) is None:
            return None
        return lambda mark_done: core.flow.message(room_id, event_id, sender, content, mark_done)

    async def handle_event(self, evt: Event, mark_done: Stored | None) -> Work | None:
        core = self.core
        assert core is not None
        stored = mark_done or _nothing
        if isinstance(evt, StateEvent):
            await self.state_store.update_state(evt)
            if evt.type == EventType.ROOM_MEMBER:
                if self.e2ee is not None:
                    await self.e2ee.handle_member(evt)
                await self._member(evt)
                if not self._ours(evt.sender) and evt.state_key:
                    await core.groups.matrix_member(
                        evt.room_id, evt.sender, evt.state_key, evt.content.membership.value
                    )
            elif self._ours(evt.sender):
                pass  # the bridge's own change, made after the gatekeeper's
            elif evt.type == EventType.ROOM_NAME:
                await core.groups.matrix_name(evt.room_id, evt.sender, evt.content.name or "")
            elif evt.type == EventType.ROOM_POWER_LEVELS:
                users = {str(user): int(level) for user, level in evt.content.users.items()}
                await core.groups.matrix_power_levels(evt.room_id, evt.sender, users)
            return None
        if self._ours(getattr(evt, "sender", "")):
            return None
        if isinstance(evt, EncryptedEvent):
            decrypted = await self.encrypted.decrypt(evt)
            if decrypted is None:
                core.metrics.undecryptable("matrix")  # kept until its key comes, and the sender told
                return None
            evt = decrypted
        if isinstance(evt, MessageEvent) and evt.type == EventType.ROOM_MESSAGE:
            return await self._message(evt, stored)
        if isinstance(evt, MessageEvent) and evt.type == EventType.STICKER:
            if await core.portals.by_room(evt.room_id) is None:
                return None
            # WhatsApp's stickers are its own format; a Matrix sticker goes as an image.
            content = {**evt.content.serialize(), "msgtype": "m.sticker"}
            return await core.flow.message(evt.room_id, evt.event_id, evt.sender, content, stored)
        if isinstance(evt, ReactionEvent):
            relates = evt.content.relates_to
            return await core.flow.reaction(
                evt.room_id, evt.event_id, evt.sender, relates.event_id, relates.key, stored
            )
        if isinstance(evt, RedactionEvent) and evt.redacts:
            return await core.flow.redaction(evt.room_id, evt.event_id, evt.sender, evt.redacts, stored)
        return None

    async def _member(self, evt: StateEvent) -> None:
        if evt.state_key == self.bot_mxid and evt.content.membership == Membership.INVITE:
            if not self._ours(evt.sender) and self.config.permission(evt.sender) is PermissionLevel.NONE:
                # Anyone may invite; only those allowed to use the bridge get the bot.
                log.info("declined an invite from %s, who may not use the bridge", evt.sender)
                await _calling_homeserver(
                    self.az.intent.leave_room(evt.room_id, reason="You are not allowed to use this bridge.")
                )
                return
            await _calling_homeserver(self.az.intent.join_room(evt.room_id))
            # Known at once, so that the room filter keeps the user's first commands.
            await self.state_store.set_membership(evt.room_id, UserID(self.bot_mxid), Membership.JOIN)
            await self._load_room_state(evt.room_id)
            members = await _calling_homeserver(self.az.intent.get_joined_members(evt.room_id))
            if len(members) <= 2 and self.core is not None and not await self.core.portals.by_room(evt.room_id):
                self._management_rooms.add(evt.room_id)
                await self.send_notice(
                    evt.room_id,
                    f"Hello! I bridge your Matrix account to {self.core.network}. Send `help` to see what I can do.",
                    txn_id=f"dma-hello-{evt.event_id}",
                )

    async def _message(self, evt: MessageEvent, stored: Stored) -> Work | None:
        core = self.core
        assert core is not None
        body = evt.content.body if isinstance(getattr(evt.content, "body", None), str) else ""
        portal = await core.portals.by_room(evt.room_id)
        is_command = body.startswith(COMMAND_PREFIX + " ")
        if portal is not None and not is_command:
            return await core.flow.message(evt.room_id, evt.event_id, evt.sender, evt.content.serialize(), stored)
        if portal is None and not is_command and evt.room_id not in self._management_rooms:
            login = await core.logins.get(evt.sender)
            if login is None or login.management_room != evt.room_id:
                return None
        # A command runs at most once: a restart in the middle does not run it again.
        await stored()
        text = body.removeprefix(COMMAND_PREFIX).strip() if is_command else body
        await dispatch(core, self.commands, evt.room_id, evt.sender, text, portal)
        return None

    async def _typing(self, edu: dict[str, Any]) -> None:
        core = self.core
        room_id = edu.get("room_id")
        if core is None or not isinstance(room_id, str):
            return
        users = (edu.get("content") or {}).get("user_ids") or []
        now = {u for u in users if isinstance(u, str) and not self._ours(u)}
        before = self._typing_now.get(room_id, set())
        self._typing_now[room_id] = now
        changes = [(u, True) for u in now - before] + [(u, False) for u in before - now]
        if not changes:
            return
        portal = await core.portals.by_room(room_id)
        if portal is None:
            return
        for user, typing in changes:
            core.loops.submit(
                portal_key(portal.receiver, portal.peer),
                Transient(f"typing in {room_id}", lambda u=user, t=typing: core.flow.typing(room_id, u, t)),
            )

    async def _load_room_state(self, room_id: RoomID) -> None:
        """The state of a room the bot just joined: events from before the join (the room's
        encryption above all) never come in a transaction."""
        for state in await _calling_homeserver(self.az.intent.get_state(room_id)):
            await self.state_store.update_state(state)
        if not await self.state_store.knows_encryption(room_id):
            await self.state_store.set_unencrypted(room_id)

    # ------------------------------------------------------------------ sending

    def _intent(self, sender: str) -> Any:
        return self.az.intent.user(UserID(sender)) if sender != self.bot_mxid else self.az.intent

    async def _send(
        self,
        room_id: str,
        sender: str,
        event_type: EventType,
        content: Any,
        *,
        txn_id: str | None = None,
        timestamp: int | None = None,
    ) -> str:
        """Send a message event, Megolm-encrypted when the room is; never plaintext there."""
        room = RoomID(room_id)
        if await self.is_encrypted(room_id):
            if self.e2ee is None:
                raise Refused("encryption", f"{room_id} is encrypted and bridge.encryption.allow is false")
            content = await _calling_homeserver(self.e2ee.encrypt(room, event_type, content, sender))
            event_type = EventType.ROOM_ENCRYPTED
        return await _calling_homeserver(
            self._intent(sender).send_message_event(room, event_type, content, txn_id=txn_id, timestamp=timestamp)
        )

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
        await _calling_homeserver(self.az.intent.send_state_event(RoomID(room_id), EventType.ROOM_ENCRYPTION, content))
        await self.state_store.set_encryption_info(
            RoomID(room_id), RoomEncryptionStateEventContent.deserialize(content)
        )

    # ------------------------------------------------------------------ MatrixAPI

    async def ensure_puppet(self, mxid: str, displayname: str) -> None:
        intent = self.az.intent.user(UserID(mxid))
        await _calling_homeserver(intent.ensure_registered())
        await _calling_homeserver(intent.set_displayname(displayname))

    async def create_portal(
        self, *, puppet: str, receiver: str, name: str, topic: str, info: BridgeInfo, encrypted: bool
    ) -> str:
        intent = self.az.intent.user(UserID(puppet))
        state: list[dict[str, Any]] = [
            {"type": event_type, "state_key": info.state_key, "content": info.content} for event_type in BRIDGE_STATE
        ]
        if encrypted:
            if self.e2ee is None:
                raise Refused("encryption", "an encrypted portal needs bridge.encryption.allow")
            state.append({"type": str(EventType.ROOM_ENCRYPTION), "content": self._encryption_content()})
        room_id = await _calling_homeserver(
            intent.create_room(
                name=name,
                topic=topic,
                is_direct=True,
                invitees=[UserID(receiver), UserID(self.bot_mxid)],
                initial_state=state,
                # The creator (the puppet) has full power by its role; room version 12 forbids listing it.
                power_level_override={"users": {self.bot_mxid: 100, receiver: 50}},
            )
        )
        # Known before anything is sent: whom to share room keys with, and that it is encrypted.
        await self.state_store.set_membership(room_id, UserID(puppet), Membership.JOIN)
        await self.state_store.set_membership(room_id, UserID(receiver), Membership.INVITE)
        if encrypted:
            content = RoomEncryptionStateEventContent.deserialize(self._encryption_content())
            await self.state_store.set_encryption_info(room_id, content)
        else:
            await self.state_store.set_unencrypted(room_id)
        await _calling_homeserver(self.az.intent.ensure_joined(room_id))
        return room_id

    async def create_group_portal(
        self, *, name: str, topic: str, info: BridgeInfo, encrypted: bool, invite: list[str]
    ) -> str:
        state: list[dict[str, Any]] = [
            {"type": event_type, "state_key": info.state_key, "content": info.content} for event_type in BRIDGE_STATE
        ]
        if encrypted:
            if self.e2ee is None:
                raise Refused("encryption", "an encrypted portal needs bridge.encryption.allow")
            state.append({"type": str(EventType.ROOM_ENCRYPTION), "content": self._encryption_content()})
        room_id = await _calling_homeserver(
            self.az.intent.create_room(
                name=name,
                topic=topic,
                invitees=[UserID(m) for m in invite],
                initial_state=state,
                # The bot creates it, so it has full power by its role (room version 12). The
                # group's admins (50) may rename the room and promote, as at the gatekeeper
                # (which refuses what a member who is no admin asks of it, with a notice).
                power_level_override={"events": {"m.room.name": ADMIN_LEVEL, "m.room.power_levels": ADMIN_LEVEL}},
            )
        )
        await self.state_store.set_membership(room_id, UserID(self.bot_mxid), Membership.JOIN)
        for mxid in invite:
            await self.state_store.set_membership(room_id, UserID(mxid), Membership.INVITE)
        if encrypted:
            content = RoomEncryptionStateEventContent.deserialize(self._encryption_content())
            await self.state_store.set_encryption_info(room_id, content)
        else:
            await self.state_store.set_unencrypted(room_id)
        return room_id

    async def invite(self, room_id: str, mxid: str) -> None:
        membership = await self.state_store.get_membership(RoomID(room_id), UserID(mxid))
        if membership in (Membership.JOIN, Membership.INVITE):
            return
        await _calling_homeserver(self.az.intent.invite_user(RoomID(room_id), UserID(mxid)))
        await self.state_store.set_membership(room_id, UserID(mxid), Membership.INVITE)

    async def join_puppet(self, room_id: str, puppet: str) -> None:
        if await self.state_store.get_membership(RoomID(room_id), UserID(puppet)) == Membership.JOIN:
            return
        await _calling_homeserver(self._intent(puppet).ensure_joined(RoomID(room_id), bot=self.az.intent))
        await self.state_store.set_membership(room_id, UserID(puppet), Membership.JOIN)

    async def remove_member(self, room_id: str, mxid: str, reason: str) -> None:
        room = RoomID(room_id)
        if await self.state_store.get_membership(room, UserID(mxid)) in (Membership.LEAVE, Membership.BAN, None):
            return
        if self.is_puppet(mxid):
            await _calling_homeserver(self._intent(mxid).leave_room(room, reason=reason))
        else:
            await _calling_homeserver(self.az.intent.kick_user(room, UserID(mxid), reason=reason))
        await self.state_store.set_membership(room_id, UserID(mxid), Membership.LEAVE)

    async def set_power_level(self, room_id: str, mxid: str, level: int) -> None:
        levels = await _calling_homeserver(self.az.intent.get_power_levels(RoomID(room_id), ignore_cache=True))
        if levels.get_user_level(UserID(mxid)) == level:
            return
        levels.set_user_level(UserID(mxid), level)
        await _calling_homeserver(self.az.intent.set_power_levels(RoomID(room_id), levels))

    async def set_room_name(self, room_id: str, name: str) -> None:
        await _calling_homeserver(self.az.intent.set_room_name(RoomID(room_id), name))

    async def send_message(
        self, room_id: str, sender: str, content: dict[str, Any], *, txn_id: str, timestamp_ms: int | None = None
    ) -> str:
        return await self._send(room_id, sender, EventType.ROOM_MESSAGE, content, txn_id=txn_id, timestamp=timestamp_ms)

    async def send_reaction(
        self, room_id: str, sender: str, target_event: str, key: str, *, txn_id: str, timestamp_ms: int | None = None
    ) -> str:
        content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": target_event, "key": key}}
        return await self._send(room_id, sender, EventType.REACTION, content, txn_id=txn_id, timestamp=timestamp_ms)

    async def redact(self, room_id: str, sender: str, event_id: str, *, txn_id: str) -> None:
        # mautrix's redact() picks its own transaction id; this one is the item's.
        intent = self._intent(sender)
        await _calling_homeserver(
            intent.api.request(Method.PUT, Path.v3.rooms[RoomID(room_id)].redact[event_id][txn_id], content={})
        )

    async def send_receipt(self, room_id: str, sender: str, event_id: str) -> None:
        await _calling_homeserver(self._intent(sender).send_receipt(RoomID(room_id), event_id))

    async def set_typing(self, room_id: str, sender: str, typing: bool) -> None:
        await _calling_homeserver(self._intent(sender).set_typing(RoomID(room_id), timeout=30_000 if typing else 0))

    async def send_notice(
        self, room_id: str, text: str, *, txn_id: str | None = None, extra: dict[str, Any] | None = None
    ) -> str:
        html = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
        html = re.sub(r"`([^`]+)`", r"<code>\1</code>", html).replace("\n", "<br/>")
        plain = text.replace("**", "")
        content = TextMessageEventContent(msgtype=MessageType.NOTICE, body=plain)
        if html != text:
            content.format, content.formatted_body = Format.HTML, html
        for key, value in (extra or {}).items():
            content[key] = value
        return await self._send(room_id, self.bot_mxid, EventType.ROOM_MESSAGE, content, txn_id=txn_id)

    async def redact_notice(self, room_id: str, event_id: str) -> None:
        try:
            await self.az.intent.redact(RoomID(room_id), event_id, "No longer true.")
        except MatrixError:
            log.info("could not remove a notice in %s", room_id)

    async def send_status(
        self, room_id: str, event_id: str, report: StatusReport, *, txn_id: str | None = None
    ) -> None:
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
        await self._send(room_id, self.bot_mxid, STATUS_EVENT, content, txn_id=txn_id)

    async def download_media(
        self, url: str, file: dict[str, Any] | None, destination: FilePath, *, max_bytes: int
    ) -> int:
        return await self.media.download(url, file, destination, max_bytes=max_bytes)

    async def upload_media(
        self, room_id: str, path: FilePath, *, mimetype: str, filename: str | None
    ) -> dict[str, Any]:
        return await self.media.upload(room_id, path, mimetype=mimetype, filename=filename)

    async def media_upload_limit(self) -> int | None:
        return await self.media.upload_limit()

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


async def _nothing() -> None:
    return None
