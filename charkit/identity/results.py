"""Typed results of the identity engine: which face is which character, and how close it is."""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import Face

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
            "similarity": rounded(self.similarity),
            "distance": rounded(self.distance),
            "relative": rounded(self.relative),
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
    repair: dict | None = None  # the manifest's identity-repair record (before/after), when the image has one

    def to_dict(self) -> dict:
        d = {
            "path": self.path,
            "run": self.run,
            "scene": self.scene,
            "model": self.model,
            "prompt": self.prompt,
            "order": self.order,
            "status": self.status,
            "similarity": rounded(self.similarity),
            "distance": rounded(self.distance),
            "relative": rounded(self.relative),
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
        if self.repair is not None:
            d["repair"] = self.repair
        return d


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
            "baseline_mean": rounded(self.baseline_mean),
            "baseline_min": rounded(self.baseline_min),
            "outliers": list(self.outliers),
            "rejected": list(self.rejected),
        }


def rounded(v: float | None, nd: int = 4) -> float | None:
    return None if v is None else round(float(v), nd)
