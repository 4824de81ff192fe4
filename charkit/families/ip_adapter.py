"""IP-Adapter pieces common to the UNet families (sd15, sdxl): where the weights are, which
kind of adapter a file holds, and FaceID embeddings in the form diffusers expects.

Everything family-specific (pipeline classes, supported modes, error texts naming the family's
files) stays in ``<family>/pipeline.py``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import CharkitError


def ip_layout(keys: Sequence[str]) -> str:
    """'image' (plain IP-Adapter), 'face' (FaceID) or 'other', from the weights' key names."""
    if "image_proj.proj.weight" in keys:
        return "image"
    if "image_proj.norm.weight" in keys and "image_proj.proj.0.weight" in keys:
        return "face"
    return "other"


def ip_location(path, *, allow_pickle_weights: bool) -> tuple[str, str, str]:
    """(folder or repo id, subfolder, weight file name) for diffusers' load_ip_adapter."""
    from .sources import check_weights_file

    p = Path(path).expanduser()
    if p.is_file():
        check_weights_file(p, what="IP-Adapter", allow_pickle_weights=allow_pickle_weights)
        return str(p.parent.resolve()), "", p.name
    text = os.fspath(path)
    parts = text.split("/")
    if p.is_dir() or len(parts) < 3 or text.startswith((".", "/", "~")):
        raise CharkitError(
            f"IP-Adapter {text!r}: no such weights file; give a local .safetensors file or org/repo/path/file.safetensors"
        )
    check_weights_file(parts[-1], what="IP-Adapter", allow_pickle_weights=allow_pickle_weights)
    return "/".join(parts[:2]), "/".join(parts[2:-1]), parts[-1]


def faceid_embeds(
    embedding, *, guidance: float, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> list[torch.Tensor]:
    """FaceID conditioning for :func:`generate`: one 512-d ArcFace embedding (or ``(n, 512)`` for n faces).

    Returns diffusers' ``ip_adapter_image_embeds`` form: a list with one 3-D tensor, the zero (negative) half
    first when classifier-free guidance is on (``guidance > 1``).
    """
    e = torch.as_tensor(embedding, dtype=torch.float32)
    if e.ndim == 1:
        e = e[None]
    if e.ndim != 2 or e.shape[-1] != 512:
        raise CharkitError(
            f"FaceID embedding has shape {tuple(e.shape)}: need 512 values (insightface buffalo_l ArcFace); "
            "dlib 128-d descriptors cannot condition FaceID"
        )
    e = e[None]  # (1, n, 512)
    if guidance > 1:
        e = torch.cat([torch.zeros_like(e), e])
    return [e.to(device=device, dtype=dtype)]
