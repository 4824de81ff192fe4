"""FLUX.1 (dev / schnell and fine-tunes): every family fact in one SPEC."""

from __future__ import annotations

from ..spec import FamilySpec

SPEC = FamilySpec(
    name="flux",
    description="Flux: 1024px rectified-flow transformer with CLIP + T5 text encoders; best prompt following.",
    pipeline_class="FluxPipeline",
    controlnet_pipeline_class="FluxControlNetPipeline",
    controlnet_class="FluxControlNetModel",
    pipeline_prefix="Flux",
    width=1024,
    height=1024,
    steps=28,
    guidance=3.5,  # distilled guidance (FLUX.1-dev); true CFG only with true_cfg_scale > 1
    scheduler="FlowMatchEulerDiscreteScheduler",
    size_multiple=16,
    example_model="black-forest-labs/FLUX.1-dev",
    # Plain IP-Adapter in the XLabs layout (diffusers' FluxIPAdapterMixin); there is no Flux FaceID adapter.
    supports=frozenset({"lora", "controlnet", "ip_adapter", "true_cfg", "hires"}),
    controls=frozenset({"canny", "depth"}),
    prediction="flow",
    denoiser="transformer",
    lora_targets=("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"),
    # ``text_ids`` hold token positions, the same for every sample of a batch.
    shared_text_keys=("text_ids",),
    text_conditioning="clip_t5",
    lora_components=("transformer", "text_encoder", "text_encoder_2"),
    t5_encoder="text_encoder_2",
    kohya_text_encoders=(("text_encoder", "lora_te1_"), ("text_encoder_2", "lora_te3_")),
    original_layout="bfl",  # Black Forest Labs' names (double_blocks.N.img_attn.qkv...)
    modelspec_architecture="flux-1-dev",
    modelspec_implementation="https://github.com/black-forest-labs/flux",
    kohya_base="flux1",
    single_file_keys=("double_blocks.", "single_blocks.0.linear1"),
    single_file_parts=(
        ("text_encoders.clip_l.transformer.", "text_encoder"),
        ("text_encoders.t5xxl.transformer.", "text_encoder_2"),
        ("vae.", "vae"),
    ),
    img2img_pipeline_class="FluxImg2ImgPipeline",
    controlnet_img2img_pipeline_class="FluxControlNetImg2ImgPipeline",
    # InstantX/FLUX.1-dev-Controlnet-Union (Shakker-Labs' Union-Pro): FluxControlNetModel with num_mode
    union_control_modes=(("canny", 0), ("depth", 2), ("openpose", 4)),
    detect_priority=0,
    # Any Flux transformer inpaints (latents blended each step); a Fill model (FLUX.1-Fill-dev: more input channels
    # than output channels, the masked image and mask packed beside the latents) uses its own pipeline.
    inpaint_pipeline_class="FluxInpaintPipeline",
    fill_pipeline_class="FluxFillPipeline",
    fill_guidance=30.0,  # BFL's value for FLUX.1-Fill-dev (diffusers' FluxFillPipeline default)
)
