"""What the core needs from Matrix; ``bridge.matrix`` implements it with mautrix.

Posting is idempotent: every call that creates an event takes a transaction id derived
from the stored item it comes from, so that a retry after a timeout or a crash gives the
same event instead of a second one. Failures are the core's: ``errors.Unavailable``
(``RetryAfter``) when the homeserver cannot take it now, ``errors.Refused`` when it
refused this event.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Protocol


class SendStatus(Enum):
    """``com.beeper.message_send_status`` statuses."""

    SUCCESS = "SUCCESS"
    PENDING = "PENDING"
    FAIL_RETRIABLE = "FAIL_RETRIABLE"
    FAIL_PERMANENT = "FAIL_PERMANENT"


@dataclass(frozen=True)
class StatusReport:
    status: SendStatus
    reason: str | None = None  # machine-readable, e.g. m.event_not_handled
    message: str | None = None  # for the user
    delivered_to: tuple[str, ...] = ()  # puppets that confirmed delivery


@dataclass(frozen=True)
class BridgeInfo:
    """The ``m.bridge`` / ``uk.half-shot.bridge`` state of a portal (MSC2346)."""

    state_key: str
    content: dict[str, Any]


class MatrixAPI(Protocol):
    bot_mxid: str

    async def ensure_puppet(self, mxid: str, displayname: str) -> None:
        """Register the puppet user if needed and set its display name."""
        ...

    async def create_portal(
        self, *, puppet: str, receiver: str, name: str, topic: str, info: BridgeInfo, encrypted: bool
    ) -> str:
        """A DM room made by the puppet with the receiver invited; returns its room id."""
        ...

    async def create_group_portal(
        self, *, name: str, topic: str, info: BridgeInfo, encrypted: bool, invite: list[str]
    ) -> str:
        """A group room made by the bot, the local members invited; returns its room id."""
        ...

    async def invite(self, room_id: str, mxid: str) -> None:
        """Invite a local user (the bot's invitation); nothing when already in."""
        ...

    async def join_puppet(self, room_id: str, puppet: str) -> None:
        """The puppet joins (invited by the bot first); nothing when already in."""
        ...

    async def remove_member(self, room_id: str, mxid: str, reason: str) -> None:
        """A puppet leaves, or a local user is removed (kicked by the bot)."""
        ...

    async def set_room_name(self, room_id: str, name: str) -> None: ...

    async def set_power_level(self, room_id: str, mxid: str, level: int) -> None:
        """A member's power level (a group's admins: 50, who may invite and remove)."""
        ...

    async def send_message(
        self, room_id: str, sender: str, content: dict[str, Any], *, txn_id: str, timestamp_ms: int | None = None
    ) -> str:
        """Post as ``sender`` (a puppet); ``timestamp_ms`` is when the message was sent on
        the other side (the appservice ``ts``)."""
        ...

    async def send_reaction(
        self, room_id: str, sender: str, target_event: str, key: str, *, txn_id: str, timestamp_ms: int | None = None
    ) -> str: ...

    async def redact(self, room_id: str, sender: str, event_id: str, *, txn_id: str) -> None: ...

    async def send_receipt(self, room_id: str, sender: str, event_id: str) -> None: ...

    async def set_typing(self, room_id: str, sender: str, typing: bool) -> None: ...

    async def send_notice(
        self, room_id: str, text: str, *, txn_id: str | None = None, extra: dict[str, Any] | None = None
    ) -> str:
        """A notice from the bridge bot; ``extra`` goes into its content beside the text."""
        ...

    async def send_status(
        self, room_id: str, event_id: str, report: StatusReport, *, txn_id: str | None = None
    ) -> None:
        """The message send status of a Matrix event the bridge handled."""
        ...

    async def download_media(self, url: str, file: dict[str, Any] | None, destination: Path, *, max_bytes: int) -> int:
        """Fetch ``url`` (an mxc URI) into ``destination``, streaming; with ``file`` (an
        EncryptedFile) it is decrypted on the way and appears only if its hash matched.
        Returns the size written.

        Raises:
            errors.Final: the file is gone, over ``max_bytes``, or fails its hash.
            errors.Unavailable: the homeserver cannot serve it now.
        """
        ...

    async def upload_media(self, room_id: str, path: Path, *, mimetype: str, filename: str | None) -> dict[str, Any]:
        """Upload a file for ``room_id``, streaming: ``{"url": mxc}``, or in an encrypted
        room ``{"file": EncryptedFile}`` (encrypted on the way).

        Raises:
            errors.Final: the homeserver will not take a file this large.
        """
        ...

    async def media_upload_limit(self) -> int | None:
        """The homeserver's ``m.upload.size``, if it says one."""
        ...

    async def enable_encryption(self, room_id: str) -> None:
        """Turn on Megolm encryption in a room (m.room.encryption, sent by the bot)."""
        ...

    async def leave_portal(self, room_id: str, puppet: str, receiver: str) -> None:
        """Tear a portal down: the puppet and the bot leave, the receiver is removed."""
        ...
