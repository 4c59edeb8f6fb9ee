"""Many users' chat connections through the bridge's own path, then idle.

``--users`` logins are created and enlisted at the sandbox gatekeeper (its own process),
then the bridge's ``ConnectionManager`` connects them all as at start-up (spread out,
a bounded number of handshakes at a time, WebSockets outside any HTTP pool). The script
prints how long until all were up, how many came up, and the bridge's resident memory
per connected user (growth of this process from before the first connection to after
all are up and idle), then the reference: the same number of bare aiohttp WebSockets to
the same gatekeeper process, without Noise, Signal or our client, and their memory.

    python bench/connections_bench.py [--users 1000] [--sqlite]

Last lines: ``connected_users: N``, ``rss_per_connected_user_kb: X`` and
``rss_vs_bare_websocket_ratio: Y``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.pipeline_bench import on_fresh_database
from bridge.config import ConnectionsConfig
from bridge.db.database import create_database
from bridge.db.logins import Login
from bridge.db.sealed import Sealer
from bridge.db.stores import Stores
from bridge.db.upgrade import upgrade
from bridge.gatekeeper.connections import ConnectionManager, ConnectionPolicy
from bridge.gatekeeper.enlistment import create_login, enlist
from bridge.gatekeeper.state import StateChange
from bridge.gatekeeper.tokens import TokenIssuer
from bridge.gip.client import Event
from bridge.gip.tokens import jwks_document
from devstack.sandbox import INTEGRATOR, free_port, spawn_sandbox_process


def rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class CountingSink:
    def __init__(self) -> None:
        self.connected: set[str] = set()

    async def on_state(self, login: Login, change: StateChange) -> None:
        if change.state.value == "connected":
            self.connected.add(login.mxid)
        else:
            self.connected.discard(login.mxid)

    async def on_event(self, login: Login, event: Event) -> None:
        return None


async def bare_websockets(base: str, count: int) -> int:
    """Memory of ``count`` plain WebSockets to the gatekeeper's chat path (no handshake)."""
    gc.collect()
    before = rss_kb()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    sockets = []
    semaphore = asyncio.Semaphore(50)

    async def open_one() -> None:
        async with semaphore:
            sockets.append(await session.ws_connect(base.replace("http", "ws", 1) + "/chat"))

    await asyncio.gather(*(open_one() for _ in range(count)))
    await asyncio.sleep(1)
    gc.collect()
    grown = rss_kb() - before
    for ws in sockets:
        await ws.close()
    await session.close()
    return grown


async def run(users: int, uri: str, workdir: Path) -> dict[str, float]:
    http = aiohttp.ClientSession()
    await upgrade(uri)
    db = create_database(uri, 20)
    await db.start()
    stores = Stores.create(db, Sealer(os.urandom(32)))
    key = await stores.secrets.signing_key()
    bridge_port = free_port()
    app = web.Application()
    app.add_routes([web.get("/.well-known/oauth/openid/jwks", lambda r: web.json_response(jwks_document([key])))])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", bridge_port).start()
    sandbox, base = await spawn_sandbox_process(workdir, f"http://127.0.0.1:{bridge_port}", http)
    manager: ConnectionManager | None = None
    try:
        tokens = TokenIssuer(key, integrator_id=INTEGRATOR, audience="WHATSAPP")
        enlisting = asyncio.Semaphore(20)

        async def new_user(i: int) -> None:
            async with enlisting:
                mxid = f"@user{i}:bench"
                login = await create_login(stores, mxid=mxid, uvid=mxid, country="DE", eea_attested=True)
                await enlist(stores, login, base_url=base, tokens=tokens, http=http)

        started = time.perf_counter()
        await asyncio.gather(*(new_user(i) for i in range(users)))
        print(f"enlisted {users} users in {time.perf_counter() - started:.1f} s")
        sink = CountingSink()
        manager = ConnectionManager(
            stores=stores,
            tokens=tokens,
            base_url=base,
            sink=sink,
            policy=ConnectionPolicy(keepalive=30.0),
            limits=ConnectionsConfig(),
        )
        gc.collect()
        before = rss_kb()
        started = time.perf_counter()
        await manager.start()
        deadline = time.monotonic() + 300
        while len(sink.connected) < users and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        up = time.perf_counter() - started
        await asyncio.sleep(5)  # idle: keepalives, key upkeep settled
        gc.collect()
        grown = rss_kb() - before
        connected = manager.connected_count()
        await manager.close()
        manager = None
        # The reference in a process of its own: memory freed here would be reused there.
        reference = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--bare", str(users), "--gatekeeper", base, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await reference.communicate()
        bare = float(out.decode().strip().splitlines()[-1])
        return {"up": up, "connected": connected, "grown_kb": grown, "bare_kb": bare}
    finally:
        if manager is not None:
            await manager.close()
        sandbox.terminate()
        sandbox.wait(timeout=10)
        await runner.cleanup()
        await http.close()
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--sqlite", action="store_true", help="the embedded database instead of Postgres")
    parser.add_argument("--bare", type=int, help=argparse.SUPPRESS)  # the reference's own process
    parser.add_argument("--gatekeeper", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        print(asyncio.run(bare_websockets(args.gatekeeper, args.bare)))
        return
    result = asyncio.run(on_fresh_database(args.sqlite, lambda uri, workdir: run(args.users, uri, workdir)))
    connected = int(result["connected"])
    per_user = result["grown_kb"] / max(connected, 1)
    bare_per_socket = result["bare_kb"] / args.users
    print(f"all up after:                 {result['up']:.1f} s ({connected / result['up']:.0f} connections/s)")
    print(f"bare aiohttp WebSocket:       {bare_per_socket:.1f} KB each (the reference)")
    print(f"connected_users: {connected}")
    print(f"rss_per_connected_user_kb: {per_user:.1f}")
    print(f"rss_vs_bare_websocket_ratio: {per_user / max(bare_per_socket, 0.1):.1f}")


if __name__ == "__main__":
    main()
