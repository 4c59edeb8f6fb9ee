"""The bridge's gatekeeper side against the sandbox: enlistment, connections, states,
key upkeep, push wake-up, and the Partner endpoints the sandbox calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import web

from bridge.config import ConnectionsConfig
from bridge.db.database import create_database
from bridge.db.logins import Login, LoginState
from bridge.db.sealed import Sealer
from bridge.db.signal_store import DbSignalStore
from bridge.db.stores import Stores
from bridge.db.upgrade import upgrade
from bridge.gatekeeper.connections import ConnectionManager, ConnectionPolicy
from bridge.gatekeeper.enlistment import create_login, enlist
from bridge.gatekeeper.media_store import PartnerMediaStore
from bridge.gatekeeper.partner_server import PartnerServer
from bridge.gatekeeper.state import ConnectionState, StateChange
from bridge.gatekeeper.tokens import TokenIssuer
from bridge.gip.client import Event, MessageEvent
from bridge.gip.media import MediaType
from bridge.gip.tokens import JwksFetcher
from devstack.sandbox import INTEGRATOR, Sandbox, free_port, start_sandbox, stop_sandbox


@dataclass
class RecordingSink:
    states: list[tuple[str, StateChange]] = field(default_factory=list)
    events: list[tuple[str, Event]] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def on_state(self, login: Login, change: StateChange) -> None:
        async with self.changed:
            self.states.append((login.mxid, change))
            self.changed.notify_all()

    async def on_event(self, login: Login, event: Event) -> None:
        async with self.changed:
            self.events.append((login.mxid, event))
            self.changed.notify_all()

    async def wait_for(self, predicate, timeout: float = 10.0):
        async def find():
            async with self.changed:
                while True:
                    for item in [*self.states, *self.events]:
                        if predicate(item):
                            return item
                    await self.changed.wait()

        return await asyncio.wait_for(find(), timeout)


@dataclass
class Bridge:
    sandbox: Sandbox
    manager: ConnectionManager
    sink: RecordingSink
    stores: Stores
    tokens: TokenIssuer
    http: aiohttp.ClientSession
    media: PartnerMediaStore

    @property
    def db(self):
        return self.stores.db

    @property
    def sealer(self) -> Sealer:
        return self.stores.sealer

    async def login(self, mxid: str) -> Login:
        login = await create_login(self.stores, mxid=mxid, uvid=mxid, country="DE", eea_attested=True)
        await enlist(self.stores, login, base_url=self.sandbox.base, tokens=self.tokens, http=self.http)
        enlisted = await self.stores.logins.get(mxid)
        assert enlisted is not None
        return enlisted


@pytest.fixture
async def bridge(tmp_path) -> AsyncIterator[Bridge]:
    uri = f"sqlite:///{tmp_path / 'bridge.db'}"
    await upgrade(uri)
    db = create_database(uri)
    await db.start()
    stores = Stores.create(db, Sealer(bytes(range(32))))
    http = aiohttp.ClientSession()
    port = free_port()
    sink = RecordingSink()
    media = PartnerMediaStore(tmp_path / "partner-media", stores.partner_media)
    signing_key = await stores.secrets.signing_key()
    tokens = TokenIssuer(signing_key, integrator_id=INTEGRATOR, audience="WHATSAPP")
    holder: dict[str, ConnectionManager] = {}

    async def on_push(uvid: str) -> None:
        await holder["manager"].on_push(uvid)

    sandbox = await start_sandbox(
        SimpleNamespace(base=f"http://127.0.0.1:{port}"),
        media_dir=tmp_path / "media",
        rate_limits={"enlistments_per_hour": 10_000},
    )

    async def fetch_gatekeeper_jwks() -> bytes:
        async with http.get(f"{sandbox.base}/.well-known/jwks") as response:
            return await response.read()

    partner = PartnerServer(
        signing_key=signing_key,
        gatekeeper_jwks=JwksFetcher(fetch_gatekeeper_jwks),
        gatekeeper_name="WHATSAPP",
        integrator_id=INTEGRATOR,
        media=media,
        on_push=on_push,
    )
    app = web.Application()
    app.add_routes(partner.routes())
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    manager = ConnectionManager(
        stores=stores,
        tokens=tokens,
        base_url=sandbox.base,
        sink=sink,
        policy=ConnectionPolicy(backoff_base=0.05, backoff_cap=0.2, keepalive=0),
    )
    holder["manager"] = manager
    yield Bridge(sandbox, manager, sink, stores, tokens, http, media)
    await manager.close()
    await stop_sandbox(sandbox)
    await runner.cleanup()
    await http.close()
    await db.close()


def state_is(mxid: str, state: ConnectionState, after: int = 0):
    def check(item) -> bool:
        return isinstance(item[1], StateChange) and item[0] == mxid and item[1].state is state

    return check


async def test_enlist_connect_upload_keys_and_receive(bridge: Bridge) -> None:
    login = await bridge.login("@alice:example.org")
    assert login.iid and login.iid.endswith("@interop")
    bridge.manager.connect(login)
    await bridge.sink.wait_for(state_is(login.mxid, ConnectionState.CONNECTED))
    connection = bridge.manager.get(login.mxid)
    for _ in range(50):
        if (await bridge.sandbox.control("GET", f"/partners/{login.iid}"))["prekeys"] >= 100:
            break
        await asyncio.sleep(0.05)
    assert (await bridge.sandbox.control("GET", f"/partners/{login.iid}"))["prekeys"] == 100
    store = DbSignalStore(bridge.db, bridge.sealer, login.mxid, login.identity, login.registration_id)
    assert await store.count_pre_keys() == 100
    native = await bridge.sandbox.native()
    sent = await bridge.sandbox.control("POST", f"/natives/{native['iid']}/send", {"to": login.iid, "text": "hi"})
    _, event = await bridge.sink.wait_for(lambda i: isinstance(i[1], MessageEvent) and i[1].id == sent["id"])
    assert event.content.text == "hi"
    assert connection is not None and connection.state is ConnectionState.CONNECTED


async def test_dropped_connection_reconnects_by_itself(bridge: Bridge) -> None:
    login = await bridge.login("@bob:example.org")
    bridge.manager.connect(login)
    await bridge.sink.wait_for(state_is(login.mxid, ConnectionState.CONNECTED))
    await bridge.sandbox.control("POST", "/faults", {"drop": login.iid})
    _, change = await bridge.sink.wait_for(state_is(login.mxid, ConnectionState.TRANSIENT_DISCONNECT))
    assert change.retry_in is not None and "retrying" in change.message
    connected = [s for s in bridge.sink.states if s[1].state is ConnectionState.CONNECTED]
    for _ in range(100):
        connected = [s for s in bridge.sink.states if s[1].state is ConnectionState.CONNECTED]
        if len(connected) >= 2:
            break
        await asyncio.sleep(0.05)
    assert len(connected) >= 2


async def test_refusals_stop_with_an_explanation(bridge: Bridge) -> None:
    login = await bridge.login("@carol:example.org")
    bridge.manager.connect(login)
    await bridge.sink.wait_for(state_is(login.mxid, ConnectionState.CONNECTED))
    await bridge.sandbox.control("POST", f"/partners/{login.iid}/suspend", {"suspended": True})
    _, change = await bridge.sink.wait_for(state_is(login.mxid, ConnectionState.SUSPENDED))
    assert change.final and "suspended" in change.message
    assert not bridge.manager.get(login.mxid).running


async def test_unenlisted_after_30_days_is_logged_out(bridge: Bridge) -> None:
    login = await bridge.login("@dave:example.org")
    bridge.manager.connect(login)
    await bridge.sink.wait_for(state_is(login.mxid, ConnectionState.CONNECTED))
    await bridge.manager.disconnect(login.mxid)
    await bridge.sandbox.control("POST", "/clock/advance", {"seconds": 31 * 86400})
    bridge.tokens._clock = bridge.sandbox.gatekeeper.clock.now
    bridge.manager.connect(login)
    _, change = await bridge.sink.wait_for(state_is(login.mxid, ConnectionState.LOGGED_OUT))
    assert "30 days" in change.message
    stored = await bridge.stores.logins.get(login.mxid)
    assert stored.state is LoginState.LOGGED_OUT


async def test_push_wakes_a_disconnected_user_and_the_mailbox_drains(bridge: Bridge) -> None:
    login = await bridge.login("@erin:example.org")
    bridge.manager.connect(login)
    await bridge.sink.wait_for(state_is(login.mxid, ConnectionState.CONNECTED))
    await bridge.manager.disconnect(login.mxid)
    native = await bridge.sandbox.native()
    sent = await bridge.sandbox.control("POST", f"/natives/{native['iid']}/send", {"to": login.iid, "text": "wake"})
    # The sandbox pushes to our /push, which verifies its token and connects the user.
    _, event = await bridge.sink.wait_for(lambda i: isinstance(i[1], MessageEvent) and i[1].id == sent["id"])
    assert event.offline
    for _ in range(50):
        if (await bridge.sandbox.control("GET", f"/partners/{login.iid}"))["mailbox"] == 0:
            break
        await asyncio.sleep(0.05)
    assert (await bridge.sandbox.control("GET", f"/partners/{login.iid}"))["mailbox"] == 0


async def test_push_and_media_refuse_requests_without_a_gatekeeper_token(bridge: Bridge) -> None:
    login = await bridge.login("@frank:example.org")
    port = bridge.sandbox.gatekeeper.config.integrators[0].push_url.rsplit(":", 1)[1].split("/")[0]
    base = f"http://127.0.0.1:{port}"
    async with bridge.http.post(f"{base}/push", json={"to": login.uvid}) as response:
        assert response.status == 401
    from bridge.gip.tokens import SigningKey, issue_gatekeeper_token

    forged = issue_gatekeeper_token(SigningKey.generate(), issuer="WHATSAPP", audience=INTEGRATOR)
    async with bridge.http.post(
        f"{base}/push", json={"to": login.uvid}, headers={"Authorization": f"Bearer {forged}"}
    ) as response:
        assert response.status == 401
    plain = bridge.media.directory.parent / "plain"
    plain.write_bytes(b"\x00a file")
    ref, _ = await bridge.media.encrypt_into(login.mxid, MediaType.DOCUMENT, plain)
    async with bridge.http.get(f"{base}/media/{ref}") as response:
        assert response.status == 401
    # Through the gatekeeper's proxy path, with its token, the blob is served.
    blob = await bridge.sandbox.gatekeeper.proxy_partner_media(f"/interop/download/{INTEGRATOR}/{ref}/")
    assert blob == (bridge.media.directory / ref).read_bytes()
    async with bridge.http.get(f"{base}/.well-known/oauth/openid/jwks") as response:
        keys = (await response.json())["keys"]
    assert keys[0]["alg"] == "RS256"


async def test_signed_prekey_rotated_when_old(bridge: Bridge) -> None:
    login = await bridge.login("@gina:example.org")
    bridge.manager.policy = ConnectionPolicy(backoff_base=0.05, keepalive=0, signed_pre_key_max_age_ms=0)
    bridge.manager.connect(login)
    await bridge.sink.wait_for(state_is(login.mxid, ConnectionState.CONNECTED))
    for _ in range(50):
        stored = await bridge.stores.logins.get(login.mxid)
        if stored.signed_pre_key_id == 2:
            break
        await asyncio.sleep(0.05)
    assert stored.signed_pre_key_id == 2
    device = bridge.sandbox.gatekeeper.store.device(login.iid)
    assert device.spk_id == 2


async def test_signed_prekey_rotated_on_a_schedule_while_connected(bridge: Bridge) -> None:
    login = await bridge.login("@hank:example.org")
    bridge.manager.policy = ConnectionPolicy(backoff_base=0.05, keepalive=0, maintenance_interval=0.2)
    bridge.manager.connect(login)
    await bridge.sink.wait_for(state_is(login.mxid, ConnectionState.CONNECTED))
    assert (await bridge.stores.logins.get(login.mxid)).signed_pre_key_id == 1
    # The key ages past the limit while the connection stays up.
    bridge.manager.policy = ConnectionPolicy(
        backoff_base=0.05, keepalive=0, maintenance_interval=0.2, signed_pre_key_max_age_ms=0
    )
    for _ in range(50):
        if (await bridge.stores.logins.get(login.mxid)).signed_pre_key_id >= 2:
            break
        await asyncio.sleep(0.05)
    bridge.manager.policy = ConnectionPolicy(backoff_base=0.05, keepalive=0, maintenance_interval=0.2)
    await asyncio.sleep(0.5)  # let a rotation in progress finish
    current = (await bridge.stores.logins.get(login.mxid)).signed_pre_key_id
    assert current >= 2
    assert bridge.sandbox.gatekeeper.store.device(login.iid).spk_id == current
    assert bridge.manager.get(login.mxid).state is ConnectionState.CONNECTED


async def test_signal_operations_on_one_session_run_in_one_order(bridge: Bridge) -> None:
    """Defect: decrypts (in the client's worker), encrypts (in send tasks) and retry
    answers ran with nothing ordering them per session, and the store cleared its cache
    before awaiting its write: concurrent updates lost a session (seen when both sides
    started a chat at once) and could roll a sending chain back. Both start at once here
    and then write all at once, each side's sends in parallel with its receives."""
    from bridge.gip.client import UndecryptableEvent
    from bridge.gip.content import Content
    from bridge.gip.jid import Jid

    alice, bob = await bridge.login("@race-a:example.org"), await bridge.login("@race-b:example.org")
    for login in (alice, bob):
        bridge.manager.connect(login)
        await bridge.sink.wait_for(state_is(login.mxid, ConnectionState.CONNECTED))
    a, b = bridge.manager.client_for(alice.mxid), bridge.manager.client_for(bob.mxid)
    sends = [a.send_message(Jid.parse(bob.iid), Content(text=f"a{i}")) for i in range(15)]
    sends += [b.send_message(Jid.parse(alice.iid), Content(text=f"b{i}")) for i in range(15)]
    await asyncio.gather(*sends)

    def texts(mxid: str) -> set[str]:
        return {e.content.text for m, e in bridge.sink.events if m == mxid and isinstance(e, MessageEvent)}

    for _ in range(200):
        if len(texts(alice.mxid)) == 15 and len(texts(bob.mxid)) == 15:
            break
        await asyncio.sleep(0.05)
    assert texts(bob.mxid) == {f"a{i}" for i in range(15)}
    assert texts(alice.mxid) == {f"b{i}" for i in range(15)}
    assert not [e for _, e in bridge.sink.events if isinstance(e, UndecryptableEvent)], "every message decrypted"


async def test_more_users_than_an_http_pool_holds_all_connect(bridge: Bridge) -> None:
    """Defect: every chat WebSocket held a slot of the bridge's one aiohttp pool (100),
    so the 101st user waited, timed out with nothing catching it, and stayed
    "connecting"; all users also connected at the same instant."""
    logins = await asyncio.gather(*(bridge.login(f"@many{i}:example.org") for i in range(130)))
    bridge.manager.limits = ConnectionsConfig(startup_spread_seconds=2.0)
    await bridge.manager.start()
    for _ in range(300):
        if bridge.manager.connected_count() == len(logins):
            break
        await asyncio.sleep(0.05)
    assert bridge.manager.connected_count() == len(logins)
    # The connects were spread out, not all at one instant.
    first_connects = [
        i for i, (mxid, change) in enumerate(bridge.sink.states) if change.state is ConnectionState.CONNECTING
    ]
    assert len(first_connects) >= len(logins)
