"""Calibrate a backend's threshold on your own cast: same-person vs different-person similarities.

Every pair of references of one character is a *same* pair; every pair across two characters
is a *different* pair. The suggested threshold is the midpoint of the gap when the two sets
separate, else the cut with the fewest misclassified pairs (ties: the one nearest the midpoint
of the two sets' means). Use it with ``--threshold`` when the backend's default was not measured on faces like
yours (the insightface default, for one).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from ..errors import CharkitError
from .base import BackendInfo, FaceBackend
from .cache import FaceCache
from .profile import ReferenceProfile, profile_for_character


@dataclass
class Calibration:
    backend: BackendInfo
    characters: list[str]
    same: list[float]  # similarities of same-person pairs
    different: list[float]  # similarities of different-person pairs
    suggested: float
    separable: bool  # every same pair above every different pair
    errors_at_suggested: int  # pairs on the wrong side of the suggested threshold
    errors_at_default: int  # ... and of the backend's current threshold

    def to_dict(self) -> dict:
        r = lambda v: round(float(v), 4)
        return {
            "backend": self.backend.to_dict(),
            "characters": self.characters,
            "same": {"pairs": len(self.same), "min": r(min(self.same)), "max": r(max(self.same))},
            "different": {"pairs": len(self.different), "min": r(min(self.different)), "max": r(max(self.different))},
            "suggested_threshold": r(self.suggested),
            "separable": self.separable,
            "errors_at_suggested": self.errors_at_suggested,
            "errors_at_default": self.errors_at_default,
        }


def pair_similarities(profiles: list[ReferenceProfile], backend: FaceBackend) -> tuple[list[float], list[float]]:
    """(same-person, different-person) similarities over every pair of reference embeddings."""
    same = [backend.similarity(a, b) for p in profiles for a, b in itertools.combinations(list(p.embeddings), 2)]
    different = [
        backend.similarity(a, b)
        for p, q in itertools.combinations(profiles, 2)
        for a in p.embeddings
        for b in q.embeddings
    ]
    return same, different


def misclassified(same: list[float], different: list[float], threshold: float) -> int:
    return sum(s < threshold for s in same) + sum(d >= threshold for d in different)


def suggest_threshold(same: list[float], different: list[float]) -> float:
    """Midpoint of the gap, or the cut point with the fewest misclassified pairs."""
    if min(same) > max(different):
        return (min(same) + max(different)) / 2
    cuts = np.unique(np.concatenate([same, different]))
    candidates = np.concatenate([[cuts[0] - 1e-6], (cuts[:-1] + cuts[1:]) / 2, [cuts[-1] + 1e-6]])
    errors = np.asarray([misclassified(same, different, t) for t in candidates])
    best = candidates[errors == errors.min()]
    # several cut points may tie (not always adjacent): take the one nearest the midpoint of the two means
    centre = (np.mean(same) + np.mean(different)) / 2
    return float(best[np.argmin(np.abs(best - centre))])


def calibrate(characters: list, backend: FaceBackend, *, cache: FaceCache | None = None) -> Calibration:
    """Same/different similarity ranges over the characters' references and a suggested threshold.

    >>> c = calibrate([load_character("characters/alice"), load_character("characters/bob")], backend)  # doctest: +SKIP
    >>> c.suggested  # doctest: +SKIP
    0.41
    """
    if len(characters) < 2:
        raise CharkitError(
            "calibrate needs at least two characters (--character A --character B): "
            "different-person pairs come from across characters"
        )
    # profile.embeddings holds every reference with a face, outliers included: a mislabelled photo
    # shows up as a misclassified pair (duplicates are skipped: a copy is not a second photo)
    profiles = [profile_for_character(c, backend, cache=cache) for c in characters]
    same, different = pair_similarities(profiles, backend)
    if not same:
        raise CharkitError(
            "calibrate needs a character with at least two usable reference photos "
            "(same-person pairs come from within one character)"
        )
    t = suggest_threshold(same, different)
    return Calibration(
        backend=backend.info,
        characters=[p.name for p in profiles],
        same=same,
        different=different,
        suggested=t,
        separable=min(same) > max(different),
        errors_at_suggested=misclassified(same, different, t),
        errors_at_default=misclassified(same, different, backend.info.threshold),
    )
