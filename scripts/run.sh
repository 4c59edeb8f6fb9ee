#!/usr/bin/env bash
# Sets up a fresh machine and runs the main job: the bridge with ./config.yaml when you
# have one (write it from config.example.yaml, then `.venv/bin/python -m bridge -g`), or
# else a local demo with the sandbox gatekeeper and a Synapse on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -f config.yaml ]; then
    exec .venv/bin/python -m bridge -c config.yaml "$@"
fi
exec .venv/bin/python -m devstack "$@"
