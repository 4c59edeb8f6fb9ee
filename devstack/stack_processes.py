"""The demo's processes (the sandbox, Synapse, the bridge): each logs to a file of its
own and runs in a session of its own, so that a terminal's Ctrl-C reaches only the demo,
which then stops them one by one, the last started first."""

from __future__ import annotations

import subprocess
from pathlib import Path


class Processes:
    def __init__(self, logs: Path) -> None:
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        self._running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def start(self, name: str, argv: list[str], cwd: Path) -> subprocess.Popen[bytes]:
        with self.log(name).open("ab") as out:
            process = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.adopt(name, process)
        return process

    def adopt(self, name: str, process: subprocess.Popen[bytes]) -> None:
        """A process started elsewhere that this demo must stop too."""
        self._running.append((name, process))

    def exited(self) -> str | None:
        """The name of a process that ended by itself, if one did."""
        for name, process in self._running:
            if process.poll() is not None:
                return f"{name} (exit code {process.returncode})"
        return None

    def tail(self, name: str, lines: int = 20) -> str:
        path = self.log(name)
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop_all(self, timeout: float = 20) -> None:
        """The last started first, each waited for: the bridge finishes its work while
        the homeserver and the gatekeeper are still there to take it."""
        while self._running:
            _, process = self._running.pop()
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
