"""Matched scale: the face and its surroundings resampled so the face box is ``scale_to`` pixels.

Every look measure is taken on this crop, never on the file's own pixels: a 4000 px phone photo
and a 512 px render then describe the same physical scale (one matched pixel is 1/``scale_to`` of
the face box), so "grain" or "detail" mean the same thing in both. The box side (sqrt of its
area) sets the scale rather than the eye distance: every backend gives a box, and the eye distance
shrinks as the head turns, which would blow a three-quarter view up to a larger scale.

Layout, in units of the face box side (box centred at 0)::

    |<---------------------- 2.0: crop (filter support) --------------------->|
            |<-------------- 1.4: context (face + ring) -------------->|
                  |<-------- 1.2: face (box + 10 % pad) -------->|

The ring is narrow on purpose (hairline, ears, the shadow under the jaw, the background right
next to the head): it says how the face sits in its light without letting the scene decide the
numbers (a white palace room or a night street behind the head is content, not look).

Downscaling uses area averaging (an anti-aliasing filter: no fake detail from aliasing) and
upscaling bicubic interpolation (it keeps edges better than bilinear, so sharpness holds down to
half of ``scale_to``). Both are linear, so a gain applied to the image passes through the
resampling exactly (the property tests rely on it); bicubic may overshoot [0, 1] slightly and the
crop is not clipped, for the same reason. An upscaled face (``face_px < scale_to``) cannot show
detail finer than its source pixels: its smoothness and noise read smoother and cleaner than the
same face photographed larger. ``LookMeasures.upsampled`` flags it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from ..errors import CharkitError

#: padding of the face region on each side, in box sides (dlib/SCRFD boxes cut the forehead and chin)
FACE_PAD = 0.10
#: side of the context window (face + ring: hairline, ears, jaw shadow, the background next to the head)
CONTEXT_SIDE = 1.4
#: side of the crop that is resampled; the extra margin feeds the filters real pixels at the context edge
CROP_SIDE = 2.0
#: smaller boxes hold too few pixels for any texture statistic
MIN_FACE_PX = 16


@dataclass(frozen=True)
class MatchedCrop:
    """The resampled crop (float32 RGB, about [0, 1]) and its two regions as boolean masks."""

    rgb: np.ndarray
    face: np.ndarray
    context: np.ndarray
    face_px: int  # sqrt(box area) in the source image, rounded
    factor: float  # matched pixels per source pixel

    @property
    def luma(self) -> np.ndarray:
        """Rec. 709 luma Y' of the gamma-encoded sRGB values, in [0, 1]."""
        return self.rgb @ np.asarray([0.2126, 0.7152, 0.0722], np.float32)


def as_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """``HxWx3`` uint8 or float pixels from a PIL image or an array (grey ``HxW`` repeated to RGB)."""
    arr = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image (HxWx3) or a grey one (HxW), got an array of shape {arr.shape}")
    if arr.dtype != np.uint8 and not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"expected uint8 pixels or floats in [0, 1], got {arr.dtype}")
    return arr


def to_float(arr: np.ndarray) -> np.ndarray:
    """float32 in [0, 1] from uint8, or from floats already in [0, 1] (checked)."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255.0)
    if not np.isfinite(arr).all() or arr.min(initial=0.0) < 0.0 or arr.max(initial=0.0) > 1.0:
        raise ValueError("a float image must hold finite values in [0, 1]")
    return arr.astype(np.float32)


def _box_of(face_box) -> tuple[float, float, float, float]:
    box = getattr(face_box, "box", face_box)  # a charkit.identity.Face, or its box
    if not isinstance(box, Sequence | np.ndarray) or len(box) != 4:
        raise ValueError(f"face_box must be (x0, y0, x1, y1) or a Face, got {face_box!r}")
    x0, y0, x1, y1 = (float(v) for v in box)
    return x0, y0, x1, y1


def matched_crop(image: Image.Image | np.ndarray, face_box, *, scale_to: int = 256) -> MatchedCrop:
    """Resample the surroundings of ``face_box`` so the box side becomes ``scale_to`` pixels.

    >>> crop = matched_crop(img, (366, 136, 624, 394))  # doctest: +SKIP
    >>> crop.face_px, crop.rgb.shape  # doctest: +SKIP
    (258, (512, 512, 3))
    """
    if scale_to < MIN_FACE_PX:
        raise ValueError(f"scale_to must be at least {MIN_FACE_PX}, got {scale_to}")
    rgb = as_rgb_array(image)
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = _box_of(face_box)
    bw, bh = x1 - x0, y1 - y0
    side = math.sqrt(max(bw, 0.0) * max(bh, 0.0))
    if side < MIN_FACE_PX:
        raise CharkitError(f"face box {face_box!r} is {side:.0f} px; the look profile needs at least {MIN_FACE_PX} px")
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if not (0 <= cx < w and 0 <= cy < h):
        raise CharkitError(f"face box {face_box!r} is centred outside the {w}x{h} image")
    # Integer crop in source pixels (clipped at the image border; the filters reflect there).
    half_w, half_h = CROP_SIDE * bw / 2, CROP_SIDE * bh / 2
    sx0, sx1 = max(0, math.floor(cx - half_w)), min(w, math.ceil(cx + half_w))
    sy0, sy1 = max(0, math.floor(cy - half_h)), min(h, math.ceil(cy + half_h))
    factor = scale_to / side
    out_w, out_h = max(1, round((sx1 - sx0) * factor)), max(1, round((sy1 - sy0) * factor))
    src = np.ascontiguousarray(to_float(rgb[sy0:sy1, sx0:sx1]))  # only the crop: a 4000 px photo stays cheap
    if (out_w, out_h) == (sx1 - sx0, sy1 - sy0):
        out = src
    else:
        interp = cv2.INTER_AREA if factor < 1.0 else cv2.INTER_CUBIC
        out = cv2.resize(src, (out_w, out_h), interpolation=interp)
    # Regions in matched pixels (the exact scale per axis after rounding the output size).
    fx, fy = out_w / (sx1 - sx0), out_h / (sy1 - sy0)
    face = _rect_mask(out_h, out_w, cx, cy, (1 + 2 * FACE_PAD) * bw, (1 + 2 * FACE_PAD) * bh, sx0, sy0, fx, fy)
    context = _rect_mask(out_h, out_w, cx, cy, CONTEXT_SIDE * bw, CONTEXT_SIDE * bh, sx0, sy0, fx, fy)
    if not face.any():
        raise CharkitError(f"face box {face_box!r} leaves no face pixels inside the {w}x{h} image")
    return MatchedCrop(rgb=out, face=face, context=context, face_px=round(side), factor=factor)


def _rect_mask(h, w, cx, cy, rw, rh, sx0, sy0, fx, fy) -> np.ndarray:
    u0, u1 = round((cx - rw / 2 - sx0) * fx), round((cx + rw / 2 - sx0) * fx)
    v0, v1 = round((cy - rh / 2 - sy0) * fy), round((cy + rh / 2 - sy0) * fy)
    mask = np.zeros((h, w), bool)
    mask[max(0, v0) : max(0, v1), max(0, u0) : max(0, u1)] = True
    return mask
