"""CPU per Megolm decryption and encryption on the bridge's path, store included.

The bridge's ``Encryption`` decrypts events from a sending client and encrypts events
into the same room, with its crypto store on a fresh database (Postgres by default,
``--sqlite`` for the embedded one). Measured twice in one run: with the bridge's cached
store, and with mautrix's plain store as the reference; bare olm Megolm encryption is
printed too, for scale. Last line: ``megolm_cached_store_ratio: X`` (cached CPU per
decrypt+encrypt over plain-store CPU per decrypt+encrypt; lower is better).

    python bench/megolm_bench.py [--quick] [--sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from mautrix.crypto import OutboundGroupSession, PgCryptoStore
from mautrix.types import EventType, RoomID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.pipeline_bench import SendingClient, bridge_encryption, on_fresh_database
from bridge.config import EXAMPLE_PATH, parse_config, read_yaml

ROOM = RoomID("!bench:bench")
BODY = {"msgtype": "m.text", "body": "a message of ordinary length, about as long as a chat line is"}


async def measure(uri: str, count: int, cached: bool) -> tuple[float, float]:
    data = read_yaml(EXAMPLE_PATH)
    data["appservice"]["as_token"] = data["appservice"]["hs_token"] = "x" * 32
    data["encryption_at_rest"]["key"] = "A" * 43 + "="
    config = parse_config(data)
    encryption, databases = await bridge_encryption(config, uri)
    try:
        if not cached:
            # The same device on mautrix's plain store: the reference.
            plain = PgCryptoStore(encryption.bot.user_id, "reference", databases.crypto)
            await plain.put_device_id(encryption.bot.client.device_id)
            await plain.put_account(encryption.olm.account)
            encryption.bot.store = encryption.olm.crypto_store = plain
        sender = SendingClient()
        await sender.start(ROOM, encryption)
        events = [await sender.encrypt(ROOM, f"$e{i}", BODY) for i in range(count + 20)]
        for event in events[:20]:  # warm-up: caches, the pool, the first outbound session
            await encryption.decrypt(event)
            await encryption.encrypt(ROOM, EventType.ROOM_MESSAGE, BODY)
        start = time.process_time()
        for event in events[20:]:
            await encryption.decrypt(event)
        decrypt = (time.process_time() - start) / count
        start = time.process_time()
        for _ in range(count):
            await encryption.encrypt(ROOM, EventType.ROOM_MESSAGE, BODY)
        encrypt = (time.process_time() - start) / count
        await sender.client.api.session.close()
        return decrypt, encrypt
    finally:
        await encryption.stop()
        await databases.stop()


def bare_megolm(count: int) -> float:
    session = OutboundGroupSession(ROOM)
    session.shared, session.max_messages = True, count + 1
    start = time.process_time()
    for _ in range(count):
        session.encrypt('{"type":"m.room.message","content":{}}')
    return (time.process_time() - start) / count


async def run(count: int, sqlite: bool, cached: bool) -> tuple[float, float]:
    return await on_fresh_database(sqlite, lambda uri, _: measure(uri, count, cached))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sqlite", action="store_true", help="the embedded database instead of Postgres")
    args = parser.parse_args()
    count = 200 if args.quick else 1000
    plain = asyncio.run(run(count, args.sqlite, cached=False))
    cached = asyncio.run(run(count, args.sqlite, cached=True))
    backend = "SQLite" if args.sqlite else "Postgres"
    print(f"events:                  {count} decrypted and {count} encrypted, {backend}")
    print(f"mautrix's plain store:   decrypt {plain[0] * 1e6:.0f} µs, encrypt {plain[1] * 1e6:.0f} µs")
    print(f"the bridge's cached one: decrypt {cached[0] * 1e6:.0f} µs, encrypt {cached[1] * 1e6:.0f} µs")
    print(f"bare Megolm encrypt:     {bare_megolm(count) * 1e6:.0f} µs")
    print(f"megolm_cached_store_ratio: {sum(cached) / sum(plain):.2f}")


if __name__ == "__main__":
    main()
