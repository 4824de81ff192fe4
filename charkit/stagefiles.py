"""The files stages pass to each other, typed on both sides.

One pydantic model per file, used by the stage that writes it and by every stage that reads it:

    ============  =====================  ===================  =======================================
    file          model                  written by           read by
    ============  =====================  ===================  =======================================
    dataset.json  :class:`DatasetFile`   ``charkit prep``     ``charkit train``
    manifest.json :class:`RenderManifest` ``charkit render``  render (resume), verify, repair, studio
    report.json   :class:`VerifyReportFile` ``charkit verify``  studio, your scripts
    run.json      :class:`TrainRunFile`  ``charkit train``    ``charkit train --resume``, studio
    ============  =====================  ===================  =======================================

Each carries a ``format_version``; a file without one is a version-1 file (written before the field
existed). :func:`read_stage_file` turns a missing file, broken JSON, a wrong field or a newer format
into one line naming the file and the field. The field tables of docs/formats.md are generated from
these models (``python -m charkit.stagefiles``) and checked by tests/test_docs.py.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer

from .errors import CharkitError, validation_message
from .paths import atomic_write_json

#: Current format of every stage file; bump a model's default when its meaning changes.
FORMAT_VERSION = 1

Status = Literal["pass", "drift", "no_face", "error"]


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class _Part(BaseModel):
    # parts of a file may grow new optional fields; readers of an older charkit ignore them
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


# ------------------------------------------------------------------------------------------ shared parts


class BackendRecord(_Part):
    """The face model behind every score (evaluator independence: scores always name their model)."""

    name: str = Field(description="Backend name: dlib, sface or insightface.")
    model: str = Field(description="Model file(s) of the backend.")
    model_hash: str = Field(description="sha256 over the backend's model files.")
    dim: int = Field(description="Embedding dimension.")
    metric: str = Field(description="How two embeddings are compared (mapped onto a higher-is-closer similarity).")
    threshold: float = Field(description="Similarity at or above which a face counts as the character.")
    licence: str = Field(description="Licence of the model files.")


# -------------------------------------------------------------------------------------------- dataset


class DatasetItem(_Part):
    """One training image (a crop of one reference photo)."""

    file: str = Field(description="Crop, relative to the dataset folder (images/<name>.png); its caption is beside it.")
    caption: str = Field(description="Caption: '<trigger> <class word>', plus the photo's own .txt caption.")
    width: int = Field(description="Crop width in pixels (an aspect bucket of the family's resolution).")
    height: int = Field(description="Crop height in pixels.")
    source: str = Field(description="The reference photo, relative to the character's refs folder.")
    face_box: list[float] = Field(description="Face box (x0, y0, x1, y1) in the crop's pixels.")
    similarity: float | None = Field(description="Leave-one-out identity similarity of this reference.")
    yaw: float | None = Field(description="Estimated head yaw in degrees (None when landmarks cannot tell).")
    pose: str = Field(description="Pose bin: frontal, three-quarter, profile or unknown.")
    face_fraction: float = Field(description="Face box area / source photo area.")
    size_bin: str = Field(description="Face size bin: close-up, medium or wide.")
    source_width: int = Field(description="Source photo width in pixels.")
    source_height: int = Field(description="Source photo height in pixels.")
    crop_box: list[float] = Field(description="Crop box (x0, y0, x1, y1) in the source photo's pixels.")
    scale: float = Field(description="Crop pixels / source pixels (> 1: the crop was upscaled).")
    face_cut: bool = Field(default=False, description="True when the crop had to cut through the face box.")


class Rejection(_Part):
    """A reference photo left out of the dataset, and why."""

    source: str = Field(description="The photo, relative to the refs folder.")
    reason: str = Field(description="no_face, several_faces, identity_outlier, near_duplicate of ..., unreadable: ...")


class DatasetFile(_File):
    """``characters/<name>/dataset/dataset.json``, written last by ``charkit prep``."""

    format_version: int = Field(default=FORMAT_VERSION, description="Format of this file.")
    character: str = Field(description="Character name.")
    family: str = Field(description="Model family the crops were sized for.")
    resolution: int = Field(description="Nominal training resolution (buckets of about resolution^2 pixels).")
    backend: BackendRecord = Field(description="Face model that screened the references.")
    trigger: str = Field(description="The character's trigger words.")
    class_word: str = Field(description="The character's class word.")
    items: list[DatasetItem] = Field(description="Training images.")
    rejected: list[Rejection] = Field(default_factory=list, description="References left out, with reasons.")


# ------------------------------------------------------------------------------------------- manifest


class CandidateScore(_Part):
    """One best-of-N candidate: its seed and identity score (None when it was not scored)."""

    seed: int = Field(description="Seed of the candidate.")
    similarity: float | None = Field(description="Identity similarity (None: not scored or no face).")
    status: str | None = Field(description="pass, drift, no_face, error, or None when not scored.")
    file: str | None = Field(
        default=None,
        description="Its PNG, relative to the output folder: the kept image's file, or "
        "candidates/<scene>__<model>/<seed>.png for the others (None in manifests written before candidates were kept).",
    )


class ImageRecord(_Part):
    """One rendered image, as the manifest and the PNG's ``charkit`` chunk record it."""

    scene: str = Field(description="Scene id.")
    model: str = Field(description="Model label (the file suffix under a models matrix).")
    family: str = Field(description="Model family.")
    model_source: str = Field(description="Model source as the storyboard wrote it.")
    seed: int = Field(description="Seed of the kept candidate.")
    file: str = Field(description="PNG file, relative to the output folder.")
    sha256: str = Field(description="sha256 of the PNG (an image whose file no longer matches renders again).")
    characters: list[str] = Field(description="Characters in the shot, declared left to right.")
    prompt: str = Field(description="Prompt as rendered (trigger words in place of {name}).")
    negative_prompt: str = Field(description="Negative prompt as rendered.")
    width: int = Field(description="Width in pixels.")
    height: int = Field(description="Height in pixels.")
    steps: int = Field(description="Denoising steps.")
    guidance: float = Field(description="Guidance scale.")
    scheduler: str = Field(description="Scheduler (diffusers class name).")
    preset: str = Field(description="Post-processing preset.")
    lora: dict[str, float] = Field(default_factory=dict, description="Character -> LoRA scale actually applied.")
    control: dict | None = Field(default=None, description="ControlNet: {type, image, scale, preprocess}.")
    ip_adapter: dict | None = Field(default=None, description="IP-Adapter: {mode, scale, character}.")
    identity: dict | None = Field(
        default=None, description="Identity of the kept image: {similarity, status, backend}; None when not scored."
    )
    candidates: list[CandidateScore] = Field(default_factory=list, description="Every best-of-N candidate's score.")
    selection: str = Field(default="single", description="Why this candidate: single, best_identity or first_no_face.")
    inputs_hash: str = Field(default="", description="Hash of everything that changes the pixels (resume key).")
    dtype: str = Field(default="float32", description="Precision the image was rendered in.")
    device: str = Field(default="cpu", description="Device type it was rendered on.")
    locked: bool = Field(
        default=False,
        description="A locked take (charkit studio): kept by every later render, whatever its inputs_hash or --force.",
    )
    repair: dict | None = Field(
        default=None,
        exclude_if=lambda v: v is None,  # render manifests and PNGs stay as they were before repair existed
        description="Identity repair (charkit repair): tries, seeds, scores before/after, kept or not, evaluator "
        "(docs/repair.md); absent until a repair was attempted.",
    )
    settings: dict | None = Field(
        default=None,
        exclude_if=lambda v: v is None,
        description="What the render applied beyond the fields above (docs/rendering.md): sampler and schedule "
        "type, clip skip, true CFG, hires pass, ControlNet window and union mode, each LoRA's layout and module "
        "count, the IP-Adapter variant and image encoder, VAE, variant, T5, the scene batch; absent in manifests "
        "written before charkit recorded them.",
    )

    @property
    def key(self) -> tuple[str, str]:
        return (self.scene, self.model)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def png_meta(self) -> dict:
        """The PNG ``charkit`` chunk: the record without its own file hash (a file cannot hold its own hash)."""
        d = self.to_dict()
        d.pop("sha256")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ImageRecord:
        return cls.model_validate(d)


class ModelEntry(_Part):
    """A model the storyboard renders with."""

    label: str = Field(description="Label (file suffix under a models matrix).")
    family: str = Field(description="Model family.")
    source: str = Field(description="Source as written: hub id, folder or single file.")


class RenderManifest(_File):
    """``<render folder>/manifest.json``: what was rendered, from what, and how close each face is."""

    format_version: int = Field(default=FORMAT_VERSION, description="Format of this file.")
    charkit_version: str = Field(description="charkit version that wrote it.")
    storyboard: str = Field(description="Storyboard file, relative to the render folder.")
    storyboard_sha256: str | None = Field(description="sha256 of the storyboard file's bytes.")
    project: str = Field(description="Project / episode title.")
    characters: dict[str, str] = Field(description="Character name -> folder, relative to the render folder.")
    models: list[ModelEntry] = Field(default_factory=list, description="Models of the run.")
    images: list[ImageRecord] = Field(default_factory=list, description="Rendered images, in scene order.")

    def record(self, scene: str, model: str) -> ImageRecord | None:
        return next((r for r in self.images if r.key == (scene, model)), None)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


# --------------------------------------------------------------------------------------------- report


class FaceRecord(_Part):
    """One detected face."""

    box: list[float] = Field(description="Face box (x0, y0, x1, y1) in the image's pixels.")
    score: float = Field(description="Detector confidence.")
    landmarks: list[list[float]] = Field(default_factory=list, description="Five landmarks (x, y).")
    reason: str | None = Field(default=None, description="Why the face was not scored (e.g. too small); else absent.")

    @model_serializer(mode="wrap")
    def _drop_empty_reason(self, handler):
        d = handler(self)
        if d.get("reason") is None:
            d.pop("reason", None)
        return d


class LookRecord(_Part):
    """How one face looks, measured at matched scale (docs/look.md): a measurement, not a realism verdict."""

    smoothness: float = Field(description="0-1, higher = smoother (the 'airbrushed' index: little fine detail).")
    sharpness: float = Field(description="Steepest edges, % of the face's tonal range per matched pixel.")
    noise: float = Field(description="Grain: robust sigma in 8-bit luma levels, in the flattest half of the face.")
    saturation: float = Field(description="Mean CIELAB chroma C*ab over the face and a ring around it.")
    brightness: float = Field(description="Mean Rec. 709 luma Y' (0-1) over the face and the ring.")
    contrast: float = Field(description="Standard deviation of Y' over the face and the ring.")
    face_px: int = Field(description="Face box side in the image's pixels.")
    scale_to: int = Field(default=256, description="The side the face was resampled to before measuring.")
    character: str | None = Field(default=None, description="Whose face (on an image's look: the first character).")


class BackendMatchRecord(_Part):
    """One backend's opinion of a character in an image, in that backend's own similarity scale."""

    face: int | None = Field(description="Index into faces; None when this backend found no face for the character.")
    similarity: float | None = Field(description="This backend's similarity to its own reference centroid.")
    distance: float | None = Field(description="Its native distance.")
    relative: float | None = Field(description="similarity / this backend's leave-one-out baseline.")
    status: Literal["pass", "drift", "missing"] = Field(description="pass, drift, or missing (no opinion).")
    independent: bool = Field(
        default=True,
        description="False: this model conditioned the image (FaceID); it is counted only with --allow-same-evaluator.",
    )


class CharacterMatchRecord(_Part):
    """Which detected face is this character's, and how close it is to the reference centroid."""

    character: str = Field(description="Character name.")
    face: int | None = Field(description="Index into faces; None when no face was left for the character.")
    similarity: float | None = Field(
        description="Similarity to the character's centroid; with several backends, the combined score."
    )
    distance: float | None = Field(description="The backend's native distance (None for a combined score).")
    relative: float | None = Field(description="similarity / the character's leave-one-out baseline.")
    status: Literal["pass", "drift", "missing"] = Field(description="pass, drift or missing.")
    scores: dict[str, BackendMatchRecord] = Field(default_factory=dict, description="Each scoring backend's opinion.")
    agree: bool | None = Field(
        default=None, description="Whether the counted backends agree (None: fewer than two gave an opinion)."
    )
    look: LookRecord | None = Field(default=None, description="How this character's face looks (None: not measured).")


class BackendVerdictRecord(_Part):
    """One backend's verdict on a whole image."""

    status: Status = Field(description="pass, drift, no_face or error, as this backend alone sees it.")
    similarity: float | None = Field(description="Its worst similarity over the expected characters.")
    independent: bool = Field(
        default=True, description="False: this model conditioned the image (counted only with --allow-same-evaluator)."
    )


class ImageScoreRecord(_Part):
    """One image scored against the characters it should hold."""

    path: str = Field(description="Image path as given to verify.")
    run: str = Field(description="Run label.")
    scene: str | None = Field(description="Scene id (from a render manifest).")
    model: str | None = Field(description="Model label (from a render manifest).")
    prompt: str | None = Field(description="Prompt (from a render manifest).")
    order: int = Field(description="Position along the scene order.")
    status: Status = Field(description="pass, drift, no_face or error.")
    similarity: float | None = Field(description="Worst similarity over the expected characters.")
    distance: float | None = Field(description="Native distance of that character.")
    relative: float | None = Field(description="Relative score of that character.")
    faces: list[FaceRecord] = Field(default_factory=list, description="Every detected face.")
    matches: list[CharacterMatchRecord] = Field(default_factory=list, description="One match per expected character.")
    expected: list[str] = Field(default_factory=list, description="Characters the image should hold.")
    missing: list[str] = Field(default_factory=list, description="Expected characters without a face.")
    swapped: list[list[str]] = Field(default_factory=list, description="Pairs of characters whose faces are exchanged.")
    width: int | None = Field(description="Image width.")
    height: int | None = Field(description="Image height.")
    sha256: str | None = Field(description="sha256 of the image file.")
    notes: list[str] = Field(default_factory=list, description="What intake did to the file (exif-rotated, ...).")
    error: str | None = Field(description="Why the image could not be scored (status error).")
    repair: dict | None = Field(
        default=None,
        exclude_if=lambda v: v is None,
        description="The manifest's identity-repair record of the image (before/after); else absent.",
    )
    scores: dict[str, BackendVerdictRecord] = Field(default_factory=dict, description="Each backend's verdict.")
    scored_by: list[str] = Field(default_factory=list, description="Backends whose verdicts made the decision.")
    conditioned_by: str | None = Field(
        default=None, description="Face model that conditioned the image (FaceID: insightface), from the manifest."
    )
    disagree: bool = Field(default=False, description="True when the counted backends disagree on a character.")
    look: LookRecord | None = Field(default=None, description="How the first character's face looks.")


class ProfileRecord(_Part):
    """A character's reference set."""

    name: str = Field(description="Character name.")
    folder: str = Field(description="Character folder.")
    references: int = Field(description="References in the centroid.")
    baseline_mean: float | None = Field(description="Mean leave-one-out similarity of the references.")
    baseline_min: float | None = Field(description="Lowest leave-one-out similarity.")
    outliers: list[str] = Field(default_factory=list, description="References left out of the centroid.")
    rejected: list[dict] = Field(default_factory=list, description="Unusable references: {path, reason}.")
    backends: dict[str, dict] = Field(
        default_factory=dict, description="Per backend: {references, baseline_mean, baseline_min, threshold}."
    )


class RunSummaryRecord(_Part):
    """Counts and similarity statistics of one run."""

    run: str = Field(description="Run label.")
    images: int = Field(description="Images in the run.")
    passed: int = Field(alias="pass", description="Images whose every character passed.")
    drift: int = Field(description="Images with a drifted, missing or swapped character.")
    no_face: int = Field(description="Images without a face.")
    error: int = Field(description="Unreadable images.")
    mean_similarity: float | None = Field(description="Mean similarity over images with a face.")
    min_similarity: float | None = Field(description="Lowest similarity.")
    pass_rate: float | None = Field(description="pass / images with a face.")
    by_backend: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="Per backend: its own pass / drift / no_face / error counts."
    )
    compared: int = Field(default=0, description="Character faces that two or more backends gave an opinion on.")
    disagreements: int = Field(default=0, description="... of which the backends disagreed on.")
    agreement: float | None = Field(default=None, description="(compared - disagreements) / compared.")


class MeasureComparisonRecord(_Part):
    """One look measure of a run against the references."""

    median: float = Field(description="Median over the run's faces.")
    p10: float = Field(description="10th percentile.")
    p90: float = Field(description="90th percentile.")
    relation: Literal["within", "above", "below", "wider"] = Field(description="Where the run sits (docs/look.md).")
    above: int = Field(description="Faces above the references' padded range.")
    below: int = Field(description="Faces below it.")
    statement: str = Field(description="The plain-language statement.")


class MeasureRangeRecord(_Part):
    min: float = Field(description="Lowest value over the reference photos.")
    max: float = Field(description="Highest value.")
    mean: float = Field(description="Mean.")
    std: float = Field(description="Standard deviation.")
    resolution: float = Field(description="Padding on each end: the measure's repeatability.")


class LookBaselineRecord(_Part):
    references: int = Field(description="Reference photos measured.")
    scale_to: int = Field(description="Matched face side.")
    upsampled: int = Field(default=0, description="References whose face was smaller than scale_to.")
    ranges: dict[str, MeasureRangeRecord] = Field(description="Per measure: the references' range.")


class RunLookRecord(_Part):
    """A run's look profile against one character's reference photos."""

    run: str = Field(description="Run label.")
    character: str = Field(description="Character whose reference photos are the baseline.")
    name: str = Field(description="Run label (as the look engine names the comparison).")
    images: int = Field(description="Faces measured.")
    upsampled: int = Field(default=0, description="Faces smaller than scale_to (upscaled before measuring).")
    measures: dict[str, MeasureComparisonRecord] = Field(description="Per measure: distribution and statement.")
    statements: list[str] = Field(description="One statement per measure (and a note on upscaled faces).")
    positions: list[dict[str, float]] = Field(
        default_factory=list, description="Per face: each measure's position (-1..+1 = the references' range)."
    )
    baseline: LookBaselineRecord = Field(description="The references' ranges.")


class BaselineRecord(_Part):
    mean: float | None = Field(description="Mean leave-one-out similarity.")
    min: float | None = Field(description="Lowest leave-one-out similarity.")
    references: int = Field(description="References in the centroid.")


class VerifyReportFile(_File):
    """``report.json``, written with report.csv and report.html by ``charkit verify`` (and ``render --verify``)."""

    format_version: int = Field(default=FORMAT_VERSION, description="Format of this file.")
    charkit_version: str = Field(description="charkit version that wrote it.")
    backend: BackendRecord = Field(
        description="The scorer: one face model, or several combined (name a+b, metric combined, threshold 0)."
    )
    backends: list[BackendRecord] = Field(default_factory=list, description="Each face model that scored.")
    combined_rule: str | None = Field(default=None, description="How several backends' verdicts combine.")
    allow_same_evaluator: bool = Field(
        default=False, description="True: a model that conditioned an image was allowed to judge it."
    )
    threshold: float = Field(description="Pass threshold used.")
    baseline: dict[str, BaselineRecord] = Field(description="Per character: the references' own leave-one-out level.")
    licence_note: str = Field(description="Non-commercial warning whenever an insightface pack scored; else empty.")
    characters: list[ProfileRecord] = Field(description="Reference sets.")
    runs: list[RunSummaryRecord] = Field(description="Per-run summaries, in run order.")
    images: list[ImageScoreRecord] = Field(description="Every image's score.")
    look: list[RunLookRecord] = Field(
        default_factory=list, description="Per run and character: the look profile against the reference photos."
    )


# ------------------------------------------------------------------------------------------- training


class TrainRunFile(_File):
    """``<run folder>/run.json``: what a training run trains, written when it starts (checked on resume)."""

    format_version: int = Field(default=FORMAT_VERSION, description="Format of this file.")
    charkit_version: str = Field(description="charkit version that started the run.")
    character: str = Field(description="Character name.")
    family: str = Field(description="Model family.")
    model: str = Field(description="Base model (resolved hub id or path).")
    run: str = Field(description="Run name.")
    preset: dict[str, Any] = Field(description="The whole training preset, as validated.")
    started: str = Field(description="Start time (ISO 8601, local).")


STAGE_FILES: dict[str, type[_File]] = {
    "dataset.json": DatasetFile,
    "manifest.json": RenderManifest,
    "report.json": VerifyReportFile,
    "run.json": TrainRunFile,
}

M = TypeVar("M", bound=BaseModel)


def _field_names(model: type[BaseModel], seen: set | None = None) -> set[str]:
    seen = set() if seen is None else seen
    for name, info in model.model_fields.items():
        seen.add(info.alias or name)
        ann = info.annotation
        for arg in (*getattr(ann, "__args__", ()), ann):
            if isinstance(arg, type) and issubclass(arg, BaseModel) and arg is not model:
                _field_names(arg, seen)
    return seen


def parse_stage_file(model: type[M], data: Any, source: str) -> M:
    """Validate already-parsed JSON as ``model`` or raise one line naming ``source`` and the field."""
    if not isinstance(data, dict):
        raise CharkitError(f"{source}: not a charkit {model.__name__} (a JSON object is expected)")
    version = data.get("format_version", 1)
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise CharkitError(
            f"{source}: written by a newer charkit (format {version}, this one reads up to {FORMAT_VERSION}); upgrade charkit"
        )
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise CharkitError(
            validation_message(source, e, known_fields=_field_names(model), docs="docs/formats.md")
        ) from None


def read_stage_file(path: str | os.PathLike, model: type[M], *, fix: str = "") -> M:
    """Read and validate ``path`` as ``model``; every failure is one line naming the file (and field) and ``fix``.

    >>> manifest = read_stage_file("renders/ep1/manifest.json", RenderManifest)  # doctest: +SKIP
    """
    p = Path(path)
    hint = f"; {fix}" if fix else ""
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CharkitError(f"{p}: no such file{hint}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CharkitError(f"{p}: cannot read it ({getattr(e, 'strerror', None) or e}){hint}") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise CharkitError(f"{p}: not valid JSON ({str(e)[:120]}){hint}") from None
    try:
        return parse_stage_file(model, data, str(p))
    except CharkitError as e:
        raise CharkitError(f"{e}{hint}") from None


def write_stage_file(path: str | os.PathLike, record: BaseModel) -> None:
    """Write a stage file atomically (strict JSON: a NaN is a bug, not a value)."""
    atomic_write_json(path, record.model_dump(mode="json", by_alias=True))


# ---------------------------------------------------------------------------------------------- docs


def _type(annotation) -> str:
    text = getattr(annotation, "__name__", None) if not getattr(annotation, "__args__", None) else None
    text = text or re.sub(r"(?:[a-z_]\w*\.)+(?=[A-Za-z])", "", str(annotation))  # drop module paths
    return text.replace("NoneType", "None").replace("|", "\\|")


def render_docs() -> str:
    """The field tables of every stage file (the generated part of docs/formats.md)."""
    out: list[str] = []
    done: set[type] = set()

    def table(model: type[BaseModel], title: str) -> None:
        if model in done:
            return
        done.add(model)
        out.extend([f"#### {title}", "", (model.__doc__ or "").strip().split("\n\n")[0], ""])
        out.extend(["| field | type | description |", "| --- | --- | --- |"])
        nested = []
        for name, info in model.model_fields.items():
            desc = " ".join((info.description or "").split()).replace("|", "\\|")
            out.append(f"| `{info.alias or name}` | {_type(info.annotation)} | {desc} |")
            for arg in (*getattr(info.annotation, "__args__", ()), info.annotation):
                inner = getattr(arg, "__args__", (arg,))
                nested += [a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)]
        out.append("")
        for sub in nested:
            table(sub, f"`{sub.__name__}`")

    for name, model in STAGE_FILES.items():
        table(model, f"`{name}` ({model.__name__})")
    return "\n".join(out).rstrip() + "\n"


DOCS_BEGIN = "<!-- generated by `python -m charkit.stagefiles docs/formats.md`: begin -->"
DOCS_END = "<!-- generated: end -->"


def update_docs(text: str) -> str:
    """``text`` (docs/formats.md) with the part between the markers replaced by :func:`render_docs`."""
    head, sep, rest = text.partition(DOCS_BEGIN)
    _, sep2, tail = rest.partition(DOCS_END)
    if not sep or not sep2:
        raise ValueError("docs/formats.md has no generated section markers")
    return f"{head}{DOCS_BEGIN}\n\n{render_docs()}\n{DOCS_END}{tail}"


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1:  # rewrite the generated section of that file in place
        target = Path(sys.argv[1])
        target.write_text(update_docs(target.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        print(render_docs(), end="")
