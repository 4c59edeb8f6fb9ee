"""The files the demo sends each way: a photo, a document and a voice note, made here
(Pillow and ffmpeg) so that nothing is downloaded."""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw


@dataclass(frozen=True)
class DemoFile:
    path: Path
    mimetype: str

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def make_files(directory: Path) -> dict[str, DemoFile]:
    directory.mkdir(parents=True, exist_ok=True)
    photo = directory / "photo.jpg"
    if not photo.exists():
        image = Image.linear_gradient("L").resize((800, 600)).convert("RGB")
        ImageDraw.Draw(image).ellipse((300, 200, 500, 400), fill=(240, 180, 40))
        image.save(photo, quality=88)
    document = directory / "notes.pdf"
    if not document.exists():
        document.write_bytes(b"%PDF-1.4\n% a demo document\n" + os.urandom(48_000) + b"\n%%EOF\n")
    voice = directory / "voice.ogg"
    if not voice.exists():
        # A voice note as Element records one: ogg/opus, mono.
        subprocess.run(
            [
                "ffmpeg",
                "-hide_banner",
                "-loglevel",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=330:duration=2",
                "-c:a",
                "libopus",
                "-ac",
                "1",
                str(voice),
            ],
            check=True,
        )
    return {
        "photo": DemoFile(photo, "image/jpeg"),
        "document": DemoFile(document, "application/pdf"),
        "voice": DemoFile(voice, "audio/ogg"),
    }
