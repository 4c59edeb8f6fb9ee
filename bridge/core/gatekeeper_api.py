"""What the core needs from the gatekeeper side; ``bridge.gatekeeper.side`` implements it.

The core never sees a connection, a Signal session or a stanza: it hands over contents
and stores what it is given back (a prepared message is opaque bytes to it). Failures
are ``GipError``s, whose codes the core turns into statuses and notices.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bridge.db.logins import Login
from bridge.gip.content import Content, Media
from bridge.signal import PublicKey

# Called inside the transaction that stores the advanced Signal sessions.
Persist = Callable[[bytes], Awaitable[None]]


@dataclass(frozen=True)
class GroupMember:
    iid: str
    uvid: str
    admin: bool


@dataclass(frozen=True)
class GroupView:
    """A group as the gatekeeper holds it: its address, subject and participants."""

    jid: str
    subject: str
    members: tuple[GroupMember, ...]

    def member(self, iid: str) -> GroupMember | None:
        return next((m for m in self.members if m.iid == iid), None)


class GatekeeperAPI(Protocol):
    def connected(self, mxid: str) -> bool:
        """Whether the user's chat connection is up now (no I/O)."""
        ...

    async def prepare(
        self, mxid: str, peer: str, message_id: str, message_type: str, content: Content, persist: Persist
    ) -> bytes:
        """Encrypt ``content`` once for every device of ``peer``; ``persist`` stores the
        prepared message in the transaction that stores the advanced sessions, before this
        returns. Nothing is sent.

        Raises:
            GipError: NOT_FOUND (no device can receive), CLOSED/TIMEOUT (not connected).
        """
        ...

    async def send(self, mxid: str, prepared: bytes, content: Content, persist: Persist) -> None:
        """Send a prepared message (the same bytes on every try); returns once the
        gatekeeper stored it. New devices (a 409) get their ciphertext through ``persist``.

        Raises:
            GipError: FORBIDDEN, RATE_LIMITED (``retry_after``, also for every later send of
                the same user until it passed), CLOSED/TIMEOUT.
        """
        ...

    async def upload_media(self, mxid: str, kind: str, source: Path) -> Media:
        """Encrypt a file under a fresh media key into the Partner media store, where the
        gatekeeper fetches it; returns the Media fields that say where and how (the
        direct path, key, hashes and length). ``kind``: image, video, audio, document.

        Raises:
            GipError: TOO_LARGE over the profile's limit for ``kind``.
        """
        ...

    async def download_media(self, mxid: str, kind: str, media: Media, destination: Path) -> int:
        """Fetch a peer's file from the gatekeeper and decrypt it into ``destination``,
        which appears only once the blob's hash, its MAC and the plaintext's hash passed.

        Raises:
            GipError: MEDIA_HASH / MEDIA_MAC (damaged or tampered), NOT_FOUND (expired or
                never there), TOO_LARGE, UNAVAILABLE (the download failed; try again).
        """
        ...

    async def send_read(self, mxid: str, peer: str, message_ids: list[str]) -> None: ...

    async def send_typing(self, mxid: str, peer: str, composing: bool) -> None: ...

    # ------------------------------------------------------------------ groups

    async def group_view(self, mxid: str, group: str) -> GroupView:
        """The group as the gatekeeper holds it now. Raises GipError NOT_FOUND when the
        user is not in it."""
        ...

    async def create_group(self, mxid: str, subject: str, peers: list[str]) -> tuple[GroupView, list[str]]:
        """A new group with ``peers``; returns it and the peers the gatekeeper refused (403:
        not reachable)."""
        ...

    async def change_group(self, mxid: str, group: str, action: str, peers: list[str]) -> tuple[GroupView, list[str]]:
        """``add``, ``remove``, ``promote`` or ``demote``; returns the group and the peers
        refused. Raises GipError FORBIDDEN (not an admin), NOT_FOUND, NOT_ACCEPTABLE (full)."""
        ...

    async def set_group_subject(self, mxid: str, group: str, subject: str) -> GroupView:
        """Raises GipError FORBIDDEN (not allowed), NOT_FOUND, NOT_ACCEPTABLE (too long)."""
        ...

    async def send_group_read(self, mxid: str, group: str, author: str, message_ids: list[str]) -> None:
        """A read receipt for ``author``'s messages in ``group`` (§9 names the author)."""
        ...

    async def leave_group(self, mxid: str, group: str) -> None: ...

    # ------------------------------------------------------------------ for the commands

    async def enlist(self, login: Login) -> str:
        """Enlist a stored login at the gatekeeper; returns its IID (recorded)."""
        ...

    def connect(self, login: Login) -> None:
        """Start (or wake) the user's supervised connection."""
        ...

    async def disconnect(self, mxid: str) -> None: ...

    async def lookup(self, mxid: str, uvid: str) -> str:
        """The IID behind a UVID, if the person can be reached."""
        ...

    async def set_blocked(self, mxid: str, peer: str, blocked: bool) -> None: ...

    async def opt_out(self, mxid: str) -> None:
        """Delete the enlistment at the gatekeeper (the caller erases the local data)."""
        ...

    async def peer_identity(self, mxid: str, peer: str) -> PublicKey | None:
        """The identity key of ``peer``'s primary device as our sessions know it."""
        ...

    def forget(self, mxid: str) -> None:
        """Drop whatever the gatekeeper side keeps in memory for a login that is gone."""
        ...
