"""The look profile of a verify run: every matched face measured, each run set against the character's photos.

    measure_matches(image_file, score, backend_name, cache)   # match.look for every face a character matched
    baselines = reference_looks(profiles, cache)               # per character, over its reference photos
    runs = compare_runs(scores, baselines)                     # per (run, character): a LookComparison

Faces are measured on the boxes of one backend (the first scorer's) for references and renders
alike: the box sets the matched scale. Measurements are cached beside the faces (same image bytes,
same box -> the same numbers), so a re-verify of an unchanged folder decodes nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from ..errors import CharkitError
from ..identity import FaceCache, ImageFile, ImageScore
from ..look import LOOK_VERSION, LookBaseline, LookComparison, LookMeasures, compare_look, measure_look, reference_look

SCALE_TO = 256
_KIND = f"look-v{LOOK_VERSION}"


@dataclass
class RunLook:
    """One run's look against one character's reference photos."""

    run: str
    character: str
    comparison: LookComparison

    def to_dict(self) -> dict:
        return {"run": self.run, "character": self.character, **self.comparison.to_dict()}


def measure_box(f: ImageFile, box, cache: FaceCache | None) -> LookMeasures | str:
    """The look of the face in ``box`` of ``f`` (served from ``cache``), or why it cannot be measured."""
    key = f"{SCALE_TO}:" + ",".join(f"{float(v):.1f}" for v in box)
    if cache is not None and f.sha256 is not None:
        hit = cache.get_extra(_KIND, f.sha256, key)
        if hit is not None:
            return LookMeasures.from_dict(hit)
    pixels = f.pixels()
    if pixels is None:
        return f"look not measured: {f.error}"
    try:
        m = measure_look(pixels, tuple(box), scale_to=SCALE_TO)
    except (CharkitError, ValueError) as e:  # a face box too small or off the image
        return f"look not measured: {e}"
    if cache is not None and f.sha256 is not None:  # full precision: a cached run reports what a fresh one does
        cache.put_extra(_KIND, f.sha256, key, {"look": m.values(), "face_px": m.face_px, "scale_to": m.scale_to})
    return m


def measure_matches(f: ImageFile, score: ImageScore, backend: str, cache: FaceCache | None) -> None:
    """Set ``look`` on every match whose face ``backend`` (the first scorer) found; notes say what was skipped."""
    for m in score.matches:
        own = m.scores.get(backend)
        face = own.face if own is not None else m.face
        if face is None or not (0 <= face < len(score.faces)):
            continue
        measured = measure_box(f, score.faces[face].box, cache)
        if isinstance(measured, str):
            score.notes.append(f"{m.character}: {measured}")
        else:
            m.look = measured


def reference_looks(profiles: dict, cache: FaceCache | None) -> dict[str, LookBaseline | None]:
    """Per character: the look of its reference photos (the largest face of each reference in its centroid)."""
    out: dict[str, LookBaseline | None] = {}
    for name, profile in profiles.items():
        looks = []
        for path, box in profile.used_faces:
            measured = measure_box(ImageFile(path), box, cache)
            if not isinstance(measured, str):
                looks.append(measured)
        out[name] = reference_look(looks) if looks else None
    return out


def compare_runs(scores: list[ImageScore], baselines: dict[str, LookBaseline | None]) -> list[RunLook]:
    """Per (run, character), in first-seen order: the run's matched faces against the character's photos."""
    groups: OrderedDict[tuple[str, str], list[LookMeasures]] = OrderedDict()
    for s in scores:
        measured = {m.character: m.look for m in s.matches}
        for character in dict.fromkeys([*s.expected, *measured]):
            if baselines.get(character) is None:
                continue
            looks = groups.setdefault((s.run, character), [])
            if measured.get(character) is not None:
                looks.append(measured[character])
    return [
        RunLook(run, character, compare_look(looks, baselines[character], name=run))
        for (run, character), looks in groups.items()
    ]
