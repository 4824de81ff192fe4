"""SD1.5 pipelines: load (hub id / diffusers folder / single file, optional ControlNet), IP-Adapters, generate.

>>> pipe = load_pipeline("runwayml/stable-diffusion-v1-5", device="cuda", dtype=torch.float16)  # doctest: +SKIP
>>> images = generate(pipe, prompt="a photo of (sks woman:1.2)", width=512, height=512, steps=25,
...                   guidance=7.0, generator=torch.Generator().manual_seed(1))  # doctest: +SKIP
"""

from __future__ import annotations

import os

import torch

from .. import loading
from ..generation import call_kwargs, check_generate, prompts_of
from ..ip_adapter import (
    faceid_embeds,
    has_unet_ip_adapter,
    is_faceid_plus,
    load_unet_ip_adapter,
    set_faceid_plus_image,
    unload_unet_ip_adapter,
)
from .defaults import SPEC

__all__ = [
    "SPEC",
    "faceid_embeds",
    "generate",
    "load_controlnet",
    "load_ip_adapter",
    "load_pipeline",
    "unload_ip_adapter",
    "with_controlnet",
]

#: What the pipeline class is built without: no safety checker (charkit renders characters the user owns).
PIPELINE_KWARGS = {"safety_checker": None, "requires_safety_checker": False}


def load_controlnet(
    source: str | os.PathLike, *, dtype: torch.dtype = torch.float32, allow_pickle_weights: bool = False
):
    """The family's ControlNet model from a hub id or a diffusers folder (union ControlNets included)."""
    return loading.load_controlnet(SPEC, source, dtype=dtype, allow_pickle_weights=allow_pickle_weights)


def with_controlnet(pipe, controlnet, *, allow_pickle_weights: bool = False):
    """The ControlNet variant of ``pipe`` sharing its components (``controlnet``: model, folder or hub id)."""
    return loading.with_controlnet(SPEC, pipe, controlnet, allow_pickle_weights=allow_pickle_weights)


def load_ip_adapter(pipe, path: str | os.PathLike, *, mode: str, **kwargs):
    """Load an IP-Adapter (``mode="image"``) or FaceID (``mode="face"``); see :func:`load_unet_ip_adapter`."""
    return load_unet_ip_adapter(SPEC, pipe, path, mode=mode, **kwargs)


def unload_ip_adapter(pipe) -> None:
    """Remove a loaded IP-Adapter and its FaceID LoRA (no-op when none is loaded)."""
    unload_unet_ip_adapter(pipe)


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
    ip_adapter_embeds: list[torch.Tensor] | torch.Tensor | None = None,
    clip_skip: int = 1,
    init_image=None,
    strength: float | None = None,
    callback_on_step_end=None,
) -> list:
    """Render ``num_images`` PIL images per prompt (one prompt or a list; A1111 syntax, any length).

    One generator per image (prompt-major). ``control_start`` / ``control_end``: the fraction of the steps the
    ControlNet acts on; ``control_mode``: a union ControlNet's control type. ``init_image`` + ``strength``: an
    img2img variant's pass (hires). ``callback_on_step_end`` goes to diffusers as is. Same generator seeds on
    the same machine -> identical pixels.
    """
    prompts, _ = prompts_of(prompt, None)
    total = len(prompts) * num_images
    faceid_plus = is_faceid_plus(pipe)
    ip_kwargs = check_generate(
        SPEC,
        is_controlnet=loading.is_controlnet_pipeline(SPEC, pipe),
        has_ip_adapter=has_unet_ip_adapter(pipe),
        width=width,
        height=height,
        steps=steps,
        generator=generator,
        num_images=total,
        control_image=control_image,
        ip_adapter_image=ip_adapter_image,
        ip_adapter_embeds=ip_adapter_embeds,
        image_encoder=getattr(pipe, "image_encoder", None),
        faceid_plus=faceid_plus,
    )
    with torch.inference_mode():
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
        )
        if faceid_plus:
            set_faceid_plus_image(pipe, ip_adapter_image, num_images=total, guidance=guidance)
        out = pipe(**kwargs, output_type="pil")
    return list(out.images)
