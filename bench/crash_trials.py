"""Crash trials: the bridge killed with SIGKILL at random moments while both directions
stream, and started again; then every message is counted at the other end.

Everything runs as an admin would run it, each in its own process: Synapse, the sandbox
gatekeeper (durable SQLite), and the bridge (``python -m bridge``, Postgres by default).
A Matrix user (the mautrix client, or with ``--encrypted`` Element's crypto stack through
matrix-js-sdk in an encrypted portal) logs in through the bot and opens a chat with a
native user; then the Matrix user writes ``m0…`` and the native ``n0…`` at a steady pace
while the bridge is killed ``--trials`` times, each at a random moment, and restarted a
random moment later. When the streams are done, the native's received messages and the
Matrix user's timeline are compared with what was sent:

    crash_trials_lost: 0          messages that never arrived (both directions)
    crash_trials_duplicated: 0    messages that arrived more than once
    crash_trials_reordered: 0     messages that arrived before one sent earlier (per chat)
    crash_trials_undecryptable: 0 (with --encrypted) bridged events Element could not read

    python bench/crash_trials.py [--trials 20] [--messages 500] [--encrypted] [--sqlite] [--seed N]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.pipeline_bench import drop_postgres, fresh_postgres
from bridge.config import EXAMPLE_PATH, dump_yaml, generate_registration, read_yaml
from devstack.element_client import ElementPeer, ElementUser
from devstack.matrix_user import MatrixUser
from devstack.sandbox import CONTROL_TOKEN, INTEGRATOR, free_port, spawn_sandbox_process
from devstack.synapse import Synapse, start_synapse

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "crash-trials-password"


class BridgeProcess:
    """``python -m bridge -c config.yaml``, killed and started again."""

    def __init__(self, config: Path, log: Path, base: str, http: aiohttp.ClientSession) -> None:
        self.config, self.log, self.base, self.http = config, log, base, http
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    async def start(self) -> None:
        with self.log.open("ab") as out:
            out.write(f"\n===== start {self.starts} at {time.time():.3f}\n".encode())
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bridge", "-c", str(self.config)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
            )
        self.starts += 1
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the bridge exited with {self.process.returncode}; see {self.log}")
            try:
                async with self.http.get(f"{self.base}/_matrix/mau/ready") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the bridge did not become ready; see {self.log}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                await asyncio.to_thread(self.process.wait, 30)
            except subprocess.TimeoutExpired:
                self.kill()


def count(sent: list[str], received: list[str]) -> dict[str, int]:
    """Lost, duplicated and reordered, for one direction of one chat."""
    expected = set(sent)
    seen: dict[str, int] = {}
    for text in received:
        seen[text] = seen.get(text, 0) + 1
    order = {text: i for i, text in enumerate(sent)}
    firsts = [text for i, text in enumerate(received) if text in expected and text not in received[:i]]
    reordered = sum(1 for a, b in itertools.pairwise(firsts) if order[b] < order[a])
    return {
        "lost": len(expected - set(seen)),
        "duplicated": sum(n - 1 for text, n in seen.items() if text in expected and n > 1),
        "reordered": reordered,
    }


class Trial:
    def __init__(self, args: argparse.Namespace, workdir: Path, uri: str) -> None:
        self.args = args
        self.workdir = workdir
        self.uri = uri
        self.http = aiohttp.ClientSession()
        self.random = random.Random(args.seed)
        self.bridge_port, self.synapse_port = free_port(), free_port()
        self.sandbox: subprocess.Popen[bytes] | None = None
        self.sandbox_base = ""
        self.synapse: Synapse | None = None
        self.bridge: BridgeProcess | None = None
        self.element: ElementPeer | None = None

    async def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        headers = {"Authorization": f"Bearer {CONTROL_TOKEN}"}
        async with self.http.request(method, f"{self.sandbox_base}/_sandbox{path}", json=body, headers=headers) as r:
            data = await r.json()
            if r.status != 200:
                raise RuntimeError(f"sandbox {path}: {data}")
            return data

    async def set_up(self) -> None:
        bridge_base = f"http://127.0.0.1:{self.bridge_port}"
        self.sandbox, self.sandbox_base = await spawn_sandbox_process(self.workdir / "sandbox", bridge_base, self.http)
        config = self.workdir / "config.yaml"
        shutil.copy(EXAMPLE_PATH, config)
        data = read_yaml(config)
        data["homeserver"].update(address=f"http://127.0.0.1:{self.synapse_port}", domain="localhost")
        data["appservice"].update(address=bridge_base, port=self.bridge_port)
        data["database"]["uri"] = self.uri
        data["bridge"]["media"]["directory"] = str(self.workdir / "partner-media")
        key = (await self.control("GET", "/noise_key"))["static_key"]
        data["gatekeeper"].update(
            base_url=self.sandbox_base,
            jwks_url=f"{self.sandbox_base}/.well-known/jwks",
            name="WHATSAPP",
            static_key=key,
        )
        data["partner"].update(integrator_id=INTEGRATOR, public_url=bridge_base)
        data["bridge"]["permissions"] = {"localhost": "user"}
        data["bridge"]["encryption"]["default"] = self.args.encrypted
        data["bridge"]["encryption"]["key_wait_seconds"] = 10
        data["logging"]["level"] = "INFO"
        config.write_text(dump_yaml(data))
        registration = self.workdir / "registration.yaml"
        generate_registration(config, registration)
        self.synapse = start_synapse(self.workdir / "synapse", self.synapse_port, registration)
        self.bridge = BridgeProcess(config, self.workdir / "bridge.log", bridge_base, self.http)
        await self.bridge.start()

    async def user(self) -> MatrixUser | ElementUser:
        assert self.synapse is not None
        await self.synapse.register(self.http, "trial", PASSWORD)
        if self.args.encrypted:
            self.element = await ElementPeer.start()
            return await self.element.login("trial-device", self.synapse.base, "trial", PASSWORD)
        user = MatrixUser(self.synapse.base, "@trial:localhost")
        await user.login(PASSWORD)
        return user

    async def open_chat(self, user: MatrixUser | ElementUser) -> tuple[str, str, str]:
        room = await user.create_dm("@dmabot:localhost")
        await user.notice(room, "Send `help`", timeout=60)
        for answer, expect in (("login", "Do you agree?"), ("yes", "European Economic Area"), ("yes", "Logged in")):
            await user.say(room, answer)
            await user.notice(room, expect, timeout=60)
        native = await self.control("POST", "/natives", {"uvid": "+4915112345000", "read_receipts": False})
        iid = (await self.control("GET", f"/partners?integrator={INTEGRATOR}&uvid=@trial:localhost"))["iid"]
        await user.say(room, f"start-chat {native['uvid']}")
        reply = await user.notice(room, "Opened a chat", timeout=60)
        portal = reply["content"]["body"].rsplit("/", 1)[1]
        await user.wait_for(
            lambda e: (
                e.get("room_id") == portal and e.get("type") == "m.room.member" and e.get("state_key") == user.mxid
            )
        )
        return portal, native["iid"], iid

    async def run(self) -> dict[str, int]:
        await self.set_up()
        user = await self.user()
        portal, native, iid = await self.open_chat(user)
        n = self.args.messages
        outgoing, incoming = [f"m{i}" for i in range(n)], [f"n{i}" for i in range(n)]
        interval = self.args.trials * 4.0 / n if self.args.trials else 0.02

        async def from_matrix() -> None:
            for text in outgoing:
                await user.say(portal, text)
                await asyncio.sleep(interval)

        async def from_native() -> None:
            for text in incoming:
                await self.control("POST", f"/natives/{native}/send", {"to": iid, "text": text})
                await asyncio.sleep(interval)

        async def kill_and_restart() -> None:
            assert self.bridge is not None
            for _ in range(self.args.trials):
                await asyncio.sleep(self.random.uniform(0.3, 3.0))
                self.bridge.kill()
                await asyncio.sleep(self.random.uniform(0.0, 1.0))
                await self.bridge.start()

        started = time.monotonic()
        await asyncio.gather(from_matrix(), from_native(), kill_and_restart())
        streamed = time.monotonic() - started
        received_native, received_matrix = await self.settle(user, portal, native, outgoing, incoming)
        to_native, to_matrix = count(outgoing, received_native), count(incoming, received_matrix)
        print(f"Matrix → native: {to_native}; native → Matrix: {to_matrix}")
        for name, sent, received in (
            ("to the native", outgoing, received_native),
            ("to Matrix", incoming, received_matrix),
        ):
            order = {text: i for i, text in enumerate(sent)}
            firsts = [t for i, t in enumerate(received) if t in order and t not in received[:i]]
            late = [(a, b) for a, b in itertools.pairwise(firsts) if order[b] < order[a]]
            if late:
                print(f"out of order {name}: {late[:10]}")
        result = {key: to_native[key] + to_matrix[key] for key in ("lost", "duplicated", "reordered")}
        if self.args.encrypted:
            assert isinstance(user, ElementUser)
            bridged = {e["event_id"] for e in user.events if e.get("room_id") == portal and e["sender"] != user.mxid}
            result["undecryptable"] = len([e for e in user.undecryptable if e in bridged])
        starts = self.bridge.starts if self.bridge else 0
        print(f"streamed for {streamed:.0f} s with {self.args.trials} kills; the bridge started {starts} times")
        result["starts"] = starts
        await user.close()
        return result

    async def settle(
        self, user: MatrixUser | ElementUser, portal: str, native: str, outgoing: list[str], incoming: list[str]
    ) -> tuple[list[str], list[str]]:
        """Wait for the last messages (a key or a resend may still be on its way)."""
        deadline = time.monotonic() + self.args.settle
        while True:
            events = (await self.control("GET", f"/natives/{native}/events"))["events"]
            received_native = [e["content"].get("text", "") for e in events if e["event"] == "message"]
            if isinstance(user, ElementUser):
                await user.refresh()
            # In timeline order (Element's stack records an event when it decrypted it).
            timeline = sorted(user.events, key=lambda e: e.get("timeline_position", 0))
            received_matrix = [
                e["content"].get("body", "")
                for e in timeline
                if e.get("room_id") == portal
                and e.get("type") == "m.room.message"
                and e.get("sender") != user.mxid
                and e["content"].get("msgtype") == "m.text"
            ]
            done = set(outgoing) <= set(received_native) and set(incoming) <= set(received_matrix)
            if done or time.monotonic() > deadline:
                return received_native, received_matrix
            await asyncio.sleep(0.5)

    async def tear_down(self) -> None:
        if self.bridge is not None:
            await self.bridge.stop()
        if self.element is not None:
            await self.element.close()
        if self.synapse is not None:
            self.synapse.stop()
        if self.sandbox is not None:
            self.sandbox.terminate()
            self.sandbox.wait(timeout=10)
        await self.http.close()


async def main_async(args: argparse.Namespace) -> dict[str, int]:
    workdir = Path(tempfile.mkdtemp(prefix="crash-trials-"))
    (workdir / "sandbox").mkdir()
    admin = name = None
    if args.sqlite:
        uri = f"sqlite:///{workdir / 'bridge.db'}"
    else:
        admin, name, uri = await fresh_postgres()
    trial = Trial(args, workdir, uri)
    try:
        return await trial.run()
    finally:
        await trial.tear_down()
        if admin is not None and name is not None:
            await drop_postgres(admin, name)
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--encrypted", action="store_true", help="an encrypted portal, Element's crypto stack")
    parser.add_argument("--sqlite", action="store_true", help="the embedded database instead of Postgres")
    parser.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "big"))
    parser.add_argument("--settle", type=float, default=120.0, help="seconds to wait for the last messages")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (logs)")
    args = parser.parse_args()
    print(f"seed {args.seed}")
    result = asyncio.run(main_async(args))
    for key in ("lost", "duplicated", "reordered", "undecryptable"):
        if key in result:
            print(f"crash_trials_{key}: {result[key]}")


if __name__ == "__main__":
    main()
