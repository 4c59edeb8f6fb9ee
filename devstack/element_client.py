"""Drives the Element-stack peer (devstack/element/peer.mjs) over JSON lines.

The peer is matrix-js-sdk 37.5.0 with its Rust crypto (matrix-sdk-crypto-wasm): what Element
Web runs. :class:`ElementUser` offers the same methods as the integration tests' mautrix
user, so the same conversation helpers drive either.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devstack.node import node
from devstack.waits import WaitsForEvents

PEER_DIR = Path(__file__).parent / "element"


def peer_available() -> bool:
    return node() is not None and (PEER_DIR / "node_modules" / "matrix-js-sdk").is_dir()


class PeerError(Exception):
    pass


class ElementPeer:
    """One Node process holding any number of named clients (devices)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()

    @classmethod
    async def start(cls, log: Path | None = None) -> ElementPeer:
        """The peer; what it says on stderr (matrix-js-sdk's warnings) goes to ``log`` if given."""
        errors = log.open("ab") if log is not None else None
        process = await asyncio.create_subprocess_exec(
            node() or "node",
            str(PEER_DIR / "peer.mjs"),
            cwd=PEER_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=errors,
            limit=16 * 1024 * 1024,
        )
        if errors is not None:
            errors.close()
        return cls(process)

    async def call(self, op: str, timeout: float = 60, **kwargs: Any) -> Any:
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        async with self._lock:
            request_id = next(self._ids)
            self._process.stdin.write((json.dumps({"id": request_id, "op": op, **kwargs}) + "\n").encode())
            await self._process.stdin.drain()
            line = await asyncio.wait_for(self._process.stdout.readline(), timeout)
        if not line:
            raise PeerError(f"the Element peer exited (code {self._process.returncode})")
        answer = json.loads(line)
        assert answer["id"] == request_id
        if not answer["ok"]:
            raise PeerError(answer["error"])
        return answer["result"]

    async def login(self, name: str, base_url: str, user: str, password: str) -> ElementUser:
        result = await self.call("login", name=name, baseUrl=base_url, user=user, password=password)
        return ElementUser(self, name, result["userId"], result["deviceId"])

    async def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            await asyncio.wait_for(self._process.wait(), 10)
        except TimeoutError:
            self._process.kill()
            await self._process.wait()


class ElementUser(WaitsForEvents):
    """One device of a Matrix user, running Element's crypto."""

    def __init__(self, peer: ElementPeer, name: str, mxid: str, device_id: str) -> None:
        self.peer = peer
        self.name = name
        self.mxid = mxid
        self.device_id = device_id
        self.events: list[dict[str, Any]] = []
        self._next = 0

    async def refresh(self) -> None:
        result = await self.peer.call("events", name=self.name, since=self._next)
        self.events.extend(result["events"])
        self._next = result["next"]

    @property
    def undecryptable(self) -> list[str]:
        """Events that never decrypted (a later successful record clears an earlier failure)."""
        decrypted = {e["event_id"] for e in self.events if not e["undecryptable"]}
        return [e["event_id"] for e in self.events if e["undecryptable"] and e["event_id"] not in decrypted]

    def undecryptable_after(self, timestamp_ms: int) -> list[str]:
        late = {e["event_id"] for e in self.events if e["origin_server_ts"] > timestamp_ms}
        return [event_id for event_id in self.undecryptable if event_id in late]

    async def mark(self) -> int:
        """A position in what this device has seen: ``wait_for(..., after=mark)`` looks
        only at what comes later (an earlier run's notices stay out of it)."""
        await self.refresh()
        return len(self.events)

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20, after: int = 0
    ) -> dict[str, Any]:
        async def find() -> dict[str, Any]:
            while True:
                await self.refresh()
                for event in self.events[after:]:
                    if predicate(event):
                        return event
                await asyncio.sleep(0.1)

        return await asyncio.wait_for(find(), timeout)

    async def create_dm(self, invitee: str, encrypted: bool = True) -> str:
        """A direct chat, encrypted as Element creates them by default."""
        result = await self.peer.call(
            "createRoom", name=self.name, invite=[invitee], encrypted=encrypted, isDirect=True
        )
        return result["roomId"]

    async def send(self, room_id: str, event_type: str, content: dict[str, Any]) -> str:
        return (await self.peer.call("send", name=self.name, roomId=room_id, type=event_type, content=content))[
            "eventId"
        ]

    async def say(self, room_id: str, text: str) -> str:
        return await self.send(room_id, "m.room.message", {"msgtype": "m.text", "body": text})

    async def send_file(
        self,
        room_id: str,
        path: Path,
        content: dict[str, Any],
        thumbnail: Path | None = None,
        *,
        event_type: str = "m.room.message",
        plain: bool = False,
    ) -> dict[str, str]:
        """A file as Element Web sends it: encrypted with matrix-encrypt-attachment in an
        encrypted room, uploaded, then the event (``content`` plus ``file`` or ``url``)."""
        return await self.peer.call(
            "sendFile",
            timeout=300,
            name=self.name,
            roomId=room_id,
            path=str(path),
            content=content,
            thumbnailPath=str(thumbnail) if thumbnail else None,
            eventType=event_type,
            plain=plain,
        )

    async def download(self, source: dict[str, Any], path: Path) -> dict[str, Any]:
        """Fetch (authenticated media) and decrypt a ``{"file": …}`` or ``{"url": …}`` into
        ``path``; returns its size and SHA-256."""
        return await self.peer.call(
            "download", timeout=300, name=self.name, file=source.get("file"), url=source.get("url"), path=str(path)
        )

    async def redact(self, room_id: str, event_id: str) -> str:
        return (await self.peer.call("redact", name=self.name, roomId=room_id, eventId=event_id))["eventId"]

    async def device_status(self, user_id: str, device_id: str) -> dict[str, bool]:
        """How this device sees another: known, and cross-signed by its owner."""
        return await self.peer.call("deviceStatus", name=self.name, userId=user_id, deviceId=device_id)

    async def shield(self, room_id: str, event_id: str) -> dict[str, Any]:
        """The shield Element draws next to an event: colour (0 none, 1 grey, 2 red) and reason."""
        return await self.peer.call("shield", name=self.name, roomId=room_id, eventId=event_id)

    async def read(self, room_id: str, event_id: str) -> None:
        """A read receipt (m.read) up to ``event_id``, as Element sends when the event is seen."""
        await self.peer.call("readReceipt", name=self.name, roomId=room_id, eventId=event_id)

    async def close(self) -> None:
        await self.peer.call("stop", name=self.name)

    async def log_out(self) -> None:
        """Stop and delete this device on the homeserver."""
        await self.peer.call("logout", name=self.name)
