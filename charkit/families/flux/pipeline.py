"""Flux pipelines: load (hub id / diffusers folder / single file, optional ControlNet) and generate.

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
    """A FluxPipeline (or FluxControlNetPipeline when ``controlnet`` is given).

    ``source``: hub id, diffusers folder, or a single-file transformer checkpoint (original BFL layout,
    ``.safetensors``) which needs ``config=`` (a diffusers Flux folder or cached hub id) for the text encoders,
    VAE and configs. The progress bar is off.
    """
    from diffusers import FluxPipeline

    src = resolve_source(source, what=f"{FAMILY} model", allow_pickle_weights=allow_pickle_weights)
    if src.kind == "file":
        pipe = _load_single_file(src, config=config, dtype=dtype)
    else:
        _check_family(src)
        with loading(f"{FAMILY} model", src):
            pipe = FluxPipeline.from_pretrained(
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
    from diffusers import FluxPipeline

    if not src.pickle:
        found = family_from_keys(safetensors_keys(src.ref), what=src.ref)
        if found != FAMILY:
            raise CharkitError(f"{src.ref}: this is a {found} checkpoint, not {FAMILY}; use model family {found!r}")
    if config is None and hub_offline():
        raise CharkitError(
            f"{src.ref}: a single-file Flux checkpoint needs config= (a diffusers Flux folder or cached hub id, e.g. "
            "black-forest-labs/FLUX.1-dev) for its text encoders, VAE and configs while HF_HUB_OFFLINE is set; pass it"
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
        return FluxPipeline.from_single_file(src.ref, dtype=dtype, **kw)


def load_controlnet(
    source: str | os.PathLike, *, dtype: torch.dtype = torch.float32, allow_pickle_weights: bool = False
):
    """A FluxControlNetModel from a hub id or a diffusers folder."""
    from diffusers import FluxControlNetModel

    src = resolve_source(source, what="controlnet", allow_pickle_weights=allow_pickle_weights)
    if src.kind == "file":
        raise CharkitError(
            f"controlnet {src.ref}: single-file ControlNets are not supported; pass a diffusers ControlNet folder or hub id"
        )
    with loading("controlnet", src):
        return FluxControlNetModel.from_pretrained(
            src.ref, dtype=dtype, **pretrained_kwargs(allow_pickle_weights=allow_pickle_weights)
        )


def with_controlnet(pipe, controlnet, *, allow_pickle_weights: bool = False):
    """The ControlNet variant of ``pipe`` sharing its components (``controlnet``: model, folder or hub id)."""
    from diffusers import FluxControlNetPipeline

    if isinstance(controlnet, (str, os.PathLike)):
        controlnet = load_controlnet(controlnet, dtype=pipe.dtype, allow_pickle_weights=allow_pickle_weights)
    cn_pipe = FluxControlNetPipeline.from_pipe(pipe, controlnet=controlnet.to(pipe.device))
    cn_pipe.set_progress_bar_config(disable=True)
    return cn_pipe


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

    from ..sources import check_weights_file

    if mode not in ("image", "face"):
        raise CharkitError(f"ip_adapter mode {mode!r}: choose 'image' or 'face'")
    SPEC.require("ip_adapter" if mode == "image" else "faceid")
    p = Path(path).expanduser()
    if p.is_file():
        check_weights_file(p, what="IP-Adapter", allow_pickle_weights=allow_pickle_weights)
        folder, subfolder, weight_name = str(p.parent.resolve()), "", p.name
        if p.suffix == ".safetensors" and "ip_adapter_proj_model.proj.weight" not in safetensors_keys(p):
            raise CharkitError(
                f"{p}: not a Flux IP-Adapter (no ip_adapter_proj_model.proj.weight); use an XLabs-layout file"
            )
    else:
        parts = os.fspath(path).split("/")
        if p.is_dir() or len(parts) < 3 or os.fspath(path).startswith((".", "/", "~")):
            raise CharkitError(
                f"IP-Adapter {os.fspath(path)!r}: no such weights file; give a local file or org/repo/file"
            )
        check_weights_file(parts[-1], what="IP-Adapter", allow_pickle_weights=allow_pickle_weights)
        folder, subfolder, weight_name = "/".join(parts[:2]), "/".join(parts[2:-1]), parts[-1]
    if _has_ip_adapter(pipe):
        pipe.unload_ip_adapter()
    enc = image_encoder if image_encoder is not None else (p.parent / "image_encoder" if p.is_file() else None)
    if enc is None:
        raise CharkitError(f"IP-Adapter {path}: pass image_encoder=<CLIP vision folder or hub id> for a hub adapter")
    enc_src = resolve_source(enc, what="image encoder", allow_pickle_weights=allow_pickle_weights)
    with loading("image encoder", enc_src):
        model = CLIPVisionModelWithProjection.from_pretrained(
            enc_src.ref, dtype=pipe.dtype, **pretrained_kwargs(allow_pickle_weights=allow_pickle_weights)
        )
    pipe.register_modules(image_encoder=model.to(pipe.device).eval())
    with loading("IP-Adapter", str(path)):
        pipe.load_ip_adapter(
            folder,
            weight_name=weight_name,
            subfolder=subfolder,
            image_encoder_pretrained_model_name_or_path=None,
            **({"local_files_only": True} if hub_offline() else {}),
        )
    pipe.set_ip_adapter_scale(scale)


def _has_ip_adapter(pipe) -> bool:
    return getattr(pipe.transformer, "encoder_hid_proj", None) is not None


def unload_ip_adapter(pipe) -> None:
    """Remove a loaded IP-Adapter (no-op when none is loaded)."""
    if _has_ip_adapter(pipe):
        pipe.unload_ip_adapter()


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
    true_cfg_scale: float = 1.0,
    max_sequence_length: int = 512,
) -> list:
    """Render ``num_images`` PIL images. ``guidance`` is Flux's distilled guidance; ``negative_prompt`` only
    acts with ``true_cfg_scale > 1`` (real classifier-free guidance, twice the compute)."""
    from diffusers import FluxControlNetPipeline

    is_cn = isinstance(pipe, FluxControlNetPipeline)
    SPEC.check_size(width, height)
    if steps < 1 or num_images < 1:
        raise CharkitError(f"steps={steps}, num_images={num_images}: both must be at least 1")
    if isinstance(generator, (list, tuple)) and len(generator) != num_images:
        raise CharkitError(
            f"{len(generator)} generators for {num_images} images: pass one generator per image (or one)"
        )
    wants_ip = ip_adapter_image is not None or ip_adapter_embeds is not None
    if wants_ip and not _has_ip_adapter(pipe):
        raise CharkitError("IP-Adapter input given, but no IP-Adapter is loaded: call load_ip_adapter first")
    if _has_ip_adapter(pipe) and not wants_ip:
        raise CharkitError(
            "an IP-Adapter is loaded: pass ip_adapter_image or ip_adapter_embeds, or unload_ip_adapter(pipe)"
        )
    if control_image is not None and not is_cn:
        raise CharkitError("control image given, but the pipeline has no ControlNet: load it with controlnet=<model>")
    if control_image is None and is_cn:
        raise CharkitError(
            "this pipeline has a ControlNet: pass control_image (or load the pipeline without controlnet)"
        )
    kwargs: dict = {}
    if control_image is not None:
        kwargs.update(control_image=control_image, controlnet_conditioning_scale=float(control_scale))
    if negative_prompt:
        kwargs.update(negative_prompt=negative_prompt, true_cfg_scale=float(true_cfg_scale))
    if ip_adapter_image is not None:
        kwargs["ip_adapter_image"] = ip_adapter_image
    if ip_adapter_embeds is not None:
        kwargs["ip_adapter_image_embeds"] = (
            [ip_adapter_embeds] if isinstance(ip_adapter_embeds, torch.Tensor) else list(ip_adapter_embeds)
        )
    with torch.inference_mode():
        out = pipe(
            prompt=prompt,
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
