"""Small, deterministic JPEG thumbnails for the HTML report.

The report inlines every thumbnail as a ``data:`` URI, so they must be small (the
longest side is ``max_side``, 256 px by default) and reproducible: the same image
gives the same bytes, so a re-run of ``charkit verify`` rewrites an identical report.
That is why the encoder settings are all pinned (quality, chroma subsampling, no
optimiser pass, no progressive scan, no metadata copied from the source).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from io import BytesIO

from PIL import Image

from ..images import read_image

#: Encoder settings, fixed so the bytes depend only on the pixels.
JPEG_QUALITY = 85
JPEG_SUBSAMPLING = 2  # 4:2:0

#: Formats the report can inline, by their magic bytes.
_SIGNATURES = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
)


def make_thumbnail(pil_image: Image.Image, max_side: int = 256) -> bytes:
    """Shrink ``pil_image`` so its longest side is at most ``max_side`` and encode it as JPEG.

    The aspect ratio is kept (face boxes are drawn in the original image's pixel
    space and scaled onto the thumbnail), images are never enlarged, and alpha is
    composited on white rather than dropped to black.

    >>> make_thumbnail(Image.new("RGB", (1024, 512)))[:3] == b"\\xff\\xd8\\xff"
    True
    """
    if not isinstance(max_side, int) or isinstance(max_side, bool) or max_side < 16:
        raise ValueError(f"max_side must be an int >= 16, got {max_side!r}")
    img = _to_rgb(pil_image)
    w, h = img.size
    scale = min(1.0, max_side / max(w, h))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = img.resize(size, Image.Resampling.LANCZOS, reducing_gap=None)
    buf = BytesIO()
    img.save(
        buf,
        format="JPEG",
        quality=JPEG_QUALITY,
        subsampling=JPEG_SUBSAMPLING,
        optimize=False,
        progressive=False,
    )
    return buf.getvalue()


def thumbnails_for(paths: Iterable[str | os.PathLike], max_side: int = 256) -> dict[str, bytes]:
    """Thumbnails for the images at ``paths``, keyed by ``str(path)`` (as ``ImageScore.path``).

    Files that cannot be read are left out: the report draws a placeholder for them.
    Images go through :func:`charkit.images.read_image`, so EXIF orientation is applied
    exactly as it was for the face boxes.
    """
    out: dict[str, bytes] = {}
    for p in paths:
        key = str(p)
        if key in out:
            continue
        loaded = read_image(p)
        if hasattr(loaded, "image"):
            out[key] = make_thumbnail(loaded.image, max_side)
    return out


def image_mime(data: bytes) -> str | None:
    """The MIME type of thumbnail ``data`` the report can inline, or ``None``."""
    for magic, mime in _SIGNATURES:
        if data.startswith(magic):
            return mime
    return None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return img.convert("RGB")
