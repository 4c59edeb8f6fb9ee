"""The Partner media store (GIP §7): encrypted blobs of our users' files, as files.

A file from Matrix is encrypted under a fresh media key straight into this directory
(``bridge.media.directory``), flushed to disk, renamed into place, and only then recorded
in ``partner_media``: a row always names a whole blob. The gatekeeper fetches it through
its proxy at ``GET /media/{ref}`` (``partner_server``); after ``keep_days`` the collector
deletes the row and the file, and files a crash left without a row.

The blobs are end-to-end encrypted already (their keys travel only inside Signal
messages), so they are stored as they are.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from bridge.db.media import PartnerMediaRow, PartnerMediaRows
from bridge.gip.errors import GipError, GipErrorCode
from bridge.gip.media import EncryptedMedia, MediaType, encrypt_file, file_chunks

log = logging.getLogger(__name__)
DAY_MS = 86_400_000
REF = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
# A file younger than this without a row may still be on its way into the store.
ORPHAN_GRACE_S = 3600.0


class PartnerMediaStore:
    def __init__(
        self,
        directory: Path,
        rows: PartnerMediaRows,
        keep_days: int = 30,
        clock: Callable[[], float] = time.time,
        quota_bytes: int | None = None,
    ) -> None:
        self.directory = directory
        self.keep_days = keep_days
        self.quota_bytes = quota_bytes
        self._rows = rows
        self._clock = clock
        directory.mkdir(parents=True, exist_ok=True)

    def _path(self, ref: str) -> Path:
        return self.directory / ref

    async def encrypt_into(self, owner: str, media_type: MediaType, source: Path) -> tuple[str, EncryptedMedia]:
        """Encrypt ``source`` into the store; returns its ref and how it was encrypted.

        Raises:
            GipError: TOO_LARGE over the profile's limit, QUOTA when the user's files
                would take more than ``quota_bytes`` (nothing is left behind).
        """
        if self.quota_bytes is not None:
            used = await self._rows.used_by(owner)
            size = source.stat().st_size
            if used + size > self.quota_bytes:
                raise GipError(
                    GipErrorCode.QUOTA,
                    f"your files waiting for the other side take {used / (1 << 20):.0f} MiB, and the bridge keeps at "
                    f"most {self.quota_bytes / (1 << 20):.0f} MiB per person for {self.keep_days} days",
                )
        ref = secrets.token_urlsafe(24)
        partial = self.directory / f"{ref}.partial"
        try:
            info = await asyncio.to_thread(self._encrypt, media_type, source, partial)
            partial.replace(self._path(ref))
            await asyncio.to_thread(self._sync_directory)  # the rename too survives a power cut
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        await self._rows.put(PartnerMediaRow(ref, owner, info.file_length, int(self._clock() * 1000)))
        return ref, info

    @staticmethod
    def _encrypt(media_type: MediaType, source: Path, destination: Path) -> EncryptedMedia:
        with destination.open("wb") as sink:
            info = encrypt_file(media_type, file_chunks(source), sink)
            sink.flush()
            os.fsync(sink.fileno())
        return info

    def _sync_directory(self) -> None:
        descriptor = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    async def blob(self, ref: str) -> Path | None:
        """The blob's file, while it is kept (not past ``keep_days``, collected or not)."""
        if not REF.match(ref):
            return None
        row = await self._rows.get(ref)
        if row is None or row.created_at < int(self._clock() * 1000) - self.keep_days * DAY_MS:
            return None
        path = self._path(ref)
        return path if path.is_file() else None

    async def collect(self, now_ms: int | None = None) -> int:
        """Delete blobs older than ``keep_days`` and files a crash left without a row."""
        now = now_ms if now_ms is not None else int(self._clock() * 1000)
        removed = 0
        while expired := await self._rows.expired(now - self.keep_days * DAY_MS):
            for ref in expired:
                self._path(ref).unlink(missing_ok=True)
            await self._rows.delete(expired)
            removed += len(expired)
        removed += await self._collect_orphans(now / 1000)
        if removed:
            log.info("media collector removed %d blobs", removed)
        return removed

    async def _collect_orphans(self, now: float) -> int:
        candidates: dict[str, Path] = {}
        for path in self.directory.iterdir():
            name = path.name.removesuffix(".partial")
            try:
                old = now - path.stat().st_mtime > ORPHAN_GRACE_S
            except FileNotFoundError:
                continue
            if old and REF.match(name):
                candidates[path.name] = path
        if not candidates:
            return 0
        complete = [name for name in candidates if not name.endswith(".partial")]
        known = await self._rows.known(complete)
        removed = 0
        for name, path in candidates.items():
            if name not in known:
                path.unlink(missing_ok=True)
                removed += 1
        return removed
