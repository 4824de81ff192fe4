"""Flux in Black Forest Labs' own names (``flux1-dev.safetensors``, kohya's Flux LoRAs, ComfyUI's Flux model).

Read off black-forest-labs/flux ``src/flux/model.py`` / ``modules/layers.py`` and checked against the inverse
that diffusers ships, ``diffusers.loaders.single_file_utils.convert_flux_transformer_checkpoint_to_diffusers``
(tests/test_lora_formats.py runs it on :func:`to_bfl`'s output at FLUX.1-dev size), and against diffusers'
``_convert_kohya_flux_lora_to_diffusers`` and ComfyUI's ``flux_to_diffusers`` for the LoRA module names.

* ``double_blocks.N.img_attn.qkv`` = rows of ``transformer_blocks.N.attn.to_q | to_k | to_v``,
  ``txt_attn.qkv`` = ``add_q_proj | add_k_proj | add_v_proj``;
* ``single_blocks.N.linear1`` = ``single_transformer_blocks.N.attn.to_q | to_k | to_v | proj_mlp``
  (the MLP part is 4x as wide: FLUX.1's mlp_ratio);
* ``final_layer.adaLN_modulation.1`` = ``norm_out.linear`` with its two halves swapped
  (BFL: shift, scale; diffusers: scale, shift);
* RMS-norm weights are called ``scale`` (``img_attn.norm.query_norm.scale``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..namemap import NameMap, Rule, build, from_original_state_dict, to_original_state_dict

_D = "transformer_blocks.{i}"
_S = "single_transformer_blocks.{i}"

RULES: tuple[Rule, ...] = (
    Rule("img_in", ("x_embedder",)),
    Rule("txt_in", ("context_embedder",)),
    Rule("time_in.in_layer", ("time_text_embed.timestep_embedder.linear_1",)),
    Rule("time_in.out_layer", ("time_text_embed.timestep_embedder.linear_2",)),
    Rule("vector_in.in_layer", ("time_text_embed.text_embedder.linear_1",)),
    Rule("vector_in.out_layer", ("time_text_embed.text_embedder.linear_2",)),
    Rule("guidance_in.in_layer", ("time_text_embed.guidance_embedder.linear_1",)),
    Rule("guidance_in.out_layer", ("time_text_embed.guidance_embedder.linear_2",)),
    Rule("double_blocks.{i}.img_mod.lin", (f"{_D}.norm1.linear",)),
    Rule("double_blocks.{i}.txt_mod.lin", (f"{_D}.norm1_context.linear",)),
    Rule("double_blocks.{i}.img_attn.qkv", (f"{_D}.attn.to_q", f"{_D}.attn.to_k", f"{_D}.attn.to_v")),
    Rule("double_blocks.{i}.txt_attn.qkv", (f"{_D}.attn.add_q_proj", f"{_D}.attn.add_k_proj", f"{_D}.attn.add_v_proj")),
    Rule("double_blocks.{i}.img_attn.proj", (f"{_D}.attn.to_out.0",)),
    Rule("double_blocks.{i}.txt_attn.proj", (f"{_D}.attn.to_add_out",)),
    Rule("double_blocks.{i}.img_mlp.0", (f"{_D}.ff.net.0.proj",)),
    Rule("double_blocks.{i}.img_mlp.2", (f"{_D}.ff.net.2",)),
    Rule("double_blocks.{i}.txt_mlp.0", (f"{_D}.ff_context.net.0.proj",)),
    Rule("double_blocks.{i}.txt_mlp.2", (f"{_D}.ff_context.net.2",)),
    Rule(
        "single_blocks.{i}.linear1",
        (f"{_S}.attn.to_q", f"{_S}.attn.to_k", f"{_S}.attn.to_v", f"{_S}.proj_mlp"),
        ratios=(1, 1, 1, 4),
    ),
    Rule("single_blocks.{i}.linear2", (f"{_S}.proj_out",)),
    Rule("single_blocks.{i}.modulation.lin", (f"{_S}.norm.linear",)),
    Rule("final_layer.adaLN_modulation.1", ("norm_out.linear",), swap=True),
    Rule("final_layer.linear", ("proj_out",)),
)

#: Tensors that belong to no Linear: the QK RMS-norm weights.
PARAMS: tuple[tuple[str, str], ...] = (
    (f"{_D}.attn.norm_q.weight", "double_blocks.{i}.img_attn.norm.query_norm.scale"),
    (f"{_D}.attn.norm_k.weight", "double_blocks.{i}.img_attn.norm.key_norm.scale"),
    (f"{_D}.attn.norm_added_q.weight", "double_blocks.{i}.txt_attn.norm.query_norm.scale"),
    (f"{_D}.attn.norm_added_k.weight", "double_blocks.{i}.txt_attn.norm.key_norm.scale"),
    (f"{_S}.attn.norm_q.weight", "single_blocks.{i}.norm.query_norm.scale"),
    (f"{_S}.attn.norm_k.weight", "single_blocks.{i}.norm.key_norm.scale"),
)


def module_map(shapes: Mapping[str, tuple[int, ...]]) -> NameMap:
    """BFL modules of a FluxTransformer2DModel with these diffusers module shapes (``namemap.module_shapes``)."""
    return build(RULES, shapes)


def to_bfl(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A FluxTransformer2DModel state dict in BFL names (no prefix), as ``flux1-dev.safetensors`` holds it."""
    return to_original_state_dict(state_dict, RULES, PARAMS)


def from_original(
    state_dict: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, torch.Tensor]:
    """A BFL-named transformer state dict (no prefix) as the diffusers FluxTransformer2DModel with these module
    ``shapes`` names it; unlike diffusers' own converter it takes the row sizes from the model, so any width reads."""
    return from_original_state_dict(state_dict, RULES, PARAMS, shapes)
