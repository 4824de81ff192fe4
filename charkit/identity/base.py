"""The one interface every face backend implements.

A backend turns an RGB image into :class:`Face` records (box, landmarks, detector
score) and each face into an embedding vector, and says how to compare two vectors.
Scores are always reported as a *similarity* where higher means more alike and
``similarity >= threshold`` means "same person"; each backend maps its native metric
onto that scale (dlib: ``1 - L2 distance``; ArcFace: cosine) and documents the data
its threshold came from (docs/identity.md).
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import CharkitError

#: A same-person threshold on any backend's similarity (cosine, or dlib's 1 - L2): at 0 or below strangers pass
#: (unrelated faces score around 0.0-0.35), at 1 no second photo ever does.
THRESHOLD_RANGE = (0.0, 1.0)


def check_threshold(value, backend: str, *, calibrated: float | None = None) -> float:
    """``value`` as a threshold for ``backend``'s similarity scale, or one line saying what to pass instead.

    >>> check_threshold("0.45", "dlib")
    0.45
    >>> check_threshold(float("nan"), "sface", calibrated=0.4)
    Traceback (most recent call last):
    ...
    charkit.errors.CharkitError: --threshold nan: not a usable threshold for sface (a same-person threshold lies strictly between 0 and 1: at 0 or below strangers pass, at 1 nobody does); pass e.g. 0.40, its calibrated value
    """
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = math.nan
    lo, hi = THRESHOLD_RANGE
    if not (math.isfinite(t) and lo < t < hi):
        example = f"pass e.g. {calibrated:.2f}, its calibrated value" if calibrated is not None else "pass e.g. 0.40"
        raise CharkitError(
            f"--threshold {value}: not a usable threshold for {backend} (a same-person threshold lies strictly between "
            f"{lo:g} and {hi:g}: at {lo:g} or below strangers pass, at {hi:g} nobody does); {example}"
        )
    return t


@dataclass
class Face:
    """One detected face. ``box`` is ``(x0, y0, x1, y1)`` in pixels of the intake image.

    After ``analyze``, a face the backend could not embed (e.g. too small for its recogniser)
    has ``embedding=None`` and says why in ``reason``; it is reported but not scored.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: list[tuple[float, float]] = field(default_factory=list)
    embedding: np.ndarray | None = None
    reason: str | None = None

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)

    def to_dict(self, with_embedding: bool = False) -> dict:
        d = {
            "box": [round(float(v), 1) for v in self.box],
            "score": round(float(self.score), 4),
            "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in self.landmarks],
        }
        if self.reason is not None:
            d["reason"] = self.reason
        if with_embedding and self.embedding is not None:
            d["embedding"] = [float(v) for v in self.embedding]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Face:
        emb = d.get("embedding")
        return cls(
            box=tuple(d["box"]),
            score=float(d["score"]),
            landmarks=[tuple(p) for p in d.get("landmarks", [])],
            embedding=None if emb is None else np.asarray(emb, dtype=np.float32),
            reason=d.get("reason"),
        )


@dataclass(frozen=True)
class BackendInfo:
    """What every score records about the model that produced it (evaluator independence)."""

    name: str
    model: str
    model_hash: str
    dim: int
    metric: str
    threshold: float
    licence: str

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "model": self.model,
            "model_hash": self.model_hash,
            "dim": self.dim,
            "metric": self.metric,
            "threshold": self.threshold,
            "licence": self.licence,
        }

    @property
    def cache_key(self) -> str:
        return f"{self.name}-{self.model_hash[:16]}"


class FaceBackend(abc.ABC):
    """detect -> faces; embed -> vector; similarity on a common higher-is-closer scale."""

    #: Short name used on the CLI (``--backend``) and in reports.
    name: str = ""

    @property
    @abc.abstractmethod
    def info(self) -> BackendInfo:
        """Backend name, model file hash, dimension, metric, calibrated threshold, licence."""

    @abc.abstractmethod
    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 ``HxWx3`` array, largest first."""

    @abc.abstractmethod
    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        """The identity vector of ``face`` in ``image`` (float32, length ``info.dim``)."""

    def analyze(self, image: np.ndarray) -> list[Face]:
        """Detect and embed every face (backends that do both at once override this)."""
        faces = self.detect(image)
        for f in faces:
            f.embedding = self.embed(image, f)
        return faces

    # -- comparison: the backend's native metric mapped to "similarity" -----------------
    @abc.abstractmethod
    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        """Higher is more alike; ``>= info.threshold`` means the same person."""

    @abc.abstractmethod
    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """The backend's native distance (dlib: L2; ArcFace: 1 - cosine)."""

    @abc.abstractmethod
    def centroid(self, vectors: np.ndarray) -> np.ndarray:
        """The reference centroid of ``N x dim`` vectors, in the backend's own space."""

    def similarities(self, vectors: np.ndarray, target: np.ndarray) -> np.ndarray:
        return np.asarray([self.similarity(v, target) for v in vectors], dtype=np.float64)


class CosineBackend(FaceBackend):
    """A backend whose embeddings live on the unit sphere (ArcFace, SFace): similarity is the cosine."""

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.dot(unit(np.ravel(a)), unit(np.ravel(b))))

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        return 1.0 - self.similarity(a, b)

    def similarities(self, vectors: np.ndarray, target: np.ndarray) -> np.ndarray:
        return unit(np.atleast_2d(vectors)) @ unit(np.ravel(target))

    def centroid(self, vectors: np.ndarray) -> np.ndarray:
        # on the unit sphere: the mean of unit vectors, renormalised
        return unit(unit(np.atleast_2d(vectors)).mean(axis=0)).astype(np.float32)


def unit(v: np.ndarray) -> np.ndarray:
    """Rows (or one vector) scaled to length 1, float64."""
    v = np.asarray(v, dtype=np.float64)
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def bgr(image: np.ndarray) -> np.ndarray:
    """OpenCV's BGR uint8 (what insightface and OpenCV's face models read) from charkit's RGB or grey array."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image array, got {arr.dtype}")
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return np.ascontiguousarray(arr[..., 2::-1])
