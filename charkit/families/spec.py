"""What a model family is and can do: one frozen :class:`FamilySpec` per family.

Callers ask the spec before they use a feature (``SPEC.require("faceid")``), so a family that
cannot do something says so in one line instead of silently skipping it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import CharkitError

#: Every adapter/feature name a family may support.
FEATURES = frozenset({"lora", "text_encoder_lora", "controlnet", "ip_adapter", "faceid"})
#: Every control type a storyboard may ask for.
CONTROLS = frozenset({"canny", "openpose", "depth"})
#: Scheduler classes charkit lets a storyboard pick (diffusers class names).
SCHEDULERS = frozenset(
    {
        "DDIMScheduler",
        "PNDMScheduler",
        "EulerDiscreteScheduler",
        "EulerAncestralDiscreteScheduler",
        "DPMSolverMultistepScheduler",
        "UniPCMultistepScheduler",
        "FlowMatchEulerDiscreteScheduler",
    }
)


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
    detect_priority: int = 0  # lower is checked first (SDXL files also hold SD1.5-style UNet keys)
    # -- inpainting (identity repair) ----------------------------------------------------------------
    inpaint_pipeline_class: str | None = None  # masked re-denoising pipeline (None: the family cannot inpaint)
    inpaint_in_channels: tuple[int, ...] = ()  # denoiser input channels that pipeline accepts (empty: any)
    fill_pipeline_class: str | None = None  # pipeline of a dedicated fill model (Flux Fill), used when the model is one
    fill_guidance: float | None = None  # the guidance a fill model is trained for (FLUX.1-Fill-dev: 30)

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

    def check_size(self, width: int, height: int) -> None:
        m = self.size_multiple
        if width <= 0 or height <= 0 or width % m or height % m:
            raise CharkitError(
                f"size {width}x{height} does not fit model family {self.name!r}: width and height must be positive "
                f"multiples of {m} (e.g. {max(m, width // m * m)}x{max(m, height // m * m)})"
            )


def set_scheduler(pipe, name: str) -> None:
    """Swap the pipeline's scheduler for diffusers class ``name``, keeping the model's schedule config.

    >>> set_scheduler(pipe, "EulerDiscreteScheduler")  # doctest: +SKIP
    """
    import diffusers

    if name not in SCHEDULERS:
        raise CharkitError(f"scheduler {name!r} is not supported: choose one of {', '.join(sorted(SCHEDULERS))}")
    flow = "FlowMatch" in type(pipe.scheduler).__name__
    if flow != ("FlowMatch" in name):
        kind = "flow-matching" if flow else "noise-prediction"
        raise CharkitError(
            f"scheduler {name!r} does not fit this {kind} model (it uses {type(pipe.scheduler).__name__}); "
            "pick a scheduler of the same kind"
        )
    if type(pipe.scheduler).__name__ != name:
        pipe.scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config)
