"""SD1.5 pipelines: load (hub id / diffusers folder / single file, optional ControlNet), IP-Adapters, generate.

>>> pipe = load_pipeline("runwayml/stable-diffusion-v1-5", device="cuda", dtype=torch.float16)  # doctest: +SKIP
>>> images = generate(pipe, prompt="a photo of sks woman", width=512, height=512, steps=25,
...                   guidance=7.0, generator=torch.Generator().manual_seed(1))  # doctest: +SKIP
"""

from __future__ import annotations

import os

import torch

from .. import loading
from ..generation import check_generate
from ..ip_adapter import faceid_embeds, has_unet_ip_adapter, load_unet_ip_adapter, unload_unet_ip_adapter
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
    """The family's ControlNet model from a hub id or a diffusers folder."""
    return loading.load_controlnet(SPEC, source, dtype=dtype, allow_pickle_weights=allow_pickle_weights)


def with_controlnet(pipe, controlnet, *, allow_pickle_weights: bool = False):
    """The ControlNet variant of ``pipe`` sharing its components (``controlnet``: model, folder or hub id)."""
    return loading.with_controlnet(SPEC, pipe, controlnet, allow_pickle_weights=allow_pickle_weights)


def load_ip_adapter(pipe, path: str | os.PathLike, *, mode: str, **kwargs) -> None:
    """Load a plain IP-Adapter (``mode="image"``) or FaceID (``mode="face"``); see :func:`load_unet_ip_adapter`."""
    load_unet_ip_adapter(SPEC, pipe, path, mode=mode, **kwargs)


def unload_ip_adapter(pipe) -> None:
    """Remove a loaded IP-Adapter (no-op when none is loaded)."""
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
):
    """The family's text-to-image pipeline (``SPEC.pipeline_class``), or its ControlNet variant when ``controlnet`` is given.

    ``source``: hub id, diffusers folder, or single-file checkpoint (``.safetensors``; pickle formats only
    with ``allow_pickle_weights``). A single file needs ``config=`` (a diffusers folder or hub id of the
    family that supplies the component configs and tokenizer) when offline. ``scheduler`` swaps in a
    diffusers scheduler class by name. The progress bar is off (``pipe.set_progress_bar_config``).
    """
    pipe = loading.load_pretrained(
        SPEC, source, dtype=dtype, allow_pickle_weights=allow_pickle_weights, config=config, **PIPELINE_KWARGS
    )
    if controlnet is not None:
        pipe = with_controlnet(pipe, controlnet, allow_pickle_weights=allow_pickle_weights)
    return loading.finish_pipeline(pipe, device=device, scheduler=scheduler)


def generate(
    pipe,
    *,
    prompt: str,
    negative_prompt: str | None = None,
    width: int,
    height: int,
    steps: int,
    guidance: float,
    generator: torch.Generator | list[torch.Generator],
    num_images: int = 1,
    control_image=None,
    control_scale: float = 1.0,
    ip_adapter_image=None,
    ip_adapter_embeds: list[torch.Tensor] | torch.Tensor | None = None,
) -> list:
    """Render ``num_images`` PIL images. Same generator seeds on the same machine -> identical pixels."""
    kwargs = check_generate(
        SPEC,
        is_controlnet=loading.is_controlnet_pipeline(SPEC, pipe),
        has_ip_adapter=has_unet_ip_adapter(pipe),
        width=width,
        height=height,
        steps=steps,
        generator=generator,
        num_images=num_images,
        control_image=control_image,
        ip_adapter_image=ip_adapter_image,
        ip_adapter_embeds=ip_adapter_embeds,
        image_encoder=getattr(pipe, "image_encoder", None),
    )
    if control_image is not None:
        kwargs.update(image=control_image, controlnet_conditioning_scale=float(control_scale))
    with torch.inference_mode():
        out = pipe(
            prompt=prompt,
            negative_prompt=negative_prompt,
            width=width,
            height=height,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generator,
            num_images_per_prompt=num_images,
            output_type="pil",
            **kwargs,
        )
    return list(out.images)
