"""Scoring: which face is which character, and how close each is to its reference centroid.

Every face in the image is embedded. Faces are assigned to the expected characters with
``scipy.optimize.linear_sum_assignment`` on the similarity matrix (one face per character,
maximum total similarity), so a two-character scene is judged face by face. A character
left without a face is *missing*; one whose face is below the threshold has *drifted*.
A pair is *swapped* when each character's face looks more like the other character, or,
when the scene declares its characters left to right (a render manifest does), when the
assigned faces stand in the opposite order.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from .analyze import AnalyzedImage, ImageFile, analyze_array, analyze_file
from .base import Face, FaceBackend
from .cache import FaceCache
from .panel import BackendPanel, PanelProfile, score_panel
from .profile import ReferenceProfile
from .results import BackendMatch, BackendVerdict, CharacterMatch, ImageScore


def assign_faces(
    profiles: list[ReferenceProfile],
    faces: list[Face],
    backend: FaceBackend,
    threshold: float,
) -> list[CharacterMatch]:
    """One :class:`CharacterMatch` per profile (in profile order), faces assigned optimally.

    Faces without an embedding (``Face.reason`` says why) take no part: they cannot be judged.
    """
    scorable = [j for j, f in enumerate(faces) if f.embedding is not None]
    if not scorable:
        return [CharacterMatch(p.name, None, None, None, None, "missing") for p in profiles]
    from scipy.optimize import linear_sum_assignment  # imported here: 0.7 s of CLI start-up otherwise

    sim = np.asarray([[backend.similarity(faces[j].embedding, p.centroid) for j in scorable] for p in profiles])
    rows, cols = linear_sum_assignment(sim, maximize=True)
    by_row = dict(zip(rows.tolist(), cols.tolist()))
    out = []
    for i, p in enumerate(profiles):
        col = by_row.get(i)
        if col is None:
            out.append(CharacterMatch(p.name, None, None, None, None, "missing"))
            continue
        j = scorable[col]
        s = float(sim[i, col])
        rel = s / p.baseline_mean if p.baseline_mean else None
        out.append(
            CharacterMatch(
                character=p.name,
                face=j,
                similarity=s,
                distance=backend.distance(faces[j].embedding, p.centroid),
                relative=rel,
                status="pass" if s >= threshold else "drift",
            )
        )
    return out


def find_swaps(
    matches: list[CharacterMatch],
    faces: list[Face],
    profiles: list[ReferenceProfile],
    backend: FaceBackend,
    *,
    left_to_right: bool,
) -> list[list[str]]:
    """Pairs of characters whose faces are exchanged (identity-wise, or position-wise when declared)."""
    swaps: list[list[str]] = []
    placed = [(m, p) for m, p in zip(matches, profiles) if m.face is not None]
    for a in range(len(placed)):
        for b in range(a + 1, len(placed)):
            (ma, pa), (mb, pb) = placed[a], placed[b]
            fa, fb = faces[ma.face].embedding, faces[mb.face].embedding
            crossed = backend.similarity(fa, pb.centroid) > backend.similarity(fa, pa.centroid) and backend.similarity(
                fb, pa.centroid
            ) > backend.similarity(fb, pb.centroid)
            misplaced = False
            if left_to_right and ma.status == "pass" and mb.status == "pass":
                xa = sum(faces[ma.face].box[::2]) / 2
                xb = sum(faces[mb.face].box[::2]) / 2
                misplaced = xa > xb  # declared a before b, drawn the other way round
            if crossed or misplaced:
                swaps.append([ma.character, mb.character])
    return swaps


def score_faces(
    analyzed: AnalyzedImage,
    profiles: list[ReferenceProfile],
    backend: FaceBackend,
    *,
    threshold: float | None = None,
    run: str = "",
    left_to_right: bool = False,
    conditioned_by: str | None = None,
) -> ImageScore:
    """Turn an analysed image into an :class:`ImageScore` against ``profiles`` (the expected characters).

    ``conditioned_by`` names the face model that conditioned the image, when known: a score from that same
    model is recorded as not independent (whether it may decide is the caller's rule, see charkit.verify).
    """
    threshold = backend.info.threshold if threshold is None else threshold
    s = _score_faces(analyzed, profiles, backend, threshold, run, left_to_right)
    name, independent = backend.info.name, backend.info.name != conditioned_by
    s.scores = {name: BackendVerdict(s.status, s.similarity, independent)}
    s.scored_by, s.conditioned_by = [name], conditioned_by
    for m in s.matches:
        m.scores = {name: BackendMatch(name, m.face, m.similarity, m.distance, m.relative, m.status, independent)}
    return s


def _score_faces(
    analyzed: AnalyzedImage,
    profiles: list[ReferenceProfile],
    backend: FaceBackend,
    threshold: float,
    run: str,
    left_to_right: bool,
) -> ImageScore:
    base = dict(
        path=analyzed.path,
        run=run,
        faces=analyzed.faces,
        expected=[p.name for p in profiles],
        width=analyzed.width,
        height=analyzed.height,
        sha256=analyzed.sha256,
        # a face the backend could not embed (too small for its recogniser) is reported, not scored
        notes=list(analyzed.notes)
        + [
            f"face {i} not scored: {f.reason or 'no embedding'}"
            for i, f in enumerate(analyzed.faces)
            if f.embedding is None
        ],
    )
    if analyzed.error:
        return ImageScore(status="error", error=analyzed.error, **base)
    if all(f.embedding is None for f in analyzed.faces):  # no face, or none that can be scored
        return ImageScore(status="no_face", missing=[p.name for p in profiles], **base)
    matches = assign_faces(profiles, analyzed.faces, backend, threshold)
    swapped = find_swaps(matches, analyzed.faces, profiles, backend, left_to_right=left_to_right)
    missing = [m.character for m in matches if m.status == "missing"]
    scored = [m for m in matches if m.similarity is not None]
    worst = min(scored, key=lambda m: m.similarity) if scored else None
    ok = not missing and not swapped and all(m.status == "pass" for m in matches)
    return ImageScore(
        status="pass" if ok else "drift",
        similarity=worst.similarity if worst else None,
        distance=worst.distance if worst else None,
        relative=worst.relative if worst else None,
        matches=matches,
        missing=missing,
        swapped=swapped,
        **base,
    )


def score_image(
    image: str | os.PathLike | Image.Image | np.ndarray,
    profiles: list[ReferenceProfile] | list[PanelProfile],
    backend: FaceBackend | BackendPanel,
    *,
    threshold: float | None = None,
    cache: FaceCache | None = None,
    run: str = "",
    left_to_right: bool = False,
) -> ImageScore:
    """Score a file or an in-memory image against the characters it should hold.

    ``backend`` may be a :class:`~charkit.identity.panel.BackendPanel` (with profiles built by it): the
    score is then the combined one, each backend's in ``matches[i].scores``.

    >>> s = score_image("out/s01.png", [alice], backend)  # doctest: +SKIP
    >>> s.status, round(s.similarity, 2)  # doctest: +SKIP
    ('pass', 0.58)
    """
    backends = backend.backends if isinstance(backend, BackendPanel) else [backend]
    if isinstance(image, (str, os.PathLike)):
        f = ImageFile(image)  # decoded once for every backend
        analyses = {b.info.name: analyze_file(f, b, cache, thumbnails=False) for b in backends}
    else:
        arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
        analyses = {
            b.info.name: AnalyzedImage(
                path="<memory>", sha256=None, faces=analyze_array(arr, b), width=arr.shape[1], height=arr.shape[0]
            )
            for b in backends
        }
    if isinstance(backend, BackendPanel):
        return score_panel(analyses, profiles, backend, run=run, left_to_right=left_to_right)
    analyzed = analyses[backend.info.name]
    return score_faces(analyzed, profiles, backend, threshold=threshold, run=run, left_to_right=left_to_right)
