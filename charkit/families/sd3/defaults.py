"""Stable Diffusion 3 / 3.5 (medium, large): every family fact in one SPEC."""

from __future__ import annotations

from ..spec import FamilySpec

SPEC = FamilySpec(
    name="sd3",
    description="SD3/3.5: 1024px MMDiT with two CLIP encoders and T5; good typography and composition.",
    pipeline_class="StableDiffusion3Pipeline",
    controlnet_pipeline_class="StableDiffusion3ControlNetPipeline",
    controlnet_class="SD3ControlNetModel",
    pipeline_prefix="StableDiffusion3",
    width=1024,
    height=1024,
    steps=28,
    guidance=5.0,
    scheduler="FlowMatchEulerDiscreteScheduler",
    size_multiple=16,
    example_model="stabilityai/stable-diffusion-3.5-medium",
    # Text-encoder LoRA and IP-Adapters are not wired for SD3 in charkit.
    supports=frozenset({"lora", "controlnet", "clip_skip", "without_t5", "hires"}),
    controls=frozenset({"canny", "depth"}),
    prediction="flow",
    denoiser="transformer",
    # Joint attention projections of the image and the context stream.
    lora_targets=("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"),
    text_conditioning="clip2_t5",
    lora_components=("transformer", "text_encoder", "text_encoder_2", "text_encoder_3"),
    t5_encoder="text_encoder_3",
    kohya_text_encoders=(
        ("text_encoder", "lora_te1_"),
        ("text_encoder_2", "lora_te2_"),
        ("text_encoder_3", "lora_te3_"),
    ),
    original_layout="sai",  # Stability's MMDiT names (joint_blocks.N.x_block...)
    modelspec_architecture="stable-diffusion-3",
    modelspec_implementation="https://github.com/Stability-AI/generative-models",
    kohya_base="sd3",
    single_file_keys=("joint_blocks.",),
    single_file_parts=(
        ("text_encoders.clip_l.transformer.", "text_encoder"),
        ("text_encoders.clip_g.transformer.", "text_encoder_2"),
        ("text_encoders.t5xxl.transformer.", "text_encoder_3"),
        ("first_stage_model.", "vae"),
    ),
    img2img_pipeline_class="StableDiffusion3Img2ImgPipeline",
    detect_priority=1,
    # diffusers' SD3 inpaint pipeline takes SD3's own 16 latent channels (blended) or a 33-channel inpainting model.
    inpaint_pipeline_class="StableDiffusion3InpaintPipeline",
    inpaint_in_channels=(16, 33),
)
