"""The HTTP endpoints the gatekeeper calls: a JWKS that cannot be fetched is a 503, a bad
token a 401, never a 500; a flood of unknown key ids makes one fetch."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from bridge.gatekeeper.partner_server import PartnerServer
from bridge.gip.tokens import JwksFetcher, SigningKey, issue_gatekeeper_token, jwks_document
from devstack.sandbox import free_port

GATEKEEPER_KEY = SigningKey.generate("gk-1")


class _Jwks:
    def __init__(self) -> None:
        self.up = False
        self.calls = 0

    async def fetch(self) -> bytes:
        self.calls += 1
        await asyncio.sleep(0.05)
        if not self.up:
            raise aiohttp.ClientConnectionError("the gatekeeper's JWKS does not answer")
        return json.dumps(jwks_document([GATEKEEPER_KEY])).encode()


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[str, _Jwks, list[str]]]:
    jwks = _Jwks()
    pushed: list[str] = []

    async def on_push(uvid: str) -> None:
        pushed.append(uvid)

    class _NoMedia:
        async def blob(self, ref: str) -> None:
            return None

    partner = PartnerServer(
        signing_key=SigningKey.generate("ours"),
        gatekeeper_jwks=JwksFetcher(jwks.fetch, min_refetch=0.5),
        gatekeeper_name="WHATSAPP",
        integrator_id="integrator",
        media=_NoMedia(),  # type: ignore[arg-type]
        on_push=on_push,
    )
    app = web.Application()
    app.add_routes(partner.routes())
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", jwks, pushed
    await runner.cleanup()


def _token(key: SigningKey = GATEKEEPER_KEY) -> str:
    return issue_gatekeeper_token(key, issuer="WHATSAPP", audience="integrator", now=int(time.time()))


@pytest.mark.asyncio
async def test_unreachable_jwks_is_503_and_a_flood_makes_one_fetch(served) -> None:
    base, jwks, pushed = served
    headers = {"Authorization": f"Bearer {_token()}"}
    async with aiohttp.ClientSession() as http:

        async def push(token_headers: dict[str, str]) -> int:
            async with http.post(f"{base}/push", json={"to": "+4915100000001"}, headers=token_headers) as r:
                return r.status

        statuses = await asyncio.gather(*(push(headers) for _ in range(100)))
        assert set(statuses) == {503}, "the JWKS cannot be fetched: not judged, not a 500"
        assert jwks.calls == 1
        jwks.up = True
        await asyncio.sleep(0.6)
        assert await push(headers) == 200 and pushed == ["+4915100000001"]
        bogus = {"Authorization": f"Bearer {_token(SigningKey.generate('bogus'))}"}
        calls = jwks.calls
        assert set(await asyncio.gather(*(push(bogus) for _ in range(100)))) == {401}
        assert jwks.calls - calls <= 1, "unknown key ids: at most one fetch, shared"
        assert await push({"Authorization": "Bearer nonsense"}) == 401
