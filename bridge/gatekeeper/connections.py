"""One supervised chat connection per enlisted user.

Each :class:`UserConnection` connects, keeps its keys topped up, and on a disconnect
either retries (exponential backoff with full jitter, or the gatekeeper's
``retry_after``) or, for a refusal only a person can fix, stops and says why through the
:class:`ConnectionSink`. A push for a user wakes their connection at once. The supervisor
survives any exception: it is logged with the login, backed off, and carried on.

Connections are limited by ``gatekeeper.connections`` and nothing else: the WebSockets
go through an HTTP session of their own without a pool limit (aiohttp's default pool of
100 would hold every further user back), handshakes are limited in number at a time, and
at start the users' connections are spread out instead of opening at the same instant.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from bridge.config import ConnectionsConfig
from bridge.db.logins import Login, LoginState
from bridge.db.retries import DbRetryStore
from bridge.db.sender_keys import SenderKeyHolders
from bridge.db.signal_store import DbSignalStore
from bridge.db.stores import Stores
from bridge.gip.client import Event, GipClient, NotificationEvent
from bridge.gip.errors import GipError, GipErrorCode
from bridge.gip.noise import StaticKey
from bridge.locks import KeyedLock
from bridge.signal import SignedPreKeyRecord, generate_prekeys, next_prekey_id
from bridge.tasks import detached

from .state import EXPLANATIONS, ConnectionState, StateChange
from .tokens import TokenIssuer

log = logging.getLogger(__name__)
DAY_MS = 86_400_000
STARTUP_STEP = 0.02  # seconds between two users' first connects at start-up
STOP_TIMEOUT = 5.0


class ConnectionSink(Protocol):
    """What the core provides: it hears about states and events of each login.

    ``on_event`` must have stored an event durably when it returns: the receipt or ack
    that removes it from the gatekeeper's mailbox is sent right after. For a message it
    runs inside the transaction that commits the advanced Signal session: it may write to
    the database, and must not call out.
    """

    async def on_state(self, login: Login, change: StateChange) -> None: ...

    async def on_event(self, login: Login, event: Event) -> None: ...


@dataclass(frozen=True)
class ConnectionPolicy:
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    keepalive: float = 30.0
    prekey_low: int = 20
    prekey_batch: int = 100
    signed_pre_key_max_age_ms: int = 7 * DAY_MS
    old_signed_pre_key_grace_ms: int = 30 * DAY_MS
    maintenance_interval: float = 6 * 3600.0


@dataclass
class DeviceState:
    """What one login's device keeps across connections: its Signal store (with its
    caches), the locks that order Signal operations per peer, and its retry store."""

    store: DbSignalStore
    peer_locks: KeyedLock
    retries: DbRetryStore
    sender_keys: SenderKeyHolders


class UserConnection:
    def __init__(self, manager: ConnectionManager, login: Login) -> None:
        self._m = manager
        self.login = login
        self.client: GipClient | None = None
        self.state = ConnectionState.CONNECTING
        self._wake = asyncio.Event()
        self._attempt = 0
        self._task: asyncio.Task[None] | None = None
        self._delay_first = 0.0

    def start(self, delay: float = 0.0) -> None:
        self._delay_first = delay
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"connection {self.login.mxid}")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, STOP_TIMEOUT)
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _set(self, change: StateChange) -> None:
        self.state = change.state
        try:
            await self._m.sink.on_state(self.login, change)
        except Exception:
            log.exception("the sink failed to take a state change of %s", self.login.mxid)

    def _delay(self, retry_after: int | None) -> float:
        if retry_after is not None:
            return float(retry_after)
        ceiling = min(self._m.policy.backoff_cap, self._m.policy.backoff_base * 2**self._attempt)
        return random.uniform(ceiling / 2, ceiling)

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _run(self) -> None:
        """Supervise: connect, and after every disconnect or failure, decide and go on."""
        if self._delay_first:
            await self._sleep(self._delay_first)
        while True:
            login = await self._current_login()
            if login is None:
                return  # logged out meanwhile
            try:
                code, retry_after = await self._connect_once(login)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the connection of %s failed unexpectedly; reconnecting", self.login.mxid)
                code, retry_after = GipErrorCode.SERVER_ERROR, None
            if code in EXPLANATIONS:
                state, message = EXPLANATIONS[code]
                if state is ConnectionState.LOGGED_OUT:
                    with contextlib.suppress(Exception):
                        await self._m.stores.logins.set_state(self.login.mxid, LoginState.LOGGED_OUT)
                await self._set(StateChange(state, code, message))
                return
            delay = self._delay(retry_after)
            self._attempt += 1
            if code is GipErrorCode.UNTRUSTED_SERVER:
                # Kept retrying (a network path can heal) but never sent our token.
                message = (
                    "The server that answered as the gatekeeper could not prove the gatekeeper's key, so the "
                    f"bridge did not log in to it (a network attack, or a key change your admin must confirm); "
                    f"retrying in {delay:.0f} s."
                )
            else:
                message = (
                    f"Lost the connection to the gatekeeper ({code.value if code else 'unknown'}); "
                    f"retrying in {delay:.0f} s."
                )
            await self._set(StateChange(ConnectionState.TRANSIENT_DISCONNECT, code, message, retry_in=delay))
            await self._sleep(delay)

    async def _current_login(self) -> Login | None:
        """The login as stored now (a logout or a key rotation elsewhere shows here)."""
        try:
            login = await self._m.stores.logins.get(self.login.mxid)
        except Exception:
            log.exception("could not read the login of %s; using the one in memory", self.login.mxid)
            return self.login
        if login is None or login.state is not LoginState.ENLISTED:
            return None
        self.login = login
        return login

    async def _connect_once(self, login: Login) -> tuple[GipErrorCode | None, int | None]:
        device = self._m.device(login)
        self.client = GipClient(
            base_url=self._m.base_url,
            store=device.store,
            noise_static=StaticKey.from_private(login.noise_private),
            gatekeeper_static=self._m.gatekeeper_static,
            on_event=self._on_event,
            iid=login.iid,
            http=self._m.ws_http,
            keepalive=self._m.policy.keepalive,
            signed_pre_key_id=login.signed_pre_key_id,
            client_ip=self._m.client_ip,
            atomic=self._m.stores.db.batch,
            retries=device.retries,
            peer_locks=device.peer_locks,
            sender_keys=device.sender_keys,
        )
        await self._set(StateChange(ConnectionState.CONNECTING, None, "Connecting to the gatekeeper."))
        async with self._m.slot():
            try:
                async with self._m.handshakes:
                    await self.client.connect(self._m.tokens.for_login(login))
            except GipError as exc:
                return exc.code, exc.retry_after
            self._attempt = 0
            await self._set(StateChange(ConnectionState.CONNECTED, None, "Connected to the gatekeeper."))
            # Keys are checked at connect and then on a schedule, for connections that last.
            while not self.client.closed.is_set():
                try:
                    await self._maintain_keys(device.store)
                except GipError as exc:
                    log.warning("key maintenance for %s failed: %s", login.mxid, exc.code.value)
                except Exception:
                    log.exception("key maintenance for %s failed", login.mxid)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.client.closed.wait(), self._m.policy.maintenance_interval)
            return self.client.disconnect_code, None

    async def _maintain_keys(self, store: DbSignalStore) -> None:
        assert self.client is not None
        if await self.client.count_prekeys() < self._m.policy.prekey_low:
            await self._replenish()
        current = await store.load_signed_pre_key(self.login.signed_pre_key_id)
        now = self._m.now_ms()
        if current is None or now - current.timestamp_ms > self._m.policy.signed_pre_key_max_age_ms:
            new_id = next_prekey_id(self.login.signed_pre_key_id)
            record = SignedPreKeyRecord.generate(self.login.identity, new_id, now)
            await self.client.rotate_signed_prekey(record)
            await self._m.stores.logins.set_signed_pre_key_id(self.login.mxid, new_id)
            self.login = (await self._m.stores.logins.get(self.login.mxid)) or self.login
            # Keep superseded keys a while: PreKey messages made from them may still arrive.
            await store.remove_signed_pre_keys_older_than(new_id, now - self._m.policy.old_signed_pre_key_grace_ms)

    async def _replenish(self) -> None:
        assert self.client is not None
        batch = self._m.policy.prekey_batch
        start = await self._m.stores.logins.reserve_pre_key_ids(self.login.mxid, batch)
        await self.client.upload_prekeys(generate_prekeys(start, batch))

    async def _on_event(self, event: Event) -> None:
        if isinstance(event, NotificationEvent) and event.kind == "encrypt" and self.client is not None:
            # Beside the worker: the upload is a request whose answer the worker must not wait for.
            self._m.spawn_upkeep(self._replenish_quietly(), f"replenish {self.login.mxid}")
        await self._m.sink.on_event(self.login, event)

    async def _replenish_quietly(self) -> None:
        try:
            await self._replenish()
        except GipError as exc:
            log.warning("could not replenish prekeys for %s: %s", self.login.mxid, exc.code.value)


class ConnectionManager:
    def __init__(
        self,
        *,
        stores: Stores,
        tokens: TokenIssuer,
        base_url: str,
        sink: ConnectionSink,
        policy: ConnectionPolicy | None = None,
        limits: ConnectionsConfig | None = None,
        client_ip: str | None = None,
        gatekeeper_static: bytes | None = None,
        allowed: Callable[[str], bool] = lambda mxid: True,
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.stores = stores
        # Whether the config still lets this Matrix user use the bridge: one it no longer
        # does keeps its data but gets no connection.
        self.allowed = allowed
        self.gatekeeper_static = gatekeeper_static
        self.tokens = tokens
        self.base_url = base_url
        self.sink = sink
        self.policy = policy or ConnectionPolicy()
        self.limits = limits or ConnectionsConfig()
        self.client_ip = client_ip
        self.now_ms = now_ms
        self._connections: dict[str, UserConnection] = {}
        self._devices: dict[str, DeviceState] = {}
        self._slots = asyncio.Semaphore(self.limits.max)
        self.handshakes = asyncio.Semaphore(self.limits.concurrent_connects)
        self._ws_http: aiohttp.ClientSession | None = None
        self._upkeep: set[asyncio.Task[None]] = set()

    @property
    def ws_http(self) -> aiohttp.ClientSession:
        """The chat connections' own HTTP session: no pool limit, no overall timeout (a
        WebSocket lasts), a bounded connect."""
        if self._ws_http is None:
            self._ws_http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
            )
        return self._ws_http

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """One of ``gatekeeper.connections.max`` connections, held while connected."""
        async with self._slots:
            yield

    def spawn_upkeep(self, coro: object, name: str) -> None:
        task = detached(coro, name)
        self._upkeep.add(task)
        task.add_done_callback(self._upkeep.discard)

    def device(self, login: Login) -> DeviceState:
        """The login's device state, one per login for the process's lifetime."""
        state = self._devices.get(login.mxid)
        if state is None:
            store = DbSignalStore(self.stores.db, self.stores.sealer, login.mxid, login.identity, login.registration_id)
            retries = DbRetryStore(self.stores.db, self.stores.outbox, login.mxid)
            state = DeviceState(store, KeyedLock(), retries, SenderKeyHolders(self.stores.db, login.mxid))
            self._devices[login.mxid] = state
        return state

    async def start(self) -> None:
        """Connect every enlisted user, spread out: 20 ms apart, and over no more than
        ``startup_spread_seconds`` in all (a thousand users take 20 s, ten take 0.2 s)."""
        logins = [login for login in await self.stores.logins.all(LoginState.ENLISTED) if self.allowed(login.mxid)]
        step = min(STARTUP_STEP, self.limits.startup_spread_seconds / max(len(logins), 1))
        for index, login in enumerate(logins):
            self.connect(login, delay=step * index)

    def connect(self, login: Login, *, delay: float = 0.0) -> UserConnection:
        existing = self._connections.get(login.mxid)
        if existing is not None and existing.running:
            existing.wake()
            return existing
        connection = UserConnection(self, login)
        self._connections[login.mxid] = connection
        connection.start(delay)
        return connection

    def get(self, mxid: str) -> UserConnection | None:
        return self._connections.get(mxid)

    def client_for(self, mxid: str) -> GipClient | None:
        """The user's live client, or None while not connected."""
        connection = self._connections.get(mxid)
        if connection is None or connection.client is None or not connection.client.connected:
            return None
        return connection.client

    def connected_count(self) -> int:
        return sum(1 for mxid in self._connections if self.client_for(mxid) is not None)

    async def on_push(self, uvid: str) -> None:
        """The gatekeeper holds messages for this user: connect now."""
        login = await self.stores.logins.by_uvid(uvid)
        if login is None or login.state is not LoginState.ENLISTED or not self.allowed(login.mxid):
            log.info("push for an identifier without an enlisted login the bridge serves")
            return
        self.connect(login)

    async def disconnect(self, mxid: str) -> None:
        connection = self._connections.pop(mxid, None)
        if connection is not None:
            await connection.stop()

    def forget(self, mxid: str) -> None:
        """A login is gone: drop its device state (its rows went by cascade)."""
        self._devices.pop(mxid, None)

    async def close(self) -> None:
        connections = list(self._connections)
        await asyncio.gather(*(self.disconnect(mxid) for mxid in connections), return_exceptions=True)
        for task in list(self._upkeep):
            task.cancel()
        if self._ws_http is not None:
            await self._ws_http.close()
            self._ws_http = None
