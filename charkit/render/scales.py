"""Per-scene adapter state that must not leak into the next scene.

A storyboard renders many scenes on one loaded pipeline; one scene may use alice's LoRA at
0.8 and a FaceID scale of 0.6, the next none of them. Like diffusers restoring the attention
processors after a call that swaps them, each setting here is a context manager that records
the exact state it changes and puts it back on exit, even when the scene fails:

* :func:`lora_scales`: which LoRA adapters are active and at what scale (peft layer state);
* :func:`ip_adapter_scale`: the IP-Adapter attention processors' scale;
* :func:`ip_adapter_off`: a scene without IP-Adapter on a pipeline that has one loaded
  renders exactly as the plain pipeline (plain processors, no image projection);
* :func:`scene_scales`: all of them for one scene.

An IP-Adapter FaceID file carries its own LoRA (diffusers' adapter ``faceid_0``): it is part of the adapter, so
it is active exactly in the scenes that use FaceID, next to the characters' LoRAs, and off in every other scene
(diffusers' own ``set_adapters`` / ``load_lora_weights`` switch it off, and ``unload_ip_adapter`` leaves it on).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator


def denoiser(pipe):
    """The pipeline's UNet or transformer (what LoRA and IP-Adapter attach to)."""
    model = getattr(pipe, "unet", None)
    return model if model is not None else pipe.transformer


def lora_layers(pipe) -> list:
    """Every peft LoRA layer of the pipeline's LoRA-loadable components (denoiser, text encoders)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = []
    for name in getattr(pipe, "_lora_loadable_modules", ()):
        model = getattr(pipe, name, None)
        if model is None:
            continue
        layers.extend(m for m in model.modules() if isinstance(m, BaseTunerLayer))
    return layers


def _snapshot_lora(layers) -> list:
    return [(m, m.disable_adapters, list(m.active_adapters), dict(getattr(m, "scaling", {}))) for m in layers]


def _restore_lora(saved) -> None:
    for m, disabled, active, scaling in saved:
        if hasattr(m, "scaling"):
            m.scaling.clear()
            m.scaling.update(scaling)
        m.set_adapter(active)
        m.enable_adapters(not disabled)


@contextlib.contextmanager
def lora_scales(pipe, scales: dict[str, float], *, layers: list | None = None) -> Iterator[None]:
    """Activate exactly the adapters in ``scales`` (adapter name -> scale; 0 = off) for the block.

    With no active adapter the LoRA layers are disabled, which is bit-identical to a pipeline
    that never loaded a LoRA.

    ``layers`` (from :func:`lora_layers`) saves looking them up on every scene.

    >>> with lora_scales(pipe, {"alice": 0.8}):  # doctest: +SKIP
    ...     image = pipe("photo of ohwx").images[0]
    """
    layers = lora_layers(pipe) if layers is None else layers
    if not layers:
        yield
        return
    saved = _snapshot_lora(layers)
    try:
        active = {name: float(s) for name, s in scales.items() if s != 0}
        if active:
            pipe.enable_lora()
            pipe.set_adapters(list(active), list(active.values()))
        else:
            pipe.disable_lora()
        yield
    finally:
        _restore_lora(saved)


def _ip_processors(model) -> list:
    return [p for p in model.attn_processors.values() if "IPAdapter" in type(p).__name__]


@contextlib.contextmanager
def ip_adapter_scale(pipe, scale: float) -> Iterator[None]:
    """Set the loaded IP-Adapter's scale for the block (restored on exit).

    >>> with ip_adapter_scale(pipe, 0.6):  # doctest: +SKIP
    ...     ...
    """
    procs = _ip_processors(denoiser(pipe))
    saved = [(p, copy.copy(p.scale)) for p in procs]
    try:
        pipe.set_ip_adapter_scale(scale)
        yield
    finally:
        for p, s in saved:
            p.scale = s


@contextlib.contextmanager
def ip_adapter_off(pipe, plain_processors: dict) -> Iterator[None]:
    """Render the block as if no IP-Adapter were loaded.

    ``plain_processors`` are the attention processors recorded before the IP-Adapter was
    loaded. The IP processors and image projection are put back on exit.
    """
    model = denoiser(pipe)
    if not _ip_processors(model):
        yield
        return
    saved_procs = dict(model.attn_processors)
    saved_proj = getattr(model, "encoder_hid_proj", None)
    has_type = hasattr(model.config, "encoder_hid_dim_type")  # UNets; Flux transformers have no such field
    saved_type = getattr(model.config, "encoder_hid_dim_type", None)
    try:
        model.set_attn_processor(dict(plain_processors))
        model.encoder_hid_proj = None
        if has_type:
            model.config.encoder_hid_dim_type = None  # what diffusers' unload_ip_adapter does
        yield
    finally:
        model.set_attn_processor(saved_procs)
        model.encoder_hid_proj = saved_proj
        if has_type:
            model.config.encoder_hid_dim_type = saved_type


@contextlib.contextmanager
def scene_scales(
    pipe,
    *,
    lora: dict[str, float] | None = None,
    ip_scale: float | None = None,
    plain_processors: dict | None = None,
    layers: list | None = None,
) -> Iterator[None]:
    """LoRA scales and IP-Adapter state of one scene; ``ip_scale=None`` means no IP-Adapter for it.

    A loaded FaceID adapter's own LoRA is active (at 1.0, as diffusers loads it) exactly when the scene uses the
    IP-Adapter. ``layers`` must be looked up after the IP-Adapter was loaded (it may add LoRA layers).

    >>> with scene_scales(pipe, lora={"alice": 1.0}, ip_scale=0.6):  # doctest: +SKIP
    ...     images = generate(pipe, ...)
    """
    from ..families.ip_adapter import faceid_adapters

    scales = dict(lora or {})
    if ip_scale is not None and getattr(pipe, "unet", None) is not None:
        scales.update({name: 1.0 for name in faceid_adapters(pipe)})
    with contextlib.ExitStack() as stack:
        stack.enter_context(lora_scales(pipe, scales, layers=layers))
        if ip_scale is None:
            if plain_processors is not None:
                stack.enter_context(ip_adapter_off(pipe, plain_processors))
        else:
            stack.enter_context(ip_adapter_scale(pipe, ip_scale))
        yield
