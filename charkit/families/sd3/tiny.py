"""A tiny random-weight SD3 (1-layer MMDiT, two CLIP encoders with projection, T5) saved exactly like a real one.

The SD3 pipeline pads CLIP prompts to 77 tokens, so the tiny CLIP encoders keep 77 positions.

>>> tiny = build_tiny(tmp / "sd3")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

from ...testing.tinyparts import (
    TinyModel,
    clip_text_config,
    clip_tokenizer,
    perturb_zero_params,
    relocate,
    seeded,
    staging_dir,
    t5_encoder,
    t5_tokenizer,
    write_manifest,
)

__all__ = ["TinyModel", "build_tiny", "tiny_pipeline"]


def tiny_pipeline(seed: int = 0):
    """An in-memory tiny StableDiffusion3Pipeline (deterministic in ``seed``)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    with seeded(seed):
        transformer = SD3Transformer2DModel(
            sample_size=32,
            patch_size=1,
            in_channels=4,
            num_layers=2,  # the last block is context-pre-only and takes no ControlNet residual: 2 so one does
            attention_head_dim=8,
            num_attention_heads=4,
            caption_projection_dim=32,
            joint_attention_dim=32,
            pooled_projection_dim=64,  # the two CLIP projections, concatenated
            out_channels=4,
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
            sample_size=32,
            use_quant_conv=False,
            use_post_quant_conv=False,
            shift_factor=0.0609,
            scaling_factor=1.5035,
        )
    with seeded(seed + 2):
        text_encoder = CLIPTextModelWithProjection(clip_text_config(32, projection_dim=32))
        text_encoder_2 = CLIPTextModelWithProjection(clip_text_config(32, projection_dim=32))
    text_encoder_3 = t5_encoder(seed + 3, d_model=32)
    return StableDiffusion3Pipeline(
        transformer=transformer.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=clip_tokenizer(77),
        text_encoder_2=text_encoder_2.eval(),
        tokenizer_2=clip_tokenizer(77),
        text_encoder_3=text_encoder_3,
        tokenizer_3=t5_tokenizer(),
    )


def build_tiny(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    controlnet: bool = True,
    ip_adapter: bool = True,
    single_file: bool = True,
) -> TinyModel:
    """Write a tiny SD3 to ``out_dir`` (new or empty; atomic). ``controlnet/`` holds an SD3ControlNetModel with
    perturbed zero layers. SD3 has no IP-Adapter in charkit and no tiny single file: those flags are ignored."""
    from diffusers import SD3ControlNetModel

    del ip_adapter, single_file
    final = Path(out_dir)
    with staging_dir(final) as tmp:
        pipe = tiny_pipeline(seed)
        pipe.save_pretrained(tmp, safe_serialization=True)
        tiny = TinyModel(family="sd3", root=tmp)
        if controlnet:
            cfg = dict(pipe.transformer.config)
            cfg.update(num_layers=1, extra_conditioning_channels=0)
            cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
            with seeded(seed + 4):
                cn = SD3ControlNetModel.from_config(cfg)
            # start from the base weights where shapes agree (the base's last block is context-pre-only)
            own = cn.state_dict()
            base = {k: v for k, v in pipe.transformer.state_dict().items() if k in own and own[k].shape == v.shape}
            cn.load_state_dict(base, strict=False)
            perturb_zero_params(cn, seed + 4)
            cn.save_pretrained(tmp / "controlnet", safe_serialization=True)
            tiny.controlnet = tmp / "controlnet"
        write_manifest(tiny)
    return relocate(tiny, tmp, final)
