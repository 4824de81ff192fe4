"""Training presets: ``training/<family>-lora.toml`` parsed into typed, self-documenting models.

Every field carries its help text (``Field(description=...)``); docs/training.md and the error
messages come from the same fields. A preset is validated as a whole before anything loads, so a
typo in field 40 fails in the first second, not after the model has loaded::

    preset = load_preset("training/sd15-lora.toml")
    preset = apply_overrides(preset, steps=20, eval_every=10)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..configfiles import parse_toml
from ..errors import CharkitError, validation_message
from ..families.registry import FAMILIES, FamilyName, families_that, get_spec

#: Upper bound of train.steps (a typo like --steps 150000 for 1500 is refused).
MAX_STEPS = 100_000


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraSection(_Section):
    rank: int = Field(
        16, ge=1, le=1024, description="LoRA rank r: width of the low-rank update (4-32 is typical for a face)."
    )
    alpha: float = Field(
        16.0, gt=0, description="LoRA alpha; the update is scaled by alpha / rank (alpha = rank gives scale 1)."
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input during training (0 = off).")
    scope: Literal["attention", "all_linear"] = Field(
        "attention",
        description="Which layers the LoRA adapts when lora.targets is empty: 'attention' (the family's attention "
        "projections, SPEC.lora_targets, what the diffusers examples train) or 'all_linear' (every Linear of the "
        "denoiser's blocks: attention, MLP and modulation, what kohya and ai-toolkit train; learns more, bigger file).",
    )
    targets: list[str] = Field(
        default_factory=list,
        description="Module names of the UNet/transformer to adapt (peft target_modules); empty = lora.scope decides.",
    )
    text_encoder: bool = Field(
        False,
        description=f"Also train a LoRA on the text encoder(s) ({' and '.join(families_that('text_encoder_lora'))} only). "
        "Turns the text-embedding cache off, "
        "since the embeddings change while training.",
    )


class OptimizerSection(_Section):
    name: Literal["adamw", "adamw8bit", "prodigy", "adafactor"] = Field(
        "adamw",
        description="'adamw' (torch), 'adamw8bit' (bitsandbytes, `pip install charkit[gpu]`; on CPU or without "
        "bitsandbytes torch AdamW runs instead and the console and the report say so), 'prodigy' (prodigyopt: "
        "learning-rate free, set learning_rate = 1.0) or 'adafactor' (torch's factored optimizer, least state).",
    )
    learning_rate: float = Field(1e-4, gt=0, description="Learning rate of the UNet/transformer LoRA.")
    text_encoder_learning_rate: float = Field(
        5e-5, gt=0, description="Learning rate of the text-encoder LoRA (when lora.text_encoder is on)."
    )
    weight_decay: float = Field(1e-2, ge=0, description="AdamW decoupled weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas (beta1, beta2).")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    max_grad_norm: float = Field(1.0, ge=0, description="Clip the gradient norm to this value (0 = no clipping).")
    scheduler: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="Learning-rate schedule after warm-up: 'constant', 'linear' decay to 0 or 'cosine'."
    )
    warmup_steps: int = Field(0, ge=0, description="Steps of linear learning-rate warm-up from 0.")


class TrainSection(_Section):
    steps: int = Field(
        1500,
        ge=1,
        le=MAX_STEPS,
        description=f"Optimizer steps to train (`--steps` overrides; at most {MAX_STEPS:,}). Ignored when train.epochs "
        "is set.",
    )
    epochs: int = Field(
        0,
        ge=0,
        description="Passes over the dataset (each image train.repeats times, plus as many regularisation images) "
        "instead of train.steps; 0 = train.steps decides. steps = ceil(epochs x batches per epoch / "
        "(gradient_accumulation x processes)).",
    )
    repeats: int = Field(
        1, ge=1, le=1000, description="Times each training image is seen per epoch (kohya's folder repeats)."
    )
    reg_images: str = Field(
        "",
        description="Folder of regularisation (class) images for prior preservation: photos of the class word "
        "(other men, other women) that keep the LoRA from turning every person into the character. A caption .txt "
        "beside an image is used, else the class word. Relative paths are from the character folder; '' = none.",
    )
    prior_loss_weight: float = Field(
        1.0, ge=0.0, description="Loss weight of a regularisation image relative to a training image (DreamBooth)."
    )
    batch_size: int = Field(1, ge=1, description="Images per step (per device).")
    gradient_accumulation: int = Field(
        1, ge=1, description="Micro-batches accumulated per optimizer step (effective batch = batch_size x this)."
    )
    resolution: int = Field(
        0,
        ge=0,
        description="Training resolution in pixels, nominal like prep's (buckets of about resolution^2 area); 0 = the "
        "dataset's (set by `charkit prep`: the family's default size). Smaller than the dataset's scales it down; larger "
        "is refused (re-run prep).",
    )
    seed: int = Field(0, ge=0, description="Seed of everything random: batch order, noise, timesteps, LoRA init.")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "bf16",
        description="Autocast precision on GPU: 'fp16', 'bf16' or 'no' (fp32). The base weights are stored in this "
        "dtype, the LoRA weights always in fp32. On CPU training runs in fp32 and the report says so. `--dtype` overrides.",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: much less memory, about 20-30% slower."
    )
    cache_latents: bool = Field(
        True, description="Encode every training image with the VAE once, before training (faster steps)."
    )
    cache_text_embeddings: bool = Field(
        True,
        description="Encode every caption once, before training (faster steps; off automatically when the text "
        "encoder is trained).",
    )
    caption_dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="Probability of training a sample with an empty caption (0 = off)."
    )


class MemorySection(_Section):
    base_quantization: Literal["none", "nf4", "int8"] = Field(
        "none",
        description="Quantise the frozen denoiser when it loads (bitsandbytes through diffusers' quantisation "
        "backend; CUDA and `pip install charkit[gpu]`): 'nf4' (4-bit NormalFloat, QLoRA: Flux's 23.8 GB "
        "transformer becomes about 6.7 GB), 'int8' (LLM.int8, about 12 GB) or 'none'. The LoRA still trains in fp32.",
    )
    offload_encoders: bool = Field(
        True,
        description="On a GPU, move the text encoders and the VAE to the CPU once the caches are filled (probes "
        "render from cached prompt embeddings; the VAE comes back only to decode them). Off automatically when a "
        "cache is off or the text encoder is trained.",
    )
    block_swap: int = Field(
        0,
        ge=0,
        description="SD3/Flux on a GPU: keep the frozen weights of this many transformer blocks on the CPU and copy "
        "each to the GPU only while it runs (forward and the recomputation in backward; needs "
        "train.gradient_checkpointing). Slower; for an unquantised base that does not fit. 0 = off.",
    )


class LossSection(_Section):
    noise_offset: float = Field(
        0.0, ge=0.0, description="SD families: add this much per-channel offset noise (helps very dark/bright images)."
    )
    snr_gamma: float = Field(
        0.0, ge=0.0, description="SD families: Min-SNR loss weighting gamma (5.0 is the paper's value; 0 = off)."
    )
    timestep_sampling: Literal["logit_normal", "uniform", "mode"] = Field(
        "logit_normal",
        description="Flow families (sd3, flux): how training timesteps are drawn ('logit_normal' as in the SD3 paper).",
    )
    logit_mean: float = Field(0.0, description="Flow families: mean of the logit-normal timestep density.")
    logit_std: float = Field(1.0, gt=0, description="Flow families: standard deviation of the logit-normal density.")
    mode_scale: float = Field(1.29, description="Flow families: scale of the 'mode' timestep density.")
    weighting: Literal["none", "sigma_sqrt", "cosmap"] = Field(
        "none", description="Flow families: per-timestep loss weighting ('none' is what the diffusers examples use)."
    )
    guidance: float = Field(
        1.0,
        ge=0.0,
        description="Flux: the distilled-guidance value fed to guidance-embedded transformers while training.",
    )
    precondition_outputs: bool | None = Field(
        None,
        description="SD3: precondition the prediction as in Karras et al. (x0 = x_t - sigma x prediction, loss "
        "against the clean latents), the default of diffusers' train_dreambooth_lora_sd3.py; false = plain "
        "velocity loss. None = the family default (on for SD3); other families must leave it unset.",
    )


class EvalSection(_Section):
    every: int = Field(
        250,
        ge=1,
        description="Save a checkpoint and render the probe set every this many steps (`--eval-every` overrides); "
        "the last step is always evaluated.",
    )
    prompts: list[str] = Field(
        default_factory=lambda: [
            "a photo of {trigger} {class}, portrait, natural light",
            "a photo of {trigger} {class} wearing a red jacket in a city street at night",
            "a photo of {trigger} {class} sitting in a park, smiling, full body",
            "an oil painting of {trigger} {class} in a forest",
        ],
        min_length=1,
        description="Probe prompts rendered at every checkpoint ({trigger} and {class} expand to the character's "
        "trigger words and class word). Include some unlike the training captions: they catch overfitting.",
    )
    seeds: list[int] = Field(
        default_factory=lambda: [1, 2], min_length=1, description="Seeds; every prompt is rendered once per seed."
    )
    negative_prompt: str = Field("", description="Negative prompt of the probe renders ('' = the character's default).")
    steps: int = Field(0, ge=0, description="Sampling steps of a probe render (0 = the family's default).")
    guidance: float = Field(-1.0, description="Guidance scale of a probe render (negative = the family's default).")
    width: int = Field(0, ge=0, description="Probe width in pixels (0 = the training resolution).")
    height: int = Field(0, ge=0, description="Probe height in pixels (0 = the training resolution).")
    clip_model: str = Field(
        "",
        description="Local folder of a transformers CLIPModel (with its processor) for the prompt-adherence score; "
        "'' = $CHARKIT_CLIP_MODEL, else adherence is recorded as 'unavailable'. `--clip-model` overrides.",
    )
    adherence_tolerance: float = Field(
        2.0,
        ge=0.0,
        description="Checkpoint choice guard: only checkpoints whose mean CLIP score is within this many points of the "
        "best checkpoint's compete on identity (CLIP score = 100 x cosine).",
    )
    min_face_rate: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Checkpoint choice: a checkpoint competes on identity only if at least this share of its probe "
        "renders shows a face.",
    )
    confidence: float = Field(
        0.9,
        gt=0.5,
        lt=1.0,
        description="Checkpoint choice: a later checkpoint beats the one chosen so far only when the lower end of "
        "this two-sided bootstrap interval of its identity gain (over the same probes) is above 0; otherwise the "
        "difference is probe-to-probe noise and the earlier checkpoint stays.",
    )
    max_memorized: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="Overfitting guard: a checkpoint is out when more than this share of its probes are near copies "
        "of a training photo (the same face embedding to near-duplicate level and a close perceptual hash).",
    )
    max_similarity_rise: float = Field(
        0.15,
        ge=0.0,
        le=1.0,
        description="Overfitting guard (prompt diversity): a checkpoint is out when its probes of different prompts "
        "(same seed) look more alike than the no-LoRA baseline's by more than this (perceptual-hash similarity, "
        "0-1): the LoRA draws one picture whatever the prompt says.",
    )


class CheckpointSection(_Section):
    reserve_disk_mb: int = Field(
        512,
        ge=0,
        description="Free disk to keep beyond a checkpoint's size; a save that would leave less stops training.",
    )
    kohya: bool = Field(
        True,
        description="Also export best.kohya.safetensors (kohya sd-scripts layout: A1111, Forge and ComfyUI read "
        "it; for Flux also stock diffusers; see docs/training.md for which tool loads which file).",
    )
    keep: int = Field(
        0,
        ge=0,
        description="Keep at most this many checkpoint folders besides the best one so far (the newest are kept, "
        "for resuming); 0 = keep all. Scores and probe renders of removed checkpoints stay in the report.",
    )
    max_count: int = Field(
        100,
        ge=1,
        description="Refuse a run that would save more checkpoints than this (train.steps / eval.every): a typo in "
        "--steps fails in the first second instead of filling the disk.",
    )


class TrainPreset(_Section):
    """A training preset (``training/<family>-lora.toml``)."""

    family: FamilyName = Field(description="Model family this preset trains.")
    lora: LoraSection = Field(default_factory=LoraSection, description="The adapter: rank, alpha, targets.")
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection, description="Optimizer and learning rate.")
    train: TrainSection = Field(default_factory=TrainSection, description="Steps, batch, precision, caches.")
    memory: MemorySection = Field(
        default_factory=MemorySection, description="Quantised base, encoder offload, block swap (fitting a GPU)."
    )
    loss: LossSection = Field(default_factory=LossSection, description="Noise/timestep sampling and loss weighting.")
    eval: EvalSection = Field(default_factory=EvalSection, description="Probe renders and checkpoint choice.")
    checkpoints: CheckpointSection = Field(default_factory=CheckpointSection, description="Saving and export.")

    @model_validator(mode="after")
    def _family_rules(self) -> TrainPreset:
        if self.lora.text_encoder and not get_spec(self.family).can("text_encoder_lora"):
            raise ValueError(
                f"lora.text_encoder: text-encoder LoRA is supported for {', '.join(families_that('text_encoder_lora'))}, "
                f"not {self.family}; set it to false"
            )
        flow = self.is_flow
        if flow and (self.loss.snr_gamma or self.loss.noise_offset):
            raise ValueError(
                "loss.snr_gamma / loss.noise_offset apply to SD families only; set them to 0 for a flow model"
            )
        if self.loss.precondition_outputs is not None and self.family != "sd3":
            raise ValueError("loss.precondition_outputs applies to sd3 only; remove it from this preset")
        if self.memory.block_swap:
            if get_spec(self.family).denoiser != "transformer":
                raise ValueError("memory.block_swap works on transformer families (sd3, flux); set it to 0")
            if not self.train.gradient_checkpointing:
                raise ValueError("memory.block_swap needs train.gradient_checkpointing = true")
            if self.memory.base_quantization != "none":
                raise ValueError("memory.block_swap is for an unquantised base; set base_quantization = 'none' or 0")
        return self

    @property
    def precondition(self) -> bool:
        """SD3's preconditioned loss (on unless the preset turns it off)."""
        return self.family == "sd3" and self.loss.precondition_outputs is not False

    @property
    def is_flow(self) -> bool:
        return get_spec(self.family).is_flow


def _field_names() -> set[str]:
    return {
        f
        for m in (
            LoraSection,
            OptimizerSection,
            TrainSection,
            MemorySection,
            LossSection,
            EvalSection,
            CheckpointSection,
            TrainPreset,
        )
        for f in m.model_fields
    }


def parse_preset(data: dict, source: str = "preset") -> TrainPreset:
    """Validate a preset dict (as read from TOML) into a :class:`TrainPreset`."""
    try:
        return TrainPreset.model_validate(data)
    except ValidationError as e:
        raise CharkitError(
            validation_message(source, e, known_fields=_field_names(), docs="docs/training.md")
        ) from None


def load_preset(path: str | os.PathLike) -> TrainPreset:
    """Read and validate ``training/<family>-lora.toml``.

    >>> load_preset("training/sd15-lora.toml").lora.rank  # doctest: +SKIP
    16
    """
    p = Path(path)
    if not p.is_file():
        raise CharkitError(f"--preset {p}: no such file; use one of training/{{{','.join(FAMILIES)}}}-lora.toml")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CharkitError(f"{p}: not UTF-8 text; save the preset as UTF-8") from None
    return parse_preset(parse_toml(text, str(p)), str(p))  # syntax errors and deep nesting: one line


def apply_overrides(
    preset: TrainPreset,
    *,
    steps: int | None = None,
    eval_every: int | None = None,
    mixed_precision: str | None = None,
    clip_model: str | None = None,
) -> TrainPreset:
    """A copy of ``preset`` with the CLI's quick-run overrides applied (validated like the file)."""
    data = preset.model_dump()
    if steps is not None:
        data["train"]["steps"] = steps
    if eval_every is not None:
        data["eval"]["every"] = eval_every
    if mixed_precision is not None:
        data["train"]["mixed_precision"] = mixed_precision
    if clip_model is not None:
        data["eval"]["clip_model"] = clip_model
    return parse_preset(data, "command-line overrides")


def field_docs(model: type[BaseModel] = TrainPreset, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(dotted name, default, description)`` of every preset field, sections first (for docs and tests)."""
    rows = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.append((f"[{prefix}{name}]", "", f.description or ""))
            rows.extend(field_docs(ann, f"{prefix}{name}."))
        else:
            default = "(required)" if f.is_required() else repr(f.get_default(call_default_factory=True))
            rows.append((f"{prefix}{name}", default, f.description or ""))
    return rows
