"""Calibrate a backend's threshold on your own cast: same-person vs different-person similarities.

Every pair of references of one character is a *same* pair; every pair across two characters
is a *different* pair. The suggested threshold is the midpoint of the gap when the two sets
separate, else the cut with the fewest misclassified pairs (ties: the one nearest the midpoint
of the two sets' means). Use it with ``--threshold`` when the backend's default was not measured on faces like
yours (the insightface default, for one).

With fewer than :data:`MIN_PAIRS` pairs on either side no threshold is suggested (a cut placed between
one same-person pair and a couple of different-person pairs says nothing about the next photo): the
ranges are still reported, with how many pairs they come from. Several backends (a panel) are
calibrated one by one, and how often they decide the same pairs alike is reported.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from ..errors import CharkitError
from .base import BackendInfo, FaceBackend
from .cache import FaceCache
from .profile import ReferenceProfile, profile_for_character

#: fewest same-person pairs and fewest different-person pairs a suggested threshold is based on
MIN_PAIRS = 3


@dataclass
class Calibration:
    backend: BackendInfo
    characters: list[str]
    same: list[float]  # similarities of same-person pairs
    different: list[float]  # similarities of different-person pairs
    suggested: float | None  # None: too few pairs to suggest one
    separable: bool | None  # every same pair above every different pair (None: a side has no pairs)
    errors_at_suggested: int | None  # pairs on the wrong side of the suggested threshold
    errors_at_default: int  # ... and of the backend's current threshold
    decisions: dict[tuple[str, str], bool] | None = None  # (ref, ref) -> same person at the current threshold

    @property
    def enough_pairs(self) -> bool:
        return len(self.same) >= MIN_PAIRS and len(self.different) >= MIN_PAIRS

    @property
    def too_few(self) -> str | None:
        """Why no threshold is suggested, or None."""
        if self.enough_pairs:
            return None
        return (
            f"too few pairs to suggest a threshold ({len(self.same)} same-person, {len(self.different)} "
            f"different-person; at least {MIN_PAIRS} of each are needed): add reference photos (a character with "
            f"3 usable photos gives 3 same-person pairs) or another character"
        )

    def to_dict(self) -> dict:
        r = lambda v: None if v is None else round(float(v), 4)
        side = lambda v: {"pairs": len(v), "min": r(min(v, default=None)), "max": r(max(v, default=None))}
        return {
            "backend": self.backend.to_dict(),
            "characters": self.characters,
            "same": side(self.same),
            "different": side(self.different),
            "enough_pairs": self.enough_pairs,
            "suggested_threshold": r(self.suggested),
            "note": self.too_few,
            "separable": self.separable,
            "errors_at_suggested": self.errors_at_suggested,
            "errors_at_default": self.errors_at_default,
        }


def pair_table(profiles: list[ReferenceProfile], backend: FaceBackend) -> dict[tuple[str, str], tuple[bool, float]]:
    """(ref path, ref path) -> (same person?, similarity) over every pair of reference embeddings."""
    table = {}
    for p in profiles:
        for (a, va), (b, vb) in itertools.combinations(zip(p.paths, p.embeddings), 2):
            table[(a, b)] = (True, backend.similarity(va, vb))
    for p, q in itertools.combinations(profiles, 2):
        for a, va in zip(p.paths, p.embeddings):
            for b, vb in zip(q.paths, q.embeddings):
                table[(a, b)] = (False, backend.similarity(va, vb))
    return table


def pair_similarities(profiles: list[ReferenceProfile], backend: FaceBackend) -> tuple[list[float], list[float]]:
    """(same-person, different-person) similarities over every pair of reference embeddings."""
    table = pair_table(profiles, backend)
    return [s for same, s in table.values() if same], [s for same, s in table.values() if not same]


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
    table = pair_table(profiles, backend)
    same = [s for is_same, s in table.values() if is_same]
    different = [s for is_same, s in table.values() if not is_same]
    t0 = backend.info.threshold
    c = Calibration(
        backend=backend.info,
        characters=[p.name for p in profiles],
        same=same,
        different=different,
        suggested=None,
        separable=min(same) > max(different) if same and different else None,
        errors_at_suggested=None,
        errors_at_default=misclassified(same, different, t0),
        decisions={k: s >= t0 for k, (_, s) in table.items()},
    )
    if c.enough_pairs:
        c.suggested = suggest_threshold(same, different)
        c.errors_at_suggested = misclassified(same, different, c.suggested)
    return c


@dataclass
class Agreement:
    """How often several backends decide the same reference pairs alike (each at its own threshold)."""

    backends: list[str]
    pairs: int  # pairs every backend embedded
    agree: int

    @property
    def rate(self) -> float | None:
        return self.agree / self.pairs if self.pairs else None

    def to_dict(self) -> dict:
        rate = self.rate
        return {
            "backends": self.backends,
            "pairs": self.pairs,
            "agree": self.agree,
            "rate": None if rate is None else round(rate, 4),
        }


def agreement(calibrations: list[Calibration]) -> Agreement:
    """Pairs on which every calibrated backend takes the same decision, over the pairs all of them embedded."""
    common = set.intersection(*(set(c.decisions or {}) for c in calibrations))
    agree = sum(len({c.decisions[k] for c in calibrations}) == 1 for k in common)
    return Agreement([c.backend.name for c in calibrations], len(common), agree)
