"""diffusers <-> original module names for the transformer families, as data plus one small engine.

diffusers splits the fused projections of the original code (BFL's ``img_attn.qkv``, ``linear1``; Stability's
``attn.qkv``) into separate Linear layers and renames everything else. A family lists that as :class:`Rule`
rows (``charkit/families/flux/bfl.py``, ``charkit/families/sd3/sai.py``); :func:`build` instantiates them for
one model (block indices and row sizes from the model's own module shapes) into a :class:`NameMap`, which
LoRA conversion (fuse/split ``lora_up`` rows) and the single-file writer (concatenate weights) both use.

>>> rules = (Rule("blocks.{i}.qkv", ("layers.{i}.to_q", "layers.{i}.to_k", "layers.{i}.to_v")),)
>>> m = build(rules, {"layers.0.to_q": (8, 8), "layers.0.to_k": (8, 8), "layers.0.to_v": (8, 8)})
>>> [(p.module, p.start, p.rows) for p in m.modules["blocks.0.qkv"].parts]
[('layers.0.to_q', 0, 8), ('layers.0.to_k', 8, 8), ('layers.0.to_v', 16, 8)]
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

#: ``swap`` value: swap the two halves only when the module is diffusers' AdaLayerNormContinuous
#: (2 chunks: diffusers orders them (scale, shift), the original code (shift, scale)).
SWAP_IF_CONTINUOUS = "if_continuous"


@dataclass(frozen=True)
class Rule:
    """One original module and the diffusers modules stacked (in this order, along the output rows) into it.

    ``{i}`` stands for a block index. ``ratios`` are the parts' row sizes relative to each other (Flux's
    ``linear1`` = q, k, v and a 4x wider MLP), so a map can be built from a LoRA that adapts only some parts.
    """

    original: str
    parts: tuple[str, ...]
    swap: bool | str = False
    ratios: tuple[int, ...] = ()

    def ratio(self, j: int) -> int:
        return self.ratios[j] if self.ratios else 1


@dataclass(frozen=True)
class Part:
    module: str  # diffusers module name
    start: int  # first row of this module's output inside the original weight
    rows: int


@dataclass(frozen=True)
class OriginalModule:
    name: str  # original module name, e.g. "double_blocks.0.img_attn.qkv"
    parts: tuple[Part, ...]
    rows: int  # output rows of the original weight
    swap: bool = False  # original stores (shift, scale) where diffusers stores (scale, shift)

    @property
    def fused(self) -> bool:
        return len(self.parts) > 1


@dataclass
class NameMap:
    """Original modules of one model, by original name, and the way back from each diffusers module."""

    modules: dict[str, OriginalModule] = field(default_factory=dict)
    by_diffusers: dict[str, OriginalModule] = field(default_factory=dict)

    def by_underscored(self) -> dict[str, OriginalModule]:
        """``double_blocks_0_img_attn_qkv -> module`` (kohya's ``lora_unet_<name>`` spelling)."""
        return {name.replace(".", "_"): m for name, m in self.modules.items()}


def _indices(template: str, names) -> list[str | None]:
    if "{i}" not in template:
        return [None]
    head, tail = (re.escape(s) for s in template.split("{i}", 1))
    pattern = re.compile(f"^{head}(\\d+){tail}$")
    return sorted({m.group(1) for n in names if (m := pattern.match(n))}, key=int)


def build(rules: tuple[Rule, ...], shapes: Mapping[str, tuple[int, ...]]) -> NameMap:
    """The :class:`NameMap` of a model whose diffusers modules have these ``(out_features, in_features)``.

    ``shapes`` may hold only some modules (a LoRA's): a fused module's missing parts get their row size
    from the rule's ratios. Rules none of whose parts are in ``shapes`` are left out.
    """
    out = NameMap()
    for rule in rules:
        indices = {i for t in rule.parts for i in _indices(t, shapes)}
        for i in sorted(indices, key=lambda x: -1 if x is None else int(x)):
            names = [t.format(i=i) if i is not None else t for t in rule.parts]
            present = [j for j, n in enumerate(names) if n in shapes]
            if not present:
                continue
            unit = shapes[names[present[0]]][0] // rule.ratio(present[0])
            parts, start = [], 0
            for j, n in enumerate(names):
                rows = shapes[n][0] if n in shapes else unit * rule.ratio(j)
                parts.append(Part(n, start, rows))
                start += rows
            first = shapes[names[present[0]]]
            swap = rule.swap is True or (rule.swap == SWAP_IF_CONTINUOUS and first[0] == 2 * first[1])
            original = rule.original.format(i=i) if i is not None else rule.original
            mod = OriginalModule(original, tuple(parts), start, swap)
            out.modules[original] = mod
            for p in parts:
                out.by_diffusers[p.module] = mod
    return out


def swap_halves(t: torch.Tensor) -> torch.Tensor:
    """(a, b) -> (b, a) along dim 0: the (shift, scale) <-> (scale, shift) reorder of adaLN outputs."""
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def module_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """``name -> weight.shape`` of every module that has a weight of rank >= 2 (Linear, Conv)."""
    return {
        n: tuple(m.weight.shape)
        for n, m in model.named_modules()
        if getattr(m, "weight", None) is not None and m.weight.ndim >= 2
    }


def state_dict_shapes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {
        k[: -len(".weight")]: tuple(v.shape) for k, v in state_dict.items() if k.endswith(".weight") and v.ndim >= 2
    }


def to_original_state_dict(
    state_dict: Mapping[str, torch.Tensor], rules: tuple[Rule, ...], params: tuple[tuple[str, str], ...]
) -> dict[str, torch.Tensor]:
    """A diffusers state dict in original names: fused weights concatenated (halves swapped where the rule
    says so), ``params`` (``(diffusers, original)`` templates of the non-module tensors) renamed.
    Every key must be covered: an unmapped key is a bug in the rules (KeyError)."""
    names = build(rules, state_dict_shapes(state_dict))
    out: dict[str, torch.Tensor] = {}
    done: set[str] = set()
    for mod in names.modules.values():
        for suffix in ("weight", "bias"):
            keys = [f"{p.module}.{suffix}" for p in mod.parts]
            if not all(k in state_dict for k in keys):
                if any(k in state_dict for k in keys):
                    raise KeyError(f"{mod.name}.{suffix}: only some of {keys} are in the state dict")
                continue
            value = torch.cat([state_dict[k] for k in keys], dim=0)
            out[f"{mod.name}.{suffix}"] = swap_halves(value) if mod.swap else value
            done.update(keys)
    for src, dst in params:
        for i in _indices(src, state_dict):
            key = src.format(i=i) if i is not None else src
            if key in state_dict:
                out[dst.format(i=i) if i is not None else dst] = state_dict[key]
                done.add(key)
    missing = [k for k in state_dict if k not in done]
    if missing:
        raise KeyError(f"no original name for {missing[0]!r} (and {len(missing) - 1} more)")
    return out


def from_original_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    rules: tuple[Rule, ...],
    params: tuple[tuple[str, str], ...],
    shapes: Mapping[str, tuple[int, ...]],
) -> dict[str, torch.Tensor]:
    """The inverse of :func:`to_original_state_dict` for a model with these module ``shapes``
    (:func:`module_shapes` of the model the weights go into): fused weights split back by rows (halves swapped
    back), ``params`` renamed. A tensor no rule covers is a ``KeyError`` naming it (another model's file)."""
    names = build(rules, shapes)
    out: dict[str, torch.Tensor] = {}
    done: set[str] = set()
    for mod in names.modules.values():
        for suffix in ("weight", "bias"):
            key = f"{mod.name}.{suffix}"
            if key not in state_dict:
                continue
            value = state_dict[key]
            value = swap_halves(value) if mod.swap else value
            if value.shape[0] != mod.rows:
                raise KeyError(f"{key}: {value.shape[0]} rows, but this model's {mod.name} has {mod.rows}")
            for p in mod.parts:
                out[f"{p.module}.{suffix}"] = value[p.start : p.start + p.rows]
            done.add(key)
    for src, dst in params:
        for i in _indices(dst, state_dict):
            key = dst.format(i=i) if i is not None else dst
            if key in state_dict:
                out[src.format(i=i) if i is not None else src] = state_dict[key]
                done.add(key)
    stray = [k for k in state_dict if k not in done]
    if stray:
        raise KeyError(f"{stray[0]!r} (and {len(stray) - 1} more) fit no module of this model")
    return out
