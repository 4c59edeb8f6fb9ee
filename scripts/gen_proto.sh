#!/usr/bin/env bash
# Regenerates bridge/gip/proto/content_pb2.py (and its .pyi) from content.proto.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m grpc_tools.protoc -I bridge/gip/proto \
    --python_out=bridge/gip/proto --pyi_out=bridge/gip/proto bridge/gip/proto/content.proto
