"""Tiny single-file checkpoints in the original (LDM / A1111 / Civitai) layout, for SD1.5 and SDXL.

diffusers can *read* original-layout checkpoints (``from_single_file``) but ships no exporter, so
the tiny-model builder writes its single-file checkpoint with :mod:`charkit.families.ldm`'s name maps.
It is what lets tests load a "Civitai fine-tune" through the same path as a real one.
"""

from __future__ import annotations

import torch

from ..families.ldm import clip_to_ldm, open_clip_to_ldm, unet_to_ldm, vae_to_ldm


def sd15_checkpoint(pipe) -> dict[str, torch.Tensor]:
    """A whole StableDiffusionPipeline as one original-layout state dict (what a Civitai SD1.5 file holds)."""
    out = {}
    for k, v in unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config).items():
        out["model.diffusion_model." + k] = v
    for k, v in vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config).items():
        out["first_stage_model." + k] = v
    for k, v in clip_to_ldm(pipe.text_encoder.state_dict()).items():
        out["cond_stage_model.transformer." + k] = v
    return {k: v.detach().contiguous() for k, v in out.items()}


def sdxl_checkpoint(pipe) -> dict[str, torch.Tensor]:
    """A whole StableDiffusionXLPipeline as one original-layout state dict."""
    out = {}
    for k, v in unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config).items():
        out["model.diffusion_model." + k] = v
    for k, v in vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config).items():
        out["first_stage_model." + k] = v
    for k, v in clip_to_ldm(pipe.text_encoder.state_dict()).items():
        out["conditioner.embedders.0.transformer." + k] = v
    te2 = pipe.text_encoder_2
    for k, v in open_clip_to_ldm(te2.state_dict(), te2.config.num_attention_heads).items():
        out["conditioner.embedders.1.model." + k] = v
    return {k: v.detach().contiguous() for k, v in out.items()}
