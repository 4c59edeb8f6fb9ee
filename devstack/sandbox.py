"""The sandbox conformance harness: a sandbox on a free port, a stand-in Partner server
(JWKS, push, media) and Partner clients built on ``bridge.gip.client``."""

from __future__ import annotations

import asyncio
import itertools
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bridge.gip.client import Event, GipClient, MessageEvent
from bridge.gip.noise import StaticKey
from bridge.gip.tokens import SigningKey, issue_partner_token, jwks_document
from bridge.sandbox.clock import Clock
from bridge.sandbox.config import parse_config
from bridge.sandbox.gatekeeper import Gatekeeper
from bridge.sandbox.http import make_app
from bridge.sandbox.store import SandboxStore
from bridge.signal import IdentityKeyPair, MemorySignalStore, SignedPreKeyRecord, generate_prekeys

INTEGRATOR = "test-bridge"
CONTROL_TOKEN = "control-token-for-tests-0123456789"
_uvids = itertools.count(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PartnerServer:
    """The Partner's HTTP surface as the gatekeeper sees it."""

    def __init__(self) -> None:
        self.key = SigningKey.generate()
        self.pushes: list[dict[str, Any]] = []
        self.push_event = asyncio.Event()
        self.media: dict[str, bytes] = {}
        self.media_requests: list[str] = []
        self.jwks_fetches = 0
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.audience = "WHATSAPP"
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()

        async def jwks(request: web.Request) -> web.Response:
            self.jwks_fetches += 1
            return web.json_response(jwks_document([self.key]))

        async def push(request: web.Request) -> web.Response:
            self.pushes.append({"body": await request.json(), "auth": request.headers.get("Authorization", "")})
            self.push_event.set()
            return web.Response(status=200)

        async def media(request: web.Request) -> web.Response:
            ref = request.match_info["ref"]
            self.media_requests.append(request.headers.get("Authorization", ""))
            if ref not in self.media:
                return web.Response(status=404)
            return web.Response(body=self.media[ref])

        app.add_routes(
            [
                web.get("/.well-known/oauth/openid/jwks", jwks),
                web.post("/push", push),
                web.get("/media/{ref}", media),
            ]
        )
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def token(self, uvid: str, *, country: str = "DE", audience: str | None = None, **kwargs: Any) -> str:
        return issue_partner_token(
            self.key,
            integrator=INTEGRATOR,
            uvid=uvid,
            audience=audience or self.audience,
            country=country,
            **kwargs,
        )


def sandbox_config(partner: PartnerServer, port: int, *, profile: str = "whatsapp", **policies: Any) -> Any:
    return parse_config(
        {
            "server": {"host": "127.0.0.1", "port": port},
            "profile": profile,
            "control_token": CONTROL_TOKEN,
            "database": ":memory:",
            "integrators": [
                {
                    "id": INTEGRATOR,
                    "jwks_url": f"{partner.base}/.well-known/oauth/openid/jwks",
                    "push_url": f"{partner.base}/push",
                    "media_base": f"{partner.base}/media",
                }
            ],
            "policies": policies,
        }
    )


class SandboxControl:
    """The control API (``/_sandbox``) of a running sandbox: natives act and report."""

    base: str
    http: aiohttp.ClientSession
    token: str = CONTROL_TOKEN

    async def control(
        self, method: str, path: str, body: dict[str, Any] | None = None, expect: int | None = 200
    ) -> dict[str, Any]:
        """The answer, which must have the status ``expect`` unless that is None."""
        async with self.http.request(
            method,
            f"{self.base}/_sandbox{path}",
            json=body,
            headers={"Authorization": f"Bearer {self.token}"},
        ) as response:
            data = await response.json()
            assert expect is None or response.status == expect, (response.status, data)
            return data

    async def native(self, uvid: str | None = None, **kwargs: Any) -> dict[str, Any]:
        return await self.control("POST", "/natives", {"uvid": uvid or new_phone(), **kwargs})

    async def events(self, iid: str, kind: str | None = None, after: int = 0) -> list[dict[str, Any]]:
        """What a native's devices did and saw, oldest first, after the ``seq`` given."""
        events = (await self.control("GET", f"/natives/{iid}/events?after={after}"))["events"]
        return [e for e in events if kind is None or e["event"] == kind]


class RemoteSandbox(SandboxControl):
    """A sandbox in its own process (``spawn_sandbox_process``), reached over HTTP only."""

    def __init__(self, base: str, http: aiohttp.ClientSession, token: str = CONTROL_TOKEN) -> None:
        self.base, self.http, self.token = base, http, token


@dataclass
class Sandbox(SandboxControl):
    """A sandbox in this process: the tests reach into its gatekeeper too."""

    gatekeeper: Gatekeeper
    base: str
    runner: web.AppRunner
    http: aiohttp.ClientSession
    clients: list[GipClient] = field(default_factory=list)


async def start_sandbox(
    partner: PartnerServer,
    *,
    store: SandboxStore | None = None,
    clock: Clock | None = None,
    media_dir: Path,
    profile: str = "whatsapp",
    **policies: Any,
) -> Sandbox:
    port = free_port()
    config = sandbox_config(partner, port, profile=profile, **policies)
    gatekeeper = Gatekeeper(config, store or SandboxStore(":memory:"), clock or Clock(), media_dir=media_dir)
    runner = web.AppRunner(make_app(gatekeeper))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return Sandbox(gatekeeper, f"http://127.0.0.1:{port}", runner, aiohttp.ClientSession())


async def stop_sandbox(sandbox: Sandbox) -> None:
    for client in sandbox.clients:
        await client.close()
    await sandbox.http.close()
    await sandbox.runner.cleanup()
    await sandbox.gatekeeper.close()


def new_phone() -> str:
    return f"+491511{next(_uvids) + 1000000:07d}"


@dataclass
class Partner:
    """A Partner user's client with its keys, and what it received."""

    client: GipClient
    uvid: str
    identity: IdentityKeyPair
    store: MemorySignalStore
    server: PartnerServer
    events: list[Event] = field(default_factory=list)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def on_event(self, event: Event) -> None:
        async with self.arrived:
            self.events.append(event)
            self.arrived.notify_all()

    async def wait_for(self, predicate: Callable[[Event], bool], timeout: float = 10.0) -> Event:
        async def find() -> Event:
            async with self.arrived:
                while True:
                    for event in self.events:
                        if predicate(event):
                            return event
                    await self.arrived.wait()

        return await asyncio.wait_for(find(), timeout)

    def messages(self) -> list[MessageEvent]:
        return [e for e in self.events if isinstance(e, MessageEvent)]

    async def connect(self, **token_args: Any) -> int:
        return await self.client.connect(self.server.token(self.uvid, **token_args))


async def new_partner(
    sandbox: Sandbox,
    server: PartnerServer,
    *,
    uvid: str | None = None,
    enlist: bool = True,
    connect: bool = True,
    prekeys: int = 20,
    **client_args: Any,
) -> Partner:
    identity = IdentityKeyPair.generate()
    store = MemorySignalStore(identity, 4242)
    await store.store_signed_pre_key(SignedPreKeyRecord.generate(identity, 1, 0))
    partner = Partner(
        client=None,  # type: ignore[arg-type]
        uvid=uvid or f"@user{next(_uvids)}:example.org",
        identity=identity,
        store=store,
        server=server,
    )
    partner.client = GipClient(
        base_url=sandbox.base,
        store=store,
        noise_static=StaticKey.generate(),
        on_event=partner.on_event,
        **client_args,
    )
    if enlist:
        await partner.client.enlist(server.token(partner.uvid))
    if connect:
        await partner.connect()
        if prekeys:
            await partner.client.upload_prekeys(generate_prekeys(100, prekeys))
    return partner


async def spawn_sandbox_process(
    workdir: Path,
    partner_base: str,
    http: aiohttp.ClientSession,
    *,
    prefix: tuple[str, ...] = (),
    port: int | None = None,
    control_token: str = CONTROL_TOKEN,
    integrator: str = INTEGRATOR,
    log: Path | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """The sandbox as an admin runs it (its own process, a durable SQLite file), with the
    Partner at ``partner_base``; returns once it answers. Its output goes to ``log``; it
    runs in a session of its own, so that a terminal's Ctrl-C reaches only its starter,
    which stops it in order."""
    port = port or free_port()
    config = workdir / "sandbox.yaml"
    config.write_text(
        f"""server: {{host: 127.0.0.1, port: {port}}}
profile: whatsapp
database: {workdir / "sandbox.db"}
media_dir: {workdir / "media"}
control_token: {control_token}
integrators:
  - id: {integrator}
    jwks_url: {partner_base}/.well-known/oauth/openid/jwks
    push_url: {partner_base}/push
    media_base: {partner_base}/media
policies:
  rate_limits: {{messages_per_minute: 100000000, enlistments_per_hour: 100000000, first_contacts_per_day: 100000000}}
"""
    )
    output = log.open("ab") if log is not None else subprocess.DEVNULL
    process = subprocess.Popen(
        [sys.executable, *prefix, "-m", "bridge.sandbox", "-c", str(config)],
        stdout=output,
        stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
        start_new_session=True,
    )
    if log is not None:
        output.close()
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            async with http.get(f"{base}/_sandbox/health") as response:
                if response.status == 200:
                    return process, base
        except aiohttp.ClientError:
            await asyncio.sleep(0.05)
    process.kill()
    raise RuntimeError("the sandbox did not start")
