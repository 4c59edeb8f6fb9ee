"""Encrypted events on a bridge without encryption: refused out loud, never dropped."""

from __future__ import annotations

from typing import Any

from mautrix.types import EncryptedEvent

from bridge.config import EncryptionConfig
from bridge.core.matrix_api import SendStatus, StatusReport
from bridge.matrix.encrypted_events import UNDECRYPTABLE, EncryptedEvents

EVENT = {
    "type": "m.room.encrypted",
    "room_id": "!portal:test",
    "event_id": "$secret",
    "sender": "@alice:test",
    "origin_server_ts": 1,
    "content": {
        "algorithm": "m.megolm.v1.aes-sha2",
        "ciphertext": "AwgAEnB…",
        "device_id": "ALICE",
        "sender_key": "k" * 43,
        "session_id": "s" * 43,
    },
}


class RecordingRoom:
    def __init__(self) -> None:
        self.statuses: list[tuple[str, str, StatusReport]] = []
        self.notices: list[tuple[str, str]] = []

    async def send_status(
        self, room_id: str, event_id: str, report: StatusReport, *, txn_id: str | None = None
    ) -> None:
        self.statuses.append((room_id, event_id, report))

    async def send_notice(self, room_id: str, text: str, *, txn_id: str | None = None) -> str:
        self.notices.append((room_id, text))
        return "$notice"

    async def redact_notice(self, room_id: str, event_id: str) -> None:
        raise AssertionError("nothing to redact")


async def test_without_encryption_the_sender_is_told_and_nothing_is_handled() -> None:
    room = RecordingRoom()

    def resubmit(room_id: str, event_id: str) -> None:
        raise AssertionError("nothing to bridge later")

    def spawn(coro: Any, name: str) -> None:
        raise AssertionError("nothing to wait for")

    events = EncryptedEvents(EncryptionConfig(allow=False), None, None, room, resubmit, spawn)  # type: ignore[arg-type]
    await events.start()
    assert await events.decrypt(EncryptedEvent.deserialize(EVENT)) is None, "nothing to hand on"
    [(room_id, event_id, report)] = room.statuses
    assert (room_id, event_id) == ("!portal:test", "$secret")
    assert report.status is SendStatus.FAIL_PERMANENT and report.reason == UNDECRYPTABLE
    assert "bridge.encryption" in report.message
    assert room.notices == [("!portal:test", f"⚠️ {report.message}")]
