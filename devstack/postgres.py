"""A Postgres server for the tests: the one on 127.0.0.1:5432 (trust auth) when it runs,
otherwise a throwaway cluster from Debian's ``postgresql`` package, initialised as the
``postgres`` user (``initdb`` refuses root) in a temporary directory, on a free port."""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DEFAULT_DSN = "postgres://postgres@127.0.0.1:5432/postgres"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    runner = shutil.which("runuser")
    return [runner, "-u", "postgres", "--", *command] if runner else ["su", "postgres", "-c", " ".join(command)]


class Cluster:
    """A throwaway cluster of our own, which a test may restart."""

    def __init__(self, bindir: Path, data: Path, options: str, port: int) -> None:
        self.bindir, self.data, self.options, self.port = bindir, data, options, port
        self.dsn = f"postgres://postgres@127.0.0.1:{port}/postgres"

    def restart(self) -> None:
        """A fast restart: every connection is cut, the server is back a moment later."""
        # The new server writes to the log file: a pipe it inherited would never close.
        command = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", self.options, "-m", "fast", "-w"]
        subprocess.run(
            _as_postgres([*command, "-l", str(self.data.parent / "log"), "restart"]),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


def throwaway_cluster() -> Cluster:
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not binaries:
        raise RuntimeError(
            "no Postgres server on 127.0.0.1:5432 and no initdb: install Debian's postgresql "
            "(scripts/setup.sh does this when it can)"
        )
    bindir = Path(binaries[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="dma-pg-"))
    data = root / "data"
    port = _free_port()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    subprocess.run(
        _as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]),
        check=True,
        capture_output=True,
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
    subprocess.run(
        _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-w", "-l", str(root / "log"), "start"]),
        check=True,
        capture_output=True,
    )

    def stop() -> None:
        subprocess.run(
            _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)

    atexit.register(stop)
    for _ in range(50):
        if _reachable("127.0.0.1", port):
            break
        time.sleep(0.1)
    return Cluster(bindir, data, options, port)


_server: str | None = None


def server_dsn() -> str:
    """The admin DSN of a running server, starting a throwaway one if need be."""
    global _server
    if _server is None:
        _server = DEFAULT_DSN if _reachable("127.0.0.1", 5432) else throwaway_cluster().dsn
    return _server
