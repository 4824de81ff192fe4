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
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
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
