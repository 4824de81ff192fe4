"""Best-of-N: render N candidates per scene, score each by identity, keep the best.

Candidate ``i`` uses seed ``seed + i`` (its own ``torch.Generator``), so a candidate is the
same image whether it was rendered alone or inside a batch of several (up to float rounding of
batched kernels), and the kept image can be reproduced from the seed in its metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from .manifest import CandidateScore


@dataclass
class Candidate:
    """One rendered candidate, post-processed, with its identity score (None when not scored)."""

    seed: int
    image: Image.Image
    similarity: float | None = None
    status: str | None = None

    def score(self, file: str | None = None) -> CandidateScore:
        return CandidateScore(seed=self.seed, similarity=self.similarity, status=self.status, file=file)


@dataclass
class Selection:
    """Which candidate was kept and why."""

    index: int
    reason: str  # "single" | "best_identity" | "first_no_face"


def candidate_seeds(seed: int, n: int) -> list[int]:
    """``[seed, seed + 1, ..., seed + n - 1]``.

    >>> candidate_seeds(100, 3)
    [100, 101, 102]
    """
    return [seed + i for i in range(n)]


def batches(seeds: list[int], batch_size: int | None) -> list[list[int]]:
    """Split candidate seeds into pipeline calls of at most ``batch_size`` images (None: all in one call).

    >>> batches([1, 2, 3, 4, 5], 2)
    [[1, 2], [3, 4], [5]]
    """
    size = len(seeds) if not batch_size or batch_size >= len(seeds) else batch_size
    return [seeds[i : i + size] for i in range(0, len(seeds), size)]


def select_best(candidates: list[Candidate]) -> Selection:
    """The candidate with the highest similarity; ties and unscored candidates keep the earliest.

    When no candidate shows a scorable face (tiny test models draw noise: all ``no_face``),
    the first candidate is kept, deterministically, and the reason says so.

    >>> select_best([Candidate(1, None, 0.4, "drift"), Candidate(2, None, 0.6, "pass")]).index
    1
    """
    if len(candidates) == 1:
        return Selection(0, "single")
    scored = [(i, c.similarity) for i, c in enumerate(candidates) if c.similarity is not None]
    if not scored:
        return Selection(0, "first_no_face")
    best = max(scored, key=lambda t: (t[1], -t[0]))
    return Selection(best[0], "best_identity")
