"""``check_inputs``: a storyboard becomes a :class:`RenderPlan` of scene jobs, or a one-line error.

Everything a render could trip over is checked here, before a model loads or a file is
written: characters and their LoRAs, model sources and families, what each family supports,
control images and annotator weights, IP-Adapter weights and the insightface pack for FaceID,
sizes, schedulers. Each job carries its ``inputs_hash``: the hash of everything that changes
its pixels, which is what makes a rerun render only the scenes that changed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..character import Character, load_character
from ..devices import precision_name
from ..errors import CharkitError
from ..paths import check_name, under_root
from .conditioning import check_annotators
from .fingerprint import file_sha256, source_fingerprint, stable_hash
from .storyboard import ModelSpec, Scene, Storyboard, expand_prompt, placeholders

#: Bump when charkit changes how the same inputs turn into pixels: every scene renders again.
RENDER_VERSION = 1


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
    backend: str | None = None  # overrides storyboard identity.backend
    verify: bool = False
    force: bool = False
    progress: bool = True
    scenes: tuple[str, ...] | None = None  # render only these scene ids (others keep their images)

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


# -- models ---------------------------------------------------------------------------------


def _local_or_text(board: Storyboard, text: str) -> str:
    """A storyboard path that exists relative to its folder, else the text itself (a hub id)."""
    p = board.resolve(text)
    return str(p) if p.exists() else text


def resolve_model(
    spec: ModelSpec, board: Storyboard, options: RenderOptions, *, where: str, scheduler: str | None
) -> ModelPlan:
    """Resolve one model entry (family detection, pickle refusal, adapters) or raise naming ``where``."""
    from ..families import get_family
    from ..families.detect import detect_family
    from ..families.sources import check_weights_file, hub_offline, resolve_source

    sb = board.label
    try:
        path = _local_or_text(board, spec.source)
        src = resolve_source(path, what="source", allow_pickle_weights=options.allow_pickle_weights)
        if src.kind == "hub":
            require_cached(src.ref, "source")
        family = spec.family
        if family is None:
            family = detect_family(src.ref, allow_pickle_weights=options.allow_pickle_weights)
        elif src.kind in ("folder", "file") and not src.pickle:
            found = detect_family(src.ref)
            if found != family:
                raise CharkitError(
                    f"source {spec.source} is a {found} model, but family is {family}; set family: {found}"
                )
        fam = get_family(family)
        config = None
        if spec.config is not None:
            config = resolve_source(_local_or_text(board, spec.config), what="config").ref
        elif src.kind == "file" and hub_offline():
            raise CharkitError(
                f"source {spec.source} is a single-file checkpoint: offline it needs config: <a diffusers {family} "
                "folder or cached hub id> for the component configs and tokenizers; add it to the model"
            )
        controlnet = {}
        for ctype, cn in spec.controlnet.items():
            fam.SPEC.require_control(ctype)
            cn_src = resolve_source(
                _local_or_text(board, cn), what=f"controlnet.{ctype}", allow_pickle_weights=options.allow_pickle_weights
            )
            if cn_src.kind == "hub":
                require_cached(cn_src.ref, f"controlnet.{ctype}")
            controlnet[ctype] = cn_src.ref
        weights = {}
        for name in ("ip_adapter", "faceid"):
            text = getattr(spec, name)
            if text is None:
                weights[name] = None
                continue
            fam.SPEC.require("faceid" if name == "faceid" else "ip_adapter")
            local = board.resolve(text)
            if local.exists():
                check_weights_file(local, what=name, allow_pickle_weights=options.allow_pickle_weights)
                weights[name] = str(local)
            elif text.count("/") >= 2 and not text.startswith((".", "/", "~")):
                weights[name] = text  # org/repo/path/file.safetensors on the hub
            else:
                raise CharkitError(
                    f"{name} {text}: no such file; give a .safetensors file (relative to the storyboard)"
                )
        encoder = None
        if spec.image_encoder is not None:
            encoder = resolve_source(
                _local_or_text(board, spec.image_encoder),
                what="image_encoder",
                allow_pickle_weights=options.allow_pickle_weights,
            ).ref
        sched = scheduler or fam.SPEC.scheduler
        from ..families.spec import SCHEDULERS

        if sched not in SCHEDULERS:
            raise CharkitError(f"scheduler {sched!r} is not supported: choose one of {', '.join(sorted(SCHEDULERS))}")
    except CharkitError as e:
        raise CharkitError(f"{sb}: {where}: {e}") from None
    return ModelPlan(
        label=spec.label or family,
        family=family,
        source=spec.source,
        path=src.ref,
        config=config,
        scheduler=sched,
        controlnet=controlnet,
        ip_adapter=weights["ip_adapter"],
        image_encoder=encoder,
        faceid=weights["faceid"],
    )


def require_cached(repo_id: str, what: str) -> None:
    """Offline (HF_HUB_OFFLINE=1), a hub model must already be in the local cache: say so before anything loads."""
    from ..errors import MissingModelError
    from ..families.sources import hub_offline

    if not hub_offline():
        return  # from_pretrained downloads it at load time
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo_id, local_files_only=True)
    except Exception:  # huggingface_hub raises several error types for "not cached"
        raise MissingModelError(
            f"{what} {repo_id}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; download it first "
            f"(huggingface-cli download {repo_id}) or point to a local folder"
        ) from None


def parse_model_option(text: str) -> ModelSpec:
    """``--model [LABEL=]SOURCE`` -> ModelSpec (family detected later).

    >>> parse_model_option("rv=models/realisticVision.safetensors").label
    'rv'
    """
    label, sep, source = text.partition("=")
    if sep and label and "/" not in label and not label.startswith("."):
        return ModelSpec(source=source, label=check_name(label, "--model label"))
    return ModelSpec(source=text)


def override_models(board: Storyboard, models: list[ModelSpec | str]) -> Storyboard:
    """The storyboard rendered on ``models`` instead of its own (``--model``): one model, or a matrix of several.

    ControlNet / IP-Adapter weights of the storyboard's model of the same family carry over.
    """
    specs = [m if isinstance(m, ModelSpec) else parse_model_option(m) for m in models]
    originals = [
        m
        for m in ([board.defaults.model] + list(board.models or []) + [s.model for s in board.scenes])
        if m is not None
    ]
    merged = []
    for spec in specs:
        same = [o for o in originals if spec.family is None or o.family in (None, spec.family)]
        base = same[0] if same else None
        extra = {}
        if base is not None:
            for name in ("controlnet", "ip_adapter", "image_encoder", "faceid"):
                if getattr(spec, name) in (None, {}) and getattr(base, name) not in (None, {}):
                    extra[name] = getattr(base, name)
        merged.append(spec.model_copy(update=extra))
    scenes = [s.model_copy(update={"model": None}) for s in board.scenes]
    if len(merged) == 1:
        update = {"defaults": board.defaults.model_copy(update={"model": merged[0]}), "models": None, "scenes": scenes}
    else:
        update = {"models": merged, "scenes": scenes}
    new = board.model_copy(update=update)
    new._path, new._sha256 = board.path, board.sha256
    return new


# -- characters -----------------------------------------------------------------------------


def load_characters(board: Storyboard) -> dict[str, Character]:
    chars = {}
    for name, folder in board.characters.items():
        try:
            ch = load_character(board.resolve(folder))
        except CharkitError as e:
            raise CharkitError(f"{board.label}: characters.{name}: {e}") from None
        if ch.name != name:
            raise CharkitError(
                f"{board.label}: characters.{name}: folder {folder} holds character {ch.name!r}; "
                f"use the name from its character.toml ({ch.name}: {folder})"
            )
        chars[name] = ch
    return chars


# -- scenes ---------------------------------------------------------------------------------


def default_seed(base: int, scene_id: str) -> int:
    """A scene's seed when it sets none: stable under inserting or reordering scenes.

    >>> default_seed(0, "s01") == default_seed(0, "s01")
    True
    """
    return (base + int(hashlib.sha256(scene_id.encode()).hexdigest()[:8], 16)) % (2**63)


def _scene_characters(scene: Scene, declared: dict[str, Character], err) -> list[str]:
    named = placeholders(scene.prompt)
    if scene.characters is None:
        chars = named
    else:
        chars = list(scene.characters)
        if len(set(chars)) != len(chars):
            raise err("characters", "a character is listed twice; list each once, left to right")
        stray = [n for n in named if n not in chars]
        if stray:
            raise err("prompt", f"{{{stray[0]}}} is not in this scene's characters {chars}; add it to characters")
    for n in named + chars:
        if n not in declared:
            known = ", ".join(declared) or "none"
            raise err(
                "prompt" if n in named else "characters",
                f"unknown character {n!r}; declare it under characters: (known: {known})",
            )
    return chars


def plan_job(
    board: Storyboard,
    scene: Scene,
    model: ModelPlan,
    characters: dict[str, Character],
    options: RenderOptions,
    *,
    matrix: bool,
) -> SceneJob:
    """Resolve one scene on one model (values, support checks, files), without the inputs hash."""

    def err(fld: str, msg: str) -> CharkitError:
        return CharkitError(f"{board.label}: scene {scene.id!r}: field '{fld}': {msg}")

    d = board.defaults
    spec = model.spec
    chars = _scene_characters(scene, characters, err)
    size = scene.size or d.size
    width, height = (size.width, size.height) if size else (spec.width, spec.height)
    try:
        spec.check_size(width, height)
    except CharkitError as e:
        raise err("size", str(e)) from None
    candidates = scene.candidates or d.candidates
    if candidates > 1 and not chars:
        raise err(
            "candidates",
            "best-of-N scores candidates by identity, but the scene has no characters; add characters or set candidates: 1",
        )

    # LoRA: every character with a LoRA for this family, at its scene scale (default defaults.lora_scale).
    lora: dict[str, float] = {}
    for name in scene.lora:
        if name not in chars:
            raise err(
                f"lora.{name}", f"{name!r} is not in this scene's characters {chars}; remove it or add the character"
            )
    for name in chars:
        explicit = scene.lora.get(name)
        path = characters[name].lora_path(model.family)
        if path is None:
            if explicit not in (None, 0):
                raise err(
                    f"lora.{name}",
                    f"{name} has no {model.family} LoRA ([lora] {model.family} in its character.toml); train one with "
                    f"`charkit train` or remove lora.{name}",
                )
            continue
        if not path.is_file():
            raise err(
                f"lora.{name}",
                f"LoRA file {path} (from {characters[name].dir}/character.toml) does not exist; retrain or fix the path",
            )
        from ..families.sources import check_weights_file

        try:
            check_weights_file(path, what=f"LoRA of {name}", allow_pickle_weights=options.allow_pickle_weights)
            scale = d.lora_scale if explicit is None else explicit
            if scale != 0:
                spec.require("lora")
        except CharkitError as e:
            raise err(f"lora.{name}", str(e)) from None
        lora[name] = float(scale)

    control = None
    if scene.control is not None:
        c = scene.control
        try:
            spec.require_control(c.type)
        except CharkitError as e:
            raise err("control.type", str(e)) from None
        if c.type not in model.controlnet:
            raise err(
                "control.type",
                f"model {model.label!r} has no {c.type} ControlNet; add controlnet: {{{c.type}: <hub id or folder>}} to the model",
            )
        img = board.resolve(c.image)
        if not img.is_file():
            raise err("control.image", f"{c.image}: no such file (paths are relative to the storyboard)")
        if c.preprocess:
            check_annotators(
                c.type,
                options.annotators,
                allow_pickle_weights=options.allow_pickle_weights,
                where=f"{board.label}: scene {scene.id!r}: field 'control.type'",
            )
        control = ControlPlan(c.type, img, c.image, c.scale, c.preprocess, c.low_threshold, c.high_threshold)

    ip = None
    ipspec = scene.ip_adapter or d.ip_adapter
    if ipspec.mode != "off":
        feature = "faceid" if ipspec.mode == "face" else "ip_adapter"
        try:
            spec.require(feature)
        except CharkitError as e:
            raise err("ip_adapter.mode", str(e)) from None
        weights = model.faceid if ipspec.mode == "face" else model.ip_adapter
        if weights is None:
            key = "faceid" if ipspec.mode == "face" else "ip_adapter"
            raise err(
                "ip_adapter.mode",
                f"model {model.label!r} has no {key} weights; add {key}: <file.safetensors> to the model",
            )
        who = ipspec.character or (chars[0] if chars else None)
        if who is None:
            raise err(
                "ip_adapter.character",
                f"mode {ipspec.mode} needs a character whose references condition the scene; add one",
            )
        if who not in characters:
            raise err("ip_adapter.character", f"unknown character {who!r}; declare it under characters:")
        image = None
        if ipspec.mode == "image":
            if ipspec.image is not None:
                image = board.resolve(ipspec.image)
                if not image.is_file():
                    raise err(
                        "ip_adapter.image", f"{ipspec.image}: no such file (paths are relative to the storyboard)"
                    )
            else:
                image = characters[who].ref_paths()[0]
        else:
            characters[who].ref_paths()  # raises when the character has no references
        ip = IPPlan(ipspec.mode, ipspec.scale, who, image)

    trig = {n: characters[n].trigger_text for n in characters}
    negatives = [scene.negative_prompt if scene.negative_prompt is not None else d.negative_prompt]
    negatives += [characters[n].spec.negative_prompt for n in chars]
    # Comma-separated terms, each once, in order (characters often share "blurry, deformed").
    negative = ", ".join(dict.fromkeys(t.strip() for n in negatives if n for t in n.split(",") if t.strip()))
    file = f"{scene.id}__{model.label}.png" if matrix else f"{scene.id}.png"
    return SceneJob(
        scene=scene,
        model=model,
        file=file,
        prompt=expand_prompt(scene.prompt, trig),
        negative_prompt=negative,
        characters=chars,
        seed=scene.seed if scene.seed is not None else default_seed(d.seed, scene.id),
        width=width,
        height=height,
        steps=scene.steps or d.steps or spec.steps,
        guidance=scene.guidance
        if scene.guidance is not None
        else (d.guidance if d.guidance is not None else spec.guidance),
        preset=scene.preset or d.preset,
        candidates=candidates,
        lora=lora,
        control=control,
        ip=ip,
    )


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
        "scheduler": m.scheduler,
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


def check_inputs(
    board: Storyboard,
    *,
    out: str | os.PathLike | None = None,
    models: list[ModelSpec | str] | None = None,
    options: RenderOptions | None = None,
) -> RenderPlan:
    """Validate the storyboard against the files, families and options; return the plan. Writes nothing.

    >>> plan = check_inputs(load_storyboard("examples/episode.yaml"))  # doctest: +SKIP
    >>> [j.file for j in plan.jobs][:2]
    ['s01-arrival.png', 's02-cafe.png']
    """
    options = options or RenderOptions()
    options.dtype = precision_name(options.dtype)
    if options.cpu_offload and str(options.device).startswith("cpu"):
        raise CharkitError(
            "--cpu-offload moves models between CPU and GPU memory: it needs --device cuda (or another GPU)"
        )
    if options.batch_size is not None and options.batch_size < 1:
        raise CharkitError(f"--batch-size {options.batch_size}: must be at least 1")
    if models:
        board = override_models(board, models)
    sb = board.label
    characters = load_characters(board)
    if options.scenes:
        unknown = [s for s in options.scenes if s not in {sc.id for sc in board.scenes}]
        if unknown:
            raise CharkitError(
                f"--scene {unknown[0]!r}: no such scene in {sb}; scenes: {', '.join(s.id for s in board.scenes)}"
            )

    sched = board.defaults.scheduler
    model_plans: dict[str, ModelPlan] = {}

    def add_model(spec: ModelSpec, where: str) -> ModelPlan:
        mp = resolve_model(spec, board, options, where=where, scheduler=sched)
        key = stable_hash([mp.family, mp.path, mp.config, mp.controlnet, mp.ip_adapter, mp.image_encoder, mp.faceid])
        for other in model_plans.values():
            if (
                other.label == mp.label
                and stable_hash(
                    [
                        other.family,
                        other.path,
                        other.config,
                        other.controlnet,
                        other.ip_adapter,
                        other.image_encoder,
                        other.faceid,
                    ]
                )
                != key
            ):
                raise CharkitError(
                    f"{sb}: {where}: label {mp.label!r} is already used by model {other.source}; give each model its own label:"
                )
        model_plans.setdefault(mp.label, mp)
        return model_plans[mp.label]

    per_scene: list[list[ModelPlan]] = []
    if board.models is not None:
        matrix = [add_model(m, f"models[{i}]") for i, m in enumerate(board.models)]
        per_scene = [matrix for _ in board.scenes]
    else:
        default = add_model(board.defaults.model, "defaults.model") if board.defaults.model is not None else None
        for scene in board.scenes:
            per_scene.append([add_model(scene.model, f"scene {scene.id!r}: field 'model'") if scene.model else default])

    plan = RenderPlan(
        storyboard=board,
        out_dir=Path(out).expanduser().resolve() if out is not None else board.output_dir().resolve(),
        characters=characters,
        models=list(model_plans.values()),
        jobs=[],
        options=options,
    )
    for scene, mps in zip(board.scenes, per_scene):
        for mp in mps:
            job = plan_job(board, scene, mp, characters, options, matrix=board.models is not None)
            under_root(plan.out_dir, job.file)
            plan.jobs.append(job)

    # Face backends, only when something needs them (loading one takes a moment).
    ident = board.identity
    face_models = options.face_models or (str(board.resolve(ident.face_models)) if ident.face_models else None)
    from ..identity import get_backend

    if any(j.ip and j.ip.mode == "face" for j in plan.jobs):
        try:
            plan.faceid_backend = get_backend("insightface", face_models=face_models)
        except CharkitError as e:
            raise CharkitError(f"{sb}: ip_adapter mode face needs an insightface pack: {e}") from None
    if options.verify or any(j.scored for j in plan.jobs):
        name = options.backend or ident.backend
        plan.scoring_backend = get_backend(name, face_models=face_models, threshold=ident.threshold)

    for mp in plan.models:
        mp.fingerprint = source_fingerprint(mp.path) or ""
    for job in plan.jobs:
        job.inputs_hash = inputs_hash(job, plan)
    return plan


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
