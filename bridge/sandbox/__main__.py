"""``python -m bridge.sandbox -c sandbox.yaml``: run the sandbox gatekeeper."""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web

from .config import ConfigError, load_config
from .gatekeeper import Gatekeeper
from .http import make_app
from .store import SandboxStore


async def serve(config_path: Path) -> None:
    config = load_config(config_path)
    store = SandboxStore(config.database)
    gatekeeper = Gatekeeper(config, store)
    runner = web.AppRunner(make_app(gatekeeper), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    logging.getLogger("bridge.sandbox").info(
        "sandbox gatekeeper (%s profile) listening on %s:%s", config.profile, config.host, config.port
    )
    # What the bridge pins as gatekeeper.static_key (also at GET /_sandbox/noise_key).
    logging.getLogger("bridge.sandbox").info(
        "noise static key: %s", base64.b64encode(gatekeeper.noise_static.public).decode()
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await gatekeeper.close()
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bridge.sandbox", description="the sandbox gatekeeper")
    parser.add_argument("-c", "--config", type=Path, default=Path("sandbox.yaml"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(args.config))
    except ConfigError as exc:
        print(f"sandbox: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
