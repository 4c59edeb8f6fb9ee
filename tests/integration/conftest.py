"""Synapse, Postgres, the sandbox and the bridge, brought up once for the integration tests."""

from __future__ import annotations

import base64
import itertools
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import asyncpg
import pytest
import pytest_asyncio

from bridge.app import BridgeApp
from bridge.config import EXAMPLE_PATH, dump_yaml, generate_registration, load_config, read_yaml
from devstack.element_client import ElementPeer, ElementUser, peer_available
from devstack.matrix_user import MatrixUser
from devstack.postgres import server_dsn
from devstack.sandbox import INTEGRATOR, Sandbox, free_port, start_sandbox, stop_sandbox
from devstack.synapse import Synapse, start_synapse

_users = itertools.count(1)


@dataclass
class Stack:
    synapse: Synapse
    sandbox: Sandbox
    bridge: BridgeApp
    http: aiohttp.ClientSession
    config_path: Path

    async def user(self, name: str | None = None) -> MatrixUser:
        localpart = name or f"user{next(_users)}_{uuid.uuid4().hex[:6]}"
        await self.synapse.register(self.http, localpart, "secret-password")
        user = MatrixUser(self.synapse.base, f"@{localpart}:localhost")
        await user.login("secret-password")
        return user

    async def element_user(self, peer: ElementPeer, localpart: str | None = None) -> ElementUser:
        """A device with Element's crypto; the account is created unless ``localpart`` names one."""
        if localpart is None:
            localpart = f"eluser{next(_users)}_{uuid.uuid4().hex[:6]}"
            await self.synapse.register(self.http, localpart, "secret-password")
        name = f"{localpart}-{uuid.uuid4().hex[:4]}"
        return await peer.login(name, self.synapse.base, localpart, "secret-password")


async def build_stack(
    root: Path,
    profile: str,
    tweak: Callable[[dict[str, Any]], None] | None = None,
    registration_tweak: Callable[[dict[str, Any]], None] | None = None,
    start_bridge: bool = True,
    admin: str | None = None,
    max_upload_size: str = "200M",
) -> tuple[Stack, str, str]:
    """Everything an admin would run, on loopback: returns the stack, the Postgres admin
    DSN and the database name (to drop afterwards)."""
    http = aiohttp.ClientSession()
    bridge_port, synapse_port = free_port(), free_port()
    admin = admin or server_dsn()
    database = f"dma_it_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(admin)
    await connection.execute(f'CREATE DATABASE "{database}"')
    await connection.close()
    sandbox = await start_sandbox(
        SimpleNamespace(base=f"http://127.0.0.1:{bridge_port}"), media_dir=root / "media", profile=profile
    )
    # The admin's steps: copy the example, edit it, generate the registration.
    config_path = root / "config.yaml"
    shutil.copy(EXAMPLE_PATH, config_path)
    data = read_yaml(config_path)
    data["homeserver"]["address"] = f"http://127.0.0.1:{synapse_port}"
    data["homeserver"]["domain"] = "localhost"
    data["appservice"]["address"] = f"http://127.0.0.1:{bridge_port}"
    data["appservice"]["port"] = bridge_port
    data["database"]["uri"] = admin.rsplit("/", 1)[0] + "/" + database
    data["gatekeeper"]["profile"] = profile
    data["gatekeeper"]["name"] = sandbox.gatekeeper.config.name
    data["gatekeeper"]["base_url"] = sandbox.base
    data["gatekeeper"]["jwks_url"] = f"{sandbox.base}/.well-known/jwks"
    data["gatekeeper"]["static_key"] = base64.b64encode(sandbox.gatekeeper.noise_static.public).decode()
    data["partner"]["integrator_id"] = INTEGRATOR
    data["partner"]["public_url"] = f"http://127.0.0.1:{bridge_port}"
    data["bridge"]["permissions"] = {"localhost": "user", "@admin:localhost": "admin"}
    data["bridge"]["media"]["directory"] = str(root / "partner-media")
    data["logging"]["level"] = "WARNING"
    if tweak is not None:
        tweak(data)
    config_path.write_text(dump_yaml(data))
    registration = root / "registration.yaml"
    generate_registration(config_path, registration)
    if registration_tweak is not None:
        document = read_yaml(registration)
        registration_tweak(document)
        registration.write_text(dump_yaml(document))
    synapse = start_synapse(root / "synapse", synapse_port, registration, max_upload_size)
    config, _ = load_config(config_path)
    bridge = BridgeApp(config)
    if start_bridge:
        await bridge.start()
    return Stack(synapse, sandbox, bridge, http, config_path), admin, database


async def tear_down(stack: Stack, admin: str, database: str) -> None:
    await stack.bridge.stop()
    stack.synapse.stop()
    await stop_sandbox(stack.sandbox)
    await stack.http.close()
    connection = await asyncpg.connect(admin)
    await connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    await connection.close()


def _bot_device_only(data: dict[str, Any]) -> None:
    # The chat-feature tests run in encrypted portals where the bot's device speaks for the
    # puppets; the encryption tests' stack gives puppets their own devices.
    data["bridge"]["encryption"]["puppet_devices"] = False
    # Its metrics are scraped (tests/integration/test_metrics.py).
    data["metrics"]["enabled"] = True
    data["metrics"]["listen"] = f"127.0.0.1:{free_port()}"


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def stack(tmp_path_factory) -> AsyncIterator[Stack]:
    built, admin, database = await build_stack(tmp_path_factory.mktemp("stack"), "whatsapp", _bot_device_only)
    yield built
    await tear_down(built, admin, database)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def messenger_stack(tmp_path_factory) -> AsyncIterator[Stack]:
    # A homeserver that takes small files only: what the bridge says of a larger one is tested there.
    built, admin, database = await build_stack(tmp_path_factory.mktemp("messenger"), "messenger", max_upload_size="1M")
    yield built
    await tear_down(built, admin, database)


def _e2ee_settings(data: dict[str, Any]) -> None:
    # A short wait for late keys, so that the give-up path runs in seconds, and room keys
    # replaced every few messages, so that every conversation crosses a rotation.
    data["bridge"]["encryption"]["key_wait_seconds"] = 4
    data["bridge"]["encryption"]["rotation"]["messages"] = 5


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def e2ee_stack(tmp_path_factory) -> AsyncIterator[Stack]:
    """A stack of its own: the encryption tests restart its bridge."""
    built, admin, database = await build_stack(tmp_path_factory.mktemp("e2ee"), "whatsapp", _e2ee_settings)
    yield built
    await tear_down(built, admin, database)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def element() -> AsyncIterator[ElementPeer]:
    if not peer_available():
        pytest.fail("the Element peer is not installed: run scripts/setup.sh")
    peer = await ElementPeer.start()
    yield peer
    await peer.close()
