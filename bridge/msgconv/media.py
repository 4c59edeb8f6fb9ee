"""Matrix media events ⇄ GIP media contents, pure: no files, no network.

Matrix → GIP: :func:`matrix_media` reads what a Matrix event asks to send (where the
file is, what the client said about it); the core fetches and prepares the file, then
:func:`outgoing_media` builds the Content from what it made. GIP → Matrix:
:func:`matrix_media_content` builds the event content from the fetched file's facts.

Captions follow MSC2530: when an event carries a ``filename`` that differs from its
``body``, the body is a caption.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bridge.gip.content import Content, ContextInfo, Media

from .convert import MAX_TEXT, MEDIA_KINDS, Outgoing, Unsupported
from .formatting import html_to_markup, markup_to_html

# Matrix msgtype (or m.sticker, the event type) → the Content field that carries it.
KIND_OF_MSGTYPE = {
    "m.image": "image",
    "m.sticker": "image",
    "m.video": "video",
    "m.audio": "audio",
    "m.file": "document",
}
MSGTYPE_OF_KIND = {"image": "m.image", "video": "m.video", "audio": "m.audio", "document": "m.file"}
KINDS = MEDIA_KINDS
WAVEFORM_SAMPLES = 64
MSC1767_WAVEFORM_MAX = 1024
VOICE = "org.matrix.msc3245.voice"
AUDIO_EXTRA = "org.matrix.msc1767.audio"
KIND_NAMES = {"image": "photo", "video": "video", "audio": "audio message", "document": "file"}
# A Matrix event is at most 64 KiB: what a peer sends is cut to fit, with a mark.
MAX_CAPTION = 8000
MAX_FILE_NAME = 255


@dataclass(frozen=True)
class MatrixMedia:
    """What one Matrix media event asks the bridge to send."""

    kind: str  # image, video, audio, document
    url: str  # mxc://
    file: dict[str, Any] | None = field(repr=False)  # the EncryptedFile, in encrypted rooms
    mimetype: str | None
    size: int | None
    file_name: str
    caption: str  # WhatsApp markup
    voice: bool
    duration_ms: int | None
    waveform: tuple[int, ...] | None  # MSC1767: 0..1024 each
    width: int | None
    height: int | None


def is_media(content: dict[str, Any]) -> bool:
    return content.get("msgtype") in KIND_OF_MSGTYPE


def _positive_int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else None


def matrix_media(content: dict[str, Any]) -> MatrixMedia:
    """Read a media event's content; :class:`Unsupported` when it cannot be sent."""
    msgtype = content.get("msgtype")
    kind = KIND_OF_MSGTYPE.get(str(msgtype))
    if kind is None:
        raise Unsupported("com.beeper.unsupported_event", f"The gatekeeper cannot carry {msgtype} messages.")
    file = content.get("file")
    if isinstance(file, dict):
        url = file.get("url")
    else:
        file, url = None, content.get("url")
    if not isinstance(url, str) or not url.startswith("mxc://"):
        raise Unsupported("m.event_not_handled", "The message has no file to send.")
    info = content.get("info") if isinstance(content.get("info"), dict) else {}
    body = content.get("body") if isinstance(content.get("body"), str) else ""
    filename = content.get("filename") if isinstance(content.get("filename"), str) else None
    caption = ""
    if filename and filename != body:
        if content.get("format") == "org.matrix.custom.html" and isinstance(content.get("formatted_body"), str):
            caption = html_to_markup(content["formatted_body"])
        else:
            caption = body
    if len(caption) > MAX_TEXT:
        raise Unsupported("com.beeper.unsupported_event", "The caption is too long for the gatekeeper.")
    file_name = _cut((filename or body).strip(), MAX_FILE_NAME)
    audio = content.get(AUDIO_EXTRA) if isinstance(content.get(AUDIO_EXTRA), dict) else {}
    voice = kind == "audio" and (VOICE in content or "org.matrix.msc2516.voice" in content)
    raw_wave = audio.get("waveform")
    waveform = None
    if isinstance(raw_wave, list) and raw_wave and all(isinstance(v, int | float) for v in raw_wave):
        waveform = tuple(max(0, min(MSC1767_WAVEFORM_MAX, int(v))) for v in raw_wave)
    mimetype = info.get("mimetype") if isinstance(info.get("mimetype"), str) else None
    if file is not None and isinstance(file.get("mimetype"), str) and not mimetype:
        mimetype = file["mimetype"]
    return MatrixMedia(
        kind=kind,
        url=url,
        file=file,
        mimetype=mimetype,
        size=_positive_int(info.get("size")),
        file_name=file_name or _default_name(kind, mimetype),
        caption=caption.strip(),
        voice=voice,
        duration_ms=_positive_int(audio.get("duration")) or _positive_int(info.get("duration")),
        waveform=waveform,
        width=_positive_int(info.get("w")),
        height=_positive_int(info.get("h")),
    )


def resample(values: Sequence[int], count: int = WAVEFORM_SAMPLES) -> list[int]:
    """``count`` values from any number: the largest of each stretch (zeros from none)."""
    if not values:
        return [0] * count
    out = []
    for i in range(count):
        start = i * len(values) // count
        end = max((i + 1) * len(values) // count, start + 1)
        out.append(max(values[start:end]))
    return out


def waveform_to_gip(samples: Sequence[int], count: int = WAVEFORM_SAMPLES) -> bytes:
    """MSC1767's waveform (any number of values, 0..1024) as GIP's 64 bytes of 0..100."""
    return bytes(min(100, round(value * 100 / MSC1767_WAVEFORM_MAX)) for value in resample(samples, count))


def waveform_to_matrix(data: bytes) -> list[int]:
    """GIP's bars (64 of 0..100; a peer may send another count) as MSC1767's 0..1024."""
    bars = list(data) if len(data) == WAVEFORM_SAMPLES else resample(list(data))
    return [round(min(value, 100) * MSC1767_WAVEFORM_MAX / 100) for value in bars]


@dataclass(frozen=True)
class PreparedMedia:
    """What the bridge made of a Matrix file, ready to describe in a Content."""

    kind: str
    mimetype: str
    file_name: str
    caption: str
    width: int = 0
    height: int = 0
    seconds: int = 0
    jpeg_thumbnail: bytes = field(default=b"", repr=False)
    ptt: bool = False
    waveform: bytes = b""


def outgoing_media(prepared: PreparedMedia, uploaded: Media, *, reply_to: str | None) -> Outgoing:
    """The Content for a file the gatekeeper side has stored (``uploaded`` carries where it
    is and how it is encrypted)."""
    media = Media()
    media.CopyFrom(uploaded)
    media.mimetype = prepared.mimetype
    media.caption = prepared.caption
    media.width = prepared.width
    media.height = prepared.height
    media.seconds = prepared.seconds
    if prepared.kind == "document" or (prepared.kind == "audio" and not prepared.ptt):
        media.file_name = prepared.file_name
    media.jpeg_thumbnail = prepared.jpeg_thumbnail
    media.ptt = prepared.ptt
    media.waveform = prepared.waveform
    if reply_to is not None:
        media.context_info.CopyFrom(ContextInfo(stanza_id=reply_to))
    content = Content()
    getattr(content, prepared.kind).CopyFrom(media)
    return Outgoing(content, "media")


def media_of(content: Content) -> tuple[str, Media] | None:
    """(kind, Media) of a media Content, or None."""
    kind = content.WhichOneof("body")
    return (kind, getattr(content, kind)) if kind in KINDS else None


@dataclass(frozen=True)
class FetchedMedia:
    """The facts of a file fetched from the gatekeeper and uploaded to the homeserver."""

    source: dict[str, Any] = field(repr=False)  # {"url": mxc} or {"file": EncryptedFile}
    mimetype: str
    size: int
    width: int | None = None
    height: int | None = None
    duration_ms: int | None = None
    waveform: bytes | None = None
    thumbnail: dict[str, Any] | None = field(default=None, repr=False)  # source keys plus "info"


def _default_name(kind: str, mimetype: str | None) -> str:
    base = {"image": "image", "video": "video", "audio": "audio", "document": "file"}[kind]
    extension = mimetypes.guess_extension(mimetype.split(";")[0].strip()) if mimetype else None
    return base + (extension or "")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def matrix_media_content(kind: str, media: Media, fetched: FetchedMedia) -> dict[str, Any]:
    """The Matrix event content for a GIP media message, with full ``info``."""
    file_name = _cut(media.file_name.replace("/", "_"), MAX_FILE_NAME) or _default_name(kind, fetched.mimetype)
    if kind == "audio" and media.ptt and not media.file_name:
        file_name = "Voice message.ogg"
    info: dict[str, Any] = {"mimetype": fetched.mimetype, "size": fetched.size}
    if fetched.width and fetched.height:
        info.update(w=fetched.width, h=fetched.height)
    if fetched.duration_ms:
        info["duration"] = fetched.duration_ms
    if fetched.thumbnail is not None:
        thumbnail = dict(fetched.thumbnail)
        info["thumbnail_info"] = thumbnail.pop("info")
        if "file" in thumbnail:
            info["thumbnail_file"] = thumbnail["file"]
        else:
            info["thumbnail_url"] = thumbnail["url"]
    content: dict[str, Any] = {"msgtype": MSGTYPE_OF_KIND[kind], "body": file_name, "info": info}
    if media.caption:
        caption = _cut(media.caption, MAX_CAPTION)
        content.update(body=caption, filename=file_name)
        formatted = markup_to_html(caption)
        if formatted is not None:
            content.update(format="org.matrix.custom.html", formatted_body=formatted)
    elif kind == "document":
        content["filename"] = file_name
    content.update(fetched.source)
    if kind == "audio":
        audio: dict[str, Any] = {}
        if fetched.duration_ms:
            audio["duration"] = fetched.duration_ms
        if media.ptt:
            content[VOICE] = {}
            wave = bytes(media.waveform) or fetched.waveform
            if wave:
                audio["waveform"] = waveform_to_matrix(wave)
        if audio:
            content[AUDIO_EXTRA] = audio
    return content
