"""LoRA files: the diffusers/peft layout and the kohya layout, with charkit's metadata.

* **diffusers/peft** (``best.safetensors``): keys ``unet.<module>.lora_A.weight`` /
  ``transformer.<module>.lora_B.weight`` / ``text_encoder.text_model.<module>...``, and diffusers'
  ``lora_adapter_metadata`` (rank, alpha, targets) so ``pipe.load_lora_weights`` rebuilds the exact
  adapter. What ``charkit render`` loads.
* **kohya** (``best.kohya.safetensors``): kohya sd-scripts' own layout, by
  :func:`charkit.families.loraformats.to_kohya`: SD1.5/SDXL ``lora_unet_<module>`` (+ ``lora_te_`` /
  ``lora_te1_`` / ``lora_te2_``); Flux in Black Forest Labs' module names with fused qkv
  (``lora_unet_double_blocks_0_img_attn_qkv``, ``lora_unet_single_blocks_0_linear1``) exactly as
  sd-scripts' ``lora_flux.py`` writes them; SD3 in Stability's names (``lora_unet_joint_blocks_0_x_block_attn_qkv``).

Which tool loads which file (docs/training.md has the table): diffusers reads both files of SD1.5, SDXL and
Flux; for SD3 stock diffusers reads only ``best.safetensors`` (ComfyUI reads both); A1111/Forge read the kohya
files. :func:`load_lora` (charkit's loader) reads every one of them and checks that the adapter attached.

Both carry ``charkit.*`` metadata (family, base model, trigger, rank, alpha, steps, identity score) and
the SAI ``modelspec.*`` keys that ComfyUI and Civitai read (architecture, title, trigger phrase,
resolution, date); the kohya file also the usual ``ss_*`` keys.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .. import __version__
from ..errors import CharkitError
from ..families import get_spec
from ..paths import atomic_write_bytes, sha256_file

LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # diffusers' key (diffusers.loaders.lora_base)


@dataclass
class ExportResult:
    diffusers: Path
    kohya: Path | None
    sha256: dict[str, str]


# ------------------------------------------------------------------------------------ from the model


def adapter_layers(pipe, spec, *, text_encoder: bool) -> dict[str, dict[str, torch.Tensor]]:
    """``prefix -> peft state dict`` of the trained adapters (adapter name stripped).

    Text-encoder keys get the ``text_model.`` prefix that CLIP LoRA files have always used
    (transformers >= 5.6 dropped it from the module names; diffusers' loader accepts both).
    """
    from peft import get_peft_model_state_dict

    out = {spec.denoiser: get_peft_model_state_dict(getattr(pipe, spec.denoiser))}
    if text_encoder:
        for name in spec.lora_text_encoders:
            sd = get_peft_model_state_dict(getattr(pipe, name))
            out[name] = {(k if k.startswith("text_model.") else f"text_model.{k}"): v for k, v in sd.items()}
    return out


def adapter_configs(pipe, spec, *, text_encoder: bool) -> dict[str, dict]:
    """``prefix -> LoraConfig dict`` (what diffusers stores as ``lora_adapter_metadata``)."""
    names = [spec.denoiser] + (list(spec.lora_text_encoders) if text_encoder else [])
    return {n: _config_json(getattr(pipe, n).peft_config["default"].to_dict()) for n in names}


def _config_json(cfg: dict) -> dict:
    out = {}
    for k, v in cfg.items():
        if isinstance(v, set):
            v = sorted(v)
        elif hasattr(v, "value"):  # enums (peft_type)
            v = v.value
        out[k] = v
    return out


def pack_diffusers(layers: dict[str, dict[str, torch.Tensor]], configs: dict[str, dict]) -> tuple[dict, dict[str, str]]:
    """One flat state dict with ``<prefix>.`` keys, and the safetensors metadata diffusers reads back."""
    sd = {
        f"{prefix}.{k}": v.detach().to("cpu", torch.float32).contiguous()
        for prefix, d in layers.items()
        for k, v in d.items()
    }
    meta = {f"{prefix}.{k}": v for prefix, cfg in configs.items() for k, v in cfg.items()}
    return sd, {"format": "pt", LORA_ADAPTER_METADATA_KEY: json.dumps(meta, indent=2, sort_keys=True)}


def unpack_diffusers(state_dict: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Inverse of :func:`pack_diffusers` for the state-dict part (prefix = text before the first dot)."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in state_dict.items():
        prefix, rest = k.split(".", 1)
        out.setdefault(prefix, {})[rest] = v
    return out


def charkit_metadata(
    *,
    family: str,
    base_model: str,
    trigger: str,
    rank: int,
    alpha: float,
    steps: int,
    identity: float | None,
    adherence: float | None = None,
    run: str = "",
    choice: str = "",
) -> dict[str, str]:
    """``charkit.*`` keys recorded in every exported file (strings, as safetensors requires)."""
    return {
        "charkit.version": __version__,
        "charkit.family": family,
        "charkit.base_model": str(base_model),
        "charkit.trigger": trigger,
        "charkit.rank": str(rank),
        "charkit.alpha": f"{alpha:g}",
        "charkit.steps": str(steps),
        "charkit.identity": "unmeasured" if identity is None else f"{identity:.4f}",
        "charkit.adherence": "unavailable" if adherence is None else f"{adherence:.4f}",
        "charkit.run": run,
        "charkit.choice": choice,
    }


def modelspec_metadata(
    *, family: str, title: str, trigger: str, resolution: int, description: str = "", date: str | None = None
) -> dict[str, str]:
    """The SAI model spec keys (sd-scripts' ``sai_model_spec``) that ComfyUI and Civitai read from a LoRA file.

    >>> m = modelspec_metadata(family="flux", title="alice", trigger="ohwx", resolution=512, date="2026-01-01")
    >>> m["modelspec.architecture"], m["modelspec.resolution"], m["modelspec.trigger_phrase"]
    ('flux-1-dev/lora', '512x512', 'ohwx')
    """
    import datetime as dt

    spec = get_spec(family)
    return {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": f"{spec.modelspec_architecture}/lora",
        "modelspec.implementation": spec.modelspec_implementation,
        "modelspec.title": title,
        "modelspec.trigger_phrase": trigger,
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.date": date or dt.date.today().isoformat(),
        "modelspec.description": description,
        "modelspec.prediction_type": "flow" if spec.is_flow else spec.prediction,
    }


def kohya_metadata(meta: dict[str, str], *, family: str, rank: int, alpha: float, steps: int) -> dict[str, str]:
    return {
        **meta,
        "ss_network_module": "networks.lora_flux" if family == "flux" else "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": f"{alpha:g}",
        "ss_base_model_version": get_spec(family).kohya_base,
        "ss_max_train_steps": str(steps),
        "ss_training_comment": "trained with charkit",
    }


# -------------------------------------------------------------------------------------------- files


def write_lora(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write a safetensors LoRA atomically."""
    path = Path(path)
    atomic_write_bytes(path, st_save({k: v.contiguous() for k, v in state_dict.items()}, metadata=metadata))
    return path


def read_lora(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict and metadata of a safetensors LoRA (pickle formats are refused)."""
    p = Path(path)
    if p.suffix.lower() != ".safetensors":
        raise CharkitError(f"{p}: LoRA files must be .safetensors (pickle formats can run code when loaded)")
    if not p.is_file():
        raise CharkitError(f"{p}: no such LoRA file")
    with safe_open(str(p), framework="pt") as f:
        meta = f.metadata() or {}
    return st_load(p.read_bytes()), meta


def is_kohya(state_dict: dict) -> bool:
    return any(k.endswith(".lora_down.weight") for k in state_dict)


def export_lora(
    lora_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    family: str,
    meta: dict[str, str],
    rank: int,
    alpha: float,
    steps: int,
    kohya: bool = True,
    name: str = "best",
) -> ExportResult:
    """Write ``<name>.safetensors`` (diffusers/peft) and ``<name>.kohya.safetensors`` from a checkpoint's LoRA file."""
    from ..families.loraformats import to_kohya

    sd, file_meta = read_lora(lora_file)
    out_dir = Path(out_dir)
    diffusers_path = write_lora(out_dir / f"{name}.safetensors", sd, {**file_meta, **meta})
    kohya_path = None
    if kohya:
        kohya_path = write_lora(
            out_dir / f"{name}.kohya.safetensors",
            to_kohya(family, unpack_diffusers(sd), alpha=alpha),
            kohya_metadata(meta, family=family, rank=rank, alpha=alpha, steps=steps),
        )
    sums = {p.name: sha256_file(p) for p in (diffusers_path, kohya_path) if p is not None}
    return ExportResult(diffusers=diffusers_path, kohya=kohya_path, sha256=sums)


def load_lora(pipe, path: str | os.PathLike, *, family: str, adapter_name: str = "charkit"):
    """Load a charkit LoRA (either file) into ``pipe`` through :func:`charkit.families.loraformats.load_lora`
    (diffusers' own loader where it reads the layout, charkit's conversion where it does not), verified.

    >>> load_lora(pipe, "characters/alice/loras/sd3/run/best.kohya.safetensors", family="sd3")  # doctest: +SKIP
    """
    from ..families.loraformats import load_lora as load_any

    return load_any(pipe, path, family=family, adapter_name=adapter_name)


_KOHYA_KEY = re.compile(r"^lora_(unet|te\d?)_[A-Za-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)$")


def looks_like_kohya_key(key: str) -> bool:
    """True for ``lora_unet_<module>.lora_down.weight`` style keys (kohya sd-scripts' names; used by tests)."""
    return bool(_KOHYA_KEY.match(key))
