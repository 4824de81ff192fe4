"""``charkit verify``: score folders of images against characters and write drift reports.

Lifecycle (each step a public function)::

    check_inputs -> load_profiles -> collect -> score -> summarize -> record

Runs: every positional path is one run (labelled by its folder name); ``--run LABEL=PATH``
names a run explicitly, e.g. one per model or a folder of Midjourney downloads. A folder
holding a charkit render ``manifest.json`` supplies scene order, model and the characters
of each scene (declared left to right); images of several models in one manifest become
one run per model.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .. import __version__
from ..character import load_character
from ..environment import check_output_dir
from ..errors import CharkitError
from ..identity import FaceBackend, FaceCache, ReferenceProfile, get_backend, profile_for_character
from ..identity.analyze import analyze_file
from ..identity.results import STATUSES, ImageScore
from ..identity.scoring import score_faces
from ..images import is_image_file, list_images
from ..interrupts import Interrupted, raise_if_stopped, stopped
from ..stagefiles import RenderManifest, read_stage_file
from .report import write_report
from .results import RunSummary, VerifyReport

MANIFEST = "manifest.json"

NONCOMMERCIAL_NOTE = (
    "insightface's pretrained packs (buffalo_l, antelopev2) are licensed for non-commercial research only; "
    "use a permissive insightface-format pack (e.g. AuraFace) or the dlib backend for commercial work."
)


@dataclass
class ImageJob:
    """One image to score: where it is, which run, and what the manifest says about it."""

    path: Path
    run: str
    order: int
    scene: str | None = None
    model: str | None = None
    prompt: str | None = None
    characters: list[str] | None = None  # declared in a manifest, left to right


@dataclass
class VerifyInputs:
    runs: OrderedDict[str, list[Path]]
    characters: list[Path]
    jobs: list[ImageJob] = field(default_factory=list)
    manifest_characters: dict[str, Path] = field(default_factory=dict)
    default_names: list[str] = field(default_factory=list)  # --character names, in order


def check_inputs(
    paths: list[str | os.PathLike],
    runs: list[tuple[str, str | os.PathLike]] | None = None,
    characters: list[str | os.PathLike] | None = None,
) -> VerifyInputs:
    """Validate paths and run labels and list the images; nothing is written."""
    named: OrderedDict[str, list[Path]] = OrderedDict()
    for label, p in runs or []:
        if label in named:
            raise CharkitError(f"--run {label}={p}: run label {label!r} is used twice; give each run its own label")
        named[label] = [Path(p)]
    loose: list[Path] = []  # image files given one by one form a single run
    for p in map(Path, paths):
        if p.is_file():
            loose.append(p)
            continue
        label = _unique(p.resolve().name or str(p), named)
        named[label] = [p]
    if loose:
        named[_unique(loose[0].resolve().parent.name or "images", named)] = loose
    if not named:
        raise CharkitError("no images given: pass image files or folders, or --run LABEL=PATH")
    for group in named.values():
        for p in group:
            if not p.exists():
                raise CharkitError(f"{p}: no such file or folder")
            if p.is_file() and not is_image_file(p):
                raise CharkitError(f"{p}: not an image file (png, jpg, webp, ...)")
    inputs = VerifyInputs(runs=named, characters=[Path(c) for c in characters or []])
    for label, group in named.items():
        if len(group) == 1 and group[0].is_dir():
            inputs.jobs.extend(collect(label, group[0], inputs.manifest_characters))
        else:
            inputs.jobs.extend(ImageJob(path=f, run=label, order=i) for i, f in enumerate(group))
    if not inputs.jobs:
        raise CharkitError(f"no images found under {', '.join(str(p) for g in named.values() for p in g)}")
    if not inputs.characters and not inputs.manifest_characters:
        raise CharkitError(
            "no character to compare with: pass --character characters/NAME (or a folder with a render manifest.json)"
        )
    return inputs


def _unique(label: str, taken) -> str:
    base, i = label, 2
    while label in taken:
        label, i = f"{base}-{i}", i + 1
    return label


def collect(label: str, path: Path, manifest_characters: dict[str, Path]) -> list[ImageJob]:
    """The images of one folder, in scene order (manifest order, else sorted paths)."""
    if (path / MANIFEST).is_file():
        m = read_stage_file(path / MANIFEST, RenderManifest, fix="re-render the folder or remove its manifest.json")
        for name, folder in m.characters.items():
            fp = Path(folder)
            manifest_characters.setdefault(name, fp if fp.is_absolute() else Path(os.path.normpath(path / fp)))
        models = {img.model for img in m.images}
        # order = the scene's position in the episode (a models matrix lists each scene once per model)
        scene_pos: dict = {}
        for img in m.images:
            scene_pos.setdefault(img.scene, len(scene_pos))
        jobs = []
        for i, img in enumerate(m.images):
            f = path / img.file
            if not f.resolve().is_relative_to(path.resolve()):
                raise CharkitError(f"{path / MANIFEST}: images[{i}].file {img.file!r} points outside the folder")
            jobs.append(
                ImageJob(
                    path=f,
                    run=label if len(models) <= 1 else f"{label}/{img.model}",
                    order=scene_pos[img.scene],
                    scene=img.scene,
                    model=img.model,
                    prompt=img.prompt,
                    characters=list(img.characters) or None,
                )
            )
        # Keep scene order, but group images of one model together (matrix manifests interleave).
        return sorted(jobs, key=lambda j: (j.run, j.order))
    # No manifest: no scene ids; images line up with other runs by their sorted order.
    return [ImageJob(path=p, run=label, order=i) for i, p in enumerate(list_images(path))]


def load_profiles(
    inputs: VerifyInputs, backend: FaceBackend, *, cache: FaceCache | None, threshold: float
) -> dict[str, ReferenceProfile]:
    """One reference profile per character, from --character folders and manifests."""
    profiles: dict[str, ReferenceProfile] = {}
    for ref in list(inputs.characters) + [p for n, p in inputs.manifest_characters.items()]:
        ch = load_character(ref)
        if ref in inputs.characters and ch.name not in inputs.default_names:
            inputs.default_names.append(ch.name)
        if ch.name not in profiles:
            profiles[ch.name] = profile_for_character(ch, backend, cache=cache, threshold=threshold)
    for job in inputs.jobs:
        for name in job.characters or []:
            if name not in profiles:
                raise CharkitError(
                    f"{job.path}: the manifest names character {name!r} but no folder for it was given; "
                    f"pass --character characters/{name}"
                )
    return profiles


def score(
    inputs: VerifyInputs,
    profiles: dict[str, ReferenceProfile],
    backend: FaceBackend,
    *,
    cache: FaceCache | None,
    threshold: float,
    progress: bool = True,
) -> tuple[list[ImageScore], dict[str, bytes]]:
    """Score every image; returns the scores and their thumbnails (JPEG bytes by path)."""
    # Without a manifest, every image should hold the --character characters (else all known ones).
    default = [profiles[n] for n in inputs.default_names] or list(profiles.values())
    scores, thumbs = [], {}
    for job in tqdm(inputs.jobs, desc="verify", unit="img", disable=not progress):
        raise_if_stopped()  # Ctrl-C: stop between images (the report is written whole, or not at all)
        expected = [profiles[n] for n in job.characters] if job.characters else default
        analyzed = analyze_file(job.path, backend, cache)
        s = score_faces(
            analyzed, expected, backend, threshold=threshold, run=job.run, left_to_right=bool(job.characters)
        )
        s.order, s.scene, s.model, s.prompt = job.order, job.scene, job.model, job.prompt
        scores.append(s)
        if analyzed.thumbnail:
            thumbs[s.path] = analyzed.thumbnail
    return scores, thumbs


def summarize(scores: list[ImageScore]) -> list[RunSummary]:
    """Counts and similarity statistics per run, in first-seen run order."""
    runs: OrderedDict[str, list[ImageScore]] = OrderedDict()
    for s in scores:
        runs.setdefault(s.run, []).append(s)
    out = []
    for run, items in runs.items():
        counts = {st: sum(1 for s in items if s.status == st) for st in STATUSES}
        sims = np.asarray([s.similarity for s in items if s.similarity is not None], dtype=np.float64)
        with_face = counts["pass"] + counts["drift"]
        out.append(
            RunSummary(
                run=run,
                images=len(items),
                passed=counts["pass"],
                drift=counts["drift"],
                no_face=counts["no_face"],
                errors=counts["error"],
                mean_similarity=float(sims.mean()) if len(sims) else None,
                min_similarity=float(sims.min()) if len(sims) else None,
                pass_rate=counts["pass"] / with_face if with_face else None,
            )
        )
    return out


def licence_note(backend: FaceBackend) -> str:
    """The licence warning a report must carry (the backend's own licence is in ``backend.licence``)."""
    return NONCOMMERCIAL_NOTE if backend.info.name == "insightface" else ""


def record(report: VerifyReport, out: str | os.PathLike, thumbnails: dict[str, bytes]):
    """Write report.json, report.csv and report.html into ``out`` (atomically)."""
    return write_report(report, Path(out), thumbnails=thumbnails)


def verify(
    paths: list[str | os.PathLike] = (),
    *,
    characters: list[str | os.PathLike] = (),
    runs: list[tuple[str, str | os.PathLike]] | None = None,
    backend: FaceBackend | None = None,
    threshold: float | None = None,
    out: str | os.PathLike | None = None,
    cache: FaceCache | None = None,
    progress: bool = False,
) -> VerifyReport:
    """Score images against characters and (with ``out``) write the reports.

    >>> report = verify(["renders/"], characters=["characters/alice"], out="renders/")  # doctest: +SKIP
    >>> report.runs[0].pass_rate  # doctest: +SKIP
    0.9
    """
    inputs = check_inputs(list(paths), runs, list(characters))
    if out is not None:
        check_output_dir(out, "--out")  # a file in the way, a read-only or full disk: before any face is analysed
    backend = backend or get_backend("auto")
    cache = cache if cache is not None else FaceCache()
    threshold = backend.info.threshold if threshold is None else float(threshold)
    try:
        profiles = load_profiles(inputs, backend, cache=cache, threshold=threshold)
        scores, thumbs = score(inputs, profiles, backend, cache=cache, threshold=threshold, progress=progress)
    except Interrupted as e:
        raise stopped(
            "no report was written (a report is written whole); run the same command again: the faces already "
            "analysed come from the cache",
            e.signal_name,
        ) from None
    report = VerifyReport(
        backend=backend.info,
        threshold=threshold,
        characters=[p.summary() for p in profiles.values()],
        runs=summarize(scores),
        images=scores,
        licence_note=licence_note(backend),
        charkit_version=__version__,
    )
    if out is not None:
        record(report, out, thumbs)
    return report
