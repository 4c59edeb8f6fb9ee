"""Media in the core: what goes out for a Matrix file, what comes in for a peer's, and how
each failure ends, between recording fakes of both sides (real Pillow and ffmpeg)."""

from __future__ import annotations

import io
import itertools
import subprocess

import pytest
from PIL import Image

from bridge.core.matrix_api import SendStatus
from bridge.gip.client import MessageEvent
from bridge.gip.content import Content, Media
from bridge.gip.errors import GipError, GipErrorCode
from bridge.gip.jid import Jid
from bridge.media import ffmpeg
from tests.core.conftest import ALICE, PEER, Harness

_ids = itertools.count(1)


def png(width: int = 300, height: int = 200) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def m4a(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("m4a") / "voice.m4a"
    tone = ("-f", "lavfi", "-i", "sine=frequency=500:duration=2", "-c:a", "aac")
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", *tone, str(path)], check=True)
    return path.read_bytes()


async def send_matrix(harness: Harness, content: dict) -> str:
    room = await harness.room()
    event_id = f"$media{next(_ids)}"
    work = await harness.core.flow.message(room, event_id, ALICE, content)
    if work is not None:
        await work.run()
    return event_id


async def receive(harness: Harness, kind: str, media: Media) -> None:
    content = Content()
    getattr(content, kind).CopyFrom(media)
    event = MessageEvent(
        f"N{next(_ids)}", Jid.parse(PEER), "media", 1_700_000_000, content, False, False, "+4915100000009"
    )
    async with harness.db.transaction():
        await harness.core.on_event(harness.login, event)


async def final_status(harness: Harness, event_id: str):
    await harness.core.settle()
    return next(r for e, r in harness.matrix.statuses if e == event_id and r.status is not SendStatus.PENDING)


async def test_a_voice_note_goes_out_as_ogg_opus_with_its_waveform(harness: Harness, m4a: bytes, tmp_path) -> None:
    harness.matrix.media["mxc://hs/voice"] = m4a
    content = {
        "msgtype": "m.audio",
        "body": "Voice message",
        "url": "mxc://hs/voice",
        "info": {"mimetype": "audio/mp4"},
        "org.matrix.msc3245.voice": {},
        "org.matrix.msc1767.audio": {"duration": 2000, "waveform": [0, 512, 1024, 256]},
    }
    event_id = await send_matrix(harness, content)
    assert (await final_status(harness, event_id)).status is SendStatus.SUCCESS
    kind, data = harness.gatekeeper.uploads[-1]
    (tmp_path / "sent").write_bytes(data)
    assert kind == "audio" and ffmpeg.is_ogg_opus(await ffmpeg.probe(tmp_path / "sent"))
    sent = harness.gatekeeper.delivered[-1]
    assert sent.text == "audio"
    payload = (await harness.core.outbox.by_event(await harness.room(), event_id)).payload
    voice = Content.FromString(payload).audio
    assert voice.ptt and voice.mimetype == "audio/ogg; codecs=opus" and voice.seconds == 2
    # MSC1767's 0..1024 became 64 bars of 0..100, following the client's shape.
    assert (
        len(voice.waveform) == 64 and voice.waveform[0] == 0 and voice.waveform[-1] == 25 and max(voice.waveform) == 100
    )


async def test_an_image_gets_its_dimensions_and_a_small_thumbnail(harness: Harness) -> None:
    harness.matrix.media["mxc://hs/png"] = png(300, 200)
    event_id = await send_matrix(harness, {"msgtype": "m.image", "body": "red.png", "url": "mxc://hs/png", "info": {}})
    assert (await final_status(harness, event_id)).status is SendStatus.SUCCESS
    payload = (await harness.core.outbox.by_event(await harness.room(), event_id)).payload
    image = Content.FromString(payload).image
    assert (image.width, image.height, image.mimetype) == (300, 200, "image/png")
    thumb = Image.open(io.BytesIO(image.jpeg_thumbnail))
    assert thumb.format == "JPEG" and thumb.size == (96, 64)


async def test_an_image_pillow_cannot_read_goes_as_a_file(harness: Harness) -> None:
    harness.matrix.media["mxc://hs/svg"] = b"<svg xmlns='http://www.w3.org/2000/svg'/>"
    event_id = await send_matrix(
        harness, {"msgtype": "m.image", "body": "x.svg", "url": "mxc://hs/svg", "info": {"mimetype": "image/svg+xml"}}
    )
    assert (await final_status(harness, event_id)).status is SendStatus.SUCCESS
    assert harness.gatekeeper.uploads[-1][0] == "document"


@pytest.mark.parametrize(
    ("content", "served", "expected"),
    [
        # Declared over the image limit: refused before anything is fetched.
        ({"msgtype": "m.image", "body": "a.png", "url": "mxc://hs/a", "info": {"size": 17 << 20}}, None, "16 MiB"),
        # Gone from the homeserver.
        (
            {"msgtype": "m.file", "body": "b.bin", "url": "mxc://hs/gone", "info": {}},
            None,
            "no longer on the homeserver",
        ),
        # A voice note that is no audio at all.
        (
            {"msgtype": "m.audio", "body": "v", "url": "mxc://hs/v", "org.matrix.msc3245.voice": {}, "info": {}},
            b"not audio at all",
            "not audio the bridge can play",
        ),
    ],
)
async def test_a_file_that_cannot_go_fails_with_a_status_and_a_notice(
    harness: Harness, content: dict, served: bytes | None, expected: str
) -> None:
    if served is not None:
        harness.matrix.media[content["url"]] = served
    event_id = await send_matrix(harness, content)
    report = await final_status(harness, event_id)
    assert report.status is SendStatus.FAIL_PERMANENT and expected in report.message
    assert any(expected in text for _, text in harness.matrix.notices)
    assert harness.gatekeeper.uploads == [] and harness.gatekeeper.delivered == []


async def test_a_file_over_the_users_quota_is_refused_with_a_notice(harness: Harness) -> None:
    harness.matrix.media["mxc://hs/q"] = b"%PDF-1.4"
    quota = GipError(GipErrorCode.QUOTA, "your files waiting for the other side take 2048 MiB")
    harness.gatekeeper.faults.add("upload_media", quota)
    event_id = await send_matrix(harness, {"msgtype": "m.file", "body": "q.pdf", "url": "mxc://hs/q", "info": {}})
    report = await final_status(harness, event_id)
    assert report.status is SendStatus.FAIL_PERMANENT and "2048 MiB" in report.message
    assert any("2048 MiB" in text for _, text in harness.matrix.notices)


async def test_a_peers_image_is_posted_with_a_thumbnail(harness: Harness) -> None:
    harness.gatekeeper.files["/v/t1"] = png(1600, 1200)
    await receive(harness, "image", Media(direct_path="/v/t1", file_length=1, mimetype="image/png", caption="*hi*"))
    await harness.until(lambda: any(p["kind"] == "message" for p in harness.matrix.posts))
    await harness.core.settle()
    post = next(p for p in harness.matrix.posts if p["kind"] == "message")["content"]
    assert post["msgtype"] == "m.image" and post["url"] == "mxc://test/1" and post["body"] == "*hi*"
    assert post["info"]["thumbnail_url"] == "mxc://test/2"
    assert (post["info"]["w"], post["info"]["h"]) == (1600, 1200)
    assert (post["info"]["thumbnail_info"]["w"], post["info"]["thumbnail_info"]["h"]) == (800, 600)
    assert harness.matrix.uploads[0]["data"] == harness.gatekeeper.files["/v/t1"]


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (GipError(GipErrorCode.MEDIA_MAC, "bad MAC"), "integrity check"),
        (GipError(GipErrorCode.MEDIA_HASH, "bad hash"), "integrity check"),
        (GipError(GipErrorCode.NOT_FOUND, "404"), "no longer on WhatsApp's servers"),
    ],
)
async def test_a_peers_file_that_fails_a_check_is_never_posted_nor_retried(
    harness: Harness, error: GipError, expected: str
) -> None:
    harness.gatekeeper.faults.add("download_media", error)
    await receive(harness, "document", Media(direct_path="/v/t2", file_length=10))
    await harness.until(lambda: bool(harness.matrix.notices))
    await harness.core.settle()
    assert expected in harness.matrix.notices[-1][1]
    assert harness.gatekeeper.downloads == 1  # a refusal no retry changes is not tried again
    assert not [p for p in harness.matrix.posts if p["kind"] == "message"] and harness.matrix.uploads == []


async def test_a_download_the_gatekeeper_cannot_serve_now_is_waited_out_and_told_once(harness: Harness) -> None:
    harness.gatekeeper.files["/v/t3"] = b"%PDF-1.4 fine"
    unavailable = GipError(GipErrorCode.UNAVAILABLE, "the download broke off")
    harness.gatekeeper.faults.add("download_media", *[unavailable] * 4)
    await receive(harness, "document", Media(direct_path="/v/t3", file_length=13, file_name="a.pdf"))
    await harness.until(lambda: any(p["kind"] == "message" for p in harness.matrix.posts))
    await harness.core.settle()
    # More failures than max_attempts (3 here): an outage of the other side does not count.
    assert harness.gatekeeper.downloads == 5
    assert [p["content"]["body"] for p in harness.matrix.posts if p["kind"] == "message"] == ["a.pdf"]
    told = [text for _, text in harness.matrix.notices if "right now" in text]
    assert len(told) == 1 and "file" in told[0] and "WhatsApp" in told[0]


async def test_a_refused_download_is_retried_then_explained(harness: Harness) -> None:
    harness.gatekeeper.files["/v/t5"] = b"x"
    harness.gatekeeper.faults.add("download_media", *[GipError(GipErrorCode.FORBIDDEN, "403")] * 3)
    await receive(harness, "video", Media(direct_path="/v/t5", file_length=1))
    await harness.until(lambda: any("could not be downloaded" in text for _, text in harness.matrix.notices))
    assert harness.gatekeeper.downloads == 3
    assert not [p for p in harness.matrix.posts if p["kind"] == "message"]


async def test_a_file_over_the_homeservers_limit_is_explained(harness: Harness) -> None:
    harness.matrix.upload_limit = 1 << 20
    harness.gatekeeper.files["/v/t4"] = b"x"
    await receive(harness, "document", Media(direct_path="/v/t4", file_length=3 << 20))
    await harness.until(lambda: bool(harness.matrix.notices))
    text = harness.matrix.notices[-1][1]
    assert "3 MiB" in text and "at most 1 MiB" in text and harness.gatekeeper.downloads == 0
