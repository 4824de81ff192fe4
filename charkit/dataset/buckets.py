"""Aspect buckets and the face-aware crop.

A family trains at ``resolution`` (512 for SD1.5, 1024 for SDXL/SD3/Flux). Rather than
squash every photo into a square, each photo goes to the *bucket* whose aspect ratio is
closest to its own: buckets keep an area of about ``resolution**2`` and sides that are
multiples of ``step`` (64 from 512 up; ``resolution // 8`` for the tiny test models).

The crop (:func:`plan_crop`) is a pure function of the image size, the face box and the
bucket, so it is deterministic and property-tested: the window has the bucket's aspect,
stays inside the image, puts the face centre at the horizontal middle and a third of the
way down (as far as the image allows) and never cuts the face off when the face fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import CharkitError

#: width:height ratios offered (duplicates after rounding are dropped)
DEFAULT_RATIOS: tuple[tuple[int, int], ...] = ((1, 1), (4, 5), (5, 4), (3, 4), (4, 3), (2, 3), (3, 2), (9, 16), (16, 9))

#: the crop is tightened until the face box is at least this fraction of the crop height
#: (a full-body photo becomes a medium shot; a portrait keeps its whole frame)
MIN_FACE_HEIGHT = 0.2
#: where the face centre goes, as a fraction of the crop height from the top
FACE_CENTRE_Y = 1 / 3


@dataclass(frozen=True, order=True)
class Bucket:
    width: int
    height: int

    @property
    def ratio(self) -> float:
        return self.width / self.height

    @property
    def label(self) -> str:
        return f"{self.width}x{self.height}"


def bucket_step(resolution: int, size_multiple: int = 8) -> int:
    """Side granularity: 64 at 512 and above, ``resolution // 8`` below (at least ``size_multiple``)."""
    return max(size_multiple, min(64, resolution // 8) // size_multiple * size_multiple)


def aspect_buckets(
    resolution: int,
    *,
    step: int | None = None,
    ratios: tuple[tuple[int, int], ...] = DEFAULT_RATIOS,
    size_multiple: int = 8,
) -> list[Bucket]:
    """Buckets of area about ``resolution**2`` (within 15%) with sides that are multiples of ``step``.

    >>> [b.label for b in aspect_buckets(512)][:3]
    ['384x704', '448x576', '448x640']
    """
    if not isinstance(resolution, int) or resolution < 64 or resolution % 8:
        raise CharkitError(
            f"resolution {resolution!r}: must be a whole number of pixels, at least 64 and a multiple of 8"
        )
    step = bucket_step(resolution, size_multiple) if step is None else step
    out = set()
    for w_r, h_r in ratios:
        r = w_r / h_r
        w = max(step, round(resolution * math.sqrt(r) / step) * step)
        h = max(step, round(resolution / math.sqrt(r) / step) * step)
        out.add(Bucket(w, h))
    return sorted(out)


def choose_bucket(width: int, height: int, buckets: list[Bucket]) -> Bucket:
    """The bucket whose aspect ratio is closest to ``width/height`` (in log ratio; ties: the squarer one)."""
    target = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b.ratio) - target), abs(math.log(b.ratio)), b.width))


@dataclass(frozen=True)
class CropPlan:
    """Where to cut the source (float pixel box) and where the face lands in the output."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in source pixels
    bucket: Bucket
    face_box: tuple[float, float, float, float]  # in output pixels, clipped to the output
    scale: float  # output pixels per source pixel (> 1 means upscaled)
    face_cut: bool  # part of the face box lies outside the crop (only when the face cannot fit)


def plan_crop(
    width: int,
    height: int,
    face_box: tuple[float, float, float, float],
    bucket: Bucket,
    *,
    min_face_height: float = MIN_FACE_HEIGHT,
    face_centre_y: float = FACE_CENTRE_Y,
) -> CropPlan:
    """A window of the bucket's aspect around the face.

    Size: the largest window that fits, tightened so the face is at least ``min_face_height``
    of its height, but never smaller than the bucket itself (no needless upscaling).
    Position: face centre at the middle horizontally and ``face_centre_y`` down, clamped into
    the image (so the face stays whole whenever it fits in the window).

    >>> plan_crop(1000, 1000, (400, 300, 600, 500), Bucket(512, 512)).box
    (0.0, 0.0, 1000.0, 1000.0)
    """
    a = bucket.ratio
    fit_h = min(float(height), width / a)
    fx0, fy0, fx1, fy1 = (
        min(max(face_box[0], 0.0), width),
        min(max(face_box[1], 0.0), height),
        min(max(face_box[2], 0.0), width),
        min(max(face_box[3], 0.0), height),
    )
    fh = max(fy1 - fy0, 1.0)
    ch = min(fit_h, max(fh / min_face_height, float(bucket.height)))
    cw = ch * a
    cx, cy = (fx0 + fx1) / 2, (fy0 + fy1) / 2
    x0 = min(max(cx - cw / 2, 0.0), width - cw)
    y0 = min(max(cy - ch * face_centre_y, 0.0), height - ch)
    x0, y0 = max(x0, 0.0), max(y0, 0.0)
    box = (x0, y0, x0 + cw, y0 + ch)
    s = bucket.height / ch
    out_face = (
        min(max((fx0 - x0) * s, 0.0), bucket.width),
        min(max((fy0 - y0) * s, 0.0), bucket.height),
        min(max((fx1 - x0) * s, 0.0), bucket.width),
        min(max((fy1 - y0) * s, 0.0), bucket.height),
    )
    eps = 1e-6
    cut = fx0 < box[0] - eps or fy0 < box[1] - eps or fx1 > box[2] + eps or fy1 > box[3] + eps
    return CropPlan(box=box, bucket=bucket, face_box=out_face, scale=s, face_cut=cut)
