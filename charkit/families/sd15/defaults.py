"""Stable Diffusion 1.x (and fine-tunes such as Realistic Vision): every family fact in one SPEC."""

from __future__ import annotations

from ..spec import FamilySpec

SPEC = FamilySpec(
    name="sd15",
    description="SD1.5: 512px, UNet + one CLIP text encoder; the most fine-tunes, LoRAs, ControlNets and IP-Adapters.",
    pipeline_class="StableDiffusionPipeline",
    controlnet_pipeline_class="StableDiffusionControlNetPipeline",
    controlnet_class="ControlNetModel",
    controlnet_image_arg="image",  # text-to-image ControlNet pipelines take the control map as `image`
    pipeline_prefix="StableDiffusion",
    width=512,
    height=512,
    steps=25,
    guidance=7.0,
    scheduler="DPMSolverMultistepScheduler",
    size_multiple=8,
    example_model="stable-diffusion-v1-5/stable-diffusion-v1-5",
    supports=frozenset({"lora", "text_encoder_lora", "controlnet", "ip_adapter", "faceid", "clip_skip", "hires"}),
    controls=frozenset({"canny", "openpose", "depth"}),
    prediction="epsilon",
    denoiser="unet",
    # Attention projections of every transformer block of the UNet (what the diffusers examples adapt).
    lora_targets=("to_q", "to_k", "to_v", "to_out.0"),
    lora_text_encoders=("text_encoder",),
    text_encoder_lora_targets=("q_proj", "k_proj", "v_proj", "out_proj"),
    text_conditioning="clip",
    lora_components=("unet", "text_encoder"),
    kohya_text_encoders=(("text_encoder", "lora_te_"),),
    modelspec_architecture="stable-diffusion-v1",
    modelspec_implementation="diffusers",
    kohya_base="sd_v1",
    single_file_keys=("model.diffusion_model.input_blocks.",),
    img2img_pipeline_class="StableDiffusionImg2ImgPipeline",
    controlnet_img2img_pipeline_class="StableDiffusionControlNetImg2ImgPipeline",
    detect_priority=3,
    # 4-channel UNets blend the kept latents back in each step; 9-channel inpainting fine-tunes see mask + masked image.
    inpaint_pipeline_class="StableDiffusionInpaintPipeline",
    inpaint_in_channels=(4, 9),
)
