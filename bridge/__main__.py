"""``python -m bridge -c config.yaml`` runs the bridge; with ``-g -r registration.yaml`` it
writes the appservice registration (and fills in the config's tokens and at-rest key)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from bridge.config import BridgeConfig, ConfigError, generate_registration, load_config
from bridge.matrix.connector import StartupError


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bridge", description="a Matrix bridge to DMA gatekeepers")
    parser.add_argument("-c", "--config", type=Path, default=Path("config.yaml"))
    parser.add_argument("-g", "--generate-registration", action="store_true")
    parser.add_argument("-r", "--registration", type=Path, default=Path("registration.yaml"))
    args = parser.parse_args()
    try:
        if args.generate_registration:
            generate_registration(args.config, args.registration)
            print(f"Wrote {args.registration}; add it to your homeserver's app_service_config_files.")
            return
        config, _ = load_config(args.config)
    except ConfigError as exc:
        print(f"bridge: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    configure_logging(config)
    try:
        asyncio.run(_run(config))
    except StartupError as exc:
        print(f"bridge: cannot start: {exc}", file=sys.stderr)
        sys.exit(3)


def configure_logging(config: BridgeConfig) -> None:
    """One line per event; ``logging.level`` for all, ``logging.levels`` per module."""
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name, level in config.log_levels.items():
        logging.getLogger(name).setLevel(level)


async def _run(config: BridgeConfig) -> None:
    from bridge.app import BridgeApp

    app = BridgeApp(config)
    try:
        await app.start()
    except BaseException:
        # What did open is closed, so that the process exits (an open SQLite connection
        # keeps a thread, and the process with it, alive): the error says what to fix.
        await app.close_after_failed_start()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await app.stop()


if __name__ == "__main__":
    main()
