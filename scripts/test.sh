#!/usr/bin/env bash
# Sets up a fresh machine and runs every check: ruff format, ruff check, pytest.
# Extra arguments go to pytest (for example: scripts/test.sh tests/signal -k interop).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff format --check .
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
