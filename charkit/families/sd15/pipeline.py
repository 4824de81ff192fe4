"""SD1.5 pipelines: load (hub id / diffusers folder / single file, optional ControlNet), IP-Adapters, generate.

>>> pipe = load_pipeline("runwayml/stable-diffusion-v1-5", device="cuda", dtype=torch.float16)  # doctest: +SKIP
>>> images = generate(pipe, prompt="a photo of sks woman", width=512, height=512, steps=25,
...                   guidance=7.0, generator=torch.Generator().manual_seed(1))  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ...errors import CharkitError
from ..detect import family_from_keys, safetensors_keys
from ..ip_adapter import faceid_embeds, ip_layout, ip_location  # noqa: F401  (faceid_embeds: family API)
from ..sources import ModelSource, hub_offline, loading, pretrained_kwargs, resolve_source
from ..spec import set_scheduler
from .defaults import SPEC

FAMILY = SPEC.name


# --- load -------------------------------------------------------------------------------------------


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
    """A StableDiffusionPipeline (or StableDiffusionControlNetPipeline when ``controlnet`` is given).

    ``source``: hub id, diffusers folder, or single-file checkpoint (``.safetensors``; pickle formats only
    with ``allow_pickle_weights``). A single file needs ``config=`` (a diffusers SD1.5 folder or hub id that
    supplies the component configs and tokenizer) when offline. ``scheduler`` swaps in a diffusers scheduler
    class by name. The safety checker is not loaded. The progress bar is off (``pipe.set_progress_bar_config``).
    """
    from diffusers import StableDiffusionPipeline

    src = resolve_source(source, what=f"{FAMILY} model", allow_pickle_weights=allow_pickle_weights)
    if src.kind == "file":
        pipe = _load_single_file(src, config=config, dtype=dtype, allow_pickle_weights=allow_pickle_weights)
    else:
        _check_family(src)
        with loading(f"{FAMILY} model", src):
            pipe = StableDiffusionPipeline.from_pretrained(
                src.ref,
                dtype=dtype,
                safety_checker=None,
                requires_safety_checker=False,
                **pretrained_kwargs(allow_pickle_weights=allow_pickle_weights),
            )
    if controlnet is not None:
        pipe = with_controlnet(pipe, controlnet, allow_pickle_weights=allow_pickle_weights)
    if scheduler is not None:
        set_scheduler(pipe, scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _check_family(src: ModelSource) -> None:
    if src.kind != "folder":
        return  # a hub id is checked by diffusers when it loads the class
    from ..detect import detect_family

    found = detect_family(src.ref)
    if found != FAMILY:
        raise CharkitError(f"{src.ref}: this is a {found} model, not {FAMILY}; use model family {found!r}")


def _load_single_file(src: ModelSource, *, config, dtype, allow_pickle_weights: bool):
    from diffusers import StableDiffusionPipeline

    if not src.pickle:  # pickle files are never opened before diffusers loads them (only when allowed)
        found = family_from_keys(safetensors_keys(src.ref), what=src.ref)
        if found != FAMILY:
            raise CharkitError(f"{src.ref}: this is a {found} checkpoint, not {FAMILY}; use model family {found!r}")
    if config is None and hub_offline():
        raise CharkitError(
            f"{src.ref}: a single-file checkpoint needs config= (a diffusers {FAMILY} folder or cached hub id, e.g. "
            "runwayml/stable-diffusion-v1-5) for its component configs and tokenizer while HF_HUB_OFFLINE is set; pass it"
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
        return StableDiffusionPipeline.from_single_file(
            src.ref, dtype=dtype, safety_checker=None, requires_safety_checker=False, **kw
        )


def load_controlnet(
    source: str | os.PathLike, *, dtype: torch.dtype = torch.float32, allow_pickle_weights: bool = False
):
    """A ControlNetModel from a hub id or a diffusers folder."""
    from diffusers import ControlNetModel

    src = resolve_source(source, what="controlnet", allow_pickle_weights=allow_pickle_weights)
    if src.kind == "file":
        raise CharkitError(
            f"controlnet {src.ref}: single-file ControlNets are not supported; pass a diffusers ControlNet folder or hub id"
        )
    with loading("controlnet", src):
        return ControlNetModel.from_pretrained(
            src.ref, dtype=dtype, **pretrained_kwargs(allow_pickle_weights=allow_pickle_weights)
        )


def with_controlnet(pipe, controlnet, *, allow_pickle_weights: bool = False):
    """The ControlNet variant of ``pipe`` sharing its components (``controlnet``: model, folder or hub id)."""
    from diffusers import StableDiffusionControlNetPipeline

    if isinstance(controlnet, (str, os.PathLike)):
        controlnet = load_controlnet(controlnet, dtype=pipe.dtype, allow_pickle_weights=allow_pickle_weights)
    cn_pipe = StableDiffusionControlNetPipeline.from_pipe(pipe, controlnet=controlnet.to(pipe.device))
    cn_pipe.set_progress_bar_config(disable=True)
    return cn_pipe


# --- IP-Adapter ---------------------------------------------------------------------------------------


def load_ip_adapter(
    pipe,
    path: str | os.PathLike,
    *,
    mode: str,
    image_encoder: str | os.PathLike | None = None,
    scale: float = 1.0,
    allow_pickle_weights: bool = False,
) -> None:
    """Load a plain IP-Adapter (``mode="image"``) or an IP-Adapter FaceID (``mode="face"``) into ``pipe``.

    ``path`` is a local weights file, or ``org/repo/sub/folder/file.safetensors`` on the hub. A plain adapter
    needs a CLIP image encoder: ``image_encoder`` (a folder) or ``image_encoder/`` beside the weights file, as
    in the h94/IP-Adapter layout. FaceID needs none: pass 512-d ArcFace embeddings to :func:`generate`
    (see :func:`faceid_embeds`). Any adapter already loaded is replaced.
    """
    from transformers import CLIPVisionModelWithProjection

    if mode not in ("image", "face"):
        raise CharkitError(f"ip_adapter mode {mode!r}: choose 'image' or 'face'")
    SPEC.require("ip_adapter" if mode == "image" else "faceid")
    folder, subfolder, weight_name = ip_location(path, allow_pickle_weights=allow_pickle_weights)
    local = Path(folder, subfolder, weight_name)
    if local.suffix == ".safetensors" and local.is_file():
        layout = ip_layout(safetensors_keys(local))
        if layout != mode:
            raise CharkitError(
                f"{local}: holds {'a FaceID' if layout == 'face' else 'a plain' if layout == 'image' else 'an unsupported'}"
                f" IP-Adapter, but mode {mode!r} was asked; use mode {layout!r}"
                if layout != "other"
                else f"{local}: not a plain or FaceID IP-Adapter (unknown image_proj layout); use an ip-adapter_sd15 / "
                "ip-adapter-faceid_sd15 file"
            )
    if _has_ip_adapter(pipe):
        pipe.unload_ip_adapter()
    encoder_folder = None
    if mode == "image":
        enc = Path(image_encoder) if image_encoder is not None else local.parent / "image_encoder"
        if enc.is_dir():
            with loading("image encoder", str(enc)):
                model = CLIPVisionModelWithProjection.from_pretrained(
                    enc, dtype=pipe.dtype, **pretrained_kwargs(allow_pickle_weights=allow_pickle_weights)
                )
            pipe.register_modules(image_encoder=model.to(pipe.device))
        elif Path(folder).is_dir() or image_encoder is not None:
            raise CharkitError(
                f"IP-Adapter {local}: no image encoder folder at {enc}; pass image_encoder=<CLIP vision folder> "
                "or put it in image_encoder/ beside the weights"
            )
        else:
            encoder_folder = "image_encoder"  # hub layout: <subfolder>/image_encoder
    with loading("IP-Adapter", str(path)):
        pipe.load_ip_adapter(
            folder,
            subfolder=subfolder,
            weight_name=weight_name,
            image_encoder_folder=encoder_folder,
            **({"local_files_only": True} if hub_offline() else {}),
        )
    pipe.set_ip_adapter_scale(scale)


def _has_ip_adapter(pipe) -> bool:
    return (
        getattr(pipe.unet, "encoder_hid_proj", None) is not None
        and pipe.unet.config.encoder_hid_dim_type == "ip_image_proj"
    )


def unload_ip_adapter(pipe) -> None:
    """Remove a loaded IP-Adapter (no-op when none is loaded)."""
    if _has_ip_adapter(pipe):
        pipe.unload_ip_adapter()


# --- generate -----------------------------------------------------------------------------------------


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
    from diffusers import StableDiffusionControlNetPipeline

    kwargs = _check_generate(
        pipe,
        is_controlnet=isinstance(pipe, StableDiffusionControlNetPipeline),
        width=width,
        height=height,
        steps=steps,
        generator=generator,
        num_images=num_images,
        control_image=control_image,
        ip_adapter_image=ip_adapter_image,
        ip_adapter_embeds=ip_adapter_embeds,
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


def _check_generate(
    pipe,
    *,
    is_controlnet,
    width,
    height,
    steps,
    generator,
    num_images,
    control_image,
    ip_adapter_image,
    ip_adapter_embeds,
) -> dict:
    SPEC.check_size(width, height)
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
    kwargs: dict = {}
    wants_ip = ip_adapter_image is not None or ip_adapter_embeds is not None
    if wants_ip and not _has_ip_adapter(pipe):
        raise CharkitError("IP-Adapter input given, but no IP-Adapter is loaded: call load_ip_adapter first")
    if _has_ip_adapter(pipe) and not wants_ip:
        raise CharkitError(
            "an IP-Adapter is loaded: pass ip_adapter_image or ip_adapter_embeds, or unload_ip_adapter(pipe)"
        )
    if ip_adapter_image is not None:
        if getattr(pipe, "image_encoder", None) is None:
            raise CharkitError(
                "this IP-Adapter has no image encoder (FaceID?): pass ip_adapter_embeds instead of an image"
            )
        kwargs["ip_adapter_image"] = ip_adapter_image
    if ip_adapter_embeds is not None:
        kwargs["ip_adapter_image_embeds"] = (
            [ip_adapter_embeds] if isinstance(ip_adapter_embeds, torch.Tensor) else list(ip_adapter_embeds)
        )
    return kwargs
