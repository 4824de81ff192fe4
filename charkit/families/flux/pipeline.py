"""Flux pipelines: load (hub id / diffusers folder / single file, optional ControlNet), IP-Adapter, generate.

Flux has a plain IP-Adapter (XLabs layout) but no FaceID (:data:`SPEC` says so): asking for FaceID
raises a CharkitError naming the family and the feature.

>>> pipe = load_pipeline("black-forest-labs/FLUX.1-dev", device="cuda", dtype=torch.bfloat16)  # doctest: +SKIP
>>> images = generate(pipe, prompt="a photo of sks woman", width=1024, height=1024, steps=28,
...                   guidance=3.5, generator=torch.Generator().manual_seed(1))  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ...errors import CharkitError
from .. import loading
from ..detect import safetensors_keys
from ..generation import call_kwargs, check_generate, prompts_of
from ..ip_adapter import ip_location
from ..sources import hub_offline, pretrained_kwargs, resolve_source
from ..sources import loading as loading_errors
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

#: Extra keyword arguments of the pipeline class (none for Flux).
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


def load_ip_adapter(
    pipe,
    path: str | os.PathLike,
    *,
    mode: str,
    image_encoder: str | os.PathLike | None = None,
    scale: float = 1.0,
    allow_pickle_weights: bool = False,
) -> None:
    """Load a plain Flux IP-Adapter (XLabs layout, ``mode="image"``); FaceID raises CharkitError.

    ``path``: a local weights file or ``org/repo/file.safetensors``. The CLIP image encoder is ``image_encoder``
    (folder or hub id, e.g. openai/clip-vit-large-patch14) or ``image_encoder/`` beside a local weights file.
    Any adapter already loaded is replaced.
    """
    from transformers import CLIPVisionModelWithProjection

    if mode not in ("image", "face"):
        raise CharkitError(f"ip_adapter mode {mode!r}: choose 'image' or 'face'")
    SPEC.require("ip_adapter" if mode == "image" else "faceid")
    folder, subfolder, weight_name = ip_location(path, allow_pickle_weights=allow_pickle_weights)
    local = Path(folder, subfolder, weight_name)
    if (
        local.suffix == ".safetensors"
        and local.is_file()
        and "ip_adapter_proj_model.proj.weight" not in safetensors_keys(local)
    ):
        raise CharkitError(
            f"{local}: not a Flux IP-Adapter (no ip_adapter_proj_model.proj.weight); use an XLabs-layout file"
        )
    unload_ip_adapter(pipe)
    enc = image_encoder if image_encoder is not None else (local.parent / "image_encoder" if local.is_file() else None)
    if enc is None:
        raise CharkitError(f"IP-Adapter {path}: pass image_encoder=<CLIP vision folder or hub id> for a hub adapter")
    enc_src = resolve_source(enc, what="image encoder", allow_pickle_weights=allow_pickle_weights)
    with loading_errors("image encoder", enc_src):
        model = CLIPVisionModelWithProjection.from_pretrained(
            enc_src.ref, dtype=pipe.dtype, **pretrained_kwargs(allow_pickle_weights=allow_pickle_weights)
        )
    pipe.register_modules(image_encoder=model.to(pipe.device).eval())
    with loading_errors("IP-Adapter", str(path)):
        pipe.load_ip_adapter(
            folder,
            weight_name=weight_name,
            subfolder=subfolder,
            image_encoder_pretrained_model_name_or_path=None,
            **({"local_files_only": True} if hub_offline() else {}),
        )
    pipe.set_ip_adapter_scale(scale)


def has_ip_adapter(pipe) -> bool:
    return getattr(pipe.transformer, "encoder_hid_proj", None) is not None


def unload_ip_adapter(pipe) -> None:
    """Remove a loaded IP-Adapter (no-op when none is loaded)."""
    if has_ip_adapter(pipe):
        pipe.unload_ip_adapter()


def _true_cfg_negatives(prompts: list[str], negatives: list[str] | None, true_cfg_scale: float):
    """The negative prompts Flux applies: with true CFG one per prompt ("" when none, as Forge does), else none
    (a non-empty one then is an error: it would do nothing)."""
    if true_cfg_scale > 1:
        return prompts, negatives or [""] * len(prompts)
    if negatives is not None and any(negatives):
        raise CharkitError(
            "Flux applies a negative prompt only with true CFG: pass true_cfg_scale > 1 (e.g. 4; twice the compute) "
            "or drop the negative prompt"
        )
    return prompts, None


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
    true_cfg_scale: float = 1.0,
    max_sequence_length: int = 512,
) -> list:
    """Render ``num_images`` PIL images per prompt. ``guidance`` is Flux's distilled guidance; a negative prompt
    acts only with ``true_cfg_scale > 1`` (real classifier-free guidance, twice the compute), so one given
    without it is an error instead of being silently ignored. A1111 weights act on T5; ``clip_skip`` does not
    apply (Flux reads CLIP's pooled output only). The other arguments as in SD1.5's ``generate``."""
    prompts, negatives = _true_cfg_negatives(*prompts_of(prompt, negative_prompt), true_cfg_scale)
    ip_kwargs = check_generate(
        SPEC,
        is_controlnet=loading.is_controlnet_pipeline(SPEC, pipe),
        has_ip_adapter=has_ip_adapter(pipe),
        width=width,
        height=height,
        steps=steps,
        generator=generator,
        num_images=len(prompts) * num_images,
        control_image=control_image,
        ip_adapter_image=ip_adapter_image,
        ip_adapter_embeds=ip_adapter_embeds,
        image_encoder=getattr(pipe, "image_encoder", None),
    )
    with torch.inference_mode():
        kwargs = call_kwargs(
            SPEC,
            pipe,
            prompt=prompts,
            negative_prompt=negatives,
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
        if negatives is not None:
            kwargs["true_cfg_scale"] = float(true_cfg_scale)
        out = pipe(**kwargs, max_sequence_length=max_sequence_length, output_type="pil")
    return list(out.images)
