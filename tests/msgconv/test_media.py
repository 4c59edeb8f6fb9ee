"""Matrix media contents ⇄ GIP Media, both ways (pure)."""

from __future__ import annotations

import pytest

from bridge.gip.content import Media
from bridge.msgconv.convert import Unsupported
from bridge.msgconv.media import (
    FetchedMedia,
    PreparedMedia,
    is_media,
    matrix_media,
    matrix_media_content,
    outgoing_media,
    waveform_to_gip,
    waveform_to_matrix,
)

FILE = {"url": "mxc://hs/enc", "key": {"k": "x"}, "iv": "y", "hashes": {"sha256": "z"}, "v": "v2"}


@pytest.mark.parametrize(
    ("content", "kind", "name", "caption"),
    [
        ({"msgtype": "m.image", "body": "cat.png", "url": "mxc://hs/a"}, "image", "cat.png", ""),
        ({"msgtype": "m.sticker", "body": "wave", "url": "mxc://hs/a"}, "image", "wave", ""),
        ({"msgtype": "m.video", "body": "look!", "filename": "v.mp4", "url": "mxc://hs/a"}, "video", "v.mp4", "look!"),
        (
            {
                "msgtype": "m.file",
                "body": "see **this**",
                "filename": "r.pdf",
                "format": "org.matrix.custom.html",
                "formatted_body": "see <strong>this</strong>",
                "file": FILE,
            },
            "document",
            "r.pdf",
            "see *this*",
        ),
        (
            {"msgtype": "m.audio", "body": "", "url": "mxc://hs/a", "info": {"mimetype": "audio/ogg"}},
            "audio",
            "audio.oga",
            "",
        ),
    ],
)
def test_matrix_media_reads_kind_name_and_caption(content: dict, kind: str, name: str, caption: str) -> None:
    assert is_media(content)
    request = matrix_media(content)
    assert (request.kind, request.file_name, request.caption) == (kind, name, caption)
    assert request.url == (FILE["url"] if "file" in content else "mxc://hs/a")
    assert (request.file is FILE) == ("file" in content)


def test_voice_notes_carry_duration_and_waveform() -> None:
    request = matrix_media(
        {
            "msgtype": "m.audio",
            "body": "Voice message",
            "url": "mxc://hs/v",
            "info": {"duration": 999},
            "org.matrix.msc3245.voice": {},
            "org.matrix.msc1767.audio": {"duration": 4200, "waveform": [0, 2000, -5, 512]},
        }
    )
    assert request.voice and request.duration_ms == 4200 and request.waveform == (0, 1024, 0, 512)
    assert not matrix_media({"msgtype": "m.audio", "body": "song", "url": "mxc://hs/v"}).voice


@pytest.mark.parametrize(
    "content",
    [
        {"msgtype": "m.image", "body": "x"},
        {"msgtype": "m.image", "body": "x", "url": "https://evil.example/x"},
        {"msgtype": "m.file", "body": "x", "file": {"url": 5}},
    ],
)
def test_media_without_a_file_is_refused(content: dict) -> None:
    with pytest.raises(Unsupported):
        matrix_media(content)


def test_waveforms_convert_both_ways() -> None:
    assert waveform_to_gip([]) == bytes(64)
    gip = waveform_to_gip([1024] * 10 + [0] * 10)
    assert len(gip) == 64 and gip[0] == 100 and gip[-1] == 0
    assert waveform_to_matrix(bytes([0, 50, 100, 200] * 16))[:4] == [0, 512, 1024, 1024]
    # Another count than 64 from a peer becomes 64 bars (a thousand would bloat the event).
    assert len(waveform_to_matrix(bytes(1000))) == 64 and waveform_to_matrix(bytes([100]))[-1] == 1024
    assert waveform_to_gip(waveform_to_matrix(bytes(range(0, 100, 2)) + bytes(14)))[:3] == bytes([0, 2, 4])


def test_outgoing_media_fills_every_field() -> None:
    uploaded = Media(direct_path="/interop/download/i/r/", media_key=b"k" * 32, file_length=5)
    prepared = PreparedMedia(
        kind="audio",
        mimetype="audio/ogg; codecs=opus",
        file_name="Voice message",
        caption="",
        seconds=3,
        ptt=True,
        waveform=bytes(64),
    )
    out = outgoing_media(prepared, uploaded, reply_to="G7")
    audio = out.content.audio
    assert out.message_type == "media" and audio.direct_path == "/interop/download/i/r/" and audio.ptt
    assert (audio.seconds, audio.mimetype, audio.context_info.stanza_id, audio.file_name) == (
        3,
        "audio/ogg; codecs=opus",
        "G7",
        "",
    )
    document = outgoing_media(PreparedMedia("document", "application/pdf", "r.pdf", "read"), uploaded, reply_to=None)
    assert (document.content.document.file_name, document.content.document.caption) == ("r.pdf", "read")


def test_matrix_content_for_a_voice_note_and_a_captioned_image() -> None:
    fetched = FetchedMedia(source={"file": FILE}, mimetype="audio/ogg", size=10, duration_ms=2000)
    voice = matrix_media_content("audio", Media(ptt=True, waveform=bytes([100] * 64)), fetched)
    assert voice["msgtype"] == "m.audio" and voice["file"] is FILE and "org.matrix.msc3245.voice" in voice
    assert voice["org.matrix.msc1767.audio"] == {"duration": 2000, "waveform": [1024] * 64}
    assert voice["info"] == {"mimetype": "audio/ogg", "size": 10, "duration": 2000}
    thumb = {"url": "mxc://hs/t", "info": {"mimetype": "image/jpeg", "size": 3, "w": 8, "h": 6}}
    image = matrix_media_content(
        "image",
        Media(caption="*so* nice"),
        FetchedMedia(source={"url": "mxc://hs/i"}, mimetype="image/png", size=9, width=80, height=60, thumbnail=thumb),
    )
    assert image["body"] == "*so* nice" and image["filename"] == "image.png" and image["url"] == "mxc://hs/i"
    assert image["formatted_body"] == "<strong>so</strong> nice"
    assert image["info"]["thumbnail_url"] == "mxc://hs/t" and image["info"]["thumbnail_info"]["w"] == 8
    assert (image["info"]["w"], image["info"]["h"]) == (80, 60)


def test_of_a_file_only_the_caption_can_be_edited() -> None:
    from bridge.msgconv.convert import matrix_message

    new = {"msgtype": "m.image", "body": "new words", "filename": "cat.png", "url": "mxc://hs/a"}
    edit = matrix_message({"m.new_content": new}, reply_to=None, edit_of="G1")
    assert edit.content.edit.text == "new words" and edit.content.edit.key.id == "G1"
    with pytest.raises(Unsupported):
        matrix_message({"m.new_content": {**new, "body": "cat.png"}}, reply_to=None, edit_of="G1")
