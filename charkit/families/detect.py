"""Which family a model belongs to, from a single file's tensor names, a diffusers folder or a hub id.

Single files are inspected through the safetensors header only (no tensor is read); pickle files
are never opened: pass their key names if you have them from a trusted loader.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import CharkitError
from .registry import FAMILIES, specs
from .sources import check_weights_file, hub_offline, resolve_source


def _key_rules() -> list[tuple[str, tuple[str, ...]]]:
    # (family, tensor-name fragments) in each spec's detection priority: SDXL checkpoints also hold
    # "model.diffusion_model.input_blocks", so their second text encoder decides first.
    return [(sp.name, sp.single_file_keys) for sp in sorted(specs(), key=lambda sp: sp.detect_priority)]


def _pipeline_prefixes() -> list[tuple[str, str]]:
    # diffusers pipeline class-name prefixes -> family, most specific (longest) first
    return sorted(((sp.pipeline_prefix, sp.name) for sp in specs()), key=lambda t: -len(t[0]))


def family_from_keys(keys: Iterable[str], *, what: str = "checkpoint") -> str:
    """Family of an original-layout (or diffusers-layout transformer) state dict, from its key names.

    >>> family_from_keys(["model.diffusion_model.input_blocks.0.0.weight"])
    'sd15'
    """
    keys = list(keys)
    for family, fragments in _key_rules():
        if any(f in k for k in keys for f in fragments):
            return family
    if any(k.startswith("conditioner.embedders.0.") for k in keys):
        raise CharkitError(
            f"{what}: looks like an SDXL refiner, which charkit does not render with; use an SDXL base model"
        )
    # diffusers-layout single files (a bare UNet / transformer state dict)
    if any(k.startswith("transformer_blocks.") and ".attn.add_q_proj." in k for k in keys):
        return "flux" if any(k.startswith("single_transformer_blocks.") for k in keys) else "sd3"
    if any(k.startswith("down_blocks.") for k in keys):
        raise CharkitError(
            f"{what}: holds a bare diffusers UNet, not a full checkpoint; pass its diffusers pipeline folder instead"
        )
    raise CharkitError(
        f"{what}: unrecognised checkpoint layout (no {'/'.join(FAMILIES)} keys); pass a diffusers folder or hub id"
    )


def family_from_pipeline_class(class_name: str, *, what: str = "model") -> str:
    for prefix, family in _pipeline_prefixes():
        if class_name.startswith(prefix):
            return family
    raise CharkitError(
        f"{what}: pipeline class {class_name!r} is not one of charkit's families ({', '.join(FAMILIES)})"
    )


def safetensors_keys(path: str | os.PathLike) -> list[str]:
    """Tensor names from a .safetensors header (reads only the header)."""
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt", device="cpu") as f:
            return list(f.keys())
    except Exception as e:  # safetensors raises its own error type for a corrupt header
        raise CharkitError(f"{path}: not a readable .safetensors file ({e}); re-download or re-export it") from None


def detect_family(path_or_keys: str | os.PathLike | Iterable[str], *, allow_pickle_weights: bool = False) -> str:
    """The family name (``"sd15"``, ``"sdxl"``, ...) of a single file, a diffusers folder, a hub id or a list of key names.

    >>> detect_family("models/realisticVision.safetensors")  # doctest: +SKIP
    'sd15'
    """
    if not isinstance(path_or_keys, (str, os.PathLike)):
        return family_from_keys(path_or_keys)
    src = resolve_source(path_or_keys, allow_pickle_weights=allow_pickle_weights)
    if src.kind == "file":
        if src.pickle:
            # Even when pickle weights are allowed, detection never unpickles: ask for the family instead.
            check_weights_file(src.ref, allow_pickle_weights=allow_pickle_weights)
            raise CharkitError(
                f"{src.ref}: the family of a pickle checkpoint cannot be detected without unpickling it; "
                "name the family explicitly (e.g. --model-family sd15) or convert it to .safetensors"
            )
        return family_from_keys(safetensors_keys(src.ref), what=src.ref)
    if src.kind == "folder":
        index = Path(src.ref) / "model_index.json"
        if not index.is_file():
            raise CharkitError(f"{src.ref}: no model_index.json, so this is not a diffusers pipeline folder")
        return family_from_pipeline_class(json.loads(index.read_text("utf-8")).get("_class_name", ""), what=src.ref)
    from huggingface_hub import hf_hub_download

    try:
        index = hf_hub_download(src.ref, "model_index.json", local_files_only=hub_offline())
    except Exception as e:
        raise CharkitError(
            f"{src.ref}: cannot read its model_index.json ({type(e).__name__}); download the model first or name its family"
        ) from None
    return family_from_pipeline_class(json.loads(Path(index).read_text("utf-8")).get("_class_name", ""), what=src.ref)
