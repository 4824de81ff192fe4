"""Typed results of the identity engine (what reports are built from)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import BackendInfo, Face

#: image status values, in report order
STATUSES = ("pass", "drift", "no_face", "error")


@dataclass
class CharacterMatch:
    """Which detected face is this character's, and how close it is to the reference centroid."""

    character: str
    face: int | None  # index into ImageScore.faces; None when no face was left for it
    similarity: float | None
    distance: float | None
    relative: float | None  # similarity / the character's leave-one-out baseline mean
    status: str  # "pass" | "drift" | "missing"

    def to_dict(self) -> dict:
        return {
            "character": self.character,
            "face": self.face,
            "similarity": _r(self.similarity),
            "distance": _r(self.distance),
            "relative": _r(self.relative),
            "status": self.status,
        }


@dataclass
class ImageScore:
    """One image scored against the characters it should hold.

    ``similarity``/``distance``/``relative`` are the worst over the expected characters
    (for the usual one-character image: that character's).
    """

    path: str
    run: str
    status: str  # "pass" | "drift" | "no_face" | "error"
    similarity: float | None = None
    distance: float | None = None
    relative: float | None = None
    faces: list[Face] = field(default_factory=list)
    matches: list[CharacterMatch] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    swapped: list[list[str]] = field(default_factory=list)
    width: int | None = None
    height: int | None = None
    sha256: str | None = None
    scene: str | None = None
    model: str | None = None
    prompt: str | None = None  # from a render manifest
    order: int = 0  # position along the scene order (manifest order, else sorted path order)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "run": self.run,
            "scene": self.scene,
            "model": self.model,
            "prompt": self.prompt,
            "order": self.order,
            "status": self.status,
            "similarity": _r(self.similarity),
            "distance": _r(self.distance),
            "relative": _r(self.relative),
            "faces": [f.to_dict() for f in self.faces],
            "matches": [m.to_dict() for m in self.matches],
            "expected": list(self.expected),
            "missing": list(self.missing),
            "swapped": [list(p) for p in self.swapped],
            "width": self.width,
            "height": self.height,
            "sha256": self.sha256,
            "notes": list(self.notes),
            "error": self.error,
        }


@dataclass
class ProfileSummary:
    """A character's reference set as the report shows it."""

    name: str
    folder: str
    references: int
    baseline_mean: float | None
    baseline_min: float | None
    outliers: list[str] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)  # {"path", "reason"}

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "folder": self.folder,
            "references": self.references,
            "baseline_mean": _r(self.baseline_mean),
            "baseline_min": _r(self.baseline_min),
            "outliers": list(self.outliers),
            "rejected": list(self.rejected),
        }


@dataclass
class RunSummary:
    """Counts and similarity statistics of one run (one model, or one external folder)."""

    run: str
    images: int
    passed: int
    drift: int
    no_face: int
    errors: int
    mean_similarity: float | None
    min_similarity: float | None
    pass_rate: float | None  # passed / images with a face

    def to_dict(self) -> dict:
        return {
            "run": self.run,
            "images": self.images,
            "pass": self.passed,
            "drift": self.drift,
            "no_face": self.no_face,
            "error": self.errors,
            "mean_similarity": _r(self.mean_similarity),
            "min_similarity": _r(self.min_similarity),
            "pass_rate": _r(self.pass_rate),
        }


@dataclass
class VerifyReport:
    """Everything ``charkit verify`` found; ``report.json`` is :meth:`to_dict`."""

    backend: BackendInfo
    threshold: float
    characters: list[ProfileSummary]
    runs: list[RunSummary]
    images: list[ImageScore]
    licence_note: str
    charkit_version: str

    @property
    def baseline(self) -> dict[str, dict]:
        return {
            c.name: {"mean": _r(c.baseline_mean), "min": _r(c.baseline_min), "references": c.references}
            for c in self.characters
        }

    @property
    def drift_found(self) -> bool:
        return any(i.status == "drift" for i in self.images)

    def to_dict(self) -> dict:
        return {
            "charkit_version": self.charkit_version,
            "backend": self.backend.to_dict(),
            "threshold": self.threshold,
            "baseline": self.baseline,
            "licence_note": self.licence_note,
            "characters": [c.to_dict() for c in self.characters],
            "runs": [r.to_dict() for r in self.runs],
            "images": [i.to_dict() for i in self.images],
        }


def _r(v: float | None, nd: int = 4) -> float | None:
    return None if v is None else round(float(v), nd)
