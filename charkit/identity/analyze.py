"""Analyse one image file: intake -> faces + embeddings (+ a thumbnail), through the cache.

A file is read and hashed once and decoded at most once (:class:`ImageFile`), however many
backends analyse it and whatever else (the look profile) needs its pixels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..images import LoadedImage, load_image, make_thumbnail
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


class ImageFile:
    """One image file: read and hashed on creation, decoded on first use (then kept), never raising.

    >>> f = ImageFile("renders/s01.png")  # doctest: +SKIP
    >>> f.sha256[:8], f.pixels().shape  # doctest: +SKIP
    ('3f9a01c2', (512, 512, 3))
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self.sha256: str | None = None
        self.error: str | None = None  # why the file cannot be used (unreadable, undecodable)
        self._loaded: LoadedImage | None = None
        try:
            self.sha256 = sha256_bytes(Path(path).read_bytes())
        except OSError as e:
            self.error = f"could not read file: {e.strerror or e}"

    def load(self) -> LoadedImage | None:
        """The decoded image, or None (``error`` says why)."""
        if self._loaded is None and self.error is None:
            try:
                self._loaded = load_image(self.path)
            except ValueError as e:
                self.error = str(e)
        return self._loaded

    def pixels(self) -> np.ndarray | None:
        loaded = self.load()
        return None if loaded is None else np.asarray(loaded.image)


def analyze_array(image: np.ndarray | Image.Image, backend: FaceBackend) -> list[Face]:
    """Faces with embeddings in an in-memory image (renders scored before they are written)."""
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    return backend.analyze(arr)


def analyze_file(
    path: str | os.PathLike | ImageFile,
    backend: FaceBackend,
    cache: FaceCache | None = None,
    *,
    thumbnails: bool = True,
) -> AnalyzedImage:
    """Faces, size and thumbnail of ``path``; served from ``cache`` when the bytes and model are unchanged.

    Pass an :class:`ImageFile` to analyse one file with several backends and decode it once.
    An unreadable file gives an ``AnalyzedImage`` with ``error`` set, never an exception.
    """
    f = path if isinstance(path, ImageFile) else ImageFile(path)
    if f.sha256 is None:
        return AnalyzedImage(path=f.path, sha256=None, error=f.error)
    key = backend.info.cache_key
    if cache is not None:
        hit = cache.get(key, f.sha256)
        if hit is not None and (hit.thumbnail is not None or not thumbnails):
            return AnalyzedImage(f.path, f.sha256, hit.faces, hit.width, hit.height, hit.notes, hit.thumbnail)
    loaded = f.load()
    if loaded is None:
        return AnalyzedImage(path=f.path, sha256=f.sha256, error=f.error)
    img = loaded.image
    faces = backend.analyze(np.asarray(img))
    thumb = make_thumbnail(img, THUMB_SIDE) if thumbnails else None
    result = AnalyzedImage(f.path, f.sha256, faces, img.width, img.height, list(loaded.notes), thumb)
    if cache is not None:
        cache.put(key, f.sha256, CachedImage(faces, img.width, img.height, list(loaded.notes), thumb))
    return result
