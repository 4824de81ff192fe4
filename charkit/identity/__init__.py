"""The identity engine: is this the same person?

    backend = get_backend("dlib")                  # one face model (dlib, sface, insightface)
    alice = build_profile("alice", refs, backend)  # centroid + leave-one-out baseline
    score = score_image("s01.png", [alice], backend)

    scorer = get_scorer("auto")                    # dlib + sface: two unrelated offline evaluators
    score = score_image("s01.png", [build_profile("alice", refs, scorer)], scorer)  # combined verdict

This package is the engine only (backends, profiles, scoring, cache, calibration): it imports no
stage and no report. The verify stage (:mod:`charkit.verify`) runs it over folders and writes reports.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from ..errors import CharkitError
from .analyze import AnalyzedImage, ImageFile, analyze_array, analyze_file
from .base import BackendInfo, Face, FaceBackend, check_threshold
from .cache import FaceCache
from .panel import COMBINED_RULE, BackendPanel, PanelProfile
from .profile import ReferenceProfile, build_profile, profile_for_character
from .results import BackendMatch, BackendVerdict, CharacterMatch, ImageScore, ProfileSummary
from .scoring import assign_faces, score_faces, score_image

BACKENDS = ("auto", "dlib", "sface", "insightface")
#: what ``auto`` means: the two offline backends, unrelated to each other and to every conditioning model
AUTO = ("dlib", "sface")
#: the face model IP-Adapter FaceID conditions on (its 512-d ArcFace space)
FACEID_MODEL = "insightface"


def scorer_names(names: str | Sequence[str] = "auto") -> tuple[str, ...]:
    """Backend names with ``auto`` expanded to :data:`AUTO`, in order, each once; unknown names are one line.

    >>> scorer_names("auto"), scorer_names(["sface", "auto"])
    (('dlib', 'sface'), ('sface', 'dlib'))
    """
    given = [names] if isinstance(names, str) else list(names) or ["auto"]
    out: list[str] = []
    for name in given:
        if name not in BACKENDS:
            raise CharkitError(f"--backend {name!r}: unknown face backend; choose one of {', '.join(BACKENDS)}")
        out += [n for n in (AUTO if name == "auto" else (name,)) if n not in out]
    return tuple(out)


def get_backend(
    name: str = "auto",
    *,
    face_models: str | os.PathLike | None = None,
    providers: list[str] | None = None,
    threshold: float | None = None,
) -> FaceBackend:
    """One face backend by name: ``dlib`` or ``sface`` (both embedded, offline) or ``insightface`` (a pack).

    ``auto`` gives dlib here, the first of :data:`AUTO` (:func:`get_scorer` gives the whole pair).
    insightface is used only when named: its pretrained packs are non-commercial and it is the model
    IP-Adapter FaceID conditions on. Nothing is downloaded.
    """
    (first, *_) = scorer_names(name)
    if first == "sface":
        from .sface_backend import SFaceBackend

        return SFaceBackend(threshold=threshold)
    if first == "insightface":
        from .insightface_backend import InsightFaceBackend

        return InsightFaceBackend(face_models, providers=providers, threshold=threshold)
    from .dlib_backend import DlibBackend

    return DlibBackend(threshold=threshold)


def get_scorer(
    names: str | Sequence[str] = "auto",
    *,
    face_models: str | os.PathLike | None = None,
    providers: list[str] | None = None,
    threshold: float | Mapping[str, float] | None = None,
) -> FaceBackend | BackendPanel:
    """The scorer for ``names``: one backend, or a :class:`BackendPanel` of several (``auto``: dlib + sface).

    ``threshold`` is one value for every backend, or ``{name: value}`` for some of them.

    >>> get_scorer(["dlib", "sface"]).info.name  # doctest: +SKIP
    'dlib+sface'
    """
    resolved = scorer_names(names)
    if isinstance(threshold, Mapping):
        unknown = sorted(set(threshold) - set(resolved))
        if unknown:
            raise CharkitError(
                f"--threshold {unknown[0]}=...: {unknown[0]} is not one of the scoring backends "
                f"({', '.join(resolved)}); name one of them, or add --backend {unknown[0]}"
            )
    per = threshold if isinstance(threshold, Mapping) else {n: threshold for n in resolved}
    backends = [get_backend(n, face_models=face_models, providers=providers, threshold=per.get(n)) for n in resolved]
    return backends[0] if len(backends) == 1 else BackendPanel(backends)


def backends_of(scorer: FaceBackend | BackendPanel) -> list[FaceBackend]:
    """The backends a scorer is made of (one for a plain backend)."""
    return list(scorer.backends) if isinstance(scorer, BackendPanel) else [scorer]


def independent_scorer(
    scorer: FaceBackend | BackendPanel, conditioned_by: str | None, *, allow_same_evaluator: bool = False
) -> FaceBackend | BackendPanel:
    """``scorer`` without the model that conditioned the images (evaluator independence), or one line saying so.

    A panel drops that member (one left: that backend alone); a lone backend that is the conditioning model
    is refused unless ``allow_same_evaluator``.
    """
    if conditioned_by is None or allow_same_evaluator:
        return scorer
    keep = [b for b in backends_of(scorer) if b.name != conditioned_by]
    if not keep:
        raise CharkitError(
            f"--backend {conditioned_by}: these images were conditioned with {conditioned_by} ArcFace embeddings "
            f"(ip_adapter mode face), and a score from the same model flatters them; score with another model "
            f"(--backend dlib, --backend sface, or the default auto: both) or pass --allow-same-evaluator"
        )
    if len(keep) == len(backends_of(scorer)):
        return scorer
    return keep[0] if len(keep) == 1 else BackendPanel(keep)


__all__ = [
    "AUTO",
    "BACKENDS",
    "COMBINED_RULE",
    "FACEID_MODEL",
    "AnalyzedImage",
    "BackendInfo",
    "BackendMatch",
    "BackendPanel",
    "BackendVerdict",
    "CharacterMatch",
    "Face",
    "FaceBackend",
    "FaceCache",
    "ImageFile",
    "ImageScore",
    "PanelProfile",
    "ProfileSummary",
    "ReferenceProfile",
    "analyze_array",
    "analyze_file",
    "assign_faces",
    "backends_of",
    "build_profile",
    "check_threshold",
    "get_backend",
    "get_scorer",
    "independent_scorer",
    "profile_for_character",
    "score_faces",
    "score_image",
    "scorer_names",
]
