#!/usr/bin/env bash
# Sets up a fresh machine and runs the main job. Until the bridge itself lands, that is
# the Signal benchmark against official libsignal (bench/signal_bench.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python bench/signal_bench.py "$@"
