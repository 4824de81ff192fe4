"""What a model family is and can do: one frozen :class:`FamilySpec` per family.

Callers ask the spec before they use a feature (``SPEC.require("faceid")``), so a family that
cannot do something says so in one line instead of silently skipping it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import CharkitError

#: Every adapter/feature name a family may support. ``clip_skip``: A1111's Clip skip acts on its CLIP hidden
#: states; ``true_cfg``: real classifier-free guidance on a guidance-distilled model (negative prompts apply);
#: ``without_t5``: renders with the T5 encoder left out; ``hires``: a second, upscaled img2img pass.
FEATURES = frozenset(
    {"lora", "text_encoder_lora", "controlnet", "ip_adapter", "faceid", "clip_skip", "true_cfg", "without_t5", "hires"}
)
#: Every control type a storyboard may ask for.
CONTROLS = frozenset({"canny", "openpose", "depth"})


@dataclass(frozen=True)
class FamilySpec:
    """Every fact charkit knows about one model family: defaults, capabilities, structure, file conventions.

    Validation, CLI choices, docs and tests all read these fields; no other module keeps a per-family table.

    >>> from charkit.families import get_spec
    >>> get_spec("sd15").width
    512
    """

    name: str
    description: str
    # -- diffusers classes --------------------------------------------------------------------------
    pipeline_class: str  # text-to-image pipeline
    controlnet_pipeline_class: str | None  # ControlNet pipeline (None: no ControlNet)
    controlnet_class: str | None  # ControlNet model
    pipeline_prefix: str  # model_index.json `_class_name` prefix that marks this family ("StableDiffusionXL")
    # -- defaults ------------------------------------------------------------------------------------
    width: int
    height: int
    steps: int
    guidance: float
    scheduler: str  # diffusers scheduler class name used by default
    size_multiple: int  # width/height must be multiples of this (in pixels)
    example_model: str  # a hub id of this family, for hints in error messages
    # -- capabilities --------------------------------------------------------------------------------
    supports: frozenset[str]
    controls: frozenset[str]
    prediction: str  # "epsilon" | "v_prediction" | "flow"
    # -- structure (what LoRA training and export touch) ---------------------------------------------
    denoiser: str  # pipeline attribute of the UNet / transformer ("unet" | "transformer")
    lora_targets: tuple[str, ...]  # default peft target_modules of the denoiser
    lora_text_encoders: tuple[str, ...] = ()  # pipeline attributes trained by a text-encoder LoRA
    text_encoder_lora_targets: tuple[str, ...] = ()
    shared_text_keys: tuple[str, ...] = ()  # text-conditioning entries shared by a batch (not concatenated)
    #: how prompts become embeddings (charkit.families.prompts): "clip", "clip2" (two CLIPs), "clip2_t5", "clip_t5"
    text_conditioning: str = "clip"
    lora_components: tuple[str, ...] = ()  # pipeline components a LoRA file may hold weights for, denoiser first
    t5_encoder: str | None = None  # the component that is a T5 (its LoRA keys carry no CLIP `text_model.` prefix)
    # -- files written and read by other tools -------------------------------------------------------
    kohya_base: str = ""  # kohya `ss_base_model_version`
    #: modelspec (sd-scripts' sai_model_spec) `architecture` (+ "/lora" for a LoRA) and `implementation`,
    #: what ComfyUI and Civitai read from a file's metadata
    modelspec_architecture: str = ""
    modelspec_implementation: str = "diffusers"
    #: kohya's text-encoder key prefix per component (sd-scripts: SD1.x lora_te_, SDXL/SD3 lora_te1_/2_, T5 lora_te3_)
    kohya_text_encoders: tuple[tuple[str, str], ...] = ()
    #: the family-folder module naming the denoiser's modules as the original release does (``<f>/<name>.py``
    #: with ``module_map``); None: kohya names are diffusers' module names (the UNet families)
    original_layout: str | None = None
    single_file_keys: tuple[str, ...] = ()  # tensor-name fragments that identify an original-layout single file
    #: original-layout single files (``original_layout`` families): (key prefix, pipeline component) of every part
    #: such a file may hold besides the denoiser (ComfyUI's names); what a file lacks comes from the config folder
    single_file_parts: tuple[tuple[str, str], ...] = ()
    detect_priority: int = 0  # lower is checked first (SDXL files also hold SD1.5-style UNet keys)
    # -- inpainting (identity repair) ----------------------------------------------------------------
    inpaint_pipeline_class: str | None = None  # masked re-denoising pipeline (None: the family cannot inpaint)
    inpaint_in_channels: tuple[int, ...] = ()  # denoiser input channels that pipeline accepts (empty: any)
    fill_pipeline_class: str | None = None  # pipeline of a dedicated fill model (Flux Fill), used when the model is one
    fill_guidance: float | None = None  # the guidance a fill model is trained for (FLUX.1-Fill-dev: 30)
    #: the text-to-image ControlNet pipeline's argument for the control map (img2img and union ones: control_image)
    controlnet_image_arg: str = "control_image"
    # -- more pipelines (hires pass, union ControlNets) ----------------------------------------------
    img2img_pipeline_class: str | None = None  # the hires second pass (None: no hires)
    controlnet_img2img_pipeline_class: str | None = None  # hires pass of a ControlNet scene
    #: union ControlNets (one model, several control types chosen by ``control_mode``): the model class and its
    #: pipelines; None where the family's own ControlNet class and pipeline read them (Flux: ``num_mode``)
    union_controlnet_class: str | None = None
    union_pipeline_class: str | None = None
    union_img2img_pipeline_class: str | None = None
    #: control type -> ``control_mode`` index of the family's union ControlNets (xinsir SDXL, InstantX Flux)
    union_control_modes: tuple[tuple[str, int], ...] = ()

    @property
    def is_flow(self) -> bool:
        return self.prediction == "flow"

    def can(self, feature: str) -> bool:
        return feature in self.supports

    def require(self, feature: str) -> None:
        """Raise a one-line CharkitError when this family cannot do ``feature``."""
        if feature not in FEATURES:
            raise CharkitError(f"unknown feature {feature!r}: choose one of {', '.join(sorted(FEATURES))}")
        if feature not in self.supports:
            can = ", ".join(sorted(self.supports)) or "nothing extra"
            raise CharkitError(
                f"model family {self.name!r} does not support {feature}: it supports {can}; "
                f"drop {feature} for this model or use a family that has it"
            )

    def require_control(self, control: str) -> None:
        self.require("controlnet")
        if control not in self.controls:
            raise CharkitError(
                f"model family {self.name!r} has no {control!r} control: choose one of {', '.join(sorted(self.controls))}"
            )

    def union_mode(self, control: str) -> int:
        """``control_mode`` of ``control`` in the family's union ControlNets (one-line error when it has none)."""
        modes = dict(self.union_control_modes)
        if control not in modes:
            have = ", ".join(sorted(modes)) or "none"
            raise CharkitError(
                f"model family {self.name!r}: union ControlNets have no {control!r} mode (modes: {have}); "
                "use a ControlNet trained for that control"
            )
        return modes[control]

    def check_size(self, width: int, height: int) -> None:
        m = self.size_multiple
        if width <= 0 or height <= 0 or width % m or height % m:
            raise CharkitError(
                f"size {width}x{height} does not fit model family {self.name!r}: width and height must be positive "
                f"multiples of {m} (e.g. {max(m, width // m * m)}x{max(m, height // m * m)})"
            )


def set_scheduler(pipe, name: str) -> None:
    """Swap the pipeline's scheduler for ``name`` (an A1111 / ComfyUI sampler name or a diffusers class name),
    built from the model's own scheduler config (:mod:`charkit.families.schedulers`).

    >>> set_scheduler(pipe, "DPM++ 2M Karras")  # doctest: +SKIP
    """
    from .schedulers import apply_scheduler, resolve_scheduler

    flow = type(pipe.scheduler).__name__.startswith("FlowMatch") or bool(pipe.scheduler.config.get("use_flow_sigmas"))
    apply_scheduler(pipe, resolve_scheduler(name, flow=flow))
