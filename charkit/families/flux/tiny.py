"""A tiny random-weight Flux (1 double + 1 single block, CLIP + T5 encoders) saved exactly like a real one.

>>> tiny = build_tiny(tmp / "flux")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

from ...testing.tinyparts import (
    TinyModel,
    clip_text_config,
    clip_tokenizer,
    flux_ip_adapter_state_dict,
    image_encoder,
    perturb_zero_params,
    relocate,
    save_safetensors,
    seeded,
    staging_dir,
    t5_encoder,
    t5_tokenizer,
    write_manifest,
)

__all__ = ["TinyModel", "build_tiny", "tiny_pipeline"]

_BLOCKS = dict(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2)


def tiny_pipeline(seed: int = 0):
    """An in-memory tiny FluxPipeline (deterministic in ``seed``)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    with seeded(seed):
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=4,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            guidance_embeds=True,
            axes_dims_rope=(4, 4, 8),
            **_BLOCKS,
        )
    with seeded(seed + 1):
        # in_channels 4 = 1 latent channel packed 2x2 (Flux packs latents into 2x2 patches)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=1,
            norm_num_groups=32,
            sample_size=64,
            use_quant_conv=False,
            use_post_quant_conv=False,
            shift_factor=0.0609,
            scaling_factor=1.5035,
        )
    with seeded(seed + 2):
        text_encoder = CLIPTextModel(clip_text_config(32))
    text_encoder_2 = t5_encoder(seed + 3, d_model=32)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=clip_tokenizer(77),
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tokenizer(),
        transformer=transformer.eval(),
    )


def build_tiny(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    controlnet: bool = True,
    ip_adapter: bool = True,
    single_file: bool = True,
) -> TinyModel:
    """Write a tiny Flux to ``out_dir`` (new or empty; atomic). ``controlnet/`` holds a FluxControlNetModel
    with perturbed zero layers; ``ip_adapter/`` a plain IP-Adapter (XLabs layout) and its CLIP image encoder.
    There is no Flux FaceID and no tiny Flux single file (``single_file`` is accepted and ignored)."""
    from diffusers import FluxControlNetModel

    del single_file
    final = Path(out_dir)
    with staging_dir(final) as tmp:
        pipe = tiny_pipeline(seed)
        pipe.save_pretrained(tmp, safe_serialization=True)
        tiny = TinyModel(family="flux", root=tmp)
        if controlnet:
            with seeded(seed + 4):
                cn = FluxControlNetModel.from_transformer(pipe.transformer, **_BLOCKS)
            perturb_zero_params(cn, seed + 4)
            cn.save_pretrained(tmp / "controlnet", safe_serialization=True)
            tiny.controlnet = tmp / "controlnet"
        if ip_adapter:
            enc = image_encoder(seed + 5, projection_dim=32)
            tiny.image_encoder = tmp / "ip_adapter" / "image_encoder"
            enc.save_pretrained(tiny.image_encoder, safe_serialization=True)
            tiny.ip_adapter = tmp / "ip_adapter" / "ip-adapter_tiny-flux.safetensors"
            sd = flux_ip_adapter_state_dict(pipe.transformer, image_embed_dim=32, seed=seed + 6)
            save_safetensors(tiny.ip_adapter, sd)
        write_manifest(tiny)
    return relocate(tiny, tmp, final)
