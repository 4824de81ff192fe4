"""Overfitting guards that need no CLIP model: prompt diversity and memorisation of the training photos.

A LoRA that overfits stops listening to the prompt before its face scores drop: every probe, whatever
it asks for, drifts toward one of the training photos. Two measurements catch that offline:

* **prompt diversity**: the probes of *different* prompts rendered with the *same* seed should look
  different. Their mutual similarity (the DCT perceptual hash of :mod:`charkit.dataset.phash`,
  ``1 - hamming / 64``: about 0.5 for unrelated pictures, 1.0 for the same picture) is compared with the
  no-LoRA baseline's. A LoRA that draws one picture for every prompt pushes it toward 1.
* **memorisation**: a probe that is a near copy of a training photo, by both the face embedding (the
  identity backend's similarity, :data:`MEMO_FACE_FRACTION` of the way from its threshold to 1) and the
  perceptual hash (at most :data:`MEMO_HASH_BITS` of 64 bits apart). Another photo of the same person
  matches the face but not the picture; only a copy matches both.

>>> round(hash_similarity(0, 0), 2), round(hash_similarity(0, (1 << 32) - 1), 2)
(1.0, 0.5)
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

from ..dataset.phash import HASH_BITS, hamming, phash, to_hex

#: face similarity of a memorised probe: this far from the backend's threshold toward 1 (dlib: 0.76)
MEMO_FACE_FRACTION = 0.6
#: perceptual-hash distance of a memorised probe (distinct photos of one person differ by 26-34 bits)
MEMO_HASH_BITS = 14


@dataclass(frozen=True)
class TrainingPhoto:
    """One training image as the memorisation guard compares probes with it."""

    name: str
    phash: int
    embedding: np.ndarray | None  # the largest face's embedding, None without a face


def hash_similarity(a: int, b: int) -> float:
    """``1 - hamming / 64`` of two perceptual hashes: 1.0 identical, about 0.5 unrelated."""
    return 1.0 - hamming(a, b) / HASH_BITS


def single(backend):
    """The one face backend the guard compares embeddings with: a panel of several backends (the identity
    engine's combined scorer) lends its primary one; embeddings of different backends never mix."""
    return getattr(backend, "primary", backend)


def largest_face(image, backend) -> np.ndarray | None:
    """Embedding of the largest embeddable face of ``image`` (PIL), or None."""
    from ..identity.analyze import analyze_array

    faces = [f for f in analyze_array(np.asarray(image.convert("RGB")), backend) if f.embedding is not None]
    return max(faces, key=lambda f: f.area).embedding if faces else None


def training_photos(paths: list[Path], backend) -> list[TrainingPhoto]:
    """Perceptual hash and face embedding of each training image (embedded once per run).

    >>> photos = training_photos([Path("dataset/images/a.png")], get_backend("dlib"))  # doctest: +SKIP
    """
    from PIL import Image

    b = single(backend)
    out = []
    for p in paths:
        with Image.open(p) as im:
            rgb = im.convert("RGB")
        out.append(TrainingPhoto(name=Path(p).name, phash=phash(rgb), embedding=largest_face(rgb, b)))
    return out


def memo_face_similarity(backend) -> float:
    t = single(backend).info.threshold
    return t + MEMO_FACE_FRACTION * (1.0 - t)


def mark_probes(images, probes, photos: list[TrainingPhoto], backend) -> None:
    """Set each probe's ``phash`` and, against the training photos, ``memorized``, ``nearest`` (the training
    photo closest in picture) and its ``copy_hash`` / ``copy_face`` similarities, in place. ``probes[i].embedding``
    is the probe's scored face (from :func:`charkit.train.evaluate.score_probes`)."""
    b = single(backend) if backend is not None else None
    face_min = memo_face_similarity(b) if b is not None else None
    for img, pr in zip(images, probes):
        h = phash(img)
        pr.phash = to_hex(h)
        if not photos:
            continue
        emb = pr.embedding
        if b is not None and pr.status in ("pass", "drift") and (emb is None or len(emb) != b.info.dim):
            emb = largest_face(img, b)  # scored by a panel: embed with the one backend the photos used
        rows = []  # (hash similarity, face similarity or None, name) per training photo
        for ph in photos:
            fs = None
            if emb is not None and ph.embedding is not None and b is not None:
                fs = float(b.similarity(emb, ph.embedding))
            rows.append((hash_similarity(h, ph.phash), fs, ph.name))
        hs, fs, name = max(rows, key=lambda r: (r[0], -2.0 if r[1] is None else r[1]))
        pr.nearest, pr.copy_hash, pr.copy_face = name, round(hs, 4), None if fs is None else round(fs, 4)
        pr.memorized = any(
            f is not None and face_min is not None and f >= face_min and (1.0 - s_) * HASH_BITS <= MEMO_HASH_BITS + 1e-9
            for s_, f, _ in rows
        )


def prompt_similarity(probes) -> float | None:
    """Mean perceptual-hash similarity of probes of different prompts rendered with the same seed (None when
    the probe set has fewer than two prompts or no hashes)."""
    by_seed: dict[int, list[int]] = {}
    for pr in probes:
        if pr.phash:
            by_seed.setdefault(pr.seed, []).append(int(pr.phash, 16))
    pairs = [hash_similarity(a, b) for hs in by_seed.values() for a, b in combinations(hs, 2)]
    return float(np.mean(pairs)) if pairs else None


def memorized_rate(probes) -> float | None:
    marked = [pr.memorized for pr in probes if pr.memorized is not None]
    return sum(marked) / len(marked) if marked else None
