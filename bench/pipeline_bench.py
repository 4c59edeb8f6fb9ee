"""CPU per message through the bridge, Matrix event to gatekeeper stanza and back.

Two bridge users write to each other: each message enters as a Matrix event of an
appservice transaction (alice), stored at the Matrix edge and run in the portal's loop,
goes through the outbox, Signal and a GIP stanza to the sandbox gatekeeper, comes back as
a stanza for bob, is decrypted, stored in the inbox with its session and posted to Matrix
from bob's portal loop. The sandbox runs in its own process, so this process's CPU time
is the bridge's: both directions, the database (Postgres by default, ``--sqlite`` for the
embedded one) and Signal included. The Matrix side is a recording sink (the homeserver's
cost is not the bridge's), which counts the requests the bridge makes of it; the database
counts its statements. Both are printed per message and direction.

The same run is made twice: for an unencrypted portal, and for an encrypted one, where
each Matrix event arrives Megolm-encrypted and is decrypted by the bridge's Olm machine
(crypto store in the same database), and everything the bridge posts (the bridged message
and the send statuses) is Megolm-encrypted before it goes to the sink: the bridge's real
``bridge.matrix.e2ee.Encryption``. The sending client's encryption happens before the
clock starts (it is Element's cost, not the bridge's). Room-key sharing is not in it: the
room has no member devices to share with, so a rotation (every 100 messages by default)
costs only a new session.

The reference is bare Signal: encrypt+decrypt of the same payload between two in-memory
parties, measured in the same run. Last lines: ``pipeline_overhead_ratio: X`` and
``encrypted_pipeline_overhead_ratio: Y`` (pipeline CPU per message over bare Signal CPU
per message, unencrypted and encrypted portal).

    python bench/pipeline_bench.py [--quick] [--sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import asyncpg
from aiohttp import web
from mautrix.appservice import AppService
from mautrix.client import Client
from mautrix.client.state_store.memory import MemoryStateStore
from mautrix.crypto import InboundGroupSession, OlmMachine
from mautrix.crypto import StateStore as CryptoStateStore
from mautrix.crypto.store.memory import MemoryCryptoStore
from mautrix.types import (
    DeviceID,
    DeviceIdentity,
    EncryptedEvent,
    EncryptionAlgorithm,
    EventType,
    RoomEncryptionStateEventContent,
    RoomID,
    TrustState,
    UserID,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.signal_bench import PAYLOAD, _established
from bridge.config import EXAMPLE_PATH, parse_config, read_yaml
from bridge.core.bridge import BridgeCore
from bridge.core.matrix_api import BridgeInfo, StatusReport
from bridge.db.database import Database, create_database
from bridge.db.matrix_events import StoredEvent
from bridge.db.sealed import Sealer
from bridge.db.stores import Stores
from bridge.db.upgrade import upgrade
from bridge.gatekeeper.connections import ConnectionManager, ConnectionPolicy
from bridge.gatekeeper.enlistment import create_login, enlist
from bridge.gatekeeper.media_store import PartnerMediaStore
from bridge.gatekeeper.side import GatekeeperSide
from bridge.gatekeeper.state import ConnectionState
from bridge.gatekeeper.tokens import TokenIssuer
from bridge.gip.tokens import jwks_document
from bridge.matrix.connector import STATUS_EVENT, pickle_key
from bridge.matrix.e2ee import Encryption
from bridge.matrix.intake import MatrixIntake
from bridge.matrix.room_events import MatrixEventWork, parse_event, plain_message
from bridge.matrix.stores import BridgeStateStore, MautrixDatabases
from devstack.postgres import server_dsn
from devstack.sandbox import INTEGRATOR, free_port, spawn_sandbox_process

T = TypeVar("T")


class RecordingMatrix:
    """Stands where the homeserver would: hands out ids and counts the requests per room."""

    bot_mxid = "@dmabot:bench"

    def __init__(self) -> None:
        self._ids = itertools.count()
        self.posted = 0
        self.requests: dict[str, int] = {}
        self.arrived = asyncio.Event()
        self.expected = 0

    def _count(self, room_id: str) -> None:
        self.requests[room_id] = self.requests.get(room_id, 0) + 1

    async def ensure_puppet(self, mxid: str, displayname: str) -> None:
        return None

    async def create_portal(
        self, *, puppet: str, receiver: str, name: str, topic: str, info: BridgeInfo, encrypted: bool
    ) -> str:
        return f"!portal{next(self._ids)}:bench"

    async def send_message(
        self, room_id: str, sender: str, content: dict[str, Any], *, txn_id: str, timestamp_ms: int | None = None
    ) -> str:
        self._count(room_id)
        self.posted += 1
        if self.posted >= self.expected:
            self.arrived.set()
        return f"$posted{next(self._ids)}"

    async def send_reaction(self, room_id: str, sender: str, target_event: str, key: str, **_: Any) -> str:
        self._count(room_id)
        return f"$reaction{next(self._ids)}"

    async def redact(self, room_id: str, sender: str, event_id: str, *, txn_id: str) -> None:
        self._count(room_id)

    async def send_receipt(self, room_id: str, sender: str, event_id: str) -> None:
        self._count(room_id)

    async def set_typing(self, room_id: str, sender: str, typing: bool) -> None:
        self._count(room_id)

    async def send_notice(self, room_id: str, text: str, *, txn_id: str | None = None) -> str:
        self._count(room_id)
        return f"$notice{next(self._ids)}"

    async def send_status(
        self, room_id: str, event_id: str, report: StatusReport, *, txn_id: str | None = None
    ) -> None:
        self._count(room_id)

    async def leave_portal(self, room_id: str, puppet: str, receiver: str) -> None:
        return None


class EncryptingMatrix(RecordingMatrix):
    """The sink, but every message event into the (encrypted) portal is Megolm-encrypted
    first, as the connector does."""

    def __init__(self, encryption: Encryption) -> None:
        super().__init__()
        self.encryption = encryption

    async def send_message(
        self, room_id: str, sender: str, content: dict[str, Any], *, txn_id: str, timestamp_ms: int | None = None
    ) -> str:
        await self.encryption.encrypt(RoomID(room_id), EventType.ROOM_MESSAGE, content)
        return await super().send_message(room_id, sender, content, txn_id=txn_id, timestamp_ms=timestamp_ms)

    async def send_status(
        self, room_id: str, event_id: str, report: StatusReport, *, txn_id: str | None = None
    ) -> None:
        content = {"m.relates_to": {"rel_type": "m.reference", "event_id": event_id}, "status": report.status.value}
        await self.encryption.encrypt(RoomID(room_id), STATUS_EVENT, content)
        await super().send_status(room_id, event_id, report, txn_id=txn_id)


class MatrixEdge:
    """The connector's path for room events, without a homeserver: a transaction stored
    by the real intake, each event run in its portal's loop by the real ``MatrixEventWork``
    (decrypted first in an encrypted portal), handed to the core's Matrix flow."""

    def __init__(self, core: BridgeCore, stores: Stores, encryption: Encryption | None) -> None:
        self.core = core
        self.stores = stores
        self.encryption = encryption
        self.intake = MatrixIntake(stores.matrix_events)
        self._txns = itertools.count()

    async def start(self) -> None:
        taken = await self.intake.rooms.take_up()
        self.intake.rooms.open_with(self._dispatch, taken)

    def _dispatch(self, stored: StoredEvent) -> None:
        portal = self.core.portals._by_room[stored.room_id or ""]
        self.core.loops.submit(
            self.core.key_for_room(portal, portal.room_id or ""), MatrixEventWork(self, stored, fresh=True)
        )  # type: ignore[arg-type]

    async def transaction(self, events: list[dict[str, Any]]) -> None:
        await self.intake.receive(f"bench{next(self._txns)}/x", {"events": events})

    async def handle_stored(self, stored: StoredEvent, mark_done: Any) -> Any:
        plain = plain_message(stored.body)
        if plain is not None:  # the connector's path for a plain message
            return await self.core.flow.message(*plain, mark_done)
        assert self.encryption is not None
        event = await self.encryption.decrypt(parse_event(stored.body))
        content = event.content.serialize()
        return await self.core.flow.message(event.room_id, event.event_id, event.sender, content, mark_done)

    async def pending_outbox(self, room_id: str, event_id: str) -> Any:
        return None

    async def send_status(
        self, room_id: str, event_id: str, report: StatusReport, *, txn_id: str | None = None
    ) -> None:
        await self.core.matrix.send_status(room_id, event_id, report, txn_id=txn_id)


class CountingDatabase:
    """Counts the statements of each direction: by the user among the arguments, else by
    the table (Matrix → gatekeeper is alice's outbox and Matrix edge; gatekeeper → Matrix
    is bob's inbox)."""

    def __init__(self, db: Database, alice: str, bob: str) -> None:
        self.db = db
        self.counts = {"matrix_to_gk": 0, "gk_to_matrix": 0, "other": 0}
        self._alice, self._bob = alice, bob
        for name in ("execute", "fetch", "executemany"):
            setattr(db, name, self._counting(getattr(db, name)))

    def _direction(self, query: str, args: tuple[Any, ...]) -> str:
        # Cheap on purpose: this runs inside the measured time.
        if self._alice in args:
            return "matrix_to_gk"
        if self._bob in args:
            return "gk_to_matrix"
        if "matrix_events" in query or "outbox" in query:
            return "matrix_to_gk"
        if "inbox" in query or "puppets" in query:
            return "gk_to_matrix"
        return "other"

    def _counting(self, method: Any) -> Any:
        async def counted(query: str, *args: Any) -> Any:
            self.counts[self._direction(query, args)] += 1
            return await method(query, *args)

        return counted


class _MemoryState(MemoryStateStore, CryptoStateStore):
    async def find_shared_rooms(self, user_id: UserID) -> list[RoomID]:
        return []


ROTATION = RoomEncryptionStateEventContent(
    algorithm=EncryptionAlgorithm.MEGOLM_V1, rotation_period_ms=7 * 24 * 3600 * 1000, rotation_period_msgs=100
)


async def bridge_encryption(config: Any, uri: str) -> tuple[Encryption, MautrixDatabases]:
    """The bridge's Olm machine on the bench database; no homeserver is contacted."""
    databases = MautrixDatabases(uri)
    await databases.start()
    state = BridgeStateStore(databases.state)
    az = AppService(
        server="http://127.0.0.1:9",
        domain="bench",
        as_token="x" * 32,
        hs_token="y" * 32,
        bot_localpart="dmabot",
        id="bench",
        state_store=state,
    )
    encryption = Encryption(
        config, az, state, databases.crypto, pickle_key(config.at_rest_key), lambda user: user.endswith(":bench")
    )
    await encryption.store.open()
    encryption.bot.client.device_id = DeviceID("BRIDGEDEV")
    await encryption.store.put_device_id(encryption.bot.client.device_id)
    await encryption.olm.load()
    # Alice's cross-signing keys would be fetched from the homeserver once; there is none.
    encryption.olm._cs_fetch_attempted.add(UserID("@alice:bench"))
    return encryption, databases


class SendingClient:
    """Alice's client (Element's part): encrypts her events before the clock starts."""

    def __init__(self) -> None:
        self.state = _MemoryState()
        self.store = MemoryCryptoStore("@alice:bench", "bench")
        self.client = Client(mxid=UserID("@alice:bench"), base_url="http://127.0.0.1:9", state_store=self.state)
        self.client.device_id = DeviceID("ALICEDEV")
        self.olm = OlmMachine(self.client, self.store, self.state)

    async def start(self, room: RoomID, bridge: Encryption) -> None:
        await self.store.put_device_id(self.client.device_id)
        await self.olm.load()
        # The sender never rotates during the run; the bridge rotates as configured.
        await self.state.set_encryption_info(
            room, RoomEncryptionStateEventContent(algorithm=EncryptionAlgorithm.MEGOLM_V1, rotation_period_msgs=10**6)
        )
        await bridge.state_store.set_encryption_info(room, ROTATION)
        await self.olm.share_group_session(room, [])
        outbound = await self.store.get_outbound_group_session(room)
        account = self.olm.account
        # What the room-key to-device event would have given the bridge, and Alice's device keys.
        inbound = InboundGroupSession(outbound.session_key, account.signing_key, account.identity_key, room)
        await bridge.store.put_group_session(room, account.identity_key, inbound.id, inbound)
        device = DeviceIdentity(
            UserID("@alice:bench"),
            self.client.device_id,
            account.identity_key,
            account.signing_key,
            TrustState.UNVERIFIED,
            False,
            "bench",
        )
        await bridge.store.put_devices(UserID("@alice:bench"), {self.client.device_id: device})

    async def encrypt(self, room: RoomID, event_id: str, content: dict[str, Any]) -> EncryptedEvent:
        encrypted = await self.olm.encrypt_megolm_event(room, EventType.ROOM_MESSAGE, content)
        return EncryptedEvent(
            type=EventType.ROOM_ENCRYPTED,
            room_id=room,
            event_id=event_id,
            sender=UserID("@alice:bench"),
            timestamp=int(time.time() * 1000),
            content=encrypted,
        )


def bare_signal_cpu(count: int) -> float:
    async def run() -> float:
        a, b = await _established()
        start = time.process_time()
        for _ in range(count):
            await b.decrypt("a", *await a.encrypt("b", PAYLOAD))
        return (time.process_time() - start) / count

    return asyncio.run(run())


async def pipeline_cpu(count: int, window: int, uri: str, workdir: Path, encrypted: bool) -> dict[str, Any]:
    bridge_port = free_port()
    http = aiohttp.ClientSession()
    await upgrade(uri)
    db = create_database(uri)
    await db.start()
    stores = Stores.create(db, Sealer(os.urandom(32)))
    key = await stores.secrets.signing_key()
    # The sandbox checks our tokens against the bridge's JWKS at enlistment.
    app = web.Application()
    app.add_routes([web.get("/.well-known/oauth/openid/jwks", lambda request: web.json_response(jwks_document([key])))])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", bridge_port).start()
    sandbox, base = await spawn_sandbox_process(workdir, f"http://127.0.0.1:{bridge_port}", http)
    try:
        data = read_yaml(EXAMPLE_PATH)
        data["appservice"]["as_token"] = data["appservice"]["hs_token"] = "x" * 32
        # The bench's users live on "bench": they must be allowed, or nothing is bridged.
        data["bridge"]["permissions"] = {"bench": "user"}
        data["encryption_at_rest"]["key"] = "A" * 43 + "="
        config = parse_config(data)
        sender = SendingClient()
        encryption: Encryption | None = None
        if encrypted:
            encryption, databases = await bridge_encryption(config, uri)
            matrix: RecordingMatrix = EncryptingMatrix(encryption)
        else:
            matrix = RecordingMatrix()
        core = BridgeCore(config, stores, matrix)
        tokens = TokenIssuer(key, integrator_id=INTEGRATOR, audience="WHATSAPP")
        manager = ConnectionManager(
            stores=stores, tokens=tokens, base_url=base, sink=core, policy=ConnectionPolicy(keepalive=0)
        )
        media = PartnerMediaStore(workdir / "media", stores.partner_media)
        core.gatekeeper = GatekeeperSide(
            manager, stores, tokens=tokens, base_url=base, http=http, media=media, integrator_id=INTEGRATOR
        )
        await core.start()
        edge = MatrixEdge(core, stores, encryption)
        await edge.start()
        logins = {}
        for name in ("alice", "bob"):
            mxid = f"@{name}:bench"
            login = await create_login(stores, mxid=mxid, uvid=mxid, country="DE", eea_attested=True)
            await enlist(stores, login, base_url=base, tokens=tokens, http=http)
            logins[name] = await core.logins.get(mxid)
            manager.connect(logins[name])
        while any(
            core.states.get(f"@{n}:bench") is None or core.states[f"@{n}:bench"].state is not ConnectionState.CONNECTED
            for n in ("alice", "bob")
        ):
            await asyncio.sleep(0.05)
        portal, _ = await core.ensure_portal(logins["alice"], logins["bob"].iid, "@bob:bench")
        bob_portal, _ = await core.ensure_portal(logins["bob"], logins["alice"].iid, "@alice:bench")
        room = RoomID(portal.room_id)
        body = {"msgtype": "m.text", "body": PAYLOAD.decode()}
        if encryption is not None:
            await sender.start(room, encryption)
            # Bob's portal with Alice is a room of its own: it is encrypted too.
            await encryption.state_store.set_encryption_info(RoomID(bob_portal.room_id), ROTATION)
            events = [(await sender.encrypt(room, f"$in{i}", body)).serialize() for i in range(count + 20)]
        else:
            events = [
                {
                    "type": "m.room.message",
                    "room_id": portal.room_id,
                    "event_id": f"$in{i}",
                    "sender": "@alice:bench",
                    "origin_server_ts": 1,
                    "content": body,
                }
                for i in range(count + 20)
            ]

        # Warm-up: sessions, caches, connection pools.
        matrix.expected = 20
        await edge.transaction(events[:20])
        await asyncio.wait_for(matrix.arrived.wait(), 60)
        await core.settle()
        matrix.posted, matrix.expected = 0, count
        matrix.requests.clear()
        matrix.arrived.clear()
        counting = CountingDatabase(db, "@alice:bench", "@bob:bench")
        trips_before = db.statements
        cpu_before, wall_before = time.process_time(), time.perf_counter()
        # The homeserver batches events under load: ``window`` transactions in all.
        step = max(1, count // window)
        for start in range(0, count, step):
            await edge.transaction(events[20 + start : 20 + min(count, start + step)])
            await asyncio.sleep(0)
        await asyncio.wait_for(matrix.arrived.wait(), 600)
        await core.settle()
        cpu = time.process_time() - cpu_before
        wall = time.perf_counter() - wall_before
        round_trips = db.statements - trips_before
        await manager.close()
        await core.stop()
        if encryption is not None:
            await encryption.stop()
            await databases.stop()
        await sender.client.api.session.close()
        return {
            "cpu_per_message": cpu / count,
            "wall": wall,
            "statements": {k: v / count for k, v in counting.counts.items()},
            "round_trips": round_trips / count,
            "requests": {
                "matrix_to_gk": matrix.requests.get(portal.room_id, 0) / count,
                "gk_to_matrix": matrix.requests.get(bob_portal.room_id, 0) / count,
            },
        }
    finally:
        await http.close()
        await runner.cleanup()
        await db.close()
        sandbox.terminate()
        sandbox.wait(timeout=10)


async def fresh_postgres() -> tuple[str, str, str]:
    admin = server_dsn()
    name = f"dma_bench_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(admin)
    await connection.execute(f'CREATE DATABASE "{name}"')
    await connection.close()
    return admin, name, admin.rsplit("/", 1)[0] + "/" + name


async def drop_postgres(admin: str, name: str) -> None:
    connection = await asyncpg.connect(admin)
    await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await connection.close()


async def on_fresh_database(sqlite: bool, run: Callable[[str, Path], Awaitable[T]]) -> T:
    """``run(uri, workdir)`` on a new SQLite file or a new Postgres database, dropped after."""
    with tempfile.TemporaryDirectory() as workdir:
        if sqlite:
            return await run(f"sqlite:///{workdir}/bridge.db", Path(workdir))
        admin, name, uri = await fresh_postgres()
        try:
            return await run(uri, Path(workdir))
        finally:
            await drop_postgres(admin, name)


async def run_once(count: int, window: int, sqlite: bool, encrypted: bool) -> dict[str, Any]:
    return await on_fresh_database(sqlite, lambda uri, workdir: pipeline_cpu(count, window, uri, workdir, encrypted))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sqlite", action="store_true", help="the embedded database instead of Postgres")
    parser.add_argument("--window", type=int, default=20)
    args = parser.parse_args()
    count = 200 if args.quick else 1000
    reference = bare_signal_cpu(2000)
    plain = asyncio.run(run_once(count, args.window, args.sqlite, encrypted=False))
    megolm = asyncio.run(run_once(count, args.window, args.sqlite, encrypted=True))
    backend = "SQLite" if args.sqlite else "Postgres"
    print(f"messages:                       {count}, Matrix → gatekeeper → Matrix, {backend}")
    print(
        f"bridge CPU per message:         {plain['cpu_per_message'] * 1e6:.0f} µs unencrypted portal (both directions)"
    )
    print(
        f"bridge CPU per message:         {megolm['cpu_per_message'] * 1e6:.0f} µs encrypted portal (Megolm both ways)"
    )
    print(f"Megolm's share:                 {(megolm['cpu_per_message'] - plain['cpu_per_message']) * 1e6:.0f} µs")
    print(f"bare Signal encrypt+decrypt:    {reference * 1e6:.0f} µs")
    print(f"throughput:                     {count / plain['wall']:.0f} / {count / megolm['wall']:.0f} messages/s")
    for label, run in (("unencrypted", plain), ("encrypted", megolm)):
        statements, requests = run["statements"], run["requests"]
        print(
            f"per message, {label}: statements {statements['matrix_to_gk']:.1f} Matrix → gatekeeper, "
            f"{statements['gk_to_matrix']:.1f} gatekeeper → Matrix ({statements['other']:.1f} other) in "
            f"{run['round_trips']:.1f} round trips; "
            f"homeserver requests {requests['matrix_to_gk']:.1f} and {requests['gk_to_matrix']:.1f}"
        )
    print(f"pipeline_overhead_ratio: {plain['cpu_per_message'] / reference:.1f}")
    print(f"encrypted_pipeline_overhead_ratio: {megolm['cpu_per_message'] / reference:.1f}")


if __name__ == "__main__":
    main()
