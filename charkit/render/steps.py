"""The steps of a render that touch the pipeline: load, condition, denoise, hires (re-exported by lifecycle.py).

* :func:`load`: the model once, with every character's LoRA through :func:`charkit.families.loraformats.load_lora`
  (any layout users download: kohya ``lora_unet_``/``lora_te*_``, kohya-BFL Flux, OneTrainer ``lora_transformer_``;
  a LoRA that attaches nowhere is an error, never a silent no-op);
* :func:`condition`: what a scene feeds the pipeline besides its prompt, and the pipeline variant that takes it
  (ControlNet / union ControlNet, img2img for hires), with cpu-offload hooks re-armed whenever the pipeline or any
  of its components changed (a later scene's image encoder included);
* :func:`denoise` / :func:`hires`: one pipeline call for a batch of scenes or a scene's candidates, one
  generator per image, under the scene's sampler.
"""

from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ..errors import CharkitError
from .plan import ModelPlan, RenderPlan, SceneJob
from .scales import denoiser, lora_layers


def adapter_name(character: str) -> str:
    """peft adapter name of a character's LoRA (module dict keys cannot hold '.')."""
    return character.replace(".", "_")


@dataclass
class LoadedModel:
    """A loaded pipeline and the adapter state charkit tracks on it."""

    plan: ModelPlan
    pipe: Any
    adapters: dict[str, str]  # character -> peft adapter name
    plain_processors: dict  # attention processors before any IP-Adapter was loaded
    ip_mode: str | None = None  # IP-Adapter loaded now: "image" | "face" | None
    variants: dict = field(default_factory=dict)  # (control type | None, img2img) -> pipeline sharing the components
    offload_key: Any = None  # (pipeline, its components) the cpu-offload hooks were armed for
    lora_layers: list = field(default_factory=list)  # peft layers (looked up again when an IP-Adapter adds some)
    loras: dict = field(default_factory=dict)  # character -> LoadedLora (layout, modules, sha256)
    ip: Any = None  # LoadedIPAdapter of the IP-Adapter loaded now (variant, image encoder)
    controlnets: dict = field(default_factory=dict)  # control type -> ControlNet model (loaded once)
    schedulers: dict = field(default_factory=dict)  # sampler choice -> scheduler built from the model's config


@dataclass
class Conditioning:
    """What one scene feeds the pipeline besides the prompt."""

    pipe: Any
    control_image: Image.Image | None = None
    control_scale: float = 1.0
    ip_image: Image.Image | None = None
    ip_embeds: list | None = None
    ip_scale: float | None = None  # None: no IP-Adapter in this scene
    face_image: Image.Image | None = None  # FaceID plus: the face crop its CLIP encoder reads
    control_mode: str | None = None  # union ControlNets: the control type
    hires_pipe: Any = None  # the img2img variant of the hires pass
    hires_control: Image.Image | None = None  # the control map at the hires size


def load(model: ModelPlan, plan: RenderPlan, *, device: str, jobs: list[SceneJob] | None = None) -> LoadedModel:
    """Load ``model`` once, with the LoRA of every character its jobs use (disabled until a scene enables it).

    >>> loaded = load(plan.models[0], plan, device="cuda")  # doctest: +SKIP
    """
    from ..families.loraformats import load_lora

    opts = plan.options
    pipe = model.module.load_pipeline(
        model.path,
        device="cpu" if opts.cpu_offload else device,
        dtype=opts.torch_dtype,
        allow_pickle_weights=opts.allow_pickle_weights,
        config=model.config,
        variant=model.variant,
        vae=model.vae,
        t5=model.t5,
    )
    jobs = [j for j in (jobs if jobs is not None else plan.jobs) if j.model is model]
    loaded = LoadedModel(plan=model, pipe=pipe, adapters={}, plain_processors=dict(denoiser(pipe).attn_processors))
    for name in sorted({n for j in jobs for n in j.lora}):
        path = plan.characters[name].lora_path(model.family)
        try:
            loaded.loras[name] = load_lora(pipe, path, family=model.family, adapter_name=adapter_name(name))
        except CharkitError as e:  # another family or model size, a broken or foreign file: say whose and how
            raise CharkitError(
                f"LoRA of {name} ({path}) does not load into model {model.label} ({model.family}): {e}; train a "
                f"LoRA for this model or fix [lora] {model.family} in {plan.characters[name].dir / 'character.toml'}"
            ) from None
        loaded.adapters[name] = adapter_name(name)
    if loaded.adapters:
        pipe.disable_lora()  # the resting state: no LoRA active outside a scene
    loaded.lora_layers = lora_layers(pipe)
    if opts.vae_tiling:
        pipe.vae.enable_tiling()
    if opts.compile:
        denoiser(pipe).compile()
    return loaded


def release(loaded: LoadedModel) -> None:
    """Free a model's memory before the next one loads."""
    import torch

    loaded.variants.clear()
    loaded.controlnets.clear()
    loaded.pipe = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def ensure_ip_adapter(loaded: LoadedModel, mode: str, ctx) -> None:
    """The IP-Adapter of ``mode`` loaded (replacing the other one, FaceID's LoRA included)."""
    if loaded.ip_mode == mode:
        return
    m = loaded.plan
    loaded.ip = m.module.load_ip_adapter(
        loaded.pipe,
        m.faceid if mode == "face" else m.ip_adapter,
        mode=mode,
        image_encoder=m.image_encoder,
        allow_pickle_weights=ctx.options.allow_pickle_weights,
    )
    loaded.ip_mode = mode
    loaded.variants.clear()  # variants must pick up the new image encoder
    loaded.lora_layers = lora_layers(loaded.pipe)  # a FaceID file adds its own LoRA layers


def variant(loaded: LoadedModel, control_type: str | None, ctx, *, img2img: bool = False):
    """The pipeline for a scene: the base one, its ControlNet variant, or an img2img (hires) variant."""
    from ..families.loading import load_controlnet, pipeline_variant

    if control_type is None and not img2img:
        return loaded.pipe
    key = (control_type, img2img)
    if key not in loaded.variants:
        m = loaded.plan
        cn = None
        if control_type is not None:
            if control_type not in loaded.controlnets:
                loaded.controlnets[control_type] = load_controlnet(
                    m.spec,
                    m.controlnet[control_type],
                    dtype=loaded.pipe.dtype,
                    allow_pickle_weights=ctx.options.allow_pickle_weights,
                )
            cn = loaded.controlnets[control_type]
        loaded.variants[key] = pipeline_variant(m.spec, loaded.pipe, controlnet=cn, img2img=img2img)
    return loaded.variants[key]


def offload_key(pipe) -> tuple:
    """What cpu-offload hooks are armed for: the pipeline and the identity of each of its model components."""
    import torch

    parts = sorted((n, id(c)) for n, c in pipe.components.items() if isinstance(c, torch.nn.Module))
    return (id(pipe), tuple(parts))


def arm_offload(loaded: LoadedModel, pipe, device: str) -> bool:
    """(Re-)arm ``enable_model_cpu_offload`` for ``pipe`` unless its hooks already cover exactly these components.

    Hooks live on the shared components: switching to another variant, or a component added since (a later
    scene's image encoder), needs them armed again, else that component sits on the wrong device.
    """
    key = offload_key(pipe)
    if loaded.offload_key == key:
        return False
    pipe.enable_model_cpu_offload(device=device)
    loaded.offload_key = key
    return True


def _ip_inputs(loaded: LoadedModel, job: SceneJob, cond: Conditioning, ctx) -> None:
    ensure_ip_adapter(loaded, job.ip.mode, ctx)
    cond.ip_scale = job.ip.scale
    if job.ip.mode == "image":
        cond.ip_image = ctx.conditioner.ip_image(job.ip.image)
        return
    character = ctx.plan.characters[job.ip.character]
    emb = ctx.conditioner.faceid_embedding(character, ctx.plan.faceid_backend, cache=ctx.face_cache)
    cond.ip_embeds = loaded.plan.module.faceid_embeds(
        emb, guidance=job.guidance, device=ctx.device, dtype=ctx.options.torch_dtype
    )
    if loaded.ip is not None and loaded.ip.variant == "faceid-plus":
        cond.face_image = ctx.conditioner.faceid_face_image(character, ctx.plan.faceid_backend)


def _control_map(job: SceneJob, width: int, height: int, ctx):
    c = job.control
    return ctx.conditioner.control_map(
        c.type,
        c.image,
        width,
        height,
        preprocess=c.preprocess,
        low=c.low,
        high=c.high,
        where=f"scene {job.scene.id!r}: control",
    )


def condition(loaded: LoadedModel, job: SceneJob, ctx) -> Conditioning:
    """Control map, IP-Adapter image or FaceID embedding of ``job``, and the pipelines that take them."""
    from ..families.loading import is_union

    cond = Conditioning(pipe=loaded.pipe)
    if job.ip is not None:
        _ip_inputs(loaded, job, cond, ctx)
    control_type = None
    if job.control is not None:
        control_type = job.control.type
        cond.control_image = _control_map(job, job.width, job.height, ctx)
        cond.control_scale = job.control.scale
        cond.pipe = variant(loaded, control_type, ctx)
        if is_union(cond.pipe.controlnet):
            cond.control_mode = control_type
    if job.hires is not None:
        cond.hires_pipe = variant(loaded, control_type, ctx, img2img=True)
        if job.control is not None:
            cond.hires_control = _control_map(job, job.hires.width, job.hires.height, ctx)
    if ctx.options.cpu_offload:
        arm_offload(loaded, cond.pipe, ctx.device)
    return cond


@contextlib.contextmanager
def scene_scheduler(loaded: LoadedModel, pipe, choice):
    """``pipe`` runs with the scene's sampler for the block, then gets its own back (diffusers' way: schedulers are
    set per call). Each choice is built once per model from the model's own scheduler config."""
    from ..families.schedulers import apply_scheduler

    key = (choice.class_name, tuple(sorted(choice.overrides.items())))
    previous = pipe.scheduler
    if key not in loaded.schedulers:
        apply_scheduler(pipe, choice)  # from the model's config, however often the pipe was switched before
        loaded.schedulers[key] = pipe.scheduler
    pipe.scheduler = loaded.schedulers[key]
    try:
        yield
    finally:
        pipe.scheduler = previous


def _call(loaded: LoadedModel, pipe, cond: Conditioning, jobs: list[SceneJob], seeds: list[int], ctx, **kw):
    """One pipeline call: one image per seed; ``jobs`` one scene (its candidates) or a batch (one seed each)."""
    import torch

    job = jobs[0]
    one = len(jobs) == 1
    prompts = job.prompt if one else [j.prompt for j in jobs]
    negatives = [j.negative_prompt for j in jobs]
    options = {"true_cfg_scale": job.true_cfg} if job.true_cfg else {}
    pipe.set_progress_bar_config(
        disable=not (ctx.options.progress and ctx.state.is_main_process),
        leave=False,
        desc=f"{job.scene.id} ({job.model.label})" if one else f"{job.scene.id}+{len(jobs) - 1} ({job.model.label})",
    )
    if ctx.options.cpu_offload:
        arm_offload(loaded, pipe, ctx.device)
    with scene_scheduler(loaded, pipe, job.scheduler):
        return loaded.plan.module.generate(
            pipe,
            prompt=prompts,
            negative_prompt=(negatives[0] if one else negatives) if any(negatives) else None,
            guidance=job.guidance,
            generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
            num_images=len(seeds) if one else 1,
            control_scale=cond.control_scale,
            control_start=job.control.start if job.control else 0.0,
            control_end=job.control.end if job.control else 1.0,
            control_mode=cond.control_mode,
            ip_adapter_image=cond.ip_image if cond.ip_image is not None else cond.face_image,
            ip_adapter_embeds=cond.ip_embeds,
            clip_skip=job.clip_skip,
            callback_on_step_end=ctx.step_callback,
            **options,
            **kw,
        )


def denoise(
    loaded: LoadedModel,
    cond: Conditioning,
    job: SceneJob,
    seeds: list[int],
    ctx,
    *,
    jobs: list[SceneJob] | None = None,
) -> list[Image.Image]:
    """One pipeline call rendering one image per seed (a CPU ``torch.Generator`` each: same noise on any device).

    ``jobs``: a scene batch (``seeds`` then holds one seed per scene, in order); default: ``job``'s candidates.
    """
    return _call(
        loaded,
        cond.pipe,
        cond,
        jobs or [job],
        seeds,
        ctx,
        width=job.width,
        height=job.height,
        steps=job.steps,
        control_image=cond.control_image,
    )


def hires(
    loaded: LoadedModel,
    cond: Conditioning,
    job: SceneJob,
    images: list[Image.Image],
    seeds: list[int],
    ctx,
    *,
    jobs: list[SceneJob] | None = None,
) -> list[Image.Image]:
    """A1111's hires fix: each first-pass image upscaled to the hires size, then denoised again at ``strength``
    with the same prompt, sampler, LoRAs, IP-Adapter and ControlNet (its map at the new size), same seeds."""
    h = job.hires
    method = Image.LANCZOS if h.upscaler == "Lanczos" else Image.NEAREST
    upscaled = [im.resize((h.width, h.height), method) for im in images]
    return _call(
        loaded,
        cond.hires_pipe,
        cond,
        jobs or [job],
        seeds,
        ctx,
        width=h.width,
        height=h.height,
        steps=h.steps,
        control_image=cond.hires_control,
        init_image=upscaled,
        strength=h.strength,
    )
