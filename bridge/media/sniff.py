"""Mimetypes from a file's first bytes, for files a client sent without one."""

from __future__ import annotations

import mimetypes
import re
from pathlib import Path

import puremagic

GENERIC = "application/octet-stream"
_MIMETYPE = re.compile(
    r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}(; ?[a-z0-9-]+=[a-z0-9.\-\"]+)?$"
)
# What messaging clients expect for a few containers puremagic names otherwise (or not at
# all): an .m4a is audio, an Ogg file in a chat is audio.
_BY_EXTENSION = {".m4a": "audio/mp4", ".f4a": "audio/mp4", ".ogg": "audio/ogg", ".opus": "audio/ogg"}
_ALIASES = {"audio/x-m4a": "audio/mp4", "audio/x-wav": "audio/wav", "image/jpg": "image/jpeg"}


def sniff(path: Path) -> str | None:
    """The mimetype the file's magic numbers say, or None when they say nothing."""
    try:
        matches = puremagic.magic_file(str(path))
    except (puremagic.PureError, ValueError, OSError):
        return None
    if not matches:
        return None
    best = matches[0]
    extension = (best.extension or "").lower()
    if extension in _BY_EXTENSION:
        return _BY_EXTENSION[extension]
    if best.mime_type:
        return _ALIASES.get(best.mime_type, best.mime_type)
    return mimetypes.guess_type(f"file{extension}")[0]


def effective_mimetype(declared: str | None, path: Path) -> str:
    """What the client declared, unless it declared nothing useful; then what the bytes say."""
    declared = valid_mimetype(declared)
    if declared and base_type(declared) != GENERIC:
        return declared
    return sniff(path) or GENERIC


def base_type(mimetype: str) -> str:
    """``audio/ogg; codecs=opus`` → ``audio/ogg``."""
    return mimetype.split(";", 1)[0].strip().lower()


def valid_mimetype(value: str | None) -> str | None:
    """A sender's mimetype if it is one (``type/subtype``, an optional parameter), else None:
    it becomes a header and event content, so nothing else passes."""
    if not value:
        return None
    value = value.strip().lower()
    return value if len(value) <= 160 and _MIMETYPE.match(value) else None
