"""Perceptual hash (DCT "pHash") for near-duplicate detection.

The image is reduced to 32x32 grey, transformed with a 2-D DCT, and the 8x8 lowest
frequencies (DC term excluded from the median) become 64 bits: "above the median or not".
Re-saving, re-compressing or resizing a photo moves few bits (typically 0-6 of 64);
two different photos differ in about half of them. The Hamming distance between two
hashes is the measure.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.fft import dctn

HASH_BITS = 64
_SIDE = 32
_LOW = 8


def phash(image: Image.Image) -> int:
    """64-bit DCT perceptual hash of ``image`` (any mode).

    >>> phash(Image.new("RGB", (64, 64), "white")) >= 0
    True
    """
    # LANCZOS over the whole image averages away JPEG noise before the DCT; float grey keeps it deterministic.
    grey = image.convert("L").resize((_SIDE, _SIDE), Image.LANCZOS)
    pixels = np.asarray(grey, dtype=np.float64)
    low = dctn(pixels, type=2, norm="ortho")[:_LOW, :_LOW].ravel()
    median = np.median(low[1:])  # the DC term only says how bright the image is
    bits = low > median
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two hashes."""
    return (a ^ b).bit_count()


def to_hex(h: int) -> str:
    return f"{h:016x}"
