"""Images: dimensions and JPEG thumbnails (Pillow).

CPU-bound and blocking: callers run these in a worker thread.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import MediaError

# Above what phones take (50 MP sensors write 8160 x 6120), well below what would exhaust
# memory: decoding costs 3 to 4 bytes a pixel.
MAX_PIXELS = 60_000_000
FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp", "BMP": "image/bmp"}


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    mimetype: str | None  # from the format Pillow found, None when it has no common name


@dataclass(frozen=True)
class Thumbnail:
    data: bytes
    width: int
    height: int
    mimetype: str = "image/jpeg"


def _open(source: Path | bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open (the header only) and refuse before decoding what would not fit in memory."""
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as exc:
        raise MediaError(f"not an image this bridge can read ({type(exc).__name__})") from None
    if image.width * image.height > max_pixels:
        image.close()
        raise MediaError("the image has too many pixels")
    return image


def image_info(path: Path) -> ImageInfo:
    """Dimensions as shown (EXIF rotation applied), from the header only."""
    with _open(path) as image:
        width, height = image.size
        try:
            orientation = image.getexif().get(0x0112, 1)
        except Exception:  # a broken EXIF block is no reason to refuse the image
            orientation = 1
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        return ImageInfo(width, height, FORMATS.get(image.format or ""))


def jpeg_thumbnail(source: Path | bytes, max_side: int, quality: int = 75, max_pixels: int = MAX_PIXELS) -> Thumbnail:
    """A JPEG no larger than ``max_side`` on either side, upright, transparency on white."""
    with _open(source, max_pixels) as image:
        if image.format == "JPEG":
            image.draft("RGB", (max_side * 2, max_side * 2))  # decode at a fraction of the size
        try:
            image.seek(0)  # the first frame of an animation
            frame = ImageOps.exif_transpose(image)
            frame.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            if frame.mode in ("RGBA", "LA", "P"):
                frame = frame.convert("RGBA")
                flat = Image.new("RGB", frame.size, (255, 255, 255))
                flat.paste(frame, mask=frame.getchannel("A"))
                frame = flat
            elif frame.mode != "RGB":
                frame = frame.convert("RGB")
            out = io.BytesIO()
            frame.save(out, "JPEG", quality=quality, optimize=True)
        except (OSError, ValueError, SyntaxError) as exc:
            raise MediaError(f"the image could not be decoded ({type(exc).__name__})") from None
        return Thumbnail(out.getvalue(), frame.width, frame.height)
