"""Storyboard YAML -> typed models.

A storyboard is the script of an episode: which characters appear, on which model, and one
entry per scene (prompt, seed, size, control image, IP-Adapter, LoRA scales, best-of-N).
:func:`load_storyboard` parses it with ``yaml.safe_load`` into :class:`Storyboard`; every field
below has help text, which docs/rendering.md repeats. Errors are one line naming the file, the
scene id and the field::

    episode.yaml: scene 'cafe': field 'control.type': Input should be 'canny', 'openpose' or 'depth'

Relative paths in a storyboard are relative to the storyboard file's folder.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..configfiles import parse_yaml
from ..errors import CharkitError
from ..families.registry import FAMILIES, FamilyName
from ..paths import check_name

ControlType = Literal["canny", "openpose", "depth"]
IPMode = Literal["face", "image", "off"]
Preset = Literal["lifelike", "none"]
BackendName = Literal["auto", "dlib", "sface", "insightface"]  # charkit.identity.BACKENDS

# `{name}` placeholders; `{{` and `}}` are literal braces.
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Size(_Model):
    """Image size in pixels."""

    width: int = Field(gt=0, le=8192, description="Width in pixels (a multiple of the family's size step, e.g. 8).")
    height: int = Field(gt=0, le=8192, description="Height in pixels.")

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, v: Any) -> Any:
        # Accept "512x768", [512, 768] and {width: 512, height: 768}.
        if isinstance(v, str):
            m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", v)
            if not m:
                raise ValueError(f"size {v!r} is not WIDTHxHEIGHT; write e.g. 512x768")
            return {"width": int(m[1]), "height": int(m[2])}
        if isinstance(v, (list, tuple)):
            if len(v) != 2:
                raise ValueError("size needs two numbers [width, height], e.g. [512, 768]")
            return {"width": v[0], "height": v[1]}
        return v

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


class ModelSpec(_Model):
    """A model to render with. A bare string is shorthand for ``{source: <string>}``."""

    source: str = Field(
        description="Hub id (org/name, from the local cache when HF_HUB_OFFLINE=1), a local diffusers folder, "
        "or a single-file .safetensors checkpoint (e.g. a Civitai fine-tune)."
    )
    family: FamilyName | None = Field(
        default=None,
        description=f"Model family ({', '.join(FAMILIES)}). Detected when omitted: from the tensor names of a single "
        "file, from model_index.json of a folder or cached hub model.",
    )
    config: str | None = Field(
        default=None,
        description="For a single-file checkpoint: a local diffusers folder (or hub id) of the same family holding "
        "the configs and tokenizers (needed offline).",
    )
    label: str | None = Field(
        default=None,
        description="Short name used in file names and the manifest (`<scene>__<label>.png` under a models matrix). "
        "Defaults to the family name; two models of one family need labels of their own.",
    )
    controlnet: dict[ControlType, str] = Field(
        default_factory=dict,
        description="ControlNet weights per control type for this model, e.g. {canny: lllyasviel/sd-controlnet-canny} "
        "(hub id or local folder).",
    )
    ip_adapter: str | None = Field(
        default=None,
        description="Plain IP-Adapter weights (.safetensors file) for `ip_adapter.mode: image`.",
    )
    image_encoder: str | None = Field(
        default=None,
        description="CLIP vision encoder (folder, hub id or org/repo/subfolder such as h94/IP-Adapter/models/"
        "image_encoder) for `ip_adapter` and FaceID plus (default: the one beside the weights that fits them; "
        "SDXL *_vit-h adapters get models/image_encoder).",
    )
    faceid: str | None = Field(
        default=None,
        description="IP-Adapter FaceID weights (.safetensors; h94's .bin with --allow-pickle-weights) for "
        "`ip_adapter.mode: face`: FaceID, FaceID plus or plus-v2, conditioned on insightface ArcFace embeddings of "
        "the character's references (plus also on its face crop, through `image_encoder`).",
    )
    vae: str | None = Field(
        default=None,
        description="A VAE to use instead of the model's own: a diffusers VAE folder, hub id (e.g. "
        "madebyollin/sdxl-vae-fp16-fix) or single .safetensors file.",
    )
    variant: str | None = Field(
        default=None,
        description="Weight files variant of a folder / hub model, e.g. fp16 (loads *.fp16.safetensors: half the "
        "download); the render precision is --dtype.",
    )
    t5: bool = Field(
        default=True,
        description="false: render without the T5 text encoder (SD3: from its two CLIP encoders, ~9 GB less memory).",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"source": v} if isinstance(v, str) else v

    @field_validator("label")
    @classmethod
    def _label_safe(cls, v: str | None) -> str | None:
        return None if v is None else _safe(v, "label")


class ControlSpec(_Model):
    """ControlNet conditioning of one scene."""

    type: ControlType = Field(description="Control type: canny (edges), openpose (body pose) or depth.")
    image: str = Field(
        description="Control source image; a photo that is turned into the control map, or the map itself."
    )
    scale: float = Field(default=1.0, ge=0.0, le=2.0, description="controlnet_conditioning_scale (0 = off, 1 = full).")
    preprocess: bool = Field(
        default=True,
        description="Run the detector (canny / openpose / depth) on `image`. false: `image` already is the control map "
        "(e.g. a pose skeleton rendered elsewhere); needed for openpose/depth without annotator weights.",
    )
    start: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Fraction of the steps after which the ControlNet starts acting."
    )
    end: float = Field(default=1.0, gt=0.0, le=1.0, description="Fraction of the steps after which it stops.")
    low_threshold: int = Field(default=100, ge=0, le=255, description="Canny low threshold.")
    high_threshold: int = Field(default=200, ge=0, le=255, description="Canny high threshold.")


class HiresSpec(_Model):
    """A1111's hires fix: render at the scene size, upscale, then denoise again at the larger size."""

    scale: float = Field(default=2.0, gt=1.0, le=4.0, description="Upscale factor (A1111 'Hires upscale').")
    strength: float = Field(
        default=0.5, gt=0.0, le=1.0, description="Denoising strength of the second pass (A1111 'Denoising strength')."
    )
    steps: int | None = Field(
        default=None, ge=1, le=500, description="Steps of the second pass (A1111 'Hires steps'; default: the scene's)."
    )
    upscaler: Literal["Lanczos", "Nearest"] = Field(
        default="Lanczos", description="How the first pass is upscaled before the second (A1111 'Hires upscaler')."
    )


class IPAdapterSpec(_Model):
    """IP-Adapter conditioning of one scene (or the storyboard default)."""

    mode: IPMode = Field(
        default="off",
        description="face: IP-Adapter FaceID on insightface embeddings of the character's references; image: plain "
        "IP-Adapter on a reference image; off: none.",
    )
    scale: float = Field(default=0.6, ge=0.0, le=2.0, description="IP-Adapter scale (how strongly it steers).")
    character: str | None = Field(
        default=None, description="Whose references condition the scene (default: the first character in the scene)."
    )
    image: str | None = Field(
        default=None,
        description="mode image: the reference image (default: the character's first reference photo).",
    )


class Defaults(_Model):
    """Values every scene inherits unless it sets its own; unset values come from the model family."""

    model: ModelSpec | None = Field(default=None, description="The model every scene renders with (see `model`).")
    steps: int | None = Field(default=None, ge=1, le=500, description="Denoising steps (family default when unset).")
    guidance: float | None = Field(
        default=None, ge=0.0, le=50.0, description="Guidance (CFG) scale (family default when unset)."
    )
    size: Size | None = Field(default=None, description="Image size WIDTHxHEIGHT (family default when unset).")
    scheduler: str | None = Field(
        default=None,
        description="Sampler as A1111 / ComfyUI / diffusers name it: 'DPM++ 2M Karras', 'DPM++ SDE Karras', 'Euler a', "
        "'Euler', 'DDIM', 'UniPC', 'LCM', dpmpp_2m, DPMSolverMultistepScheduler (family default when unset; "
        "docs/prompts.md lists them).",
    )
    schedule: str | None = Field(
        default=None,
        description="A1111 'Schedule type' / ComfyUI scheduler apart from the sampler: Karras, Exponential, Beta, "
        "SGM Uniform, Simple, Automatic.",
    )
    clip_skip: int | None = Field(
        default=None, ge=1, le=12, description="A1111 'Clip skip': 1 = the model's normal CLIP layer, 2 = one earlier."
    )
    true_cfg: float | None = Field(
        default=None,
        ge=1.0,
        le=20.0,
        description="Flux: real classifier-free guidance scale (> 1 applies the negative prompt; twice the compute). "
        "Without it Flux ignores negative prompts, and the manifest records none.",
    )
    hires: HiresSpec | bool | None = Field(
        default=None, description="Hires fix (upscale + second denoise); true for its defaults, false for none."
    )
    negative_prompt: str = Field(
        default="", description="Negative prompt; each character's own negative prompt is appended."
    )
    preset: Preset = Field(default="none", description="Post-processing: lifelike (deterministic film grain) or none.")
    seed: int = Field(default=0, ge=0, lt=2**63, description="Base seed of scenes without their own seed.")
    candidates: int = Field(
        default=1, ge=1, le=64, description="Best-of-N: candidates per scene, kept by identity score."
    )
    lora_scale: float = Field(
        default=1.0, ge=-2.0, le=4.0, description="LoRA scale of each character without a per-scene value."
    )
    ip_adapter: IPAdapterSpec = Field(default_factory=IPAdapterSpec, description="IP-Adapter default of every scene.")


class Scene(_Model):
    """One shot of the episode."""

    id: str = Field(description="Scene id; the output file name (letters, digits, '.', '_', '-').")
    prompt: str = Field(description="Prompt; `{name}` expands to that character's trigger words; `{{`/`}}` are braces.")
    negative_prompt: str | None = Field(
        default=None, description="Replaces the default negative prompt for this scene."
    )
    characters: list[str] | None = Field(
        default=None,
        description="Characters in the shot, left to right (verification matches faces in this order). "
        "Default: the characters named by placeholders in the prompt, in order of appearance.",
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        lt=2**63,
        description="Seed (default: derived from defaults.seed and the scene id, so adding or moving scenes leaves "
        "the others' seeds alone).",
    )
    size: Size | None = Field(default=None, description="Image size WIDTHxHEIGHT.")
    steps: int | None = Field(default=None, ge=1, le=500, description="Denoising steps.")
    guidance: float | None = Field(default=None, ge=0.0, le=50.0, description="Guidance (CFG) scale.")
    control: ControlSpec | None = Field(default=None, description="ControlNet conditioning (type, image, scale).")
    ip_adapter: IPAdapterSpec | None = Field(
        default=None, description="IP-Adapter mode and scale (default: defaults.ip_adapter)."
    )
    lora: dict[str, float] = Field(
        default_factory=dict, description="LoRA scale per character, e.g. {alice: 0.8}; 0 disables that LoRA."
    )
    candidates: int | None = Field(
        default=None, ge=1, le=64, description="Best-of-N candidates (seeds seed..seed+N-1)."
    )
    model: ModelSpec | None = Field(
        default=None, description="Render this scene on another model (not with a models matrix)."
    )
    preset: Preset | None = Field(default=None, description="Post-processing preset for this scene.")
    optional: bool = Field(
        default=False,
        description="Skip this scene, with one warning line, when something it needs is not installed yet (a LoRA "
        "not trained yet, an insightface pack for FaceID, annotator weights) instead of failing the whole render.",
    )
    scheduler: str | None = Field(
        default=None,
        description="Sampler as A1111 / ComfyUI / diffusers name it: 'DPM++ 2M Karras', 'DPM++ SDE Karras', 'Euler a', "
        "'Euler', 'DDIM', 'UniPC', 'LCM', dpmpp_2m, DPMSolverMultistepScheduler (default: defaults.scheduler).",
    )
    schedule: str | None = Field(
        default=None,
        description="A1111 'Schedule type' for this scene (default: defaults.schedule).",
    )
    clip_skip: int | None = Field(
        default=None, ge=1, le=12, description="A1111 'Clip skip' for this scene (default: defaults.clip_skip, else 1)."
    )
    true_cfg: float | None = Field(
        default=None,
        ge=1.0,
        le=20.0,
        description="Flux true CFG scale for this scene (default: defaults.true_cfg).",
    )
    hires: HiresSpec | bool | None = Field(
        default=None, description="Hires fix for this scene (default: defaults.hires); false turns it off."
    )

    @field_validator("id")
    @classmethod
    def _id_safe(cls, v: str) -> str:
        return _safe(v, "scene id")


class IdentitySpec(_Model):
    """Face backend for best-of-N scoring, FaceID embeddings and --verify."""

    backend: BackendName | list[BackendName] = Field(
        default="dlib",
        description="Scoring backend: dlib (embedded, offline default), sface (embedded), insightface, auto (dlib "
        "and sface), or a list of them (scored together: one combined decision).",
    )
    face_models: str | None = Field(
        default=None,
        description="insightface model pack folder (needed for ip_adapter mode face and backend insightface).",
    )
    threshold: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        allow_inf_nan=False,
        description="Pass threshold, a similarity between 0 and 1 (default: the backend's calibrated one).",
    )


class Storyboard(_Model):
    """The whole storyboard file."""

    project: str = Field(description="Project / episode title (recorded in the manifest).")
    output: str | None = Field(
        default=None, description="Output folder, relative to the storyboard (default: renders/<storyboard name>)."
    )
    defaults: Defaults = Field(default_factory=Defaults, description="Values every scene inherits.")
    characters: dict[str, str] = Field(
        default_factory=dict,
        description="Character name -> character folder (holding character.toml), e.g. {alice: characters/alice}.",
    )
    models: list[ModelSpec] | None = Field(
        default=None, description="Render every scene on each of these models (a comparison matrix)."
    )
    identity: IdentitySpec = Field(default_factory=IdentitySpec, description="Face backend settings.")
    scenes: list[Scene] = Field(min_length=1, description="The scenes, in episode order.")

    # Set by the loader: where the file lives (relative paths resolve against it) and its hash.
    _path: Path | None = PrivateAttr(default=None)
    _sha256: str | None = PrivateAttr(default=None)

    @field_validator("characters")
    @classmethod
    def _names_safe(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            _safe(name, "character name")
        return v

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Storyboard:
        seen: set[str] = set()
        for scene in self.scenes:
            if scene.id in seen:
                raise ValueError(f"scene id {scene.id!r} appears twice; give every scene its own id")
            seen.add(scene.id)
        if self.models is not None:
            if not self.models:
                raise ValueError("models: empty list; list at least one model or remove `models`")
            for scene in self.scenes:
                if scene.model is not None:
                    raise ValueError(
                        f"scene {scene.id!r}: model: a scene cannot pick its own model when `models:` renders every "
                        "scene on each model; remove one of them"
                    )
        elif (
            self.defaults.model is None
            and any(s.model is None for s in self.scenes)
            and not (info.context or {}).get("model_given")
        ):
            raise ValueError("no model: set defaults.model (or `models:`, or --model on the command line)")
        return self

    # -- helpers -----------------------------------------------------------------------
    @property
    def path(self) -> Path | None:
        """The storyboard file (None for one built in code)."""
        return self._path

    @property
    def sha256(self) -> str | None:
        """sha256 of the storyboard file's bytes (None for one built in code)."""
        return self._sha256

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path is not None else Path.cwd()

    def resolve(self, rel: str | os.PathLike) -> Path:
        """A path from the storyboard, relative to its folder (``~`` expanded)."""
        p = Path(rel).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def output_dir(self) -> Path:
        if self.output:
            return self.resolve(self.output)
        stem = self.path.stem if self.path is not None else "storyboard"
        return self.base_dir / "renders" / stem

    @property
    def label(self) -> str:
        return str(self.path) if self.path is not None else "storyboard"


# -- prompt placeholders ---------------------------------------------------------------


def placeholders(prompt: str) -> list[str]:
    """Character names referenced as ``{name}`` in ``prompt``, in order of first appearance.

    >>> placeholders("{alice} and {bob} at the {{cafe}}")
    ['alice', 'bob']
    """
    names: list[str] = []
    for m in _PLACEHOLDER.finditer(prompt):
        if m.group(1) is not None and m.group(1).strip() not in names:
            names.append(m.group(1).strip())
    return names


def expand_prompt(prompt: str, triggers: dict[str, str]) -> str:
    """Replace ``{name}`` with ``triggers[name]``; ``{{``/``}}`` become literal braces.

    >>> expand_prompt("photo of {alice} man, {{x}}", {"alice": "ohwx"})
    'photo of ohwx man, {x}'
    """

    def sub(m: re.Match) -> str:
        token = m.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        return triggers[m.group(1).strip()]

    return _PLACEHOLDER.sub(sub, prompt)


# -- loading ---------------------------------------------------------------------------


def _safe(v: str, what: str) -> str:
    try:
        return check_name(v, what)
    except CharkitError as e:
        raise ValueError(str(e)) from None


def _scene_label(data: Any, loc: tuple) -> str:
    # "scene 'cafe'" for errors under scenes[i] (by id when the raw data has one).
    if len(loc) >= 2 and loc[0] == "scenes" and isinstance(loc[1], int):
        try:
            sid = data["scenes"][loc[1]].get("id")
        except (KeyError, IndexError, TypeError, AttributeError):
            sid = None
        return f"scene {sid!r}" if isinstance(sid, str) and sid else f"scene #{loc[1] + 1}"
    return ""


def _field_names() -> set[str]:
    return {
        f
        for m in (Size, ModelSpec, ControlSpec, HiresSpec, IPAdapterSpec, Defaults, Scene, IdentitySpec, Storyboard)
        for f in m.model_fields
    }


def _error_message(source: str, data: Any, err: ValidationError) -> str:
    errors = err.errors()
    # An unknown key is usually the cause of the rest (a typo'd `promt` also leaves `prompt` missing).
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = tuple(first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), sorted(_field_names()), n=1)
        hint = f"did you mean '{close[0]}'?" if close else "check its spelling against docs/rendering.md"
        msg = f"unknown field; {hint}"
    elif first["type"] == "missing":
        msg = "required field is missing"
    scene = _scene_label(data, loc)
    field_loc = loc[2:] if scene else loc
    # Skip pydantic's union/shorthand noise ("function-before[...]") in field paths.
    parts = [str(p) for p in field_loc if not str(p).startswith(("function-", "literal["))]
    where = f"field '{'.'.join(parts)}'" if parts else "(top level)"
    if scene:
        where = f"{scene}: {where}"
    return f"{source}: {where}: {msg}"


def parse_storyboard(
    data: Any,
    *,
    source: str = "storyboard",
    path: Path | None = None,
    sha256: str | None = None,
    model_given: bool = False,
) -> Storyboard:
    """Validate already-parsed YAML data (a dict) into a :class:`Storyboard` (``model_given``: see load_storyboard)."""
    if not isinstance(data, dict):
        raise CharkitError(
            f"{source}: a storyboard is a YAML mapping with project, characters and scenes; see examples/episode.yaml"
        )
    try:
        board = Storyboard.model_validate(data, context={"model_given": model_given})
    except ValidationError as e:
        raise CharkitError(_error_message(source, data, e)) from None
    board._path = path
    board._sha256 = sha256
    return board


def load_storyboard(path: str | os.PathLike, *, model_given: bool = False) -> Storyboard:
    """Read and validate a storyboard YAML file (``model_given``: ``--model`` supplies a model it may lack).

    >>> board = load_storyboard("examples/episode.yaml")  # doctest: +SKIP
    >>> [s.id for s in board.scenes][:2]  # doctest: +SKIP
    ['s01-arrival', 's02-cafe']
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise CharkitError(f"{p}: cannot read storyboard ({e.strerror or e}); check the path") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CharkitError(f"{p}: not UTF-8 text; save the storyboard as UTF-8") from None
    data = parse_yaml(text, str(p))  # safe_load + duplicate keys and deep nesting refused
    return parse_storyboard(
        data, source=str(p), path=p.resolve(), sha256=hashlib.sha256(raw).hexdigest(), model_given=model_given
    )
