"""Media both ways in an encrypted portal: Element's crypto stack (matrix-js-sdk with
matrix-encrypt-attachment) on the Matrix leg, the sandbox's natives on the other, the
bridge between them on a real Synapse and Postgres.

Every file is compared byte for byte at the far end: the natives hash what they decrypt
after checking hash and MAC; Element downloads (authenticated media) and decrypts.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from PIL import Image

from bridge.app import BridgeApp
from bridge.gip.media import MediaType, decrypt_bytes
from bridge.gip.tokens import SigningKey, issue_gatekeeper_token
from devstack.element_client import ElementPeer, ElementUser
from tests.integration.conftest import Stack
from tests.integration.test_bridge import log_in, open_chat
from tests.integration.test_chat_features import native_events

pytestmark = pytest.mark.asyncio(loop_scope="session")
STATUS = "com.beeper.message_send_status"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture(scope="session")
def files(tmp_path_factory) -> dict[str, Path]:
    """Real media, made here: a PNG and a JPEG, an h264 video, an m4a and an ogg/opus
    recording, a PDF-looking document."""
    root = tmp_path_factory.mktemp("media-files")
    made = {name: root / name for name in ("photo.png", "photo.jpg", "clip.mp4", "voice.m4a", "voice.ogg", "doc.pdf")}
    gradient = Image.linear_gradient("L").resize((640, 480)).convert("RGB")
    gradient.save(made["photo.png"])
    gradient.rotate(90, expand=True).save(made["photo.jpg"], quality=90)
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x240:rate=10",
        "-t",
        "3",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        str(made["clip.mp4"]),
    )
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=3", "-c:a", "aac", str(made["voice.m4a"]))
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:duration=2", "-c:a", "libopus", "-ac", "1", str(made["voice.ogg"]))
    made["doc.pdf"].write_bytes(b"%PDF-1.4\n" + os.urandom(200_000) + b"\n%%EOF\n")
    return made


@pytest_asyncio.fixture(loop_scope="session")
async def chat(stack: Stack, element: ElementPeer) -> tuple[ElementUser, str, dict[str, Any], str]:
    user = await stack.element_user(element)
    room = await log_in(stack, user)
    native = await stack.sandbox.native()
    portal = await open_chat(stack, user, room, native)
    login = await stack.bridge.core.logins.get(user.mxid)
    return user, portal, native, login.iid


async def native_sends(stack: Stack, native: dict, to: str, **media: Any) -> str:
    sent = await stack.sandbox.control("POST", f"/natives/{native['iid']}/send", {"to": to, "media": media})
    return sent["id"]


def in_portal(portal: str, msgtype: str | None = None):
    return lambda e: (
        e.get("room_id") == portal
        and e.get("type") == "m.room.message"
        and (msgtype is None or e["content"].get("msgtype") == msgtype)
    )


async def status_of(user: ElementUser, event_id: str, status: str = "SUCCESS", timeout: float = 60) -> dict:
    return await user.wait_for(
        lambda e: (
            e.get("type") == STATUS
            and e["content"].get("m.relates_to", {}).get("event_id") == event_id
            and e["content"].get("status") == status
        ),
        timeout=timeout,
    )


async def test_every_kind_from_element_arrives_byte_for_byte(stack: Stack, chat, files: dict[str, Path]) -> None:
    user, portal, native, _ = chat
    sends = [
        (
            "photo.png",
            {"msgtype": "m.image", "body": "photo.png", "info": {"mimetype": "image/png", "w": 640, "h": 480}},
        ),
        ("clip.mp4", {"msgtype": "m.video", "body": "clip.mp4", "info": {"mimetype": "video/mp4"}}),
        ("voice.m4a", {"msgtype": "m.audio", "body": "song.m4a", "info": {"mimetype": "audio/mp4"}}),
        # A caption (MSC2530) and no mimetype: the bridge sniffs it.
        ("doc.pdf", {"msgtype": "m.file", "body": "the *report*", "filename": "report.pdf", "info": {}}),
    ]
    for name, content in sends:
        sent = await user.send_file(portal, files[name], content)
        await status_of(user, sent["eventId"])
    # A sticker from a pack (unencrypted media, as sticker packs are) goes as an image.
    sticker = await user.send_file(
        portal,
        files["photo.png"],
        {"body": "wave", "info": {"mimetype": "image/png", "w": 640, "h": 480}},
        event_type="m.sticker",
        plain=True,
    )
    await status_of(user, sticker["eventId"])
    sends.append(("photo.png", {}))
    messages = await native_events(stack, native, "message", len(sends), timeout=60)
    fetched = {e["id"]: e for e in await native_events(stack, native, "media", len(sends), timeout=60)}
    assert all(f["ok"] for f in fetched.values()), fetched
    image, video, audio, document, sticker_sent = (m["content"] for m in messages[-len(sends) :])
    assert sticker_sent["image"]["width"] == 640 and sticker_sent["image"]["jpegThumbnail"]
    by_order = [fetched[m["id"]] for m in messages[-len(sends) :]]
    for (name, _), got in zip(sends, by_order, strict=True):
        assert got["sha256"] == sha256(files[name]) and got["size"] == files[name].stat().st_size, name

    photo = image["image"]
    assert (photo["mimetype"], photo["width"], photo["height"]) == ("image/png", 640, 480)
    thumb = Image.open(io.BytesIO(base64.b64decode(photo["jpegThumbnail"])))
    assert thumb.format == "JPEG" and max(thumb.size) <= 96
    clip = video["video"]
    assert (clip["width"], clip["height"], clip["seconds"]) == (320, 240, 3)
    assert base64.b64decode(clip["jpegThumbnail"])[:2] == b"\xff\xd8"
    song = audio["audio"]
    assert song["mimetype"] == "audio/mp4" and song["seconds"] == 3 and not song.get("ptt")
    doc = document["document"]
    assert (doc["fileName"], doc["caption"], doc["mimetype"]) == ("report.pdf", "the *report*", "application/pdf")
    for content in (image, video, audio, document):
        media = next(iter(content.values()))
        assert len(base64.b64decode(media["mediaKey"])) == 32 and media["directPath"].startswith("/interop/download/")


async def test_a_voice_note_in_m4a_arrives_as_ogg_opus_with_duration_and_waveform(
    stack: Stack, chat, files: dict[str, Path], tmp_path: Path
) -> None:
    user, portal, native, _ = chat
    before = len(await stack.sandbox.events(native["iid"], "message"))
    content = {
        "msgtype": "m.audio",
        "body": "Voice message",
        "info": {"mimetype": "audio/mp4", "duration": 3000},
        "org.matrix.msc3245.voice": {},
        "org.matrix.msc1767.audio": {"duration": 3000},
    }
    sent = await user.send_file(portal, files["voice.m4a"], content)
    await status_of(user, sent["eventId"])
    message = (await native_events(stack, native, "message", before + 1, timeout=60))[-1]
    voice = message["content"]["audio"]
    assert voice["ptt"] is True and voice["mimetype"] == "audio/ogg; codecs=opus" and voice["seconds"] == 3
    waveform = base64.b64decode(voice["waveform"])
    assert len(waveform) == 64 and max(waveform) == 100 and min(waveform) > 50  # a steady tone
    # What the native plays is Opus in Ogg, whatever Element recorded.
    blob = await stack.sandbox.gatekeeper.proxy_partner_media(voice["directPath"])
    plain = decrypt_bytes(
        MediaType.AUDIO,
        blob,
        base64.b64decode(voice["mediaKey"]),
        base64.b64decode(voice["fileEncSha256"]),
        base64.b64decode(voice["fileSha256"]),
    )
    (tmp_path / "got.ogg").write_bytes(plain)
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(tmp_path / "got.ogg")],
        check=True,
        capture_output=True,
    )
    found = json.loads(probe.stdout)
    assert found["format"]["format_name"] == "ogg" and found["streams"][0]["codec_name"] == "opus"


async def test_every_kind_from_the_native_arrives_in_element_with_thumbnails(
    stack: Stack, chat, files: dict[str, Path], tmp_path: Path
) -> None:
    user, portal, native, iid = chat
    question = await user.say(portal, "send me everything")
    await status_of(user, question)
    asked = (await native_events(stack, native, "message", 1, timeout=60))[-1]["id"]

    def data(name: str) -> str:
        return base64.b64encode(files[name].read_bytes()).decode()

    await native_sends(
        stack, native, iid, kind="image", data=data("photo.jpg"), mimetype="image/jpeg", caption="*sunset*"
    )
    await native_sends(
        stack, native, iid, kind="video", path=str(files["clip.mp4"]), mimetype="video/mp4", reply_to=asked
    )
    await native_sends(
        stack, native, iid, kind="audio", data=data("voice.ogg"), mimetype="audio/ogg; codecs=opus", ptt=True, seconds=2
    )
    await native_sends(
        stack, native, iid, kind="document", data=data("doc.pdf"), mimetype="application/pdf", file_name="report.pdf"
    )

    image = await user.wait_for(in_portal(portal, "m.image"), timeout=60)
    video = await user.wait_for(in_portal(portal, "m.video"), timeout=60)
    audio = await user.wait_for(in_portal(portal, "m.audio"), timeout=60)
    document = await user.wait_for(in_portal(portal, "m.file"), timeout=60)
    for event, name in ((image, "photo.jpg"), (video, "clip.mp4"), (audio, "voice.ogg"), (document, "doc.pdf")):
        content = event["content"]
        assert event["encrypted"] and "file" in content and "url" not in content  # encrypted on the Matrix leg too
        got = await user.download(content, tmp_path / name)
        assert got["sha256"] == sha256(files[name]), name
        assert content["info"]["size"] == files[name].stat().st_size

    shot = image["content"]
    assert shot["body"] == "*sunset*" and "<strong>sunset</strong>" in shot["formatted_body"]
    assert (shot["info"]["w"], shot["info"]["h"], shot["info"]["mimetype"]) == (480, 640, "image/jpeg")
    for event in (image, video):
        info = event["content"]["info"]
        assert "thumbnail_file" in info and info["thumbnail_info"]["mimetype"] == "image/jpeg"
        thumb = await user.download({"file": info["thumbnail_file"]}, tmp_path / "thumb.jpg")
        assert thumb["size"] == info["thumbnail_info"]["size"]
        assert Image.open(tmp_path / "thumb.jpg").size == (info["thumbnail_info"]["w"], info["thumbnail_info"]["h"])
    clip = video["content"]
    assert (clip["info"]["w"], clip["info"]["h"], clip["info"]["duration"]) == (320, 240, 3000)
    assert clip["m.relates_to"]["m.in_reply_to"]["event_id"] == question  # a reply, on media
    voice = audio["content"]
    assert "org.matrix.msc3245.voice" in voice and voice["info"]["mimetype"] == "audio/ogg; codecs=opus"
    wave = voice["org.matrix.msc1767.audio"]["waveform"]
    assert len(wave) == 64 and max(wave) == 1024 and voice["org.matrix.msc1767.audio"]["duration"] in range(1900, 2200)
    assert document["content"]["body"] == "report.pdf" and document["content"]["info"]["mimetype"] == "application/pdf"


async def test_a_tampered_blob_is_never_posted_and_is_explained(stack: Stack, chat, files: dict[str, Path]) -> None:
    user, portal, native, iid = chat
    await native_sends(
        stack, native, iid, kind="image", data=base64.b64encode(files["photo.jpg"].read_bytes()).decode(), tamper=True
    )
    notice = await user.wait_for(
        lambda e: in_portal(portal, "m.notice")(e) and "integrity check" in e["content"]["body"], timeout=60
    )
    assert "photo" in notice["content"]["body"]
    await user.refresh()
    assert not [e for e in user.events if in_portal(portal, "m.image")(e)]


async def test_files_over_the_limits_are_refused_with_the_limit(stack: Stack, chat, tmp_path: Path) -> None:
    user, portal, _, _ = chat
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8\xff" + os.urandom(17 * 1024 * 1024))
    # Once as the client declares it, once with a size that lies: the download stops at the limit.
    for info in ({"mimetype": "image/jpeg", "size": big.stat().st_size}, {"mimetype": "image/jpeg", "size": 1000}):
        sent = await user.send_file(portal, big, {"msgtype": "m.image", "body": "big.jpg", "info": info})
        status = await status_of(user, sent["eventId"], "FAIL_PERMANENT")
        assert "16 MiB" in status["content"]["message"]
    notices = [e for e in user.events if in_portal(portal, "m.notice")(e) and "16 MiB" in e["content"]["body"]]
    assert len(notices) >= 1


async def test_a_file_larger_than_the_homeserver_takes_is_explained(messenger_stack: Stack) -> None:
    stack = messenger_stack  # its homeserver takes files of at most 1 MiB
    user = await stack.user()
    room = await log_in(stack, user)
    native = await stack.sandbox.native(uvid="media.fan")
    portal = await open_chat(stack, user, room, native)
    iid = (await stack.bridge.core.logins.get(user.mxid)).iid
    data = base64.b64encode(os.urandom(2 * 1024 * 1024)).decode()
    await native_sends(stack, native, iid, kind="document", data=data, file_name="two.bin")
    notice = await user.wait_for(
        lambda e: e.get("room_id") == portal and "at most 1 MiB" in e.get("content", {}).get("body", ""), timeout=60
    )
    assert "2 MiB" in notice["content"]["body"] and "Messenger" in notice["content"]["body"]


async def test_the_media_endpoint_serves_only_the_gatekeepers_proxy(stack: Stack, chat, files: dict[str, Path]) -> None:
    user, portal, native, _ = chat
    before = len(await stack.sandbox.events(native["iid"], "message"))
    sent = await user.send_file(portal, files["doc.pdf"], {"msgtype": "m.file", "body": "doc.pdf", "info": {}})
    await status_of(user, sent["eventId"])
    document = (await native_events(stack, native, "message", before + 1, timeout=60))[-1]["content"]["document"]
    ref = document["directPath"].strip("/").split("/")[-1]
    url = f"{stack.bridge.config.partner_public_url}/media/{ref}"
    async with stack.http.get(url) as response:
        assert response.status == 401
    forged = issue_gatekeeper_token(
        SigningKey.generate(), issuer="WHATSAPP", audience=stack.bridge.config.integrator_id
    )
    async with stack.http.get(url, headers={"Authorization": f"Bearer {forged}"}) as response:
        assert response.status == 401
    blob = await stack.sandbox.gatekeeper.proxy_partner_media(document["directPath"])
    assert hashlib.sha256(blob).digest() == base64.b64decode(document["fileEncSha256"])

    # Kept for keep_days, then collected: the gatekeeper's fetch finds nothing.
    store = stack.bridge.media
    assert await store.blob(ref) is not None
    await store.collect(now_ms=int(time.time() * 1000) + 29 * 86_400_000)
    assert await store.blob(ref) is not None
    await store.collect(now_ms=int(time.time() * 1000) + 31 * 86_400_000)
    assert await store.blob(ref) is None and not (store.directory / ref).exists()
    with pytest.raises(Exception, match="404"):
        await stack.sandbox.gatekeeper.proxy_partner_media(document["directPath"])


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


async def test_100_mib_pass_through_both_ways_in_bounded_memory(stack: Stack, chat, tmp_path: Path) -> None:
    """The bridge, the sandbox and this test share one process: its resident memory is
    sampled all along both transfers and may grow by a few 1 MiB chunks, not by the file."""
    user, portal, native, iid = chat
    big = tmp_path / "film.bin"
    with big.open("wb") as out:
        for _ in range(100):
            out.write(os.urandom(1 << 20))
    expected = file_sha256(big)
    before = len(await stack.sandbox.events(native["iid"], "media"))
    baseline, peak = rss(), 0
    sampling = True

    async def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, rss())
            await asyncio.sleep(0.02)

    sampler = asyncio.get_running_loop().create_task(sample())
    try:
        sent = await user.send_file(portal, big, {"msgtype": "m.file", "body": "film.bin", "info": {"size": 100 << 20}})
        await status_of(user, sent["eventId"], timeout=180)
        fetched = (await native_events(stack, native, "media", before + 1, timeout=180))[-1]
        assert fetched["ok"] and fetched["sha256"] == expected and fetched["size"] == 100 << 20

        await native_sends(stack, native, iid, kind="document", path=str(big), file_name="back.bin")
        event = await user.wait_for(
            lambda e: in_portal(portal, "m.file")(e) and e["content"].get("body") == "back.bin", timeout=180
        )
    finally:
        sampling = False
        await sampler
    got = await user.download(event["content"], tmp_path / "back.bin")
    assert got["sha256"] == expected
    growth = peak - baseline
    print(f"resident memory: baseline {baseline >> 20} MiB, peak {peak >> 20} MiB, growth {growth >> 20} MiB")
    assert growth < 32 << 20, f"resident memory grew by {growth >> 20} MiB for a 100 MiB file"


def transfers_in_progress() -> list[Path]:
    return [p for p in Path(tempfile.gettempdir()).glob("dma-media-*/*.partial") if p.stat().st_size > 0]


async def test_a_transfer_cut_off_midway_resumes_after_a_restart_and_posts_once(
    stack: Stack, chat, tmp_path: Path
) -> None:
    user, portal, native, iid = chat
    payload = tmp_path / "slow.bin"
    payload.write_bytes(os.urandom(6 << 20))
    await stack.sandbox.control("POST", "/faults", {"media_bytes_per_second": 1 << 20})
    try:
        await native_sends(stack, native, iid, kind="document", path=str(payload), file_name="slow.bin")
        for _ in range(300):
            if transfers_in_progress():
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the bridge never started fetching the file")
        # The process dies where it stands: each portal loop is cancelled at its current
        # await, which leaves the database as a kill would; then a new process starts.
        for loop in list(stack.bridge.core.loops._loops.values()):
            if loop.task is not None:
                loop.task.cancel()
    finally:
        await stack.sandbox.control("POST", "/faults", {"media_bytes_per_second": 0})
    await stack.bridge.stop()
    assert not transfers_in_progress()  # the cut-off transfer left no temporary file behind
    stack.bridge = BridgeApp(stack.bridge.config)
    await stack.bridge.start()

    event = await user.wait_for(
        lambda e: in_portal(portal, "m.file")(e) and e["content"].get("body") == "slow.bin", timeout=60
    )
    await stack.bridge.core.settle()
    await asyncio.sleep(1)
    await user.refresh()
    copies = [e for e in user.events if in_portal(portal, "m.file")(e) and e["content"].get("body") == "slow.bin"]
    assert len(copies) == 1
    got = await user.download(event["content"], tmp_path / "got.bin")
    assert got["sha256"] == sha256(payload)
