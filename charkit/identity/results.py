"""Typed results of the identity engine: which face is which character, and how close it is."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .base import Face

if TYPE_CHECKING:
    from ..look import LookMeasures

#: image status values, in report order
STATUSES = ("pass", "drift", "no_face", "error")


@dataclass
class BackendMatch:
    """One backend's opinion of one character in one image (in that backend's own similarity scale)."""

    backend: str
    face: int | None  # index into ImageScore.faces; None when this backend found no face for the character
    similarity: float | None
    distance: float | None
    relative: float | None
    status: str  # "pass" | "drift" | "missing" (this backend has no opinion: no face, or none it could embed)
    independent: bool = True  # False: this model conditioned the image (counted only under --allow-same-evaluator)

    def to_dict(self) -> dict:
        return {
            "face": self.face,
            "similarity": rounded(self.similarity),
            "distance": rounded(self.distance),
            "relative": rounded(self.relative),
            "status": self.status,
            "independent": self.independent,
        }


@dataclass
class BackendVerdict:
    """One backend's verdict on a whole image: its status and worst similarity."""

    status: str  # "pass" | "drift" | "no_face" | "error"
    similarity: float | None
    independent: bool = True

    def to_dict(self) -> dict:
        return {"status": self.status, "similarity": rounded(self.similarity), "independent": self.independent}


@dataclass
class CharacterMatch:
    """Which detected face is this character's, and how close it is to the reference centroid.

    With one backend, ``similarity`` is that backend's; with several (a
    :class:`~charkit.identity.panel.BackendPanel`) it is the combined score and ``scores`` holds each
    backend's own numbers (``agree`` is False when the counted backends disagree on pass/drift).
    """

    character: str
    face: int | None  # index into ImageScore.faces; None when no face was left for it
    similarity: float | None
    distance: float | None
    relative: float | None  # similarity / the character's leave-one-out baseline mean
    status: str  # "pass" | "drift" | "missing"
    scores: dict[str, BackendMatch] = field(default_factory=dict)
    agree: bool | None = None  # None: fewer than two backends gave an opinion
    look: LookMeasures | None = None  # how the face looks (the verify stage measures it)

    def to_dict(self) -> dict:
        return {
            "character": self.character,
            "face": self.face,
            "similarity": rounded(self.similarity),
            "distance": rounded(self.distance),
            "relative": rounded(self.relative),
            "status": self.status,
            "scores": {name: m.to_dict() for name, m in self.scores.items()},
            "agree": self.agree,
            "look": look_dict(self.look, self.character),
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
    scores: dict[str, BackendVerdict] = field(default_factory=dict)  # each backend's verdict on the image
    scored_by: list[str] = field(default_factory=list)  # backends whose verdicts made the decision
    conditioned_by: str | None = None  # face model that conditioned the image (FaceID: insightface), if known

    @property
    def disagree(self) -> bool:
        """True when the counted backends disagree on any character (pass vs drift)."""
        return any(m.agree is False for m in self.matches)

    @property
    def look(self) -> LookMeasures | None:
        """The look of the first expected character's face (``look`` of each match holds every face's)."""
        return next((m.look for m in self.matches if m.look is not None), None)

    def to_dict(self) -> dict:
        first = next((m for m in self.matches if m.look is not None), None)
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
            "scores": {name: v.to_dict() for name, v in self.scores.items()},
            "scored_by": list(self.scored_by),
            "conditioned_by": self.conditioned_by,
            "disagree": self.disagree,
            "look": None if first is None else look_dict(first.look, first.character),
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
    backends: dict[str, dict] = field(default_factory=dict)  # per backend: references, baseline_mean, baseline_min

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "folder": self.folder,
            "references": self.references,
            "baseline_mean": rounded(self.baseline_mean),
            "baseline_min": rounded(self.baseline_min),
            "outliers": list(self.outliers),
            "rejected": list(self.rejected),
            "backends": {
                name: {k: rounded(v) if isinstance(v, float) else v for k, v in d.items()}
                for name, d in self.backends.items()
            },
        }


def rounded(v: float | None, nd: int = 4) -> float | None:
    return None if v is None else round(float(v), nd)


def look_dict(look: Any, character: str | None = None) -> dict | None:
    """A face's look as report.json holds it: the six measures (4 decimals), ``face_px``, ``scale_to`` and whose
    face it is."""
    if look is None:
        return None
    d = look.to_dict()
    return {**d["look"], "face_px": d["face_px"], "scale_to": d["scale_to"], "character": character}
