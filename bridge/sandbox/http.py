"""The sandbox's HTTP surface (§2): enlistment, JWKS, chat, media, and the control API."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from bridge.gip.errors import GipError
from bridge.gip.tokens import jwks_document
from bridge.gip.transport import CHAT_PATH

from .chat import chat_handler
from .control import authorized, routes
from .gatekeeper import Gatekeeper

MAX_FORM_BYTES = 16 * 1024


def make_app(gatekeeper: Gatekeeper) -> web.Application:
    app = web.Application(client_max_size=gatekeeper.config.policies.max_file_bytes + 1024)
    gk = gatekeeper

    async def enlist(request: web.Request) -> web.Response:
        if (request.content_length or 0) > MAX_FORM_BYTES:
            return web.json_response({"status": "fail", "reason": "bad_token"})
        form = await request.post()
        body = await gk.enlist({k: v for k, v in form.items() if isinstance(v, str)})
        return web.json_response(body)

    async def jwks(request: web.Request) -> web.Response:
        return web.json_response(jwks_document([gk.signing_key]))

    async def chat(request: web.Request) -> web.StreamResponse:
        return await chat_handler(gk, request)

    async def download_native_media(request: web.Request) -> web.StreamResponse:
        """``GET /v/t{ref}``: Partner clients fetch native media (an encrypted blob)."""
        row = gk.store.media(request.match_info["ref"])
        if row is None or not Path(row["path"]).exists():
            return web.Response(status=404)
        rate = gk.faults.media_bytes_per_second
        if not rate:
            return web.FileResponse(row["path"], headers={"Content-Type": "application/octet-stream"})
        # A slow network, injected: the blob trickles out at the given rate.
        path = Path(row["path"])
        response = web.StreamResponse(
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(path.stat().st_size)}
        )
        await response.prepare(request)
        step = max(1, rate // 10)
        with path.open("rb") as source:
            while chunk := source.read(step):
                await response.write(chunk)
                await asyncio.sleep(0.1)
        await response.write_eof()
        return response

    async def upload_native_media(request: web.Request) -> web.Response:
        """``POST /upload``: sandbox natives upload encrypted media (control token)."""
        if not authorized(gk, request):
            return web.json_response({"error": "401"}, status=401)
        owner = request.query.get("owner", "")
        blob = await request.read()
        return web.json_response({"direct_path": await gk.store_native_media(owner, blob)})

    async def proxy_partner_media(request: web.Request) -> web.StreamResponse:
        """``GET /interop/download/{integrator}/{ref}/``: what a native client fetches,
        streamed from the Partner."""
        if not authorized(gk, request):
            return web.Response(status=401)
        chunks = gk.partner_media_chunks(request.path)
        try:
            first = await anext(chunks, b"")
        except GipError:
            return web.Response(status=404)
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        await response.write(first)
        async for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
        return response

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "profile": gk.config.profile, "name": gk.config.name})

    async def on_shutdown(app: web.Application) -> None:
        await gk.disconnect_all()

    app.on_shutdown.append(on_shutdown)
    app.add_routes(
        [
            web.post("/3p/interop_reg", enlist),
            web.get("/.well-known/jwks", jwks),
            web.get(CHAT_PATH, chat),
            web.get(r"/v/t{ref:[A-Za-z0-9_\-]+}", download_native_media),
            web.post("/upload", upload_native_media),
            web.get("/interop/download/{integrator}/{ref}/", proxy_partner_media),
            web.get("/_sandbox/health", health),
            *routes(gk),
        ]
    )
    return app
