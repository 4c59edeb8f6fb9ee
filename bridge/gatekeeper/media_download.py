"""Peers' files, fetched from the gatekeeper (GIP §7: ``direct_path = /v/t<ref>`` on G).

The blob streams from the gatekeeper through the checks (hash, MAC, padding, plaintext
hash) into a file that appears only when all of them passed. The path comes from a peer's
message, so it is held to the gatekeeper's own host: a peer cannot make the bridge fetch
anything else.
"""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp

from bridge.gip.content import Media
from bridge.gip.errors import GipError, GipErrorCode
from bridge.gip.media import MAC_LENGTH, MediaType, decrypt_to_file, whole_chunks

# GIP §7: a native's file is at /v/t<ref> on the gatekeeper, and nowhere else.
_DIRECT_PATH = re.compile(r"^/v/t[A-Za-z0-9_-]{1,128}$")
# Slow links are fine (the deadline allows 100 KB/s); silence and a trickle are not.
MIN_RATE = 100_000


def media_url(base_url: str, direct_path: str) -> str:
    if not _DIRECT_PATH.match(direct_path):
        raise GipError(GipErrorCode.BAD_REQUEST, "the media path is not one of the gatekeeper's")
    return base_url.rstrip("/") + direct_path


async def download(http: aiohttp.ClientSession, base_url: str, kind: str, media: Media, destination: Path) -> int:
    """Fetch and decrypt one file; returns its plaintext size."""
    media_type = MediaType.of_kind(kind)
    if media.file_length > media_type.max_bytes:
        raise GipError(GipErrorCode.TOO_LARGE, "the file is over the profile's limit")
    if len(media.media_key) != 32 or len(media.file_enc_sha256) != 32:
        raise GipError(GipErrorCode.MEDIA_HASH, "the message does not say how to check the file")
    url = media_url(base_url, media.direct_path)
    timeout = aiohttp.ClientTimeout(total=60 + media.file_length / MIN_RATE, sock_connect=30, sock_read=120)
    try:
        async with http.get(url, timeout=timeout, allow_redirects=False) as response:
            if response.status in (404, 410):
                raise GipError(GipErrorCode.NOT_FOUND, f"the gatekeeper answered {response.status}")
            if response.status != 200:
                raise GipError(GipErrorCode.UNAVAILABLE, f"the gatekeeper answered {response.status}")
            if response.content_length is not None and response.content_length > media_type.max_bytes + 16 + MAC_LENGTH:
                raise GipError(GipErrorCode.TOO_LARGE, "the blob is over the profile's limit")
            return await decrypt_to_file(
                media_type,
                whole_chunks(response.content),
                destination,
                media_key=bytes(media.media_key),
                file_enc_sha256=bytes(media.file_enc_sha256),
                file_sha256=bytes(media.file_sha256) or None,
                expected_length=media.file_length or None,
            )
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise GipError(GipErrorCode.UNAVAILABLE, f"the download broke off ({type(exc).__name__})") from None
