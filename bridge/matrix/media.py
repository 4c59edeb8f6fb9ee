"""Files on the homeserver: authenticated download, streaming upload, the upload limit.

Downloads use authenticated media (``/_matrix/client/v1/media``, Matrix 1.11) and fall
back to the older ``/_matrix/media/v3`` path on homeservers that do not know it. Both
directions stream a chunk at a time between the network and a file, decrypting or
encrypting ``EncryptedFile`` attachments on the way; nothing holds a whole file.
Failures come out in the core's terms: ``Final`` (gone, too large, fails its hash),
``Unavailable``/``RetryAfter`` (the homeserver cannot now), ``Refused`` (anything else).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp

from bridge.core.errors import Final, Refused, RetryAfter, Unavailable
from bridge.core.media import mib
from bridge.gip.media import CHUNK, whole_chunks

from .attachments import AttachmentDecryptor, AttachmentEncryptor, AttachmentError

log = logging.getLogger(__name__)
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
LIMIT_TTL = 3600.0
_MXC = re.compile(r"^mxc://([A-Za-z0-9.\-:\[\]]+)/([A-Za-z0-9_\-]+)$")


def parse_mxc(url: str) -> tuple[str, str]:
    match = _MXC.match(url)
    if match is None:
        raise Final("M_INVALID_PARAM", "the file's address is not a valid mxc:// URI")
    return match.group(1), match.group(2)


async def _failure(response: aiohttp.ClientResponse, what: str) -> Exception:
    try:
        body = await response.json(content_type=None)
    except (ValueError, aiohttp.ClientError):
        body = {}
    errcode = body.get("errcode", "") if isinstance(body, dict) else ""
    if response.status == 429:
        retry_ms = body.get("retry_after_ms", 1000) if isinstance(body, dict) else 1000
        return RetryAfter(float(retry_ms) / 1000, f"the homeserver is rate limiting {what}")
    if response.status >= 500:
        return Unavailable(f"the homeserver answered {response.status} to {what}")
    if response.status == 404:
        return Final(errcode or "M_NOT_FOUND", "the file is no longer on the homeserver")
    if response.status == 413:
        return Final(errcode or "M_TOO_LARGE", "the homeserver will not take a file this large")
    return Refused(errcode or str(response.status), f"the homeserver refused {what} ({response.status} {errcode})")


class HomeserverMedia:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        as_token: str,
        bot_mxid: str,
        is_encrypted: Callable[[str], Awaitable[bool]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._auth = {"Authorization": f"Bearer {as_token}"}
        self._bot = bot_mxid
        self._is_encrypted = is_encrypted
        self._clock = clock
        self._limit: tuple[float, int | None] | None = None

    # ------------------------------------------------------------------ download

    async def download(self, url: str, file: dict[str, Any] | None, destination: Path, *, max_bytes: int) -> int:
        server, media_id = parse_mxc(url)
        try:
            decryptor = AttachmentDecryptor(file) if file is not None else None
        except AttachmentError as exc:
            raise Final("M_INVALID_PARAM", f"the file cannot be decrypted: {exc}") from None
        paths = (
            f"/_matrix/client/v1/media/download/{server}/{media_id}",
            f"/_matrix/media/v3/download/{server}/{media_id}",
        )
        try:
            for index, path in enumerate(paths):
                async with self._session.get(
                    self._base + path,
                    headers=self._auth,
                    params={"user_id": self._bot, "allow_redirect": "true"},
                    timeout=TIMEOUT,
                ) as response:
                    if response.status == 200:
                        return await self._save(response, decryptor, destination, max_bytes)
                    failure = await _failure(response, "the download")
                    older = index == 0 and (
                        response.status in (400, 405)
                        or (response.status == 404 and getattr(failure, "reason", "") == "M_UNRECOGNIZED")
                    )
                    if not older:
                        raise failure
                    log.info("the homeserver has no authenticated media; using the older download path")
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            raise Unavailable(f"the download broke off ({type(exc).__name__})") from None
        raise Final("M_NOT_FOUND", "the file is no longer on the homeserver")

    async def _save(
        self,
        response: aiohttp.ClientResponse,
        decryptor: AttachmentDecryptor | None,
        destination: Path,
        max_bytes: int,
    ) -> int:
        if response.content_length is not None and response.content_length > max_bytes:
            raise Final(
                "M_TOO_LARGE", f"the file is {mib(response.content_length)}, over the limit of {mib(max_bytes)}"
            )
        partial = destination.with_name(destination.name + ".partial")
        size = 0

        def write(out: BinaryIO, chunk: bytes) -> None:
            out.write(decryptor.update(chunk) if decryptor is not None else chunk)

        working: asyncio.Future[None] | None = None
        try:
            with partial.open("wb") as out:
                # Each chunk is decrypted and written in a worker thread while the next arrives.
                async for chunk in whole_chunks(response.content):
                    size += len(chunk)
                    if size > max_bytes:
                        raise Final("M_TOO_LARGE", f"the file is over the limit of {mib(max_bytes)}")
                    if working is not None:
                        await working
                    working = asyncio.ensure_future(asyncio.to_thread(write, out, chunk))
                if working is not None:
                    await working
            if decryptor is not None:
                try:
                    decryptor.verify()
                except AttachmentError:
                    raise Final("M_INVALID_PARAM", "the file does not match its hash, so it was not sent") from None
            partial.replace(destination)
        except BaseException:
            if working is not None and not working.done():
                await asyncio.wait([working])  # the file is still open in the worker
            partial.unlink(missing_ok=True)
            raise
        return size

    # ------------------------------------------------------------------ upload

    async def upload(self, room_id: str, path: Path, *, mimetype: str, filename: str | None) -> dict[str, Any]:
        size = path.stat().st_size
        limit = await self.upload_limit()
        if limit is not None and size > limit:
            raise Final(
                "M_TOO_LARGE", f"the file is {mib(size)} and this homeserver takes files of at most {mib(limit)}"
            )
        encryptor = AttachmentEncryptor() if await self._is_encrypted(room_id) else None
        params = {"user_id": self._bot}
        if filename and encryptor is None:
            params["filename"] = filename  # in an encrypted room even the name stays inside the event
        headers = {
            **self._auth,
            "Content-Type": "application/octet-stream" if encryptor is not None else mimetype,
            "Content-Length": str(size),
        }
        try:
            async with self._session.post(
                f"{self._base}/_matrix/media/v3/upload",
                data=self._chunks(path, encryptor),
                headers=headers,
                params=params,
                timeout=TIMEOUT,
            ) as response:
                if response.status != 200:
                    raise await _failure(response, "the upload")
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            raise Unavailable(f"the upload broke off ({type(exc).__name__})") from None
        url = body.get("content_uri") if isinstance(body, dict) else None
        if not isinstance(url, str):
            raise Unavailable("the homeserver's answer to the upload has no content_uri")
        if encryptor is None:
            return {"url": url}
        return {"file": encryptor.file(url, mimetype)}

    @staticmethod
    async def _chunks(path: Path, encryptor: AttachmentEncryptor | None) -> AsyncIterator[bytes]:
        def read(source: BinaryIO) -> bytes:
            chunk = source.read(CHUNK)
            return encryptor.update(chunk) if encryptor is not None and chunk else chunk

        with path.open("rb") as source:
            # The next chunk is read and encrypted while the last one is being sent.
            ahead = asyncio.ensure_future(asyncio.to_thread(read, source))
            try:
                while chunk := await ahead:
                    ahead = asyncio.ensure_future(asyncio.to_thread(read, source))
                    yield chunk
            finally:
                if not ahead.done():
                    await asyncio.wait([ahead])

    async def upload_limit(self) -> int | None:
        """``m.upload.size``, asked once an hour; None when the homeserver names none."""
        now = self._clock()
        if self._limit is not None and now - self._limit[0] < LIMIT_TTL:
            return self._limit[1]
        limit: int | None = None
        for path in ("/_matrix/client/v1/media/config", "/_matrix/media/v3/config"):
            try:
                async with self._session.get(
                    self._base + path, headers=self._auth, params={"user_id": self._bot}, timeout=TIMEOUT
                ) as response:
                    if response.status != 200:
                        continue
                    body = await response.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                return self._limit[1] if self._limit is not None else None  # asked again next time
            value = body.get("m.upload.size") if isinstance(body, dict) else None
            limit = value if isinstance(value, int) and value > 0 else None
            break
        self._limit = (now, limit)
        return limit
