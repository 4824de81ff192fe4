"""What the studio's buttons do, as library functions (the same calls the CLI makes).

    reroll_scene      new seed or more candidates -> written into the storyboard (comments kept)
    edit_scene        prompt / seed / LoRA scale  -> written into the storyboard
    render_scene      render_storyboard(storyboard, out=..., scenes=[id]) then verify the folder
                      (= ``charkit render BOARD --scene ID`` + ``charkit verify DIR --out DIR``)
    set_locked        lock or unlock a take in manifest.json (under the manifest lock)
    import_images     external images -> imports/<label>/ (+ charkit-import.json), then scored
    repair_take       charkit.repair when this build has it; else one line saying it has not

The storyboard edits run at once (they are small and their errors belong to the form); renders,
imports and repairs are queued on the one worker (:mod:`charkit.studio.jobs`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..errors import CharkitError
from ..paths import atomic_write_bytes, check_name, sha256_bytes
from ..stagefiles import RenderManifest, read_stage_file
from .jobs import Progress
from .project import IMPORT_RECORD, IMPORTS_DIR, ImportedFile, ImportRecord
from .storyboard_edit import edit_scene as _edit_storyboard

MAX_SEED = 2**63
MAX_CANDIDATES = 64


@dataclass
class RenderSettings:
    """How studio jobs render (``charkit studio --device/--dtype``)."""

    device: str = "cpu"
    dtype: str = "fp32"


# -------------------------------------------------------------------------------- storyboard edits


def _scene(board, scene_id: str):
    scene = next((s for s in board.scenes if s.id == scene_id), None)
    if scene is None:
        raise CharkitError(f"{board.label}: no scene {scene_id!r}")
    return scene


def current_seed(board, scene_id: str) -> int:
    from ..render.jobs import default_seed

    s = _scene(board, scene_id)
    return s.seed if s.seed is not None else default_seed(board.defaults.seed, s.id)


def reroll_scene(storyboard: str | os.PathLike, scene_id: str, *, mode: str, candidates: int | None = None) -> dict:
    """Write a re-roll into the storyboard: ``mode="seed"`` moves to the first seed the scene has not tried
    (seed + candidates), ``mode="candidates"`` renders more best-of-N candidates (default: twice as many).

    >>> reroll_scene("episode.yaml", "s02-cafe", mode="seed")  # doctest: +SKIP
    {'seed': 1236}
    """
    from ..render.storyboard import load_storyboard

    board = load_storyboard(storyboard)
    scene = _scene(board, scene_id)
    n = scene.candidates or board.defaults.candidates
    if mode == "seed":
        seed = (current_seed(board, scene_id) + n) % MAX_SEED
        _edit_storyboard(storyboard, scene_id, seed=seed)
        return {"seed": seed}
    if mode == "candidates":
        want = candidates if candidates is not None else min(MAX_CANDIDATES, max(2, n * 2))
        if not 2 <= want <= MAX_CANDIDATES:
            raise CharkitError(f"candidates {want}: choose 2 to {MAX_CANDIDATES}")
        _edit_storyboard(storyboard, scene_id, candidates=want)
        return {"candidates": want}
    raise CharkitError(f"re-roll mode {mode!r}: choose seed or candidates")


def edit_scene(
    storyboard: str | os.PathLike,
    scene_id: str,
    *,
    prompt: str | None = None,
    seed: int | None = None,
    lora: dict[str, float] | None = None,
) -> dict:
    """Write a scene's new prompt, seed and LoRA scales into the storyboard (validated; comments kept)."""
    if seed is not None and not 0 <= seed < MAX_SEED:
        raise CharkitError(f"seed {seed}: must be 0 to 2^63-1")
    if prompt is not None and not prompt.strip():
        raise CharkitError("prompt: empty; write what the scene shows")
    for name, scale in (lora or {}).items():
        if not -2.0 <= scale <= 4.0:
            raise CharkitError(f"lora.{name} {scale}: must be -2 to 4")
    _edit_storyboard(storyboard, scene_id, seed=seed, prompt=prompt, lora=lora)
    return {k: v for k, v in {"prompt": prompt, "seed": seed, "lora": lora}.items() if v is not None}


# ---------------------------------------------------------------------------------------- render


def locked_takes(render_dir: str | os.PathLike, scene_id: str) -> list[str]:
    """Model labels whose take of ``scene_id`` is locked in that render folder."""
    p = Path(render_dir) / "manifest.json"
    if not p.is_file():
        return []
    m = read_stage_file(p, RenderManifest)
    return [r.model for r in m.images if r.scene == scene_id and r.locked]


def _scoring_backend(render_dir: Path, board):
    """The backend of the folder's existing report (a re-score keeps it), else the storyboard's."""
    from ..identity import get_scorer
    from ..stagefiles import VerifyReportFile

    name = board.identity.backend
    report = render_dir / "report.json"
    if report.is_file():
        with contextlib.suppress(CharkitError):  # an unreadable report is rewritten with the storyboard's backend
            rep = read_stage_file(report, VerifyReportFile)
            name = [b.name for b in rep.backends] or rep.backend.name  # several: a panel keeps its members
    face_models = board.resolve(board.identity.face_models) if board.identity.face_models else None
    return get_scorer(name, face_models=face_models, threshold=board.identity.threshold)


def render_scene(
    storyboard: str | os.PathLike,
    scene_id: str,
    *,
    out: str | os.PathLike,
    settings: RenderSettings,
    progress: Progress,
    models: list | None = None,
) -> dict:
    """Render one scene into ``out`` (locked takes are kept) and re-score the folder.

    >>> render_scene("episode.yaml", "s02-cafe", out="renders/episode", settings=RenderSettings(), progress=print)  # doctest: +SKIP
    """
    from ..identity.cache import FaceCache
    from ..render.lifecycle import render_storyboard
    from ..render.storyboard import load_storyboard
    from ..verify import verify

    out = Path(out)
    progress(0.05, f"checking inputs of {scene_id}")
    board = load_storyboard(storyboard)
    _scene(board, scene_id)
    keep_history(out, scene_id)
    progress(0.15, f"rendering {scene_id}")
    t0 = time.perf_counter()
    result = render_storyboard(
        board,
        out=out,
        models=models,
        scenes=[scene_id],
        device=settings.device,
        dtype=settings.dtype,
        progress=False,
    )
    seconds = time.perf_counter() - t0
    progress(0.8, "scoring identity")
    backend = _scoring_backend(out, board)
    verify([out], backend=backend, threshold=board.identity.threshold, out=out, cache=FaceCache())
    rendered = [r.record for r in result.rendered]
    return {
        "rendered": [(r.scene, r.model, r.seed) for r in rendered],
        "kept": [list(k) for k in result.skipped if k[0] == scene_id],
        "render_seconds": round(seconds, 3),
    }


HISTORY = ".studio/history"
KEEP_HISTORY = 5


def history_dir(render_dir: str | os.PathLike, scene_id: str, model: str) -> Path:
    """Where the studio keeps earlier takes of a scene (``.studio/history/<scene>__<model>/``, hidden from scans)."""
    return Path(render_dir) / HISTORY / f"{scene_id}__{model}"


def keep_history(render_dir: str | os.PathLike, scene_id: str) -> list[Path]:
    """Copy the current takes of a scene aside before a re-render (the newest :data:`KEEP_HISTORY` per take)."""
    from ..render.manifest import is_complete

    path = Path(render_dir) / "manifest.json"
    if not path.is_file():
        return []
    kept = []
    for rec in read_stage_file(path, RenderManifest).images:
        if rec.scene != scene_id or rec.locked or not is_complete(rec, render_dir):
            continue
        d = history_dir(render_dir, scene_id, rec.model)
        target = d / f"{time.strftime('%Y%m%d-%H%M%S')}-seed{rec.seed}-{rec.sha256[:8]}.png"
        if not any(p.name.endswith(f"-{rec.sha256[:8]}.png") for p in d.glob("*.png")):
            atomic_write_bytes(target, (Path(render_dir) / rec.file).read_bytes())
            kept.append(target)
        for old in sorted(d.glob("*.png"))[:-KEEP_HISTORY]:
            old.unlink(missing_ok=True)
    return kept


def manifest_models(render_dir: Path, board) -> list | None:
    """``--model`` overrides that reproduce a folder rendered on other models than the storyboard names
    (:func:`charkit.render.models.recorded_models`: a tiny model keeps its own adapters)."""
    from ..render.models import recorded_models

    return recorded_models(read_stage_file(render_dir / "manifest.json", RenderManifest).models, board)


# ------------------------------------------------------------------------------------------ lock


def set_locked(render_dir: str | os.PathLike, scene_id: str, model: str, locked: bool) -> None:
    """Lock (or unlock) one take in ``render_dir/manifest.json``: a locked take is never rendered again.

    Read, change and write happen under the manifest's file lock, so a render writing the same
    folder at that moment loses nothing.

    >>> set_locked("renders/episode", "s02-cafe", "sd15", True)  # doctest: +SKIP
    """
    from ..render.manifest import is_complete, manifest_lock, write_manifest

    path = Path(render_dir) / "manifest.json"
    with manifest_lock(path):
        m = read_stage_file(path, RenderManifest)
        rec = m.record(scene_id, model)
        if rec is None:
            raise CharkitError(f"{path}: no take of scene {scene_id!r} on {model!r} to lock; render it first")
        if locked and not is_complete(rec, render_dir):
            raise CharkitError(f"{path}: {rec.file} changed or is missing since it was rendered; re-render it first")
        if rec.locked != locked:
            rec.locked = locked
            write_manifest(path, m)


# ---------------------------------------------------------------------------------------- import

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_file_name(name: str, index: int) -> str:
    """A stored name for an uploaded file: ``NNN-<letters, digits, . _ ->`` plus its image suffix."""
    base = Path(name.replace("\\", "/")).name
    stem, suffix = os.path.splitext(base)
    clean = _UNSAFE.sub("_", stem).strip("._-")[:80] or "image"
    return f"{index:03d}-{clean}{suffix.lower()}"


def stage_upload(root: str | os.PathLike, label: str, files: list[tuple[str, bytes]]) -> Path:
    """Write uploaded files into a hidden staging folder under ``ROOT/imports`` (before the job checks them)."""
    check_name(label, "run label")
    target = Path(root) / IMPORTS_DIR / label
    if target.exists():
        raise CharkitError(f"{IMPORTS_DIR}/{label} already exists; choose another run label")
    if not files:
        raise CharkitError("no files to import; choose a folder of images")
    staging = Path(root) / IMPORTS_DIR / f".{label}.incoming-{os.getpid()}-{time.monotonic_ns()}"
    staging.mkdir(parents=True)
    names = {}
    for i, (name, data) in enumerate(files):
        stored = f"{i:05d}.upload"
        atomic_write_bytes(staging / stored, data)
        names[stored] = name
    (staging / "names.json").write_text(json.dumps(names), encoding="utf-8")
    return staging


def import_images(
    root: str | os.PathLike,
    label: str,
    staging: str | os.PathLike,
    *,
    storyboard: str | os.PathLike,
    progress: Progress,
    source: str = "upload",
) -> ImportRecord:
    """Turn a staged upload into ``ROOT/imports/<label>/`` (images matched to scenes in sorted order), then score it.

    Files that are not readable images are left out with their reason; the record is written last,
    so a half-finished import is never listed.
    """
    from ..images import IMAGE_SUFFIXES, read_image
    from ..paths import atomic_write_json
    from ..render.storyboard import load_storyboard

    root, staging = Path(root).resolve(), Path(staging)
    board = load_storyboard(storyboard)
    target = root / IMPORTS_DIR / check_name(label, "run label")
    if target.exists():
        shutil.rmtree(staging, ignore_errors=True)
        raise CharkitError(f"{IMPORTS_DIR}/{label} already exists; choose another run label")
    names: dict[str, str] = json.loads((staging / "names.json").read_text(encoding="utf-8"))
    order = sorted(names, key=lambda k: (names[k].replace("\\", "/").lower(), k))
    building = staging.with_name(f".{label}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    kept: list[ImportedFile] = []
    rejected: list[dict] = []
    try:
        for n, key in enumerate(order):
            original = names[key]
            progress(0.05 + 0.4 * n / max(1, len(order)), f"checking {n + 1}/{len(order)}")
            suffix = os.path.splitext(original)[1].lower()
            if suffix not in IMAGE_SUFFIXES:
                rejected.append({"name": original, "reason": "not an image file (png, jpg, webp, ...)"})
                continue
            loaded = read_image(staging / key)
            if not hasattr(loaded, "image"):
                rejected.append({"name": original, "reason": loaded.reason})
                continue
            stored = safe_file_name(original, len(kept) + 1)
            data = (staging / key).read_bytes()
            atomic_write_bytes(building / stored, data)
            scene = board.scenes[len(kept)].id if len(kept) < len(board.scenes) else None
            kept.append(ImportedFile(file=stored, original=original, scene=scene, sha256=sha256_bytes(data)))
        if not kept:
            raise CharkitError(f"none of the {len(order)} files is a readable image; nothing imported")
        record = ImportRecord(
            charkit_version=__version__,
            label=label,
            storyboard=Path(board.path).resolve().relative_to(root).as_posix(),
            source=source,
            imported=time.strftime("%Y-%m-%dT%H:%M:%S"),
            files=kept,
            rejected=rejected,
        )
        progress(0.5, "scoring identity")
        score_import(building, record, board)
        atomic_write_json(building / IMPORT_RECORD, record.model_dump(mode="json"))
        os.replace(building, target)
    finally:
        shutil.rmtree(building, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
    return record


def score_import(folder: Path, record: ImportRecord, board) -> None:
    """``charkit verify`` of an imported folder, each image against the characters of the scene it stands for."""
    from ..identity import get_scorer
    from ..identity.cache import FaceCache
    from ..verify import lifecycle as vl
    from ..verify.results import VerifyReport

    if not board.characters:
        return  # nothing to score against
    chars = [board.resolve(p) for p in board.characters.values()]
    inputs = vl.check_inputs([folder], None, chars)
    scene_of = {f.file: f.scene for f in record.files}
    scenes = {s.id: s for s in board.scenes}
    from ..render.storyboard import placeholders

    for job in inputs.jobs:
        sid = scene_of.get(job.path.name)
        if sid in scenes:
            s = scenes[sid]
            job.scene, job.prompt = sid, s.prompt
            job.characters = list(s.characters) if s.characters is not None else (placeholders(s.prompt) or None)
    face_models = board.resolve(board.identity.face_models) if board.identity.face_models else None
    backend = get_scorer(board.identity.backend, face_models=face_models, threshold=board.identity.threshold)
    cache = FaceCache()
    threshold = backend.info.threshold if board.identity.threshold is None else float(board.identity.threshold)
    profiles = vl.load_profiles(inputs, backend, cache=cache, threshold=threshold)
    scores, thumbs = vl.score(inputs, profiles, backend, cache=cache, threshold=threshold, progress=False)
    report = VerifyReport(
        backend=backend.info,
        threshold=threshold,
        characters=[p.summary() for p in profiles.values()],
        runs=vl.summarize(scores),
        images=scores,
        licence_note=vl.licence_note(backend),
        charkit_version=__version__,
    )
    vl.record(report, folder, thumbs)


# ---------------------------------------------------------------------------------------- repair


def repair_take(
    render_dir: str | os.PathLike,
    scene_id: str,
    model: str,
    *,
    settings: RenderSettings,
    progress: Progress,
) -> dict:
    """Re-draw the drifted faces of one scene (``charkit repair --scene``); a try is kept only when identity rises."""
    import math

    from ..render.manifest import MANIFEST, read_records
    from ..repair import RepairOptions, repair_render_dir

    progress(0.1, f"repairing {scene_id} on {model}")
    strength = RepairOptions.strength
    rec = next((r for r in read_records(Path(render_dir) / MANIFEST) if r.key == (scene_id, model)), None)
    # a short render (a draft at 2 steps) still leaves at least one denoising step at the repair's strength
    steps = max(rec.steps if rec else 0, math.ceil(1 / strength))
    result = repair_render_dir(
        render_dir, scenes=[scene_id], steps=steps, device=settings.device, dtype=settings.dtype, progress=False
    )
    faces = [f for r in result.repaired for f in r.faces]
    missing = sorted({n for s, _, names in result.not_found if s == scene_id for n in names})
    return {
        "faces": len(faces),
        "kept": sum(f.decision.kept for f in faces),
        "not_found": missing,
        "passing": sum(1 for s, _ in result.passed if s == scene_id),
    }
