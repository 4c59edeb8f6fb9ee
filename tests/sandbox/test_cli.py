"""``python -m bridge.sandbox``: starts from a config file, stops cleanly, explains bad config."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from devstack.sandbox import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_example_config_parses() -> None:
    from bridge.sandbox.config import load_config

    config = load_config(ROOT / "sandbox.example.yaml")
    assert config.profile == "whatsapp"
    assert config.integrators[0].id == "example-bridge"
    assert "DE" in config.policies.eea_countries


def test_runs_serves_and_stops_on_sigterm(tmp_path) -> None:
    port = free_port()
    config = tmp_path / "sandbox.yaml"
    text = (ROOT / "sandbox.example.yaml").read_text()
    text = text.replace("port: 29400", f"port: {port}").replace("database: sandbox.db", f"database: {tmp_path / 'db'}")
    config.write_text(text.replace("media_dir: sandbox-media", f"media_dir: {tmp_path / 'media'}"))
    process = subprocess.Popen(
        [sys.executable, "-m", "bridge.sandbox", "-c", str(config)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_sandbox/health", timeout=1) as response:
                    assert response.status == 200
                    break
            except OSError:
                time.sleep(0.05)
        else:
            raise AssertionError("the sandbox did not start")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/.well-known/jwks", timeout=1) as response:
            assert b'"RS256"' in response.read()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_bad_config_is_one_clear_line(tmp_path) -> None:
    config = tmp_path / "sandbox.yaml"
    config.write_text("profile: signal\ncontrol_token: 0123456789abcdef0123\n")
    result = subprocess.run(
        [sys.executable, "-m", "bridge.sandbox", "-c", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "sandbox: configuration error: profile: must be one of whatsapp, messenger, got 'signal'"
    )
    config.write_text("control_token: short\n")
    result = subprocess.run(
        [sys.executable, "-m", "bridge.sandbox", "-c", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "control_token: must be at least 16 characters" in result.stderr
