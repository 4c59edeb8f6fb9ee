"""The Partner side of GIP for one enlisted user: enlist, connect, keys, send, receive.

One :class:`GipClient` is one Partner client (C): one Signal device and one chat
connection. Signal state lives in the ``SignalStore`` it is given (in memory for tests,
the bridge's database in production). Reconnecting is the caller's job (the bridge's
connection manager does it with backoff); :attr:`closed` says when.

Durability is the caller's, and the client makes it possible:

* a message is decrypted against a staged store (:class:`StagedSignalStore`); inside the
  caller's ``atomic`` unit the advanced session is committed and the handler runs (the
  bridge stores the message in the same transaction), and only then does the delivery
  receipt go out;
* an outgoing message is encrypted once (:meth:`GipClient.encrypt_message`): the advanced
  sessions and the :class:`PreparedMessage` (``persist``) commit in one unit before it is
  sent, and a resend sends that same ciphertext;
* every Signal operation on one peer (decrypts, encrypts, retry answers) runs under that
  peer's lock, in one order, from the read of its session to the commit of the new one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bridge.locks import KeyedLock
from bridge.signal import (
    DuplicateMessageError,
    IdentityChange,
    MessageType,
    PreKeyRecord,
    PublicKey,
    SessionCipher,
    SignalError,
    SignalStore,
    SignedPreKeyRecord,
    StagedSignalStore,
    generate_prekeys,
)
from bridge.tasks import detached

from . import groups as gp
from . import stanzas as st
from .content import Content, decode_content, encode_content
from .errors import GipError, GipErrorCode
from .group_client import (
    GroupClient,
    GroupEvent,
    GroupMessageEvent,
    GroupUndecryptableEvent,
    MemorySenderKeyBook,
    SenderKeyBook,
)
from .jid import Jid
from .noise import StaticKey
from .outgoing import MemoryRetryStore, PreparedMessage, RetryStore, SentMessage
from .stanza import Node
from .transport import CHAT_PATH, PROTOCOL_VERSION, WS_MAX_MESSAGE, NoiseChannel, client_handshake

log = logging.getLogger(__name__)

ENLIST_REASONS = {
    "bad_integrator": GipErrorCode.UNAUTHORIZED,
    "bad_token": GipErrorCode.UNAUTHORIZED,
    "bad_signature": GipErrorCode.BAD_REQUEST,
    "not_eea": GipErrorCode.NOT_IN_EEA,
    "version": GipErrorCode.VERSION,
    "rate_limited": GipErrorCode.RATE_LIMITED,
}
REQUEST_TIMEOUT = 30.0
MAX_409_RESENDS = 3
# A handler that fails (the bridge's database is down, say) is tried again in place, in
# order, while the connection lasts; the message is acknowledged only once it is stored.
HANDLER_RETRY_CAP = 30.0
CLOSE_TIMEOUT = 3.0


class EnlistError(GipError):
    def __init__(self, reason: str) -> None:
        super().__init__(ENLIST_REASONS.get(reason, GipErrorCode.SERVER_ERROR), reason)
        self.reason = reason


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class MessageEvent:
    id: str
    sender: Jid  # the sending device
    type: str
    t: int
    content: Content = field(repr=False)
    identity_changed: bool
    offline: bool
    sender_uvid: str | None = None


@dataclass(frozen=True, slots=True)
class UndecryptableEvent:
    id: str
    sender: Jid
    error: str
    retry_count: int


@dataclass(frozen=True, slots=True)
class ReceiptEvent:
    receipt: st.Receipt


@dataclass(frozen=True, slots=True)
class ChatStateEvent:
    sender: Jid  # the peer, or the group
    state: st.ChatState
    participant: Jid | None = None  # in a group: who types


@dataclass(frozen=True, slots=True)
class IdentityChangedEvent:
    """A peer device's identity key is not the one the bridge saw before (trust on first
    use, per device), found by the bridge itself when a bundle opened a session. ``id`` is
    the same for the same new key, so each change is reported once."""

    device: Jid
    id: str

    @property
    def sender(self) -> Jid:
        return self.device

    @classmethod
    def of(cls, device: Jid, key: PublicKey) -> IdentityChangedEvent:
        return cls(device, f"identity/{device}/{hashlib.sha256(key.serialize()).hexdigest()[:16]}")


@dataclass(frozen=True, slots=True)
class NotificationEvent:
    kind: str
    sender: Jid | None
    node: Node


@dataclass(frozen=True, slots=True)
class OfflineEvent:
    count: int


@dataclass(frozen=True, slots=True)
class DisconnectedEvent:
    code: GipErrorCode


Event = (
    MessageEvent
    | UndecryptableEvent
    | ReceiptEvent
    | ChatStateEvent
    | NotificationEvent
    | IdentityChangedEvent
    | OfflineEvent
    | DisconnectedEvent
    | GroupEvent
    | GroupMessageEvent
    | GroupUndecryptableEvent
)
EventHandler = Callable[[Event], Awaitable[None]]


Persist = Callable[[PreparedMessage], Awaitable[None]]


def _no_unit() -> AbstractAsyncContextManager[Any]:
    return nullcontext()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class GipClient(GroupClient):
    def __init__(
        self,
        *,
        base_url: str,
        store: SignalStore,
        noise_static: StaticKey,
        gatekeeper_static: bytes | None = None,
        on_event: EventHandler | None = None,
        iid: str | None = None,
        client_ip: str | None = None,
        http: aiohttp.ClientSession | None = None,
        keepalive: float = 30.0,
        clock: Callable[[], float] = time.time,
        signed_pre_key_id: int = 1,
        atomic: Callable[[], AbstractAsyncContextManager[Any]] = _no_unit,
        retries: RetryStore | None = None,
        peer_locks: KeyedLock | None = None,
        sender_keys: SenderKeyBook | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.store = store
        self.noise_static = noise_static
        # The gatekeeper's Noise static public key, pinned: None trusts any (tests only).
        self.gatekeeper_static = gatekeeper_static
        self.on_event = on_event or _ignore
        self.iid = iid
        self.client_ip = client_ip
        self._http = http
        self._own_http = http is None
        self._keepalive = keepalive
        self._clock = clock
        self.signed_pre_key_id = signed_pre_key_id
        # The caller's unit of work: what runs inside commits together (the bridge opens a
        # database transaction); by default nothing is atomic beyond the store's own writes.
        self._atomic = atomic
        self.retries: RetryStore = retries or MemoryRetryStore()
        self.sender_keys: SenderKeyBook = sender_keys or MemorySenderKeyBook()
        self._groups: dict[Jid, gp.GroupInfo] = {}
        self._group_devices: dict[tuple[Jid, str], list[Jid]] = {}
        self._jid: Jid | None = None
        # Shared by every connection of one device, so that a new connection's decrypts
        # wait for an old one's encrypts to commit.
        self._peer_locks = peer_locks or KeyedLock()
        self._channel: NoiseChannel | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._prefix = secrets.token_hex(4)
        self._pending: dict[tuple[str, str], asyncio.Future[Node]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._devices: dict[Jid, st.DeviceList] = {}
        # Devices whose keys the gatekeeper could not give: left out of the fan-out until
        # their user's device list changes.
        self._no_bundle: set[Jid] = set()
        self._send_lock = asyncio.Lock()
        self.closed = asyncio.Event()
        self.closed.set()
        self.disconnect_code: GipErrorCode | None = None
        self.offline_count = 0

    # ------------------------------------------------------------------ plumbing

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        return self._http

    @property
    def jid(self) -> Jid:
        if self.iid is None:
            raise GipError(GipErrorCode.NOT_ENLISTED, "not enlisted")
        if self._jid is None or str(self._jid) != self.iid:  # parsed once per IID
            self._jid = Jid.parse(self.iid)
        return self._jid

    @property
    def connected(self) -> bool:
        return self._channel is not None and not self.closed.is_set()

    def new_id(self) -> str:
        return f"{self._prefix}{next(self._ids):x}".upper()

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = detached(coro, name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, node: Node) -> None:
        if self._channel is None or self.closed.is_set():
            raise GipError(GipErrorCode.CLOSED, "not connected")
        async with self._send_lock:
            await self._channel.send(node)

    async def _await(self, key: tuple[str, str], node: Node, timeout: float = REQUEST_TIMEOUT) -> Node:
        future: asyncio.Future[Node] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            await self._send(node)
            async with asyncio.timeout(timeout):  # no task per wait, unlike wait_for
                return await future
        except TimeoutError:
            raise GipError(GipErrorCode.TIMEOUT, f"no answer to {key[0]} {key[1]}") from None
        finally:
            if self._pending.get(key) is future:
                del self._pending[key]

    async def request(self, node: Node) -> Node:
        """Send an iq and return its result; an error iq becomes a GipError."""
        return st.raise_for_iq_error(await self._await(("iq", node.attrs["id"]), node))

    # ------------------------------------------------------------------ enlistment

    async def enlist(self, token: str) -> str:
        """``POST /3p/interop_reg`` with our keys; returns and remembers our IID."""
        identity = await self.store.get_identity_key_pair()
        registration = await self.store.get_local_registration_id()
        signed = await self._current_signed_prekey()
        form = {
            "authkey": _b64url(self.noise_static.public),
            "e_keytype": _b64url(b"\x05"),
            "e_regid": _b64url(registration.to_bytes(4, "big")),
            "e_ident": _b64url(identity.public.raw),
            "e_skey_id": _b64url(signed.id.to_bytes(3, "big")),
            "e_skey_val": _b64url(signed.key_pair.public.raw),
            "e_skey_sig": _b64url(signed.signature),
            "token": token,
            "v": str(PROTOCOL_VERSION),
        }
        try:
            async with self.http.post(f"{self.base_url}/3p/interop_reg", data=form) as response:
                if response.status != 200:
                    raise GipError(GipErrorCode.SERVER_ERROR, f"enlistment answered HTTP {response.status}")
                body = await response.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise GipError(GipErrorCode.UNAVAILABLE, f"cannot reach the gatekeeper: {type(exc).__name__}") from exc
        if body.get("status") != "ok":
            raise EnlistError(str(body.get("reason", "unknown")))
        self.iid = str(body["login"])
        return self.iid

    async def _current_signed_prekey(self) -> SignedPreKeyRecord:
        record = await self.store.load_signed_pre_key(self.signed_pre_key_id)
        if record is None:
            raise GipError(GipErrorCode.NOT_FOUND, "no signed prekey in the store")
        return record

    # ------------------------------------------------------------------ connection

    async def connect(self, token: str) -> int:
        """Open the chat channel; returns how many stanzas waited in the mailbox.

        Raises:
            GipError: the gatekeeper's failure code (401, 403, 405, 409, 426, 428, 451, 503).
        """
        payload: dict[str, Any] = {"v": PROTOCOL_VERSION, "login": self.iid, "token": token}
        if self.client_ip is not None:
            payload["client_ip"] = self.client_ip
        url = self.base_url.replace("http", "ws", 1) + CHAT_PATH
        try:
            ws = await self.http.ws_connect(url, max_msg_size=WS_MAX_MESSAGE, autoping=True)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise GipError(GipErrorCode.UNAVAILABLE, f"cannot reach the gatekeeper: {type(exc).__name__}") from exc
        try:
            channel = await client_handshake(ws, self.noise_static, payload, self.gatekeeper_static)
            first = await channel.receive(timeout=REQUEST_TIMEOUT)
        except (GipError, TimeoutError) as exc:
            await ws.close()
            if isinstance(exc, GipError) and exc.code is GipErrorCode.UNTRUSTED_SERVER:
                log.error("%s", exc.text)
            if isinstance(exc, GipError) and exc.code is not GipErrorCode.CLOSED:
                raise
            raise GipError(GipErrorCode.UNAVAILABLE, "the gatekeeper closed the handshake") from None
        if first.tag == "failure":
            await ws.close()
            retry = first.get("retry_after")
            raise GipError(
                GipErrorCode.from_wire(first.get("reason", "500") or "500"),
                "connection refused",
                retry_after=int(retry) if retry and retry.isdigit() else None,
            )
        if first.tag != "success":
            await ws.close()
            raise GipError(GipErrorCode.BAD_REQUEST, f"expected <success>, got <{first.tag}>")
        self._ws, self._channel = ws, channel
        self.closed.clear()
        self.disconnect_code = None
        self.offline_count = int(first.get("offline", "0") or 0)
        self._spawn(self._read_loop(), "gip reader")
        if self._keepalive:
            self._spawn(self._keepalive_loop(), "gip keepalive")
        return self.offline_count

    async def close(self) -> None:
        """Close the channel and stop the client's tasks; bounded, so that a peer that
        never answers the close handshake cannot hold a shutdown up."""
        if self._channel is not None:
            with contextlib.suppress(TimeoutError, ConnectionError, RuntimeError):
                await asyncio.wait_for(self._channel.close(), CLOSE_TIMEOUT)
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        self.closed.set()
        if self._own_http and self._http is not None:
            await self._http.close()
            self._http = None

    async def _keepalive_loop(self) -> None:
        while not self.closed.is_set():
            await asyncio.sleep(self._keepalive)
            try:
                await self.ping()
            except GipError:
                if self._channel is not None:
                    await self._channel.close()
                return

    async def _read_loop(self) -> None:
        """Read stanzas: answers to our requests resolve at once, everything else goes, in
        order, to the worker, so that a handler may itself make requests."""
        assert self._channel is not None
        inbound: asyncio.Queue[Node | None] = asyncio.Queue()
        self._spawn(self._work(inbound), "gip worker")
        code = GipErrorCode.CLOSED
        try:
            while True:
                try:
                    node = await self._channel.receive()
                except GipError as exc:
                    code = exc.code
                    break
                if node.tag in ("failure", "stream:error"):
                    code = GipErrorCode.from_wire(node.get("reason") or node.get("code") or "500")
                    break
                key = (node.tag, node.get("id") or "")
                if node.tag in ("iq", "ack") and key in self._pending:
                    future = self._pending[key]
                    if not future.done():
                        future.set_result(node)
                    continue
                inbound.put_nowait(node)
        finally:
            self.disconnect_code = code
            self.closed.set()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(GipError(GipErrorCode.CLOSED, "connection closed"))
            # What the worker has not handled stays in the gatekeeper's mailbox (no receipt
            # was sent for it) and comes again on the next connection.
            inbound.put_nowait(None)

    async def _work(self, inbound: asyncio.Queue[Node | None]) -> None:
        while (node := await inbound.get()) is not None:
            if self.closed.is_set():
                break
            try:
                await self._dispatch(node)
            except GipError as exc:
                log.warning("could not handle a <%s> stanza: %s", node.tag, exc.code.value)
            except Exception:
                # A failing handler must not stop the others; unreceipted messages come back.
                log.exception("handler failed for a <%s> stanza", node.tag)
        with contextlib.suppress(Exception):
            await self.on_event(DisconnectedEvent(self.disconnect_code or GipErrorCode.CLOSED))

    async def _dispatch(self, node: Node) -> None:
        tag = node.tag
        if tag in ("iq", "ack"):
            return  # an answer nobody waits for any more (timed out)
        if tag == "message":
            if gp.is_group(Jid.parse(node.attr("from"))):
                await self._on_group_message(gp.IncomingGroupMessage.parse(node))
            else:
                await self._on_message(st.IncomingMessage.parse(node))
        elif tag == "receipt":
            await self._on_receipt(st.Receipt.parse(node, direction="from"))
        elif tag == "chatstate":
            sender, state = st.parse_chatstate(node, direction="from")
            await self.on_event(ChatStateEvent(sender, state, st.chatstate_participant(node)))
        elif tag == "notification" and node.get("type") == "group":
            await self._on_group_notice(gp.GroupNotice.parse(node))
            await self._send(st.ack(node.attr("id"), "notification"))
        elif tag == "notification":
            await self._on_notification(node)
        elif tag == "ib":
            offline = node.child("offline")
            if offline is not None:
                await self.on_event(OfflineEvent(offline.int_attr("count")))

    async def _handle_durably(self, run: Callable[[], Awaitable[None]], what: str) -> None:
        """Run a handler that stores what must not be lost, again and again while the
        connection lasts (a database outage passes); when it closes first, the gatekeeper
        still holds the stanza and sends it again on the next connection."""
        delay = 0.5
        while True:
            try:
                await run()
                return
            except Exception:
                if self.closed.is_set():
                    raise
                log.exception("could not store %s; trying again in %.1f s", what, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closed.wait(), delay)
            if self.closed.is_set():
                raise GipError(GipErrorCode.CLOSED, f"closed before {what} was stored")
            delay = min(delay * 2, HANDLER_RETRY_CAP)

    # ------------------------------------------------------------------ keys

    async def ping(self) -> None:
        await self.request(st.ping(self.new_id()))

    async def upload_prekeys(self, records: list[PreKeyRecord]) -> None:
        """Store the one-time prekeys (in one batch where the store can), then upload them."""
        batch = getattr(self.store, "store_pre_keys", None)
        if batch is not None:
            await batch(records)
        else:
            for record in records:
                await self.store.store_pre_key(record)
        keys = [st.PreKey(r.id, r.key_pair.public.raw) for r in records]
        await self.request(st.upload_prekeys(self.new_id(), keys))

    async def replenish_prekeys(self, start_id: int, count: int) -> list[PreKeyRecord]:
        records = generate_prekeys(start_id, count)
        await self.upload_prekeys(records)
        return records

    async def rotate_signed_prekey(self, record: SignedPreKeyRecord) -> None:
        await self.store.store_signed_pre_key(record)
        key = st.SignedPreKey(record.id, record.key_pair.public.raw, record.signature)
        await self.request(st.rotate_signed_prekey(self.new_id(), key))
        self.signed_pre_key_id = record.id

    async def count_prekeys(self) -> int:
        return st.parse_count(await self.request(st.count_prekeys(self.new_id())))

    async def fetch_bundles(self, devices: list[Jid]) -> list[st.Bundle | st.BundleError]:
        return st.parse_bundle_list(await self.request(st.fetch_bundles(self.new_id(), devices)))

    async def get_devices(self, user: Jid, *, refresh: bool = False) -> st.DeviceList:
        bare = user.bare
        if refresh or bare not in self._devices:
            result = await self.request(st.get_devices(self.new_id(), [bare]))
            for device_list in st.parse_device_lists(result):
                self._devices[device_list.user] = device_list
        if bare not in self._devices:
            raise GipError(GipErrorCode.NOT_FOUND, "no device list")
        return self._devices[bare]

    # ------------------------------------------------------------------ reach, blocklist, account

    async def lookup(self, uvid: str) -> Jid:
        result = await self.request(st.lookup(self.new_id(), uvid))
        return Jid.parse(result.require_child("user").attr("jid"))

    async def reach_ping(self, jid: Jid) -> None:
        await self.request(st.reach_ping(self.new_id(), jid))

    async def blocklist(self) -> list[Jid]:
        return st.parse_blocklist(await self.request(st.get_blocklist(self.new_id())))

    async def set_blocked(self, jid: Jid, blocked: bool) -> None:
        await self.request(st.set_block(self.new_id(), jid, block=blocked))

    async def client_gone(self) -> None:
        """Proxy mode: tell the gatekeeper our end user's client closed, and disconnect."""
        await self._send(st.client_gone())
        await self.closed.wait()

    async def opt_out(self) -> None:
        """Ask the gatekeeper to delete our enlistment, keys and mailbox."""
        await self.request(st.delete_account(self.new_id()))
        await self.close()

    # ------------------------------------------------------------------ sending

    def _cipher(self, store: SignalStore, device: Jid) -> SessionCipher:
        return SessionCipher(store, device.signal_address(), clock=lambda: int(self._clock() * 1000))

    async def _open_sessions(
        self, stage: StagedSignalStore, devices: list[Jid], changes: list[IdentityChangedEvent]
    ) -> list[Jid]:
        """Sessions for the devices that have none, from one bundle request; returns the
        devices that could not get one (the gatekeeper has no keys for them). A bundle
        whose identity key differs from the device's known one adds to ``changes``."""
        missing = [d for d in devices if not await self._cipher(stage, d).has_session()]
        if not missing:
            return []
        failed = []
        for result in await self.fetch_bundles(missing):
            if isinstance(result, st.BundleError):
                failed.append(result.jid)
            else:
                bundle = result.to_signal()
                if await self._cipher(stage, result.jid).process_bundle(bundle) is IdentityChange.REPLACED_EXISTING:
                    changes.append(IdentityChangedEvent.of(result.jid, bundle.identity_key))
        return failed

    async def _encrypt(self, stage: StagedSignalStore, device: Jid, plaintext: bytes) -> st.Enc:
        message = await self._cipher(stage, device).encrypt(plaintext)
        return st.Enc(st.EncType.PKMSG if message.type == MessageType.PREKEY else st.EncType.MSG, message.serialized)

    async def _fan_out(
        self,
        stanza_id: str,
        to: Jid,
        message_type: str,
        t: int,
        plaintext: bytes,
        devices: st.DeviceList,
        done: dict[Jid, st.Enc],
        persist: Persist | None,
    ) -> PreparedMessage:
        """Encrypt for every device of ``devices`` not in ``done`` and commit the advanced
        sessions with ``persist(prepared)`` in one unit; the peer's lock is held."""
        stage = StagedSignalStore(self.store)
        wanted = [d for d in devices.devices() if d not in done and d not in self._no_bundle]
        changes: list[IdentityChangedEvent] = []
        for device in await self._open_sessions(stage, wanted, changes):
            log.warning("the gatekeeper has no keys for a device of a recipient; it is left out until its list changes")
            self._no_bundle.add(device)
        participants = {d: e for d, e in done.items() if d in devices.devices()}
        for device in wanted:
            if device not in self._no_bundle:
                participants[device] = await self._encrypt(stage, device, plaintext)
        if not participants:
            raise GipError(GipErrorCode.NOT_FOUND, "none of the recipient's devices can receive messages")
        ordered = tuple(sorted(participants.items(), key=lambda item: item[0]))
        prepared = PreparedMessage(stanza_id, to.bare, message_type, t, devices.hash, ordered)
        async with self._atomic():
            await stage.commit()
            for change in changes:  # the security notice is stored with the session that shows it
                await self.on_event(change)
            if persist is not None:
                await persist(prepared)
        return prepared

    async def encrypt_message(
        self,
        to: Jid,
        content: Content,
        message_type: str = "text",
        message_id: str | None = None,
        *,
        persist: Persist | None = None,
    ) -> PreparedMessage:
        """Encrypt once for every device of ``to``; the advanced sessions and
        ``persist(prepared)`` commit together before this returns, and nothing is sent.

        A device the gatekeeper has no keys for is left out (logged) while the others get
        the message.

        Raises:
            GipError: NOT_FOUND when no device of ``to`` can receive it; CLOSED/TIMEOUT
                when the device list or keys could not be fetched.
        """
        stanza_id = message_id or self.new_id()
        plaintext = encode_content(content)
        async with self._peer_locks(to.bare):
            devices = await self.get_devices(to)
            if not devices.device_ids:
                raise GipError(GipErrorCode.NOT_FOUND, "the recipient has no devices")
            prepared = await self._fan_out(
                stanza_id, to, message_type, int(self._clock()), plaintext, devices, {}, persist
            )
        await self.retries.remember_sent(
            SentMessage(stanza_id, to.bare, message_type, content.SerializeToString(), prepared.devices)
        )
        return prepared

    async def send_prepared(
        self, prepared: PreparedMessage, content: Content, *, persist: Persist | None = None
    ) -> PreparedMessage:
        """Send a prepared message (again: the gatekeeper shows an id once); returns it as
        finally sent. A stale device list (409) is refetched, the new devices get their own
        ciphertext (persisted like the first), the others keep theirs, and the same id goes
        again.

        Raises:
            GipError: 403 (not reachable or blocked), 429 (with ``retry_after``), or
                CLOSED/TIMEOUT when the connection failed before the ack.
        """
        if gp.is_group(prepared.to):
            return await self.send_group_prepared(prepared, content, persist=persist)
        for _ in range(MAX_409_RESENDS):
            ack = await self._await(("ack", prepared.id), prepared.stanza().node())
            error = ack.get("error")
            if error is None:
                return prepared
            code = GipErrorCode.from_wire(error)
            if code is not GipErrorCode.CONFLICT:
                retry = ack.get("retry_after")
                raise GipError(code, "message refused", retry_after=int(retry) if retry and retry.isdigit() else None)
            async with self._peer_locks(prepared.to):
                devices = await self.get_devices(prepared.to, refresh=True)
                self._no_bundle = {d for d in self._no_bundle if d.bare != prepared.to}
                prepared = await self._fan_out(
                    prepared.id,
                    prepared.to,
                    prepared.type,
                    prepared.t,
                    encode_content(content),
                    devices,
                    dict(prepared.participants),
                    persist,
                )
            await self.retries.remember_sent(
                SentMessage(prepared.id, prepared.to, prepared.type, content.SerializeToString(), prepared.devices)
            )
        raise GipError(GipErrorCode.CONFLICT, "device list kept changing")

    async def send_message(
        self, to: Jid, content: Content, message_type: str = "text", message_id: str | None = None
    ) -> str:
        """Encrypt and send in one go (for callers that keep nothing of their own);
        returns the id once the gatekeeper stored it."""
        prepared = await self.encrypt_message(to, content, message_type, message_id)
        await self.send_prepared(prepared, content)
        return prepared.id

    async def send_receipt(self, peer: Jid, message_id: str) -> None:
        await self._send(st.Receipt(message_id, peer, st.ReceiptType.DELIVERED).node(direction="to"))

    async def send_read(self, peer: Jid, message_ids: list[str]) -> None:
        receipt = st.Receipt(message_ids[0], peer, st.ReceiptType.READ, tuple(message_ids))
        await self._send(receipt.node(direction="to"))

    async def send_typing(self, peer: Jid, state: st.ChatState) -> None:
        await self._send(st.chatstate(peer.bare, state, direction="to"))

    # ------------------------------------------------------------------ receiving

    async def _on_message(self, message: st.IncomingMessage) -> None:
        message_type = MessageType.PREKEY if message.enc.type is st.EncType.PKMSG else MessageType.WHISPER
        async with self._peer_locks(message.sender.bare):
            stage = StagedSignalStore(self.store)
            try:
                result = await self._cipher(stage, message.sender).decrypt(message_type, message.enc.ciphertext)
                content = decode_content(result.plaintext)
            except DuplicateMessageError:
                # Already stored (our receipt got lost): confirm again, show nothing.
                await self.send_receipt(message.sender, message.id)
                return
            except (SignalError, GipError) as exc:
                await self._undecryptable(message, type(exc).__name__)
                return
            event = MessageEvent(
                message.id,
                message.sender,
                message.type,
                message.t,
                content,
                result.identity_change is IdentityChange.REPLACED_EXISTING,
                message.offline,
                message.sender_uvid,
            )

            async def store() -> None:
                async with self._atomic():
                    await stage.commit()
                    await self.on_event(event)

            await self._handle_durably(store, "a message")
        # Only now, after the session and the message are stored: the delivery receipt
        # that empties the mailbox.
        await self.send_receipt(message.sender, message.id)

    async def _undecryptable(self, message: st.IncomingMessage, error: str) -> None:
        count = await self.retries.count_failure(message.sender, message.id)
        event = UndecryptableEvent(message.id, message.sender, error, count)
        await self._handle_durably(lambda: self.on_event(event), "an undecryptable message's notice")
        if count <= st.MAX_RETRY_COUNT:
            await self._send_retry(message.sender, message.id, count)
        else:
            # Given up: the sender will not resend; the notice said so. Clear the mailbox.
            await self.send_receipt(message.sender, message.id)

    async def _current_bundle(self) -> st.Bundle:
        """Our bundle with a fresh one-time prekey, so that a sender can rebuild the session."""
        identity = await self.store.get_identity_key_pair()
        signed = await self._current_signed_prekey()
        record = generate_prekeys(secrets.randbelow(0xFFFF00) + 1, 1)[0]
        await self.store.store_pre_key(record)
        return st.Bundle(
            self.jid,
            await self.store.get_local_registration_id(),
            identity.public.raw,
            st.SignedPreKey(signed.id, signed.key_pair.public.raw, signed.signature),
            st.PreKey(record.id, record.key_pair.public.raw),
        )

    async def _send_retry(self, sender: Jid, message_id: str, count: int) -> None:
        keys = await self._current_bundle() if count >= 2 else None
        receipt = st.Receipt(
            message_id,
            sender,
            st.ReceiptType.RETRY,
            retry_count=count,
            retry_t=int(self._clock()),
            registration_id=await self.store.get_local_registration_id(),
            keys=keys,
        )
        await self._send(receipt.node(direction="to"))

    async def _on_receipt(self, receipt: st.Receipt) -> None:
        if receipt.type is st.ReceiptType.RETRY and gp.is_group(receipt.peer):
            await self._resend_group_for_retry(receipt)
        elif receipt.type is st.ReceiptType.RETRY:
            await self._resend_for_retry(receipt)
        event = ReceiptEvent(receipt)
        await self._handle_durably(lambda: self.on_event(event), "a receipt")
        ack = st.ack(receipt.id, "receipt")
        if receipt.type is not st.ReceiptType.DELIVERED:
            ack.attrs["type"] = receipt.type.value
        await self._send(ack)

    async def _resend_for_retry(self, receipt: st.Receipt) -> None:
        """The peer could not decrypt our message: rebuild the session if asked, resend.

        Only for a device of the message's recipient that it was fanned out to: a retry
        receipt must never pull a message onto anyone else's device.
        """
        sent = await self.retries.sent(receipt.id)
        device = receipt.peer
        if sent is None or receipt.retry_count > st.MAX_RETRY_COUNT:
            return
        if device.bare != sent.to or (sent.devices and device not in sent.devices):
            log.warning("refused a retry receipt from a device the message was not sent to")
            return
        content = Content()
        content.ParseFromString(sent.content)
        async with self._peer_locks(device.bare):
            stage = StagedSignalStore(self.store)
            bundle = receipt.keys
            if bundle is None and receipt.retry_count >= 2:
                fetched = (await self.fetch_bundles([device]))[0]
                bundle = fetched if isinstance(fetched, st.Bundle) else None
            cipher = self._cipher(stage, device)
            changes: list[IdentityChangedEvent] = []
            if bundle is not None and bundle.jid == device:
                keys = bundle.to_signal()
                if await cipher.process_bundle(keys) is IdentityChange.REPLACED_EXISTING:
                    # A reinstalled device: its owner is told before the message goes to it.
                    changes.append(IdentityChangedEvent.of(device, keys.identity_key))
            elif not await cipher.has_session():
                return
            enc = await self._encrypt(stage, device, encode_content(content))
            devices = await self.get_devices(sent.to)
            async with self._atomic():
                await stage.commit()
                for change in changes:
                    await self.on_event(change)
        message = st.OutgoingMessage(receipt.id, sent.to, sent.type, int(self._clock()), devices.hash, ((device, enc),))
        self._spawn(self._await(("ack", receipt.id), message.node()), f"resend {receipt.id}")

    async def _on_notification(self, node: Node) -> None:
        kind = node.attr("type")
        sender = Jid.parse(node.attrs["from"]) if node.get("from") else None
        if kind in ("devices", "identity") and sender is not None:
            self._devices.pop(sender.bare, None)
            self._group_devices.clear()  # a group with this user must be counted again
            self._no_bundle = {d for d in self._no_bundle if d.bare != sender.bare}
        event = NotificationEvent(kind, sender, node)
        await self._handle_durably(lambda: self.on_event(event), "a notification")
        await self._send(st.ack(node.attr("id"), "notification"))


async def _ignore(event: Event) -> None:
    return None
