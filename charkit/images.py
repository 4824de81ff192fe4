"""Image intake shared by the whole project.

Every image charkit reads (references, renders, external folders) goes through
:func:`load_image`, which returns an 8-bit RGB ``PIL.Image`` the same way everywhere:

* EXIF orientation applied (phones store portraits sideways),
* alpha composited on a declared background (not silently dropped to black),
* 16-bit and 32-bit grey scaled to 8 bits (not clipped),
* CMYK / P / LA / 1 converted to RGB,
* decompression bombs refused.

:func:`read_image` wraps it so an unreadable file becomes an :class:`ImageRejection`
with a reason instead of an exception: one bad file never stops a batch.

:func:`make_thumbnail` is the one JPEG encoder of every report (pinned settings: the same image
gives the same bytes, so a re-run rewrites an identical report); :func:`image_mime` sniffs the
formats a report can inline.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")

#: Refuse anything over this many pixels (about 16k x 11k): a "photo" larger than this
#: is far more likely a decompression bomb than a reference.
MAX_PIXELS = 180_000_000


@dataclass(frozen=True)
class ImageRejection:
    """An input that could not be used, and why (recorded, never raised)."""

    path: str
    reason: str


@dataclass
class LoadedImage:
    path: str
    image: Image.Image
    #: What intake did to the file, for reports ("exif-rotated", "alpha-composited", ...).
    notes: tuple[str, ...] = ()


def _to_8bit_rgb(img: Image.Image, background: tuple[int, int, int], notes: list[str]) -> Image.Image:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if mode == "F":
            hi = max(float(arr.max(initial=0)), 1.0) if arr.max(initial=0) > 1.0 else 1.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        notes.append(f"scaled-{mode}")
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, background + (255,))
        notes.append("alpha-composited")
        return Image.alpha_composite(base, rgba).convert("RGB")
    if mode != "RGB":
        notes.append(f"converted-{mode}")
        return img.convert("RGB")
    return img


def load_image(path: str | os.PathLike, *, background: tuple[int, int, int] = (255, 255, 255)) -> LoadedImage:
    """Decode ``path`` into an 8-bit RGB image; raise ``ValueError`` with a reason if it cannot be used.

    >>> load_image("refs/01.jpg").image.mode  # doctest: +SKIP
    'RGB'
    """
    path = str(path)
    notes: list[str] = []
    old_limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS
        with warnings.catch_warnings():
            # Pillow only warns between MAX_PIXELS and 2x; treat the warning as the refusal it is.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                if getattr(img, "n_frames", 1) > 1:
                    img.seek(0)
                    notes.append("first-frame")
                oriented = ImageOps.exif_transpose(img)
                if oriented is not img:
                    orientation = img.getexif().get(0x0112, 1)
                    if orientation not in (0, 1):
                        notes.append(f"exif-orientation-{orientation}")
                rgb = _to_8bit_rgb(oriented, background, notes)
                rgb.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"refused: image too large (possible decompression bomb): {e}") from None
    except UnidentifiedImageError:
        raise ValueError("not a readable image (unknown or corrupt format)") from None
    except FileNotFoundError:
        raise ValueError("file not found") from None
    except (OSError, SyntaxError, EOFError) as e:
        raise ValueError(f"could not decode image: {e}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
    if rgb.width < 8 or rgb.height < 8:
        raise ValueError(f"image too small ({rgb.width}x{rgb.height})")
    return LoadedImage(path=path, image=rgb, notes=tuple(notes))


def read_image(path: str | os.PathLike, **kwargs) -> LoadedImage | ImageRejection:
    """Like :func:`load_image`, but an unusable file becomes an :class:`ImageRejection`."""
    try:
        return load_image(path, **kwargs)
    except ValueError as e:
        return ImageRejection(path=str(path), reason=str(e))


def is_image_file(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Every image file under ``folder``, recursively, in a stable sorted order (hidden files skipped)."""
    folder = Path(folder)
    found = [
        p
        for p in folder.rglob("*")
        if p.is_file() and is_image_file(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


# -- thumbnails: small, deterministic JPEGs for reports ------------------------------------------

#: Encoder settings, fixed so the bytes depend only on the pixels.
JPEG_QUALITY = 85
JPEG_SUBSAMPLING = 2  # 4:2:0

#: Formats the report can inline, by their magic bytes.
_SIGNATURES = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
)


def make_thumbnail(
    pil_image: Image.Image, max_side: int = 256, *, boxes: Iterable[tuple[tuple[float, ...], tuple[int, int, int]]] = ()
) -> bytes:
    """Shrink ``pil_image`` so its longest side is at most ``max_side`` and encode it as JPEG.

    The aspect ratio is kept, images are never enlarged, and alpha is composited on white
    rather than dropped to black. ``boxes`` are ``((x0, y0, x1, y1), colour)`` outlines in the
    original image's pixels, drawn onto the thumbnail (the prep report outlines faces this way;
    the verify report draws its boxes in SVG instead).

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
    if boxes:
        from PIL import ImageDraw

        img = img.copy() if img is pil_image else img
        draw = ImageDraw.Draw(img)
        for box, colour in boxes:
            draw.rectangle([v * scale for v in box], outline=colour, width=2)
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
