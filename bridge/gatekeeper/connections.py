"""One supervised chat connection per enlisted user.

Each :class:`UserConnection` connects, keeps its keys topped up, and on a disconnect
either retries (exponential backoff with full jitter, or the gatekeeper's
``retry_after``) or, for a refusal only a person can fix, stops and says why through the
:class:`ConnectionSink`. A push for a user wakes their connection at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from bridge.db.database import Database
from bridge.db.logins import Login, LoginState, LoginStore
from bridge.db.sealed import Sealer
from bridge.db.signal_store import DbSignalStore
from bridge.gip.client import Event, GipClient, NotificationEvent
from bridge.gip.errors import GipError, GipErrorCode
from bridge.gip.noise import StaticKey
from bridge.signal import SignedPreKeyRecord, generate_prekeys, next_prekey_id

from .state import EXPLANATIONS, ConnectionState, StateChange
from .tokens import TokenIssuer

log = logging.getLogger(__name__)
DAY_MS = 86_400_000


class ConnectionSink(Protocol):
    """What the core provides: it hears about states and events of each login.

    ``on_event`` must have stored a message durably when it returns: the delivery
    receipt that removes it from the gatekeeper's mailbox is sent right after.
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


class UserConnection:
    def __init__(self, manager: ConnectionManager, login: Login) -> None:
        self._m = manager
        self.login = login
        self.client: GipClient | None = None
        self.state = ConnectionState.CONNECTING
        self._wake = asyncio.Event()
        self._attempt = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"connection {self.login.mxid}")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.client is not None:
            await self.client.close()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _set(self, change: StateChange) -> None:
        self.state = change.state
        try:
            await self._m.sink.on_state(self.login, change)
        except Exception:
            log.exception("the sink failed to take a state change")

    def _delay(self, retry_after: int | None) -> float:
        if retry_after is not None:
            return float(retry_after)
        ceiling = min(self._m.policy.backoff_cap, self._m.policy.backoff_base * 2**self._attempt)
        return random.uniform(ceiling / 2, ceiling)

    async def _run(self) -> None:
        while True:
            code, retry_after = await self._connect_once()
            if code in EXPLANATIONS:
                state, message = EXPLANATIONS[code]
                if state is ConnectionState.LOGGED_OUT:
                    await self._m.logins.set_state(self.login.mxid, LoginState.LOGGED_OUT)
                await self._set(StateChange(state, code, message))
                return
            delay = self._delay(retry_after)
            self._attempt += 1
            await self._set(
                StateChange(
                    ConnectionState.TRANSIENT_DISCONNECT,
                    code,
                    f"Lost the connection to the gatekeeper ({code.value if code else 'unknown'}); "
                    f"retrying in {delay:.0f} s.",
                    retry_in=delay,
                )
            )
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _connect_once(self) -> tuple[GipErrorCode | None, int | None]:
        login = self.login
        store = DbSignalStore(self._m.db, self._m.sealer, login.mxid, login.identity, login.registration_id)
        self.client = GipClient(
            base_url=self._m.base_url,
            store=store,
            noise_static=StaticKey.from_private(login.noise_private),
            on_event=self._on_event,
            iid=login.iid,
            http=self._m.http,
            keepalive=self._m.policy.keepalive,
            signed_pre_key_id=login.signed_pre_key_id,
            client_ip=self._m.client_ip,
        )
        await self._set(StateChange(ConnectionState.CONNECTING, None, "Connecting to the gatekeeper."))
        try:
            await self.client.connect(self._m.tokens.for_login(login))
        except GipError as exc:
            return exc.code, exc.retry_after
        self._attempt = 0
        await self._set(StateChange(ConnectionState.CONNECTED, None, "Connected to the gatekeeper."))
        # Keys are checked at connect and then on a schedule, for connections that last.
        while not self.client.closed.is_set():
            try:
                await self._maintain_keys(store)
            except GipError as exc:
                log.warning("key maintenance for %s failed: %s", login.mxid, exc.code.value)
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
            await self._m.logins.set_signed_pre_key_id(self.login.mxid, new_id)
            self.login = (await self._m.logins.get(self.login.mxid)) or self.login
            # Keep superseded keys a while: PreKey messages made from them may still arrive.
            await store.remove_signed_pre_keys_older_than(new_id, now - self._m.policy.old_signed_pre_key_grace_ms)

    async def _replenish(self) -> None:
        assert self.client is not None
        batch = self._m.policy.prekey_batch
        start = await self._m.logins.reserve_pre_key_ids(self.login.mxid, batch)
        await self.client.upload_prekeys(generate_prekeys(start, batch))

    async def _on_event(self, event: Event) -> None:
        if isinstance(event, NotificationEvent) and event.kind == "encrypt":
            try:
                await self._replenish()
            except GipError as exc:
                log.warning("could not replenish prekeys for %s: %s", self.login.mxid, exc.code.value)
        await self._m.sink.on_event(self.login, event)


class ConnectionManager:
    def __init__(
        self,
        *,
        db: Database,
        sealer: Sealer,
        tokens: TokenIssuer,
        base_url: str,
        sink: ConnectionSink,
        http: aiohttp.ClientSession,
        policy: ConnectionPolicy | None = None,
        client_ip: str | None = None,
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.db = db
        self.sealer = sealer
        self.logins = LoginStore(db, sealer)
        self.tokens = tokens
        self.base_url = base_url
        self.sink = sink
        self.http = http
        self.policy = policy or ConnectionPolicy()
        self.client_ip = client_ip
        self.now_ms = now_ms
        self._connections: dict[str, UserConnection] = {}

    async def start(self) -> None:
        """Connect every enlisted user."""
        for login in await self.logins.all(LoginState.ENLISTED):
            self.connect(login)

    def connect(self, login: Login) -> UserConnection:
        existing = self._connections.get(login.mxid)
        if existing is not None and existing.running:
            existing.wake()
            return existing
        connection = UserConnection(self, login)
        self._connections[login.mxid] = connection
        connection.start()
        return connection

    def get(self, mxid: str) -> UserConnection | None:
        return self._connections.get(mxid)

    async def on_push(self, uvid: str) -> None:
        """The gatekeeper holds messages for this user: connect now."""
        login = await self.logins.by_uvid(uvid)
        if login is None or login.state is not LoginState.ENLISTED:
            log.info("push for an identifier without an enlisted login")
            return
        self.connect(login)

    async def disconnect(self, mxid: str) -> None:
        connection = self._connections.pop(mxid, None)
        if connection is not None:
            await connection.stop()

    async def close(self) -> None:
        for mxid in list(self._connections):
            await self.disconnect(mxid)
