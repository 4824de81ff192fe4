"""Family-agnostic loading: a model source becomes a diffusers pipeline of the family its spec names.

Each family's ``pipeline.py`` calls these with its :class:`~charkit.families.spec.FamilySpec`; the
diffusers classes come from the spec (``pipeline_class``, ``controlnet_class``, ...), so the same
code serves every family and nothing here knows a family by name.

Pipeline variants share the loaded components (``from_pipe``): the ControlNet variant, the union-ControlNet
variant, and the img2img variants of the hires pass (:func:`pipeline_variant`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import CharkitError
from .detect import family_from_keys, safetensors_keys
from .sources import ModelSource, hub_offline, loading, pretrained_kwargs, quiet_notices, resolve_source
from .spec import FamilySpec


def _diffusers_class(name: str):
    import diffusers

    return getattr(diffusers, name)


def check_source_family(spec: FamilySpec, src: ModelSource) -> None:
    """Refuse a local folder or single file of another family before diffusers loads it (hub ids: diffusers checks)."""
    if src.kind == "hub" or src.pickle:  # a pickle is never opened before diffusers loads it (only when allowed)
        return
    from .detect import detect_family

    found = family_from_keys(safetensors_keys(src.ref), what=src.ref) if src.kind == "file" else detect_family(src.ref)
    if found != spec.name:
        kind = "checkpoint" if src.kind == "file" else "model"
        raise CharkitError(f"{src.ref}: this is a {found} {kind}, not {spec.name}; use model family {found!r}")


def config_source(spec: FamilySpec, src: ModelSource, config: str | os.PathLike | None) -> str | None:
    """The diffusers folder / hub id that supplies a single file's configs and tokenizers (required offline)."""
    if config is None:
        if hub_offline() or spec.original_layout is not None:
            why = "while HF_HUB_OFFLINE is set" if spec.original_layout is None else "(its file holds weights only)"
            raise CharkitError(
                f"{src.ref}: a single-file {spec.name} checkpoint needs config= (a diffusers {spec.name} folder or "
                f"cached hub id, e.g. {spec.example_model}) for its component configs and tokenizers {why}; pass it"
            )
        return None
    cfg = resolve_source(config, what="config")
    if cfg.kind == "file":
        raise CharkitError(f"config {cfg.ref}: must be a diffusers folder or hub id, not a weights file")
    return cfg.ref


def load_vae(
    spec: FamilySpec,
    source: str | os.PathLike,
    *,
    dtype: torch.dtype,
    config: str | None = None,
    allow_pickle_weights: bool = False,
):
    """A VAE to use instead of the model's own (``vae:``, e.g. madebyollin/sdxl-vae-fp16-fix): a diffusers VAE
    folder, a hub id, or a single ``.safetensors`` file in the original layout (``config``: the model's folder,
    whose ``vae/config.json`` describes it)."""
    from diffusers import AutoencoderKL

    src = resolve_source(source, what="vae", allow_pickle_weights=allow_pickle_weights)
    with loading("vae", src):
        if src.kind == "file":
            kw = {"config": config, "subfolder": "vae"} if config is not None else {}
            if hub_offline():
                kw["local_files_only"] = True
            return AutoencoderKL.from_single_file(src.ref, dtype=dtype, **kw)
        if src.kind == "folder" and (Path(src.ref) / "vae" / "config.json").is_file():
            # a whole pipeline folder: take its VAE
            return AutoencoderKL.from_pretrained(
                src.ref, subfolder="vae", dtype=dtype, **pretrained_kwargs(allow_pickle_weights=allow_pickle_weights)
            )
        return AutoencoderKL.from_pretrained(
            src.ref, dtype=dtype, **pretrained_kwargs(allow_pickle_weights=allow_pickle_weights)
        )


def extra_components(
    spec: FamilySpec,
    *,
    dtype: torch.dtype,
    vae=None,
    t5: bool = True,
    config: str | None = None,
    allow_pickle_weights: bool = False,
) -> dict:
    """Components that replace the model's own: ``vae`` (a model, folder, hub id or single file) and, with
    ``t5=False``, no T5 encoder (SD3 renders from its two CLIP encoders; families that need T5 refuse)."""
    out: dict = {}
    if vae is not None:
        out["vae"] = (
            vae
            if isinstance(vae, torch.nn.Module)
            else load_vae(spec, vae, dtype=dtype, config=config, allow_pickle_weights=allow_pickle_weights)
        )
    if not t5:
        spec.require("without_t5")
        out[spec.t5_encoder] = None
        out[spec.t5_encoder.replace("text_encoder", "tokenizer")] = None
    return out


def load_pretrained(
    spec: FamilySpec,
    source: str | os.PathLike,
    *,
    dtype: torch.dtype,
    allow_pickle_weights: bool,
    config: str | os.PathLike | None = None,
    variant: str | None = None,
    components: dict | None = None,
    **extra,
):
    """The family's text-to-image pipeline from a hub id, a diffusers folder or a single file.

    ``variant`` picks ``*.fp16.safetensors`` files (folders and hub ids); ``components`` replace loaded ones
    (``vae=``, ``text_encoder_3=None``); ``extra`` are pipeline class kwargs. Flux / SD3 single files go
    through :func:`~charkit.families.singlefile.load_original_single_file` (transformer-only files load).
    """
    src = resolve_source(source, what=f"{spec.name} model", allow_pickle_weights=allow_pickle_weights)
    check_source_family(spec, src)
    cls = _diffusers_class(spec.pipeline_class)
    components = dict(components or {})
    if src.kind == "file":
        cfg = config_source(spec, src, config)
        if variant is not None:
            raise CharkitError(
                f"{src.ref}: variant {variant!r} is for diffusers folders and hub ids, not a single file"
            )
        with loading(f"{spec.name} single file", src):
            if spec.original_layout is not None:
                from .singlefile import load_original_single_file

                return load_original_single_file(spec, src.ref, config=cfg, dtype=dtype, components=components)
            kw = {"config": cfg} if cfg is not None else {}
            if hub_offline():
                kw["local_files_only"] = True
            return cls.from_single_file(src.ref, dtype=dtype, **components, **extra, **kw)
    kw = {"variant": variant} if variant is not None else {}
    with loading(f"{spec.name} model", src):
        return cls.from_pretrained(
            src.ref,
            dtype=dtype,
            **components,
            **extra,
            **kw,
            **pretrained_kwargs(allow_pickle_weights=allow_pickle_weights),
        )


def finish_pipeline(pipe, *, device, scheduler: str | None):
    """Scheduler swap, progress bar off, onto ``device``: the last step of every family's ``load_pipeline``."""
    from .spec import set_scheduler

    if scheduler is not None:
        set_scheduler(pipe, scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def is_union_controlnet(source: str | os.PathLike) -> bool:
    """True for a union ControlNet folder (xinsir SDXL: ``num_control_type``; InstantX Flux: ``num_mode``)."""
    cfg = Path(source) / "config.json"
    if not cfg.is_file():
        try:
            from huggingface_hub import hf_hub_download

            cfg = Path(hf_hub_download(str(source), "config.json", local_files_only=hub_offline()))
        except Exception:  # not cached / not a hub id: the load step reports it
            return False
    data = json.loads(cfg.read_text("utf-8"))
    return bool(data.get("num_control_type")) or bool(data.get("num_mode"))


def load_controlnet(
    spec: FamilySpec,
    source: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    allow_pickle_weights: bool = False,
):
    """The family's ControlNet model (``spec.controlnet_class``, or ``union_controlnet_class`` for a union
    ControlNet) from a hub id or a diffusers folder."""
    spec.require("controlnet")
    src = resolve_source(source, what="controlnet", allow_pickle_weights=allow_pickle_weights)
    if src.kind == "file":
        raise CharkitError(
            f"controlnet {src.ref}: single-file ControlNets are not supported; pass a diffusers ControlNet folder or hub id"
        )
    name = spec.controlnet_class
    if is_union_controlnet(src.ref) and spec.union_controlnet_class is not None:
        name = spec.union_controlnet_class
    with loading("controlnet", src):
        return _diffusers_class(name).from_pretrained(
            src.ref, dtype=dtype, **pretrained_kwargs(allow_pickle_weights=allow_pickle_weights)
        )


def is_union(controlnet) -> bool:
    """True for a union ControlNet model (its pipelines need ``control_mode``)."""
    cfg = getattr(controlnet, "config", {})
    return bool(cfg.get("num_control_type")) or bool(cfg.get("num_mode"))


def pipeline_variant(spec: FamilySpec, pipe, *, controlnet=None, img2img: bool = False):
    """The pipeline class that runs ``pipe``'s components with ``controlnet`` (or none), text-to-image or
    img2img (the hires pass), built with ``from_pipe`` (shared components, LoRAs and IP-Adapter).

    >>> hires = pipeline_variant(get_spec("sd15"), pipe, img2img=True)  # doctest: +SKIP
    """
    union = controlnet is not None and is_union(controlnet) and spec.union_pipeline_class is not None
    if controlnet is None:
        name = spec.img2img_pipeline_class if img2img else spec.pipeline_class
    elif union:
        name = spec.union_img2img_pipeline_class if img2img else spec.union_pipeline_class
    else:
        name = spec.controlnet_img2img_pipeline_class if img2img else spec.controlnet_pipeline_class
    if name is None:
        what = "hires (img2img)" + (" with a ControlNet" if controlnet is not None else "")
        raise CharkitError(f"model family {spec.name!r} has no {what} pipeline; drop hires for this scene")
    extra = {"controlnet": controlnet.to(pipe.device)} if controlnet is not None else {}
    variant = from_pipe(_diffusers_class(name), pipe, **extra)
    variant.set_progress_bar_config(disable=True)
    return variant


def from_pipe(cls, pipe, **components):
    """``cls.from_pipe(pipe, **components)`` (shared components) without diffusers' misleading notices."""
    with quiet_notices():
        return cls.from_pipe(pipe, **components)


def with_controlnet(spec: FamilySpec, pipe, controlnet, *, allow_pickle_weights: bool = False):
    """The ControlNet variant of ``pipe`` sharing its components (``controlnet``: model, folder or hub id)."""
    if isinstance(controlnet, (str, os.PathLike)):
        controlnet = load_controlnet(spec, controlnet, dtype=pipe.dtype, allow_pickle_weights=allow_pickle_weights)
    return pipeline_variant(spec, pipe, controlnet=controlnet)


def pipeline_kind(spec: FamilySpec, pipe) -> tuple[bool, bool, bool]:
    """``(controlnet, union, img2img)`` of a pipeline of this family."""
    name = type(pipe).__name__
    controlnet = getattr(pipe, "controlnet", None)
    img2img = name in (
        spec.img2img_pipeline_class,
        spec.controlnet_img2img_pipeline_class,
        spec.union_img2img_pipeline_class,
    )
    return controlnet is not None, controlnet is not None and is_union(controlnet), img2img


def is_controlnet_pipeline(spec: FamilySpec, pipe) -> bool:
    return pipeline_kind(spec, pipe)[0]
