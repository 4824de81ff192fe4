"""Where a face is re-drawn: boxes, the feathered mask, the crop at the family's resolution, and paste-back.

ADetailer's "inpaint only masked", made exact::

    face box      the evaluator's detection, rounded outward to whole pixels
    mask box      face box grown by ``dilate`` pixels: fully re-drawn
    feathered box mask box grown by ``mask_blur`` pixels: the mask fades to 0 across this band
    crop box      feathered box grown by ``padding`` pixels of context, widened to the inpaint aspect (square)
    inpaint size  the crop resized so its long side is the family's native resolution (snapped to its size multiple)

The pipeline re-draws everything inside the feathered box of the resized crop; the result is resized
back and composited in uint8, and only where the mask is above zero. Every pixel outside the feathered
box keeps its exact bytes.

>>> c = plan_crop((100, 80, 160, 150), (512, 512), dilate=4, mask_blur=4, padding=32, resolution=512, multiple=8)
>>> c.feathered.to_list(), c.crop.to_list(), c.size
([92, 72, 168, 158], [55, 40, 205, 190], (512, 512))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..errors import CharkitError

__all__ = ["Box", "Crop", "crop_inputs", "feather_mask", "paste", "plan_crop"]


@dataclass(frozen=True)
class Box:
    """A pixel rectangle ``[x0, x1) x [y0, y1)`` (end exclusive)."""

    x0: int
    y0: int
    x1: int
    y1: int

    @classmethod
    def around(cls, box, size: tuple[int, int]) -> Box:
        """The whole-pixel box covering a float ``(x0, y0, x1, y1)``, inside an image of ``size``."""
        x0, y0, x1, y1 = box
        return cls(math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1)).clip(size)

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def grow(self, px: int) -> Box:
        return Box(self.x0 - px, self.y0 - px, self.x1 + px, self.y1 + px)

    def clip(self, size: tuple[int, int]) -> Box:
        w, h = size
        return Box(max(0, self.x0), max(0, self.y0), min(w, self.x1), min(h, self.y1))

    def contains(self, other: Box) -> bool:
        return self.x0 <= other.x0 and self.y0 <= other.y0 and self.x1 >= other.x1 and self.y1 >= other.y1

    def iou(self, other: Box) -> float:
        ix = max(0, min(self.x1, other.x1) - max(self.x0, other.x0))
        iy = max(0, min(self.y1, other.y1) - max(self.y0, other.y0))
        inter = ix * iy
        union = self.width * self.height + other.width * other.height - inter
        return inter / union if union else 0.0

    def to_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]


@dataclass(frozen=True)
class Crop:
    """Every box of one face repair (see the module docstring) and the inpaint size."""

    face: Box
    mask: Box
    feathered: Box
    crop: Box
    size: tuple[int, int]  # (width, height) the crop is inpainted at
    blur: int

    def to_dict(self) -> dict:
        return {
            "face": self.face.to_list(),
            "mask": self.mask.to_list(),
            "feathered": self.feathered.to_list(),
            "crop": self.crop.to_list(),
            "size": list(self.size),
        }


def _span(lo: int, hi: int, length: int, limit: int) -> tuple[int, int]:
    """``[lo, hi)`` widened to ``length`` around its centre, shifted to stay inside ``[0, limit)``."""
    length = min(length, limit)
    start = lo - (length - (hi - lo)) // 2
    start = min(max(start, 0), limit - length)
    return start, start + length


def plan_crop(
    face_box,
    image_size: tuple[int, int],
    *,
    dilate: int,
    mask_blur: int,
    padding: int,
    resolution: int,
    multiple: int,
) -> Crop:
    """The boxes and inpaint size for one face (``face_box``: the detector's float box)."""
    face = Box.around(face_box, image_size)
    if face.width < 1 or face.height < 1:
        raise CharkitError(f"face box {list(face_box)} lies outside the {image_size[0]}x{image_size[1]} image")
    mask = face.grow(dilate).clip(image_size)
    feathered = mask.grow(mask_blur).clip(image_size)
    padded = feathered.grow(padding).clip(image_size)
    side = max(padded.width, padded.height)  # square: the native resolution is square for every family
    x0, x1 = _span(padded.x0, padded.x1, side, image_size[0])
    y0, y1 = _span(padded.y0, padded.y1, side, image_size[1])
    crop = Box(x0, y0, x1, y1)
    assert crop.contains(feathered), (crop, feathered)
    long = max(crop.width, crop.height)

    def snap(v: int) -> int:
        return max(multiple, round(v * resolution / long / multiple) * multiple)

    return Crop(face, mask, feathered, crop, (snap(crop.width), snap(crop.height)), mask_blur)


def feather_mask(size: tuple[int, int], mask: Box, blur: int) -> np.ndarray:
    """``H x W`` uint8: 255 inside ``mask``, a smoothstep fade over ``blur`` pixels outside it, 0 beyond.

    >>> m = feather_mask((12, 12), Box(4, 4, 8, 8), 2)
    >>> int(m[5, 5]), int(m[5, 8]) > 0, int(m[5, 10])
    (255, True, 0)
    """
    w, h = size
    xs = np.arange(w, dtype=np.float64)
    ys = np.arange(h, dtype=np.float64)
    dx = np.maximum(np.maximum(mask.x0 - xs, xs - (mask.x1 - 1)), 0)
    dy = np.maximum(np.maximum(mask.y0 - ys, ys - (mask.y1 - 1)), 0)
    d = np.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2)
    t = np.clip(1.0 - d / (blur + 1), 0.0, 1.0)
    return np.rint(255 * t * t * (3 - 2 * t)).astype(np.uint8)


def crop_inputs(image: Image.Image, crop: Crop) -> tuple[Image.Image, Image.Image]:
    """The crop resized to the inpaint size, and its binary mask (white: everything the paste may change)."""
    region = image.convert("RGB").crop(tuple(crop.crop.to_list()))
    local = Box(
        crop.feathered.x0 - crop.crop.x0,
        crop.feathered.y0 - crop.crop.y0,
        crop.feathered.x1 - crop.crop.x0,
        crop.feathered.y1 - crop.crop.y0,
    )
    mask = Image.new("L", (crop.crop.width, crop.crop.height), 0)
    mask.paste(255, tuple(local.to_list()))
    return region.resize(crop.size, Image.LANCZOS), mask.resize(crop.size, Image.NEAREST)


def paste(image: Image.Image, crop: Crop, candidate: Image.Image) -> Image.Image:
    """``image`` with ``candidate`` (an inpainted crop, ``crop.size``) blended in through the feathered mask.

    Composited in uint8 only where the mask is above zero: every other pixel is the original byte.
    """
    if tuple(candidate.size) != tuple(crop.size):
        raise CharkitError(
            f"candidate face is {candidate.size[0]}x{candidate.size[1]}, not the inpaint size {crop.size[0]}x{crop.size[1]}"
        )
    base = np.asarray(image.convert("RGB"), dtype=np.uint8)
    out = base.copy()
    c = crop.crop
    new = np.asarray(candidate.convert("RGB").resize((c.width, c.height), Image.LANCZOS), dtype=np.uint16)
    m = feather_mask((base.shape[1], base.shape[0]), crop.mask, crop.blur)[c.y0 : c.y1, c.x0 : c.x1]
    old = base[c.y0 : c.y1, c.x0 : c.x1].astype(np.uint16)
    a = m[..., None].astype(np.uint16)
    blended = ((new * a + old * (255 - a) + 127) // 255).astype(np.uint8)
    region = out[c.y0 : c.y1, c.x0 : c.x1]
    sel = m > 0
    region[sel] = blended[sel]
    return Image.fromarray(out)
