"""Typed results of the verify stage: per-run summaries and the whole report (``report.json``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..identity.base import BackendInfo
from ..identity.results import ImageScore, ProfileSummary, rounded
from ..stagefiles import FORMAT_VERSION


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
            "mean_similarity": rounded(self.mean_similarity),
            "min_similarity": rounded(self.min_similarity),
            "pass_rate": rounded(self.pass_rate),
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
            c.name: {"mean": rounded(c.baseline_mean), "min": rounded(c.baseline_min), "references": c.references}
            for c in self.characters
        }

    @property
    def drift_found(self) -> bool:
        return any(i.status == "drift" for i in self.images)

    def to_dict(self) -> dict:
        """What report.json holds (the shape of :class:`charkit.stagefiles.VerifyReportFile`)."""
        return {
            "format_version": FORMAT_VERSION,
            "charkit_version": self.charkit_version,
            "backend": self.backend.to_dict(),
            "threshold": self.threshold,
            "baseline": self.baseline,
            "licence_note": self.licence_note,
            "characters": [c.to_dict() for c in self.characters],
            "runs": [r.to_dict() for r in self.runs],
            "images": [i.to_dict() for i in self.images],
        }
