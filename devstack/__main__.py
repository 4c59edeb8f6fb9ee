"""``python -m devstack [directory] [--once] [--port-base N]``: the demo (see devstack.demo)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from devstack.demo import main
from devstack.demo_stack import ROOT, Ports

parser = argparse.ArgumentParser(
    prog="python -m devstack",
    description="The bridge at work on loopback: Synapse, the sandbox gatekeeper, the bridge and an "
    "encrypting Matrix client, all started here; every kind of message both ways, with a transcript.",
)
parser.add_argument("directory", nargs="?", type=Path, default=ROOT / "demo", help="where it keeps its state")
parser.add_argument("--once", action="store_true", help="stop after the transcript; exit 0 only if every step worked")
parser.add_argument(
    "--port-base",
    type=int,
    help="Synapse on this port, the bridge, the sandbox and the metrics on the next three "
    "(default: 8008, 29318, 29400, 9139)",
)
args = parser.parse_args()
ports = Ports.from_base(args.port_base) if args.port_base else Ports()
sys.exit(asyncio.run(main(args.directory.resolve(), ports, args.once, sys.stdout)))
