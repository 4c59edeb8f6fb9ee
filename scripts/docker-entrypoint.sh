#!/bin/sh
# The container's first start, as admins know it from mautrix bridges:
#   1. no config.yaml in the data volume: the example is written there; edit it, start again;
#   2. no registration.yaml: it is generated (tokens and the at-rest key go into config.yaml);
#      add it to the homeserver, restart the homeserver, start again;
#   3. both there: the bridge runs (and migrates its database first).
# DATA (default /data) is the volume; BRIDGE_PYTHON the interpreter (default python).
set -eu
DATA="${DATA:-/data}"
PYTHON="${BRIDGE_PYTHON:-python}"
EXAMPLE="$("$PYTHON" -c 'from bridge.config import EXAMPLE_PATH; print(EXAMPLE_PATH)')"

if [ ! -f "$DATA/config.yaml" ]; then
    cp "$EXAMPLE" "$DATA/config.yaml"
    echo "Wrote $DATA/config.yaml from the example. Edit it (homeserver, database, gatekeeper,"
    echo "partner, permissions), then start the container again to generate the registration."
    exit 0
fi

if [ ! -f "$DATA/registration.yaml" ]; then
    "$PYTHON" -m bridge -g -c "$DATA/config.yaml" -r "$DATA/registration.yaml"
    echo "Add $DATA/registration.yaml to your homeserver's app_service_config_files, restart the"
    echo "homeserver, then start the container again."
    exit 0
fi

cd "$DATA"
exec "$PYTHON" -m bridge -c "$DATA/config.yaml" "$@"
