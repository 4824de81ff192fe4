"""SD3 pipelines: load (hub id / diffusers folder / single file, optional ControlNet) and generate.

SD3 has no IP-Adapter support in charkit (:data:`SPEC` says so): :func:`load_ip_adapter` raises a
CharkitError naming the family and the feature.

>>> pipe = load_pipeline("stabilityai/stable-diffusion-3.5-medium", device="cuda", dtype=torch.bfloat16)  # doctest: +SKIP
>>> images = generate(pipe, prompt="a photo of (sks woman:1.2)", width=1024, height=1024, steps=28,
...                   guidance=5.0, generator=torch.Generator().manual_seed(1))  # doctest: +SKIP
"""

from __future__ import annotations

import os

import torch

from .. import loading
from ..generation import call_kwargs, check_generate, prompts_of
from .defaults import SPEC

__all__ = [
    "SPEC",
    "generate",
    "load_controlnet",
    "load_ip_adapter",
    "load_pipeline",
    "unload_ip_adapter",
    "with_controlnet",
]

#: Extra keyword arguments of the pipeline class (none for SD3).
PIPELINE_KWARGS: dict = {}


# Copied from charkit.families.sd15.pipeline.load_controlnet
def load_controlnet(
    source: str | os.PathLike, *, dtype: torch.dtype = torch.float32, allow_pickle_weights: bool = False
):
    """The family's ControlNet model from a hub id or a diffusers folder (union ControlNets included)."""
    return loading.load_controlnet(SPEC, source, dtype=dtype, allow_pickle_weights=allow_pickle_weights)


# Copied from charkit.families.sd15.pipeline.with_controlnet
def with_controlnet(pipe, controlnet, *, allow_pickle_weights: bool = False):
    """The ControlNet variant of ``pipe`` sharing its components (``controlnet``: model, folder or hub id)."""
    return loading.with_controlnet(SPEC, pipe, controlnet, allow_pickle_weights=allow_pickle_weights)


# Copied from charkit.families.sd15.pipeline.load_pipeline
def load_pipeline(
    source: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    controlnet: str | os.PathLike | None = None,
    allow_pickle_weights: bool = False,
    config: str | os.PathLike | None = None,
    scheduler: str | None = None,
    variant: str | None = None,
    vae=None,
    t5: bool = True,
):
    """The family's text-to-image pipeline (``SPEC.pipeline_class``), or its ControlNet variant when ``controlnet`` is given.

    ``source``: hub id, diffusers folder, or single-file checkpoint (``.safetensors``; pickle formats only
    with ``allow_pickle_weights``). A single file needs ``config=`` (a diffusers folder or hub id of the
    family that supplies the component configs and tokenizer) when offline. ``scheduler`` swaps in a
    sampler by A1111 or diffusers name; ``variant`` ("fp16") picks half-precision files; ``vae`` replaces the
    VAE (a folder, hub id or single file); ``t5=False`` leaves the T5 encoder out (where the family can).
    The progress bar is off (``pipe.set_progress_bar_config``).
    """
    cfg = os.fspath(config) if config is not None else (os.fspath(source) if os.path.isdir(source) else None)
    components = loading.extra_components(
        SPEC, dtype=dtype, vae=vae, t5=t5, config=cfg, allow_pickle_weights=allow_pickle_weights
    )
    pipe = loading.load_pretrained(
        SPEC,
        source,
        dtype=dtype,
        allow_pickle_weights=allow_pickle_weights,
        config=config,
        variant=variant,
        components=components,
        **PIPELINE_KWARGS,
    )
    if controlnet is not None:
        pipe = with_controlnet(pipe, controlnet, allow_pickle_weights=allow_pickle_weights)
    return loading.finish_pipeline(pipe, device=device, scheduler=scheduler)


def load_ip_adapter(pipe, path, *, mode: str, **_ignored) -> None:
    """Not supported for SD3: raises CharkitError (kept so every family has the same API)."""
    SPEC.require("ip_adapter" if mode == "image" else "faceid")


def unload_ip_adapter(pipe) -> None:
    """No-op: SD3 pipelines never carry a charkit IP-Adapter."""


def generate(
    pipe,
    *,
    prompt: str | list[str],
    negative_prompt: str | list[str] | None = None,
    width: int,
    height: int,
    steps: int,
    guidance: float,
    generator: torch.Generator | list[torch.Generator],
    num_images: int = 1,
    control_image=None,
    control_scale: float = 1.0,
    control_start: float = 0.0,
    control_end: float = 1.0,
    control_mode: int | str | None = None,
    ip_adapter_image=None,
    ip_adapter_embeds=None,
    clip_skip: int = 1,
    init_image=None,
    strength: float | None = None,
    callback_on_step_end=None,
    max_sequence_length: int = 256,
) -> list:
    """Render ``num_images`` PIL images per prompt (classifier-free guidance with ``guidance``; A1111 syntax on
    CLIP-L, CLIP-G and T5; a pipeline loaded with ``t5=False`` renders from the CLIPs alone). Same seeds -> same
    pixels; the other arguments as in SD1.5's ``generate``."""
    prompts, _ = prompts_of(prompt, None)
    ip_kwargs = check_generate(
        SPEC,
        is_controlnet=loading.is_controlnet_pipeline(SPEC, pipe),
        has_ip_adapter=False,
        width=width,
        height=height,
        steps=steps,
        generator=generator,
        num_images=len(prompts) * num_images,
        control_image=control_image,
        ip_adapter_image=ip_adapter_image,
        ip_adapter_embeds=ip_adapter_embeds,
    )
    # diffusers' SD3 ControlNet pipeline samples the control image's VAE latents from the *global* RNG;
    # seed it from the caller's generator (and restore it afterwards) so a seed still means one image.
    first = generator[0] if isinstance(generator, (list, tuple)) else generator
    devices = [pipe.device.index or 0] if pipe.device.type == "cuda" else []
    with torch.inference_mode(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(first.initial_seed())
        kwargs = call_kwargs(
            SPEC,
            pipe,
            prompt=prompts,
            negative_prompt=negative_prompt,
            width=width,
            height=height,
            steps=steps,
            guidance=guidance,
            generator=generator,
            num_images=num_images,
            ip_kwargs=ip_kwargs,
            control_image=control_image,
            control_scale=control_scale,
            control_start=control_start,
            control_end=control_end,
            control_mode=control_mode,
            clip_skip=clip_skip,
            init_image=init_image,
            strength=strength,
            callback_on_step_end=callback_on_step_end,
            text_options={"max_sequence_length": max_sequence_length},
        )
        out = pipe(**kwargs, max_sequence_length=max_sequence_length, output_type="pil")
    return list(out.images)
