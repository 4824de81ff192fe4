"""SD3 pipelines: load (hub id / diffusers folder / single file, optional ControlNet) and generate.

SD3 has no IP-Adapter support in charkit (:data:`SPEC` says so): :func:`load_ip_adapter` raises a
CharkitError naming the family and the feature.

>>> pipe = load_pipeline("stabilityai/stable-diffusion-3.5-medium", device="cuda", dtype=torch.bfloat16)  # doctest: +SKIP
>>> images = generate(pipe, prompt="a photo of sks woman", width=1024, height=1024, steps=28,
...                   guidance=5.0, generator=torch.Generator().manual_seed(1))  # doctest: +SKIP
"""

from __future__ import annotations

import os

import torch

from ...errors import CharkitError
from ..detect import family_from_keys, safetensors_keys
from ..sources import ModelSource, hub_offline, loading, pretrained_kwargs, resolve_source
from ..spec import set_scheduler
from .defaults import SPEC

FAMILY = SPEC.name


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
    """A StableDiffusion3Pipeline (or StableDiffusion3ControlNetPipeline when ``controlnet`` is given).

    ``source``: hub id, diffusers folder, or a single-file transformer checkpoint (original Stability layout with its text encoders, or transformer only,
    ``.safetensors``) which needs ``config=`` (a diffusers SD3 folder or cached hub id) for the text encoders,
    VAE and configs. The progress bar is off.
    """
    from diffusers import StableDiffusion3Pipeline

    src = resolve_source(source, what=f"{FAMILY} model", allow_pickle_weights=allow_pickle_weights)
    if src.kind == "file":
        pipe = _load_single_file(src, config=config, dtype=dtype)
    else:
        _check_family(src)
        with loading(f"{FAMILY} model", src):
            pipe = StableDiffusion3Pipeline.from_pretrained(
                src.ref, dtype=dtype, **pretrained_kwargs(allow_pickle_weights=allow_pickle_weights)
            )
    if controlnet is not None:
        pipe = with_controlnet(pipe, controlnet, allow_pickle_weights=allow_pickle_weights)
    if scheduler is not None:
        set_scheduler(pipe, scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _check_family(src: ModelSource) -> None:
    if src.kind != "folder":
        return
    from ..detect import detect_family

    found = detect_family(src.ref)
    if found != FAMILY:
        raise CharkitError(f"{src.ref}: this is a {found} model, not {FAMILY}; use model family {found!r}")


def _load_single_file(src: ModelSource, *, config, dtype):
    from diffusers import StableDiffusion3Pipeline

    if not src.pickle:
        found = family_from_keys(safetensors_keys(src.ref), what=src.ref)
        if found != FAMILY:
            raise CharkitError(f"{src.ref}: this is a {found} checkpoint, not {FAMILY}; use model family {found!r}")
    if config is None and hub_offline():
        raise CharkitError(
            f"{src.ref}: a single-file SD3 checkpoint needs config= (a diffusers SD3 folder or cached hub id, e.g. "
            "stabilityai/stable-diffusion-3.5-medium) for its text encoders, VAE and configs while HF_HUB_OFFLINE is set; pass it"
        )
    kw = {}
    if config is not None:
        cfg = resolve_source(config, what="config")
        if cfg.kind == "file":
            raise CharkitError(f"config {cfg.ref}: must be a diffusers folder or hub id, not a weights file")
        kw["config"] = cfg.ref
    if hub_offline():
        kw["local_files_only"] = True
    with loading(f"{FAMILY} single file", src):
        return StableDiffusion3Pipeline.from_single_file(src.ref, dtype=dtype, **kw)


def load_controlnet(
    source: str | os.PathLike, *, dtype: torch.dtype = torch.float32, allow_pickle_weights: bool = False
):
    """A SD3ControlNetModel from a hub id or a diffusers folder."""
    from diffusers import SD3ControlNetModel

    src = resolve_source(source, what="controlnet", allow_pickle_weights=allow_pickle_weights)
    if src.kind == "file":
        raise CharkitError(
            f"controlnet {src.ref}: single-file ControlNets are not supported; pass a diffusers ControlNet folder or hub id"
        )
    with loading("controlnet", src):
        return SD3ControlNetModel.from_pretrained(
            src.ref, dtype=dtype, **pretrained_kwargs(allow_pickle_weights=allow_pickle_weights)
        )


def with_controlnet(pipe, controlnet, *, allow_pickle_weights: bool = False):
    """The ControlNet variant of ``pipe`` sharing its components (``controlnet``: model, folder or hub id)."""
    from diffusers import StableDiffusion3ControlNetPipeline

    if isinstance(controlnet, (str, os.PathLike)):
        controlnet = load_controlnet(controlnet, dtype=pipe.dtype, allow_pickle_weights=allow_pickle_weights)
    cn_pipe = StableDiffusion3ControlNetPipeline.from_pipe(pipe, controlnet=controlnet.to(pipe.device))
    cn_pipe.set_progress_bar_config(disable=True)
    return cn_pipe


def load_ip_adapter(pipe, path, *, mode: str, **_ignored) -> None:
    """Not supported for SD3: raises CharkitError (kept so every family has the same API)."""
    SPEC.require("ip_adapter" if mode == "image" else "faceid")


def unload_ip_adapter(pipe) -> None:
    """No-op: SD3 pipelines never carry a charkit IP-Adapter."""


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
    ip_adapter_embeds=None,
    max_sequence_length: int = 256,
) -> list:
    """Render ``num_images`` PIL images (classifier-free guidance with ``guidance``; same seeds -> same pixels)."""
    from diffusers import StableDiffusion3ControlNetPipeline

    is_cn = isinstance(pipe, StableDiffusion3ControlNetPipeline)
    SPEC.check_size(width, height)
    if steps < 1 or num_images < 1:
        raise CharkitError(f"steps={steps}, num_images={num_images}: both must be at least 1")
    if isinstance(generator, (list, tuple)) and len(generator) != num_images:
        raise CharkitError(
            f"{len(generator)} generators for {num_images} images: pass one generator per image (or one)"
        )
    if ip_adapter_image is not None or ip_adapter_embeds is not None:
        SPEC.require("ip_adapter")
    if control_image is not None and not is_cn:
        raise CharkitError("control image given, but the pipeline has no ControlNet: load it with controlnet=<model>")
    if control_image is None and is_cn:
        raise CharkitError(
            "this pipeline has a ControlNet: pass control_image (or load the pipeline without controlnet)"
        )
    kwargs: dict = {}
    if control_image is not None:
        kwargs.update(control_image=control_image, controlnet_conditioning_scale=float(control_scale))
    # diffusers' SD3 ControlNet pipeline samples the control image's VAE latents from the *global* RNG;
    # seed it from the caller's generator (and restore it afterwards) so a seed still means one image.
    first = generator[0] if isinstance(generator, (list, tuple)) else generator
    devices = [pipe.device.index or 0] if pipe.device.type == "cuda" else []
    with torch.inference_mode(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(first.initial_seed())
        out = pipe(
            prompt=prompt,
            negative_prompt=negative_prompt,
            width=width,
            height=height,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generator,
            num_images_per_prompt=num_images,
            max_sequence_length=max_sequence_length,
            output_type="pil",
            **kwargs,
        )
    return list(out.images)
