"""FLUX.1 (dev / schnell and fine-tunes): defaults and capabilities."""

from __future__ import annotations

from ..spec import FamilySpec

SPEC = FamilySpec(
    name="flux",
    pipeline_class="FluxPipeline",
    controlnet_pipeline_class="FluxControlNetPipeline",
    controlnet_class="FluxControlNetModel",
    width=1024,
    height=1024,
    steps=28,
    guidance=3.5,  # distilled guidance (FLUX.1-dev); true CFG only with true_cfg_scale > 1
    scheduler="FlowMatchEulerDiscreteScheduler",
    # Plain IP-Adapter in the XLabs layout (diffusers' FluxIPAdapterMixin); there is no Flux FaceID adapter.
    supports=frozenset({"lora", "controlnet", "ip_adapter"}),
    controls=frozenset({"canny", "depth"}),
    prediction="flow",
    size_multiple=16,
    description="Flux: 1024px rectified-flow transformer with CLIP + T5 text encoders; best prompt following.",
)
