"""Family-agnostic pieces of a ``generate`` call: the checks, the prompt embeddings and the pipeline arguments.

Every family's ``generate`` starts with :func:`check_generate`, so a control image without a ControlNet or
an IP-Adapter input without an adapter is the same one-line error in every family; :func:`call_kwargs` then
turns charkit's arguments into the diffusers pipeline call of whatever variant ``pipe`` is (text-to-image or
img2img, with a ControlNet or a union ControlNet), with A1111-syntax prompts encoded by
:mod:`charkit.families.prompts` (weights, ``BREAK``, no 77-token cut, ``clip_skip``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import CharkitError
from .spec import FamilySpec


def check_generate(
    spec: FamilySpec,
    *,
    is_controlnet: bool,
    has_ip_adapter: bool,
    width: int,
    height: int,
    steps: int,
    generator,
    num_images: int,
    control_image=None,
    ip_adapter_image=None,
    ip_adapter_embeds=None,
    image_encoder=None,
    faceid_plus: bool = False,
) -> dict:
    """Validate a generate call; returns the IP-Adapter keyword arguments for the diffusers pipeline.

    ``num_images`` counts every image of the call (all prompts); ``faceid_plus``: the loaded adapter reads both
    the id embedding and the face image (the image is set on the adapter, not passed to the pipeline).

    >>> check_generate(get_spec("sd15"), is_controlnet=False, has_ip_adapter=False, width=64, height=64,
    ...                steps=2, generator=None, num_images=1)  # doctest: +SKIP
    {}
    """
    spec.check_size(width, height)
    if steps < 1 or num_images < 1:
        raise CharkitError(f"steps={steps}, num_images={num_images}: both must be at least 1")
    if isinstance(generator, (list, tuple)) and len(generator) != num_images:
        raise CharkitError(
            f"{len(generator)} generators for {num_images} images: pass one generator per image (or one)"
        )
    if control_image is not None and not is_controlnet:
        raise CharkitError("control image given, but the pipeline has no ControlNet: load it with controlnet=<model>")
    if control_image is None and is_controlnet:
        raise CharkitError(
            "this pipeline has a ControlNet: pass control_image (or load the pipeline without controlnet)"
        )
    wants_ip = ip_adapter_image is not None or ip_adapter_embeds is not None
    if wants_ip:
        spec.require(
            "ip_adapter" if ip_adapter_image is not None else ("faceid" if spec.can("faceid") else "ip_adapter")
        )
    if wants_ip and not has_ip_adapter:
        raise CharkitError("IP-Adapter input given, but no IP-Adapter is loaded: call load_ip_adapter first")
    if has_ip_adapter and not wants_ip:
        raise CharkitError(
            "an IP-Adapter is loaded: pass ip_adapter_image or ip_adapter_embeds, or unload_ip_adapter(pipe)"
        )
    if faceid_plus and (ip_adapter_image is None or ip_adapter_embeds is None):
        raise CharkitError(
            "a FaceID plus adapter is loaded: pass both ip_adapter_embeds (the ArcFace id) and ip_adapter_image "
            "(the face crop its CLIP encoder reads)"
        )
    kwargs: dict = {}
    if ip_adapter_image is not None and not faceid_plus:
        if image_encoder is None:
            raise CharkitError(
                "this IP-Adapter has no image encoder (FaceID?): pass ip_adapter_embeds instead of an image"
            )
        kwargs["ip_adapter_image"] = ip_adapter_image
    if ip_adapter_embeds is not None:
        kwargs["ip_adapter_image_embeds"] = (
            [ip_adapter_embeds] if isinstance(ip_adapter_embeds, torch.Tensor) else list(ip_adapter_embeds)
        )
    return kwargs


def prompts_of(prompt, negative_prompt) -> tuple[list[str], list[str] | None]:
    """``prompt`` as a list, and ``negative_prompt`` as one per prompt (None stays None)."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise CharkitError("prompt: give a string or a non-empty list of strings")
    if negative_prompt is None:
        return prompts, None
    negatives = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
    if len(negatives) == 1:
        negatives = negatives * len(prompts)
    if len(negatives) != len(prompts):
        raise CharkitError(f"{len(negatives)} negative prompts for {len(prompts)} prompts: pass one, or one per prompt")
    return prompts, negatives


def control_kwargs(
    spec: FamilySpec,
    pipe,
    control_image,
    *,
    scale: float,
    start: float,
    end: float,
    mode: int | str | None,
) -> dict:
    """The ControlNet arguments of this pipeline variant (``image`` / ``control_image``, union ``control_mode``)."""
    from .loading import pipeline_kind

    _, union, img2img = pipeline_kind(spec, pipe)
    if not 0.0 <= start < end <= 1.0:
        raise CharkitError(f"control start {start} / end {end}: need 0 <= start < end <= 1 (fractions of the steps)")
    kw: dict = {"controlnet_conditioning_scale": float(scale), "control_guidance_start": float(start)}
    kw["control_guidance_end"] = float(end)
    if union:
        if mode is None:
            raise CharkitError("this is a union ControlNet: pass control_mode (the control type, e.g. 'canny')")
        index = spec.union_mode(mode) if isinstance(mode, str) else int(mode)
        multi = spec.union_controlnet_class is not None  # SDXL's union pipelines take lists (one per control)
        kw["control_image"] = [control_image] if multi else control_image
        kw["control_mode"] = [index] if multi else index
        return kw
    if mode is not None:
        raise CharkitError("control_mode is for union ControlNets; this ControlNet has one control type")
    kw["control_image" if img2img else spec.controlnet_image_arg] = control_image
    return kw


def prompt_kwargs(
    spec: FamilySpec, pipe, prompts: Sequence[str], negatives, *, num_images: int, clip_skip: int, **options
) -> dict:
    """Prompt embeddings (A1111 syntax) in place of ``prompt=`` / ``negative_prompt=`` / ``num_images_per_prompt``."""
    from .prompts import encode_prompt

    if clip_skip != 1:
        spec.require("clip_skip")
    embeds = encode_prompt(spec.name, pipe, list(prompts), negatives, clip_skip=clip_skip, **options)
    return embeds.pipeline_kwargs(num_images)


def _takes(pipe, name: str) -> bool:
    import inspect

    return name in inspect.signature(type(pipe).__call__).parameters


def call_kwargs(
    spec: FamilySpec,
    pipe,
    *,
    prompt,
    negative_prompt,
    width: int,
    height: int,
    steps: int,
    guidance: float,
    generator,
    num_images: int,
    ip_kwargs: dict,
    control_image=None,
    control_scale: float = 1.0,
    control_start: float = 0.0,
    control_end: float = 1.0,
    control_mode=None,
    clip_skip: int = 1,
    init_image=None,
    strength: float | None = None,
    callback_on_step_end=None,
    text_options: dict | None = None,
) -> dict:
    """Every argument of the diffusers call but ``output_type`` (checked by :func:`check_generate` before)."""
    from .loading import pipeline_kind

    _, _, img2img = pipeline_kind(spec, pipe)
    prompts, negatives = prompts_of(prompt, negative_prompt)
    if img2img != (init_image is not None):
        raise CharkitError(
            "init_image needs an img2img pipeline (the hires variant) and an img2img pipeline needs init_image"
        )
    kw = prompt_kwargs(
        spec, pipe, prompts, negatives, num_images=num_images, clip_skip=clip_skip, **(text_options or {})
    )
    kw.update(num_inference_steps=steps, guidance_scale=guidance, generator=generator, **ip_kwargs)
    if not img2img or _takes(pipe, "width"):  # SD / SDXL img2img size the output from the init image
        kw.update(width=width, height=height)
    if control_image is not None:
        kw.update(
            control_kwargs(
                spec, pipe, control_image, scale=control_scale, start=control_start, end=control_end, mode=control_mode
            )
        )
    if init_image is not None:
        if strength is None or not 0.0 < strength <= 1.0:
            raise CharkitError(f"strength {strength}: the hires pass needs a denoising strength in (0, 1]")
        kw.update(image=init_image, strength=float(strength))
    if callback_on_step_end is not None:
        kw["callback_on_step_end"] = callback_on_step_end
    return kw
