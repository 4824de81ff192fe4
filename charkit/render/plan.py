"""``check_inputs``: a storyboard becomes a :class:`RenderPlan` of scene jobs, or a one-line error.

Everything a render could trip over is checked here, before a model loads or a file is
written: characters and their LoRAs, model sources and families, what each family supports,
control images and annotator weights, IP-Adapter weights and the insightface pack for FaceID,
sizes, schedulers. Each job carries its ``inputs_hash``: the hash of everything that changes
its pixels, which is what makes a rerun render only the scenes that changed.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..character import Character
from ..devices import precision_name
from ..environment import check_cache_dir, check_output_dir
from ..errors import CharkitError, MissingModelError, Problems, warn
from ..paths import under_root
from .fingerprint import file_sha256, source_fingerprint, stable_hash
from .storyboard import ModelSpec, Scene, Storyboard

#: Bump when charkit changes how the same inputs turn into pixels: every scene renders again.
RENDER_VERSION = 2  # 2: A1111 prompt syntax, samplers from the model config, FaceID LoRA per scene


@dataclass
class RenderOptions:
    """How to run (not what to render): device, precision, GPU switches, safety and identity settings."""

    device: str = "cpu"
    dtype: str = "fp32"  # fp32 | fp16 | bf16 (charkit.devices vocabulary; aliases such as float16 accepted)
    batch_size: int | None = None  # best-of-N candidates per pipeline call (None: all at once)
    compile: bool = False
    cpu_offload: bool = False
    vae_tiling: bool = False
    allow_pickle_weights: bool = False
    annotators: str | None = None
    face_models: str | None = None  # overrides storyboard identity.face_models
    backend: str | tuple[str, ...] | None = None  # overrides storyboard identity.backend (several: combined)
    allow_same_evaluator: bool = False  # let insightface score the FaceID scenes it conditioned
    verify: bool = False
    force: bool = False
    progress: bool = True
    scenes: tuple[str, ...] | None = None  # render only these scene ids (others keep their images)
    full_size: bool = False  # tiny models too render at the storyboard's sizes and steps (else scaled down)
    overwrite_other_project: bool = False  # render into a folder that holds another project's manifest
    scene_batch: int | None = None  # scenes per pipeline call when they share everything but prompt and seed
    shard: tuple[int, int] | None = None  # (K, N): render only shard K of N (0-based; batch schedulers)

    def __post_init__(self):
        # paths arrive as Path objects from the CLI and as strings from code: keep one form
        for name in ("annotators", "face_models"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, str(value))
        self.scenes = tuple(self.scenes) if self.scenes else None
        self.shard = tuple(self.shard) if self.shard is not None else None

    @property
    def scenes_per_call(self) -> int:
        """``scene_batch``, or its default: 4 on a GPU (where batching pays), 1 on a CPU."""
        if self.scene_batch is not None:
            return self.scene_batch
        return 1 if str(self.device).startswith("cpu") else 4

    @property
    def torch_dtype(self):
        from ..devices import torch_dtype

        return torch_dtype(self.dtype)

    @property
    def dtype_name(self) -> str:
        """torch's name of the precision (``float16``): what manifests record."""
        from ..devices import torch_name

        return torch_name(self.dtype)


@dataclass
class ModelPlan:
    """A resolved model: family, where its weights are, and its adapters."""

    label: str
    family: str
    source: str  # as written (recorded in the manifest and PNG)
    path: str  # resolved: absolute path or hub id (what gets loaded)
    config: str | None
    scheduler: str
    controlnet: dict[str, str] = field(default_factory=dict)  # control type -> resolved source
    ip_adapter: str | None = None
    image_encoder: str | None = None
    faceid: str | None = None
    fingerprint: str = ""
    vae: str | None = None  # resolved VAE override (folder, hub id or file)
    variant: str | None = None
    t5: bool = True

    @property
    def module(self):
        from ..families import get_family

        return get_family(self.family)

    @property
    def spec(self):
        return self.module.SPEC

    def describe(self) -> dict:
        return {"label": self.label, "family": self.family, "source": self.source}


@dataclass
class ControlPlan:
    type: str
    image: Path
    image_text: str  # as written in the storyboard
    scale: float
    preprocess: bool
    low: int
    high: int
    start: float = 0.0
    end: float = 1.0


@dataclass
class HiresPlan:
    """The hires pass of a scene: upscale to ``width`` x ``height``, then img2img at ``strength``."""

    scale: float
    strength: float
    steps: int
    upscaler: str
    width: int
    height: int


@dataclass
class IPPlan:
    mode: str  # "image" | "face"
    scale: float
    character: str
    image: Path | None  # mode image: the reference image


@dataclass
class SceneJob:
    """One image to render: a scene on one model, every value resolved."""

    scene: Scene
    model: ModelPlan
    file: str  # file name under the output folder
    prompt: str
    negative_prompt: str
    characters: list[str]
    seed: int
    width: int
    height: int
    steps: int
    guidance: float
    preset: str
    candidates: int
    lora: dict[str, float]  # character -> scale (characters with a LoRA for this family)
    control: ControlPlan | None = None
    ip: IPPlan | None = None
    scheduler: object = None  # charkit.families.schedulers.SchedulerChoice
    clip_skip: int = 1
    true_cfg: float | None = None  # Flux real CFG (None: off)
    hires: HiresPlan | None = None
    batch: int = -1  # index of its scene batch in RenderPlan.batches
    inputs_hash: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.scene.id, self.model.label)

    @property
    def scored(self) -> bool:
        return self.candidates > 1


@dataclass
class RenderPlan:
    """Everything check_inputs resolved; jobs are in manifest order (scene order, then model)."""

    storyboard: Storyboard
    out_dir: Path
    characters: dict[str, Character]
    models: list[ModelPlan]
    jobs: list[SceneJob]
    options: RenderOptions
    scoring_backend: object | None = None  # FaceBackend for best-of-N and --verify
    faceid_backend: object | None = None  # insightface FaceBackend for FaceID conditioning
    skipped: list[str] = field(default_factory=list)  # `optional: true` scenes left out, with why
    batches: list[list[SceneJob]] = field(default_factory=list)  # jobs rendered in one pipeline call, plan order
    warnings: list[str] = field(default_factory=list)  # one line each: what renders other than asked

    @property
    def order(self) -> list[tuple[str, str]]:
        return [j.key for j in self.jobs]

    @property
    def matrix(self) -> bool:
        return self.storyboard.models is not None

    def selected(self) -> list[SceneJob]:
        if not self.options.scenes:
            return list(self.jobs)
        return [j for j in self.jobs if j.scene.id in self.options.scenes]


# -- hashing --------------------------------------------------------------------------------


def inputs_hash(job: SceneJob, plan: RenderPlan) -> str:
    """Hash of everything that changes the job's pixels (and its choice among candidates)."""
    m = job.model
    opts = plan.options
    doc: dict = {
        "render_version": RENDER_VERSION,
        "family": m.family,
        "model": m.fingerprint,
        "config": source_fingerprint(m.config),
        "scheduler": [job.scheduler.class_name, job.scheduler.overrides],
        "clip_skip": job.clip_skip,
        "true_cfg": job.true_cfg,
        "hires": dataclasses.asdict(job.hires) if job.hires else None,
        "vae": source_fingerprint(m.vae),
        "variant": m.variant,
        "t5": m.t5,
        "prompt": job.prompt,
        "negative_prompt": job.negative_prompt,
        "seed": job.seed,
        "size": [job.width, job.height],
        "steps": job.steps,
        "guidance": job.guidance,
        "preset": job.preset,
        "candidates": job.candidates,
        "characters": job.characters,
        "lora": {n: [s, file_sha256(plan.characters[n].lora_path(m.family))] for n, s in job.lora.items()},
        "dtype": opts.dtype_name,
        "device": str(opts.device).split(":")[0],
        "vae_tiling": opts.vae_tiling,
        "compile": opts.compile,
    }
    if job.control:
        c = job.control
        doc["control"] = {
            "type": c.type,
            "image": file_sha256(c.image),
            "scale": c.scale,
            "preprocess": c.preprocess,
            "thresholds": [c.low, c.high] if c.type == "canny" else None,
            "window": [c.start, c.end],
            "controlnet": source_fingerprint(m.controlnet[c.type]),
        }
    if job.ip:
        ref = plan.characters[job.ip.character]
        doc["ip_adapter"] = {
            "mode": job.ip.mode,
            "scale": job.ip.scale,
            "weights": source_fingerprint(m.faceid if job.ip.mode == "face" else m.ip_adapter),
            "image_encoder": source_fingerprint(m.image_encoder),
            "image": file_sha256(job.ip.image) if job.ip.image else None,
            "refs": [file_sha256(p) for p in ref.ref_paths()] if job.ip.mode == "face" else None,
            "face_model": plan.faceid_backend.info.model_hash if job.ip.mode == "face" else None,
        }
    if job.scored:
        doc["scoring"] = {
            "backend": plan.scoring_backend.info.model_hash,
            "threshold": plan.scoring_backend.info.threshold,
            "refs": {n: [file_sha256(p) for p in plan.characters[n].ref_paths()] for n in job.characters},
            # candidates are rendered in chunks of this size; batched kernels may round differently
            "batch": opts.batch_size or job.candidates,
        }
    return stable_hash(doc)


# -- the step --------------------------------------------------------------------------------


def check_options(options: RenderOptions) -> RenderOptions:
    """The options with precision names normalised (a copy), or a one-line error; the argument is not changed."""
    options = dataclasses.replace(options, dtype=precision_name(options.dtype))
    if options.cpu_offload and str(options.device).startswith("cpu"):
        raise CharkitError(
            "--cpu-offload moves models between CPU and GPU memory: it needs --device cuda (or another GPU)"
        )
    if options.batch_size is not None and options.batch_size < 1:
        raise CharkitError(f"--batch-size {options.batch_size}: must be at least 1")
    if options.scene_batch is not None and options.scene_batch < 1:
        raise CharkitError(f"--scene-batch {options.scene_batch}: must be at least 1")
    if options.shard is not None:
        k, n = options.shard
        if not (isinstance(k, int) and isinstance(n, int) and 0 <= k < n):
            raise CharkitError(f"--shard {k}/{n}: K must be 0 .. N-1 (e.g. --shard 0/4 .. --shard 3/4)")
        if options.verify:
            raise CharkitError(
                "--verify with --shard: a shard sees only its own scenes; run `charkit verify DIR` after every shard"
            )
    return options


def batch_key(job: SceneJob) -> str | None:
    """What scenes must share to render in one pipeline call (None: the scene renders alone).

    Everything but the prompts and seeds: model, size, steps, guidance, sampler, LoRAs and their scales, the same
    control map and IP-Adapter input, clip skip, true CFG and hires. Best-of-N scenes batch their own candidates.
    """
    if job.candidates != 1:
        return None
    c, ip = job.control, job.ip
    return stable_hash(
        [
            job.model.label,
            [job.width, job.height, job.steps, job.guidance, job.clip_skip, job.true_cfg, job.preset],
            [job.scheduler.class_name, job.scheduler.overrides],
            sorted(job.lora.items()),
            None if c is None else [c.type, str(c.image), c.scale, c.preprocess, c.low, c.high, c.start, c.end],
            None if ip is None else [ip.mode, ip.scale, ip.character, str(ip.image)],
            None if job.hires is None else dataclasses.asdict(job.hires),
        ]
    )


def plan_batches(jobs: list[SceneJob], size: int) -> list[list[SceneJob]]:
    """Scene batches of at most ``size`` jobs, formed from the whole storyboard in plan order (never from what is
    pending), so a resumed or partly re-rendered run renders every batch exactly as a full run does."""
    out: list[list[SceneJob]] = []
    filling: dict[str, list[SceneJob]] = {}
    for job in jobs:
        key = batch_key(job) if size > 1 else None
        group = filling.get(key) if key is not None else None
        if group is None or len(group) >= size:
            group = []
            out.append(group)
            if key is not None:
                filling[key] = group
        group.append(job)
    for i, group in enumerate(out):
        for job in group:
            job.batch = i
    return out


def shard_batches(batches: list[list[SceneJob]], shard: tuple[int, int] | None) -> set[int]:
    """Indices of the batches shard ``K/N`` renders: a contiguous share of the plan's batches (all without shard).

    >>> sorted(shard_batches([[1], [2], [3], [4], [5]], (1, 2)))
    [2, 3, 4]
    """
    if shard is None:
        return set(range(len(batches)))
    k, n = shard
    return set(range(k * len(batches) // n, (k + 1) * len(batches) // n))


def _model_key(mp: ModelPlan) -> str:
    return stable_hash([mp.family, mp.path, mp.config, mp.controlnet, mp.ip_adapter, mp.image_encoder, mp.faceid])


def plan_models(
    board: Storyboard, options: RenderOptions, problems: Problems
) -> tuple[list[ModelPlan], list[list[ModelPlan]]]:
    """Every distinct model of the storyboard, and the models each scene renders on (in scene order)."""
    from .models import resolve_model

    plans: dict[str, ModelPlan] = {}

    def add(spec: ModelSpec, where: str) -> ModelPlan | None:
        with problems.check():
            mp = resolve_model(spec, board, options, where=where, scheduler=board.defaults.scheduler)
            other = plans.get(mp.label)
            if other is not None and _model_key(other) != _model_key(mp):
                raise CharkitError(
                    f"{board.label}: {where}: label {mp.label!r} is already used by model {other.source}; "
                    "give each model its own label:"
                )
            return plans.setdefault(mp.label, mp)
        return None

    if board.models is not None:
        matrix = [mp for i, m in enumerate(board.models) if (mp := add(m, f"models[{i}]")) is not None]
        per_scene = [matrix for _ in board.scenes]
    else:
        default = add(board.defaults.model, "defaults.model") if board.defaults.model is not None else None
        per_scene = [
            [mp]
            if (mp := add(scene.model, f"scene {scene.id!r}: field 'model'") if scene.model else default) is not None
            else []
            for scene in board.scenes
        ]
    return list(plans.values()), per_scene


def plan_backends(plan: RenderPlan) -> None:
    """The face backends the plan needs: insightface for FaceID conditioning, a scorer for best-of-N / --verify."""
    from ..identity import get_backend

    ident, options = plan.storyboard.identity, plan.options
    face_models = options.face_models or (
        str(plan.storyboard.resolve(ident.face_models)) if ident.face_models else None
    )
    face_jobs = [j for j in plan.jobs if j.ip and j.ip.mode == "face"]
    if face_jobs:
        from .conditioning import faceid_pack_warning

        try:
            plan.faceid_backend = get_backend("insightface", face_models=face_models)
        except CharkitError as e:
            # FaceID conditions on insightface embeddings: no other backend can stand in (so no --backend hint)
            why = str(e).split("; get one:")[0]
            scenes = sorted({j.scene.id for j in face_jobs})
            message = (
                f"{plan.storyboard.label}: scene {', '.join(map(repr, scenes))}: field 'ip_adapter.mode': face "
                f"(FaceID) needs an insightface pack ({why}); pass --face-models DIR or set identity.face_models "
                "(buffalo_l, or the Apache-2.0 AuraFace: docs/face-models.md), or use ip_adapter mode image or off"
            )
            if not isinstance(e, MissingModelError) or not all(j.scene.optional for j in face_jobs):
                raise type(e)(message) from None
            skip_scenes(plan, scenes, f"field 'ip_adapter.mode': FaceID needs an insightface pack ({why})")
        warning = faceid_pack_warning(plan.faceid_backend) if plan.faceid_backend is not None else None
        if warning:
            plan.warnings.append(f"{plan.storyboard.label}: {warning}")
    if options.verify or any(j.scored for j in plan.jobs):
        from ..identity import FACEID_MODEL, get_scorer, independent_scorer

        scorer = get_scorer(options.backend or ident.backend, face_models=face_models, threshold=ident.threshold)
        faceid = FACEID_MODEL if plan.faceid_backend is not None else None  # evaluator independence
        plan.scoring_backend = independent_scorer(scorer, faceid, allow_same_evaluator=options.allow_same_evaluator)


def check_inputs(
    board: Storyboard,
    *,
    out: str | os.PathLike | None = None,
    models: list[ModelSpec] | None = None,
    options: RenderOptions | None = None,
) -> RenderPlan:
    """Validate the storyboard against the files, families and options; return the plan. Writes nothing.

    Every problem of the storyboard is collected and reported together (:class:`~charkit.errors.InputProblems`).

    >>> plan = check_inputs(load_storyboard("examples/episode.yaml"))  # doctest: +SKIP
    >>> [j.file for j in plan.jobs][:2]  # doctest: +SKIP
    ['s01-arrival.png', 's02-cafe.png']
    """
    from .jobs import load_characters
    from .models import override_models

    options = check_options(options or RenderOptions())
    if models:
        board = override_models(board, models)
    problems = Problems()
    if options.scenes:
        unknown = [s for s in options.scenes if s not in {sc.id for sc in board.scenes}]
        if unknown:
            problems.items.append(
                f"--scene {unknown[0]!r}: no such scene in {board.label}; scenes: {', '.join(s.id for s in board.scenes)}"
            )
    characters = load_characters(board, problems)
    model_plans, per_scene = plan_models(board, options, problems)
    out_dir = Path(out).expanduser().resolve() if out is not None else board.output_dir().resolve()
    check_environment(out_dir, board, options, problems, flag="--out" if out is not None else None)
    plan = RenderPlan(
        storyboard=board, out_dir=out_dir, characters=characters, models=model_plans, jobs=[], options=options
    )
    for scene, mps in zip(board.scenes, per_scene):
        plan_scene_jobs(plan, scene, mps, problems)
    check_job_files(plan, problems)
    problems.raise_any()
    plan_backends(plan)  # after the cheap checks: loading a face model takes a moment
    apply_tiny_limits(plan)  # warnings come last: a run that fails says one thing, its errors
    for note in plan.skipped:
        warn(f"skipped optional {note}")
    for mp in plan.models:
        mp.fingerprint = source_fingerprint(mp.path) or ""
    plan_batch_hashes(plan)
    return plan


def plan_scene_jobs(plan: RenderPlan, scene, model_plans: list[ModelPlan], problems: Problems) -> None:
    """The scene's jobs (one per model) into the plan; an ``optional: true`` scene missing something is skipped."""
    from .jobs import plan_job

    board = plan.storyboard
    own = Problems() if scene.optional else problems
    jobs = [
        job
        for mp in model_plans
        if (
            job := plan_job(
                board,
                scene,
                mp,
                plan.characters,
                plan.options,
                matrix=plan.matrix,
                problems=own,
                warnings=plan.warnings,
            )
        )
        is not None
    ]
    if own is not problems and own.items:
        if not own.only_missing():
            problems.extend(own)  # a mistake, not something missing: reported like any other
        else:
            plan.skipped.append(own.items[0].removeprefix(f"{board.label}: "))
        return
    for job in jobs:
        with problems.check():
            under_root(plan.out_dir, job.file)
        plan.jobs.append(job)


def plan_batch_hashes(plan: RenderPlan) -> None:
    """Scene batches (deterministic from the storyboard) and each job's inputs hash, which names its batch."""
    plan.batches = plan_batches(plan.jobs, plan.options.scenes_per_call)
    base = {id(job): inputs_hash(job, plan) for job in plan.jobs}
    for group in plan.batches:
        for job in group:
            # batched kernels may round differently: a scene's pixels depend on its batch, so its hash does too
            peers = [base[id(j)] for j in group]
            job.inputs_hash = base[id(job)] if len(group) == 1 else stable_hash([base[id(job)], peers])


def skip_scenes(plan: RenderPlan, scene_ids: list[str], why: str) -> None:
    """Leave ``optional: true`` scenes out of the plan, noting why (one warning line each)."""
    plan.jobs = [j for j in plan.jobs if j.scene.id not in scene_ids]
    plan.skipped += [f"scene {sid!r}: {why}" for sid in scene_ids]


def check_environment(
    out_dir: Path, board: Storyboard, options: RenderOptions, problems: Problems, *, flag: str | None
) -> None:
    """The output folder can be created and written, holds no other project, and the face cache can be written."""
    where = flag or f"{board.label}: field 'output'"
    with problems.check():
        check_output_dir(out_dir, where)
    with problems.check():
        check_project(out_dir, board, options, where=where)
    if options.verify or board.defaults.candidates > 1 or any((s.candidates or 1) > 1 for s in board.scenes):
        with problems.check():
            check_cache_dir()


def check_project(out_dir: Path, board: Storyboard, options: RenderOptions, *, where: str) -> None:
    """One project per render folder: a manifest of another storyboard there is refused (unless overridden)."""
    from ..stagefiles import RenderManifest, read_stage_file

    manifest_file = out_dir / "manifest.json"
    if options.overwrite_other_project or not manifest_file.is_file():
        return
    m = read_stage_file(manifest_file, RenderManifest, fix="delete it to render every scene again")
    same_file = bool(m.storyboard) and board.path is not None and (out_dir / m.storyboard).resolve() == board.path
    if same_file or m.project == board.project:
        return
    raise CharkitError(
        f"{where} {out_dir}: holds the renders of another project ({m.project!r}, storyboard "
        f"{m.storyboard or '(none)'}); render into another folder (--out), or pass --overwrite-other-project to "
        "render this storyboard there"
    )


def check_job_files(plan: RenderPlan, problems: Problems) -> None:
    """Files the jobs read after a model loads, checked now: LoRA headers and family, control and IP images."""
    from ..images import ImageRejection, read_image

    seen: set = set()
    for job in plan.jobs:
        where = f"{plan.storyboard.label}: scene {job.scene.id!r}: field"
        for name in job.lora:
            path = plan.characters[name].lora_path(job.model.family)
            if (path, job.model.family) not in seen:
                seen.add((path, job.model.family))
                with problems.check():
                    check_lora_file(path, name, job.model.family, where=f"{where} 'lora.{name}'")
        images = [("control.image", job.control.image if job.control else None)]
        images.append(("ip_adapter.image", job.ip.image if job.ip and job.ip.mode == "image" else None))
        for fld, image in images:
            if image is not None and image not in seen:
                seen.add(image)
                r = read_image(image)
                if isinstance(r, ImageRejection):
                    problems.items.append(f"{where} '{fld}': {image}: {r.reason}; replace the image")


def check_lora_file(path: Path, name: str, family: str, *, where: str) -> None:
    """A .safetensors LoRA whose header reads and whose recorded family (charkit metadata) is the model's."""
    if path.suffix.lower() != ".safetensors":
        return  # a pickle LoRA (--allow-pickle-weights) is only readable by loading it
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise CharkitError(
            f"{where}: LoRA file {path} is not a readable .safetensors file ({' '.join(str(e).split())[:120]}); "
            f"retrain it with `charkit train` or fix [lora] {family} in {name}'s character.toml"
        ) from None
    trained = meta.get("charkit.family")
    if trained and trained != family:
        raise CharkitError(
            f"{where}: LoRA file {path} was trained for {trained}, not {family}; register it under [lora] {trained} "
            f"in {name}'s character.toml, or train a {family} LoRA"
        )


def apply_tiny_limits(plan: RenderPlan) -> None:
    """Scale scenes on a tiny model (``charkit tiny-model``) down to seconds-per-scene sizes, saying so once."""
    from ..families.tiny_limits import TINY_STEPS, is_tiny_model, tiny_size, too_big

    if plan.options.full_size:
        return
    for mp in plan.models:
        big = [j for j in plan.jobs if j.model is mp and too_big(j.width, j.height)]
        if not big or not is_tiny_model(mp.path):
            continue
        before = f"{big[0].width}x{big[0].height}, {big[0].steps} steps"
        for j in big:
            j.width, j.height = tiny_size(j.width, j.height, multiple=mp.spec.size_multiple)
            j.steps = min(j.steps, TINY_STEPS)
        warn(
            f"model {mp.label} ({mp.source}) is a tiny random model: {len(big)} scenes render at "
            f"{big[0].width}x{big[0].height}, {big[0].steps} steps instead of {before} (seconds instead of minutes "
            "each; the weights are random either way); pass --full-size to keep the storyboard's settings"
        )


def manifest_header(plan: RenderPlan) -> dict:
    """Top-level manifest fields (paths relative to the output folder, so the folder can move with its characters)."""
    out = plan.out_dir

    def rel(p: Path) -> str:
        try:
            return os.path.relpath(Path(p).resolve(), out)
        except ValueError:  # another drive on Windows
            return str(Path(p).resolve())

    board = plan.storyboard
    return {
        "charkit_version": __version__,
        "storyboard": rel(board.path) if board.path else "",
        "storyboard_sha256": board.sha256,
        "project": board.project,
        "characters": {n: rel(c.dir) for n, c in plan.characters.items()},
        "models": [m.describe() for m in plan.models],
    }
