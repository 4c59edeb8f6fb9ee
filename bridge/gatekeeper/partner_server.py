"""The HTTP endpoints the gatekeeper calls on the Partner (GIP §2): our JWKS, push, media.

Push and media requests carry a bearer JWT signed by the gatekeeper; it is verified
against the gatekeeper's JWKS (cached, refetched on an unknown ``kid``) for issuer,
audience (our integrator id) and a lifetime of at most an hour.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from bridge.gip.errors import GipError
from bridge.gip.tokens import (
    GATEKEEPER_TOKEN_MAX_TTL,
    JwksFetcher,
    JwksUnavailableError,
    SigningKey,
    jwks_document,
)

from .media_store import PartnerMediaStore

log = logging.getLogger(__name__)
JWKS_PATH = "/.well-known/oauth/openid/jwks"
MAX_PUSH_BODY = 4096

PushHandler = Callable[[str], Awaitable[None]]


class PartnerServer:
    def __init__(
        self,
        *,
        signing_key: SigningKey,
        gatekeeper_jwks: JwksFetcher,
        gatekeeper_name: str,
        integrator_id: str,
        media: PartnerMediaStore,
        on_push: PushHandler,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._signing_key = signing_key
        self._jwks = gatekeeper_jwks
        self._issuer = gatekeeper_name
        self._audience = integrator_id
        self._media = media
        self._on_push = on_push
        self._clock = clock

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(JWKS_PATH, self._jwks_document),
            web.post("/push", self._push),
            web.get("/media/{ref}", self._media_blob),
        ]

    async def _jwks_document(self, request: web.Request) -> web.Response:
        return web.json_response(jwks_document([self._signing_key]))

    async def _refusal(self, request: web.Request) -> web.Response | None:
        """None for a request the gatekeeper signed; else the answer: 401, or 503 when its
        keys cannot be fetched (the gatekeeper tries again; nothing is judged meanwhile)."""
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return web.Response(status=401)
        try:
            await self._jwks.verify(
                header.removeprefix("Bearer "),
                issuer=self._issuer,
                audience=self._audience,
                max_ttl=GATEKEEPER_TOKEN_MAX_TTL,
                now=self._clock(),
            )
        except JwksUnavailableError as exc:
            log.warning("could not judge a gatekeeper request: %s", exc.text)
            return web.Response(status=503, headers={"Retry-After": "30"})
        except GipError as exc:
            log.warning("refused a gatekeeper request: %s", exc.text)
            return web.Response(status=401)
        return None

    async def _push(self, request: web.Request) -> web.Response:
        if (refusal := await self._refusal(request)) is not None:
            return refusal
        if (request.content_length or 0) > MAX_PUSH_BODY:
            return web.Response(status=413)
        try:
            body = await request.json()
            uvid = body["to"]
        except (ValueError, KeyError, TypeError):
            return web.Response(status=400)
        if not isinstance(uvid, str):
            return web.Response(status=400)
        await self._on_push(uvid)
        return web.Response(status=200)

    async def _media_blob(self, request: web.Request) -> web.StreamResponse:
        if (refusal := await self._refusal(request)) is not None:
            return refusal
        path = await self._media.blob(request.match_info["ref"])
        if path is None:
            return web.Response(status=404)  # never stored, or expired and collected
        # Streamed from the file (sendfile where the platform has it), never read whole.
        return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})
