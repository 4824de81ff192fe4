"""``charkit train --plan``: the peak GPU memory of a training run, estimated without loading any weights.

Every component of the model is built from its ``config.json`` on PyTorch's *meta* device (shapes, no
storage), so a 12 B Flux transformer costs nothing to plan. The numbers:

* **weights**: parameters x bytes of the training dtype; a quantised denoiser's Linear weights at the
  quantised size (NF4 about 0.52 bytes, int8 1 byte), its other tensors in the training dtype;
* **LoRA**: the preset's adapter is really added to the meta model; its parameters in fp32, their
  gradients, and the optimizer's state (:data:`charkit.train.optim.STATE_BYTES`);
* **activations**: the family's real ``training_loss`` runs once on meta tensors of the preset's batch
  and resolution while a saved-tensor hook adds up what autograd keeps for backward (each storage once).
  With gradient checkpointing, each checkpointed block keeps only its inputs, plus one block's
  activations while it is recomputed;
* **phases**: caching (text encoders and VAE on the GPU), training, and probe rendering, laid out as
  :func:`charkit.train.loop.load` and :func:`charkit.train.loop.cache` place the components; the peak
  is the largest phase plus the CUDA context.

Measured peaks (``benchmarks/gpu_train.py``) are compared with these estimates in docs/gpu.md.

>>> plan = plan_memory("training/flux-lora.toml", "tests/data/configs/flux1-dev", vram_gib=24)  # doctest: +SKIP
>>> plan.fits  # doctest: +SKIP
True
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import types
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import CharkitError

GIB = 2**30
#: CUDA context, cuBLAS workspace and allocator slack: never shows in max_memory_allocated, always in nvidia-smi
CONTEXT_GIB = 0.75
#: activations are measured exactly on the meta device; this covers backward's temporary gradients
ACTIVATION_MARGIN = 1.25
PHASES = ("cache", "train", "probe")
_DTYPE_BYTES = {"no": 4, "fp16": 2, "bf16": 2}


@dataclass
class Row:
    """One line of the plan: a component and the GiB it holds on the GPU in each phase (None: not there)."""

    name: str
    what: str  # parameters / storage, for the reader
    phases: dict[str, float | None] = field(default_factory=dict)


@dataclass
class MemoryPlan:
    family: str
    model: str
    resolution: int
    batch: int
    summary: str
    rows: list[Row]
    device_gib: float | None
    device: str
    notes: list[str] = field(default_factory=list)

    @property
    def phase_totals(self) -> dict[str, float]:
        return {ph: sum(r.phases.get(ph) or 0.0 for r in self.rows) for ph in PHASES}

    @property
    def peak_gib(self) -> float:
        return max(self.phase_totals.values())

    @property
    def peak_phase(self) -> str:
        t = self.phase_totals
        return max(t, key=t.get)

    @property
    def fits(self) -> bool | None:
        return None if self.device_gib is None else self.peak_gib <= self.device_gib

    def to_dict(self) -> dict:
        return {
            "family": self.family,
            "model": self.model,
            "resolution": self.resolution,
            "batch": self.batch,
            "summary": self.summary,
            "rows": [{"name": r.name, "what": r.what, **{p: _r(v) for p, v in r.phases.items()}} for r in self.rows],
            "phases": {p: _r(v) for p, v in self.phase_totals.items()},
            "peak_gib": _r(self.peak_gib),
            "device_gib": self.device_gib,
            "fits": self.fits,
            "notes": list(self.notes),
        }

    def to_text(self) -> str:
        cell = lambda v: "-" if v is None else f"{v:.2f}"
        lines = [
            f"memory plan: {self.summary}",
            f"{'component':<32} {'what':<26} {'cache':>7} {'train':>7} {'probe':>7}",
        ]
        for r in self.rows:
            lines.append(f"{r.name:<32} {r.what:<26} " + " ".join(f"{cell(r.phases.get(p)):>7}" for p in PHASES))
        t = self.phase_totals
        lines.append(f"{'total GiB':<32} {'':<26} " + " ".join(f"{t[p]:>7.2f}" for p in PHASES))
        doing = {"cache": "caching", "train": "training", "probe": "rendering probes"}[self.peak_phase]
        peak = f"peak {self.peak_gib:.1f} GiB while {doing}"
        if self.device_gib is None:
            lines.append(f"{peak}; no device to compare with: pass --vram GIB (e.g. --vram 24)")
        else:
            spare = self.device_gib - self.peak_gib
            verdict = f"fits, {spare:.1f} GiB to spare" if spare >= 0 else f"does NOT fit, {-spare:.1f} GiB short"
            lines.append(f"{peak}; {self.device} {self.device_gib:g} GiB: {verdict}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _r(v):
    return None if v is None else round(float(v), 3)


# ------------------------------------------------------------------------------------------- meta model


def config_folder(model: str | os.PathLike, model_config: str | os.PathLike | None = None) -> Path:
    """A diffusers folder holding ``model_index.json`` and the component configs: the model itself, its
    ``--model-config`` (single files), or a hub id's cached snapshot (never downloaded)."""
    for cand in (model_config, model):
        if cand is None:
            continue
        p = Path(cand).expanduser()
        if (p / "model_index.json").is_file():
            return p
        if p.suffix == ".safetensors" and model_config is None:
            raise CharkitError(f"--plan {p}: a single file has no component configs; pass --model-config FOLDER")
        if not p.exists() and "/" in str(cand) and not str(cand).startswith((".", "/")):
            with contextlib.suppress(Exception):
                from huggingface_hub import snapshot_download

                snap = Path(snapshot_download(str(cand), local_files_only=True, allow_patterns=["*.json"]))
                if (snap / "model_index.json").is_file():
                    return snap
    raise CharkitError(
        f"--plan {model}: no model_index.json there (or in the hub cache); give a diffusers folder, a cached hub id, "
        "or --model-config FOLDER"
    )


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CharkitError(f"{path}: not a readable config ({e}); re-download the model's configs") from None


def meta_components(folder: Path, names: list[str]) -> dict[str, torch.nn.Module]:
    """The named components of a diffusers folder, built from their configs on the meta device."""
    import diffusers
    import transformers

    index = _load_json(folder / "model_index.json")
    out = {}
    for name in names:
        entry = index.get(name)
        if not entry or entry[0] is None or not (folder / name / "config.json").is_file():
            continue
        lib, cls_name = entry
        cfg = _load_json(folder / name / "config.json")
        with torch.device("meta"):
            if lib == "diffusers":
                cls = getattr(diffusers, cls_name)
                out[name] = cls.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
            else:
                cls = getattr(transformers, cls_name)
                config = transformers.AutoConfig.for_model(**cfg) if "model_type" in cfg else cls.config_class(**cfg)
                out[name] = cls(config)
    return out


@functools.lru_cache(maxsize=64)
def _encoder_params(folder: str, name: str, mtime: float) -> int | None:
    built = meta_components(Path(folder), [name])
    return count(built[name]) if name in built else None


def encoder_params(folder: Path, name: str) -> int | None:
    """Parameters of a frozen component (built once per config file: a T5-XXL takes seconds even on meta)."""
    f = folder / name / "config.json"
    return _encoder_params(str(folder), name, f.stat().st_mtime) if f.is_file() else None


def scheduler_config(folder: Path) -> dict:
    f = folder / "scheduler" / "scheduler_config.json"
    return _load_json(f) if f.is_file() else {}


def count(module: torch.nn.Module, *, trainable: bool | None = None) -> int:
    return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)


def linear_weights(module: torch.nn.Module) -> int:
    """Parameters in the weight matrices of frozen Linear layers (what bitsandbytes quantises)."""
    n = 0
    for m in module.modules():
        if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad:
            n += m.weight.numel()
    return n


# ------------------------------------------------------------------------------------------ activations


@dataclass
class Activations:
    """Bytes autograd saves for one training step, measured on the meta device."""

    total: int  # without gradient checkpointing
    checkpointed: int  # with it: everything outside the checkpointed blocks + their inputs + one block
    largest_block: int


def measure_activations(family: str, denoiser, vae_config, sched_config: dict, preset, *, size: int, batch: int):
    """Run the family's ``training_loss`` once on meta tensors and count what autograd keeps (see module doc)."""
    from ..families import family_part
    from .data import TrainBatch

    fam = family_part(family, "lora")
    dtype = next(p.dtype for p in denoiser.parameters() if not p.requires_grad)
    factor = 2 ** (len(vae_config.block_out_channels) - 1)
    lat = torch.empty(batch, vae_config.latent_channels, size // factor, size // factor, device="meta", dtype=dtype)
    text = {
        k: torch.empty(shape, device="meta", dtype=torch.float32 if k == "text_ids" else dtype)
        for k, shape in fam.text_shapes(denoiser.config, batch).items()
    }
    pipe = types.SimpleNamespace(vae_scale_factor=factor, vae=types.SimpleNamespace(config=vae_config))
    pipe.scheduler = types.SimpleNamespace(config=sched_config)
    sched = fam.noise_scheduler(pipe)
    tb = TrainBatch(
        latents=lat,
        text=text,
        sizes=[(size, size)] * batch,
        crops=[(0, 0)] * batch,
        captions=[""] * batch,
        indices=[0] * batch,
    )
    seen: set[int] = set()
    total = [0]
    units: list[tuple[int, int]] = []  # (bytes saved inside, bytes of its inputs) per checkpointed block

    def pack(t):
        key = t.untyped_storage()._cdata
        if key not in seen:
            seen.add(key)
            total[0] += t.untyped_storage().nbytes()
        return t

    def unit(fn, *args, **kwargs):  # stands in for torch.utils.checkpoint: run the block, attribute its bytes
        start = total[0]
        out = fn(*args, **kwargs)
        units.append((total[0] - start, sum(a.untyped_storage().nbytes() for a in args if isinstance(a, torch.Tensor))))
        return out

    denoiser.enable_gradient_checkpointing()
    for m in denoiser.modules():
        if getattr(m, "gradient_checkpointing", False):
            m._gradient_checkpointing_func = unit
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fam.training_loss(pipe, denoiser, sched, tb, loss_cfg=preset.loss, generator=torch.Generator().manual_seed(0))
    inside = sum(u[0] for u in units)
    largest = max((u[0] for u in units), default=0)
    ckpt = total[0] - inside + sum(u[1] for u in units) + largest
    return Activations(total=total[0], checkpointed=ckpt, largest_block=largest)


def add_meta_lora(denoiser, preset, family_spec) -> int:
    """Add the preset's LoRA to a meta denoiser (in the weight dtype, as autocast computes it); its parameter count."""
    from peft import LoraConfig

    from .loop import lora_targets

    denoiser.requires_grad_(False)
    lcfg = preset.lora
    denoiser.add_adapter(
        LoraConfig(r=lcfg.rank, lora_alpha=lcfg.alpha, target_modules=lora_targets(preset, family_spec, denoiser))
    )
    dtype = next(p.dtype for p in denoiser.parameters() if not p.requires_grad)
    for p in denoiser.parameters():
        if p.requires_grad:
            p.data = p.data.to(dtype)
    return count(denoiser, trainable=True)


# ---------------------------------------------------------------------------------------------- plan


def plan_memory(
    preset,
    model: str | os.PathLike,
    *,
    model_config: str | os.PathLike | None = None,
    resolution: int | None = None,
    vram_gib: float | None = None,
    device_name: str = "--vram",
) -> MemoryPlan:
    """Estimated GPU memory per component and phase of training ``preset`` on ``model`` (see module doc).

    ``resolution``: the training resolution (default: ``train.resolution`` or the family's size).
    """
    from ..families import get_spec
    from .config import TrainPreset, load_preset
    from .offload import QUANT_BYTES
    from .optim import STATE_BYTES

    p = preset if isinstance(preset, TrainPreset) else load_preset(preset)
    spec = get_spec(p.family)
    folder = config_folder(model, model_config)
    wb = _DTYPE_BYTES[p.train.mixed_precision]
    size = resolution or p.train.resolution or spec.width
    # what the measurement depends on (gradient checkpointing does not: both counts come from one run)
    key = p.model_dump(
        mode="json", include={"family": True, "lora": True, "loss": True, "train": {"mixed_precision", "batch_size"}}
    )
    facts = denoiser_facts(str(folder), json.dumps(key, sort_keys=True), size)
    trained = set(spec.lora_text_encoders) if p.lora.text_encoder else set()
    encoders = {}
    for name in (c for c in spec.lora_components if c != spec.denoiser):
        if name in trained:
            built = meta_components(folder, [name])
            if name in built:
                encoders[name] = built[name]
        elif (n := encoder_params(folder, name)) is not None:
            encoders[name] = n
    return _assemble(p, spec, folder, facts, encoders, wb, size, vram_gib, device_name, QUANT_BYTES, STATE_BYTES)


@dataclass(frozen=True)
class DenoiserFacts:
    """What the plan needs of the denoiser and VAE, measured once per (model, LoRA, loss, batch, size)."""

    frozen: int  # frozen parameters
    linear: int  # of which in Linear weights (what a quantised base shrinks)
    blocks: tuple[int, ...]  # frozen parameters per transformer block, execution order (block swap); () for UNets
    lora: int  # LoRA parameters
    act: Activations
    vae_params: int
    vae_channels: int  # the VAE's first block width (decode / encode activations scale with it)


@functools.lru_cache(maxsize=32)
def denoiser_facts(folder: str, preset_json: str, size: int) -> DenoiserFacts:
    """Build the denoiser on meta with the preset's LoRA and run its loss once (see :func:`measure_activations`)."""
    from ..families import get_spec
    from .config import parse_preset
    from .offload import swap_blocks

    p = parse_preset(json.loads(preset_json))
    spec = get_spec(p.family)
    dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[p.train.mixed_precision]
    comps = meta_components(Path(folder), [spec.denoiser, "vae"])
    if spec.denoiser not in comps or "vae" not in comps:
        raise CharkitError(f"--plan {folder}: no {spec.denoiser} or vae config there; is it a {spec.name} model?")
    den, vae = comps[spec.denoiser].to(dtype), comps["vae"]
    den.requires_grad_(False)
    blocks = tuple(count(b) for b in swap_blocks(den)) if spec.denoiser == "transformer" else ()
    frozen, linear = count(den), linear_weights(den)
    lora = add_meta_lora(den, p, spec)
    act = measure_activations(
        p.family, den, vae.config, scheduler_config(Path(folder)), p, size=size, batch=p.train.batch_size
    )
    return DenoiserFacts(frozen, linear, blocks, lora, act, count(vae), vae.config.block_out_channels[0])


def _offloads(p) -> bool:
    t = p.train
    return p.memory.offload_encoders and t.cache_latents and t.cache_text_embeddings and not p.lora.text_encoder


def _weight_rows(p, spec, facts: DenoiserFacts, encoders, wb: float, qbytes) -> tuple[list[Row], int]:
    """Rows of the frozen weights (denoiser, encoders, VAE), and the parameters of a trained text-encoder LoRA."""
    offload, quant = _offloads(p), p.memory.base_quantization
    qb = qbytes[quant] or wb
    den_gib = (facts.linear * qb + (facts.frozen - facts.linear) * wb) / GIB
    what = f"{facts.frozen / 1e9:.2f} B, {'linear ' + quant if quant != 'none' else p.train.mixed_precision}"
    if p.memory.block_swap:
        swapped = [n * wb / GIB for n in facts.blocks[-p.memory.block_swap :]]
        den_gib -= sum(swapped) - 2 * max(swapped)
        what += f", {len(swapped)} blocks on CPU"
    # A quantised denoiser loads straight onto the GPU; otherwise it waits on the CPU while the caches fill.
    cache = den_gib if quant != "none" or not offload else None
    rows = [Row(spec.denoiser, what, {"cache": cache, "train": den_gib, "probe": den_gib})]
    te_lora = 0
    for name, m in encoders.items():  # a built module (its LoRA is trained) or a parameter count
        n = m if isinstance(m, int) else count(m)
        gib = n * wb / GIB
        on = {"cache": gib, "train": None if offload else gib, "probe": None if offload else gib}
        rows.append(Row(name, f"{n / 1e9:.2f} B, {p.train.mixed_precision}", on))
        if not isinstance(m, int):
            te_lora += _te_lora_params(m, p, spec)
    vae_gib = facts.vae_params * wb / GIB
    on = {"cache": vae_gib, "train": None if offload else vae_gib, "probe": vae_gib}
    rows.append(Row("vae", f"{facts.vae_params / 1e6:.0f} M, {p.train.mixed_precision}", on))
    return rows, te_lora


def _training_rows(p, spec, facts: DenoiserFacts, n_lora: int, wb: float, size: int, sbytes) -> list[Row]:
    """Rows of what training adds: LoRA weights and gradients, optimizer state, activations, the CUDA context."""
    act, ckpt = facts.act, p.train.gradient_checkpointing
    lora_gib = n_lora * 4 / GIB
    opt_gib = n_lora * sbytes[p.optimizer.name] / GIB
    train_act = (act.checkpointed if ckpt else act.total) * ACTIVATION_MARGIN / GIB
    images = len(p.eval.seeds) * (1 if spec.name == "flux" else 2)  # one prompt's seeds per call; CFG doubles
    probe_size = max(p.eval.width or size, p.eval.height or size)
    decode = 6 * facts.vae_channels * probe_size**2 * wb * len(p.eval.seeds) / GIB  # rough: feature maps alive
    infer = act.largest_block / max(p.train.batch_size, 1) * images * 0.5 / GIB  # rough: no-grad forward
    encode = 6 * facts.vae_channels * size**2 * wb / GIB
    return [
        Row("LoRA weights + gradients", f"{n_lora / 1e6:.1f} M, fp32", {"train": 2 * lora_gib, "probe": lora_gib}),
        Row(
            f"optimizer state ({p.optimizer.name})",
            f"{sbytes[p.optimizer.name]:g} B/param",
            {"train": opt_gib, "probe": opt_gib},
        ),
        Row(
            "activations",
            f"{size} px, checkpointing {'on' if ckpt else 'off'}",
            {"cache": encode, "train": train_act, "probe": infer + decode},
        ),
        Row("CUDA context + allocator", "fixed", dict.fromkeys(PHASES, CONTEXT_GIB)),
    ]


def _assemble(p, spec, folder, facts: DenoiserFacts, encoders, wb, size, vram_gib, device_name, qbytes, sbytes):
    """The plan's rows from the measured parts, placed per phase as the training loop places them."""
    quant = p.memory.base_quantization
    rows, te_lora = _weight_rows(p, spec, facts, encoders, wb, qbytes)
    n_lora = facts.lora + te_lora
    rows += _training_rows(p, spec, facts, n_lora, wb, size, sbytes)
    notes = []
    if quant != "none":
        notes.append(f"{quant} base: needs CUDA and bitsandbytes (pip install 'charkit[gpu]')")
    if p.optimizer.name == "adamw8bit":
        extra = n_lora * (sbytes["adamw"] - sbytes["adamw8bit"]) / GIB
        notes.append(f"adamw8bit needs bitsandbytes on CUDA; without it torch AdamW runs (+{extra:.2f} GiB)")
    if not p.train.gradient_checkpointing:
        saved = (facts.act.total - facts.act.checkpointed) * ACTIVATION_MARGIN / GIB
        notes.append(f"train.gradient_checkpointing = true would save {saved:.1f} GiB of activations")
    notes.append("activations measured at a square bucket; other buckets of the same area differ little")
    scope = "custom targets" if p.lora.targets else p.lora.scope.replace("_", "-")
    summary = (
        f"{spec.name}, {folder}, {size} px, batch {p.train.batch_size}, LoRA rank {p.lora.rank} ({scope}), "
        f"base {quant if quant != 'none' else p.train.mixed_precision}, encoders "
        f"{'off the GPU after caching' if _offloads(p) else 'on the GPU'}, optimizer {p.optimizer.name}"
        + (f", block swap {p.memory.block_swap}" if p.memory.block_swap else "")
    )
    return MemoryPlan(
        family=spec.name,
        model=str(folder),
        resolution=size,
        batch=p.train.batch_size,
        summary=summary,
        rows=rows,
        device_gib=vram_gib,
        device=device_name,
        notes=notes,
    )


def _te_lora_params(model, p, spec) -> int:
    from peft import LoraConfig

    model.requires_grad_(False)
    model.add_adapter(
        LoraConfig(r=p.lora.rank, lora_alpha=p.lora.alpha, target_modules=list(spec.text_encoder_lora_targets))
    )
    return count(model, trainable=True)


def plan_for_character(
    character_dir: str | os.PathLike,
    preset,
    model: str | os.PathLike,
    *,
    model_config: str | os.PathLike | None = None,
    vram_gib: float | None = None,
    device: str | None = None,
) -> MemoryPlan:
    """:func:`plan_memory` at the resolution the character's run would train at (``train.resolution``, else the
    prepped dataset's, else the family's), against ``vram_gib`` or the CUDA device's memory."""
    from ..families import get_spec
    from ..stagefiles import DatasetFile, read_stage_file

    ds = Path(character_dir) / "dataset" / "dataset.json"
    prepped = read_stage_file(ds, DatasetFile, fix="re-run `charkit prep`").resolution if ds.is_file() else None
    resolution = preset.train.resolution or prepped or get_spec(preset.family).width
    name = "--vram"
    if vram_gib is None:
        vram_gib, name = device_memory_gib(device)
    return plan_memory(
        preset, model, model_config=model_config, resolution=resolution, vram_gib=vram_gib, device_name=name
    )


def device_memory_gib(device: str | torch.device | None) -> tuple[float | None, str]:
    """Total memory of the CUDA device training would use (None off CUDA), and its name."""
    if not torch.cuda.is_available() or (device is not None and torch.device(str(device)).type != "cuda"):
        return None, "no CUDA device"
    d = torch.device(str(device)) if device not in (None, "auto") else torch.device("cuda")
    props = torch.cuda.get_device_properties(d)
    return props.total_memory / GIB, props.name
