"""A real Synapse on loopback (SQLite), for the tests and the demo. Starting again on the
same directory reuses its data: the config is regenerated around the kept keys and secret."""

from __future__ import annotations

import hashlib
import hmac
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
SYNAPSE_PYTHON = ROOT / ".venv-synapse" / "bin" / "python"
SERVER_NAME = "localhost"


@dataclass
class Synapse:
    process: subprocess.Popen[bytes]
    base: str
    shared_secret: str
    directory: Path
    log: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def restart(self) -> None:
        """Stop and start again on the same data (the appservice's queue survives)."""
        self.stop()
        self.process = _launch(self.directory, self.base, self.log)

    async def register(
        self, http: aiohttp.ClientSession, username: str, password: str, *, exists_ok: bool = False
    ) -> None:
        """Create a user with the shared-secret admin API (as register_new_matrix_user does)."""
        url = f"{self.base}/_synapse/admin/v1/register"
        async with http.get(url) as response:
            nonce = (await response.json())["nonce"]
        mac = hmac.new(self.shared_secret.encode(), digestmod=hashlib.sha1)
        mac.update(b"\x00".join([nonce.encode(), username.encode(), password.encode(), b"notadmin"]))
        body = {"nonce": nonce, "username": username, "password": password, "admin": False, "mac": mac.hexdigest()}
        async with http.post(url, json=body) as response:
            if exists_ok and response.status == 400 and (await response.json()).get("errcode") == "M_USER_IN_USE":
                return
            if response.status != 200:
                raise RuntimeError(f"registering {username} failed: {await response.text()}")


def start_synapse(
    directory: Path, port: int, registration: Path, max_upload_size: str = "200M", log: Path | None = None
) -> Synapse:
    """Synapse on ``port``, its output in ``log`` (``directory/stdout`` unless given)."""
    if not SYNAPSE_PYTHON.exists():
        raise RuntimeError("Synapse is not installed: run scripts/setup.sh")
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "homeserver.yaml"
    subprocess.run(
        [
            str(SYNAPSE_PYTHON),
            "-m",
            "synapse.app.homeserver",
            "--server-name",
            SERVER_NAME,
            "--config-path",
            str(config_path),
            "--generate-config",
            "--report-stats=no",
            "--data-directory",
            str(directory / "data"),
        ],
        check=True,
        capture_output=True,
        cwd=directory,
    )
    yaml = YAML()
    config = yaml.load(config_path.read_text())
    limit = {"per_second": 1000, "burst_count": 1000}
    config.update(
        listeners=[
            {
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "resources": [{"names": ["client"], "compress": False}],
            }
        ],
        trusted_key_servers=[],
        suppress_key_server_warning=True,
        app_service_config_files=[str(registration)],
        experimental_features={"msc3202_transaction_extensions": True, "msc2409_to_device_messages_enabled": True},
        rc_message=limit,
        rc_registration=limit,
        rc_joins_per_room=limit,
        rc_room_creation=limit,
        rc_key_requests=limit,
        rc_login={"address": limit, "account": limit, "failed_attempts": limit},
        rc_joins={"local": limit, "remote": limit},
        rc_invites={"per_room": limit, "per_user": limit, "per_issuer": limit},
        rc_presence={"per_user": limit},
        # Room for the 100 MiB transfer test; a stack may set less to test the refusal.
        max_upload_size=max_upload_size,
    )
    with config_path.open("w") as out:
        yaml.dump(config, out)
    log_config = directory / f"{SERVER_NAME}.log.config"
    log_config.write_text(log_config.read_text().replace("level: INFO", "level: WARNING"))
    base = f"http://127.0.0.1:{port}"
    log = log or directory / "stdout"
    process = _launch(directory, base, log)
    return Synapse(process, base, config["registration_shared_secret"], directory, log)


def _launch(directory: Path, base: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as output:
        process = subprocess.Popen(
            [str(SYNAPSE_PYTHON), "-m", "synapse.app.homeserver", "-c", str(directory / "homeserver.yaml")],
            cwd=directory,
            stdout=output,
            stderr=subprocess.STDOUT,
            # Its own session: a terminal's Ctrl-C reaches only its starter, which stops it.
            start_new_session=True,
        )
    for _ in range(300):
        if process.poll() is not None:
            raise RuntimeError(f"Synapse exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{base}/_matrix/client/versions", timeout=1):
                break
        except OSError:
            time.sleep(0.1)
    else:
        process.kill()
        raise RuntimeError("Synapse did not start")
    return process
