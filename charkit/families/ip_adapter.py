"""IP-Adapter pieces common to the UNet families: where the weights are, which kind of adapter a
file holds, the loader itself, and FaceID embeddings in the form diffusers expects.

The family comes in as its spec (supported modes, file names in error texts); the families'
``pipeline.py`` expose :func:`load_unet_ip_adapter` as their ``load_ip_adapter``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import CharkitError
from .spec import FamilySpec


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


def has_unet_ip_adapter(pipe) -> bool:
    """True when an IP-Adapter (plain or FaceID) is loaded into the pipeline's UNet."""
    unet = pipe.unet
    return getattr(unet, "encoder_hid_proj", None) is not None and unet.config.encoder_hid_dim_type == "ip_image_proj"


def _check_layout(spec: FamilySpec, local: Path, mode: str) -> None:
    from .detect import safetensors_keys

    if local.suffix != ".safetensors" or not local.is_file():
        return
    layout = ip_layout(safetensors_keys(local))
    if layout == mode:
        return
    if layout == "other":
        raise CharkitError(
            f"{local}: not a plain or FaceID IP-Adapter (unknown image_proj layout); use an ip-adapter_{spec.name} / "
            f"ip-adapter-faceid_{spec.name} file"
        )
    kind = "a FaceID" if layout == "face" else "a plain"
    raise CharkitError(f"{local}: holds {kind} IP-Adapter, but mode {mode!r} was asked; use mode {layout!r}")


def load_unet_ip_adapter(
    spec: FamilySpec,
    pipe,
    path: str | os.PathLike,
    *,
    mode: str,
    image_encoder: str | os.PathLike | None = None,
    scale: float = 1.0,
    allow_pickle_weights: bool = False,
) -> None:
    """Load a plain IP-Adapter (``mode="image"``) or an IP-Adapter FaceID (``mode="face"``) into a UNet pipeline.

    ``path`` is a local weights file, or ``org/repo/sub/folder/file.safetensors`` on the hub. A plain adapter
    needs a CLIP image encoder: ``image_encoder`` (a folder) or ``image_encoder/`` beside the weights file, as
    in the h94/IP-Adapter layout. FaceID needs none: pass 512-d ArcFace embeddings to ``generate``
    (see :func:`faceid_embeds`). Any adapter already loaded is replaced.
    """
    from transformers import CLIPVisionModelWithProjection

    from .sources import hub_offline, loading, pretrained_kwargs

    if mode not in ("image", "face"):
        raise CharkitError(f"ip_adapter mode {mode!r}: choose 'image' or 'face'")
    spec.require("ip_adapter" if mode == "image" else "faceid")
    folder, subfolder, weight_name = ip_location(path, allow_pickle_weights=allow_pickle_weights)
    local = Path(folder, subfolder, weight_name)
    _check_layout(spec, local, mode)
    if has_unet_ip_adapter(pipe):
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


def unload_unet_ip_adapter(pipe) -> None:
    """Remove a loaded IP-Adapter (no-op when none is loaded)."""
    if has_unet_ip_adapter(pipe):
        pipe.unload_ip_adapter()
