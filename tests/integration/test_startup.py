"""Start-up: a broken config or an unreachable bridge stops it with one clear line, and
work accepted before a crash is finished, exactly once, after it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from bridge.app import BridgeApp
from bridge.gip.content import Content
from bridge.matrix.connector import StartupError
from tests.integration.conftest import Stack
from tests.integration.test_bridge import log_in, open_chat

pytestmark = pytest.mark.asyncio(loop_scope="session")
ROOT = Path(__file__).resolve().parents[2]


def test_broken_config_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text((ROOT / "config.example.yaml").read_text().replace("port: 29318", "port: eighty"))
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "-c", str(config)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "bridge: configuration error: appservice.port: must be a int, got str"
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "-g", "-c", str(config), "-r", str(tmp_path / "registration.yaml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2


def test_generate_registration_from_the_command_line(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text((ROOT / "config.example.yaml").read_text())
    registration = tmp_path / "registration.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "-g", "-c", str(config), "-r", str(registration)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "as_token" in registration.read_text()
    assert "generate" not in config.read_text().split("as_token:")[1].split("\n")[0]


async def test_event_accepted_before_a_crash_is_sent_once_after_it(stack: Stack) -> None:
    alice = await stack.user()
    room = await log_in(stack, alice)
    native = await stack.sandbox.native()
    portal = await open_chat(stack, alice, room, native)
    core = stack.bridge.core
    # The bridge stored the event and died before sending it: the outbox holds it.
    await stack.bridge.connections.disconnect(alice.mxid)
    item, new = await core.outbox.accept(
        receiver=alice.mxid,
        peer=(await core.portals.by_room(portal)).peer,
        gk_id="CRASHED00000001",
        kind="text",
        room_id=portal,
        event_id="$accepted-before-crash",
        payload=Content(text="stored before the crash").SerializeToString(),
    )
    assert new
    await stack.bridge.stop()
    stack.bridge = BridgeApp(stack.bridge.config)
    await stack.bridge.start()  # the restart loads the outbox into the portal's loop
    core = stack.bridge.core
    for _ in range(100):
        if (await core.outbox.get(item.id)).state == "sent":
            break
        await asyncio.sleep(0.1)
    assert (await core.outbox.get(item.id)).state == "sent"
    # Sending it again (a crash after the gatekeeper stored it, before we marked it) is
    # acknowledged by the gatekeeper but not delivered twice.
    client = stack.bridge.connections.get(alice.mxid).client
    from bridge.gip.jid import Jid

    await client.send_message(
        Jid.parse(native["iid"]), Content(text="stored before the crash"), message_id="CRASHED00000001"
    )
    received = [e for e in await stack.sandbox.events(native["iid"], "message") if e["id"] == "CRASHED00000001"]
    assert len(received) == 1
    await alice.close()


async def test_homeserver_that_cannot_reach_the_bridge_stops_startup(stack: Stack) -> None:
    """Runs last in this module: it takes the stack's bridge down and brings it back."""
    from devstack.sandbox import free_port

    await stack.bridge.stop()
    try:
        # The registration tells the homeserver where the bridge is; a bridge listening
        # elsewhere cannot be reached, and the ping at start-up says so.
        app = BridgeApp(replace(stack.bridge.config, port=free_port()))
        with pytest.raises(StartupError, match="the homeserver cannot reach the bridge"):
            await app.start()
        await app.stop()
    finally:
        stack.bridge = BridgeApp(stack.bridge.config)
        await stack.bridge.start()
