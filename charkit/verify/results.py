"""Typed results of the verify stage: per-run summaries and the whole report (``report.json``)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from ..identity.base import BackendInfo
from ..identity.results import ImageScore, ProfileSummary, rounded
from ..stagefiles import FORMAT_VERSION
from .look import RunLook

#: per-character verdicts the terminal summary counts, in column order
CHARACTER_STATUSES = ("pass", "drift", "missing", "no_face", "error")


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
    by_backend: dict[str, dict] = field(default_factory=dict)  # backend -> {pass, drift, no_face, error}
    compared: int = 0  # character faces that two or more backends gave an opinion on
    disagreements: int = 0  # ... on which they disagreed

    @property
    def agreement(self) -> float | None:
        return (self.compared - self.disagreements) / self.compared if self.compared else None

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
            "by_backend": {n: dict(c) for n, c in self.by_backend.items()},
            "compared": self.compared,
            "disagreements": self.disagreements,
            "agreement": rounded(self.agreement),
        }


@dataclass
class CharacterCount:
    """One character's verdicts over one run (what the terminal summary prints, one row each)."""

    run: str
    character: str
    counts: dict[str, int]  # CHARACTER_STATUSES -> images
    similarities: list[float] = field(default_factory=list)


def character_counts(images: list[ImageScore]) -> list[CharacterCount]:
    """Per (run, character), in first-seen order: pass / drift / missing / no_face / error counts.

    A character is ``missing`` in an image that has faces but none left for it (the image's status is
    then ``drift``, the character's is ``missing``); ``no_face`` and ``error`` are the image's own.
    """
    rows: OrderedDict[tuple[str, str], CharacterCount] = OrderedDict()
    for img in images:
        by_char = {m.character: m for m in img.matches}
        for ch in dict.fromkeys([*img.expected, *by_char]):
            row = rows.setdefault((img.run, ch), CharacterCount(img.run, ch, dict.fromkeys(CHARACTER_STATUSES, 0)))
            m = by_char.get(ch)
            status = img.status if img.status in ("no_face", "error") else (m.status if m else "missing")
            row.counts[status] += 1
            if m is not None and m.similarity is not None and img.status not in ("no_face", "error"):
                row.similarities.append(m.similarity)
    return list(rows.values())


@dataclass
class VerifyReport:
    """Everything ``charkit verify`` found; ``report.json`` is :meth:`to_dict`."""

    backend: BackendInfo  # the scorer: one backend, or a panel of several (then ``backends`` lists them)
    threshold: float
    characters: list[ProfileSummary]
    runs: list[RunSummary]
    images: list[ImageScore]
    licence_note: str
    charkit_version: str
    backends: list[BackendInfo] = field(default_factory=list)  # each scoring backend (empty: just ``backend``)
    combined_rule: str | None = None  # how several backends' verdicts combine (None: one backend)
    allow_same_evaluator: bool = False
    look: list[RunLook] = field(default_factory=list)

    @property
    def members(self) -> list[BackendInfo]:
        """The scoring backends (one, or every member of a panel)."""
        return list(self.backends) or [self.backend]

    @property
    def baseline(self) -> dict[str, dict]:
        return {
            c.name: {"mean": rounded(c.baseline_mean), "min": rounded(c.baseline_min), "references": c.references}
            for c in self.characters
        }

    @property
    def drift_found(self) -> bool:
        return any(i.status == "drift" for i in self.images)

    def failures(self, tolerate: tuple[str, ...] = ()) -> dict[str, int]:
        """What ``--fail-on-drift`` fails on: drifted, missing, no-face and unreadable counts, less ``tolerate``."""
        drifted = lambda i: i.swapped or any(m.status == "drift" for m in i.matches)
        found = {
            "drift": sum(1 for i in self.images if i.status == "drift" and drifted(i)),
            "missing": sum(len(i.missing) for i in self.images if i.status == "drift"),
            "no_face": sum(1 for i in self.images if i.status == "no_face"),
            "error": sum(1 for i in self.images if i.status == "error"),
        }
        return {k: v for k, v in found.items() if v and k not in tolerate}

    def to_dict(self) -> dict:
        """What report.json holds (the shape of :class:`charkit.stagefiles.VerifyReportFile`)."""
        return {
            "format_version": FORMAT_VERSION,
            "charkit_version": self.charkit_version,
            "backend": self.backend.to_dict(),
            "backends": [b.to_dict() for b in self.members],
            "combined_rule": self.combined_rule,
            "allow_same_evaluator": self.allow_same_evaluator,
            "threshold": self.threshold,
            "baseline": self.baseline,
            "licence_note": self.licence_note,
            "characters": [c.to_dict() for c in self.characters],
            "runs": [r.to_dict() for r in self.runs],
            "images": [i.to_dict() for i in self.images],
            "look": [r.to_dict() for r in self.look],
        }
