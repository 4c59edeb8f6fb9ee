"""The demo's stack on loopback, kept in one directory: the sandbox gatekeeper (SQLite),
a Synapse (SQLite) and the bridge (SQLite), each its own process, configured as an admin
would (the bridge's config starts as config.example.yaml). A second run on the same
directory reuses all of it: the accounts, the keys, the chats."""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from bridge.config import EXAMPLE_PATH, dump_yaml, generate_registration, read_yaml
from devstack.sandbox import RemoteSandbox, spawn_sandbox_process
from devstack.stack_processes import Processes
from devstack.synapse import Synapse, start_synapse

ROOT = Path(__file__).resolve().parents[1]
DOMAIN = "localhost"
INTEGRATOR = "demo-bridge"
MATRIX_USER = "demo"
NATIVE_UVID = "+4915112345678"


@dataclass(frozen=True)
class Ports:
    synapse: int = 8008
    bridge: int = 29318
    sandbox: int = 29400
    metrics: int = 9139

    @classmethod
    def from_base(cls, base: int) -> Ports:
        return cls(base, base + 1, base + 2, base + 3)


@dataclass
class Saved:
    """What a second run needs from the first, in ``demo.json``."""

    password: str
    control_token: str
    native_iid: str = ""
    management_room: str = ""
    portal: str = ""

    @classmethod
    def load(cls, path: Path) -> Saved:
        if path.exists():
            return cls(**json.loads(path.read_text()))
        return cls(password=secrets.token_urlsafe(12), control_token=secrets.token_urlsafe(24))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        path.chmod(0o600)


@dataclass
class DemoStack:
    directory: Path
    ports: Ports
    saved: Saved
    synapse: Synapse
    sandbox: RemoteSandbox
    processes: Processes

    @property
    def bot(self) -> str:
        return f"@dmabot:{DOMAIN}"

    @property
    def user(self) -> str:
        return f"@{MATRIX_USER}:{DOMAIN}"

    def save(self) -> None:
        self.saved.save(self.directory / "demo.json")


async def bring_up(directory: Path, ports: Ports, processes: Processes, http: aiohttp.ClientSession) -> DemoStack:
    directory.mkdir(parents=True, exist_ok=True)
    saved = Saved.load(directory / "demo.json")
    saved.save(directory / "demo.json")
    bridge_base = f"http://127.0.0.1:{ports.bridge}"
    # The sandbox first: the bridge pins its Noise key, which the sandbox keeps in its database.
    (directory / "sandbox").mkdir(exist_ok=True)
    process, sandbox_base = await spawn_sandbox_process(
        directory / "sandbox",
        bridge_base,
        http,
        port=ports.sandbox,
        control_token=saved.control_token,
        integrator=INTEGRATOR,
        log=processes.log("sandbox"),
    )
    processes.adopt("sandbox", process)
    sandbox = RemoteSandbox(sandbox_base, http, saved.control_token)
    static_key = (await sandbox.control("GET", "/noise_key"))["static_key"]

    config = write_bridge_config(directory, ports, sandbox_base, static_key)
    registration = directory / "registration.yaml"
    generate_registration(config, registration)
    synapse = await asyncio.to_thread(
        start_synapse, directory / "synapse", ports.synapse, registration, "100M", processes.log("synapse")
    )
    processes.adopt("synapse", synapse.process)
    processes.start("bridge", [sys.executable, "-m", "bridge", "-c", str(config)], ROOT)
    await wait_until_ready(http, f"{bridge_base}/_matrix/mau/ready", processes)

    await synapse.register(http, MATRIX_USER, saved.password, exists_ok=True)
    known = await sandbox.control("GET", f"/natives/{saved.native_iid}", expect=None) if saved.native_iid else {}
    if known.get("iid") != saved.native_iid or not saved.native_iid:
        # Two devices, as a phone with a linked companion; read receipts are sent by hand
        # in the script (a step of their own), then turned on for chatting by hand.
        native = await sandbox.native(NATIVE_UVID, devices=2, read_receipts=False)
        saved.native_iid = native["iid"]
        saved.save(directory / "demo.json")
    return DemoStack(directory, ports, saved, synapse, sandbox, processes)


def write_bridge_config(directory: Path, ports: Ports, sandbox_base: str, static_key: str) -> Path:
    """The admin's steps on config.example.yaml; on a second run, the same edits on the kept file."""
    path = directory / "config.yaml"
    data = read_yaml(path if path.exists() else EXAMPLE_PATH)
    bridge_base = f"http://127.0.0.1:{ports.bridge}"
    data["homeserver"]["address"] = f"http://127.0.0.1:{ports.synapse}"
    data["homeserver"]["domain"] = DOMAIN
    data["appservice"]["address"] = bridge_base
    data["appservice"]["port"] = ports.bridge
    data["database"]["uri"] = f"sqlite:///{directory / 'bridge.db'}"
    data["gatekeeper"]["base_url"] = sandbox_base
    data["gatekeeper"]["jwks_url"] = f"{sandbox_base}/.well-known/jwks"
    data["gatekeeper"]["static_key"] = static_key
    data["partner"]["integrator_id"] = INTEGRATOR
    data["partner"]["public_url"] = bridge_base
    data["bridge"]["permissions"] = {DOMAIN: "user"}
    data["bridge"]["media"]["directory"] = str(directory / "partner-media")
    data["metrics"]["enabled"] = True
    data["metrics"]["listen"] = f"127.0.0.1:{ports.metrics}"
    path.write_text(dump_yaml(data))
    path.chmod(0o600)
    return path


async def wait_until_ready(http: aiohttp.ClientSession, url: str, processes: Processes, seconds: float = 90) -> None:
    for _ in range(int(seconds * 10)):
        gone = processes.exited()
        if gone is not None:
            raise RuntimeError(f"{gone} stopped while starting")
        try:
            async with http.get(url) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the bridge was not ready after {seconds:.0f} s")
