"""Audio and video through Debian's ffmpeg and ffprobe, run as subprocesses.

Every call has a time limit and reads the files from disk; the bridge's process never
holds the media. A missing ffmpeg is a :class:`MediaError` that says so (the set-up script
and the Docker image install it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
from array import array
from dataclasses import dataclass
from pathlib import Path

from .errors import MediaError

TIMEOUT = 300.0
# What ffmpeg may open: local files only, and only containers of audio and video. A file
# from a chat is untrusted; a playlist (HLS, concat) posing as a video would otherwise make
# ffmpeg read other files or fetch URLs, and put what it read into a thumbnail.
_INPUT_GUARD = (
    *("-protocol_whitelist", "file"),
    "-format_whitelist",
    "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,ogg,mp3,wav,aac,flac,avi,amr,amrnb,amrwb,caf,mpegts,mpeg,asf,flv,aiff,"
    "image2,jpeg_pipe,png_pipe",
)
WAVEFORM_SAMPLES = 64
WAVEFORM_RATE = 2000  # samples per second decoded for a waveform: plenty for 64 bars
WAVEFORM_MAX_SECONDS = 900  # a voice note's shape is drawn from its first 15 minutes


@dataclass(frozen=True)
class Probe:
    format_name: str
    duration_ms: int | None
    width: int | None
    height: int | None
    video_codec: str | None
    audio_codec: str | None


def available() -> bool:
    return shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MediaError(f"{name} is not installed on the bridge's machine, so it cannot convert audio or video")
    return path


async def _run(args: list[str], *, timeout: float = TIMEOUT) -> bytes:
    process = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        await _stop(process)
        raise MediaError(f"{Path(args[0]).name} took longer than {timeout:.0f} s") from None
    except BaseException:
        await _stop(process)  # cancelled: no ffmpeg outlives the transfer it worked for
        raise
    if process.returncode != 0:
        # ffmpeg's own words about the container, never the media's content.
        last = stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise MediaError(f"{Path(args[0]).name} could not read the file ({last[0][:200]})")
    return stdout


async def _stop(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    await asyncio.shield(process.wait())


async def probe(path: Path) -> Probe:
    out = await _run(
        [_tool("ffprobe"), "-v", "error", *_INPUT_GUARD, "-show_format", "-show_streams", "-of", "json", str(path)],
        timeout=60,
    )
    try:
        data = json.loads(out)
    except ValueError:
        raise MediaError("ffprobe answered something that is not JSON") from None
    streams = data.get("streams") or []
    video = next((s for s in streams if s.get("codec_type") == "video" and not _is_cover(s)), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    duration = (data.get("format") or {}).get("duration") or (audio or video or {}).get("duration")
    try:
        duration_ms = round(float(duration) * 1000) if duration not in (None, "N/A") else None
    except ValueError:
        duration_ms = None
    return Probe(
        format_name=str((data.get("format") or {}).get("format_name", "")),
        duration_ms=duration_ms,
        width=_int(video, "width"),
        height=_int(video, "height"),
        video_codec=video.get("codec_name") if video else None,
        audio_codec=audio.get("codec_name") if audio else None,
    )


def _is_cover(stream: dict) -> bool:
    return bool((stream.get("disposition") or {}).get("attached_pic"))


def _int(stream: dict | None, key: str) -> int | None:
    value = (stream or {}).get(key)
    return int(value) if isinstance(value, int) and value > 0 else None


def is_ogg_opus(found: Probe) -> bool:
    return found.format_name == "ogg" and found.audio_codec == "opus" and found.video_codec is None


async def to_ogg_opus(source: Path, destination: Path) -> None:
    """A voice note as WhatsApp's own: mono Opus in an Ogg container, no video, no tags."""
    await _run(
        [
            _tool("ffmpeg"),
            *("-hide_banner", "-loglevel", "error", "-y", *_INPUT_GUARD, "-i", str(source)),
            *("-map", "0:a:0", "-vn", "-map_metadata", "-1"),
            *("-c:a", "libopus", "-b:a", "32k", "-ac", "1", "-ar", "48000", "-application", "voip"),
            *("-f", "ogg", str(destination)),
        ]
    )


async def first_frame(source: Path, destination: Path) -> None:
    """The video's first frame as a JPEG (a thumbnail is made from it)."""
    await _run(
        [
            _tool("ffmpeg"),
            *("-hide_banner", "-loglevel", "error", "-y", *_INPUT_GUARD, "-i", str(source)),
            *("-map", "0:v:0", "-frames:v", "1", "-f", "image2", "-c:v", "mjpeg", "-q:v", "3", str(destination)),
        ],
        timeout=60,
    )


async def waveform(source: Path, samples: int = WAVEFORM_SAMPLES) -> bytes:
    """``samples`` bars of loudness, 0-100, as WhatsApp's voice notes carry them.

    ffmpeg decodes to 16-bit mono PCM at a low rate on its stdout; the peaks of each
    window are kept as the stream passes, so a long recording costs no memory.
    """
    process = await asyncio.create_subprocess_exec(
        _tool("ffmpeg"),
        *("-hide_banner", "-loglevel", "error", *_INPUT_GUARD, "-i", str(source), "-map", "0:a:0"),
        *("-t", str(WAVEFORM_MAX_SECONDS), "-ac", "1", "-ar", str(WAVEFORM_RATE), "-f", "s16le", "-"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    window = WAVEFORM_RATE // 50  # 20 ms
    peaks: list[int] = []
    pending = b""
    try:
        async with asyncio.timeout(TIMEOUT):
            while chunk := await process.stdout.read(1 << 16):
                data = pending + chunk
                usable = len(data) - len(data) % (2 * window)
                pending = data[usable:]
                pcm = array("h", data[:usable])
                if sys.byteorder == "big":
                    pcm.byteswap()  # ffmpeg wrote little-endian samples
                peaks.extend(
                    max(max(pcm[i : i + window]), -min(pcm[i : i + window])) for i in range(0, len(pcm), window)
                )
            await process.wait()
    except TimeoutError:
        await _stop(process)
        raise MediaError("ffmpeg took too long to read the audio") from None
    except BaseException:
        await _stop(process)
        raise
    if process.returncode != 0:
        raise MediaError("ffmpeg could not read the audio")
    return bars(peaks, samples)


def bars(peaks: list[int], samples: int = WAVEFORM_SAMPLES) -> bytes:
    """``samples`` values 0-100 from any number of peaks: the loudest of each stretch,
    scaled so that the loudest bar is 100 (silence stays 0)."""
    if not peaks:
        return bytes(samples)
    grouped = [
        max(peaks[i * len(peaks) // samples : max((i + 1) * len(peaks) // samples, i * len(peaks) // samples + 1)])
        for i in range(samples)
    ]
    top = max(grouped)
    if top == 0:
        return bytes(samples)
    return bytes(min(100, round(value * 100 / top)) for value in grouped)
