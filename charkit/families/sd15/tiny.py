"""A tiny random-weight SD1.5 (UNet (32, 64), VAE factor 2, 2-layer CLIP) saved exactly like a real one.

>>> tiny = build_tiny(tmp / "sd15")  # doctest: +SKIP
>>> pipe = load_pipeline(tiny.root)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

from ...testing.tinyparts import (
    TinyModel,
    clip_text_config,
    clip_tokenizer,
    image_encoder,
    ip_adapter_state_dict,
    perturb_zero_params,
    relocate,
    save_safetensors,
    seeded,
    staging_dir,
    write_manifest,
)

__all__ = ["TinyModel", "build_tiny", "tiny_pipeline"]

SINGLE_FILE = "single_file/tiny-sd15.safetensors"


def tiny_pipeline(seed: int = 0):
    """An in-memory tiny StableDiffusionPipeline (deterministic in ``seed``)."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    with seeded(seed):
        unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=32,
        )
    with seeded(seed + 1):
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=4,
            norm_num_groups=32,
            sample_size=64,
        )
    with seeded(seed + 2):
        text_encoder = CLIPTextModel(clip_text_config(32))
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    return StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=clip_tokenizer(77),
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


def build_tiny(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    controlnet: bool = True,
    ip_adapter: bool = True,
    single_file: bool = True,
) -> TinyModel:
    """Write a tiny SD1.5 to ``out_dir`` (must be new or empty; written atomically as a whole).

    ``out_dir`` itself is the diffusers pipeline folder; beside the components it holds ``controlnet/``
    (ControlNet with perturbed zero convs, so it changes pixels), ``ip_adapter/`` (plain adapter + tiny CLIP
    image encoder, and a FaceID adapter in h94's layout with its LoRA) and ``single_file/tiny-sd15.safetensors``
    (original LDM layout).
    """
    from diffusers import ControlNetModel

    from ...testing.layouts import h94_faceid_state_dict
    from ...testing.ldm import sd15_checkpoint

    final = Path(out_dir)
    with staging_dir(final) as tmp:
        pipe = tiny_pipeline(seed)
        pipe.save_pretrained(tmp, safe_serialization=True)
        tiny = TinyModel(family="sd15", root=tmp)
        if controlnet:
            with seeded(seed + 3):
                cn = ControlNetModel.from_unet(pipe.unet, conditioning_embedding_out_channels=(16, 32))
            perturb_zero_params(cn, seed + 3)
            cn.save_pretrained(tmp / "controlnet", safe_serialization=True)
            tiny.controlnet = tmp / "controlnet"
        if ip_adapter:
            enc = image_encoder(seed + 4, projection_dim=32)
            tiny.image_encoder = tmp / "ip_adapter" / "image_encoder"
            enc.save_pretrained(tiny.image_encoder, safe_serialization=True)
            tiny.ip_adapter = tmp / "ip_adapter" / "ip-adapter_tiny-sd15.safetensors"
            save_safetensors(tiny.ip_adapter, ip_adapter_state_dict(pipe.unet, image_embed_dim=32, seed=seed + 5))
            tiny.faceid = tmp / "ip_adapter" / "ip-adapter-faceid_tiny-sd15.safetensors"
            # h94's FaceID layout, its LoRA included (the real files carry one; a fixture without it hides bugs)
            save_safetensors(tiny.faceid, h94_faceid_state_dict(pipe.unet, seed=seed + 7))
        if single_file:
            tiny.single_file = tmp / SINGLE_FILE
            save_safetensors(tiny.single_file, sd15_checkpoint(pipe), metadata={"format": "pt"})
        write_manifest(tiny)
    return relocate(tiny, tmp, final)
