"""LoRA file layouts of every family: detect, convert to diffusers keys, write kohya files, load and verify.

Layouts (:func:`detect_lora_layout`), with who writes and who reads them:

=============  =================================================================  ==============================
layout         keys                                                               written by
=============  =================================================================  ==============================
``diffusers``  ``unet.<module>.lora_A.weight`` / ``transformer.<module>.lora_B``  diffusers, charkit ``best.safetensors``
``peft``       ``[base_model.model.]<module>.lora_A.weight`` (no component)       peft ``save_pretrained``
``kohya_sd``   ``lora_unet_<module>`` / ``lora_te[12]_<module>`` + down/up/alpha  kohya sd-scripts (SD1.x, SDXL)
``kohya_flux`` ``lora_unet_double_blocks_N_img_attn_qkv`` ... (BFL names, fused)  kohya sd-scripts ``lora_flux.py``
``kohya_sd3``  ``lora_unet_joint_blocks_N_x_block_attn_qkv`` ... (Stability)      kohya sd-scripts ``lora_sd3.py``
``onetrainer`` ``lora_transformer_<diffusers module>``                           OneTrainer (Flux, SD3)
=============  =================================================================  ==============================

Readers: ComfyUI reads every one of them (``comfy/lora.py`` maps ``lora_unet_<original module>`` for any
model, ``lora_transformer_`` and ``transformer.`` for SD3/Flux). Stock diffusers 0.42 reads ``diffusers``,
``kohya_sd`` and ``kohya_flux`` (its ``_convert_kohya_flux_lora_to_diffusers``, which hard-codes FLUX.1's
3072-wide ``linear1`` split, so it reads only full-size Flux files) and OneTrainer Flux files that adapt only
attention. Its kohya-Flux reader also drops, with no error, every LoRA module outside the blocks (``img_in``,
``txt_in``, ``time_in``, ``vector_in``, ``guidance_in``, ``final_layer``: it emits them without the
``transformer.`` prefix). For SD3 it converts nothing: a ``kohya_sd3`` or ``onetrainer`` SD3 file loads no
key and only logs a warning. :func:`load_lora` reads them all, converting with :func:`to_diffusers` what diffusers would
misread, and verifies that the adapter attached.

Kohya fuses what diffusers splits (BFL's ``img_attn.qkv`` / ``linear1``, Stability's ``attn.qkv``). A
fused module gets one LoRA whose ``lora_down`` is the parts' ``lora_A`` stacked along the rank and whose
``lora_up`` is block-diagonal (each part's ``lora_B`` in its own rows and rank columns), with
``alpha = alpha * fused_rank / rank`` so ``alpha / rank`` is unchanged: what sd-scripts'
``networks/convert_flux_lora.py`` (``convert_to_sd_scripts_cat``) writes and what ``split_qkv`` training
saves, and exactly the sparse form that diffusers' converter and kohya's ``load_state_dict`` split back.
:func:`to_diffusers` splits any fused LoRA exactly, block-diagonal or dense (sd-scripts' default: one
rank-r LoRA over the whole fused Linear).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CharkitError
from .namemap import NameMap, OriginalModule, module_shapes, swap_halves
from .registry import family_part, get_family, get_spec, specs

LAYOUTS = ("diffusers", "peft", "kohya_sd", "kohya_flux", "kohya_sd3", "onetrainer", "unknown")


def components(family: str) -> tuple[str, ...]:
    """Pipeline components that can carry a LoRA (denoiser first): the family's ``SPEC.lora_components``."""
    return get_spec(family).lora_components


def kohya_te(family: str) -> dict[str, str]:
    """kohya text-encoder prefix per component (``SPEC.kohya_text_encoders``)."""
    return dict(get_spec(family).kohya_text_encoders)


def _read_te(family: str) -> dict[str, str]:
    # prefixes accepted when reading: lora_te_ and lora_te1_ both mean the first encoder
    return {"lora_te_": "text_encoder", **{p: c for c, p in kohya_te(family).items()}}


def _original_names(family: str) -> bool:
    """True when kohya names the denoiser's modules as the original release does (BFL / Stability)."""
    return get_spec(family).original_layout is not None


_DOWN, _UP, _ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"
_A, _B = ".lora_A.weight", ".lora_B.weight"


def _denoiser(family: str) -> str:
    return get_spec(family).denoiser


def _original_map(family: str):
    layout = get_spec(family).original_layout
    return None if layout is None else family_part(family, layout).module_map


# ------------------------------------------------------------------------------------------- detect


def detect_lora_layout(state_dict: Mapping[str, object]) -> str:
    """The layout of a LoRA state dict, from its key names (one of :data:`LAYOUTS`).

    >>> detect_lora_layout({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": None})
    'kohya_flux'
    >>> detect_lora_layout({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": None})
    'diffusers'
    """
    keys = list(state_dict)
    if any(k.startswith("lora_transformer_") for k in keys):
        return "onetrainer"
    flux = ("double_blocks_", "single_blocks_", "img_in.", "txt_in.", "time_in_", "vector_in_", "guidance_in_")
    if any(k.startswith(tuple("lora_unet_" + f for f in flux)) for k in keys):
        return "kohya_flux"
    if any(k.startswith(("lora_unet_joint_blocks_", "lora_unet_t_embedder_", "lora_unet_y_embedder_")) for k in keys):
        return "kohya_sd3"
    if any(re.match(r"lora_(unet|te\d?)_", k) and k.endswith((_DOWN, _UP)) for k in keys):
        return "kohya_sd"
    if any(k.endswith((_A, _B)) for k in keys):
        comps = {c for sp in specs() for c in sp.lora_components}
        return "diffusers" if all(k.split(".", 1)[0] in comps for k in keys) else "peft"
    return "unknown"


# ---------------------------------------------------------------------------------------- targets


def all_linear_targets(family: str, denoiser: torch.nn.Module) -> list[str]:
    """Every Linear of the denoiser's blocks (attention, MLP, modulation): what kohya and ai-toolkit train.

    Full module names, usable as peft ``target_modules``. Flux: ``transformer_blocks.*`` and
    ``single_transformer_blocks.*``; SD3: ``transformer_blocks.*``; SD1.5/SDXL: the transformer blocks inside
    the UNet's ``attentions`` (kohya's ``Transformer2DModel`` targets; SD1.5's 1x1-conv ``proj_in/out`` are
    convolutions and stay out).

    >>> all_linear_targets("flux", pipe.transformer)[:2]  # doctest: +SKIP
    ['single_transformer_blocks.0.attn.to_k', 'single_transformer_blocks.0.attn.to_q']
    """
    get_family(family)
    blocks = ("transformer_blocks.", "single_transformer_blocks.")

    def keep(n: str) -> bool:
        return n.startswith(blocks) if _denoiser(family) == "transformer" else ".attentions." in n

    return sorted(n for n, m in denoiser.named_modules() if isinstance(m, torch.nn.Linear) and keep(n))


# ------------------------------------------------------------------------------------------ to kohya


def _pairs(sd: Mapping[str, torch.Tensor], component: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for k in sd:
        if k.endswith(_A):
            m = k[: -len(_A)]
            b = sd.get(m + _B)
            if b is None:
                raise CharkitError(f"{component} LoRA: {k!r} has no matching lora_B tensor")
            out[m] = (sd[k].detach().to("cpu", torch.float32), b.detach().to("cpu", torch.float32))
        elif not k.endswith(_B):
            raise CharkitError(
                f"{component} LoRA: {k!r} is not a plain LoRA tensor (lora_A/lora_B); kohya files hold plain LoRA only"
            )
    return out


def _kohya_entry(name: str, down: torch.Tensor, up: torch.Tensor, alpha: float) -> dict[str, torch.Tensor]:
    return {
        name + _DOWN: down.contiguous(),
        name + _UP: up.contiguous(),
        name + _ALPHA: torch.tensor(float(alpha), dtype=torch.float32),
    }


def _fuse(orig: OriginalModule, pairs, alpha: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One LoRA for an original module from its parts' LoRAs (block-diagonal up, alpha/rank preserved)."""
    present = [(p, pairs[p.module]) for p in orig.parts if p.module in pairs]
    if not orig.fused:
        down, up = present[0][1]
        a = alpha
    else:
        r_ref = present[0][1][0].shape[0]
        down = torch.cat([a_ for _, (a_, _) in present], dim=0)
        up = torch.zeros(orig.rows, down.shape[0])
        col = 0
        for part, (a_, b_) in present:
            r = a_.shape[0]
            up[part.start : part.start + part.rows, col : col + r] = b_ * (r_ref / r)
            col += r
        a = alpha * down.shape[0] / r_ref
    return down, (swap_halves(up) if orig.swap else up), a


def _te_name(family: str, component: str, module: str) -> str:
    clip = component != get_spec(family).t5_encoder
    if clip and not module.startswith("text_model."):
        module = "text_model." + module  # kohya and ComfyUI name CLIP modules text_model.*
    return kohya_te(family)[component] + module.replace(".", "_")


def to_kohya(family: str, layers: Mapping[str, Mapping[str, torch.Tensor]], *, alpha: float) -> dict[str, torch.Tensor]:
    """kohya sd-scripts keys for a family's LoRA: ``layers`` maps a component (``unet`` / ``transformer`` /
    ``text_encoder`` / ``text_encoder_2``) to its peft state dict (``<module>.lora_A.weight`` ...).

    SD1.5/SDXL: diffusers' ``convert_state_dict_to_kohya`` (``lora_unet_<diffusers module>``, ``lora_te_`` for
    SD1.x, ``lora_te1_/lora_te2_`` for SDXL). Flux: BFL names (``lora_unet_double_blocks_0_img_attn_qkv``),
    SD3: Stability names (``lora_unet_joint_blocks_0_x_block_attn_qkv``), fused modules as sd-scripts writes
    them (see the module docstring). Every ``.alpha`` keeps ``alpha / rank`` of the trained adapter.

    >>> sd = to_kohya("flux", {"transformer": peft_state_dict}, alpha=8)  # doctest: +SKIP
    """
    get_family(family)
    if not _original_names(family):
        return _kohya_sd(family, layers, alpha)
    out: dict[str, torch.Tensor] = {}
    for comp, sd in layers.items():
        pairs = _pairs(sd, comp)
        if comp == _denoiser(family):
            shapes = {m: (b.shape[0], a.shape[1]) for m, (a, b) in pairs.items()}
            names: NameMap = _original_map(family)(shapes)
            unknown = [m for m in pairs if m not in names.by_diffusers]
            if unknown:
                raise CharkitError(f"{family} transformer LoRA: module {unknown[0]!r} has no original (kohya) name")
            for orig in names.modules.values():
                down, up, a = _fuse(orig, pairs, alpha)
                if orig.name.startswith("final_layer."):
                    # diffusers' kohya-Flux reader takes final_layer tensors without their alpha: fold it in
                    down, up, a = down, up * (a / down.shape[0]), float(down.shape[0])
                out.update(_kohya_entry("lora_unet_" + orig.name.replace(".", "_"), down, up, a))
        elif comp in kohya_te(family):
            for m, (a_, b_) in pairs.items():
                out.update(_kohya_entry(_te_name(family, comp, m), a_, b_, alpha))
        else:
            raise CharkitError(f"{family} LoRA: unknown component {comp!r}; expected one of {components(family)}")
    return out


def _kohya_sd(family: str, layers, alpha: float) -> dict[str, torch.Tensor]:
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

    flat = {}
    for comp, sd in layers.items():
        if comp not in components(family):
            raise CharkitError(f"{family} LoRA: unknown component {comp!r}; expected one of {components(family)}")
        _pairs(sd, comp)  # plain LoRA only
        for k, v in sd.items():
            if comp != "unet" and not k.startswith("text_model."):
                k = "text_model." + k  # kohya and ComfyUI name CLIP modules text_model.*
            flat[f"{comp}.{k}"] = v.detach().to("cpu", torch.float32).contiguous()
    out = {}
    for k, v in convert_state_dict_to_kohya(flat).items():
        if kohya_te(family).get("text_encoder") == "lora_te_":
            k = k.replace("lora_te1_", "lora_te_")  # one text encoder (SD1.x): kohya calls it lora_te_
        out[k] = torch.tensor(float(alpha), dtype=torch.float32) if k.endswith(_ALPHA) else v.contiguous()
    return out


def to_onetrainer(
    family: str, layers: Mapping[str, Mapping[str, torch.Tensor]], *, alpha: float
) -> dict[str, torch.Tensor]:
    """OneTrainer's naming: ``lora_transformer_<diffusers module>`` for the Flux/SD3 transformer (what charkit's
    "kohya" export wrote before; ComfyUI reads it, stock diffusers only partly). SD1.5/SDXL: as :func:`to_kohya`."""
    get_family(family)
    if not _original_names(family):
        return _kohya_sd(family, layers, alpha)
    out: dict[str, torch.Tensor] = {}
    for comp, sd in layers.items():
        for m, (a_, b_) in _pairs(sd, comp).items():
            name = "lora_transformer_" + m.replace(".", "_") if comp == "transformer" else _te_name(family, comp, m)
            out.update(_kohya_entry(name, a_, b_, alpha))
    return out


# -------------------------------------------------------------------------------------- to diffusers


@dataclass
class _Component:
    name: str
    shapes: dict[str, tuple[int, ...]]
    model: torch.nn.Module | None = None
    _lookup: dict[str, str] | None = None

    def lookup(self) -> dict[str, str]:
        """``underscored name -> module name`` (CLIP modules also under ``text_model_``; UNets under LDM names)."""
        if self._lookup is None:
            table = {n.replace(".", "_"): n for n in self.shapes}
            table.update({"text_model_" + k: v for k, v in list(table.items()) if not k.startswith("text_model_")})
            if self.name == "unet" and self.model is not None:
                table.update({k: v for k, v in _ldm_names(self.model).items() if k not in table})
            self._lookup = table
        return self._lookup

    def find(self, dotted: str) -> str | None:
        for cand in (dotted, dotted.removeprefix("text_model."), "text_model." + dotted):
            if cand in self.shapes:
                return cand
        return None


def _ldm_names(unet) -> dict[str, str]:
    from .ldm import unet_to_ldm

    # names without peft wrappers (a pipeline may already carry other adapters)
    keys = {k.replace(".base_layer.", ".") for k in unet.state_dict() if ".lora_" not in k}
    sd = {k: k for k in keys}
    try:
        ldm = unet_to_ldm(sd, unet.config)
    except KeyError:  # not a UNet2DConditionModel layout we know: no LDM aliases
        return {}
    return {
        k[: -len(".weight")].replace(".", "_"): v[: -len(".weight")] for k, v in ldm.items() if k.endswith(".weight")
    }


def _components(family: str, pipe_or_modules) -> dict[str, _Component]:
    out = {}
    for name in components(family):
        if isinstance(pipe_or_modules, Mapping):
            obj = pipe_or_modules.get(name)
        else:
            obj = getattr(pipe_or_modules, name, None)
        if obj is None:
            continue
        if isinstance(obj, torch.nn.Module):
            out[name] = _Component(name, module_shapes(obj), obj)
        else:
            out[name] = _Component(name, {k: tuple(v) for k, v in obj.items()})
    return out


@dataclass
class _Entry:
    key: str  # the file's key for this LoRA module (its lora_down / lora_A key)
    down: torch.Tensor
    up: torch.Tensor
    alpha: float | None


def _entries(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, _Entry], list[str]]:
    """``base name -> _Entry`` for every down/up (or A/B) pair, and the keys that belong to no pair."""
    entries: dict[str, _Entry] = {}
    used: set[str] = set()
    for k in state_dict:
        sfx = _DOWN if k.endswith(_DOWN) else _A if k.endswith(_A) else None
        if sfx is None:
            continue
        base = k[: -len(sfx)]
        up_key = base + (_UP if sfx == _DOWN else _B)
        if up_key not in state_dict:
            continue
        alpha = state_dict.get(base + _ALPHA)
        entries[base] = _Entry(
            k, state_dict[k].float(), state_dict[up_key].float(), None if alpha is None else float(alpha)
        )
        used |= {k, up_key, base + _ALPHA}
    return entries, [k for k in state_dict if k not in used]


def _resolve(
    family: str, base: str, layout: str, comps: dict[str, _Component], originals: dict[str, NameMap | None]
) -> tuple[str, str | OriginalModule] | None:
    """``(component, diffusers module | OriginalModule)`` that the LoRA module ``base`` adapts, or None."""
    den = _denoiser(family)
    if layout in ("diffusers", "peft"):
        head, _, rest = base.partition(".")
        if layout == "diffusers" and head in comps:
            m = comps[head].find(rest)
            return (head, m) if m else None
        name = base.removeprefix("base_model.model.")
        for c in comps.values():
            if m := c.find(name):
                return c.name, m
        return None
    if base.startswith("lora_unet_") and den in comps:
        rest = base[len("lora_unet_") :]
        names = originals.get(den)
        if names is not None:  # Flux/SD3: kohya uses the original (BFL / Stability) module names
            orig = names.by_underscored().get(rest)
            return (den, orig) if orig else None
        m = comps[den].lookup().get(rest)
        return (den, m) if m else None
    if base.startswith("lora_transformer_") and _original_names(family) and den in comps:
        m = comps[den].lookup().get(base[len("lora_transformer_") :])
        return (den, m) if m else None
    for prefix, comp in _read_te(family).items():
        if base.startswith(prefix) and comp in comps:
            m = comps[comp].lookup().get(base[len(prefix) :])
            return (comp, m) if m else None
    return None


def _check_shape(source, entry: _Entry, comp: _Component, module: str, rows: int) -> None:
    """``entry`` must take ``module``'s input and give ``rows`` outputs (a fused module's rows: all its parts')."""
    shape = comp.shapes[module]
    if tuple(entry.down.shape[1:]) != tuple(shape[1:]) or entry.up.shape[0] != rows:
        raise CharkitError(
            f"LoRA {source}: {entry.key!r} (down {tuple(entry.down.shape)}, up {tuple(entry.up.shape)}) does not fit "
            f"{comp.name} module {module!r} (weight {shape}); is it for another model size or family?"
        )


def to_diffusers(
    family: str, state_dict: Mapping[str, torch.Tensor], pipe_or_modules, *, source: str = "(state dict)"
) -> dict[str, torch.Tensor]:
    """Any supported layout -> ``<component>.<module>.lora_A.weight`` / ``lora_B`` keys of this model.

    ``pipe_or_modules``: a pipeline, or ``{component: nn.Module}``, or ``{component: {module: weight shape}}``.
    kohya/OneTrainer ``alpha / rank`` is folded into ``lora_A`` and fused modules are split back (each part
    keeps only the rank columns its rows use: exact for block-diagonal and dense fused LoRAs alike);
    diffusers/peft tensors pass through unchanged (their alpha is in the file's ``lora_adapter_metadata``).
    Raises a one-line :class:`CharkitError` naming ``source`` and the first key that fits no module.

    >>> sd = to_diffusers("sd3", load_file("char.kohya.safetensors"), pipe)  # doctest: +SKIP
    >>> pipe.load_lora_weights(sd, adapter_name="char")  # doctest: +SKIP
    """
    get_family(family)
    layout = detect_lora_layout(state_dict)
    if layout == "unknown":
        first = next(iter(state_dict), None)
        raise CharkitError(
            f"LoRA {source}: no LoRA tensors found ({'empty' if first is None else f'first key {first!r}'}); "
            "expected diffusers/peft lora_A/lora_B or kohya lora_down/lora_up keys"
        )
    comps = _components(family, pipe_or_modules)
    originals = {}
    if _original_names(family) and _denoiser(family) in comps:
        originals[_denoiser(family)] = _original_map(family)(comps[_denoiser(family)].shapes)
    entries, stray = _entries(state_dict)
    out: dict[str, torch.Tensor] = {}
    unmatched = list(stray)
    matched = 0
    for base, e in entries.items():
        target = _resolve(family, base, layout, comps, originals)
        if target is None:
            unmatched.append(e.key)
            continue
        matched += 1
        comp_name, t = target
        comp = comps[comp_name]
        rank = e.down.shape[0]
        scale = 1.0 if e.alpha is None else e.alpha / rank
        if isinstance(t, str):  # one diffusers module
            _check_shape(source, e, comp, t, comp.shapes[t][0])
            out[f"{comp_name}.{t}{_A}"] = (e.down * scale).contiguous()
            out[f"{comp_name}.{t}{_B}"] = e.up.contiguous()
            continue
        _check_shape(source, e, comp, t.parts[0].module, t.rows)
        up = swap_halves(e.up) if t.swap else e.up
        for p in t.parts:
            rows = up[p.start : p.start + p.rows]
            cols = rows.abs().sum(dim=0).nonzero().flatten()
            if len(cols) == 0:
                cols = torch.arange(rank)  # an all-zero part (e.g. untrained): keep it, it is a no-op
            out[f"{comp_name}.{p.module}{_A}"] = (e.down[cols] * scale).contiguous()
            out[f"{comp_name}.{p.module}{_B}"] = rows[:, cols].contiguous()
    if not out:
        first = next((k for k in state_dict if k.endswith((_DOWN, _A))), next(iter(state_dict)))
        raise CharkitError(
            f"LoRA {source} matched no modules of this {family} model; is it for another family? "
            f"(its keys are {layout} layout, e.g. {first!r})"
        )
    if unmatched:
        raise CharkitError(
            f"LoRA {source}: key {unmatched[0]!r} fits no module of this {family} model "
            f"({len(unmatched)} unmatched, {matched} matched); "
            "is it for another family or model version? Use it with the model it was trained for"
        )
    return out


# ---------------------------------------------------------------------------------------------- load


@dataclass(frozen=True)
class LoadedLora:
    """What :func:`load_lora` attached."""

    path: Path
    adapter_name: str
    layout: str  # one of LAYOUTS
    converted: bool  # True: charkit converted the keys; False: diffusers read the file itself
    modules: dict[str, int]  # component -> number of modules carrying the adapter
    sha256: str


def read_lora_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a ``.safetensors`` LoRA; pickle formats are refused (they can run code)."""
    from safetensors import safe_open
    from safetensors.torch import load as st_load

    p = Path(path)
    if p.suffix.lower() != ".safetensors":
        raise CharkitError(
            f"LoRA {p}: only .safetensors LoRA files are loaded (pickle formats like .ckpt/.pt/.bin can run code); "
            "convert it to .safetensors"
        )
    if not p.is_file():
        raise CharkitError(f"LoRA {p}: no such file")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
        sd = st_load(p.read_bytes())
    except Exception as e:  # safetensors raises its own error types for a corrupt header
        raise CharkitError(f"LoRA {p}: not a readable .safetensors file ({e}); re-download or re-export it") from None
    if not sd:
        raise CharkitError(f"LoRA {p}: holds no tensors; re-download or re-export it")
    return sd, meta


def adapter_modules(pipe, adapter_name: str) -> dict[str, set[str]]:
    """``component -> names of the modules that carry adapter_name`` (peft LoRA layers)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    out: dict[str, set[str]] = {}
    for comp in sorted({c for sp in specs() for c in sp.lora_components}):
        model = getattr(pipe, comp, None)
        if not isinstance(model, torch.nn.Module):
            continue
        names = {
            n
            for n, m in model.named_modules()
            if isinstance(m, BaseTunerLayer) and adapter_name in getattr(m, "lora_A", {})
        }
        if names:
            out[comp] = names
    return out


def _drop_adapter(pipe, adapter_name: str) -> None:
    """Remove ``adapter_name`` wherever it got to (layers or just a registered config)."""
    for comp in sorted({c for sp in specs() for c in sp.lora_components}):
        model = getattr(pipe, comp, None)
        if adapter_name not in (getattr(model, "peft_config", None) or {}):
            continue
        if hasattr(model, "delete_adapters"):
            model.delete_adapters(adapter_name)
        else:
            model.delete_adapter(adapter_name)


def load_lora(pipe, path: str | os.PathLike, *, family: str, adapter_name: str) -> LoadedLora:
    """Load a LoRA file of any supported layout into ``pipe`` as ``adapter_name`` and verify it attached.

    diffusers reads its own layout and SD kohya files itself; Flux/SD3 kohya and OneTrainer files and bare peft
    files are converted with :func:`to_diffusers` first. Every module the file adapts must then carry the
    adapter, else the adapter is removed again and a one-line :class:`CharkitError` says why: a LoRA that
    loaded nothing never renders silently.

    >>> info = load_lora(pipe, "loras/alice.kohya.safetensors", family="flux", adapter_name="alice")  # doctest: +SKIP
    >>> info.layout, info.modules  # doctest: +SKIP
    ('kohya_flux', {'transformer': 57})
    """
    from ..paths import sha256_file
    from .detect import family_from_pipeline_class

    get_family(family)
    p = Path(path)
    found = family_from_pipeline_class(type(pipe).__name__, what=f"LoRA {p}")
    if found != family:
        raise CharkitError(f"LoRA {p}: the pipeline is a {found} model, not {family}; pass family={found!r}")
    if adapter_modules(pipe, adapter_name):
        raise CharkitError(
            f"LoRA {p}: an adapter named {adapter_name!r} is already loaded; unload it or pick another name"
        )
    sd, _ = read_lora_file(p)
    layout = detect_lora_layout(sd)
    converted = to_diffusers(family, sd, pipe, source=str(p))  # validates every key against the model
    expected: dict[str, set[str]] = {}
    for k in converted:
        if k.endswith(_A):
            comp, module = k[: -len(_A)].split(".", 1)
            expected.setdefault(comp, set()).add(module)
    stock = layout == "diffusers" or (layout == "kohya_sd" and not _original_names(family))
    try:
        pipe.load_lora_weights(str(p) if stock else converted, adapter_name=adapter_name)
    except (ValueError, RuntimeError, KeyError, TypeError) as e:
        _drop_adapter(pipe, adapter_name)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CharkitError(f"LoRA {p} does not fit this {family} model ({msg}); is it for another family?") from None
    attached = adapter_modules(pipe, adapter_name)
    if not attached:
        _drop_adapter(pipe, adapter_name)
        raise CharkitError(f"LoRA {p} matched no modules of this {family} model; is it for another family?")
    missing = [(c, m) for c, ms in expected.items() for m in sorted(ms) if m not in attached.get(c, set())]
    if missing:
        _drop_adapter(pipe, adapter_name)
        c, m = missing[0]
        raise CharkitError(
            f"LoRA {p}: {len(missing)} of its modules did not attach (first: {c} {m!r}); "
            "is it for another family or model version?"
        )
    return LoadedLora(
        path=p,
        adapter_name=adapter_name,
        layout=layout,
        converted=not stock,
        modules={c: len(ms) for c, ms in sorted(attached.items())},
        sha256=sha256_file(p),
    )
