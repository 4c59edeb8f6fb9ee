"""The README's main job without a config: the demo, run as an admin runs it (its own
process), once to the end with ``--once``, then again on the same directory, where it
reuses everything and keeps running until SIGTERM stops it and all it started."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Log in, start a chat; text, reply, reaction, edit, image, file, voice note each way; reads each way.
STEPS = 2 + 2 * 7 + 2


def _free_block(size: int = 4) -> int:
    """A first port with the next ``size - 1`` free too."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + size < 65536 and all(_free(base + i) for i in range(size)):
            return base
    raise RuntimeError("no block of free ports")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _demo(directory: Path, base: int, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "devstack", str(directory), "--port-base", str(base), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_the_demo_runs_every_step_then_reuses_its_state_and_stops_on_sigterm(tmp_path: Path) -> None:
    base = _free_block()
    first = _demo(tmp_path, base, "--once")
    output, _ = first.communicate(timeout=300)
    assert first.returncode == 0, output
    worked = re.findall(r"^  ✓ ", output, re.MULTILINE)
    assert len(worked) == STEPS, output
    assert f"{STEPS} of {STEPS} steps, every step worked" in output
    # Each hop has a time.
    assert re.search(r"text +Element → WhatsApp +to Synapse \d+ ms · on 2 WhatsApp devices \+\d+ ms", output), output

    second = _demo(tmp_path, base)
    assert second.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = second.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("Ctrl-C stops everything"):
            break
    text = "".join(lines)
    assert "already logged in on an earlier run" in text, text
    assert f"{STEPS} of {STEPS} steps, every step worked" in text, text
    assert f"homeserver  http://127.0.0.1:{base}" in text and "password" in text
    second.send_signal(signal.SIGTERM)
    rest, _ = second.communicate(timeout=60)
    assert second.returncode == 130, rest
    assert "Stopped everything" in rest
    # Synapse, the bridge, the sandbox and the metrics port are all closed again.
    assert not any(_listening(base + i) for i in range(4)), "a process the demo started outlived it"
