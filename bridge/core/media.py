"""Media across the boundary, both ways, in the portal's loop like any message.

Matrix → gatekeeper (:meth:`MediaFlow.outgoing`): the file is fetched from the homeserver
(decrypted when the room is encrypted), made fit for the gatekeeper (a voice note becomes
ogg/opus with its duration and waveform; images and videos get a small JPEG thumbnail and
their dimensions), encrypted under a fresh media key into the Partner media store, and
the Content that describes it goes into the outbox with the Matrix event, as text does.
A crash before that resumes from the stored Matrix event (the file is fetched again); after
it, the stored Content is sent, never a second copy.

Gatekeeper → Matrix (:meth:`MediaFlow.incoming`): the file is fetched from the gatekeeper,
checked (blob hash, MAC, plaintext hash) before anything is released, given a thumbnail
and full ``info``, uploaded (encrypted in encrypted portals), and the event is posted
under the inbox item's transaction id, so that a retry never posts twice.

Every step streams between temporary files in chunks: a 100 MiB video never sits in the
bridge's memory. Each failure ends as a status and a notice that say what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from bridge.gip.content import Media
from bridge.gip.errors import GipError, GipErrorCode
from bridge.gip.media import MAX_FILE_BYTES, MAX_IMAGE_BYTES
from bridge.media import ffmpeg
from bridge.media.errors import MediaError
from bridge.media.images import Thumbnail, image_info, jpeg_thumbnail
from bridge.media.sniff import base_type, effective_mimetype, sniff, valid_mimetype
from bridge.msgconv import media as conv
from bridge.msgconv.convert import Outgoing, Unsupported

from .errors import Final, Refused, Unavailable

if TYPE_CHECKING:
    from .bridge import BridgeCore

log = logging.getLogger(__name__)
# WhatsApp's embedded previews are tiny: what a chat list shows before the file arrives.
GIP_THUMBNAIL_SIDE = 96
# What Element shows in the timeline; larger images are scaled down to it.
MATRIX_THUMBNAIL_SIDE = 800
VOICE_MIMETYPE = "audio/ogg; codecs=opus"
# A sender's preview is a small JPEG; anything else is not drawn.
MAX_PREVIEW_BYTES = 256 * 1024
MAX_PREVIEW_PIXELS = 4096 * 4096
# Transfers at once over all portals: each holds up to two copies of a file on disk and a
# core while it is encrypted; more would only share the same disk and cores.
MAX_TRANSFERS = 4


class DownloadDelayed(Unavailable):
    """The gatekeeper cannot hand a peer's file over now (its media server is down, the
    connection broke): waited out like any outage of the other side, uncounted, and told
    to the user once. The file is kept there for 30 days; once it is gone, it is a
    ``Final`` "expired"."""

    def __init__(self, noun: str, network: str) -> None:
        super().__init__(f"the {noun} cannot be downloaded from {network} right now")
        self.noun = noun
        self.network = network


async def _first_frame(video: Path, scratch: Path, side: int, quality: int = 75) -> Thumbnail:
    """A JPEG of the video's first frame, no larger than ``side``; MediaError when ffmpeg
    cannot read the video."""
    frame = scratch / "frame.jpg"
    await ffmpeg.first_frame(video, frame)
    return await asyncio.to_thread(jpeg_thumbnail, frame, side, quality)


def limit_for(kind: str) -> int:
    return MAX_IMAGE_BYTES if kind == "image" else MAX_FILE_BYTES


def mib(size: int) -> str:
    return f"{size / (1 << 20):.0f} MiB" if size >= 1 << 20 else f"{max(1, size // 1024)} KiB"


class MediaFlow:
    def __init__(self, core: BridgeCore, temp_directory: Path | None = None) -> None:
        self.core = core
        self.temp_directory = temp_directory
        self._transfers = asyncio.Semaphore(MAX_TRANSFERS)

    @contextlib.asynccontextmanager
    async def _scratch(self) -> AsyncIterator[Path]:
        """A turn among the transfers, and a private directory for it, removed with
        everything in it."""
        async with self._transfers:
            if self.temp_directory is not None:
                self.temp_directory.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix="dma-media-", dir=self.temp_directory) as name:
                yield Path(name)

    # ------------------------------------------------------------------ Matrix → gatekeeper

    async def outgoing(self, mxid: str, content: dict[str, Any], *, reply_to: str | None) -> Outgoing:
        """The Content for a Matrix media event, its file already in the Partner store.

        Raises:
            Unsupported: the file cannot go (too large, unreadable): said to the user once.
            errors.Unavailable: the homeserver or the disk is not there now; try again.
        """
        request = conv.matrix_media(content)
        limit = limit_for(request.kind)
        noun = conv.KIND_NAMES[request.kind]
        if request.size is not None and request.size > limit:
            raise Unsupported("com.beeper.unsupported_event", self._too_large(noun, request.size, limit))
        async with self._scratch() as scratch:
            source = scratch / "source"
            try:
                size = await self.core.matrix.download_media(request.url, request.file, source, max_bytes=limit)
            except Final as exc:
                raise Unsupported("m.foreign_network_error", exc.text) from None
            log.debug("fetched a %s of %d bytes from the homeserver", request.kind, size)
            prepared, path = await self._prepare(request, source, scratch)
            final_size = path.stat().st_size
            if final_size > limit_for(prepared.kind):
                raise Unsupported("com.beeper.unsupported_event", self._too_large(noun, final_size, limit))
            try:
                uploaded = await self.core.gatekeeper.upload_media(mxid, prepared.kind, path)
            except GipError as exc:
                if exc.code is GipErrorCode.QUOTA:
                    raise Unsupported("com.beeper.unsupported_event", f"The {noun} was not sent: {exc.text}.") from None
                if exc.code is GipErrorCode.TOO_LARGE:
                    raise Unsupported(
                        "com.beeper.unsupported_event", self._too_large(noun, final_size, limit)
                    ) from None
                raise
        return conv.outgoing_media(prepared, uploaded, reply_to=reply_to)

    def _too_large(self, noun: str, size: int, limit: int) -> str:
        network = self.core.network
        return f"The {noun} is {mib(size)}; {network} takes {noun}s of at most {mib(limit)}."

    async def _prepare(self, request: conv.MatrixMedia, source: Path, scratch: Path) -> tuple[conv.PreparedMedia, Path]:
        mimetype = effective_mimetype(request.mimetype, source)
        base = {"kind": request.kind, "mimetype": mimetype, "file_name": request.file_name, "caption": request.caption}
        if request.kind == "image":
            try:
                info = await asyncio.to_thread(image_info, source)
                thumbnail = await asyncio.to_thread(jpeg_thumbnail, source, GIP_THUMBNAIL_SIDE, 60)
            except MediaError:
                # Not an image anyone can draw (SVG, HEIC, a broken file): it still goes, as a file.
                log.info("an image Pillow cannot read goes as a document")
                return conv.PreparedMedia(**{**base, "kind": "document"}), source
            if info.mimetype:
                base["mimetype"] = info.mimetype  # what the bytes are, whatever the client claimed
            return conv.PreparedMedia(
                **base, width=info.width, height=info.height, jpeg_thumbnail=thumbnail.data
            ), source
        if request.kind == "video":
            return await self._prepare_video(request, source, scratch, base), source
        if request.kind == "audio":
            return await self._prepare_audio(request, source, scratch, base)
        return conv.PreparedMedia(**base), source

    async def _prepare_video(
        self, request: conv.MatrixMedia, source: Path, scratch: Path, base: dict[str, Any]
    ) -> conv.PreparedMedia:
        width, height, duration = request.width or 0, request.height or 0, request.duration_ms or 0
        thumbnail = b""
        try:
            found = await ffmpeg.probe(source)
            width, height = found.width or width, found.height or height
            duration = found.duration_ms or duration
            thumbnail = (await _first_frame(source, scratch, GIP_THUMBNAIL_SIDE, 60)).data
        except MediaError as exc:
            # The video still goes, with what the client said about it.
            log.info("no thumbnail for a video: %s", exc.text)
        return conv.PreparedMedia(
            **base, width=width, height=height, seconds=round(duration / 1000), jpeg_thumbnail=thumbnail
        )

    async def _prepare_audio(
        self, request: conv.MatrixMedia, source: Path, scratch: Path, base: dict[str, Any]
    ) -> tuple[conv.PreparedMedia, Path]:
        if not request.voice:
            seconds = round((request.duration_ms or 0) / 1000)
            if not seconds and ffmpeg.available():
                with contextlib.suppress(MediaError):
                    seconds = round(((await ffmpeg.probe(source)).duration_ms or 0) / 1000)
            return conv.PreparedMedia(**base, seconds=seconds), source
        # A voice note is always ogg/opus on the other side, whatever the client recorded.
        try:
            found = await ffmpeg.probe(source)
            voice = source
            if not ffmpeg.is_ogg_opus(found):
                voice = scratch / "voice.ogg"
                await ffmpeg.to_ogg_opus(source, voice)
                found = await ffmpeg.probe(voice)
            if request.waveform:
                waveform = conv.waveform_to_gip(request.waveform)
            else:
                waveform = await ffmpeg.waveform(voice)
        except MediaError as exc:
            if not ffmpeg.available():
                text = f"The voice message could not be sent: {exc.text}."
                raise Unsupported("com.beeper.unsupported_event", text) from None
            raise Unsupported(
                "com.beeper.unsupported_event",
                "The voice message is not audio the bridge can play, so it was not sent.",
            ) from None
        duration = found.duration_ms or request.duration_ms or 0
        prepared = conv.PreparedMedia(
            **{**base, "mimetype": VOICE_MIMETYPE},
            seconds=max(1, round(duration / 1000)),
            ptt=True,
            waveform=waveform,
        )
        return prepared, voice

    # ------------------------------------------------------------------ gatekeeper → Matrix

    async def incoming(self, mxid: str, room_id: str, kind: str, media: Media) -> dict[str, Any]:
        """The Matrix content for a peer's media message, its file uploaded.

        Raises:
            errors.Final: never to be shown (damaged or tampered, expired, over a limit).
            errors.Refused: the download failed; counted, retried with backoff.
            errors.Unavailable: the homeserver is not there now.
        """
        noun = conv.KIND_NAMES[kind]
        network = self.core.network
        if media.file_length > limit_for(kind):
            raise Final("too_large", f"the {noun} is over the limit of {mib(limit_for(kind))}")
        homeserver_limit = await self.core.matrix.media_upload_limit()
        if homeserver_limit is not None and media.file_length > homeserver_limit:
            raise Final(
                "too_large",
                f"the {noun} is {mib(media.file_length)} and this homeserver takes files of at most "
                f"{mib(homeserver_limit)}; open it in {network}",
            )
        async with self._scratch() as scratch:
            path = scratch / "file"
            try:
                size = await self.core.gatekeeper.download_media(mxid, kind, media, path)
            except GipError as exc:
                raise self._download_failure(exc, noun) from None
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                log.info("a %s download broke off: %s", noun, type(exc).__name__)
                raise DownloadDelayed(noun, network) from None
            fetched = await self._describe(kind, media, path, scratch)
            mimetype = fetched.mimetype or valid_mimetype(media.mimetype) or sniff(path) or "application/octet-stream"
            source = await self.core.matrix.upload_media(
                room_id, path, mimetype=base_type(mimetype), filename=media.file_name or None
            )
            thumbnail = None
            if fetched.thumbnail is not None:
                thumb_path = scratch / "thumbnail.jpg"
                thumb: Thumbnail = fetched.thumbnail
                thumb_path.write_bytes(thumb.data)
                uploaded = await self.core.matrix.upload_media(
                    room_id, thumb_path, mimetype=thumb.mimetype, filename=None
                )
                info = {"mimetype": thumb.mimetype, "size": len(thumb.data), "w": thumb.width, "h": thumb.height}
                thumbnail = {**uploaded, "info": info}
        return conv.matrix_media_content(
            kind,
            media,
            conv.FetchedMedia(
                source=source,
                mimetype=mimetype,
                size=size,
                width=fetched.width,
                height=fetched.height,
                duration_ms=fetched.duration_ms,
                waveform=fetched.waveform,
                thumbnail=thumbnail,
            ),
        )

    def _download_failure(self, exc: GipError, noun: str) -> Exception:
        if exc.code in (GipErrorCode.MEDIA_HASH, GipErrorCode.MEDIA_MAC):
            log.warning("a %s failed its integrity check (%s); not posted", noun, exc.code.value)
            return Final(
                exc.code.value,
                f"the {noun} did not pass its integrity check (it was damaged or tampered with on the way), so the "
                "bridge did not post it; ask them to send it again",
            )
        if exc.code is GipErrorCode.NOT_FOUND:
            return Final("expired", f"the {noun} is no longer on {self.core.network}'s servers (files expire)")
        if exc.code is GipErrorCode.TOO_LARGE:
            return Final("too_large", f"the {noun} is larger than it said")
        if exc.code is GipErrorCode.BAD_REQUEST:
            return Final("bad_media", f"the message does not say where the {noun} is")
        if exc.code in (GipErrorCode.UNAVAILABLE, GipErrorCode.SERVER_ERROR, GipErrorCode.TIMEOUT):
            return DownloadDelayed(noun, self.core.network)
        return Refused("media_download", f"the {noun} could not be downloaded from {self.core.network}")

    async def _describe(self, kind: str, media: Media, path: Path, scratch: Path) -> _Facts:
        facts = _Facts()
        if kind == "image":
            try:
                info = await asyncio.to_thread(image_info, path)
                facts.width, facts.height, facts.mimetype = info.width, info.height, info.mimetype
                facts.thumbnail = await asyncio.to_thread(jpeg_thumbnail, path, MATRIX_THUMBNAIL_SIDE)
            except MediaError as exc:
                log.info("no thumbnail for an image: %s", exc.text)
                facts.width, facts.height = media.width or None, media.height or None
                facts.thumbnail = await self._their_thumbnail(media)
        elif kind == "video":
            facts.width, facts.height = media.width or None, media.height or None
            facts.duration_ms = media.seconds * 1000 or None
            try:
                found = await ffmpeg.probe(path)
                facts.width, facts.height = found.width or facts.width, found.height or facts.height
                facts.duration_ms = found.duration_ms or facts.duration_ms
                facts.thumbnail = await _first_frame(path, scratch, MATRIX_THUMBNAIL_SIDE)
            except MediaError as exc:
                log.info("no thumbnail made for a video: %s", exc.text)
                facts.thumbnail = await self._their_thumbnail(media)
        elif kind == "audio":
            facts.duration_ms = media.seconds * 1000 or None
            if ffmpeg.available():
                try:
                    facts.duration_ms = (await ffmpeg.probe(path)).duration_ms or facts.duration_ms
                    if media.ptt and len(media.waveform) == 0:
                        facts.waveform = await ffmpeg.waveform(path)
                except MediaError as exc:
                    log.info("could not read a voice note's length or shape: %s", exc.text)
        return facts

    async def _their_thumbnail(self, media: Media) -> Thumbnail | None:
        """The sender's own preview (a small JPEG), when the bridge cannot make one from
        the file."""
        preview = bytes(media.jpeg_thumbnail)
        if not preview.startswith(b"\xff\xd8") or len(preview) > MAX_PREVIEW_BYTES:
            return None
        try:
            return await asyncio.to_thread(jpeg_thumbnail, preview, MATRIX_THUMBNAIL_SIDE, 75, MAX_PREVIEW_PIXELS)
        except MediaError:
            return None


@dataclass
class _Facts:
    """What the bridge found out about a fetched file."""

    width: int | None = None
    height: int | None = None
    duration_ms: int | None = None
    waveform: bytes | None = None
    thumbnail: Thumbnail | None = None
    mimetype: str | None = None  # what the bytes are, where the bridge could tell
