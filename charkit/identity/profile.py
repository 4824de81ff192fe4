"""Reference profile: a character's centroid and how well its references agree with each other.

The *baseline* is the leave-one-out similarity: each reference compared with the centroid
of the others. Its mean is the level a perfect render could hope for (a render at the
baseline looks as much like the character as the character's own photos do), so reports
give ``relative = similarity / baseline_mean``. References whose leave-one-out similarity
is below the backend threshold are flagged as outliers and left out of the centroid (a
stray photo of someone else must not pull it), unless they are half the set or more. A
reference that is a copy of an earlier one (similarity within 10 % of the way from the
threshold to 1.0, e.g. the same photo re-saved) is skipped: it would inflate the baseline.
Both checks are :mod:`charkit.identity.screening`'s, the same routine ``charkit prep`` uses.
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
from .panel import BackendPanel, PanelProfile
from .results import ProfileSummary
from .screening import (
    PROFILE_DUPLICATE_FRACTION,
    duplicate_similarity,
    find_duplicates,
    find_outliers,
    leave_one_out,
)


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
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)  # the face of each path

    @property
    def used(self) -> list[str]:
        """References that make up the centroid."""
        return [p for p in self.paths if p not in self.outliers]

    @property
    def used_faces(self) -> list[tuple[str, tuple[float, float, float, float]]]:
        """(path, face box) of each reference in the centroid: where the look baseline is measured."""
        return [(p, b) for p, b in zip(self.paths, self.boxes) if p not in self.outliers]

    def summary(self) -> ProfileSummary:
        return ProfileSummary(
            name=self.name,
            folder=self.folder,
            references=len(self.used),
            baseline_mean=self.baseline_mean,
            baseline_min=self.baseline_min,
            outliers=list(self.outliers),
            rejected=[{"path": r.path, "reason": r.reason} for r in self.rejected],
            backends={self.backend.name: self.backend_summary()},
        )

    def backend_summary(self) -> dict:
        """This backend's reference statistics, as a multi-backend report lists them."""
        return {
            "references": len(self.used),
            "baseline_mean": self.baseline_mean,
            "baseline_min": self.baseline_min,
            "threshold": self.threshold,
        }

    @property
    def threshold(self) -> float:
        return self.backend.threshold


def embed_references(
    ref_paths: list[str | os.PathLike], backend: FaceBackend, *, cache: FaceCache | None, threshold: float
) -> tuple[list[str], list[np.ndarray], list[ImageRejection], list[tuple]]:
    """The largest face of each reference (references are portraits), copies of an earlier reference left out;
    (paths, vectors, rejections, face boxes)."""
    paths, vecs, rejected, boxes = [], [], [], []
    for p in ref_paths:
        a = analyze_file(p, backend, cache)
        if a.error:
            rejected.append(ImageRejection(str(p), f"unreadable: {a.error}"))
        elif not a.faces:
            rejected.append(ImageRejection(str(p), "no_face"))
        elif a.faces[0].embedding is None:  # e.g. too small for the recogniser
            rejected.append(ImageRejection(str(p), a.faces[0].reason or "no_face"))
        else:
            paths.append(str(p))
            vecs.append(a.faces[0].embedding)
            boxes.append(tuple(float(v) for v in a.faces[0].box))
    # A copy of a reference adds nothing to the centroid and inflates the baseline: skip it (the first stays).
    twins = find_duplicates(
        vecs, backend, min_similarity=duplicate_similarity(threshold, PROFILE_DUPLICATE_FRACTION)
    )  # dlib: 0.94; the same photo re-saved scores ~0.98
    rejected += [ImageRejection(paths[i], f"near_duplicate of {Path(paths[k]).name}") for i, k in twins.items()]
    order = {str(p): n for n, p in enumerate(ref_paths)}
    rejected.sort(key=lambda r: order.get(r.path, len(order)))
    keep = [i for i in range(len(paths)) if i not in twins]
    return [paths[i] for i in keep], [vecs[i] for i in keep], rejected, [boxes[i] for i in keep]


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
    >>> round(profile.baseline_mean, 2)  # doctest: +SKIP
    0.63
    """
    if isinstance(backend, BackendPanel):  # one profile per backend: their spaces never mix
        return PanelProfile.build(name, ref_paths, backend, cache=cache, folder=folder)
    threshold = backend.info.threshold if threshold is None else threshold
    paths, vecs, rejected, boxes = embed_references(ref_paths, backend, cache=cache, threshold=threshold)
    if not vecs:
        where = folder or (Path(ref_paths[0]).parent if ref_paths else "?")
        reason = rejected[0].reason if rejected else "no images"
        raise CharkitError(
            f"{where}: no usable reference face for {name!r} ({len(rejected)} rejected, e.g. {reason}); add clear photos of the face"
        )
    emb = np.stack(vecs).astype(np.float32)
    outliers = [paths[i] for i in sorted(find_outliers(emb, backend, threshold=threshold))]
    keep = np.asarray([p not in outliers for p in paths])
    # every reference's leave-one-out score against all the others; the baseline is taken over the kept ones
    loo_map = {p: float(v) for p, v in zip(paths, leave_one_out(backend, emb))}
    loo_kept = leave_one_out(backend, emb[keep])
    loo_map.update({p: float(v) for p, v in zip(np.asarray(paths)[keep], loo_kept)})
    valid = loo_kept[~np.isnan(loo_kept)]
    return ReferenceProfile(
        name=name,
        folder=str(folder) if folder is not None else str(Path(paths[0]).parent),
        backend=backend.info,
        paths=paths,
        embeddings=emb,
        centroid=backend.centroid(emb[keep]),
        loo=loo_map,
        baseline_mean=float(valid.mean()) if len(valid) else None,
        baseline_min=float(valid.min()) if len(valid) else None,
        outliers=outliers,
        rejected=rejected,
        boxes=boxes,
    )


def profile_for_character(
    character, backend: FaceBackend, *, cache: FaceCache | None = None, threshold=None
) -> ReferenceProfile:
    """:func:`build_profile` over a loaded :class:`charkit.character.Character`'s references."""
    return build_profile(
        character.name, character.ref_paths(), backend, cache=cache, folder=character.dir, threshold=threshold
    )
