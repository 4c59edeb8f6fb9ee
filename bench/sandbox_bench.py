"""Messages per second routed through the sandbox between two Partner clients.

The sandbox runs as its own process (``python -m bridge.sandbox``) on loopback with a
durable SQLite file, as an admin would run it; its CPU time is read from /proc before and
after, so the per-message figure is the gatekeeper's alone. The two Partner clients
(``bridge.gip.client``, Signal included) and a stand-in Partner server (JWKS, push) run in
this process. A sends N messages to B with a window of W in flight; the clock stops when
B has received all N and A has all N delivery receipts.

    python bench/sandbox_bench.py [--quick]

Last line: ``sandbox_msgs_per_s: X``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.gip import stanzas as st
from bridge.gip.client import MessageEvent, ReceiptEvent
from bridge.gip.content import Content
from bridge.gip.jid import Jid
from devstack.sandbox import Partner, PartnerServer, Sandbox, new_partner, spawn_sandbox_process


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(count: int, window: int, workdir: Path) -> dict[str, float]:
    server = PartnerServer()
    await server.start()
    http = aiohttp.ClientSession()
    prefix = tuple(os.environ.get("SANDBOX_PREFIX", "").split())
    process, base = await spawn_sandbox_process(workdir, server.base, http, prefix=prefix)
    try:
        sandbox = Sandbox(None, base, None, http)  # type: ignore[arg-type]
        alice: Partner = await new_partner(sandbox, server, keepalive=0)
        bob: Partner = await new_partner(sandbox, server, keepalive=0)
        bob_jid = Jid.parse(bob.client.iid)
        received = asyncio.Event()
        receipts = asyncio.Event()
        counts = {"received": 0, "receipts": 0}

        async def on_bob(event) -> None:
            if isinstance(event, MessageEvent):
                counts["received"] += 1
                if counts["received"] >= count:
                    received.set()

        async def on_alice(event) -> None:
            if isinstance(event, ReceiptEvent) and event.receipt.type is st.ReceiptType.DELIVERED:
                counts["receipts"] += 1
                if counts["receipts"] >= count:
                    receipts.set()

        # Warm-up: sessions both ways, caches, JIT-free but import- and connection-warm.
        await alice.client.send_message(bob_jid, Content(text="warm up"))
        await bob.client.send_message(Jid.parse(alice.client.iid), Content(text="warm up"))
        await asyncio.sleep(0.3)
        bob.client.on_event, alice.client.on_event = on_bob, on_alice

        payload = Content(text="x" * 100)
        limit = asyncio.Semaphore(window)

        async def send_one() -> None:
            async with limit:
                await alice.client.send_message(bob_jid, payload)

        cpu_before = cpu_seconds(process.pid)
        started = time.perf_counter()
        await asyncio.gather(*(send_one() for _ in range(count)))
        await asyncio.wait_for(received.wait(), 300)
        await asyncio.wait_for(receipts.wait(), 300)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(process.pid) - cpu_before
        await alice.client.close()
        await bob.client.close()
        return {"elapsed": elapsed, "sandbox_cpu": cpu}
    finally:
        await http.close()
        process.terminate()
        process.wait(timeout=10)
        await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--window", type=int, default=32, help="messages in flight")
    args = parser.parse_args()
    count = 500 if args.quick else 3000
    with tempfile.TemporaryDirectory() as workdir:
        result = asyncio.run(run(count, args.window, Path(workdir)))
    rate = count / result["elapsed"]
    print(f"messages:                 {count} (window {args.window}), A → B with delivery receipts back")
    print(f"wall time:                {result['elapsed']:.2f} s")
    print(f"sandbox CPU per message:  {result['sandbox_cpu'] / count * 1e6:.0f} µs")
    print(f"sandbox_msgs_per_s: {rate:.0f}")


if __name__ == "__main__":
    main()
