"""Reference screening: which reference photos are copies of each other, and which are someone else.

One routine serves ``charkit prep`` (which references become training images) and reference
profiles (which references make a character's centroid), so both judge a reference set the same way:

* :func:`find_duplicates`: greedy, best photo first; a photo whose embedding is at least
  ``min_similarity`` to an already kept one is its copy (and ``same_picture``, when given, must
  agree: prep also compares perceptual hashes).
* :func:`find_outliers`: leave-one-out identity check; the worst face below the threshold goes
  first and the rest are re-scored (one stranger must not drag the others down); outliers stay a
  minority (with no majority to disagree with, nothing is an outlier and the spread shows instead).

The two callers differ in one documented setting: prep has the pixels and requires a perceptual-hash
match as well, so its embedding bar is lower (3/4 of the way from the threshold to 1); a profile works
from embeddings alone (the face cache holds no pixels), so it needs the stricter 9/10 to never merge
two different photos of one person. tests/test_identity.py checks both on real photos.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .base import FaceBackend

#: How far from the threshold towards 1.0 a similarity must be for "a copy of the same photo".
PREP_DUPLICATE_FRACTION = 0.75  # with a perceptual-hash match as well
PROFILE_DUPLICATE_FRACTION = 0.9  # embeddings alone


def duplicate_similarity(threshold: float, fraction: float) -> float:
    """The similarity above which two faces may be copies: ``fraction`` of the way from ``threshold`` to 1.

    >>> round(duplicate_similarity(0.4, 0.75), 2)
    0.85
    """
    return threshold + fraction * (1.0 - threshold)


def leave_one_out(backend: FaceBackend, embeddings: np.ndarray) -> np.ndarray:
    """Similarity of each vector to the centroid of all the others (NaN when there is only one)."""
    n = len(embeddings)
    if n < 2:
        return np.full(n, np.nan)
    return np.asarray(
        [backend.similarity(embeddings[i], backend.centroid(np.delete(embeddings, i, axis=0))) for i in range(n)]
    )


def find_duplicates(
    vectors: Sequence[np.ndarray],
    backend: FaceBackend,
    *,
    min_similarity: float,
    order: Sequence[int] | None = None,
    same_picture: Callable[[int, int], bool] | None = None,
) -> dict[int, int]:
    """``{duplicate index: index of the kept copy}``; photos are visited in ``order`` (best first), the first kept.

    >>> find_duplicates([a, a_resaved, b], backend, min_similarity=0.94)  # doctest: +SKIP
    {1: 0}
    """
    kept: list[int] = []
    twins: dict[int, int] = {}
    for i in order if order is not None else range(len(vectors)):
        twin = next(
            (
                k
                for k in kept
                if backend.similarity(vectors[i], vectors[k]) >= min_similarity
                and (same_picture is None or same_picture(i, k))
            ),
            None,
        )
        if twin is None:
            kept.append(i)
        else:
            twins[i] = twin
    return twins


def find_outliers(vectors: np.ndarray, backend: FaceBackend, *, threshold: float) -> dict[int, float]:
    """``{index: leave-one-out similarity}`` of the references that look like someone else (a minority).

    >>> find_outliers(np.stack([alice1, alice2, alice3, bob]), backend, threshold=0.4)  # doctest: +SKIP
    {3: 0.21}
    """
    remaining = list(range(len(vectors)))
    out: dict[int, float] = {}
    while len(remaining) >= 3 and 2 * (len(out) + 1) < len(vectors):
        loo = leave_one_out(backend, np.stack([vectors[i] for i in remaining]))
        worst = int(np.argmin(loo))
        if loo[worst] >= threshold:
            break
        out[remaining.pop(worst)] = float(loo[worst])
    return out
