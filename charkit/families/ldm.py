"""diffusers -> original (LDM / A1111 / Civitai) names for SD1.5 and SDXL state dicts.

The inverse of diffusers' ``convert_ldm_unet_checkpoint`` / ``convert_ldm_vae_checkpoint`` / CLIP /
OpenCLIP conversions. LoRA files name modules this way (kohya's SDXL LoRAs use the LDM block
names), and ``charkit.testing.ldm`` writes tiny single-file checkpoints with it.
"""

from __future__ import annotations

import torch

_RESNET = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _resnet(rest: str) -> str:
    for new, old in _RESNET:
        if rest.startswith(new + "."):
            return old + rest[len(new) :]
    raise KeyError(rest)


def unet_to_ldm(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """A diffusers UNet2DConditionModel state dict in LDM names (without the ``model.diffusion_model.`` prefix)."""
    lpb = config["layers_per_block"]
    n_up = len(config["up_block_types"])
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        top = ".".join(parts[:-1])
        if top in _UNET_TOP:
            out[f"{_UNET_TOP[top]}.{parts[-1]}"] = value
            continue
        if parts[0] == "down_blocks":
            b, kind = int(parts[1]), parts[2]
            if kind == "downsamplers":  # down_blocks.b.downsamplers.0.conv.w -> input_blocks.N.0.op.w
                n = 1 + b * (lpb + 1) + lpb
                out[f"input_blocks.{n}.0.op.{parts[-1]}"] = value
                continue
            j, rest = int(parts[3]), ".".join(parts[4:])
            n = 1 + b * (lpb + 1) + j
            out[f"input_blocks.{n}.0.{_resnet(rest)}" if kind == "resnets" else f"input_blocks.{n}.1.{rest}"] = value
        elif parts[0] == "mid_block":
            kind, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            out[f"middle_block.{2 * j}.{_resnet(rest)}" if kind == "resnets" else f"middle_block.1.{rest}"] = value
        elif parts[0] == "up_blocks":
            b, kind = int(parts[1]), parts[2]
            if kind == "upsamplers":  # after the block's last resnet (and its attention, if any)
                n = b * (lpb + 1) + lpb
                has_attn = any(k.startswith(f"up_blocks.{b}.attentions.") for k in state_dict)
                out[f"output_blocks.{n}.{2 if has_attn else 1}.conv.{parts[-1]}"] = value
                continue
            j, rest = int(parts[3]), ".".join(parts[4:])
            n = b * (lpb + 1) + j
            out[f"output_blocks.{n}.0.{_resnet(rest)}" if kind == "resnets" else f"output_blocks.{n}.1.{rest}"] = value
        else:
            raise KeyError(f"unexpected UNet key {key!r} (n_up={n_up})")
    return out


_VAE_ATTN = (
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
)


def vae_to_ldm(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL state dict in LDM names (without the ``first_stage_model.`` prefix)."""
    n_up = len(config["up_block_types"])
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        side = parts[0]  # encoder | decoder | quant_conv | post_quant_conv
        if side in ("quant_conv", "post_quant_conv"):
            out[key] = value
            continue
        rest = ".".join(parts[1:])
        if parts[1] in ("conv_in", "conv_out"):
            new = rest
        elif parts[1] == "conv_norm_out":
            new = "norm_out." + parts[-1]
        elif parts[1] in ("down_blocks", "up_blocks"):
            b, kind = int(parts[2]), parts[3]
            ldm_b = b if parts[1] == "down_blocks" else n_up - 1 - b
            name = "down" if parts[1] == "down_blocks" else "up"
            if kind in ("downsamplers", "upsamplers"):
                new = f"{name}.{ldm_b}.{'downsample' if name == 'down' else 'upsample'}.conv.{parts[-1]}"
            else:
                tail = ".".join(parts[5:]).replace("conv_shortcut", "nin_shortcut")
                new = f"{name}.{ldm_b}.block.{parts[4]}.{tail}"
        elif parts[1] == "mid_block":
            if parts[2] == "resnets":
                tail = ".".join(parts[4:]).replace("conv_shortcut", "nin_shortcut")
                new = f"mid.block_{int(parts[3]) + 1}.{tail}"
            else:
                tail = ".".join(parts[4:])
                for a, b in _VAE_ATTN:
                    if tail.startswith(a):
                        tail = b + tail[len(a) :]
                        break
                new = f"mid.attn_1.{tail}"
                if value.ndim == 2:  # the original attention uses 1x1 convs
                    value = value[:, :, None, None]
        else:
            raise KeyError(f"unexpected VAE key {key!r}")
        out[f"{side}.{new}"] = value
    return out


def clip_to_ldm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF CLIPTextModel keys as original checkpoints store them (always with the ``text_model.`` prefix)."""
    out = {}
    for k, v in state_dict.items():
        if k.startswith("text_projection"):
            continue
        out[k if k.startswith("text_model.") else f"text_model.{k}"] = v
    return out


def open_clip_to_ldm(state_dict: dict[str, torch.Tensor], num_heads: int) -> dict[str, torch.Tensor]:
    """HF CLIPTextModelWithProjection keys in OpenCLIP layout (SDXL's second text encoder, ``conditioner.embedders.1.model.``)."""
    sd = {k.removeprefix("text_model."): v for k, v in state_dict.items()}
    out = {
        "token_embedding.weight": sd["embeddings.token_embedding.weight"],
        "positional_embedding": sd["embeddings.position_embedding.weight"],
        "ln_final.weight": sd["final_layer_norm.weight"],
        "ln_final.bias": sd["final_layer_norm.bias"],
        "text_projection": sd["text_projection.weight"].T.contiguous(),
    }
    layers = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers.")})
    for i in layers:
        p = f"encoder.layers.{i}."
        q = f"transformer.resblocks.{i}."
        out[q + "attn.in_proj_weight"] = torch.cat([sd[p + f"self_attn.{x}_proj.weight"] for x in "qkv"], 0)
        out[q + "attn.in_proj_bias"] = torch.cat([sd[p + f"self_attn.{x}_proj.bias"] for x in "qkv"], 0)
        out[q + "attn.out_proj.weight"] = sd[p + "self_attn.out_proj.weight"]
        out[q + "attn.out_proj.bias"] = sd[p + "self_attn.out_proj.bias"]
        for a, b in (
            ("layer_norm1", "ln_1"),
            ("layer_norm2", "ln_2"),
            ("mlp.fc1", "mlp.c_fc"),
            ("mlp.fc2", "mlp.c_proj"),
        ):
            out[q + f"{b}.weight"] = sd[p + f"{a}.weight"]
            out[q + f"{b}.bias"] = sd[p + f"{a}.bias"]
    del num_heads  # in_proj packs q|k|v across heads: no per-head reshuffle needed
    return out
