"""LoRA files: the diffusers/peft layout and the kohya layout, with charkit's metadata.

* **diffusers/peft** (``best.safetensors``): keys ``unet.<module>.lora_A.weight`` /
  ``transformer.<module>.lora_B.weight`` / ``text_encoder.text_model.<module>...``, and diffusers'
  ``lora_adapter_metadata`` (rank, alpha, targets) so ``pipe.load_lora_weights`` rebuilds the exact
  adapter. What ``charkit render`` loads.
* **kohya** (``best.kohya.safetensors``): ``lora_unet_<module>.lora_down.weight`` / ``.lora_up.weight`` /
  ``.alpha`` (and ``lora_te_`` / ``lora_te1_`` / ``lora_te2_`` for text encoders) for A1111, ComfyUI and
  kohya's tools, made with diffusers' ``convert_state_dict_to_kohya``. Flux and SD3 use the
  ``lora_transformer_<module>`` naming that ComfyUI and diffusers map back to the transformer.

Both carry ``charkit.*`` metadata (family, base model, trigger, rank, alpha, steps, identity score)
and the kohya file the usual ``ss_*`` keys.
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


# ------------------------------------------------------------------------------------------- kohya


def to_kohya(layers: dict[str, dict[str, torch.Tensor]], *, family: str, alpha: float) -> dict[str, torch.Tensor]:
    """kohya keys via diffusers' ``convert_state_dict_to_kohya``; ``.alpha`` set to the trained alpha.

    >>> sorted(to_kohya({"unet": {"mid.attn1.to_q.lora_A.weight": torch.zeros(4, 8),
    ...                           "mid.attn1.to_q.lora_B.weight": torch.zeros(8, 4)}}, family="sd15", alpha=4))
    ['lora_unet_mid_attn1_to_q.alpha', 'lora_unet_mid_attn1_to_q.lora_down.weight', 'lora_unet_mid_attn1_to_q.lora_up.weight']
    """
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

    # The converter keys off "unet" / "text_encoder." prefixes; a transformer gets kohya's lora_transformer_ naming.
    prefix_map = {
        "unet": "unet",
        "text_encoder": "text_encoder",
        "text_encoder_2": "text_encoder_2",
        "transformer": "lora_transformer",
    }
    flat = {}
    for prefix, d in layers.items():
        flat.update(
            {f"{prefix_map[prefix]}.{k}": v.detach().to("cpu", torch.float32).contiguous() for k, v in d.items()}
        )
    kohya = convert_state_dict_to_kohya(flat)
    out = {}
    for k, v in kohya.items():
        if family == "sd15":
            k = k.replace("lora_te1_", "lora_te_")  # SD1.x has one text encoder: kohya calls it lora_te_
        out[k] = torch.tensor(float(alpha), dtype=torch.float32) if k.endswith(".alpha") else v.contiguous()
    return out


def kohya_metadata(meta: dict[str, str], *, family: str, rank: int, alpha: float, steps: int) -> dict[str, str]:
    return {
        **meta,
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": f"{alpha:g}",
        "ss_base_model_version": get_spec(family).kohya_base,
        "ss_max_train_steps": str(steps),
        "ss_training_comment": "trained with charkit",
    }


_KOHYA_PREFIXES = {
    "lora_unet_": "unet",
    "lora_transformer_": "transformer",
    "lora_te_": "text_encoder",
    "lora_te1_": "text_encoder",
    "lora_te2_": "text_encoder_2",
}


def kohya_to_diffusers(state_dict: dict[str, torch.Tensor], pipe) -> dict[str, torch.Tensor]:
    """Map kohya keys back onto the pipeline's module names (``alpha / rank`` folded into ``lora_A``).

    For families whose diffusers loader has no kohya converter (SD3); the names are found by
    matching each kohya module name against the model's own ``named_modules``.
    """
    lookup: dict[str, dict[str, str]] = {}
    out: dict[str, torch.Tensor] = {}
    for key, down in state_dict.items():
        if not key.endswith(".lora_down.weight"):
            continue
        base = key[: -len(".lora_down.weight")]
        kp = next((p for p in _KOHYA_PREFIXES if base.startswith(p)), None)
        if kp is None:
            raise CharkitError(f"kohya key {key!r}: unknown prefix; expected one of {', '.join(_KOHYA_PREFIXES)}")
        comp = _KOHYA_PREFIXES[kp]
        if comp not in lookup:
            model = getattr(pipe, comp)
            lookup[comp] = {n.replace(".", "_"): n for n, _ in model.named_modules() if n}
            # CLIP LoRAs name modules text_model.*; accept them with or without that level.
            lookup[comp].update({"text_model_" + k: v for k, v in list(lookup[comp].items())})
        module = lookup[comp].get(base[len(kp) :])
        if module is None:
            raise CharkitError(
                f"kohya key {key!r}: no module {base[len(kp) :]!r} in the {comp}; is this LoRA for this model?"
            )
        up = state_dict[f"{base}.lora_up.weight"]
        rank = down.shape[0]
        alpha = float(state_dict.get(f"{base}.alpha", torch.tensor(float(rank))))
        out[f"{comp}.{module}.lora_A.weight"] = (down.float() * (alpha / rank)).contiguous()
        out[f"{comp}.{module}.lora_B.weight"] = up.float().contiguous()
    return out


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
    sd, file_meta = read_lora(lora_file)
    out_dir = Path(out_dir)
    diffusers_path = write_lora(out_dir / f"{name}.safetensors", sd, {**file_meta, **meta})
    kohya_path = None
    if kohya:
        kohya_path = write_lora(
            out_dir / f"{name}.kohya.safetensors",
            to_kohya(unpack_diffusers(sd), family=family, alpha=alpha),
            kohya_metadata(meta, family=family, rank=rank, alpha=alpha, steps=steps),
        )
    sums = {p.name: sha256_file(p) for p in (diffusers_path, kohya_path) if p is not None}
    return ExportResult(diffusers=diffusers_path, kohya=kohya_path, sha256=sums)


def load_lora(pipe, path: str | os.PathLike, *, adapter_name: str | None = None) -> None:
    """Load a charkit LoRA (either layout) into ``pipe``.

    The diffusers layout and the kohya layout of SD1.5/SDXL/Flux go through diffusers' own
    ``load_lora_weights`` (its kohya converters); SD3's loader has none, so its kohya keys are
    mapped back with :func:`kohya_to_diffusers` first.
    """
    sd, _ = read_lora(path)
    if is_kohya(sd) and type(pipe).__name__.startswith("StableDiffusion3"):
        pipe.load_lora_weights(kohya_to_diffusers(sd, pipe), adapter_name=adapter_name)
        return
    pipe.load_lora_weights(str(path), adapter_name=adapter_name)


_KOHYA_KEY = re.compile(r"^lora_(unet|te\d?|transformer)_[A-Za-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)$")


def looks_like_kohya_key(key: str) -> bool:
    """True for ``lora_unet_<module>.lora_down.weight`` style keys (used by tests and checks)."""
    return bool(_KOHYA_KEY.match(key))
