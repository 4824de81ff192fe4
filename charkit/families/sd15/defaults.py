"""Stable Diffusion 1.x (and fine-tunes such as Realistic Vision): defaults and capabilities."""

from __future__ import annotations

from ..spec import FamilySpec

SPEC = FamilySpec(
    name="sd15",
    pipeline_class="StableDiffusionPipeline",
    controlnet_pipeline_class="StableDiffusionControlNetPipeline",
    controlnet_class="ControlNetModel",
    width=512,
    height=512,
    steps=25,
    guidance=7.0,
    scheduler="DPMSolverMultistepScheduler",
    supports=frozenset({"lora", "text_encoder_lora", "controlnet", "ip_adapter", "faceid"}),
    controls=frozenset({"canny", "openpose", "depth"}),
    prediction="epsilon",
    size_multiple=8,
    description="SD1.5: 512px, UNet + one CLIP text encoder; the most fine-tunes, LoRAs, ControlNets and IP-Adapters.",
)
