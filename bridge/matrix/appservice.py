"""mautrix's appservice with the bridge's own transaction endpoint.

mautrix answers 200 after a failing handler and keeps the transaction ids it saw in a
set in memory: an event whose handler raised is acknowledged and lost, and after a
restart a resent transaction is handled twice. Here a transaction is stored before the
homeserver hears 200 (``MatrixIntake``), a storage failure answers 500 so that the
homeserver sends it again, and the dedupe is the store's. The homeserver's token is
compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from mautrix.appservice import AppService

log = logging.getLogger(__name__)
TransactionSink = Callable[[str, dict[str, Any]], Awaitable[None]]
MAX_TRANSACTION = 64 * 1024 * 1024


def _json_error(status: int, errcode: str, error: str) -> web.Response:
    return web.json_response({"errcode": errcode, "error": error}, status=status)


StateSource = Callable[[str], Awaitable[dict[str, Any]]]


class BridgeAppService(AppService):
    transaction_sink: TransactionSink | None = None
    state_source: StateSource | None = None

    def add_state_route(self) -> None:
        """``/_matrix/app/com.beeper.bridge_state?user_id=…`` (GET or POST, the homeserver's
        token): the bridge's state and the user's login state, as mautrix bridges serve it."""
        path = "/_matrix/app/com.beeper.bridge_state"
        self.app.router.add_route("GET", path, self._http_bridge_state)
        self.app.router.add_route("POST", path, self._http_bridge_state)

    async def _http_bridge_state(self, request: web.Request) -> web.Response:
        if not self._check_token(request):
            return _json_error(401, "M_UNKNOWN_TOKEN", "Invalid auth token")
        user_id = request.rel_url.query.get("user_id", "")
        if not user_id.startswith("@") or ":" not in user_id:
            return _json_error(400, "M_INVALID_PARAM", "user_id must be a Matrix user ID")
        if self.state_source is None:
            return _json_error(503, "M_UNKNOWN", "The bridge is starting")
        return web.json_response(await self.state_source(user_id))

    def _check_token(self, request: web.Request) -> bool:
        token = request.rel_url.query.get("access_token")
        if token is None:
            header = request.headers.get("Authorization", "")
            if not header.startswith("Bearer "):
                return False
            token = header.removeprefix("Bearer ")
        return hmac.compare_digest(token.encode(), self.hs_token.encode())

    async def _http_handle_transaction(self, request: web.Request) -> web.Response:
        if not self._check_token(request):
            return _json_error(401, "M_UNKNOWN_TOKEN", "Invalid auth token")
        if request.content_length is not None and request.content_length > MAX_TRANSACTION:
            return _json_error(413, "M_TOO_LARGE", "Transaction too large")
        raw = await request.read()
        try:
            data = json.loads(raw)
        except ValueError:
            return _json_error(400, "M_NOT_JSON", "Body is not JSON")
        if not isinstance(data, dict) or not isinstance(data.get("events", []), list):
            return _json_error(400, "M_BAD_JSON", "Missing events list")
        # A homeserver whose database was reset counts its transactions from 1 again: the
        # body's digest keeps a new transaction from passing for an old one.
        key = f"{request.match_info['transaction_id']}/{hashlib.sha256(raw).hexdigest()[:16]}"
        if self.transaction_sink is None:
            return _json_error(503, "M_UNKNOWN", "The bridge is starting")
        try:
            await self.transaction_sink(key, data)
        except Exception:
            # Nothing was acknowledged: the homeserver sends the transaction again.
            log.exception("could not store transaction %s", request.match_info["transaction_id"])
            return _json_error(500, "M_UNKNOWN", "Could not store the transaction")
        return web.json_response({})
