"""CPU per message through the bridge, Matrix event to gatekeeper stanza and back.

Two bridge users write to each other: each message enters as a Matrix event (alice),
goes through the outbox, Signal and a GIP stanza to the sandbox gatekeeper, comes back as
a stanza for bob, is decrypted, stored in the inbox and posted to Matrix. The sandbox runs
in its own process, so this process's CPU time is the bridge's: both directions, the
database (Postgres by default, ``--sqlite`` for the embedded one) and Signal included. The
Matrix side is a recording sink (the homeserver's cost is not the bridge's).

The reference is bare Signal: encrypt+decrypt of the same payload between two in-memory
parties, measured in the same run. Last line: ``pipeline_overhead_ratio: X`` (pipeline
CPU per message over bare Signal CPU per message).

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
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.signal_bench import PAYLOAD, _established
from bridge.config import EXAMPLE_PATH, parse_config, read_yaml
from bridge.core.bridge import BridgeCore
from bridge.core.matrix_api import BridgeInfo, StatusReport
from bridge.db.database import create_database
from bridge.db.sealed import Sealer
from bridge.db.secrets import SecretStore
from bridge.db.upgrade import upgrade
from bridge.gatekeeper.connections import ConnectionManager, ConnectionPolicy
from bridge.gatekeeper.enlistment import create_login, enlist
from bridge.gatekeeper.state import ConnectionState
from bridge.gatekeeper.tokens import TokenIssuer
from bridge.gip.tokens import jwks_document
from tests.postgres import server_dsn
from tests.sandbox.harness import INTEGRATOR, free_port, spawn_sandbox_process


class RecordingMatrix:
    """Stands where the homeserver would: hands out ids and counts what was posted."""

    bot_mxid = "@dmabot:bench"

    def __init__(self) -> None:
        self._ids = itertools.count()
        self.posted = 0
        self.statuses = 0
        self.arrived = asyncio.Event()
        self.expected = 0

    async def ensure_puppet(self, mxid: str, displayname: str) -> None:
        return None

    async def create_portal(
        self, *, puppet: str, receiver: str, name: str, topic: str, info: BridgeInfo, encrypted: bool
    ) -> str:
        return f"!portal{next(self._ids)}:bench"

    async def send_message(self, room_id: str, sender: str, content: dict[str, Any], timestamp_ms: int) -> str:
        self.posted += 1
        if self.posted >= self.expected:
            self.arrived.set()
        return f"$posted{next(self._ids)}"

    async def send_reaction(self, room_id: str, sender: str, target_event: str, key: str) -> str:
        return f"$reaction{next(self._ids)}"

    async def redact(self, room_id: str, sender: str, event_id: str) -> None:
        return None

    async def send_receipt(self, room_id: str, sender: str, event_id: str) -> None:
        return None

    async def set_typing(self, room_id: str, sender: str, typing: bool) -> None:
        return None

    async def send_notice(self, room_id: str, text: str) -> str:
        return f"$notice{next(self._ids)}"

    async def send_status(self, room_id: str, event_id: str, report: StatusReport) -> None:
        self.statuses += 1

    async def leave_portal(self, room_id: str, puppet: str, receiver: str) -> None:
        return None


def bare_signal_cpu(count: int) -> float:
    async def run() -> float:
        a, b = await _established()
        start = time.process_time()
        for _ in range(count):
            await b.decrypt("a", *await a.encrypt("b", PAYLOAD))
        return (time.process_time() - start) / count

    return asyncio.run(run())


async def pipeline_cpu(count: int, window: int, uri: str, workdir: Path) -> dict[str, float]:
    bridge_port = free_port()
    http = aiohttp.ClientSession()
    await upgrade(uri)
    db = create_database(uri)
    await db.start()
    sealer = Sealer(os.urandom(32))
    key = await SecretStore(db, sealer).signing_key()
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
        data["encryption_at_rest"]["key"] = "A" * 43 + "="
        config = parse_config(data)
        matrix = RecordingMatrix()
        core = BridgeCore(config, db, sealer, matrix)
        tokens = TokenIssuer(key, integrator_id=INTEGRATOR, audience="WHATSAPP")
        manager = ConnectionManager(
            db=db,
            sealer=sealer,
            tokens=tokens,
            base_url=base,
            sink=core,
            http=http,
            policy=ConnectionPolicy(keepalive=0),
        )
        core.connections = manager
        logins = {}
        for name in ("alice", "bob"):
            mxid = f"@{name}:bench"
            login = await create_login(db, sealer, mxid=mxid, uvid=mxid, country="DE", eea_attested=True)
            await enlist(db, sealer, login, base_url=base, tokens=tokens, http=http)
            logins[name] = await core.logins.get(mxid)
            manager.connect(logins[name])
        while any(
            core.states.get(f"@{n}:bench") is None or core.states[f"@{n}:bench"].state is not ConnectionState.CONNECTED
            for n in ("alice", "bob")
        ):
            await asyncio.sleep(0.05)
        portal, _ = await core.ensure_portal(logins["alice"], logins["bob"].iid, "@bob:bench")
        body = {"msgtype": "m.text", "body": PAYLOAD.decode()}

        async def send_range(start: int, stop: int) -> None:
            for i in range(start, stop):
                await core.handle_matrix_message(portal.room_id, f"$in{i}", "@alice:bench", body)

        # Warm-up: sessions, caches, connection pools.
        matrix.expected = 20
        await send_range(0, 20)
        await asyncio.wait_for(matrix.arrived.wait(), 60)
        await core.settle()
        matrix.posted, matrix.expected = 0, count
        matrix.arrived.clear()
        cpu_before, wall_before = time.process_time(), time.perf_counter()
        step = max(1, count // window)
        for start in range(0, count, step):
            await send_range(20 + start, 20 + min(count, start + step))
            await asyncio.sleep(0)
        await asyncio.wait_for(matrix.arrived.wait(), 600)
        await core.settle()
        cpu = time.process_time() - cpu_before
        wall = time.perf_counter() - wall_before
        await manager.close()
        return {"cpu_per_message": cpu / count, "wall": wall}
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sqlite", action="store_true", help="the embedded database instead of Postgres")
    parser.add_argument("--window", type=int, default=20)
    args = parser.parse_args()
    count = 200 if args.quick else 1000
    reference = bare_signal_cpu(2000)
    with tempfile.TemporaryDirectory() as workdir:
        if args.sqlite:
            result = asyncio.run(pipeline_cpu(count, args.window, f"sqlite:///{workdir}/bridge.db", Path(workdir)))
            backend = "SQLite"
        else:
            admin, name, uri = asyncio.run(fresh_postgres())
            try:
                result = asyncio.run(pipeline_cpu(count, args.window, uri, Path(workdir)))
            finally:
                asyncio.run(drop_postgres(admin, name))
            backend = "Postgres"
    per_message = result["cpu_per_message"]
    print(f"messages:                       {count}, Matrix → gatekeeper → Matrix, {backend}")
    print(f"bridge CPU per message:         {per_message * 1e6:.0f} µs (both directions)")
    print(f"bare Signal encrypt+decrypt:    {reference * 1e6:.0f} µs")
    print(f"throughput:                     {count / result['wall']:.0f} messages/s")
    print(f"pipeline_overhead_ratio: {per_message / reference:.1f}")


if __name__ == "__main__":
    main()
