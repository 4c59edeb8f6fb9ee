"""The core: one owner for durability and order between Matrix and the gatekeeper.

Everything the bridge must not lose is stored at the edge that hands it over, before
that edge is acknowledged: a Matrix transaction before the homeserver's 200 (the Matrix
connector), a gatekeeper message with its advanced Signal session before the delivery
receipt (:meth:`BridgeCore.on_event`, inside the gatekeeper side's transaction), a
ciphertext with its session before it is sent (``outbound.OutboxWork``). What was stored
then runs in its portal's serial loop (``portal_loop``), from either side, in order:
at start-up the stored work is loaded into the loops before any new event enters them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import phonenumbers

from bridge.config import BridgeConfig, PermissionLevel
from bridge.db.logins import Login, LoginState
from bridge.db.portals import Portal, Puppet
from bridge.db.queues import InboxItem
from bridge.db.stores import Stores
from bridge.gatekeeper.state import ConnectionState, StateChange
from bridge.gip import stanzas as st
from bridge.gip.client import (
    ChatStateEvent,
    Event,
    IdentityChangedEvent,
    MessageEvent,
    NotificationEvent,
    ReceiptEvent,
    UndecryptableEvent,
)
from bridge.gip.group_client import GroupEvent, GroupMessageEvent, GroupUndecryptableEvent
from bridge.gip.jid import Jid
from bridge.locks import KeyedLock
from bridge.metrics import Metrics
from bridge.tasks import BackgroundTasks

from .gatekeeper_api import GatekeeperAPI, GroupMember, GroupView
from .groups import GroupPortals, is_group, notice_payload
from .inbound import InboxWork, ReceiptWork
from .limits import UserLimits
from .matrix_api import BridgeInfo, MatrixAPI
from .media import MediaFlow
from .outbound import MatrixFlow, OutboxWork
from .portal_loop import LoopKey, LoopPolicy, PortalLoops, Transient, Work
from .state_notices import StateNotices
from .statuses import StatusSender

log = logging.getLogger(__name__)
PROTOCOL_NAMES = {"whatsapp": "WhatsApp", "messenger": "Messenger"}
# How long a portal holds the place of a message that did not decrypt, for its resend.
RESEND_WAIT_MS = 10_000


# Refusals that retry by themselves but that the user should still hear about.
@dataclass(frozen=True)
class Texts:
    identity_changed: str = (
        "🔐 This contact's security code changed: they reinstalled the app or changed phones. "
        "Send `verify` here to compare the new safety number with them."
    )
    undecryptable: str = (
        "⚠️ A message from this contact could not be decrypted. The bridge asked their phone to "
        "send it again; it will appear here when it arrives."
    )
    gave_up_decrypting: str = (
        "⚠️ A message from this contact could not be decrypted, even after asking their phone to send it again "
        f"{st.MAX_RETRY_COUNT} times. Ask them to send it once more."
    )


class RecentIds:
    """The last ``size`` ids seen, in order: a bounded memory of what was just done."""

    def __init__(self, size: int = 10_000) -> None:
        self._ids: dict[int, None] = {}
        self._size = size

    def add(self, item_id: int) -> None:
        self._ids[item_id] = None
        if len(self._ids) > self._size:
            del self._ids[next(iter(self._ids))]

    def seen(self, item_id: int) -> bool:
        return item_id in self._ids


def portal_key(receiver: str, peer: str) -> LoopKey:
    # A group's work runs in one loop whoever received it: each message is posted once.
    return ("portal", "" if is_group(peer) else receiver, peer)


def room_key(room_id: str) -> LoopKey:
    return ("room", room_id)


# Work for a room's loop that the Matrix connector knows how to rebuild from its store.
RoomReload = Callable[[str], Awaitable[list[tuple[int, Work]]]]


class _Notice(Work):
    """A notice from the bot (connection trouble, say): retried through an outage."""

    durable = False

    def __init__(self, core: BridgeCore, room_id: str, text: str, extra: dict[str, Any] | None = None) -> None:
        self.name = f"notice in {room_id}"
        self._core = core
        self._room = room_id
        self._text = text
        self._extra = extra

    async def run(self) -> None:
        await self._core.matrix.send_notice(self._room, self._text, extra=self._extra)


class BridgeCore:
    def __init__(
        self,
        config: BridgeConfig,
        stores: Stores,
        matrix: MatrixAPI,
        gatekeeper: GatekeeperAPI | None = None,
        *,
        policy: LoopPolicy | None = None,
    ) -> None:
        self.config = config
        self.stores = stores
        self.db = stores.db
        self.sealer = stores.sealer
        self.logins = stores.logins
        self.portals = stores.portals
        self.puppets = stores.puppets
        self.messages = stores.messages
        self.inbox = stores.inbox
        self.outbox = stores.outbox
        self.matrix = matrix
        self._gatekeeper = gatekeeper
        self.texts = Texts()
        delivery = config.delivery
        policy = policy or LoopPolicy(max_attempts=delivery.max_attempts, backoff_cap=delivery.backoff_cap_seconds)
        self.loops = PortalLoops(policy, reload=self._reload)
        self._tasks = BackgroundTasks()
        self.statuses = StatusSender(matrix, self._tasks)
        self.flow = MatrixFlow(self)
        self.media = MediaFlow(self, config.media.temp_directory)
        self.posted = RecentIds()  # inbox items posted whose end may not be written yet
        self.metrics = Metrics()
        self.metrics.refresh_with(self._read_metrics)
        self.limits = UserLimits(config.limits)
        self.states: dict[str, StateChange] = {}
        self.state_notices = StateNotices(config.state_notices, self._tell_state, self.states.get)
        self._registered: set[str] = set()  # puppets registered on the homeserver in this run
        self.portal_creation = KeyedLock()
        self.groups = GroupPortals(self)
        self.room_reload: RoomReload | None = None
        self.started = False
        self.resend_wait_ms = RESEND_WAIT_MS
        self._resends: dict[tuple[str, str, str], asyncio.Event] = {}

    @property
    def gatekeeper(self) -> GatekeeperAPI:
        assert self._gatekeeper is not None, "the gatekeeper side is not attached"
        return self._gatekeeper

    @gatekeeper.setter
    def gatekeeper(self, gatekeeper: GatekeeperAPI) -> None:
        self._gatekeeper = gatekeeper

    def spawn(self, coro: Awaitable[object], name: str) -> None:
        self._tasks.spawn(coro, name)

    @property
    def network(self) -> str:
        return PROTOCOL_NAMES[self.config.profile]

    # ------------------------------------------------------------------ lifecycle

    async def start(self, matrix_work: list[tuple[LoopKey, int, Work]] = ()) -> None:  # type: ignore[assignment]
        """Load stored work into the loops, oldest first, before anything new comes in:
        the inbox and the outbox here, and the Matrix events the connector kept."""
        queued: list[tuple[int, int, LoopKey, Work]] = []
        for item in await self.inbox.pending():
            queued.append(
                (item.received_at, 0, portal_key(item.receiver, item.peer), InboxWork(self, item.id, item.kind))
            )
        for out in await self.outbox.pending():
            queued.append((out.created_at, 1, portal_key(out.receiver, out.peer), OutboxWork(self, out.id)))
        for key, created_at, work in matrix_work:
            queued.append((created_at, 2, key, work))
        queued.sort(key=lambda entry: (entry[0], entry[1]))
        for _, _, key, work in queued:
            self.loops.submit(key, work)
        if queued:
            log.info("resuming %d stored items", len(queued))
        self.started = True

    def revoked(self, mxid: str) -> bool:
        """The config no longer lets this user use the bridge (their data stays until logout)."""
        return self.config.permission(mxid) is PermissionLevel.NONE

    async def tell_revoked(self) -> None:
        """Tell each logged-in user whom the config no longer allows, once, why nothing is
        bridged for them any more."""
        for login in await self.logins.all(LoginState.ENLISTED):
            flag = f"revoked_told/{login.mxid}"
            try:
                told = await self.stores.kv.get(flag) == "1"
                if not self.revoked(login.mxid):
                    if told:
                        await self.stores.kv.put(flag, "0")  # allowed again: a later revocation is told again
                    continue
                if told or login.management_room is None:
                    continue
                await self.matrix.send_notice(
                    login.management_room,
                    f"The bridge's admin no longer allows you to use this bridge, so your {self.network} chats are "
                    "not bridged any more. Your keys and chats are kept: ask the admin, or send `logout` to "
                    "erase them.",
                    txn_id=f"dma-revoked-{login.mxid}-{login.created_at}",
                )
                await self.stores.kv.put(flag, "1")
            except Exception:
                log.exception("could not tell %s that the bridge no longer serves them", login.mxid)

    async def settle(self) -> None:
        """Wait until the loops, the background posts and the grouped writes are done
        (tests, benchmarks)."""
        await self.loops.settle()
        await self._tasks.settle()
        await self.stores.later.flush()

    async def stop(self) -> None:
        """Let every loop finish the item it is on; the rest stays stored for the next start."""
        self.state_notices.close()
        await self.loops.stop()
        await self._tasks.settle_for(5.0)
        await self.stores.later.flush()

    async def _reload(self, key: LoopKey) -> list[Work]:
        """What is stored for a loop whose queue overflowed, oldest first."""
        queued: list[tuple[int, Work]] = []
        room_id: str | None = None
        if key[0] == "portal":
            _, receiver, peer = key  # type: ignore[misc]
            queued += [
                (i.received_at, InboxWork(self, i.id, i.kind)) for i in await self.inbox.pending_for(receiver, peer)
            ]
            queued += [(o.created_at, OutboxWork(self, o.id)) for o in await self.outbox.pending_for(receiver, peer)]
            portal = await self.portals.get(receiver, peer)
            room_id = portal.room_id if portal else None
        else:
            room_id = key[1]  # type: ignore[index]
        if room_id is not None and self.room_reload is not None:
            queued += await self.room_reload(room_id)
        queued.sort(key=lambda entry: entry[0])
        return [work for _, work in queued]

    def key_for_room(self, portal: Portal | None, room_id: str) -> LoopKey:
        return portal_key(portal.receiver, portal.peer) if portal is not None else room_key(room_id)

    # ------------------------------------------------------------------ puppets and portals

    def display_name(self, uvid: str | None, iid: str) -> str:
        if uvid and self.config.profile == "whatsapp":
            try:
                number = phonenumbers.parse(uvid, None)
                return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
            except phonenumbers.NumberParseException:
                return uvid
        return uvid or f"{self.network} user {iid.split('@')[0][-4:]}"

    def _puppet(self, iid: str, uvid: str | None) -> Puppet:
        uvid = uvid or iid.split("@")[0]
        localpart = self.config.puppet_localpart(uvid)
        return Puppet(iid, uvid, f"@{localpart}:{self.config.homeserver_domain}", self.display_name(uvid, iid))

    async def remember_puppet(self, iid: str, uvid: str | None) -> Puppet:
        """The puppet's row, written when new or renamed; no homeserver call (this runs
        inside the transaction that stores an incoming message)."""
        existing = await self.puppets.get(iid)
        if existing is not None and (uvid is None or existing.uvid == uvid):
            return existing
        puppet = self._puppet(iid, uvid or (existing.uvid if existing else None))
        await self.puppets.put(puppet)
        return puppet

    async def ensure_puppet(self, iid: str, uvid: str | None = None) -> Puppet:
        """The puppet, registered on the homeserver with its name (once per run)."""
        puppet = await self.remember_puppet(iid, uvid)
        if puppet.mxid not in self._registered:
            await self.matrix.ensure_puppet(puppet.mxid, puppet.displayname)
            self._registered.add(puppet.mxid)
        return puppet

    def bridge_state_key(self, peer: str) -> str:
        return f"{self.config.appservice_id}://{self.config.profile}/{peer}"

    def bridge_info(self, login: Login, peer: str) -> BridgeInfo:
        return BridgeInfo(
            self.bridge_state_key(peer),
            {
                "bridgebot": self.matrix.bot_mxid,
                "creator": login.mxid,
                "protocol": {"id": self.config.profile, "displayname": self.network},
                "channel": {"id": peer},
            },
        )

    async def ensure_portal(self, login: Login, peer: str, uvid: str | None = None) -> tuple[Portal, Puppet]:
        """The portal of ``login``'s chat with ``peer``, created on first use."""
        puppet = await self.ensure_puppet(peer, uvid)
        async with self.portal_creation((login.mxid, peer)):
            portal = await self.portals.get(login.mxid, peer)
            if portal is not None and portal.room_id:
                return portal, puppet
            room_id = await self.matrix.create_portal(
                puppet=puppet.mxid,
                receiver=login.mxid,
                name=puppet.displayname,
                topic=f"{self.network} chat with {puppet.displayname}, bridged by matrix-dma-bridge",
                info=self.bridge_info(login, peer),
                encrypted=self.config.encryption.default,
            )
            portal = await self.portals.insert(login.mxid, peer, room_id, self.config.encryption.default)
            return portal, puppet

    async def event_of(self, receiver: str, peer: str, gk_id: str) -> str | None:
        """The Matrix event of one of our messages; the outbox knows it before the map does
        (a receipt can overtake the bookkeeping that follows the gatekeeper's ack)."""
        ref = await self.messages.by_gk_id(receiver, peer, gk_id)
        if ref is not None:
            return ref.event_id
        item = await self.outbox.by_gk_id(receiver, gk_id)
        return item.event_id if item is not None and item.peer == peer else None

    # ------------------------------------------------------------------ the connection sink

    async def on_state(self, login: Login, change: StateChange) -> None:
        self.states[login.mxid] = change
        if change.state is ConnectionState.CONNECTED:
            # Loops waiting for this user's connection try again now.
            self.loops.wake(lambda key: key[0] == "portal" and key[1] == login.mxid)
        self.state_notices.changed(login, change)

    def _tell_state(self, login: Login, text: str, state: dict[str, Any]) -> None:
        room = login.management_room
        if room:
            self.loops.submit(room_key(room), _Notice(self, room, text, {"fi.mau.bridge_state": state}))

    def _submit_inbox(self, item: InboxItem) -> None:
        self.loops.submit(portal_key(item.receiver, item.peer), InboxWork(self, item.id, item.kind, item))

    async def resend_arrived(self, receiver: str, peer: str, gk_id: str, timeout: float) -> None:
        """Wait (at most ``timeout`` s) until a message with this id is stored again."""
        key = (receiver, peer, gk_id)
        event = self._resends.setdefault(key, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            self._resends.pop(key, None)

    def _arrived(self, receiver: str, peer: str, gk_id: str) -> None:
        event = self._resends.get((receiver, peer, gk_id))
        if event is not None:
            event.set()

    async def _store(
        self, login: Login, sender: Jid, gk_id: str, kind: str, payload: bytes, t: int | None, *, peer: str = ""
    ) -> None:
        item, new = await self.inbox.accept(
            receiver=login.mxid,
            sender=str(sender),
            peer=peer or str(sender.bare),
            gk_id=gk_id,
            kind=kind,
            payload=payload,
            sent_at=t,
        )
        if new:
            # Queued once the transaction that stored it has committed, never before.
            def queue() -> None:
                self._submit_inbox(item)
                self._arrived(login.mxid, item.peer, gk_id)

            self.db.after_commit(queue)

    async def on_event(self, login: Login, event: Event) -> None:
        """Store what must reach a portal; for a ``MessageEvent`` this runs inside the
        transaction that commits the advanced Signal session, so it only writes."""
        if isinstance(event, MessageEvent):
            await self.remember_puppet(str(event.sender.bare), event.sender_uvid)
            await self._store(
                login, event.sender, event.id, event.type, event.content.SerializeToString(), event.t * 1000
            )
            if event.identity_changed:
                await self._store(login, event.sender, event.id, "identity", b"", event.t * 1000)
        elif isinstance(event, GroupMessageEvent):
            group = str(event.group)
            await self.remember_puppet(str(event.sender.bare), event.sender_uvid)
            payload = event.content.SerializeToString()
            await self._store(login, event.sender, event.id, event.type, payload, event.t * 1000, peer=group)
        elif isinstance(event, GroupEvent):
            notice = event.notice
            view = None
            if notice.info is not None:
                members = tuple(GroupMember(str(p.jid), p.uvid, p.admin) for p in notice.info.participants)
                view = GroupView(str(notice.group), notice.info.subject, members)
                for member in members:
                    if member.uvid:
                        await self.remember_puppet(member.iid, member.uvid)
            payload = notice_payload(
                str(notice.group),
                str(notice.actor),
                notice.action.value,
                [str(p) for p in notice.participants],
                notice.subject,
                view,
            )
            await self._store(
                login, notice.actor, f"group/{notice.id}", "group", payload, notice.t * 1000, peer=str(notice.group)
            )
        elif isinstance(event, GroupUndecryptableEvent):
            if event.retry_count == 1:
                self.metrics.undecryptable("gatekeeper")
        elif isinstance(event, ReceiptEvent):
            receipt = event.receipt
            if receipt.type is st.ReceiptType.RETRY:
                self.metrics.retry_receipt("received")
            else:  # a retry the client answered itself
                # A receipt is a hint about a message, not a message: it takes its place in
                # the portal's order, and one lost to a crash loses no message (the next
                # read receipt covers the earlier ones).
                peer = str(receipt.peer.bare)
                reader = str(receipt.participant.bare) if receipt.participant is not None else peer
                work = ReceiptWork(
                    self, login.mxid, peer, receipt.type.value, receipt.id, list(receipt.message_ids), reader=reader
                )
                self.loops.submit(portal_key(login.mxid, peer), work)
        elif isinstance(event, ChatStateEvent):
            peer = str(event.sender.bare)
            typist = str(event.participant.bare) if event.participant is not None else peer
            self.loops.submit(
                portal_key(login.mxid, peer),
                Transient(f"typing from {typist}", lambda: self._typing(login, peer, event.state, typist)),
            )
        elif isinstance(event, IdentityChangedEvent):
            # Found by the bridge itself: inside the unit that stores the new session.
            await self._store(login, event.device, event.id, "identity", b"", None)
        elif isinstance(event, NotificationEvent) and event.kind == "identity" and event.sender is not None:
            await self._store(login, event.sender, event.node.attr("id"), "identity", b"", None)
        elif isinstance(event, UndecryptableEvent):
            if event.retry_count <= st.MAX_RETRY_COUNT:
                self.metrics.retry_receipt("sent")  # the client asks the peer to send it again
            # Said once (the retry count survives reconnects), and once more on giving up.
            if event.retry_count == 1:
                self.metrics.undecryptable("gatekeeper")
                await self._store(login, event.sender, f"{event.id}/1", "undecryptable", b"", None)
            elif event.retry_count > st.MAX_RETRY_COUNT:
                await self._store(login, event.sender, f"{event.id}/gave-up", "undecryptable", b"", None)

    async def _typing(self, login: Login, peer: str, state: st.ChatState, typist: str) -> None:
        portal = await self.portals.get(login.mxid, peer)
        puppet = await self.puppets.get(typist)
        if portal and portal.room_id and puppet:
            await self.matrix.set_typing(portal.room_id, puppet.mxid, state is st.ChatState.COMPOSING)

    async def _read_metrics(self, metrics: Metrics) -> None:
        """The gauges read at scrape time: queue depths, logins and connections by state."""
        metrics.outbox_depth.set(await self.outbox.count_pending())
        metrics.inbox_depth.set(await self.inbox.count_pending())
        metrics.logins.clear()
        for state, count in (await self.logins.count_by_state()).items():
            metrics.logins.labels(state).set(count)
        metrics.connections.clear()
        by_state: dict[str, int] = {}
        for change in self.states.values():
            by_state[change.state.value] = by_state.get(change.state.value, 0) + 1
        for state, count in by_state.items():
            metrics.connections.labels(state).set(count)

    # ------------------------------------------------------------------ retention

    async def prune(self, now_ms: int | None = None) -> dict[str, int]:
        """Remove done rows past their retention (``bridge.retention``)."""
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        rules = self.config.retention
        day = 86_400_000
        removed = {
            "inbox": await self.inbox.prune(now - rules.days * day),
            "outbox": await self.outbox.prune(now - rules.days * day),
            "outbox_contents": await self.outbox.forget_contents(
                now - rules.retry_hours * 3_600_000, rules.retry_messages
            ),
            "receipts": await self.messages.prune_receipts(now - rules.days * day),
            "matrix_events": await self.stores.matrix_events.prune(now - day),
        }
        if any(removed.values()):
            log.info("retention removed %s", ", ".join(f"{n} {table}" for table, n in removed.items() if n))
        return removed
