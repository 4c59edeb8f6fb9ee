"""Media processing on real files: mimetype sniffing, Pillow thumbnails, ffmpeg's
transcoding, probing and waveforms."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from bridge.media import ffmpeg
from bridge.media.errors import MediaError
from bridge.media.images import image_info, jpeg_thumbnail
from bridge.media.sniff import base_type, effective_mimetype, sniff


def make(path: Path, *args: str) -> Path:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args, str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tools")
    files = {
        "m4a": make(root / "a.m4a", "-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-c:a", "aac"),
        "webm": make(root / "a.webm", "-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "libopus"),
        "mp4": make(
            root / "v.mp4", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=5", "-t", "1", "-pix_fmt", "yuv420p"
        ),
        # Half silence, half a tone: the waveform must show the step.
        "step": make(
            root / "step.ogg",
            *("-f", "lavfi", "-i", "sine=frequency=300:duration=2", "-af", "volume=enable='lt(t,1)':volume=0"),
            *("-c:a", "libopus"),
        ),
    }
    Image.new("RGBA", (400, 100), (0, 0, 255, 0)).save(root / "clear.png")
    files["png"] = root / "clear.png"
    (root / "blob").write_bytes(bytes(range(256)) * 10)
    files["blob"] = root / "blob"
    return files


def test_sniffing_names_what_clients_expect(media: dict[str, Path]) -> None:
    assert sniff(media["m4a"]) == "audio/mp4"
    assert sniff(media["mp4"]) == "video/mp4"
    assert sniff(media["png"]) == "image/png"
    assert sniff(media["blob"]) is None
    assert effective_mimetype(None, media["png"]) == "image/png"
    assert effective_mimetype("application/octet-stream", media["png"]) == "image/png"
    assert effective_mimetype("audio/ogg; codecs=opus", media["png"]) == "audio/ogg; codecs=opus"
    assert base_type("Audio/Ogg; codecs=opus") == "audio/ogg"


def test_thumbnails_are_small_upright_jpegs_with_transparency_on_white(media: dict[str, Path]) -> None:
    thumb = jpeg_thumbnail(media["png"], 96)
    image = Image.open(io.BytesIO(thumb.data))
    assert image.format == "JPEG" and (thumb.width, thumb.height) == image.size == (96, 24)
    assert image.getpixel((48, 12))[0] > 240  # white where the PNG was transparent
    # EXIF orientation 6 (rotated 90°): the thumbnail and the reported size stand upright.
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (200, 100)).save(rotated, "JPEG", exif=exif)
    path = media["png"].with_name("rotated.jpg")
    path.write_bytes(rotated.getvalue())
    assert (image_info(path).width, image_info(path).height) == (100, 200)
    assert Image.open(io.BytesIO(jpeg_thumbnail(path, 50).data)).size == (25, 50)


def test_what_is_no_image_is_a_media_error(media: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(MediaError):
        image_info(media["blob"])
    # A decompression bomb: a tiny PNG that claims a huge canvas is refused, not decoded.
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)
    with pytest.raises(MediaError):
        jpeg_thumbnail(bomb, 96)


async def test_voice_in_any_container_becomes_ogg_opus(media: dict[str, Path], tmp_path: Path) -> None:
    for name in ("m4a", "webm"):
        out = tmp_path / f"{name}.ogg"
        await ffmpeg.to_ogg_opus(media[name], out)
        found = await ffmpeg.probe(out)
        assert ffmpeg.is_ogg_opus(found) and found.duration_ms is not None
    assert not ffmpeg.is_ogg_opus(await ffmpeg.probe(media["m4a"]))
    assert not ffmpeg.is_ogg_opus(await ffmpeg.probe(media["webm"]))  # opus, but in WebM


async def test_probe_and_first_frame_of_a_video(media: dict[str, Path], tmp_path: Path) -> None:
    found = await ffmpeg.probe(media["mp4"])
    assert (found.width, found.height, found.video_codec) == (160, 120, "h264") and found.duration_ms == 1000
    await ffmpeg.first_frame(media["mp4"], tmp_path / "frame.jpg")
    assert Image.open(tmp_path / "frame.jpg").size == (160, 120)


async def test_the_waveform_follows_the_loudness(media: dict[str, Path]) -> None:
    bars = await ffmpeg.waveform(media["step"])
    assert len(bars) == 64 and max(bars) == 100
    assert max(bars[:28]) < 10 and min(bars[36:]) > 80  # silence, then the tone


async def test_ffmpeg_failures_are_media_errors(media: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="could not read"):
        await ffmpeg.to_ogg_opus(media["blob"], tmp_path / "x.ogg")
    with pytest.raises(MediaError):
        await ffmpeg.probe(media["blob"])
    with pytest.raises(MediaError):
        await ffmpeg.waveform(media["blob"])


def test_bars_scale_and_resample() -> None:
    assert ffmpeg.bars([]) == bytes(64)
    assert ffmpeg.bars([0] * 10) == bytes(64)
    assert list(ffmpeg.bars([1, 2, 4], samples=3)) == [25, 50, 100]
    assert len(ffmpeg.bars(list(range(1000)))) == 64 and ffmpeg.bars(list(range(1000)))[-1] == 100


async def test_a_playlist_posing_as_a_video_cannot_make_ffmpeg_read_other_files(tmp_path: Path) -> None:
    secret = tmp_path / "secret.ts"
    make(secret, "-f", "lavfi", "-i", "testsrc=size=64x64:rate=5", "-t", "1", "-f", "mpegts")
    for name, playlist in (
        ("hls.mp4", f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{secret}\n#EXT-X-ENDLIST\n"),
        ("concat.mp4", f"ffconcat version 1.0\nfile '{secret}'\n"),
    ):
        path = tmp_path / name
        path.write_text(playlist)
        with pytest.raises(MediaError):
            await ffmpeg.probe(path)
        with pytest.raises(MediaError):
            await ffmpeg.first_frame(path, tmp_path / "frame.jpg")
        assert not (tmp_path / "frame.jpg").exists()
    assert (await ffmpeg.probe(secret)).width == 64  # the same file, opened directly, is fine
