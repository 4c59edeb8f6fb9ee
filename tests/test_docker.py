"""The container, without a Docker engine: the Dockerfile linted with hadolint, and its
entrypoint walked through an admin's first three starts."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

from bridge.config import dump_yaml, read_yaml
from devstack.sandbox import free_port

ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = ROOT / "scripts" / "docker-entrypoint.sh"


class _Refusing(BaseHTTPRequestHandler):
    def _refuse(self) -> None:
        body = b'{"errcode": "M_FORBIDDEN", "error": "not this appservice"}'
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _refuse

    def log_message(self, *args: object) -> None:
        return None


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run([str(hadolint), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_entrypoint_walks_an_admin_through_the_first_start(tmp_path: Path) -> None:
    env = {**os.environ, "DATA": str(tmp_path), "BRIDGE_PYTHON": sys.executable}

    def start() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=120)

    first = start()
    assert first.returncode == 0 and "Edit it" in first.stdout
    assert (tmp_path / "config.yaml").read_text() == (ROOT / "config.example.yaml").read_text()

    # The admin edits it: here, a "homeserver" that refuses everything, and ports of its own.
    refusing = HTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=refusing.serve_forever, daemon=True).start()
    data = read_yaml(tmp_path / "config.yaml")
    data["homeserver"]["address"] = f"http://127.0.0.1:{refusing.server_address[1]}"
    data["appservice"]["port"] = free_port()
    (tmp_path / "config.yaml").write_text(dump_yaml(data))
    second = start()
    assert second.returncode == 0 and "app_service_config_files" in second.stdout
    registration = read_yaml(tmp_path / "registration.yaml")
    config = read_yaml(tmp_path / "config.yaml")
    assert registration["as_token"] == config["appservice"]["as_token"] != "generate"

    # Configured and registered: the bridge itself runs, migrates its database in the
    # volume, and stops with one line naming what to fix (the homeserver refuses it).
    third = start()
    refusing.shutdown()
    assert third.returncode == 3 and "cannot use the homeserver" in third.stderr
    assert (tmp_path / "matrix-dma-bridge.db").exists()
