"""Several face backends judging together: each face gets every backend's similarity, one combined decision.

    panel = get_scorer(["dlib", "sface"])            # a BackendPanel: two unrelated offline evaluators
    alice = build_profile("alice", refs, panel)      # a PanelProfile: one reference profile per backend
    score = score_image("s01.png", [alice], panel)   # the combined verdict; score.matches[0].scores per backend

Each backend scores the image alone, in its own space, against its own profile of the character
(face assignment, swaps and thresholds are its own: vectors of two backends are never compared).
The verdicts are then combined by :data:`COMBINED_RULE`. A panel quacks like a backend where the
stages need it to (``info``, ``build_profile``, ``score_image``), so best-of-N in render and the
checkpoint choice in train rank by the combined score without knowing there are several models.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import CharkitError
from .base import BackendInfo, Face, FaceBackend
from .results import BackendMatch, BackendVerdict, CharacterMatch, ImageScore, ProfileSummary

if TYPE_CHECKING:
    from .analyze import AnalyzedImage
    from .cache import FaceCache
    from .profile import ReferenceProfile

#: How a panel's combined similarity is computed (report.json ``backend.metric`` of a panel).
COMBINED_METRIC = "combined: mean over the counted backends of (similarity - threshold) / (1 - threshold)"

#: The combined decision, as reports and docs/identity.md state it.
COMBINED_RULE = (
    "Each backend scores the image on its own (its detector, its space, its reference profile, its threshold). "
    "A backend has an opinion on a character when it matched a face it could embed to that character; a face "
    "its detector missed or its recogniser refused (too small) is no opinion, not a drift. The character passes "
    "only when every counted backend with an opinion passes, drifts when any of them drifts, and is missing when "
    "none has an opinion. The backends disagree when their opinions differ (pass against drift, or different "
    "faces): the combined verdict is then drift and the row is flagged. The combined similarity, used to rank "
    "(best-of-N, checkpoints, the drift plot), is the mean over the backends with an opinion of "
    "(similarity - threshold) / (1 - threshold): 0 at each backend's own threshold, 1 for an identical face; "
    "its relative score is the mean of theirs (each similarity / that backend's reference baseline). "
    "A face model that conditioned the image (IP-Adapter FaceID: insightface ArcFace) is not counted, only "
    "recorded, unless --allow-same-evaluator."
)


def margin(similarity: float, threshold: float) -> float:
    """A similarity as the share of the way from the backend's threshold to a perfect match (0 at the threshold).

    >>> margin(0.7, 0.4), margin(0.4, 0.4), margin(0.1, 0.4)
    (0.5, 0.0, -0.5)
    """
    return round((similarity - threshold) / (1.0 - threshold), 12)


class BackendPanel:
    """Two or more face backends that score together (see :data:`COMBINED_RULE`).

    >>> panel = BackendPanel([get_backend("dlib"), get_backend("sface")])  # doctest: +SKIP
    >>> panel.info.name, panel.info.threshold  # doctest: +SKIP
    ('dlib+sface', 0.0)
    """

    def __init__(self, backends: list[FaceBackend]):
        names = [b.name for b in backends]
        if len(backends) < 2:
            raise ValueError("a BackendPanel needs at least two backends (one backend scores on its own)")
        if len(set(names)) != len(names):
            raise CharkitError(f"--backend {' '.join(names)}: a backend is named twice; give each backend once")
        self.backends = list(backends)

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.backends]

    @property
    def primary(self) -> FaceBackend:
        """The first backend: its face boxes are the report's, and the look profile is measured on them."""
        return self.backends[0]

    @property
    def infos(self) -> list[BackendInfo]:
        return [b.info for b in self.backends]

    @functools.cached_property
    def info(self) -> BackendInfo:
        """The panel as one scorer: its name, the members' models and hashes, the combined metric, threshold 0."""
        infos = self.infos
        digest = hashlib.sha256("\n".join(f"{i.name}:{i.model_hash}:{i.threshold!r}" for i in infos).encode())
        return BackendInfo(
            name="+".join(i.name for i in infos),
            model="; ".join(f"{i.name}: {i.model}" for i in infos),
            model_hash=digest.hexdigest(),
            dim=0,  # a combined scorer has no embedding space of its own
            metric=COMBINED_METRIC,
            threshold=0.0,
            licence="; ".join(f"{i.name}: {i.licence}" for i in infos),
        )

    def counted(self, conditioned_by: str | None = None, *, allow_same_evaluator: bool = False) -> list[FaceBackend]:
        """The backends whose opinions decide an image that ``conditioned_by`` (a backend name) conditioned."""
        if allow_same_evaluator or conditioned_by is None:
            return list(self.backends)
        return [b for b in self.backends if b.name != conditioned_by]


@dataclass
class PanelProfile:
    """One character's reference profile in each backend of a panel (never mixed)."""

    name: str
    folder: str
    profiles: dict[str, ReferenceProfile]

    @classmethod
    def build(
        cls,
        name: str,
        ref_paths: list[str | os.PathLike],
        panel: BackendPanel,
        *,
        cache: FaceCache | None = None,
        folder: str | os.PathLike | None = None,
    ) -> PanelProfile:
        from .profile import build_profile

        profiles = {b.name: build_profile(name, ref_paths, b, cache=cache, folder=folder) for b in panel.backends}
        return cls(name=name, folder=next(iter(profiles.values())).folder, profiles=profiles)

    @property
    def primary(self) -> ReferenceProfile:
        return next(iter(self.profiles.values()))

    @property
    def used(self) -> list[str]:
        return self.primary.used

    @property
    def used_faces(self) -> list[tuple[str, tuple[float, float, float, float]]]:
        """The first backend's (path, box) per reference: the look baseline uses one backend's boxes."""
        return self.primary.used_faces

    @functools.cached_property
    def loo(self) -> dict[str, float]:
        """Per reference: the combined leave-one-out score (mean margin over the backends that used it)."""
        out: dict[str, list[float]] = {}
        for p in self.profiles.values():
            for path in p.used:
                v = p.loo.get(path)
                if v is not None and v == v:  # a lone reference has no leave-one-out score (nan)
                    out.setdefault(path, []).append(margin(v, p.threshold))
        return {path: sum(vs) / len(vs) for path, vs in out.items()}

    @property
    def baseline_mean(self) -> float | None:
        vals = list(self.loo.values())
        return sum(vals) / len(vals) if vals else None

    @property
    def baseline_min(self) -> float | None:
        return min(self.loo.values(), default=None)

    def summary(self) -> ProfileSummary:
        rejected: dict[str, dict[str, str]] = {}
        for n, p in self.profiles.items():
            for r in p.rejected:
                rejected.setdefault(r.path, {})[n] = r.reason
        rows = []
        for path, by in rejected.items():
            same = len(by) == len(self.profiles) and len(set(by.values())) == 1
            rows.append(
                {
                    "path": path,
                    "reason": next(iter(by.values())) if same else "; ".join(f"{n}: {r}" for n, r in by.items()),
                }
            )
        return ProfileSummary(
            name=self.name,
            folder=self.folder,
            references=len(self.used),
            baseline_mean=self.baseline_mean,
            baseline_min=self.baseline_min,
            outliers=sorted({o for p in self.profiles.values() for o in p.outliers}),
            rejected=rows,
            backends={n: p.backend_summary() for n, p in self.profiles.items()},
        )


# -- combining verdicts ---------------------------------------------------------------------------


def _same_face(a: Face, b: Face) -> bool:
    """Two detectors' boxes frame one face when each box holds the other's centre (framing differs per detector)."""
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a.box, b.box
    acx, acy, bcx, bcy = (ax0 + ax1) / 2, (ay0 + ay1) / 2, (bx0 + bx1) / 2, (by0 + by1) / 2
    return ax0 <= bcx <= ax1 and ay0 <= bcy <= ay1 and bx0 <= acx <= bx1 and by0 <= acy <= by1


def unify_faces(faces_by: dict[str, list[Face]]) -> tuple[list[Face], dict[str, list[int]]]:
    """One face list for the report (the first backend's faces, then faces only a later one found) and, per
    backend, the report index of each of its faces.

    >>> a, b = Face((0, 0, 10, 10), 1.0), Face((1, 1, 12, 11), 0.9)
    >>> faces, index = unify_faces({"dlib": [a], "sface": [b, Face((50, 50, 60, 60), 0.8)]})
    >>> len(faces), index
    (2, {'dlib': [0], 'sface': [0, 1]})
    """
    names = list(faces_by)
    unified = list(faces_by[names[0]])
    index = {names[0]: list(range(len(unified)))}
    for n in names[1:]:
        own = faces_by[n]
        dist = lambda f, u: (sum(f.box[::2]) - sum(u.box[::2])) ** 2 + (sum(f.box[1::2]) - sum(u.box[1::2])) ** 2
        pairs = sorted((dist(f, u), j, k) for j, f in enumerate(own) for k, u in enumerate(unified) if _same_face(f, u))
        idx: list[int | None] = [None] * len(own)
        taken: set[int] = set()
        for _, j, k in pairs:  # nearest centres first, one to one
            if idx[j] is None and k not in taken:
                idx[j] = k
                taken.add(k)
        for j, f in enumerate(own):
            if idx[j] is None:
                idx[j] = len(unified)
                unified.append(f)
        index[n] = idx
    return unified, index


def combine_match(
    character: str,
    per: dict[str, CharacterMatch],
    index: dict[str, list[int]],
    counted: set[str],
    thresholds: dict[str, float],
    conditioned_by: str | None = None,
) -> CharacterMatch:
    """One character's combined verdict from each backend's match (rule: :data:`COMBINED_RULE`).

    ``counted``: the backends whose opinions decide; ``conditioned_by``: the model that conditioned the
    image (its opinion is recorded as not independent, and counted only under --allow-same-evaluator).
    """
    scores = {
        n: BackendMatch(
            backend=n,
            face=None if m.face is None else index[n][m.face],
            similarity=m.similarity,
            distance=m.distance,
            relative=m.relative,
            status=m.status,
            independent=n != conditioned_by,
        )
        for n, m in per.items()
    }
    opinions = [s for n, s in scores.items() if n in counted and s.status != "missing"]
    if not opinions:
        return CharacterMatch(character, None, None, None, None, "missing", scores=scores)
    agree = (
        None if len(opinions) < 2 else len({o.status for o in opinions}) == 1 and len({o.face for o in opinions}) == 1
    )
    combined = sum(margin(o.similarity, thresholds[o.backend]) for o in opinions) / len(opinions)
    # relative stays on each backend's own scale (similarity / its baseline: 1.0 = as alike as the references)
    rels = [o.relative for o in opinions]
    return CharacterMatch(
        character=character,
        face=opinions[0].face,
        similarity=combined,
        distance=None,  # no native distance across spaces
        relative=sum(rels) / len(rels) if all(r is not None for r in rels) else None,
        status="pass" if agree is not False and all(o.status == "pass" for o in opinions) else "drift",
        scores=scores,
        agree=agree,
    )


def _notes(analyses: dict[str, AnalyzedImage], index: dict[str, list[int]], panel: BackendPanel, counted) -> list:
    first = analyses[panel.names[0]]
    notes = list(first.notes)  # intake: the same file for every backend
    for n, a in analyses.items():
        if not a.faces and any(o.faces for o in analyses.values()):
            notes.append(f"{n}: no face found")
        notes += [
            f"{n}: face {index[n][j]} not scored: {f.reason or 'no embedding'}"
            for j, f in enumerate(a.faces)
            if f.embedding is None
        ]
        if n not in counted:
            notes.append(f"{n}: not counted (it conditioned this image; --allow-same-evaluator counts it)")
    return notes


def score_panel(
    analyses: dict[str, AnalyzedImage],
    profiles: list[PanelProfile],
    panel: BackendPanel,
    *,
    run: str = "",
    left_to_right: bool = False,
    conditioned_by: str | None = None,
    allow_same_evaluator: bool = False,
) -> ImageScore:
    """The combined :class:`ImageScore` of one image, from each backend's analysis of it (``analyses[name]``)."""
    from .scoring import score_faces

    per = {
        b.name: score_faces(
            analyses[b.name], [p.profiles[b.name] for p in profiles], b, run=run, left_to_right=left_to_right
        )
        for b in panel.backends
    }
    counted = {b.name for b in panel.counted(conditioned_by, allow_same_evaluator=allow_same_evaluator)}
    faces, index = unify_faces({n: s.faces for n, s in per.items()})
    first = per[panel.names[0]]
    base = dict(
        path=first.path,
        run=run,
        faces=faces,
        expected=[p.name for p in profiles],
        width=first.width,
        height=first.height,
        sha256=first.sha256,
        notes=_notes(analyses, index, panel, counted),
        scores={n: BackendVerdict(s.status, s.similarity, n != conditioned_by) for n, s in per.items()},
        scored_by=[n for n in panel.names if n in counted],
        conditioned_by=conditioned_by,
    )
    if first.status == "error":  # one file: unreadable for every backend alike
        return ImageScore(status="error", error=first.error, **base)
    if all(per[n].status == "no_face" for n in counted):
        return ImageScore(status="no_face", missing=[p.name for p in profiles], **base)
    thresholds = {b.name: b.info.threshold for b in panel.backends}
    none = lambda name: CharacterMatch(name, None, None, None, None, "missing")  # a backend that saw no face
    matches = [
        combine_match(
            p.name,
            {n: s.matches[i] if s.matches else none(p.name) for n, s in per.items()},
            index,
            counted,
            thresholds,
            conditioned_by,
        )
        for i, p in enumerate(profiles)
    ]
    swapped = [pair for pair in dict.fromkeys(tuple(x) for n in panel.names if n in counted for x in per[n].swapped)]
    missing = [m.character for m in matches if m.status == "missing"]
    scored = [m for m in matches if m.similarity is not None]
    worst = min(scored, key=lambda m: m.similarity) if scored else None
    ok = not missing and not swapped and all(m.status == "pass" for m in matches)
    return ImageScore(
        status="pass" if ok else "drift",
        similarity=worst.similarity if worst else None,
        relative=worst.relative if worst else None,
        matches=matches,
        missing=missing,
        swapped=[list(p) for p in swapped],
        **base,
    )
