"""Family-agnostic checks of a ``generate`` call: sizes, counts, and which conditioning fits the pipeline.

Every family's ``generate`` starts with :func:`check_generate`, so a control image without a
ControlNet or an IP-Adapter input without an adapter is the same one-line error in every family.
"""

from __future__ import annotations

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
) -> dict:
    """Validate a generate call; returns the IP-Adapter keyword arguments for the diffusers pipeline.

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
    kwargs: dict = {}
    if ip_adapter_image is not None:
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
