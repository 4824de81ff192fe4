"""``charkit verify``: score folders of images against characters and write drift reports.

Lifecycle (each step a public function)::

    check_inputs -> check_independence -> load_profiles -> score -> look_profiles -> summarize -> record

(``collect`` lists one folder's images for ``check_inputs``.)

Runs: every positional path is one run (labelled by its folder name); ``--run LABEL=PATH``
names a run explicitly, e.g. one per model or a folder of Midjourney downloads. A folder
holding a charkit render ``manifest.json`` supplies scene order, model and the characters
of each scene (declared left to right); images of several models in one manifest become
one run per model.

The scorer is one face backend or a panel of several (``auto``: dlib + sface, two unrelated offline
models). An image the manifest says was conditioned with a face model (IP-Adapter FaceID:
insightface ArcFace) is never judged by that model unless ``allow_same_evaluator``: a panel leaves it
out of that image's decision (its score is still recorded), a lone backend is refused.
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
from ..identity import (
    COMBINED_RULE,
    FACEID_MODEL,
    BackendPanel,
    FaceBackend,
    FaceCache,
    ImageFile,
    ReferenceProfile,
    backends_of,
    check_threshold,
    get_scorer,
    profile_for_character,
)
from ..identity.analyze import analyze_file
from ..identity.panel import score_panel
from ..identity.results import STATUSES, ImageScore
from ..identity.scoring import score_faces
from ..images import is_image_file, list_images
from ..interrupts import Interrupted, raise_if_stopped, stopped
from ..stagefiles import RenderManifest, read_stage_file
from .look import RunLook, compare_runs, measure_matches, reference_looks
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
    repair: dict | None = None  # the manifest's identity-repair record (charkit repair)
    conditioned_by: str | None = None  # face model that conditioned it (manifest ip_adapter mode face)


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
                    repair=img.repair,
                    conditioned_by=FACEID_MODEL if (img.ip_adapter or {}).get("mode") == "face" else None,
                )
            )
        # Keep scene order, but group images of one model together (matrix manifests interleave).
        return sorted(jobs, key=lambda j: (j.run, j.order))
    # No manifest: no scene ids; images line up with other runs by their sorted order.
    return [ImageJob(path=p, run=label, order=i) for i, p in enumerate(list_images(path))]


def check_independence(
    inputs: VerifyInputs, backend: FaceBackend | BackendPanel, *, allow_same_evaluator: bool = False
) -> None:
    """Refuse a lone backend that conditioned some of the images (evaluator independence); nothing is written."""
    if allow_same_evaluator or isinstance(backend, BackendPanel):
        return  # a panel leaves the conditioning model out of those images' decisions
    same = [j for j in inputs.jobs if j.conditioned_by == backend.info.name]
    if same:
        raise CharkitError(
            f"--backend {backend.info.name}: {len(same)} image(s) (e.g. {same[0].path}) were conditioned with "
            f"{backend.info.name} ArcFace embeddings (ip_adapter mode face), and a score from the same model "
            "flatters them; score with another model (--backend dlib, --backend sface, or the default auto: "
            "both) or pass --allow-same-evaluator"
        )


def load_profiles(
    inputs: VerifyInputs, backend: FaceBackend | BackendPanel, *, cache: FaceCache | None, threshold: float | None
) -> dict[str, ReferenceProfile]:
    """One reference profile per character (a panel: one per backend, as a PanelProfile), from --character
    folders and manifests."""
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
    backend: FaceBackend | BackendPanel,
    *,
    cache: FaceCache | None,
    threshold: float | None = None,
    progress: bool = True,
    allow_same_evaluator: bool = False,
    look: bool = True,
) -> tuple[list[ImageScore], dict[str, bytes]]:
    """Score every image (with ``look``, measure each matched face); returns the scores and their thumbnails.

    Each file is read once and decoded at most once, whatever the number of backends.
    """
    # Without a manifest, every image should hold the --character characters (else all known ones).
    default = [profiles[n] for n in inputs.default_names] or list(profiles.values())
    members = backends_of(backend)
    scores, thumbs = [], {}
    for job in tqdm(inputs.jobs, desc="verify", unit="img", disable=not progress):
        raise_if_stopped()  # Ctrl-C: stop between images (the report is written whole, or not at all)
        expected = [profiles[n] for n in job.characters] if job.characters else default
        f = ImageFile(job.path)
        analyses = {b.name: analyze_file(f, b, cache, thumbnails=i == 0) for i, b in enumerate(members)}
        kw = dict(run=job.run, left_to_right=bool(job.characters))
        if isinstance(backend, BackendPanel):
            s = score_panel(
                analyses,
                expected,
                backend,
                conditioned_by=job.conditioned_by,
                allow_same_evaluator=allow_same_evaluator,
                **kw,
            )
        else:
            s = score_faces(
                analyses[backend.name], expected, backend, threshold=threshold, conditioned_by=job.conditioned_by, **kw
            )
        s.order, s.scene, s.model, s.prompt = job.order, job.scene, job.model, job.prompt
        s.repair = job.repair
        if look and s.status in ("pass", "drift"):
            measure_matches(f, s, members[0].name, cache)
        scores.append(s)
        thumb = analyses[members[0].name].thumbnail
        if thumb:
            thumbs[s.path] = thumb
    return scores, thumbs


def look_profiles(scores: list[ImageScore], profiles: dict, *, cache: FaceCache | None) -> list[RunLook]:
    """Per run and character: the look of the matched faces against the character's reference photos."""
    return compare_runs(scores, reference_looks(profiles, cache))


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
        by_backend: dict[str, dict] = {}
        for s in items:
            for name, v in s.scores.items():
                by_backend.setdefault(name, dict.fromkeys(STATUSES, 0))[v.status] += 1
        compared = [m for s in items for m in s.matches if m.agree is not None]
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
                by_backend=by_backend,
                compared=len(compared),
                disagreements=sum(1 for m in compared if m.agree is False),
            )
        )
    return out


def licence_note(backend: FaceBackend | BackendPanel) -> str:
    """The licence warning a report must carry (the backend's own licence is in ``backend.licence``)."""
    return NONCOMMERCIAL_NOTE if any(b.name == "insightface" for b in backends_of(backend)) else ""


def record(report: VerifyReport, out: str | os.PathLike, thumbnails: dict[str, bytes]):
    """Write report.json, report.csv and report.html into ``out`` (atomically)."""
    return write_report(report, Path(out), thumbnails=thumbnails)


def verify(
    paths: list[str | os.PathLike] = (),
    *,
    characters: list[str | os.PathLike] = (),
    runs: list[tuple[str, str | os.PathLike]] | None = None,
    backend: FaceBackend | BackendPanel | None = None,
    threshold: float | None = None,
    out: str | os.PathLike | None = None,
    cache: FaceCache | None = None,
    progress: bool = False,
    allow_same_evaluator: bool = False,
    look_profile: bool = True,
) -> VerifyReport:
    """Score images against characters and (with ``out``) write the reports.

    ``backend`` defaults to ``get_scorer("auto")`` (dlib + sface); ``threshold`` overrides a lone backend's;
    ``look_profile=False`` skips the look measurements.

    >>> report = verify(["renders/"], characters=["characters/alice"], out="renders/")  # doctest: +SKIP
    >>> report.runs[0].pass_rate  # doctest: +SKIP
    0.9
    """
    inputs = check_inputs(list(paths), runs, list(characters))
    if out is not None:
        check_output_dir(out, "--out")  # a file in the way, a read-only or full disk: before any face is analysed
    backend = backend or get_scorer("auto")
    check_independence(inputs, backend, allow_same_evaluator=allow_same_evaluator)
    panel = isinstance(backend, BackendPanel)
    if panel and threshold is not None:
        if any(b.info.threshold != float(threshold) for b in backend.backends):
            raise CharkitError(
                f"threshold {threshold}: a panel's thresholds are its backends' (get_scorer(names, threshold=...))"
            )
        threshold = None  # already each member's (render passes the storyboard's identity.threshold on)
    if threshold is not None:
        threshold = check_threshold(threshold, backend.info.name, calibrated=backend.info.threshold)
    cache = cache if cache is not None else FaceCache()
    threshold = backend.info.threshold if threshold is None else threshold
    try:
        profiles = load_profiles(inputs, backend, cache=cache, threshold=None if panel else threshold)
        scores, thumbs = score(
            inputs,
            profiles,
            backend,
            cache=cache,
            threshold=threshold,
            progress=progress,
            allow_same_evaluator=allow_same_evaluator,
            look=look_profile,
        )
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
        backends=[b.info for b in backends_of(backend)],
        combined_rule=COMBINED_RULE if panel else None,
        allow_same_evaluator=allow_same_evaluator,
        look=look_profiles(scores, profiles, cache=cache) if look_profile else [],
    )
    if out is not None:
        record(report, out, thumbs)
    return report
