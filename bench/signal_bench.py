"""Signal throughput: bridge.signal against official libsignal 0.72.1, same workloads.

Three workloads, each with session records serialized and parsed on every operation as
a real store does (our MemorySignalStore and the Node peer's stores both keep bytes):

* one direction: A encrypts, B decrypts, in an established session (symmetric ratchet);
* ping-pong: the sender alternates, so every message carries a DH-ratchet step;
* session set-up: a fresh bundle, X3DH, one PreKey message encrypted and decrypted.

libsignal runs inside the Node peer (devstack/signal), timed there, so no IPC is
counted. The last line is ``signal_vs_libsignal_ratio: X``, our encrypt+decrypt
messages per second over libsignal's in the one-direction workload.

    python bench/signal_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devstack.signal_client import NodeSignalPeer
from devstack.signal_parties import LocalParty

PAYLOAD = b"a" * 100


async def _established() -> tuple[LocalParty, LocalParty]:
    a, b = LocalParty("a", 1), LocalParty("b", 2)
    await a.process_bundle("b", await b.make_bundle(one_time=True))
    await b.decrypt("a", *await a.encrypt("b", PAYLOAD))
    await a.decrypt("b", *await b.encrypt("a", PAYLOAD))
    return a, b


async def python_run(messages: int, ping_pong: int, setups: int) -> dict[str, float]:
    out = {}
    a, b = await _established()
    start = time.perf_counter()
    for _ in range(messages):
        await b.decrypt("a", *await a.encrypt("b", PAYLOAD))
    out["one_direction_s"] = time.perf_counter() - start

    a, b = await _established()
    start = time.perf_counter()
    for i in range(ping_pong):
        sender, receiver = (b, a) if i % 2 else (a, b)
        await receiver.decrypt(sender.name, *await sender.encrypt(receiver.name, PAYLOAD))
    out["ping_pong_s"] = time.perf_counter() - start

    start = time.perf_counter()
    for _ in range(setups):
        a, b = LocalParty("a", 1), LocalParty("b", 2)
        await a.process_bundle("b", await b.make_bundle(one_time=True))
        await b.decrypt("a", *await a.encrypt("b", PAYLOAD))
    out["setup_s"] = time.perf_counter() - start
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, under 30 seconds")
    args = parser.parse_args()
    messages, ping_pong, setups = (2000, 1000, 100) if args.quick else (10000, 5000, 500)

    peer = NodeSignalPeer()
    try:
        # Warm both sides up (JIT, imports, OpenSSL contexts) before timing.
        peer.call("bench", messages=200, ping_pong=100, setups=10)
        asyncio.run(python_run(200, 100, 10))
        theirs = peer.call("bench", messages=messages, ping_pong=ping_pong, setups=setups)
        ours = asyncio.run(python_run(messages, ping_pong, setups))
    finally:
        peer.close()

    rows = [
        ("one direction (enc+dec)", "one_direction_s", messages),
        ("ping-pong (DH step each)", "ping_pong_s", ping_pong),
        ("session set-up", "setup_s", setups),
    ]
    print(f"{'workload':<26}{'bridge.signal':>16}{'libsignal 0.72.1':>18}{'ratio':>8}")
    for label, key, count in rows:
        our_rate, their_rate = count / ours[key], count / theirs[key]
        ratio = our_rate / their_rate
        print(f"{label:<26}{our_rate:>10.0f} op/s{their_rate:>12.0f} op/s{ratio:>8.2f}")
        our_us, their_us = ours[key] / count * 1e6, theirs[key] / count * 1e6
        print(f"{'':<26}{our_us:>10.1f} µs/op{their_us:>10.1f} µs/op")
    ratio = (messages / ours["one_direction_s"]) / (messages / theirs["one_direction_s"])
    print(f"signal_vs_libsignal_ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
