"""Analyse one image file: intake -> faces + embeddings (+ a thumbnail), through the cache."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..images import load_image, make_thumbnail
from ..paths import sha256_bytes
from .base import Face, FaceBackend
from .cache import CachedImage, FaceCache

THUMB_SIDE = 256


@dataclass
class AnalyzedImage:
    path: str
    sha256: str | None
    faces: list[Face] = field(default_factory=list)
    width: int | None = None
    height: int | None = None
    notes: list[str] = field(default_factory=list)
    thumbnail: bytes | None = None
    error: str | None = None


def analyze_array(image: np.ndarray | Image.Image, backend: FaceBackend) -> list[Face]:
    """Faces with embeddings in an in-memory image (renders scored before they are written)."""
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    return backend.analyze(arr)


def analyze_file(
    path: str | os.PathLike,
    backend: FaceBackend,
    cache: FaceCache | None = None,
    *,
    thumbnails: bool = True,
) -> AnalyzedImage:
    """Faces, size and thumbnail of ``path``; served from ``cache`` when the bytes and model are unchanged.

    An unreadable file gives an ``AnalyzedImage`` with ``error`` set, never an exception.
    """
    path = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return AnalyzedImage(path=path, sha256=None, error=f"could not read file: {e.strerror or e}")
    sha = sha256_bytes(data)
    key = backend.info.cache_key
    if cache is not None:
        hit = cache.get(key, sha)
        if hit is not None and (hit.thumbnail is not None or not thumbnails):
            return AnalyzedImage(path, sha, hit.faces, hit.width, hit.height, hit.notes, hit.thumbnail)
    try:
        loaded = load_image(path)
    except ValueError as e:
        return AnalyzedImage(path=path, sha256=sha, error=str(e))
    img = loaded.image
    faces = backend.analyze(np.asarray(img))
    thumb = make_thumbnail(img, THUMB_SIDE) if thumbnails else None
    result = AnalyzedImage(path, sha, faces, img.width, img.height, list(loaded.notes), thumb)
    if cache is not None:
        cache.put(key, sha, CachedImage(faces, img.width, img.height, list(loaded.notes), thumb))
    return result
