"""The chat channel's transport (§3, ours): WebSocket binary frames, one Noise message per
frame, one stanza per transport message.

Both sides are here: :func:`client_handshake` for Partner clients and
:func:`server_handshake` for the gatekeeper. The third handshake message carries the
client's JSON payload ``{"v", "login", "token", "client_ip"}``.
"""

from __future__ import annotations

import contextlib
import hmac
import json
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from .errors import GipError, GipErrorCode
from .noise import TRANSPORT_MAX, StaticKey, TransportState, XXHandshake
from .stanza import Node, decode, encode
from .stanzas import stream_error

PROTOCOL_VERSION = 1
CHAT_PATH = "/chat"
# aiohttp refuses larger frames itself; ours are checked against TRANSPORT_MAX below so
# that an oversized stanza is answered with a stream error before closing.
WS_MAX_MESSAGE = 4 << 20
HANDSHAKE_TIMEOUT = 10


class _WebSocket(Protocol):
    async def send_bytes(self, data: bytes) -> None: ...

    async def receive(self, timeout: float | None = None) -> aiohttp.WSMessage: ...

    async def close(self, *, code: int = ..., message: bytes = ...) -> bool: ...

    @property
    def closed(self) -> bool: ...


async def _receive_frame(ws: _WebSocket, timeout: float | None = None) -> bytes:
    message = await ws.receive(timeout=timeout)
    if message.type == aiohttp.WSMsgType.BINARY:
        return message.data
    if message.type in (
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSMsgType.CLOSING,
        aiohttp.WSMsgType.CLOSED,
    ):
        raise GipError(GipErrorCode.CLOSED, "connection closed")
    if message.type == aiohttp.WSMsgType.ERROR:
        raise GipError(GipErrorCode.CLOSED, "connection failed")
    raise GipError(GipErrorCode.BAD_REQUEST, "expected a binary frame")


class NoiseChannel:
    """Sends and receives stanzas over an established Noise session."""

    def __init__(self, ws: _WebSocket, state: TransportState) -> None:
        self._ws = ws
        self._state = state

    @property
    def remote_static(self) -> bytes:
        return self._state.remote_static

    @property
    def closed(self) -> bool:
        return self._ws.closed

    async def send(self, node: Node) -> None:
        await self.send_raw(encode(node))

    async def send_raw(self, stanza: bytes) -> None:
        """Encrypt and send already-encoded stanza bytes (used to forward stored stanzas)."""
        if self._ws.closed:
            raise GipError(GipErrorCode.CLOSED, "connection closed")
        await self._ws.send_bytes(self._state.encrypt(stanza))

    async def receive(self, timeout: float | None = None) -> Node:
        """The next stanza.

        Raises:
            GipError: CLOSED when the peer went away; BAD_REQUEST, TOO_LARGE or DECRYPT
                for a frame or stanza that breaks the profile (the caller then sends a
                stream error and closes).
        """
        frame = await _receive_frame(self._ws, timeout)
        if len(frame) > TRANSPORT_MAX:
            raise GipError(GipErrorCode.TOO_LARGE, "frame larger than a stanza may be")
        return decode(self._state.decrypt(frame))

    async def fail(self, code: GipErrorCode = GipErrorCode.BAD_REQUEST) -> None:
        """Send ``<stream:error>`` (best effort) and close."""
        wire = code if code.value.isdigit() else GipErrorCode.BAD_REQUEST
        if wire is GipErrorCode.TOO_LARGE:
            wire = GipErrorCode.BAD_REQUEST
        with contextlib.suppress(GipError, ConnectionError, RuntimeError):
            await self.send(stream_error(wire))
        await self.close()

    async def close(self) -> None:
        if not self._ws.closed:
            await self._ws.close()


async def client_handshake(
    ws: aiohttp.ClientWebSocketResponse,
    static: StaticKey,
    payload: dict[str, Any],
    server_static: bytes | None = None,
) -> NoiseChannel:
    """The Partner's side. With ``server_static`` (the gatekeeper's pinned key) a server
    that proves another key is refused before the third message, which carries our
    token, is sent."""
    handshake = XXHandshake(initiator=True, static=static)
    await ws.send_bytes(handshake.write())
    handshake.read(await _receive_frame(ws, HANDSHAKE_TIMEOUT))
    if server_static is not None:
        proven = handshake.remote_static or b""
        if not hmac.compare_digest(proven, server_static):
            raise GipError(
                GipErrorCode.UNTRUSTED_SERVER,
                "the gatekeeper's Noise static key is not the pinned one (gatekeeper.static_key): "
                "refusing to authenticate to it",
            )
    await ws.send_bytes(handshake.write(json.dumps(payload).encode()))
    assert handshake.result is not None
    return NoiseChannel(ws, handshake.result)


async def server_handshake(ws: web.WebSocketResponse, static: StaticKey) -> tuple[NoiseChannel, dict[str, Any]]:
    handshake = XXHandshake(initiator=False, static=static)
    handshake.read(await _receive_frame(ws, HANDSHAKE_TIMEOUT))
    await ws.send_bytes(handshake.write())
    raw = handshake.read(await _receive_frame(ws, HANDSHAKE_TIMEOUT))
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise GipError(GipErrorCode.BAD_REQUEST, "handshake payload is not JSON") from None
    if not isinstance(payload, dict):
        raise GipError(GipErrorCode.BAD_REQUEST, "handshake payload must be an object")
    assert handshake.result is not None
    return NoiseChannel(ws, handshake.result), payload
