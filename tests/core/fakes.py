"""In-memory stand-ins for the two sides of the core, recording what they were asked to do
(as maubot's test bot records what it sends), with failures that tests inject.

They keep the contracts the real sides keep: the Matrix one gives the same event for the
same transaction id (as a homeserver does), the gatekeeper one shows an id to the peer
once (as the gatekeeper does) and hands a prepared message over through ``persist``.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.core.errors import Final, Unavailable
from bridge.core.gatekeeper_api import Persist
from bridge.core.matrix_api import BridgeInfo, StatusReport
from bridge.db.logins import Login
from bridge.gip.content import Content, Media
from bridge.gip.errors import GipError, GipErrorCode
from bridge.signal import PublicKey


@dataclass
class Faults:
    """Failures to raise on the next calls of a method: a list per method name."""

    queued: dict[str, list[BaseException]] = field(default_factory=dict)

    def add(self, method: str, *errors: BaseException) -> None:
        self.queued.setdefault(method, []).extend(errors)

    def check(self, method: str) -> None:
        errors = self.queued.get(method)
        if errors:
            raise errors.pop(0)


class RecordingMatrix:
    bot_mxid = "@bot:test"

    def __init__(self) -> None:
        self.faults = Faults()
        self._ids = itertools.count(1)
        self._by_txn: dict[str, str] = {}
        self.posts: list[dict[str, Any]] = []  # every event made, once per transaction id
        self.statuses: list[tuple[str, StatusReport]] = []
        self.notices: list[tuple[str, str]] = []
        self.receipts: list[tuple[str, str, str]] = []
        self.typing: list[tuple[str, str, bool]] = []
        self.rooms: list[str] = []
        self.puppets: dict[str, str] = {}
        self.media: dict[str, bytes] = {}  # mxc → what the homeserver serves
        self.uploads: list[dict[str, Any]] = []
        self.upload_limit: int | None = None
        self.changed = asyncio.Event()

    def _event(self, txn_id: str | None, record: dict[str, Any]) -> str:
        if txn_id is not None and txn_id in self._by_txn:
            return self._by_txn[txn_id]  # the homeserver's transaction dedupe
        event_id = f"$ev{next(self._ids)}"
        if txn_id is not None:
            self._by_txn[txn_id] = event_id
        self.posts.append({**record, "event_id": event_id, "txn_id": txn_id})
        self.changed.set()
        return event_id

    def bodies(self, room_id: str | None = None) -> list[str]:
        return [
            p["content"].get("body", "")
            for p in self.posts
            if p["kind"] == "message" and (room_id is None or p["room_id"] == room_id)
        ]

    async def ensure_puppet(self, mxid: str, displayname: str) -> None:
        self.faults.check("ensure_puppet")
        self.puppets[mxid] = displayname

    async def create_portal(
        self, *, puppet: str, receiver: str, name: str, topic: str, info: BridgeInfo, encrypted: bool
    ) -> str:
        self.faults.check("create_portal")
        room_id = f"!room{len(self.rooms) + 1}:test"
        self.rooms.append(room_id)
        return room_id

    async def send_message(
        self, room_id: str, sender: str, content: dict[str, Any], *, txn_id: str, timestamp_ms: int | None = None
    ) -> str:
        self.faults.check("send_message")
        record = {"kind": "message", "room_id": room_id, "sender": sender, "content": content, "ts": timestamp_ms}
        return self._event(txn_id, record)

    async def send_reaction(
        self, room_id: str, sender: str, target_event: str, key: str, *, txn_id: str, timestamp_ms: int | None = None
    ) -> str:
        self.faults.check("send_reaction")
        record = {"kind": "reaction", "room_id": room_id, "target": target_event, "key": key, "ts": timestamp_ms}
        return self._event(txn_id, record)

    async def redact(self, room_id: str, sender: str, event_id: str, *, txn_id: str) -> None:
        self.faults.check("redact")
        self._event(txn_id, {"kind": "redaction", "room_id": room_id, "redacts": event_id})

    async def send_receipt(self, room_id: str, sender: str, event_id: str) -> None:
        self.faults.check("send_receipt")
        self.receipts.append((room_id, sender, event_id))
        self.changed.set()

    async def set_typing(self, room_id: str, sender: str, typing: bool) -> None:
        self.typing.append((room_id, sender, typing))

    async def send_notice(
        self, room_id: str, text: str, *, txn_id: str | None = None, extra: dict[str, Any] | None = None
    ) -> str:
        self.faults.check("send_notice")
        if txn_id is None or txn_id not in self._by_txn:
            self.notices.append((room_id, text))
        content = {"body": text, **(extra or {})}
        return self._event(txn_id, {"kind": "notice", "room_id": room_id, "content": content})

    async def send_status(
        self, room_id: str, event_id: str, report: StatusReport, *, txn_id: str | None = None
    ) -> None:
        self.faults.check("send_status")
        self.statuses.append((event_id, report))
        self.changed.set()

    async def download_media(self, url: str, file: dict[str, Any] | None, destination: Path, *, max_bytes: int) -> int:
        self.faults.check("download_media")
        data = self.media.get(url)
        if data is None:
            raise Final("M_NOT_FOUND", "the file is no longer on the homeserver")
        if len(data) > max_bytes:
            raise Final("M_TOO_LARGE", "the file is over the limit")
        destination.write_bytes(data)
        return len(data)

    async def upload_media(self, room_id: str, path: Path, *, mimetype: str, filename: str | None) -> dict[str, Any]:
        self.faults.check("upload_media")
        url = f"mxc://test/{len(self.uploads) + 1}"
        self.uploads.append({"url": url, "data": path.read_bytes(), "mimetype": mimetype, "filename": filename})
        return {"url": url}

    async def media_upload_limit(self) -> int | None:
        return self.upload_limit

    async def enable_encryption(self, room_id: str) -> None:
        return None

    async def leave_portal(self, room_id: str, puppet: str, receiver: str) -> None:
        return None


@dataclass
class Sent:
    mxid: str
    prepared: bytes
    message_id: str
    text: str


class RecordingGatekeeper:
    def __init__(self) -> None:
        self.faults = Faults()
        self.online: set[str] = set()
        self.prepared: list[tuple[str, bytes]] = []
        self.attempts: list[Sent] = []  # every send, including refused ones
        self.delivered: list[Sent] = []  # what the peer got: each message id once
        self.reads: list[tuple[str, str, list[str]]] = []
        self.typing: list[tuple[str, str, bool]] = []
        self._preparations = itertools.count(1)
        self.uploads: list[tuple[str, bytes]] = []  # (kind, plaintext) stored for the peer
        self.files: dict[str, bytes] = {}  # direct path → the peer's plaintext
        self.downloads = 0
        self.changed = asyncio.Event()

    def connected(self, mxid: str) -> bool:
        return mxid in self.online

    async def prepare(
        self, mxid: str, peer: str, message_id: str, message_type: str, content: Content, persist: Persist
    ) -> bytes:
        self.faults.check("prepare")
        # A fresh "ciphertext" every time: a resend that reused none would show.
        prepared = json.dumps({"id": message_id, "peer": peer, "n": next(self._preparations)}).encode()
        await persist(prepared)
        self.prepared.append((message_id, prepared))
        return prepared

    async def send(self, mxid: str, prepared: bytes, content: Content, persist: Persist) -> None:
        if mxid not in self.online:
            raise GipError(GipErrorCode.CLOSED, "not connected")
        message_id = json.loads(prepared)["id"]
        sent = Sent(mxid, prepared, message_id, content.text or content.WhichOneof("body") or "")
        self.attempts.append(sent)
        self.faults.check("send")
        if all(d.message_id != message_id for d in self.delivered):
            self.delivered.append(sent)
        self.changed.set()

    async def upload_media(self, mxid: str, kind: str, source: Path) -> Media:
        self.faults.check("upload_media")
        data = source.read_bytes()
        self.uploads.append((kind, data))
        return Media(
            direct_path=f"/interop/download/test/{len(self.uploads)}/",
            media_key=bytes(32),
            file_sha256=hashlib.sha256(data).digest(),
            file_enc_sha256=bytes(32),
            file_length=len(data),
        )

    async def download_media(self, mxid: str, kind: str, media: Media, destination: Path) -> int:
        self.downloads += 1
        self.faults.check("download_media")
        data = self.files[media.direct_path]
        destination.write_bytes(data)
        return len(data)

    async def send_read(self, mxid: str, peer: str, message_ids: list[str]) -> None:
        self.reads.append((mxid, peer, message_ids))

    async def send_typing(self, mxid: str, peer: str, composing: bool) -> None:
        self.typing.append((mxid, peer, composing))

    async def enlist(self, login: Login) -> str:
        raise Unavailable("no enlistment in these tests")

    def connect(self, login: Login) -> None:
        self.online.add(login.mxid)

    async def disconnect(self, mxid: str) -> None:
        self.online.discard(mxid)

    async def lookup(self, mxid: str, uvid: str) -> str:
        return "9@native"

    async def set_blocked(self, mxid: str, peer: str, blocked: bool) -> None:
        return None

    async def opt_out(self, mxid: str) -> None:
        return None

    async def peer_identity(self, mxid: str, peer: str) -> PublicKey | None:
        return None

    def forget(self, mxid: str) -> None:
        return None
