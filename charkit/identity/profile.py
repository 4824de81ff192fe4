"""Reference profile: a character's centroid and how well its references agree with each other.

The *baseline* is the leave-one-out similarity: each reference compared with the centroid
of the others. Its mean is the level a perfect render could hope for (a render at the
baseline looks as much like the character as the character's own photos do), so reports
give ``relative = similarity / baseline_mean``. References whose leave-one-out similarity
is below the backend threshold are flagged as outliers and left out of the centroid (a
stray photo of someone else must not pull it), unless they are half the set or more. A
reference that is a copy of an earlier one (similarity within 10 % of the way from the
threshold to 1.0, e.g. the same photo re-saved) is skipped: it would inflate the baseline.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CharkitError
from ..images import ImageRejection
from .analyze import analyze_file
from .base import BackendInfo, FaceBackend
from .cache import FaceCache
from .results import ProfileSummary


@dataclass
class ReferenceProfile:
    name: str
    folder: str
    backend: BackendInfo
    paths: list[str]  # references with a face, in input order
    embeddings: np.ndarray  # N x dim, one per path
    centroid: np.ndarray
    loo: dict[str, float]  # path -> leave-one-out similarity
    baseline_mean: float | None
    baseline_min: float | None
    outliers: list[str] = field(default_factory=list)
    rejected: list[ImageRejection] = field(default_factory=list)  # unreadable, no face

    @property
    def used(self) -> list[str]:
        """References that make up the centroid."""
        return [p for p in self.paths if p not in self.outliers]

    def summary(self) -> ProfileSummary:
        return ProfileSummary(
            name=self.name,
            folder=self.folder,
            references=len(self.used),
            baseline_mean=self.baseline_mean,
            baseline_min=self.baseline_min,
            outliers=list(self.outliers),
            rejected=[{"path": r.path, "reason": r.reason} for r in self.rejected],
        )


def leave_one_out(backend: FaceBackend, embeddings: np.ndarray) -> np.ndarray:
    """Similarity of each vector to the centroid of all the others (NaN when there is only one)."""
    n = len(embeddings)
    if n < 2:
        return np.full(n, np.nan)
    return np.asarray(
        [backend.similarity(embeddings[i], backend.centroid(np.delete(embeddings, i, axis=0))) for i in range(n)]
    )


def build_profile(
    name: str,
    ref_paths: list[str | os.PathLike],
    backend: FaceBackend,
    *,
    cache: FaceCache | None = None,
    folder: str | os.PathLike | None = None,
    threshold: float | None = None,
) -> ReferenceProfile:
    """Embed every reference (largest face of each) and compute centroid, baseline and outliers.

    >>> profile = build_profile("alice", alice.ref_paths(), get_backend("dlib"))  # doctest: +SKIP
    >>> round(profile.baseline_mean, 2)
    0.63
    """
    threshold = backend.info.threshold if threshold is None else threshold
    paths, vecs, rejected = [], [], []
    duplicate_at = threshold + 0.9 * (1.0 - threshold)  # dlib: 0.94; same photo re-saved scores ~0.98
    for p in ref_paths:
        a = analyze_file(p, backend, cache)
        if a.error:
            rejected.append(ImageRejection(str(p), f"unreadable: {a.error}"))
        elif not a.faces:
            rejected.append(ImageRejection(str(p), "no_face"))
        elif a.faces[0].embedding is None:  # e.g. too small for the recogniser
            rejected.append(ImageRejection(str(p), a.faces[0].reason or "no_face"))
        else:
            emb = a.faces[0].embedding  # largest face: references are portraits
            # A copy of a reference adds nothing to the centroid and inflates the baseline: skip it.
            dup = next((q for q, v in zip(paths, vecs) if backend.similarity(emb, v) >= duplicate_at), None)
            if dup is not None:
                rejected.append(ImageRejection(str(p), f"near_duplicate of {Path(dup).name}"))
                continue
            paths.append(str(p))
            vecs.append(emb)
    if not vecs:
        where = folder or (Path(ref_paths[0]).parent if ref_paths else "?")
        reason = rejected[0].reason if rejected else "no images"
        raise CharkitError(
            f"{where}: no usable reference face for {name!r} ({len(rejected)} rejected, e.g. {reason}); add clear photos of the face"
        )
    emb = np.stack(vecs).astype(np.float32)
    loo = leave_one_out(backend, emb)
    outliers = [p for p, s in zip(paths, loo) if not np.isnan(s) and s < threshold]
    if len(outliers) * 2 >= len(paths):
        outliers = []  # no majority to disagree with: keep them all, the baseline will show the spread
    keep = np.asarray([p not in outliers for p in paths])
    centroid = backend.centroid(emb[keep])
    if outliers:  # recompute the baseline on the references that make the centroid
        loo_kept = leave_one_out(backend, emb[keep])
        loo_map = {p: float(s) for p, s in zip(paths, loo)}
        loo_map.update({p: float(s) for p, s in zip(np.asarray(paths)[keep], loo_kept)})
    else:
        loo_kept = loo
        loo_map = {p: float(s) for p, s in zip(paths, loo)}
    valid = loo_kept[~np.isnan(loo_kept)]
    return ReferenceProfile(
        name=name,
        folder=str(folder) if folder is not None else str(Path(paths[0]).parent),
        backend=backend.info,
        paths=paths,
        embeddings=emb,
        centroid=centroid,
        loo=loo_map,
        baseline_mean=float(valid.mean()) if len(valid) else None,
        baseline_min=float(valid.min()) if len(valid) else None,
        outliers=outliers,
        rejected=rejected,
    )


def profile_for_character(
    character, backend: FaceBackend, *, cache: FaceCache | None = None, threshold=None
) -> ReferenceProfile:
    """:func:`build_profile` over a loaded :class:`charkit.character.Character`'s references."""
    return build_profile(
        character.name, character.ref_paths(), backend, cache=cache, folder=character.dir, threshold=threshold
    )
