"""Family-agnostic loading: a model source becomes a diffusers pipeline of the family its spec names.

Each family's ``pipeline.py`` calls these with its :class:`~charkit.families.spec.FamilySpec`; the
diffusers classes come from the spec (``pipeline_class``, ``controlnet_class``, ...), so the same
code serves every family and nothing here knows a family by name.
"""

from __future__ import annotations

import os

import torch

from ..errors import CharkitError
from .detect import family_from_keys, safetensors_keys
from .sources import ModelSource, hub_offline, loading, pretrained_kwargs, resolve_source
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
        if hub_offline():
            raise CharkitError(
                f"{src.ref}: a single-file {spec.name} checkpoint needs config= (a diffusers {spec.name} folder or "
                f"cached hub id, e.g. {spec.example_model}) for its component configs and tokenizers while "
                "HF_HUB_OFFLINE is set; pass it"
            )
        return None
    cfg = resolve_source(config, what="config")
    if cfg.kind == "file":
        raise CharkitError(f"config {cfg.ref}: must be a diffusers folder or hub id, not a weights file")
    return cfg.ref


def load_pretrained(
    spec: FamilySpec,
    source: str | os.PathLike,
    *,
    dtype: torch.dtype,
    allow_pickle_weights: bool,
    config: str | os.PathLike | None = None,
    **extra,
):
    """The family's text-to-image pipeline from a hub id, a diffusers folder or a single file (``extra``: class kwargs)."""
    src = resolve_source(source, what=f"{spec.name} model", allow_pickle_weights=allow_pickle_weights)
    check_source_family(spec, src)
    cls = _diffusers_class(spec.pipeline_class)
    if src.kind == "file":
        kw = {}
        cfg = config_source(spec, src, config)
        if cfg is not None:
            kw["config"] = cfg
        if hub_offline():
            kw["local_files_only"] = True
        with loading(f"{spec.name} single file", src):
            return cls.from_single_file(src.ref, dtype=dtype, **extra, **kw)
    with loading(f"{spec.name} model", src):
        return cls.from_pretrained(
            src.ref, dtype=dtype, **extra, **pretrained_kwargs(allow_pickle_weights=allow_pickle_weights)
        )


def finish_pipeline(pipe, *, device, scheduler: str | None):
    """Scheduler swap, progress bar off, onto ``device``: the last step of every family's ``load_pipeline``."""
    from .spec import set_scheduler

    if scheduler is not None:
        set_scheduler(pipe, scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_controlnet(
    spec: FamilySpec,
    source: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    allow_pickle_weights: bool = False,
):
    """The family's ControlNet model (``spec.controlnet_class``) from a hub id or a diffusers folder."""
    spec.require("controlnet")
    src = resolve_source(source, what="controlnet", allow_pickle_weights=allow_pickle_weights)
    if src.kind == "file":
        raise CharkitError(
            f"controlnet {src.ref}: single-file ControlNets are not supported; pass a diffusers ControlNet folder or hub id"
        )
    with loading("controlnet", src):
        return _diffusers_class(spec.controlnet_class).from_pretrained(
            src.ref, dtype=dtype, **pretrained_kwargs(allow_pickle_weights=allow_pickle_weights)
        )


def with_controlnet(spec: FamilySpec, pipe, controlnet, *, allow_pickle_weights: bool = False):
    """The ControlNet variant of ``pipe`` sharing its components (``controlnet``: model, folder or hub id)."""
    if isinstance(controlnet, (str, os.PathLike)):
        controlnet = load_controlnet(spec, controlnet, dtype=pipe.dtype, allow_pickle_weights=allow_pickle_weights)
    cn_pipe = _diffusers_class(spec.controlnet_pipeline_class).from_pipe(pipe, controlnet=controlnet.to(pipe.device))
    cn_pipe.set_progress_bar_config(disable=True)
    return cn_pipe


def is_controlnet_pipeline(spec: FamilySpec, pipe) -> bool:
    return spec.controlnet_pipeline_class is not None and type(pipe).__name__ == spec.controlnet_pipeline_class
