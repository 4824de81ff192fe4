"""Tiny artifacts with exactly the key names, nesting, file names, folders and config fields of released files.

charkit's tiny models (``get_family("sd15").tiny_pipeline()`` and friends) are real architectures at toy
size; this module writes adapters, LoRAs and ControlNets *for* them in the layouts people actually
download, so a loader tested on these fixtures is tested on the real layout (STYLE.md rule 15):

- :func:`write_h94_ip_adapter`: the h94/IP-Adapter repository (``models/``, ``sdxl_models/``, both image encoders);
- :func:`write_h94_faceid`: h94/IP-Adapter-FaceID files, LoRA tensors included;
- :func:`write_kohya_lora`: kohya-ss/sd-scripts (Civitai) LoRAs for SD1.5 and SDXL;
- :func:`write_transformer_lora`: Flux / SD3 LoRAs in kohya's original names, OneTrainer's and diffusers' layouts;
- :func:`write_sdxl_union_controlnet` / :func:`write_flux_union_controlnet`: xinsir's and InstantX's union ControlNets.

Only sizes are tiny. Where a real size cannot be kept (diffusers infers Resampler heads as ``to_q rows // 64``,
so a 32-wide tiny Resampler still has 64-wide heads), the docstring says so. Weights are seeded random and
nonzero, so every artifact changes pixels. IP-Adapter, FaceID and kohya files are float16, like the releases.

>>> paths = write_h94_ip_adapter(tmp / "IP-Adapter", sd15_unet=sd15.unet, sdxl_unet=sdxl.unet)  # doctest: +SKIP
>>> sd15.load_ip_adapter(tmp / "IP-Adapter", subfolder="models", weight_name="ip-adapter_sd15.safetensors")  # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import CharkitError
from ..families.registry import get_spec
from ..paths import atomic_write_bytes, atomic_write_json
from .tinyparts import (
    FACEID_DIM,
    _ip_cross_attention_weights,
    ip_adapter_state_dict,
    perturb_zero_params,
    save_safetensors,
    seeded,
)

__all__ = [
    "VIT_BIGG",
    "VIT_H",
    "VisionTower",
    "clip_vision_encoder",
    "faceid_file_name",
    "h94_faceid_state_dict",
    "h94_full_face_state_dict",
    "h94_plain_state_dict",
    "h94_plus_state_dict",
    "kohya_lora_state_dict",
    "transformer_lora_layers",
    "write_flux_union_controlnet",
    "write_h94_faceid",
    "write_h94_ip_adapter",
    "write_kohya_lora",
    "write_sdxl_union_controlnet",
    "write_transformer_lora",
]

# ip-adapter-plus*/plus-face*: Resampler num_queries (IPAdapterPlus(..., num_tokens=16) in the IP-Adapter demos)
PLUS_TOKENS = 16
RESAMPLER_DEPTH = 4  # Resampler(depth=4) for every h94 plus adapter and FacePerceiverResampler(depth=4)
HEAD_DIM = 64  # Resampler dim_head; diffusers infers heads = to_q.weight.shape[0] // 64
FACEID_LORA_RANK = 4  # the real files use rank 128 (IPAdapterFaceID(lora_rank=128)); tiny UNets are 32-64 wide
# SD1.5 plus: Resampler width = cross_attention_dim (768). SDXL plus: a fixed 1280 (IPAdapterPlusXL), not the
# UNet's 2048; the tiny one keeps that mismatch (64 vs the tiny SDXL's 80).
SDXL_RESAMPLER_DIM = 64


# --------------------------------------------------------------------------------------------------------------
# Image encoders: the two OpenCLIP towers of the h94 repo, at toy size but with *different* widths.


@dataclass(frozen=True)
class VisionTower:
    """A tiny stand-in for one of h94's CLIP vision towers (real sizes in ``real``)."""

    name: str
    real: str
    hidden_size: int
    projection_dim: int


# Real: hidden 1280, projection 1024 (models/image_encoder = laion/CLIP-ViT-H-14-laion2B-s32B-b79K).
VIT_H = VisionTower("OpenCLIP ViT-H/14", "hidden_size 1280, projection_dim 1024, 32 layers", 40, 24)
# Real: hidden 1664, projection 1280 (sdxl_models/image_encoder = OpenCLIP ViT-bigG/14 laion2B-39B-b160k).
VIT_BIGG = VisionTower("OpenCLIP ViT-bigG/14", "hidden_size 1664, projection_dim 1280, 48 layers", 52, 36)


def clip_vision_encoder(tower: VisionTower, seed: int):
    """A CLIPVisionModelWithProjection shaped like ``tower`` (gelu, 4x MLP, 32 px images in 8 px patches)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(
        hidden_size=tower.hidden_size,
        intermediate_size=4 * tower.hidden_size,
        projection_dim=tower.projection_dim,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_act="gelu",  # OpenCLIP towers use exact gelu (OpenAI CLIP uses quick_gelu)
        layer_norm_eps=1e-5,
    )
    with seeded(seed):
        return CLIPVisionModelWithProjection(cfg).eval()


# --------------------------------------------------------------------------------------------------------------
# Module mirrors of tencent-ailab/IP-Adapter (written here, shaped like ip_adapter/resampler.py and
# ip_adapter/ip_adapter_faceid.py): their state_dict() *is* the original key layout.


class _PerceiverAttention(nn.Module):
    # keys: norm1.*, norm2.*, to_q.weight, to_kv.weight (k and v stacked), to_out.weight; no biases
    def __init__(self, dim: int, heads: int):
        super().__init__()
        inner = heads * HEAD_DIM
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)


def _feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    # keys: 0.* (LayerNorm), 1.weight, 3.weight (2 is the GELU)
    return nn.Sequential(
        nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(), nn.Linear(dim * mult, dim, bias=False)
    )


class _Resampler(nn.Module):
    # Resampler (plus, plus-face) when num_queries is given; FacePerceiverResampler (FaceID plus) without latents.
    def __init__(self, *, dim: int, heads: int, embedding_dim: int, output_dim: int, num_queries: int | None):
        super().__init__()
        if num_queries is not None:
            self.latents = nn.Parameter(torch.randn(1, num_queries, dim) / dim**0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([_PerceiverAttention(dim, heads), _feed_forward(dim)]) for _ in range(RESAMPLER_DEPTH)
        )


class _FaceIDProjection(nn.Module):
    # MLPProjModel of ip_adapter_faceid.py: proj.0 (512 -> 1024), proj.2 (1024 -> 4 * cross), norm; ProjPlusModel
    # adds perceiver_resampler.* (FaceID plus / plus-v2).
    def __init__(self, cross: int, *, clip_hidden: int | None = None, heads: int = 1, tokens: int = 4):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Linear(FACEID_DIM, 2 * FACEID_DIM), nn.GELU(), nn.Linear(2 * FACEID_DIM, cross * tokens)
        )
        self.norm = nn.LayerNorm(cross)
        if clip_hidden is not None:
            self.perceiver_resampler = _Resampler(
                dim=cross, heads=heads, embedding_dim=clip_hidden, output_dim=cross, num_queries=None
            )


class _LoRALinear(nn.Module):
    # diffusers' old LoRALinearLayer, which IP-Adapter's LoRAAttnProcessor uses: down.weight (rank, in), up.weight (out, rank)
    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)  # trained files: nonzero (a fresh one starts at zero)


class _FaceIDProcessor(nn.Module):
    # LoRAAttnProcessor (self-attention) / LoRAIPAttnProcessor (cross-attention) of attention_processor_faceid.py
    def __init__(self, hidden: int, cross: int | None, rank: int):
        super().__init__()
        kv_in = cross or hidden
        self.to_q_lora = _LoRALinear(hidden, hidden, rank)
        self.to_k_lora = _LoRALinear(kv_in, hidden, rank)
        self.to_v_lora = _LoRALinear(kv_in, hidden, rank)
        self.to_out_lora = _LoRALinear(hidden, hidden, rank)
        if cross is not None:
            self.to_k_ip = nn.Linear(cross, hidden, bias=False)
            self.to_v_ip = nn.Linear(cross, hidden, bias=False)


def _attn_hidden_size(unet, name: str) -> int:
    # The rule of IP-Adapter's set_ip_adapter() and diffusers' _convert_ip_adapter_attn_to_diffusers
    cfg = unet.config
    if name.startswith("mid_block"):
        return cfg.block_out_channels[-1]
    if name.startswith("up_blocks"):
        return list(reversed(cfg.block_out_channels))[int(name[len("up_blocks.")])]
    return cfg.block_out_channels[int(name[len("down_blocks.")])]


def _unet_processors(unet) -> list[str]:
    # the UNet's own processors in attn_processors order; a loaded plus adapter adds encoder_hid_proj.* ones at the end
    return [n for n in unet.attn_processors if n.startswith(("down_blocks.", "mid_block.", "up_blocks."))]


def _is_sdxl(unet) -> bool:
    return unet.config.addition_embed_type == "text_time"


def _prefixed(prefix: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().contiguous() for k, v in sd.items()}


def _split(flat: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    # {"image_proj.x": t, "ip_adapter.1.y": t} -> {"image_proj": {"x": t}, "ip_adapter": {"1.y": t}} (the .bin nesting)
    out: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        head, _, rest = key.partition(".")
        out[head][rest] = value
    return out


def _cast(sd: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(dtype).contiguous() for k, v in sd.items()}


# --------------------------------------------------------------------------------------------------------------
# h94/IP-Adapter


def h94_plain_state_dict(unet, *, tower: VisionTower, seed: int) -> dict[str, torch.Tensor]:
    """``ip-adapter_sd15`` / ``ip-adapter_sdxl`` / ``ip-adapter_sdxl_vit-h`` keys (ImageProjModel, 4 tokens).

    ``image_proj.proj.weight`` (4 * cross_attention_dim, tower projection_dim), ``image_proj.proj.bias``,
    ``image_proj.norm.{weight,bias}``, ``ip_adapter.{1,3,5,...}.to_{k,v}_ip.weight`` (one pair per
    cross-attention processor; the even numbers are the weightless self-attention slots).
    """
    return ip_adapter_state_dict(unet, image_embed_dim=tower.projection_dim, seed=seed)


def h94_plus_state_dict(unet, *, tower: VisionTower, dim: int, seed: int) -> dict[str, torch.Tensor]:
    """``ip-adapter-plus*`` / ``ip-adapter-plus-face*`` keys (Resampler over the tower's penultimate hidden states).

    ``image_proj.latents`` (1, 16, dim), ``image_proj.proj_in.*`` (dim, tower hidden_size), ``image_proj.proj_out.*``,
    ``image_proj.norm_out.*``, ``image_proj.layers.{0..3}.0.{norm1,norm2}.*``, ``...0.to_q.weight``,
    ``...0.to_kv.weight``, ``...0.to_out.weight``, ``image_proj.layers.{0..3}.1.{0.*,1.weight,3.weight}`` and the
    ``ip_adapter.N.to_{k,v}_ip.weight`` of the plain adapter. Real ``dim``: 768 (SD1.5, = cross_attention_dim,
    12 heads) or 1280 (SDXL, 20 heads); tiny: one 64-wide head.
    """
    with seeded(seed):
        resampler = _Resampler(
            dim=dim,
            heads=1,
            embedding_dim=tower.hidden_size,
            output_dim=unet.config.cross_attention_dim,
            num_queries=PLUS_TOKENS,
        )
    out = _prefixed("image_proj", resampler.state_dict())
    out.update(_ip_cross_attention_weights(unet, seed + 1))
    return out


def h94_full_face_state_dict(unet, *, tower: VisionTower, seed: int) -> dict[str, torch.Tensor]:
    """``ip-adapter-full-face_sd15`` keys (MLPProjModel over all 257 hidden-state tokens of ViT-H).

    ``image_proj.proj.0.*`` (Linear hidden -> hidden), ``image_proj.proj.2.*`` (Linear hidden -> cross),
    ``image_proj.proj.3.*`` (the LayerNorm: index 3 of the Sequential, *not* ``image_proj.norm``; ``proj.0`` +
    ``proj.2`` + ``norm`` is FaceID's layout, and diffusers tells the two apart by ``proj.3.weight``).
    """
    cross = unet.config.cross_attention_dim
    with seeded(seed):
        mlp = nn.Module()
        mlp.proj = nn.Sequential(
            nn.Linear(tower.hidden_size, tower.hidden_size),
            nn.GELU(),
            nn.Linear(tower.hidden_size, cross),
            nn.LayerNorm(cross),
        )
    out = _prefixed("image_proj", mlp.state_dict())
    out.update(_ip_cross_attention_weights(unet, seed + 1))
    return out


# (subfolder, file name, projection kind, the tower the file needs) of every file write_h94_ip_adapter writes.
_H94_FILES = (
    ("models", "ip-adapter_sd15.safetensors", "plain", VIT_H),
    ("models", "ip-adapter-plus_sd15.safetensors", "plus", VIT_H),
    ("models", "ip-adapter-plus-face_sd15.safetensors", "plus", VIT_H),
    ("models", "ip-adapter-full-face_sd15.safetensors", "full-face", VIT_H),
    ("sdxl_models", "ip-adapter_sdxl.safetensors", "plain", VIT_BIGG),
    ("sdxl_models", "ip-adapter_sdxl_vit-h.safetensors", "plain", VIT_H),
    ("sdxl_models", "ip-adapter-plus_sdxl_vit-h.safetensors", "plus", VIT_H),
    ("sdxl_models", "ip-adapter-plus-face_sdxl_vit-h.safetensors", "plus", VIT_H),
)


def write_h94_ip_adapter(
    root: str | os.PathLike, *, sd15_unet, sdxl_unet, seed: int = 0, dtype: torch.dtype = torch.float16
) -> dict[str, Path]:
    """Write a tiny copy of the Hugging Face repo **h94/IP-Adapter** to ``root``; returns {relative path: path}.

    Layout (file and folder names exactly as in the repo)::

        models/ip-adapter_sd15.safetensors              plain, ViT-H image embeds (projection_dim)
        models/ip-adapter-plus_sd15.safetensors         Resampler, 16 tokens, ViT-H penultimate hidden states
        models/ip-adapter-plus-face_sd15.safetensors    same layout as plus
        models/ip-adapter-full-face_sd15.safetensors    MLPProjModel (proj.0 / proj.2 / proj.3), all hidden tokens
        models/image_encoder/{config.json,model.safetensors}       ViT-H (laion/CLIP-ViT-H-14-laion2B-s32B-b79K)
        sdxl_models/ip-adapter_sdxl.safetensors         plain, needs the bigG encoder beside it
        sdxl_models/ip-adapter_sdxl_vit-h.safetensors   plain, needs models/image_encoder (ViT-H)
        sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors        Resampler, ViT-H
        sdxl_models/ip-adapter-plus-face_sdxl_vit-h.safetensors   Resampler, ViT-H
        sdxl_models/image_encoder/{config.json,model.safetensors}  ViT-bigG

    Each ``.safetensors`` holds flat ``image_proj.*`` / ``ip_adapter.*`` keys in float16, as h94 ships them. The two
    tiny towers differ in hidden size and projection dim (:data:`VIT_H`, :data:`VIT_BIGG`), so pairing a
    ``*_vit-h`` adapter with ``sdxl_models/image_encoder`` fails exactly like the real files: "mat1 and mat2 shapes
    cannot be multiplied".

    >>> paths = write_h94_ip_adapter(tmp, sd15_unet=sd15.unet, sdxl_unet=sdxl.unet)  # doctest: +SKIP
    >>> paths["models/image_encoder"]  # doctest: +SKIP
    """
    root = Path(root)
    out: dict[str, Path] = {}
    for i, (sub, name, kind, tower) in enumerate(_H94_FILES):
        unet = sd15_unet if sub == "models" else sdxl_unet
        file_seed = seed + 10 * i
        if kind == "plain":
            sd = h94_plain_state_dict(unet, tower=tower, seed=file_seed)
        elif kind == "plus":
            dim = unet.config.cross_attention_dim if sub == "models" else SDXL_RESAMPLER_DIM
            sd = h94_plus_state_dict(unet, tower=tower, dim=dim, seed=file_seed)
        else:
            sd = h94_full_face_state_dict(unet, tower=tower, seed=file_seed)
        path = root / sub / name
        save_safetensors(path, _cast(sd, dtype))
        out[f"{sub}/{name}"] = path
    for sub, tower, tower_seed in (("models", VIT_H, seed + 100), ("sdxl_models", VIT_BIGG, seed + 101)):
        folder = root / sub / "image_encoder"
        clip_vision_encoder(tower, tower_seed).save_pretrained(folder, safe_serialization=True)
        out[f"{sub}/image_encoder"] = folder
    return out


# --------------------------------------------------------------------------------------------------------------
# h94/IP-Adapter-FaceID

FACEID_VARIANTS = ("faceid", "faceid-plusv2")


def faceid_file_name(unet, variant: str, fmt: str) -> str:
    """h94's file name for ``variant`` on this UNet's family, e.g. ``ip-adapter-faceid-plusv2_sd15.bin``."""
    if variant not in FACEID_VARIANTS:
        raise CharkitError(f"FaceID variant {variant!r}: choose one of {', '.join(FACEID_VARIANTS)}")
    if fmt not in ("bin", "safetensors"):
        raise CharkitError(f"FaceID format {fmt!r}: choose 'bin' (h94's torch pickle) or 'safetensors'")
    return f"ip-adapter-{variant}_{'sdxl' if _is_sdxl(unet) else 'sd15'}.{fmt}"


def h94_faceid_state_dict(unet, *, variant: str = "faceid", seed: int = 0) -> dict[str, torch.Tensor]:
    """Flat keys of an h94 FaceID file: ``image_proj.*`` plus ``ip_adapter.*`` *with* the LoRA of every processor.

    ``ip_adapter`` is ``nn.ModuleList(unet.attn_processors.values()).state_dict()`` of IP-Adapter's FaceID
    processors, so it is numbered over *all* attention processors (0, 1, 2, ...):

    - every ``N`` (self- and cross-attention): ``N.to_q_lora.down.weight`` (rank, hidden), ``N.to_q_lora.up.weight``
      (hidden, rank), and the same for ``to_k_lora``, ``to_v_lora``, ``to_out_lora`` (k/v read cross_attention_dim
      at cross-attention);
    - odd ``N`` (cross-attention) also: ``N.to_k_ip.weight``, ``N.to_v_ip.weight``.

    ``faceid``: ``image_proj.proj.0.*`` (512 -> 1024), ``image_proj.proj.2.*`` (1024 -> 4 * cross),
    ``image_proj.norm.*``. ``faceid-plusv2`` adds ``image_proj.perceiver_resampler.{proj_in,proj_out,norm_out}.*``
    and ``image_proj.perceiver_resampler.layers.{0..3}.*`` (no ``latents``: the id tokens are the queries), whose
    ``proj_in`` reads ViT-H hidden states (:data:`VIT_H`). LoRA rank is 4 here (128 in the real files).
    """
    if variant not in FACEID_VARIANTS:
        raise CharkitError(f"FaceID variant {variant!r}: choose one of {', '.join(FACEID_VARIANTS)}")
    cross = unet.config.cross_attention_dim
    with seeded(seed):
        proj = _FaceIDProjection(cross, clip_hidden=VIT_H.hidden_size if variant == "faceid-plusv2" else None)
        procs = nn.ModuleList(
            _FaceIDProcessor(
                _attn_hidden_size(unet, name), None if name.endswith("attn1.processor") else cross, FACEID_LORA_RANK
            )
            for name in _unet_processors(unet)
        )
    out = _prefixed("image_proj", proj.state_dict())
    out.update(_prefixed("ip_adapter", procs.state_dict()))
    return out


def write_h94_faceid(
    root: str | os.PathLike,
    unet,
    *,
    variant: str = "faceid",
    fmt: str = "bin",
    seed: int = 0,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write a tiny file of the Hugging Face repo **h94/IP-Adapter-FaceID** (at the repo root, as there).

    Files: ``ip-adapter-faceid_sd15.bin``, ``ip-adapter-faceid-plusv2_sd15.bin``, ``ip-adapter-faceid_sdxl.bin``,
    ``ip-adapter-faceid-plusv2_sdxl.bin`` (the family follows ``unet``: SDXL when it has text_time conditioning).
    ``fmt="bin"`` is h94's torch pickle ``{"image_proj": {...}, "ip_adapter": {...}}`` (nested, unprefixed keys);
    ``fmt="safetensors"`` is the flat ``image_proj.*`` / ``ip_adapter.*`` form that converters produce and that
    diffusers reads. Keys: :func:`h94_faceid_state_dict`. Load with ``image_encoder_folder=None`` (FaceID has no
    encoder; plus-v2 also wants ViT-H hidden states set as ``clip_embeds`` on its projection layer).

    >>> write_h94_faceid(tmp, sd15.unet, variant="faceid-plusv2")  # doctest: +SKIP
    PosixPath('.../ip-adapter-faceid-plusv2_sd15.bin')
    """
    path = Path(root) / faceid_file_name(unet, variant, fmt)
    sd = _cast(h94_faceid_state_dict(unet, variant=variant, seed=seed), dtype)
    if fmt == "safetensors":
        save_safetensors(path, sd)
    else:
        buf = io.BytesIO()
        torch.save(_split(sd), buf)
        atomic_write_bytes(path, buf.getvalue())
    return path


# --------------------------------------------------------------------------------------------------------------
# kohya-ss/sd-scripts LoRAs (what Civitai hosts for SD1.5 and SDXL)

_KOHYA_UNET_TARGETS = ("Transformer2DModel",)  # LoRANetwork.UNET_TARGET_REPLACE_MODULE
_KOHYA_CONV_TARGETS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")  # ..._CONV2D_3X3, with conv_dim
_KOHYA_TE_TARGETS = ("CLIPAttention", "CLIPMLP")  # LoRANetwork.TEXT_ENCODER_TARGET_REPLACE_MODULE


def _targets(root: nn.Module, classes: tuple[str, ...]):
    """(dotted path, Linear or Conv2d) under every module of a class in ``classes`` (kohya's create_modules walk)."""
    for name, module in root.named_modules():
        if type(module).__name__ not in classes:
            continue
        for child_name, child in module.named_modules(remove_duplicate=False):
            # diffusers' Downsample2D also exposes its conv as Conv2d_0; kohya's own UNet has only ``conv``
            if isinstance(child, nn.Linear | nn.Conv2d) and not child_name.endswith("Conv2d_0"):
                yield f"{name}.{child_name}", child


def _sgm_unet_path(path: str, layers_per_block: int) -> str:
    """A diffusers UNet module path in the sgm/LDM naming of kohya's SDXL UNet (library/sdxl_original_unet.py).

    ``down_blocks.B.attentions.J`` -> ``input_blocks.{1 + B*(L+1) + J}.1``; ``mid_block.attentions.0`` ->
    ``middle_block.1``; ``up_blocks.B.attentions.J`` -> ``output_blocks.{B*(L+1) + J}.1`` (L = layers_per_block;
    up blocks have L+1 layers). The rest (``transformer_blocks.0.attn1.to_q``, ``ff.net.0.proj``) is unchanged.
    """
    per = layers_per_block + 1
    m = re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", path)
    if m:
        return f"input_blocks.{1 + int(m[1]) * per + int(m[2])}.1.{m[3]}"
    m = re.fullmatch(r"mid_block\.attentions\.0\.(.+)", path)
    if m:
        return f"middle_block.1.{m[1]}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", path)
    if m:
        return f"output_blocks.{int(m[1]) * per + int(m[2])}.1.{m[3]}"
    raise CharkitError(f"no sgm name for UNet module {path!r}")


def _lora_pair(module: nn.Module, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """kohya LoRAModule shapes: Linear -> down (rank, in), up (out, rank); Conv2d -> down (rank, in, k, k), up (out, rank, 1, 1)."""
    if isinstance(module, nn.Conv2d):
        down = nn.Conv2d(module.in_channels, rank, module.kernel_size, module.stride, module.padding, bias=False)
        up = nn.Conv2d(rank, module.out_channels, (1, 1), (1, 1), bias=False)
    else:
        down = nn.Linear(module.in_features, rank, bias=False)
        up = nn.Linear(rank, module.out_features, bias=False)
    return down.weight.detach(), up.weight.detach()  # default (kaiming) init: nonzero up, like a trained file


def kohya_lora_state_dict(
    pipe,
    family: str,
    *,
    rank: int = 4,
    alpha: float = 2.0,
    text_encoder: bool = True,
    conv_rank: int | None = None,
    conv_alpha: float | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """The keys kohya-ss/sd-scripts ``networks/lora.py`` saves for ``pipe`` (tensors float32; see write_kohya_lora).

    ``<lora_name>.lora_down.weight``, ``<lora_name>.lora_up.weight``, ``<lora_name>.alpha`` (0-d), where lora_name is
    ``lora_unet_`` + the module path with dots as underscores, for every Linear/Conv2d inside each Transformer2DModel
    (``proj_in``, ``proj_out``, ``transformer_blocks_N_attn{1,2}_to_{q,k,v}``, ``..._to_out_0``, ``..._ff_net_0_proj``,
    ``..._ff_net_2``). SD1.5 uses the diffusers block names (``lora_unet_down_blocks_1_attentions_0_proj_in``,
    a 1x1 conv there, so its weights are 4-D); SDXL the sgm names of kohya's own SDXL UNet
    (``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``, ``lora_unet_middle_block_1_...``,
    ``lora_unet_output_blocks_0_1_...``). Text encoders: ``lora_te_`` (SD1.5) or ``lora_te1_`` / ``lora_te2_``
    (SDXL) + ``text_model_encoder_layers_N_self_attn_{q,k,v,out}_proj`` / ``..._mlp_fc{1,2}``.
    ``conv_rank`` (SD1.5 only) adds kohya's ``conv_dim`` LoCon modules: the 3x3 convs of ResnetBlock2D /
    Downsample2D / Upsample2D at ``conv_rank``, their Linear ``time_emb_proj`` and 1x1 ``conv_shortcut`` at ``rank``.
    """
    if get_spec(family).denoiser != "unet":
        raise CharkitError(f"kohya LoRA family {family!r}: this builder covers the UNet families (SD1.5, SDXL)")
    if conv_rank is not None and family != "sd15":
        raise CharkitError("conv_rank (kohya LoCon) is built for sd15 only")
    lpb = pipe.unet.config.layers_per_block
    modules: list[tuple[str, nn.Module, int, float]] = []
    for path, mod in _targets(pipe.unet, _KOHYA_UNET_TARGETS):
        name = path if family == "sd15" else _sgm_unet_path(path, lpb)
        modules.append(("lora_unet_" + name, mod, rank, alpha))
    if conv_rank is not None:
        for path, mod in _targets(pipe.unet, _KOHYA_CONV_TARGETS):
            is_3x3 = isinstance(mod, nn.Conv2d) and mod.kernel_size != (1, 1)
            r, a = (conv_rank, conv_alpha if conv_alpha is not None else 1.0) if is_3x3 else (rank, alpha)
            modules.append(("lora_unet_" + path, mod, r, a))
    if text_encoder:
        encoders = [("lora_te", pipe.text_encoder)]
        if family == "sdxl":
            encoders = [("lora_te1", pipe.text_encoder), ("lora_te2", pipe.text_encoder_2)]
        for prefix, te in encoders:
            for path, mod in _targets(te, _KOHYA_TE_TARGETS):
                # kohya's files say text_model.encoder... (transformers 4 naming; v5's CLIPTextModel dropped text_model.)
                path = path if path.startswith("text_model.") else "text_model." + path
                modules.append((f"{prefix}_{path}", mod, rank, alpha))
    out: dict[str, torch.Tensor] = {}
    with seeded(seed):
        for name, mod, r, a in modules:
            key = name.replace(".", "_")
            down, up = _lora_pair(mod, r)
            out[f"{key}.lora_down.weight"] = down
            out[f"{key}.lora_up.weight"] = up
            out[f"{key}.alpha"] = torch.tensor(float(a))
    return out


def write_kohya_lora(
    path: str | os.PathLike,
    pipe,
    family: str,
    *,
    text_encoder: bool = True,
    seed: int = 0,
    rank: int = 4,
    alpha: float = 2.0,
    conv_rank: int | None = None,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write a kohya-ss/sd-scripts LoRA (``train_network.py`` / ``sdxl_train_network.py``, networks.lora) for ``pipe``.

    Keys: :func:`kohya_lora_state_dict` (alpha != rank, so diffusers' alpha scaling shows in pixels). Saved as
    kohya saves with ``--save_precision fp16``: every tensor, ``.alpha`` included, in ``dtype``; metadata as
    train_network.py writes it (all values strings): ``ss_network_module`` "networks.lora", ``ss_network_dim``,
    ``ss_network_alpha``, ``ss_base_model_version`` ("sd_v1" / "sdxl_base_v1-0"), ``ss_v2``, the SAI ``modelspec.*``
    keys and, for LoCon only, ``ss_network_args`` (``{"conv_dim": ..., "conv_alpha": ...}``).

    >>> write_kohya_lora(tmp / "style.safetensors", pipe, "sdxl")  # doctest: +SKIP
    """
    sd = kohya_lora_state_dict(
        pipe, family, rank=rank, alpha=alpha, text_encoder=text_encoder, conv_rank=conv_rank, seed=seed
    )
    arch, impl = get_spec(family).modelspec_architecture + "/lora", get_spec(family).modelspec_implementation
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_base_model_version": get_spec(family).kohya_base,
        "ss_v2": "False",
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": arch,
        "modelspec.implementation": impl,
        "modelspec.title": Path(path).stem,
    }
    if conv_rank is not None:  # written only when --network_args was given, as json of the kwargs
        metadata["ss_network_args"] = json.dumps({"conv_dim": str(conv_rank), "conv_alpha": "1.0"})
    save_safetensors(Path(path), _cast(sd, dtype), metadata=metadata)
    return Path(path)


# --------------------------------------------------------------------------------------------------------------
# Union ControlNets (diffusers folders: config.json + diffusion_pytorch_model.safetensors)


def write_sdxl_union_controlnet(
    directory: str | os.PathLike, unet, *, num_control_type: int = 6, seed: int = 0
) -> Path:
    """Write a tiny **xinsir/controlnet-union-sdxl-1.0** (config.json + diffusion_pytorch_model.safetensors).

    The weights are diffusers' ``ControlNetUnionModel`` layout (``task_embedding`` (num_control_type, C),
    ``transformer_layes.0.*`` (sic), ``spatial_ch_projs.*``, ``control_add_embedding.*``, the usual ControlNet
    ``controlnet_down_blocks.*`` / ``controlnet_mid_block.*``). config.json follows xinsir's file: ``_class_name``
    is ``"ControlNetModel"`` (the config was derived from an SDXL ControlNet's; ``ControlNetUnionModel.from_pretrained``
    reads it all the same) and ``num_control_type`` 6 (openpose, depth, hed/scribble, canny/lineart, normal,
    segment; the promax file has 8). xinsir hard-codes the condition transformer at 320 channels, 8 heads, 1 layer
    (= block_out_channels[0]), so the real config has no ``num_trans_*`` fields; the tiny one must state them
    (``num_trans_channel`` = ``num_proj_channel`` = block_out_channels[0] = 32). Zero convs are perturbed.

    >>> write_sdxl_union_controlnet(tmp / "controlnet-union-sdxl-1.0", sdxl.unet)  # doctest: +SKIP
    """
    from diffusers import ControlNetUnionModel

    directory = Path(directory)
    width = unet.config.block_out_channels[0]
    template = ControlNetUnionModel.from_unet(
        unet, conditioning_embedding_out_channels=(16, 32), load_weights_from_unet=False
    )
    config = {k: v for k, v in template.config.items() if not k.startswith("_")}
    config.update(
        num_control_type=num_control_type,
        num_trans_channel=width,
        num_trans_head=8,
        num_trans_layer=1,
        num_proj_channel=width,
    )
    with seeded(seed):
        cn = ControlNetUnionModel.from_config(config)
    cn.conv_in.load_state_dict(unet.conv_in.state_dict())
    cn.time_embedding.load_state_dict(unet.time_embedding.state_dict())
    cn.add_embedding.load_state_dict(unet.add_embedding.state_dict())
    cn.down_blocks.load_state_dict(unet.down_blocks.state_dict(), strict=False)
    cn.mid_block.load_state_dict(unet.mid_block.state_dict(), strict=False)
    perturb_zero_params(cn, seed)
    cn.save_pretrained(directory, safe_serialization=True)
    cfg_path = directory / "config.json"
    saved = json.loads(cfg_path.read_text("utf-8"))
    saved.update({"_class_name": "ControlNetModel", "_diffusers_version": "0.20.0.dev0"})
    atomic_write_json(cfg_path, saved)
    return directory


def write_flux_union_controlnet(
    directory: str | os.PathLike,
    transformer,
    *,
    num_mode: int = 10,
    num_layers: int = 1,
    num_single_layers: int = 1,
    seed: int = 0,
) -> Path:
    """Write a tiny **InstantX/FLUX.1-dev-Controlnet-Union** (config.json + diffusion_pytorch_model.safetensors).

    ``FluxControlNetModel`` with ``num_mode`` set (10 in InstantX's config: canny 0, tile 1, depth 2, blur 3, pose 4,
    gray 5, low quality 6), which adds ``controlnet_mode_embedder.weight`` (num_mode, inner_dim) and makes
    ``control_mode`` mandatory. The real one has 5 double and 10 single blocks (FLUX.1-dev: 19 and 38) at the base
    model's 24 heads x 128; the tiny one takes the transformer's head count/width and 1 + 1 blocks (diffusers'
    ``from_transformer`` defaults, 4/10 blocks of 24 x 128, do not fit a tiny transformer). Zero layers
    (``controlnet_blocks.*``, ``controlnet_single_blocks.*``, ``controlnet_x_embedder``) are perturbed.

    >>> write_flux_union_controlnet(tmp / "FLUX.1-dev-Controlnet-Union", flux.transformer)  # doctest: +SKIP
    """
    from diffusers import FluxControlNetModel

    directory = Path(directory)
    config = {k: v for k, v in transformer.config.items() if not k.startswith("_") and k != "out_channels"}
    config.update(num_layers=num_layers, num_single_layers=num_single_layers, num_mode=num_mode)
    with seeded(seed):
        cn = FluxControlNetModel.from_config(config)
    for part in ("pos_embed", "time_text_embed", "context_embedder", "x_embedder"):
        getattr(cn, part).load_state_dict(getattr(transformer, part).state_dict())
    cn.transformer_blocks.load_state_dict(transformer.transformer_blocks.state_dict(), strict=False)
    cn.single_transformer_blocks.load_state_dict(transformer.single_transformer_blocks.state_dict(), strict=False)
    perturb_zero_params(cn, seed)
    cn.save_pretrained(directory, safe_serialization=True)
    return directory


# --------------------------------------------------------------------------------------------------------------
# Flux / SD3 LoRAs as Civitai ships them: kohya sd-scripts (BFL / Stability module names, fused qkv), OneTrainer
# (lora_transformer_<diffusers module>) and diffusers' own layout

TRANSFORMER_LORA_LAYOUTS = ("kohya", "onetrainer", "diffusers")


def transformer_lora_layers(pipe, family: str, *, rank: int = 4, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """``{"transformer": peft state dict}``: a LoRA on the family's default targets (``SPEC.lora_targets``) of
    ``pipe.transformer``, nonzero ``lora_B`` (a trained file), float32."""
    targets = get_spec(family).lora_targets
    layers: dict[str, torch.Tensor] = {}
    g = torch.Generator().manual_seed(seed)
    for name, module in sorted(pipe.transformer.named_modules()):
        if isinstance(module, nn.Linear) and name.endswith(tuple("." + t for t in targets)):
            layers[f"{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=g) * 0.1
            layers[f"{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=g) * 0.1
    return {"transformer": layers}


def write_transformer_lora(
    path: str | os.PathLike,
    pipe,
    family: str,
    *,
    layout: str = "kohya",
    rank: int = 4,
    alpha: float = 2.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """A Flux / SD3 LoRA for ``pipe`` in a released layout (same weights for the same seed, whatever the layout).

    ``kohya``: sd-scripts' ``networks/lora_flux.py`` / ``lora_sd3.py`` keys (``lora_unet_double_blocks_0_img_attn_qkv``,
    ``lora_unet_joint_blocks_0_x_block_attn_qkv``; fused modules block-diagonal, as ``convert_flux_lora.py`` writes);
    ``onetrainer``: ``lora_transformer_transformer_blocks_0_attn_to_q`` (OneTrainer; charkit's own kohya export of
    Flux/SD3 before it wrote original names); ``diffusers``: ``transformer.<module>.lora_A.weight`` with alpha folded
    into ``lora_A``. kohya metadata as sd-scripts writes it (``ss_network_module`` "networks.lora_flux"/"_sd3").
    """
    from ..families.loraformats import to_kohya, to_onetrainer

    if layout not in TRANSFORMER_LORA_LAYOUTS:
        raise CharkitError(f"LoRA layout {layout!r}: choose one of {', '.join(TRANSFORMER_LORA_LAYOUTS)}")
    layers = transformer_lora_layers(pipe, family, rank=rank, seed=seed)
    if layout == "kohya":
        sd = to_kohya(family, layers, alpha=alpha)
    elif layout == "onetrainer":
        sd = to_onetrainer(family, layers, alpha=alpha)
    else:
        scale = alpha / rank
        sd = {
            f"transformer.{k}": (v * scale if k.endswith("lora_A.weight") else v)
            for k, v in layers["transformer"].items()
        }
    spec = get_spec(family)
    metadata = {
        "ss_network_module": f"networks.lora_{family}",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_base_model_version": spec.kohya_base,
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": spec.modelspec_architecture + "/lora",
        "modelspec.implementation": spec.modelspec_implementation,
    }
    save_safetensors(Path(path), _cast(sd, dtype), metadata=None if layout == "diffusers" else metadata)
    return Path(path)
