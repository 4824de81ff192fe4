"""A tiny random-weight SDXL (UNet (32, 64) with text_time conditioning, two CLIP encoders of widths 32 and 48).

The two text encoders must differ in width: with equal widths diffusers' single-file loader cannot
tell them apart and loads the first encoder's weights into the second (see OFFLINE.md).

>>> tiny = build_tiny(tmp / "sdxl")  # doctest: +SKIP
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

SINGLE_FILE = "single_file/tiny-sdxl.safetensors"
TE1, TE2, TE2_PROJ, TIME_DIM = 32, 48, 32, 8


def tiny_pipeline(seed: int = 0):
    """An in-memory tiny StableDiffusionXLPipeline (deterministic in ``seed``)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    with seeded(seed):
        unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            transformer_layers_per_block=(1, 2),
            addition_embed_type="text_time",
            addition_time_embed_dim=TIME_DIM,
            projection_class_embeddings_input_dim=6 * TIME_DIM + TE2_PROJ,
            cross_attention_dim=TE1 + TE2,
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
        text_encoder = CLIPTextModel(clip_text_config(TE1))
        text_encoder_2 = CLIPTextModelWithProjection(clip_text_config(TE2, projection_dim=TE2_PROJ))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    return StableDiffusionXLPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        text_encoder_2=text_encoder_2.eval(),
        tokenizer=clip_tokenizer(77),
        tokenizer_2=clip_tokenizer(77),
        unet=unet.eval(),
        scheduler=scheduler,
        image_encoder=None,
        feature_extractor=None,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


# Copied from charkit.families.sd15.tiny.build_tiny with sd15->sdxl, SD1.5->SDXL
def build_tiny(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    controlnet: bool = True,
    ip_adapter: bool = True,
    single_file: bool = True,
) -> TinyModel:
    """Write a tiny SDXL to ``out_dir`` (must be new or empty; written atomically as a whole).

    ``out_dir`` itself is the diffusers pipeline folder; beside the components it holds ``controlnet/``
    (ControlNet with perturbed zero convs, so it changes pixels), ``ip_adapter/`` (plain adapter + tiny CLIP
    image encoder, and a FaceID adapter in h94's layout with its LoRA) and ``single_file/tiny-sdxl.safetensors``
    (original LDM layout).
    """
    from diffusers import ControlNetModel

    from ...testing.layouts import h94_faceid_state_dict
    from ...testing.ldm import sdxl_checkpoint

    final = Path(out_dir)
    with staging_dir(final) as tmp:
        pipe = tiny_pipeline(seed)
        pipe.save_pretrained(tmp, safe_serialization=True)
        tiny = TinyModel(family="sdxl", root=tmp)
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
            tiny.ip_adapter = tmp / "ip_adapter" / "ip-adapter_tiny-sdxl.safetensors"
            save_safetensors(tiny.ip_adapter, ip_adapter_state_dict(pipe.unet, image_embed_dim=32, seed=seed + 5))
            tiny.faceid = tmp / "ip_adapter" / "ip-adapter-faceid_tiny-sdxl.safetensors"
            # h94's FaceID layout, its LoRA included (the real files carry one; a fixture without it hides bugs)
            save_safetensors(tiny.faceid, h94_faceid_state_dict(pipe.unet, seed=seed + 7))
        if single_file:
            tiny.single_file = tmp / SINGLE_FILE
            save_safetensors(tiny.single_file, sdxl_checkpoint(pipe), metadata={"format": "pt"})
        write_manifest(tiny)
    return relocate(tiny, tmp, final)
