"""``train_lora``: identity-aware LoRA training as a lifecycle of named steps.

    check_inputs -> load -> cache -> train_steps (baseline at step 0, checkpoint + evaluate every eval.every
                 steps) -> choose -> export (best.safetensors, kohya, register in character.toml, report)

Each step is a public function taking the :class:`TrainSession` (or the :class:`TrainPlan`) so it
can be called and tested alone. :func:`train_lora` runs them all::

    result = train_lora("characters/alice", model="runwayml/stable-diffusion-v1-5",
                        preset="training/sd15-lora.toml", device="cuda")
    result.best, result.choice.reason

Output: ``characters/NAME/loras/<family>/<run>/`` (or ``out``) with ``checkpoints/step-XXXXXX/``,
``probes/``, ``evals/``, ``run.json``, ``best.safetensors``, ``best.kohya.safetensors`` and
``training_report.json`` / ``.html``.

A run can die anywhere (``kill -9``, out of memory while rendering probes) and ``--resume`` finishes it:
it continues from the newest complete checkpoint, first scoring every checkpoint that was saved but
never scored (and the step-0 baseline if that is missing), and says on the console where it goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import __version__
from ..devices import precision_name, resolve_device, torch_dtype
from ..distributed import process_state
from ..environment import check_cache_dir, check_output_dir, removed_on_failure
from ..errors import CharkitError, warn
from ..families import family_part, get_spec
from ..interrupts import Interrupted, deferred, guard, raise_if_stopped, stopped
from ..paths import atomic_write_bytes, atomic_write_json, check_name
from ..stagefiles import TrainRunFile, read_stage_file, write_stage_file
from . import checkpoints as ckpt
from . import offload
from .config import TrainPreset, apply_overrides, load_preset, parse_preset
from .data import (
    LatentSource,
    TextSource,
    TrainDataset,
    batch_at,
    check_images,
    dataset_dir,
    load_dataset,
    load_reg_images,
    make_batch,
    step_generator,
    steps_for_epochs,
)
from .evaluate import (
    CheckpointChoice,
    CheckpointScore,
    ClipScorer,
    choose_checkpoint,
    probe_specs,
    resolve_clip_model,
    score_probes,
    summarize,
)
from .optim import check_optimizer, lr_scheduler, make_optimizer, optimizer_state_to_params

#: consecutive steps with a non-finite loss after which training stops
MAX_BAD_STEPS = 3
RUN_FILE = "run.json"
BASELINE_STEP = 0


def _quiet(message: str) -> None:
    pass


def _stderr(message: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(f"charkit train: {message}", file=sys.stderr)


class NonFiniteLossError(CharkitError):
    """Training diverged: the loss was NaN/inf for MAX_BAD_STEPS consecutive steps."""


@dataclass
class TrainPlan:
    """Everything validated before a model loads (the output of :func:`check_inputs`)."""

    character: object  # charkit.character.Character
    preset: TrainPreset
    family: str
    model: str
    model_config: str | None
    dataset: TrainDataset
    run_dir: Path
    run_name: str
    resume: ckpt.CheckpointInfo | None
    device: torch.device
    mixed_precision: str  # effective: "no" | "fp16" | "bf16"
    backend: tuple[str, ...]  # one or several (a panel: the combined score ranks checkpoints)
    clip_model: Path | None
    probe_width: int
    probe_height: int
    allow_pickle_weights: bool = False
    register: bool = True
    notes: list[str] = field(default_factory=list)
    quantization: offload.QuantizationSpec | None = None
    log: Callable[[str], None] = _quiet  # one-line messages for the console (resume point, fallbacks)
    warnings: list[str] = field(default_factory=list)  # shown once the dataset is ready (a failing run: its error only)

    @property
    def weight_dtype(self) -> torch.dtype:
        return torch_dtype(self.mixed_precision)

    @property
    def offload_encoders(self) -> bool:
        """Text encoders and VAE leave the GPU after caching (CUDA, both caches on, text encoder frozen)."""
        t = self.preset.train
        return (
            self.device.type == "cuda"
            and self.preset.memory.offload_encoders
            and t.cache_latents
            and t.cache_text_embeddings
            and not self.preset.lora.text_encoder
        )

    announce: bool = False  # set by load(): from then on notes go to the console as they come

    def note(self, message: str) -> None:
        """A note for the report that the console shows too (fallbacks the user should know about); notes made
        while validating are shown once :func:`load` starts, so a bad input stays a one-line error."""
        self.notes.append(message)
        if self.announce:
            self.log(message)


@dataclass
class TrainSession:
    """The live state of a run (models, optimizer, caches, history)."""

    plan: TrainPlan
    family: object  # charkit.families.<f>.lora module
    pipeline: object  # charkit.families.<f>.pipeline module (generate)
    pipe: object
    accelerator: object
    noise_scheduler: object
    params: list[torch.nn.Parameter]
    optimizer: object
    lr_scheduler: object
    optimizer_name: str
    latents: LatentSource | None = None
    texts: TextSource | None = None
    backend: object = None
    profile: object = None
    clip: ClipScorer | None = None
    step: int = 0
    losses: list[list[float]] = field(default_factory=list)  # [[step, loss], ...]
    scores: list[CheckpointScore] = field(default_factory=list)
    baseline: CheckpointScore | None = None  # step 0: the base model without the LoRA
    bad_steps: int = 0
    step_seconds: list[float] = field(default_factory=list)
    cache_seconds: float = 0.0
    probe_embeds: dict[int, object] = field(default_factory=dict)  # prompt index -> cached PromptEmbeds
    training_photos: list = field(default_factory=list)  # overfit.TrainingPhoto per training image
    block_swap: offload.BlockSwap | None = None
    skipped_updates: int = 0  # optimizer steps fp16 loss scaling skipped (the LR schedule did not advance)
    resumed_from: int | None = None

    @property
    def preset(self) -> TrainPreset:
        return self.plan.preset

    @property
    def spec(self):
        return get_spec(self.plan.family)

    @property
    def denoiser(self):
        return getattr(self.pipe, self.spec.denoiser)

    @property
    def trained_modules(self) -> list:
        names = [self.spec.denoiser] + (list(self.spec.lora_text_encoders) if self.preset.lora.text_encoder else [])
        return [getattr(self.pipe, n) for n in names]

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process


@dataclass
class TrainResult:
    run_dir: Path
    best: Path
    kohya: Path | None
    report_json: Path
    report_html: Path
    choice: CheckpointChoice
    scores: list[CheckpointScore]
    losses: list[list[float]]
    steps: int
    registered: Path | None


# ------------------------------------------------------------------------------------------ check_inputs


def training_device(device: str | torch.device | None) -> torch.device:
    """The device to train on (``auto``, ``cpu``, ``cuda``, ``cuda:N``); training runs on CPU or CUDA only."""
    d = torch.device(resolve_device(None if device is None else str(device)))
    if d.type not in ("cpu", "cuda"):
        raise CharkitError(f"--device {device}: training runs on cpu or cuda")
    return d


def accelerate_precision(precision: str) -> str:
    """charkit's precision name as accelerate's ``mixed_precision`` (fp32 -> "no")."""
    name = precision_name(precision)
    return "no" if name == "fp32" else name


def resolve_preset(
    preset: str | os.PathLike | TrainPreset | dict,
    *,
    steps: int | None = None,
    eval_every: int | None = None,
    dtype: str | None = None,
    clip_model: str | os.PathLike | None = None,
) -> TrainPreset:
    """The preset (a file, a dict or a TrainPreset) with the command line's quick-run overrides applied."""
    if isinstance(preset, TrainPreset):
        p = preset
    elif isinstance(preset, dict):
        p = parse_preset(preset)
    else:
        p = load_preset(preset)
    mp = None if dtype is None or str(dtype) == "auto" else accelerate_precision(dtype)
    return apply_overrides(
        p,
        steps=steps,
        eval_every=eval_every,
        mixed_precision=mp,
        clip_model=None if clip_model is None else str(clip_model),
    )


def training_precision(preset: TrainPreset, device: torch.device) -> tuple[str, list[str]]:
    """The precision the run really trains in (CPU: fp32) and a note when that differs from the preset."""
    effective = preset.train.mixed_precision
    if device.type == "cpu" and effective != "no":
        return "no", [f"mixed precision {effective} needs a GPU: trained in fp32 on CPU"]
    if effective == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise CharkitError("mixed precision bf16: this GPU has no bfloat16 support; use --dtype fp16")
    return effective, []


def check_model(model: str | os.PathLike, family: str, *, allow_pickle_weights: bool):
    """The model source; a local model's family is in its files, so it is checked against the preset's now."""
    from ..families.detect import detect_family
    from ..families.sources import resolve_source

    src = resolve_source(model, what=f"--model ({family})", allow_pickle_weights=allow_pickle_weights)
    if src.kind != "hub" and not src.pickle:
        found = detect_family(src.ref)
        if found != family:
            raise CharkitError(
                f"--model {src.ref}: this is a {found} model but the preset trains {family}; use "
                f'training/{found}-lora.toml (or a preset with family = "{found}") or a {family} model'
            )
    return src


def run_folder(character, family: str, *, out, run: str | None, resume: bool) -> tuple[Path, str]:
    """(run folder, run name): ``--out``, or a name under ``CHARACTER/loras/<family>/`` (``--resume``: the newest)."""
    if out is not None:
        return Path(out), Path(out).name
    base = character.dir / "loras" / family
    if run is None and resume:
        run = _newest_run(base)
        if run is None:
            raise CharkitError(f"--resume: no earlier run under {base}; start without --resume")
    name = check_name(run or _dt.datetime.now().strftime("run-%Y%m%d-%H%M%S"), "--run")
    return base / name, name


def check_resume(
    run_dir: Path, preset: TrainPreset, model: str, *, resume: bool, first_process: bool = True
) -> ckpt.CheckpointInfo | None:
    """The checkpoint to resume from (``--resume``), or a refusal to start over an existing run."""
    if not resume:
        if first_process and ((run_dir / RUN_FILE).exists() or ckpt.list_checkpoints(run_dir)):
            raise CharkitError(
                f"{run_dir}: a run is already there; pass --resume to continue it, or choose another --run/--out"
            )
        return None
    found = ckpt.latest_checkpoint(run_dir)
    if found is None:
        raise CharkitError(
            f"--resume: no complete checkpoint in {ckpt.checkpoints_dir(run_dir)}; start without --resume"
        )
    _check_same_run(run_dir, preset, model)
    if found.step > preset.train.steps:
        raise CharkitError(
            f"--resume: the newest checkpoint is step {found.step}, past train.steps={preset.train.steps}; raise --steps"
        )
    return found


def check_dataset(character, preset: TrainPreset, *, num_processes: int = 1) -> TrainDataset | None:
    """The prepped dataset, every image decoded once; None when ``charkit prep`` must run first (see prepare_dataset)."""
    spec = get_spec(preset.family)
    if not (dataset_dir(character.dir) / "dataset.json").is_file():
        if num_processes > 1:
            raise CharkitError(
                f"{dataset_dir(character.dir)}: no dataset; run `charkit prep {character.dir}` once before a "
                "multi-GPU run"
            )
        from ..dataset.prep import check_inputs as check_prep

        check_prep(character.dir, family=preset.family, resolution=preset.train.resolution or None)
        return None
    dataset = load_dataset(
        character.dir,
        family=preset.family,
        resolution=preset.train.resolution or None,
        size_multiple=spec.size_multiple,
    )
    check_images(dataset)
    return dataset


def check_inputs(
    character_dir: str | os.PathLike,
    *,
    model: str | os.PathLike,
    preset: str | os.PathLike | TrainPreset | dict,
    out: str | os.PathLike | None = None,
    run: str | None = None,
    resume: bool = False,
    steps: int | None = None,
    eval_every: int | None = None,
    device: str | torch.device | None = None,
    dtype: str | None = None,
    backend: str | tuple[str, ...] = "dlib",
    clip_model: str | os.PathLike | None = None,
    model_config: str | os.PathLike | None = None,
    allow_pickle_weights: bool = False,
    register: bool = True,
    full_size: bool = False,
    process_index: int = 0,
    num_processes: int = 1,
    log: Callable[[str], None] | None = None,
) -> TrainPlan:
    """Validate every input (character, preset, dataset images, output folder, resume point) without loading a
    model or writing anything. A character without a dataset yet gives ``plan.dataset = None``:
    :func:`prepare_dataset` runs prep.

    >>> plan = check_inputs("characters/alice", model="m/sd15", preset="training/sd15-lora.toml")  # doctest: +SKIP
    """
    from ..character import load_character
    from ..identity import scorer_names

    character = load_character(character_dir)
    p = resolve_preset(preset, steps=steps, eval_every=eval_every, dtype=dtype, clip_model=clip_model)
    spec = get_spec(p.family)
    dev = training_device(device)
    effective, notes = training_precision(p, dev)
    src = check_model(model, p.family, allow_pickle_weights=allow_pickle_weights)
    p, tiny_note = (p, None) if full_size else tiny_preset(p, src.ref)
    backend = scorer_names(backend)  # several: checkpoints ranked by the combined score
    notes += check_machine(p, dev, src)
    run_dir, run_name = run_folder(character, p.family, out=out, run=run, resume=resume)
    # before minutes of model loading: a file in the way, a read-only or full disk, an unwritable face cache
    check_output_dir(run_dir, "--out" if out is not None else "run folder")
    check_cache_dir()
    dataset = check_dataset(character, p, num_processes=num_processes)
    if dataset is not None:
        dataset, p = with_dataset(character, p, dataset, num_processes=num_processes)
    resume_from = check_resume(run_dir, p, src.ref, resume=resume, first_process=process_index == 0)
    resolution = dataset.resolution if dataset is not None else (p.train.resolution or spec.width)
    width, height = p.eval.width or resolution, p.eval.height or resolution
    spec.check_size(width, height)
    plan = TrainPlan(
        character=character,
        preset=p,
        family=p.family,
        model=src.ref,
        model_config=str(model_config) if model_config else None,
        dataset=dataset,
        run_dir=run_dir,
        run_name=run_name,
        resume=resume_from,
        device=dev,
        mixed_precision=effective,
        backend=backend,
        clip_model=resolve_clip_model(p.eval.clip_model),
        probe_width=width,
        probe_height=height,
        allow_pickle_weights=allow_pickle_weights,
        register=register,
        notes=[],
        quantization=offload.quantization_spec(p, spec, torch_dtype(effective)) if dev.type == "cuda" else None,
        log=log or _quiet,
        warnings=[tiny_note] if tiny_note and process_index == 0 else [],
    )
    for n in notes + (list(dataset.notes) if dataset is not None else []):
        plan.note(n)
    return plan


def check_machine(preset: TrainPreset, device: torch.device, src) -> list[str]:
    """Notes (and one-line errors) about what this machine cannot do of the preset: the optimizer, the quantised
    base, block swap."""
    notes = []
    for note in (check_optimizer(preset.optimizer.name, device), offload.check_quantization(preset, device)):
        if note:
            notes.append(note)
    if preset.memory.base_quantization != "none" and device.type == "cuda" and src.kind == "file":
        raise CharkitError(
            f"--model {src.ref}: memory.base_quantization works on a diffusers folder or hub id, not a single file; "
            "convert it (diffusers' from_single_file + save_pretrained) or set base_quantization = 'none'"
        )
    if preset.memory.block_swap and device.type != "cuda":
        notes.append(f"memory.block_swap {preset.memory.block_swap}: no effect on {device.type} (nothing to swap to)")
    return notes


def with_dataset(character, preset: TrainPreset, dataset: TrainDataset, *, num_processes: int = 1):
    """The dataset with its regularisation images, and the preset with the steps its epochs make; refuses a run
    that would save more than checkpoints.max_count checkpoints."""
    t = preset.train
    if t.reg_images:
        folder = Path(t.reg_images).expanduser()
        folder = folder if folder.is_absolute() else character.dir / folder
        dataset = load_reg_images(folder, dataset, class_word=character.spec.class_word)
        check_images(dataset)
    if t.epochs:
        steps = steps_for_epochs(
            dataset,
            t.epochs,
            batch_size=t.batch_size,
            repeats=t.repeats,
            accumulation=t.gradient_accumulation,
            processes=num_processes,
        )
        data = preset.model_dump()
        data["train"]["steps"] = min(steps, 100_000)
        preset = parse_preset(data, "train.epochs")
        dataset.notes.append(f"train.epochs={t.epochs}: {preset.train.steps} steps")
    saves = math.ceil(preset.train.steps / preset.eval.every)
    if saves > preset.checkpoints.max_count:
        raise CharkitError(
            f"train.steps={preset.train.steps} with eval.every={preset.eval.every} saves {saves} checkpoints, more "
            f"than checkpoints.max_count={preset.checkpoints.max_count}; raise eval.every, lower --steps, or raise "
            "checkpoints.max_count"
        )
    if preset.eval.every > preset.train.steps:
        dataset.notes.append(
            f"eval.every={preset.eval.every} > train.steps={preset.train.steps}: only the last step is evaluated"
        )
    return dataset, preset


def tiny_preset(preset: TrainPreset, model: str) -> tuple[TrainPreset, str | None]:
    """A real preset's sizes scaled down for a tiny model (``charkit tiny-model``), and the note saying so."""
    from ..families.tiny_limits import TINY_SIDE, TINY_STEPS, is_tiny_model, tiny_size, too_big

    spec = get_spec(preset.family)
    resolution, ev = preset.train.resolution or spec.width, preset.eval
    if not too_big(resolution, resolution) or not is_tiny_model(model):
        return preset, None
    data = preset.model_dump()
    data["train"]["resolution"] = TINY_SIDE
    if ev.width and ev.height:
        data["eval"]["width"], data["eval"]["height"] = tiny_size(ev.width, ev.height, multiple=spec.size_multiple)
    steps = ev.steps or spec.steps
    data["eval"]["steps"] = min(steps, TINY_STEPS)
    probes = f" and {TINY_STEPS}-step probes instead of {steps} steps" if steps > TINY_STEPS else ""
    note = (
        f"--model {model} is a tiny random model: training at {TINY_SIDE} px instead of {resolution} px{probes} "
        "(a step takes a fraction of a second instead of half a minute on a CPU); pass --full-size to keep the "
        "preset's sizes"
    )
    return parse_preset(data, "tiny-model sizes"), note


def prepare_dataset(plan: TrainPlan) -> TrainPlan:
    """Run ``charkit prep`` when the character has no dataset yet (same face backend as the run's scores)."""
    if plan.dataset is not None:
        return plan
    from ..dataset import prep_dataset
    from ..identity import get_backend

    p, spec = plan.preset, get_spec(plan.family)
    prep_dataset(
        plan.character.dir,
        family=plan.family,
        resolution=p.train.resolution or None,
        backend=get_backend(plan.backend[0]),
    )
    dataset = load_dataset(
        plan.character.dir, family=plan.family, resolution=p.train.resolution or None, size_multiple=spec.size_multiple
    )
    check_images(dataset)
    dataset, p = with_dataset(plan.character, p, dataset)
    out = dataclasses.replace(plan, dataset=dataset, preset=p, notes=list(plan.notes))
    for n in dataset.notes:
        out.note(n)
    return out


def _newest_run(base: Path) -> str | None:
    runs = [d for d in base.iterdir() if (d / RUN_FILE).is_file()] if base.is_dir() else []
    return max(runs, key=lambda d: (d / RUN_FILE).stat().st_mtime).name if runs else None


# Fields that may change between a run and its resume (how long, precision, how often to look, where weights live,
# how many checkpoints to keep); the rest must match.
_RESUMABLE = {
    ("train", "steps"),
    ("train", "epochs"),
    ("train", "mixed_precision"),
    ("eval", "every"),
    ("eval", "clip_model"),
    ("memory", "offload_encoders"),
    ("memory", "block_swap"),
    ("checkpoints", "keep"),
    ("checkpoints", "max_count"),
}


def _check_same_run(run_dir: Path, preset: TrainPreset, model: str) -> None:
    f = run_dir / RUN_FILE
    if not f.is_file():
        return
    old = read_stage_file(f, TrainRunFile, fix="start a new run (another --run or --out)")
    if old.model != model:
        raise CharkitError(f"--resume: {run_dir} was trained from {old.model!r}, not {model!r}; use the same --model")
    new = preset.model_dump(mode="json")
    for section, values in old.preset.items():
        if not isinstance(values, dict):
            if new.get(section) != values:
                raise CharkitError(
                    f"--resume: preset field '{section}' differs from the run's ({values!r}); use the run's preset"
                )
            continue
        for k, v in values.items():
            if (section, k) not in _RESUMABLE and new.get(section, {}).get(k) != v:
                raise CharkitError(
                    f"--resume: preset field '{section}.{k}' is {new.get(section, {}).get(k)!r} but the run used {v!r}; "
                    "resume with the run's preset (only train.steps, train.mixed_precision, eval.every and eval.clip_model may change)"
                )


# ---------------------------------------------------------------------------------------------- load


def _accelerator(plan: TrainPlan):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    # accelerate keeps one process-wide state; a second run in the same (single-process) Python session with
    # another precision would be refused, so start that state afresh.
    shared = AcceleratorState._shared_state
    if (
        shared
        and shared.get("_mixed_precision") not in (None, plan.mixed_precision)
        and PartialState().num_processes == 1
    ):
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=plan.mixed_precision, cpu=plan.device.type == "cpu")


def load_identity(plan: TrainPlan, *, main: bool):
    """(backend, reference profile) that score the probes: main process only, and before the model loads, so a
    reference folder without faces fails before minutes of model loading (the face cache spares a resume the work)."""
    if not main:
        return None, None
    from ..identity import FaceCache, get_scorer, profile_for_character

    backend = get_scorer(plan.backend)
    return backend, profile_for_character(plan.character, backend, cache=FaceCache())


def load_base(plan: TrainPlan):
    """The family's pipeline at the weight dtype, every component frozen.

    With a quantised base the denoiser loads through diffusers' quantisation backend (straight onto the GPU).
    When the encoders leave the GPU after caching, or blocks are swapped, everything else stays on the CPU
    for now: :func:`cache` moves each part to the GPU when it is needed, so no moment holds all of it.
    """
    from ..families import loading

    kw = {"config": plan.model_config} if plan.model_config else {}
    staged = plan.device.type == "cuda" and (plan.offload_encoders or plan.preset.memory.block_swap)
    fam = family_part(plan.family, "pipeline")
    extra = dict(getattr(fam, "PIPELINE_KWARGS", {}))
    if plan.quantization is not None:
        extra["quantization_config"] = offload.quantization_config(plan.quantization)
    pipe = loading.load_pretrained(
        get_spec(plan.family),
        plan.model,
        dtype=plan.weight_dtype,
        allow_pickle_weights=plan.allow_pickle_weights,
        **kw,
        **extra,
    )
    pipe.set_progress_bar_config(disable=True)
    if not staged:  # staged: every part stays where it loaded (a quantised denoiser on the GPU) until cache()
        pipe.to(plan.device)
    for name in ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.requires_grad_(False)
    return pipe


def lora_targets(preset: TrainPreset, spec, denoiser) -> list[str]:
    """peft target_modules of the denoiser: ``lora.targets``, else the family's attention projections or, with
    ``lora.scope = "all_linear"``, every Linear of its blocks (kohya / ai-toolkit style)."""
    from ..families.loraformats import all_linear_targets

    if preset.lora.targets:
        return list(preset.lora.targets)
    if preset.lora.scope == "all_linear":
        return all_linear_targets(spec.name, denoiser)
    return list(spec.lora_targets)


def add_adapters(pipe, plan: TrainPlan) -> list:
    """peft LoRA adapters (fp32) on the denoiser and, with ``lora.text_encoder``, the text encoders; in train mode."""
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    lcfg, spec = plan.preset.lora, get_spec(plan.family)

    def config(targets) -> LoraConfig:
        return LoraConfig(
            r=lcfg.rank,
            lora_alpha=lcfg.alpha,
            lora_dropout=lcfg.dropout,
            init_lora_weights="gaussian",
            target_modules=list(targets),
        )

    torch.manual_seed(plan.preset.train.seed)  # LoRA init (lora_A) draws from the global generator
    denoiser = getattr(pipe, spec.denoiser)
    targets = lora_targets(plan.preset, spec, denoiser)
    try:
        denoiser.add_adapter(config(targets))
    except ValueError as e:
        raise CharkitError(
            f"preset field 'lora.targets' {targets}: {' '.join(str(e).split())[:200]}; use module names of the "
            f"{spec.denoiser} (or leave it empty for the family default)"
        ) from None
    modules = [denoiser]
    for name in spec.lora_text_encoders if lcfg.text_encoder else ():
        getattr(pipe, name).add_adapter(config(spec.text_encoder_lora_targets))
        modules.append(getattr(pipe, name))
    cast_training_params(modules, dtype=torch.float32)  # LoRA weights train in fp32 whatever the base dtype
    if plan.preset.train.gradient_checkpointing:
        denoiser.enable_gradient_checkpointing()
        for te in modules[1:]:
            (getattr(te, "activation_checkpointing_enable", None) or te.gradient_checkpointing_enable)()
    for m in modules:
        m.train()
    return modules


def load(plan: TrainPlan) -> TrainSession:
    """Face profile, pipeline, LoRA adapters (fp32), optimizer, LR schedule; restore the checkpoint when resuming."""
    preset = plan.preset
    for n in plan.notes:
        plan.log(n)
    plan.announce = True
    accelerator = _accelerator(plan)
    if accelerator.num_processes > 1:
        plan.device = accelerator.device
    backend, profile = load_identity(plan, main=accelerator.is_main_process)
    pipe = load_base(plan)
    modules = add_adapters(pipe, plan)
    den_params = [p for p in modules[0].parameters() if p.requires_grad]
    te_params = [p for m in modules[1:] for p in m.parameters() if p.requires_grad]
    groups = [{"params": den_params, "lr": preset.optimizer.learning_rate}]
    if te_params:
        groups.append({"params": te_params, "lr": preset.optimizer.text_encoder_learning_rate})
    optimizer, opt_name = make_optimizer(preset, groups, plan.device)
    schedule = lr_scheduler(preset, optimizer)
    optimizer = accelerator.prepare(optimizer)  # fp16 loss scaling; models stay unwrapped (grads reduced by hand)
    fam = family_part(plan.family, "lora")
    session = TrainSession(
        plan=plan,
        family=fam,
        pipeline=family_part(plan.family, "pipeline"),
        pipe=pipe,
        accelerator=accelerator,
        noise_scheduler=fam.noise_scheduler(pipe),
        params=den_params + te_params,
        optimizer=optimizer,
        lr_scheduler=schedule,
        optimizer_name=opt_name,
        backend=backend,
        profile=profile,
        clip=ClipScorer(plan.clip_model, device=plan.device)
        if plan.clip_model and accelerator.is_main_process
        else None,
    )
    if plan.resume is not None:
        restore(session, plan.resume)
        pending = [
            c.step for c in ckpt.list_checkpoints(plan.run_dir) if c.step not in {x.step for x in session.scores}
        ]
        plan.log(
            f"resuming {plan.run_dir} from step {session.step} of {preset.train.steps} ({plan.resume.path.name})"
            + (
                f"; checkpoint(s) {', '.join(map(str, pending))} were saved but not scored: scoring them first"
                if pending
                else ""
            )
        )
    return session


def _load_lora_state(session: TrainSession, lora: dict, info: ckpt.CheckpointInfo) -> None:
    from .export import unpack_diffusers

    for name, sd in unpack_diffusers(lora).items():
        _set_adapter(getattr(session.pipe, name), name, sd, info)


def _set_adapter(model, name: str, sd: dict, info: ckpt.CheckpointInfo) -> None:
    from peft import set_peft_model_state_dict

    if name.startswith("text_encoder") and not hasattr(model, "text_model"):
        # saved with CLIP's classic text_model. prefix; transformers >= 5.6 modules lack that level
        sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
    result = set_peft_model_state_dict(model, sd, adapter_name="default")
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise CharkitError(
            f"{info.path}: checkpoint keys do not fit the model ({unexpected[0]}); resume with the same preset"
        )


def restore(session: TrainSession, info: ckpt.CheckpointInfo) -> None:
    """Load a checkpoint's LoRA weights, optimizer, schedules, RNG and history into the session."""
    state = ckpt.load_checkpoint(info)
    _load_lora_state(session, state.lora, info)
    session.optimizer.load_state_dict(state.optimizer)
    session.lr_scheduler.load_state_dict(state.lr_scheduler)
    scaler = getattr(session.accelerator, "scaler", None)
    if scaler is not None and state.scaler:
        scaler.load_state_dict(state.scaler)
    state.rng.restore()
    session.step = state.step
    session.resumed_from = state.step
    session.losses = [list(x) for x in state.losses]
    scores = load_scores(session.plan.run_dir)
    session.baseline = next((s for s in scores if s.baseline), None)
    session.scores = [s for s in scores if not s.baseline and s.step <= state.step]


def load_scores(run_dir: Path) -> list[CheckpointScore]:
    """Every score in ``evals/`` (the baseline included), oldest first; an unreadable file counts as unscored."""
    d = Path(run_dir) / "evals"
    if not d.is_dir():
        return []
    out = []
    for f in sorted(d.glob("step-*.json")):
        try:
            out.append(CheckpointScore.from_dict(json.loads(f.read_text(encoding="utf-8"))))
        except (ValueError, KeyError, TypeError):
            continue
    return sorted(out, key=lambda s: s.step)


# --------------------------------------------------------------------------------------------- cache


def encoders(session: TrainSession) -> list:
    """The text encoders and the VAE of the pipeline (what caching needs and training does not)."""
    names = [c for c in session.spec.lora_components if c != session.spec.denoiser] + ["vae"]
    return [m for m in (getattr(session.pipe, n, None) for n in names) if isinstance(m, torch.nn.Module)]


def cache(session: TrainSession) -> None:
    """Build the latent and text-embedding sources (and fill the caches the preset asks for), embed the probe
    prompts, then place the models for training: with ``memory.offload_encoders`` the text encoders and the VAE
    go back to the CPU and only then does the denoiser come onto the GPU (block by block with block swap)."""
    t = time.perf_counter()
    plan, preset = session.plan, session.preset
    staged = plan.device.type == "cuda" and (plan.offload_encoders or preset.memory.block_swap)
    for m in encoders(session) if staged else ():
        m.to(plan.device)
    session.latents = LatentSource(
        session.pipe,
        plan.dataset,
        session.family,
        cached=preset.train.cache_latents,
        device=plan.device,
        dtype=plan.weight_dtype,
    )
    session.texts = TextSource(
        session.pipe,
        session.family,
        cached=preset.train.cache_text_embeddings,
        device=plan.device,
        trainable=preset.lora.text_encoder,
        shared_keys=session.spec.shared_text_keys,
    )
    if preset.lora.text_encoder and preset.train.cache_text_embeddings:
        plan.note("text-embedding cache off: the text encoder is trained")
    session.latents.prepare()
    session.texts.prepare(plan.dataset.captions + ([""] if preset.train.caption_dropout else []))
    if session.texts.cached:
        session.probe_embeds = {i: probe_embeddings(session, prompt) for i, prompt in _probe_prompts(session)}
    if plan.offload_encoders:
        for m in encoders(session):
            m.to("cpu")
        torch.cuda.empty_cache()
    if staged:
        session.block_swap = offload.place_denoiser(session.denoiser, plan.device, block_swap=preset.memory.block_swap)
        optimizer_state_to_params(session.optimizer)
    session.cache_seconds = time.perf_counter() - t


def _probe_prompts(session: TrainSession) -> list[tuple[int, str]]:
    c, ev = session.plan.character, session.preset.eval
    specs = probe_specs(ev.prompts, ev.seeds, trigger=c.trigger_text, class_word=c.spec.class_word)
    return sorted({(s.index, s.prompt) for s in specs})


def probe_negative(session: TrainSession) -> str | None:
    """The probes' negative prompt (None: the pipeline's own default, as ``generate`` leaves it)."""
    return session.preset.eval.negative_prompt or session.plan.character.spec.negative_prompt or None


def probe_embeddings(session: TrainSession, prompt: str):
    """``PromptEmbeds`` of one probe prompt as the family's ``generate`` would encode it (Flux: no negative;
    it acts only with true CFG). On the training device; computed wherever the text encoders are now."""
    from ..families.prompts import encode_prompt

    negative = None if session.plan.family == "flux" else probe_negative(session)
    with torch.no_grad():
        e = encode_prompt(session.plan.family, session.pipe, prompt, negative)
    dev = session.plan.device
    return dataclasses.replace(
        e,
        **{
            k: getattr(e, k).to(dev)
            for k in (
                "prompt_embeds",
                "negative_prompt_embeds",
                "pooled_prompt_embeds",
                "negative_pooled_prompt_embeds",
            )
            if getattr(e, k) is not None
        },
    )


# --------------------------------------------------------------------------------------------- train


def autocast(plan: TrainPlan):
    """The training forward's autocast (LoRA weights stay fp32; the frozen base runs in the mixed dtype)."""
    if plan.mixed_precision == "no":
        return contextlib.nullcontext()
    return torch.autocast(device_type=plan.device.type, dtype=plan.weight_dtype)


def train_step(session: TrainSession) -> float:
    """One optimizer step (with gradient accumulation). Returns the loss; a non-finite loss updates nothing."""
    plan, preset, acc = session.plan, session.preset, session.accelerator
    ga = preset.train.gradient_accumulation
    total = 0.0
    t = preset.train
    for micro in range(ga):
        g = step_generator(t.seed, acc.process_index, session.step, micro)
        slot = (session.step * ga + micro) * acc.num_processes + acc.process_index
        with autocast(plan):
            batch = make_batch(
                plan.dataset,
                session.latents,
                session.texts,
                indices=batch_at(plan.dataset, slot, batch_size=t.batch_size, seed=t.seed, repeats=t.repeats),
                caption_dropout=t.caption_dropout,
                generator=g,
                prior_loss_weight=t.prior_loss_weight,
            )
            loss = session.family.training_loss(
                session.pipe, session.denoiser, session.noise_scheduler, batch, loss_cfg=preset.loss, generator=g
            )
        value = float(loss.detach())
        if not math.isfinite(value):
            session.optimizer.zero_grad(set_to_none=True)
            return value
        acc.backward(loss / ga)
        total += value / ga
    if acc.num_processes > 1:  # average LoRA gradients across processes (models are not DDP-wrapped)
        for p in session.params:
            if p.grad is not None:
                p.grad = acc.reduce(p.grad, reduction="mean")
    if preset.optimizer.max_grad_norm:
        acc.clip_grad_norm_(session.params, preset.optimizer.max_grad_norm)
    session.optimizer.step()
    if getattr(session.optimizer, "step_was_skipped", False):
        session.skipped_updates += 1  # fp16 loss scaling found inf/NaN gradients: no update, so no LR step either
    else:
        session.lr_scheduler.step()
    session.optimizer.zero_grad(set_to_none=True)
    return total


def write_run_file(session: TrainSession) -> None:
    plan = session.plan
    record = TrainRunFile(
        charkit_version=__version__,
        character=plan.character.name,
        family=plan.family,
        model=plan.model,
        run=plan.run_name,
        preset=plan.preset.model_dump(mode="json"),
        started=_dt.datetime.now().isoformat(timespec="seconds"),
    )
    write_stage_file(plan.run_dir / RUN_FILE, record)


def train_steps(
    session: TrainSession,
    *,
    until: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
    progress: bool = True,
) -> None:
    """Train from ``session.step`` to ``until`` (default ``train.steps``), checkpointing and evaluating on the way.

    Stops with :class:`NonFiniteLossError` after MAX_BAD_STEPS consecutive non-finite losses.
    """
    from tqdm.auto import tqdm

    plan, preset = session.plan, session.preset
    total = preset.train.steps
    until = total if until is None else min(until, total)
    if session.is_main:
        ckpt.clean_incomplete(plan.run_dir)
        if not (plan.run_dir / RUN_FILE).exists():
            write_run_file(session)
        catch_up(session)
    session.accelerator.wait_for_everyone()
    bar = tqdm(
        total=total,
        initial=session.step,
        desc=f"train {plan.family} LoRA",
        unit="step",
        disable=not (progress and session.is_main),
        dynamic_ncols=True,
    )
    hooks = contextlib.ExitStack()
    try:
        hooks.enter_context(guard(session.denoiser))  # a Ctrl-C ends even a long step at its next forward pass
        while session.step < until:
            raise_if_stopped()
            t = time.perf_counter()
            loss = train_step(session)
            session.step_seconds.append(time.perf_counter() - t)
            session.step += 1
            session.losses.append([session.step, loss])
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if math.isfinite(loss):
                session.bad_steps = 0
            else:
                session.bad_steps += 1
                if session.bad_steps >= MAX_BAD_STEPS:
                    last = ckpt.latest_checkpoint(plan.run_dir)
                    kept = f"the last saved checkpoint is {last.path.name}" if last else "no checkpoint was saved"
                    raise NonFiniteLossError(
                        f"training stopped at step {session.step}: the loss was not finite ({loss}) for {MAX_BAD_STEPS} "
                        f"consecutive steps and no non-finite weights were saved ({kept}); lower optimizer.learning_rate "
                        f"(now {preset.optimizer.learning_rate:g}) or use --dtype bf16 instead of fp16, then start again"
                    )
            if on_step is not None:
                on_step(session.step, loss)
            if session.step % preset.eval.every == 0 or session.step == total:
                with deferred():  # a checkpoint and its evaluation always complete
                    checkpoint_and_evaluate(session)
    finally:
        hooks.close()
        bar.close()


def catch_up(session: TrainSession) -> None:
    """Score what a crash left unscored before training goes on: the step-0 baseline (the model without the
    LoRA) and every complete checkpoint without ``evals/step-XXXXXX.json`` (killed after its save, e.g. out of
    memory while rendering its probes)."""
    from .report import write_report

    plan = session.plan
    if session.baseline is None:
        evaluate(session, None)
    scored = {s.step for s in session.scores}
    for info in ckpt.list_checkpoints(plan.run_dir):
        if info.step <= session.step and info.step not in scored:
            with checkpoint_weights(session, info):
                evaluate(session, info)
    write_report(session)


@contextlib.contextmanager
def checkpoint_weights(session: TrainSession, info: ckpt.CheckpointInfo):
    """The session's adapters hold ``info``'s LoRA weights for the duration (a no-op for the current step)."""
    if info.step == session.step:
        yield
        return
    from peft import get_peft_model_state_dict

    names = [session.spec.denoiser] + (
        list(session.spec.lora_text_encoders) if session.preset.lora.text_encoder else []
    )
    current = {
        n: {k: v.detach().clone() for k, v in get_peft_model_state_dict(getattr(session.pipe, n)).items()}
        for n in names
    }
    _load_lora_state(session, ckpt.load_checkpoint(info).lora, info)
    try:
        yield
    finally:
        for n, sd in current.items():
            _set_adapter(getattr(session.pipe, n), n, sd, info)


def checkpoint_and_evaluate(session: TrainSession) -> CheckpointScore | None:
    """Save a checkpoint, render and score the probes, update the report (main process; others wait)."""
    acc = session.accelerator
    result = None
    if session.is_main:
        info = checkpoint(session)
        result = evaluate(session, info)
        prune_checkpoints(session)
        from .report import write_report

        write_report(session)
    acc.wait_for_everyone()
    return result


def prune_checkpoints(session: TrainSession) -> list[int]:
    """``checkpoints.keep``: remove scored checkpoints beyond the newest N, never the best one so far."""
    import shutil

    keep = session.preset.checkpoints.keep
    if not keep:
        return []
    found = ckpt.list_checkpoints(session.plan.run_dir)
    scored = {s.step for s in session.scores}
    best = choose(session).step if session.scores else None
    newest = {c.step for c in found[-keep:]}
    gone = [c for c in found if c.step not in newest and c.step != best and c.step in scored]
    for c in gone:
        shutil.rmtree(c.path, ignore_errors=True)
    return [c.step for c in gone]


def checkpoint(session: TrainSession) -> ckpt.CheckpointInfo:
    """Save LoRA weights, optimizer, LR schedule, grad scaler, RNG and loss history as a checkpoint."""
    from .export import adapter_configs, adapter_layers, pack_diffusers

    plan = session.plan
    text_encoder = session.preset.lora.text_encoder
    lora, meta = pack_diffusers(
        adapter_layers(session.pipe, session.spec, text_encoder=text_encoder),
        adapter_configs(session.pipe, session.spec, text_encoder=text_encoder),
    )
    scaler = getattr(session.accelerator, "scaler", None)
    state = ckpt.CheckpointState(
        step=session.step,
        lora=lora,
        lora_metadata={
            **meta,
            "charkit.family": plan.family,
            "charkit.base_model": plan.model,
            "charkit.steps": str(session.step),
        },
        optimizer=session.optimizer.state_dict(),
        lr_scheduler=session.lr_scheduler.state_dict(),
        scaler=scaler.state_dict() if scaler is not None else None,
        rng=ckpt.RngState.capture(),
        losses=session.losses,
    )
    return ckpt.save_checkpoint(plan.run_dir, state, reserve_bytes=session.preset.checkpoints.reserve_disk_mb * 2**20)


@contextlib.contextmanager
def eval_mode(session: TrainSession):
    """Modules in eval mode and the global RNG untouched for the duration (renders must not shift training)."""
    modules = session.trained_modules
    dev = session.plan.device
    devices = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        for m in modules:
            m.eval()
        try:
            yield
        finally:
            for m in modules:
                m.train()


@contextlib.contextmanager
def adapters_off(modules: list):
    """Every LoRA layer of ``modules`` bypassed for the duration (the step-0 baseline renders the base model)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for mod in modules for m in mod.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def render_probes(session: TrainSession, specs) -> list:
    """Render the probe set with the current LoRA (fixed seeds, one batch per prompt), from the prompt embeddings
    cached before training (or encoded now by a text encoder that trains). With the encoders off the GPU, the
    VAE comes back only for these renders."""
    plan, ev = session.plan, session.preset.eval
    spec = get_spec(plan.family)
    steps = ev.steps or spec.steps
    guidance = ev.guidance if ev.guidance >= 0 else spec.guidance
    spec.check_size(plan.probe_width, plan.probe_height)
    images = []
    vae = [session.pipe.vae] if plan.offload_encoders else []
    # No autocast: peft casts around the fp32 LoRA layers itself, and the pipelines manage their VAE dtype.
    with eval_mode(session), offload.on_device(vae, plan.device, torch.device("cpu") if vae else plan.device):
        by_prompt: dict[int, list] = {}
        for s in specs:
            by_prompt.setdefault(s.index, []).append(s)
        for index, group in by_prompt.items():
            embeds = session.probe_embeds.get(index) or probe_embeddings(session, group[0].prompt)
            with torch.inference_mode():
                out = session.pipe(
                    **embeds.pipeline_kwargs(len(group)),
                    width=plan.probe_width,
                    height=plan.probe_height,
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    generator=[torch.Generator("cpu").manual_seed(s.seed) for s in group],
                    output_type="pil",
                )
            images += list(out.images)
    return images


def evaluate(session: TrainSession, info: ckpt.CheckpointInfo | None) -> CheckpointScore:
    """Render the probes with the LoRA of ``info`` (None: the step-0 baseline, adapters off), score identity,
    memorisation, prompt diversity (+ adherence), record ``evals/step-XXXXXX.json``."""
    import io

    from .overfit import mark_probes, training_photos

    plan, ev = session.plan, session.preset.eval
    c = plan.character
    step = BASELINE_STEP if info is None else info.step
    specs = probe_specs(ev.prompts, ev.seeds, trigger=c.trigger_text, class_word=c.spec.class_word)
    with adapters_off(session.trained_modules) if info is None else contextlib.nullcontext():
        images = render_probes(session, specs)
    rels = []
    for img, s in zip(images, specs):
        rel = f"probes/{ckpt.step_name(step)}/{s.name}.png"
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        atomic_write_bytes(plan.run_dir / rel, buf.getvalue())
        rels.append(rel)
    probes = score_probes(images, specs, rels, profile=session.profile, backend=session.backend, clip=session.clip)
    if not session.training_photos and session.backend is not None:
        session.training_photos = training_photos(
            [plan.dataset.items[i].path for i in plan.dataset.train_items], session.backend
        )
    mark_probes(images, probes, session.training_photos, session.backend)
    earlier = [s.step for s in session.scores if s.step < step]
    prev = max(earlier, default=0)
    window = [loss for st, loss in session.losses if prev < st <= step and math.isfinite(loss)]
    score = summarize(
        step,
        probes,
        loss=sum(window) / len(window) if window and info is not None else None,
        checkpoint="" if info is None else info.path.relative_to(plan.run_dir).as_posix(),
        baseline=info is None,
    )
    atomic_write_json(plan.run_dir / "evals" / f"{ckpt.step_name(step)}.json", score.to_dict())
    if info is None:
        session.baseline = score
    else:
        session.scores = sorted([s for s in session.scores if s.step != score.step] + [score], key=lambda s: s.step)
    return score


# ------------------------------------------------------------------------------------- choose / export


def choose(session: TrainSession) -> CheckpointChoice:
    """Pick the checkpoint to ship among the evaluated, still-complete checkpoints (rule: ``CHOICE_RULE``)."""
    available = {c.step for c in ckpt.list_checkpoints(session.plan.run_dir)}
    scores = [s for s in session.scores if s.step in available]
    ev = session.preset.eval
    return choose_checkpoint(
        scores,
        baseline=session.baseline,
        adherence_tolerance=ev.adherence_tolerance,
        min_face_rate=ev.min_face_rate,
        max_memorized=ev.max_memorized,
        max_similarity_rise=ev.max_similarity_rise,
        confidence=ev.confidence,
        saved=sorted(available),
    )


def export(session: TrainSession, choice: CheckpointChoice):
    """Write best.safetensors (+ kohya), register it in character.toml, and write the final report."""
    from ..character import register_lora
    from .export import charkit_metadata, export_lora, modelspec_metadata
    from .report import write_report

    plan, preset = session.plan, session.preset
    info = next(c for c in ckpt.list_checkpoints(plan.run_dir) if c.step == choice.step)
    score = next(s for s in session.scores if s.step == choice.step)
    spec_meta = modelspec_metadata(
        family=plan.family,
        title=f"{plan.character.name} ({plan.run_name})",
        trigger=plan.character.trigger_text,
        resolution=plan.dataset.resolution,
        description=f"charkit character LoRA of {plan.character.name}: {choice.reason}",
    )
    meta = spec_meta | charkit_metadata(
        family=plan.family,
        base_model=plan.model,
        trigger=plan.character.trigger_text,
        rank=preset.lora.rank,
        alpha=preset.lora.alpha,
        steps=choice.step,
        identity=score.identity,
        adherence=score.adherence,
        run=plan.run_name,
        choice=choice.reason,
    )
    result = export_lora(
        info.lora_file,
        plan.run_dir,
        family=plan.family,
        meta=meta,
        rank=preset.lora.rank,
        alpha=preset.lora.alpha,
        steps=choice.step,
        kohya=preset.checkpoints.kohya,
    )
    registered = register_lora(plan.character.dir, plan.family, result.diffusers) if plan.register else None
    report_json, report_html = write_report(session, choice=choice, export=result)
    return result, registered, report_json, report_html


def _stopped_at(plan: TrainPlan, step: int) -> str:
    last = ckpt.latest_checkpoint(plan.run_dir)
    where = f"step {step} of {plan.preset.train.steps}"
    if last is None:
        return f"stopped at {where}, before the first checkpoint: nothing was kept; run the same command to start again"
    return (
        f"stopped at {where}; checkpoints up to {last.path.name} are complete in {plan.run_dir}: continue with the "
        "same command plus --resume"
    )


def train_lora(
    character_dir: str | os.PathLike,
    *,
    model: str | os.PathLike,
    preset: str | os.PathLike | TrainPreset | dict,
    on_step: Callable[[int, float], None] | None = None,
    progress: bool = True,
    **kwargs,
) -> TrainResult:
    """Train a character LoRA and pick its best checkpoint by measured identity (see module docstring).

    ``kwargs`` are :func:`check_inputs`'s (out, run, resume, steps, eval_every, device, dtype, backend,
    clip_model, model_config, allow_pickle_weights, register, log). ``log`` gets one-line messages (where a
    resume continues, fallbacks); by default they go to stderr while ``progress`` is on.

    >>> r = train_lora("characters/alice", model="runwayml/stable-diffusion-v1-5",
    ...                preset="training/sd15-lora.toml", steps=1000, device="cuda")  # doctest: +SKIP
    >>> r.best  # doctest: +SKIP
    PosixPath('characters/alice/loras/sd15/run-20260101-120000/best.safetensors')
    """
    state = process_state(str(kwargs.get("device") or "auto"))
    if kwargs.get("log") is None and progress and state.is_main_process:
        kwargs["log"] = _stderr
    plan = check_inputs(
        character_dir,
        model=model,
        preset=preset,
        process_index=state.process_index,
        num_processes=state.num_processes,
        **kwargs,
    )
    session = None
    # a failed or interrupted run that saved no checkpoint leaves no run folder behind (a resumed one stays)
    with removed_on_failure(plan.run_dir, keep_if=lambda d: bool(ckpt.list_checkpoints(d))):
        try:
            plan = prepare_dataset(plan)
            for line in plan.warnings:
                warn(line)
            session = load(plan)
            cache(session)
            train_steps(session, on_step=on_step, progress=progress)
        except Interrupted as e:
            raise stopped(_stopped_at(plan, session.step if session else 0), e.signal_name) from None
    if not session.is_main:
        return None  # type: ignore[return-value]
    choice = choose(session)
    exported, registered, report_json, report_html = export(session, choice)
    return TrainResult(
        run_dir=plan.run_dir,
        best=exported.diffusers,
        kohya=exported.kohya,
        report_json=report_json,
        report_html=report_html,
        choice=choice,
        scores=list(session.scores),
        losses=list(session.losses),
        steps=session.step,
        registered=registered,
    )
