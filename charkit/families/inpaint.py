"""Family-agnostic inpainting: the masked re-denoising variant of a loaded pipeline, and one checked call.

Which diffusers class inpaints is a family fact (:class:`~charkit.families.spec.FamilySpec`
``inpaint_pipeline_class``, ``inpaint_in_channels``, ``fill_pipeline_class``); nothing here knows a family
by name. The variant comes from ``from_pipe``: it shares the loaded components, so LoRA adapters and an
IP-Adapter already loaded stay loaded and their scales (set on the shared modules) apply to both.

Three kinds of denoiser inpaint, and diffusers picks the behaviour from the input channel count:

* a plain text-to-image denoiser (SD1.5/SDXL: 4 channels, SD3: 16, any Flux): each step blends the
  re-noised original latents back in outside the mask;
* an inpainting fine-tune (SD1.5/SDXL: 9 channels, SD3: 33) also sees the mask and the masked image;
* a Flux Fill model (more input than output channels) takes them packed beside the latents, through
  ``FluxFillPipeline`` (no negative prompt, no IP-Adapter).

>>> ipipe = inpaint_pipeline(get_spec("sd15"), pipe)  # doctest: +SKIP
>>> out = inpaint(get_spec("sd15"), ipipe, image=crop, mask=mask, prompt="photo of ohwx man", width=512,
...               height=512, steps=20, guidance=7.0, strength=0.4, generator=torch.Generator().manual_seed(1))  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import json
import math
import os
from pathlib import Path

from ..errors import CharkitError
from . import loading
from .spec import FamilySpec

__all__ = [
    "check_inpaint_model",
    "check_strength",
    "denoising_steps",
    "inpaint",
    "inpaint_class",
    "inpaint_pipeline",
    "is_fill_model",
    "local_denoiser_config",
]


def is_fill_model(spec: FamilySpec, in_channels: int, out_channels: int | None) -> bool:
    """A dedicated fill model: the family has a fill pipeline and the denoiser takes more channels than it returns.

    >>> from charkit.families import get_spec
    >>> is_fill_model(get_spec("flux"), 384, 64), is_fill_model(get_spec("flux"), 64, None)
    (True, False)
    """
    return spec.fill_pipeline_class is not None and out_channels is not None and in_channels > out_channels


def inpaint_class(spec: FamilySpec, in_channels: int, out_channels: int | None = None) -> str:
    """The diffusers pipeline class that inpaints with a denoiser of ``in_channels`` (or a one-line error).

    >>> from charkit.families import get_spec
    >>> inpaint_class(get_spec("sd15"), 9, 4)
    'StableDiffusionInpaintPipeline'
    """
    if spec.inpaint_pipeline_class is None:
        raise CharkitError(
            f"model family {spec.name!r} has no inpaint pipeline, so its faces cannot be repaired; "
            "repair images of a family that has one"
        )
    if is_fill_model(spec, in_channels, out_channels):
        return spec.fill_pipeline_class
    if spec.inpaint_in_channels and in_channels not in spec.inpaint_in_channels:
        takes = " or ".join(str(c) for c in spec.inpaint_in_channels)
        raise CharkitError(
            f"this {spec.name} {spec.denoiser} has {in_channels} input channels, but {spec.inpaint_pipeline_class} "
            f"takes {takes}; use a {spec.name} model with {spec.inpaint_in_channels[0]}-channel latents "
            "(or its inpainting variant) for the repair"
        )
    return spec.inpaint_pipeline_class


def local_denoiser_config(spec: FamilySpec, source: str | os.PathLike) -> dict | None:
    """The denoiser's ``config.json`` of a local diffusers folder (None for single files and hub ids)."""
    f = Path(source) / spec.denoiser / "config.json"
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CharkitError(f"{f}: not a readable {spec.denoiser} config ({e}); re-download the model") from None


def check_inpaint_model(spec: FamilySpec, source: str | os.PathLike) -> str | None:
    """Before anything loads: the inpaint class a local model folder will use (None when its config is not on disk)."""
    cfg = local_denoiser_config(spec, source)
    if cfg is None:
        if spec.inpaint_pipeline_class is None:
            inpaint_class(spec, 0)  # raises: the family cannot inpaint at all
        return None  # a single file or hub id: checked once it is loaded
    return inpaint_class(spec, int(cfg.get("in_channels", 0)), cfg.get("out_channels"))


def _denoiser(pipe):
    model = getattr(pipe, "unet", None)
    return model if model is not None else pipe.transformer


def inpaint_pipeline(spec: FamilySpec, pipe):
    """The inpaint (or Flux Fill) variant of ``pipe`` sharing all its components (``from_pipe``).

    >>> ipipe = inpaint_pipeline(get_spec("flux"), pipe)  # doctest: +SKIP
    >>> type(ipipe).__name__  # doctest: +SKIP
    'FluxInpaintPipeline'
    """
    import diffusers

    cfg = _denoiser(pipe).config
    name = inpaint_class(spec, int(cfg.in_channels), getattr(cfg, "out_channels", None))
    if type(pipe).__name__ == name:
        return pipe
    variant = loading.from_pipe(getattr(diffusers, name), pipe)
    variant.set_progress_bar_config(disable=True)
    return variant


def denoising_steps(steps: int, strength: float) -> int:
    """How many steps diffusers' inpaint pipelines actually run: ``int(steps * strength)`` (their ``get_timesteps``).

    >>> denoising_steps(20, 0.4), denoising_steps(2, 0.4)
    (8, 0)
    """
    return min(int(steps * strength), steps)


def check_strength(strength: float, steps: int) -> None:
    """One-line errors for a strength outside (0, 1] or one that leaves diffusers no step to run."""
    if not 0 < strength <= 1:
        raise CharkitError(
            f"--strength {strength}: must be in (0, 1] (0.3-0.5 keeps the face's pose and light; 1 redraws it)"
        )
    if denoising_steps(steps, strength) < 1:
        need = math.ceil(1 / strength)
        raise CharkitError(
            f"--strength {strength} x {steps} steps leaves no denoising step (diffusers runs int(steps x strength)); "
            f"use --steps {need} or more, or a higher strength"
        )


def _has_ip_adapter(pipe) -> bool:
    model = _denoiser(pipe)
    kind = getattr(model.config, "encoder_hid_dim_type", "ip_image_proj")  # UNets; transformers have no such field
    return getattr(model, "encoder_hid_proj", None) is not None and kind == "ip_image_proj"


def inpaint(
    spec: FamilySpec,
    pipe,
    *,
    image,
    mask,
    prompt: str,
    negative_prompt: str | None = None,
    width: int,
    height: int,
    steps: int,
    guidance: float,
    strength: float,
    generator,
    num_images: int = 1,
    ip_adapter_image=None,
    ip_adapter_embeds=None,
) -> list:
    """Re-denoise the white part of ``mask`` in ``image`` (both ``width x height``); ``num_images`` PIL images.

    The whole output comes back from the VAE, so pixels outside the mask change too: paste the result
    back through the mask (:mod:`charkit.repair.masks`). Keyword arguments the pipeline does not take are
    not passed (Flux Fill has no negative prompt; Flux applies one only with true CFG).
    """
    import torch

    from .generation import check_generate

    if type(pipe).__name__ not in (spec.inpaint_pipeline_class, spec.fill_pipeline_class):
        raise CharkitError(
            f"{type(pipe).__name__} is not a {spec.name} inpaint pipeline: pass inpaint_pipeline(spec, pipe)"
        )
    for what, im in (("image", image), ("mask", mask)):
        if tuple(im.size) != (width, height):
            raise CharkitError(
                f"inpaint {what} is {im.size[0]}x{im.size[1]}, not {width}x{height}: resize it to the inpaint size"
            )
    is_fill = type(pipe).__name__ == spec.fill_pipeline_class
    if is_fill and (ip_adapter_image is not None or ip_adapter_embeds is not None):
        raise CharkitError(f"{spec.fill_pipeline_class} takes no IP-Adapter input: repair without it")
    kwargs = check_generate(
        spec,
        is_controlnet=False,
        has_ip_adapter=_has_ip_adapter(pipe),
        width=width,
        height=height,
        steps=steps,
        generator=generator,
        num_images=num_images,
        ip_adapter_image=ip_adapter_image,
        ip_adapter_embeds=ip_adapter_embeds,
        image_encoder=getattr(pipe, "image_encoder", None),
    )
    check_strength(strength, steps)
    accepted = inspect.signature(type(pipe).__call__).parameters
    if negative_prompt and "negative_prompt" in accepted:
        kwargs["negative_prompt"] = negative_prompt
    with torch.inference_mode():
        out = pipe(
            prompt=prompt,
            image=image.convert("RGB"),
            mask_image=mask.convert("L"),
            width=width,
            height=height,
            strength=float(strength),
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generator,
            num_images_per_prompt=num_images,
            output_type="pil",
            **kwargs,
        )
    return list(out.images)
