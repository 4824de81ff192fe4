"""SD3 / SD3.5 in Stability AI's MMDiT names (``sd3.5_medium.safetensors``, kohya's SD3 LoRAs, ComfyUI's SD3).

Read off Stability's reference MMDiT (``joint_blocks.N.{x_block,context_block}``) and checked against
diffusers' inverse, ``diffusers.loaders.single_file_utils.convert_sd3_transformer_checkpoint_to_diffusers``
(tests/test_lora_formats.py loads :func:`to_sai`'s output with ``from_single_file``), against ComfyUI's
``mmdit_to_diffusers`` and kohya's ``networks/lora_sd3.py`` (``lora_unet_joint_blocks_N_x_block_attn_qkv``).

* ``joint_blocks.N.x_block.attn.qkv`` = rows of ``transformer_blocks.N.attn.to_q | to_k | to_v``,
  ``context_block.attn.qkv`` = ``add_q_proj | add_k_proj | add_v_proj``; SD3.5's second attention
  ``x_block.attn2.qkv`` = ``attn2.to_q | to_k | to_v``;
* the last block is "context pre-only": its context stream has no ``attn.proj`` / ``mlp`` and its
  ``context_block.adaLN_modulation.1`` is diffusers' AdaLayerNormContinuous, halves swapped
  (Stability: shift, scale; diffusers: scale, shift), like ``final_layer.adaLN_modulation.1``;
* ``x_embedder.proj`` is a Conv2d (``pos_embed.proj``), ``pos_embed`` a tensor.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..namemap import SWAP_IF_CONTINUOUS, NameMap, Rule, build, from_original_state_dict, to_original_state_dict

_D = "transformer_blocks.{i}"
_J = "joint_blocks.{i}"

RULES: tuple[Rule, ...] = (
    Rule("x_embedder.proj", ("pos_embed.proj",)),
    Rule("t_embedder.mlp.0", ("time_text_embed.timestep_embedder.linear_1",)),
    Rule("t_embedder.mlp.2", ("time_text_embed.timestep_embedder.linear_2",)),
    Rule("y_embedder.mlp.0", ("time_text_embed.text_embedder.linear_1",)),
    Rule("y_embedder.mlp.2", ("time_text_embed.text_embedder.linear_2",)),
    Rule("context_embedder", ("context_embedder",)),
    Rule(f"{_J}.x_block.attn.qkv", (f"{_D}.attn.to_q", f"{_D}.attn.to_k", f"{_D}.attn.to_v")),
    Rule(f"{_J}.context_block.attn.qkv", (f"{_D}.attn.add_q_proj", f"{_D}.attn.add_k_proj", f"{_D}.attn.add_v_proj")),
    Rule(f"{_J}.x_block.attn.proj", (f"{_D}.attn.to_out.0",)),
    Rule(f"{_J}.context_block.attn.proj", (f"{_D}.attn.to_add_out",)),
    Rule(f"{_J}.x_block.attn2.qkv", (f"{_D}.attn2.to_q", f"{_D}.attn2.to_k", f"{_D}.attn2.to_v")),
    Rule(f"{_J}.x_block.attn2.proj", (f"{_D}.attn2.to_out.0",)),
    Rule(f"{_J}.x_block.mlp.fc1", (f"{_D}.ff.net.0.proj",)),
    Rule(f"{_J}.x_block.mlp.fc2", (f"{_D}.ff.net.2",)),
    Rule(f"{_J}.context_block.mlp.fc1", (f"{_D}.ff_context.net.0.proj",)),
    Rule(f"{_J}.context_block.mlp.fc2", (f"{_D}.ff_context.net.2",)),
    Rule(f"{_J}.x_block.adaLN_modulation.1", (f"{_D}.norm1.linear",)),
    Rule(f"{_J}.context_block.adaLN_modulation.1", (f"{_D}.norm1_context.linear",), swap=SWAP_IF_CONTINUOUS),
    Rule("final_layer.adaLN_modulation.1", ("norm_out.linear",), swap=True),
    Rule("final_layer.linear", ("proj_out",)),
)

#: Tensors that belong to no Linear/Conv: the position table and the (SD3.5) QK RMS-norm weights.
PARAMS: tuple[tuple[str, str], ...] = (
    ("pos_embed.pos_embed", "pos_embed"),
    (f"{_D}.attn.norm_q.weight", f"{_J}.x_block.attn.ln_q.weight"),
    (f"{_D}.attn.norm_k.weight", f"{_J}.x_block.attn.ln_k.weight"),
    (f"{_D}.attn.norm_added_q.weight", f"{_J}.context_block.attn.ln_q.weight"),
    (f"{_D}.attn.norm_added_k.weight", f"{_J}.context_block.attn.ln_k.weight"),
    (f"{_D}.attn2.norm_q.weight", f"{_J}.x_block.attn2.ln_q.weight"),
    (f"{_D}.attn2.norm_k.weight", f"{_J}.x_block.attn2.ln_k.weight"),
)


def module_map(shapes: Mapping[str, tuple[int, ...]]) -> NameMap:
    """Stability MMDiT modules of an SD3Transformer2DModel with these diffusers module shapes."""
    return build(RULES, shapes)


def to_sai(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An SD3Transformer2DModel state dict in Stability's MMDiT names (no ``model.diffusion_model.`` prefix)."""
    return to_original_state_dict(state_dict, RULES, PARAMS)


def from_original(
    state_dict: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, torch.Tensor]:
    """A Stability-named MMDiT state dict (no prefix) as the diffusers SD3Transformer2DModel with these module
    ``shapes`` names it."""
    return from_original_state_dict(state_dict, RULES, PARAMS, shapes)
