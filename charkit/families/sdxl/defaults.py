"""Stable Diffusion XL (base 1.0 and fine-tunes such as Juggernaut / RealVisXL): every family fact in one SPEC."""

from __future__ import annotations

from ..spec import FamilySpec

SPEC = FamilySpec(
    name="sdxl",
    description="SDXL: 1024px, UNet + two CLIP text encoders; strong realism fine-tunes, IP-Adapter and ControlNet.",
    pipeline_class="StableDiffusionXLPipeline",
    controlnet_pipeline_class="StableDiffusionXLControlNetPipeline",
    controlnet_class="ControlNetModel",
    controlnet_image_arg="image",  # text-to-image ControlNet pipelines take the control map as `image`
    pipeline_prefix="StableDiffusionXL",
    width=1024,
    height=1024,
    steps=30,
    guidance=6.0,
    scheduler="EulerDiscreteScheduler",
    size_multiple=8,
    example_model="stabilityai/stable-diffusion-xl-base-1.0",
    supports=frozenset({"lora", "text_encoder_lora", "controlnet", "ip_adapter", "faceid", "clip_skip", "hires"}),
    controls=frozenset({"canny", "openpose", "depth"}),
    prediction="epsilon",
    denoiser="unet",
    lora_targets=("to_q", "to_k", "to_v", "to_out.0"),
    lora_text_encoders=("text_encoder", "text_encoder_2"),
    text_encoder_lora_targets=("q_proj", "k_proj", "v_proj", "out_proj"),
    text_conditioning="clip2",
    lora_components=("unet", "text_encoder", "text_encoder_2"),
    kohya_text_encoders=(("text_encoder", "lora_te1_"), ("text_encoder_2", "lora_te2_")),
    modelspec_architecture="stable-diffusion-xl-v1-base",
    modelspec_implementation="https://github.com/Stability-AI/generative-models",
    kohya_base="sdxl_base_v1-0",
    # the second (OpenCLIP) text encoder is what tells SDXL apart: its files also hold input_blocks keys
    single_file_keys=("conditioner.embedders.1.",),
    img2img_pipeline_class="StableDiffusionXLImg2ImgPipeline",
    controlnet_img2img_pipeline_class="StableDiffusionXLControlNetImg2ImgPipeline",
    # xinsir/controlnet-union-sdxl-1.0 (and promax): ControlNetUnionModel, control types by index
    union_controlnet_class="ControlNetUnionModel",
    union_pipeline_class="StableDiffusionXLControlNetUnionPipeline",
    union_img2img_pipeline_class="StableDiffusionXLControlNetUnionImg2ImgPipeline",
    union_control_modes=(("openpose", 0), ("depth", 1), ("canny", 3)),
    detect_priority=2,
    # 4-channel UNets blend the kept latents back in each step; 9-channel inpainting fine-tunes see mask + masked image.
    inpaint_pipeline_class="StableDiffusionXLInpaintPipeline",
    inpaint_in_channels=(4, 9),
)
