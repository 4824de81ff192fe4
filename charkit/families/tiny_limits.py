"""Tiny models behave like tiny models: what ``charkit tiny-model`` wrote is recognised, and sized to match.

A tiny random-weight pipeline draws noise at any size, but its VAE downsamples only by 2: at a real
preset's 512x768 and 30 steps one scene takes minutes on a CPU, a training step half a minute. Render
and train read :func:`is_tiny_model` (a ``charkit-tiny.json`` beside the pipeline, read without
loading anything) and scale a real model's sizes down to :func:`tiny_size` (and their steps to
:data:`TINY_STEPS`), saying so once; ``--full-size`` keeps the settings as written.

>>> tiny_size(512, 768, multiple=8)
(64, 96)
>>> tiny_size(64, 64, multiple=8)
(64, 64)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = [
    "TINY_MARKER",
    "TINY_MAX_PIXELS",
    "TINY_SIDE",
    "TINY_STEPS",
    "is_tiny_model",
    "tiny_parts",
    "tiny_size",
    "too_big",
]

#: the file ``charkit tiny-model`` writes into the pipeline folder
TINY_MARKER = "charkit-tiny.json"
#: short side of a tiny-model image (64 px: 32x32 latents with the tiny VAE)
TINY_SIDE = 64
#: more pixels than this (128x128) is "full size" for a tiny model
TINY_MAX_PIXELS = 128 * 128
#: denoising steps of a scaled-down scene (more changes nothing visible: the weights are random)
TINY_STEPS = 4


def is_tiny_model(source: str | os.PathLike | None) -> bool:
    """True for a folder (or its single file) written by ``charkit tiny-model``: no model is loaded."""
    if source is None:
        return False
    p = Path(source).expanduser()
    for folder in (p, *p.parents[:2]) if p.is_file() else (p,):
        marker = folder / TINY_MARKER
        if marker.is_file():
            try:
                return bool(json.loads(marker.read_text("utf-8")).get("tiny", True))
            except (OSError, ValueError, AttributeError):
                return True  # written by tiny-model, whatever else it says
    return False


def tiny_parts(source: str | os.PathLike) -> dict[str, Path]:
    """The extras ``charkit tiny-model`` wrote beside a tiny pipeline folder: controlnet, ip_adapter,
    image_encoder, faceid (absolute paths; absent ones left out). Empty for any other model."""
    root = Path(source).expanduser()
    try:
        data = json.loads((root / TINY_MARKER).read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    keys = ("controlnet", "ip_adapter", "image_encoder", "faceid")
    return {k: (root / data[k]).resolve() for k in keys if isinstance(data, dict) and isinstance(data.get(k), str)}


def too_big(width: int, height: int) -> bool:
    """Whether this is a real model's size (minutes per image, half a minute per training step, on a tiny one)."""
    return width * height > TINY_MAX_PIXELS


def tiny_size(width: int, height: int, *, multiple: int) -> tuple[int, int]:
    """The same aspect ratio with the short side at TINY_SIDE, both sides multiples of ``multiple``."""
    if width * height <= TINY_MAX_PIXELS:
        return width, height
    scale = TINY_SIDE / min(width, height)

    def side(v: int) -> int:
        return max(multiple, round(v * scale / multiple) * multiple)

    return side(width), side(height)
