"""Stable Diffusion XL (base 1.0 and fine-tunes such as Juggernaut / RealVisXL): defaults and capabilities."""

from __future__ import annotations

from ..spec import FamilySpec

SPEC = FamilySpec(
    name="sdxl",
    pipeline_class="StableDiffusionXLPipeline",
    controlnet_pipeline_class="StableDiffusionXLControlNetPipeline",
    controlnet_class="ControlNetModel",
    width=1024,
    height=1024,
    steps=30,
    guidance=6.0,
    scheduler="EulerDiscreteScheduler",
    supports=frozenset({"lora", "text_encoder_lora", "controlnet", "ip_adapter", "faceid"}),
    controls=frozenset({"canny", "openpose", "depth"}),
    prediction="epsilon",
    size_multiple=8,
    description="SDXL: 1024px, UNet + two CLIP text encoders; strong realism fine-tunes, IP-Adapter and ControlNet.",
)
