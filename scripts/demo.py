"""A local demo: the sandbox gatekeeper, a Synapse and the bridge, all on loopback.

Creates ./demo (or the directory given), starts everything, registers a Matrix user and
a native WhatsApp-like user who answers every message, and prints how to try it from a
Matrix client. Stops everything on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.config import EXAMPLE_PATH, dump_yaml, generate_registration, read_yaml
from tests.integration.synapse import start_synapse

ROOT = Path(__file__).resolve().parent.parent
SYNAPSE_PORT, BRIDGE_PORT, SANDBOX_PORT = 8008, 29318, 29400
NATIVE_NUMBER = "+4915112345678"


async def answer_messages(http: aiohttp.ClientSession, sandbox: str, token: str, native: str) -> None:
    """The native user's phone: it replies to whatever it receives."""
    headers = {"Authorization": f"Bearer {token}"}
    seen = 0
    while True:
        async with http.get(f"{sandbox}/_sandbox/natives/{native}/events?after={seen}", headers=headers) as r:
            events = (await r.json())["events"]
        for event in events:
            seen = max(seen, event["seq"])
            if event["event"] == "message" and "text" in event.get("content", {}):
                text = event["content"]["text"]
                await http.post(
                    f"{sandbox}/_sandbox/natives/{native}/send",
                    headers=headers,
                    json={"to": event["from"], "text": f"You said: {text}"},
                )
        await asyncio.sleep(1)


async def sandbox_key(http: aiohttp.ClientSession, sandbox: str, headers: dict[str, str]) -> str:
    """The sandbox's Noise static key, once it answers (it prints the same at start)."""
    for _ in range(100):
        try:
            async with http.get(f"{sandbox}/_sandbox/noise_key", headers=headers) as r:
                if r.status == 200:
                    return str((await r.json())["static_key"])
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit("the sandbox did not start; see its output above")


async def main(directory: Path) -> None:
    directory.mkdir(exist_ok=True)
    token = secrets.token_urlsafe(24)
    sandbox_config = directory / "sandbox.yaml"
    text = (ROOT / "sandbox.example.yaml").read_text().replace("change-me-to-a-long-random-string", token)
    text = text.replace("database: sandbox.db", f"database: {directory / 'sandbox.db'}")
    sandbox_config.write_text(text.replace("media_dir: sandbox-media", f"media_dir: {directory / 'sandbox-media'}"))
    # The sandbox first: the bridge pins its Noise key, which the sandbox keeps in its database.
    processes = [subprocess.Popen([sys.executable, "-m", "bridge.sandbox", "-c", str(sandbox_config)], cwd=ROOT)]
    sandbox = f"http://127.0.0.1:{SANDBOX_PORT}"
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        static_key = await sandbox_key(http, sandbox, headers)
    config_path = directory / "config.yaml"
    fresh = not config_path.exists()
    if fresh:
        shutil.copy(EXAMPLE_PATH, config_path)
    data = read_yaml(config_path)
    if fresh:
        data["homeserver"]["domain"] = "localhost"
        data["database"]["uri"] = f"sqlite:///{directory / 'bridge.db'}"
        data["bridge"]["media"]["directory"] = str(directory / "media")
        data["bridge"]["permissions"] = {"localhost": "user"}
    data["gatekeeper"]["static_key"] = static_key
    config_path.write_text(dump_yaml(data))
    registration = directory / "registration.yaml"
    generate_registration(config_path, registration)
    synapse = start_synapse(directory / "synapse", SYNAPSE_PORT, registration)
    processes.append(subprocess.Popen([sys.executable, "-m", "bridge", "-c", str(config_path)], cwd=ROOT))
    async with aiohttp.ClientSession() as http:
        password = base64.urlsafe_b64encode(secrets.token_bytes(9)).decode()
        await synapse.register(http, "demo", password)
        async with http.post(f"{sandbox}/_sandbox/natives", headers=headers, json={"uvid": NATIVE_NUMBER}) as r:
            native = (await r.json())["iid"]
        print(f"""
The demo is running.
  Matrix client: homeserver http://127.0.0.1:{SYNAPSE_PORT}, user "demo", password "{password}"
  1. Start a chat with @dmabot:localhost and send: login   (then answer yes, yes)
  2. Send: start-chat {NATIVE_NUMBER}
  3. Write in the new room; the simulated WhatsApp user answers.
Press Ctrl-C to stop.
""")
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        answering = asyncio.create_task(answer_messages(http, sandbox, token, native))
        await stop.wait()
        answering.cancel()
    for process in processes:
        process.terminate()
    synapse.stop()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo").resolve()))
