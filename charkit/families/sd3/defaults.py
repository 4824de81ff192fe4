"""Stable Diffusion 3 / 3.5 (medium, large): defaults and capabilities."""

from __future__ import annotations

from ..spec import FamilySpec

SPEC = FamilySpec(
    name="sd3",
    pipeline_class="StableDiffusion3Pipeline",
    controlnet_pipeline_class="StableDiffusion3ControlNetPipeline",
    controlnet_class="SD3ControlNetModel",
    width=1024,
    height=1024,
    steps=28,
    guidance=5.0,
    scheduler="FlowMatchEulerDiscreteScheduler",
    # Text-encoder LoRA and IP-Adapters are not wired for SD3 in charkit.
    supports=frozenset({"lora", "controlnet"}),
    controls=frozenset({"canny", "depth"}),
    prediction="flow",
    size_multiple=16,
    description="SD3/3.5: 1024px MMDiT with two CLIP encoders and T5; good typography and composition.",
)
