"""``check_inputs``: a render folder becomes a :class:`RepairPlan` of faces to re-draw, or a one-line error.

Reads ``DIR/manifest.json``, the storyboard it names (which resolves each image's model, LoRAs and
IP-Adapter exactly as ``charkit render`` did) and the characters' references. Every image's original
render (its PNG, or ``originals/<file>`` once a repair was kept) is scored with the evaluator; each
character whose matched face is below the target becomes a :class:`FaceJob`. A character without a
face is reported, never guessed. Nothing is written.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import CharkitError
from ..paths import sha256_file, under_root
from ..render.manifest import MANIFEST, ImageRecord, Manifest
from ..render.plan import IPPlan, ModelPlan, RenderPlan, SceneJob
from ..stagefiles import RenderManifest, parse_stage_file

#: Bump when the same inputs would give other repaired pixels: every repair record is redone.
REPAIR_VERSION = 1
#: Where the original render of a repaired image is kept (``DIR/originals/<file>``).
ORIGINALS = "originals"
#: A try whose face lands elsewhere (IoU with the original face box below this) is not the same face.
SAME_FACE_IOU = 0.3


@dataclass
class RepairOptions:
    """How to repair: which faces, how hard to try, and what counts as better."""

    target: float | None = None  # repair characters scoring below this (None: the evaluator's threshold)
    tries: int = 3  # seeds per face
    strength: float = 0.4  # denoising strength of the face crop (ADetailer's default)
    steps: int | None = None  # sampling steps before strength (None: the scene's)
    guidance: float | None = None  # None: the scene's (a fill model: the guidance it is trained for)
    padding: int = 32  # context pixels around the feathered face box (ADetailer "inpaint padding")
    dilate: int = 4  # pixels the face box grows before feathering (ADetailer "dilate erode")
    mask_blur: int = 4  # feather width in pixels (ADetailer "mask blur")
    margin: float = 0.02  # a try is kept only when it beats the original by at least this much
    resolution: int | None = None  # inpaint size of the crop's long side (None: family's native width; tiny: 64)
    backend: str | None = None  # evaluator (None: the storyboard's, never the model that conditioned the image)
    face_models: str | None = None
    inpaint_model: str | None = None  # a model of the same family that inpaints instead (e.g. Flux Fill)
    device: str = "cpu"
    dtype: str = "fp32"
    allow_pickle_weights: bool = False
    scenes: tuple[str, ...] | None = None
    progress: bool = True

    def __post_init__(self):
        # paths arrive as Path objects from the CLI and as strings from code: keep one form
        for name in ("face_models", "inpaint_model"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, str(value))
        self.scenes = tuple(self.scenes) if self.scenes else None

    def settings(self) -> dict:
        """The options that change a repair's pixels or decision (what the record and inputs hash hold)."""
        return {
            "tries": self.tries,
            "strength": self.strength,
            "padding": self.padding,
            "dilate": self.dilate,
            "mask_blur": self.mask_blur,
            "margin": self.margin,
            "guidance": self.guidance,
        }


@dataclass
class FaceJob:
    """One drifted face to re-draw."""

    character: str
    index: int  # the character's position in the scene (declared left to right): its seeds derive from it
    face: int  # index of the matched face among the detected faces
    box: tuple[float, float, float, float]
    detector_score: float
    before: float
    prompt: str  # the scene prompt; in multi-character scenes only this character's trigger words remain
    negative_prompt: str
    lora: float | None  # the character's LoRA scale in the scene (None: no LoRA for this family)
    ip: IPPlan | None  # IP-Adapter / FaceID on this character's references, when the scene used one


@dataclass
class ImageJob:
    """One image of the manifest, its original, its scores and the faces to re-draw."""

    record: ImageRecord
    scene_job: SceneJob
    model: ModelPlan  # the model that inpaints (the scene's, or --inpaint-model)
    pipeline_class: str | None  # diffusers inpaint class (None until loaded when the config is not local)
    source: Path  # the original render
    source_sha256: str
    steps: int
    guidance: float
    resolution: int
    independent: bool  # evaluator differs from the face model that conditioned the image
    inputs_hash: str
    status: str = "repair"  # "repair" | "done" (same repair recorded) | "pass" | "no_face"
    faces: list[FaceJob] = field(default_factory=list)
    scores: dict[str, float | None] = field(default_factory=dict)  # character -> similarity of the original
    not_found: list[str] = field(default_factory=list)  # characters without a face: reported, not guessed

    @property
    def key(self) -> tuple[str, str]:
        return self.record.key


@dataclass
class RepairPlan:
    """Everything check_inputs resolved; ``images`` in manifest order."""

    render_dir: Path
    manifest: Manifest
    render_plan: RenderPlan
    options: RepairOptions
    evaluator: object  # FaceBackend
    target: float
    images: list[ImageJob]
    profiles: dict = field(default_factory=dict)  # character -> ReferenceProfile (evaluator space)
    locked: list[tuple[str, str]] = field(default_factory=list)  # takes locked in the studio: never touched

    @property
    def pending(self) -> list[ImageJob]:
        return [i for i in self.images if i.status == "repair"]

    @property
    def order(self) -> list[tuple[str, str]]:
        return [r.key for r in self.manifest.images]

    @property
    def header(self) -> dict:
        """The manifest's top-level fields (everything but ``images``), as render's merge helpers take them."""
        return manifest_header(self.manifest)


def manifest_header(manifest: Manifest) -> dict:
    return {k: v for k, v in manifest.model_dump(mode="json").items() if k != "images"}


# -- the manifest ----------------------------------------------------------------------------


def read_manifest(render_dir: Path) -> Manifest:
    """``DIR/manifest.json`` as a :class:`Manifest`, or a one-line error naming what is wrong."""
    f = render_dir / MANIFEST
    if not render_dir.is_dir():
        raise CharkitError(f"{render_dir}: no such folder; pass a folder written by `charkit render`")
    if not f.is_file():
        raise CharkitError(
            f"{render_dir}: no {MANIFEST}; `charkit repair` works on a folder written by `charkit render`"
        )
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CharkitError(f"{f}: not readable JSON ({e}); re-render the folder") from None
    missing = [
        k
        for k in ("charkit_version", "storyboard", "characters", "images")
        if not isinstance(data, dict) or k not in data
    ]
    if missing:
        raise CharkitError(
            f"{f}: not a charkit render manifest (no field '{missing[0]}'); repair works on folders written by "
            "`charkit render`"
        )
    try:
        return parse_stage_file(RenderManifest, data, str(f))
    except CharkitError as e:
        raise CharkitError(f"{e}; re-render the folder") from None


def original_of(rec: ImageRecord, render_dir: Path) -> tuple[Path, str]:
    """The original render of ``rec`` and its sha256: the PNG, or ``originals/<file>`` once a repair was kept.

    Also recognises a repair interrupted after its PNG was written but before the manifest was.
    """
    png = under_root(render_dir, rec.file)
    kept = under_root(render_dir, ORIGINALS, rec.file)
    png_sha = sha256_file(png) if png.is_file() else None
    kept_sha = sha256_file(kept) if kept.is_file() else None
    r = rec.repair or {}
    if r.get("original") and r.get("original_sha256"):  # a kept repair: the original is the copy
        if kept_sha == r["original_sha256"]:
            return kept, kept_sha
        raise CharkitError(
            f"{kept}: the original of repaired image {rec.file} is missing or changed; restore it or re-render "
            f"scene {rec.scene!r} (charkit render --force --scene {rec.scene})"
        )
    if png_sha == rec.sha256:
        return png, png_sha
    if kept_sha is not None and kept_sha == rec.sha256:  # killed between writing the PNG and the manifest
        return kept, kept_sha
    what = "is missing" if png_sha is None else "does not match its manifest sha256 (edited or half-written)"
    raise CharkitError(
        f"{png} {what}; re-render scene {rec.scene!r} (charkit render --force --scene {rec.scene}) before repairing it"
    )


# -- per-image facts ---------------------------------------------------------------------------


def face_prompt(job: SceneJob, character: str, characters: dict) -> str:
    """The prompt that re-draws ``character``'s face: the scene's, with only this character's trigger words.

    The other characters of a multi-character scene become their class word, so their LoRA trigger
    words cannot pull the face towards them.

    >>> face_prompt(job, "bob", chars)  # "{alice} and {bob} at a cafe"  # doctest: +SKIP
    'woman and zwx at a cafe'
    """
    if len(job.characters) <= 1:
        return job.prompt
    from ..render.storyboard import expand_prompt

    triggers = {n: (c.trigger_text if n == character else c.spec.class_word) for n, c in characters.items()}
    return re.sub(r"\s+", " ", expand_prompt(job.scene.prompt, triggers)).strip()


def face_ip(job: SceneJob, character: str, characters: dict) -> IPPlan | None:
    """The scene's IP-Adapter / FaceID, on ``character``'s own references."""
    if job.ip is None:
        return None
    if job.ip.character == character:
        return job.ip
    image = characters[character].ref_paths()[0] if job.ip.mode == "image" else None
    return replace(job.ip, character=character, image=image)


def _resolve_inpaint_model(options: RepairOptions, model: ModelPlan, render_plan: RenderPlan, cache: dict) -> ModelPlan:
    """``--inpaint-model`` for images of its family (resolved once per family), else the scene's own model."""
    if options.inpaint_model is None:
        return model
    from ..families.detect import detect_family
    from ..families.sources import resolve_source
    from ..render.fingerprint import source_fingerprint

    src = resolve_source(
        options.inpaint_model, what="--inpaint-model", allow_pickle_weights=options.allow_pickle_weights
    )
    family = detect_family(src.ref, allow_pickle_weights=options.allow_pickle_weights)
    if family != model.family:
        return model  # it inpaints images of its own family only
    if family not in cache:
        cache[family] = replace(
            model,
            label=model.label,
            source=options.inpaint_model,
            path=src.ref,
            config=model.config if src.kind == "file" else None,
            controlnet={},
            fingerprint=source_fingerprint(src.ref) or "",
        )
    return cache[family]


def choose_evaluator(options: RepairOptions, render_plan: RenderPlan, records: list[ImageRecord]):
    """The scorer: ``--backend``, else the storyboard's (one backend or a panel), never insightface alone for
    FaceID-conditioned images.

    FaceID conditions on insightface ArcFace embeddings; scoring with that model flatters the result, so by
    default a panel drops it (:func:`~charkit.identity.independent_scorer`) and insightface alone falls back to
    dlib (an unrelated model). A backend named with ``--backend`` is the user's choice and kept.
    """
    from ..identity import FACEID_MODEL, get_backend, get_scorer, independent_scorer

    board = render_plan.storyboard
    ident = board.identity
    face_models = options.face_models or (str(board.resolve(ident.face_models)) if ident.face_models else None)
    names = options.backend or ident.backend
    threshold = ident.threshold if names == ident.backend else None
    scorer = get_scorer(names, face_models=face_models, threshold=threshold)
    faceid = any((r.ip_adapter or {}).get("mode") == "face" for r in records)
    if options.backend is not None or not faceid:
        return scorer
    try:
        return independent_scorer(scorer, FACEID_MODEL)
    except CharkitError:  # insightface alone: the storyboard did not ask for it to judge FaceID images
        return get_backend("dlib")


def repair_inputs_hash(
    job: ImageJob, plan_options: RepairOptions, render_plan: RenderPlan, evaluator, target: float
) -> str:
    """Hash of everything that changes a repair: the original, the model, LoRAs, settings, evaluator, references."""
    from ..render.fingerprint import file_sha256, stable_hash

    rec, m = job.record, job.model
    chars = render_plan.characters
    doc = {
        "repair_version": REPAIR_VERSION,
        "original": job.source_sha256,
        "render": rec.inputs_hash,
        "model": m.fingerprint,
        "family": m.family,
        "lora": {n: [s, file_sha256(chars[n].lora_path(m.family))] for n, s in job.scene_job.lora.items() if s != 0},
        "settings": {**plan_options.settings(), "steps": job.steps, "resolution": job.resolution, "target": target},
        "evaluator": [evaluator.info.name, evaluator.info.model_hash],
        "refs": {n: [file_sha256(p) for p in chars[n].ref_paths()] for n in rec.characters},
        "ip": None if job.scene_job.ip is None else [job.scene_job.ip.mode, job.scene_job.ip.scale],
        "dtype": render_plan.options.dtype_name,
        "device": str(render_plan.options.device).split(":")[0],
    }
    return stable_hash(doc)


def default_resolution(model: ModelPlan) -> int:
    """The family's native width; on a tiny model (``charkit tiny-model``) the tiny side, as render sizes it."""
    from ..families.tiny_limits import TINY_SIDE, is_tiny_model

    return TINY_SIDE if is_tiny_model(model.path) else model.spec.width


def job_guidance(options: RepairOptions, spec, pipeline_class: str | None, scene_guidance: float) -> float:
    """``--guidance``, else the fill model's own (Flux Fill is trained at 30), else the scene's."""
    if options.guidance is not None:
        return float(options.guidance)
    if pipeline_class is not None and pipeline_class == spec.fill_pipeline_class and spec.fill_guidance is not None:
        return spec.fill_guidance
    return scene_guidance


def _check_options(o: RepairOptions) -> None:
    if o.tries < 1:
        raise CharkitError(f"--tries {o.tries}: must be at least 1 (each try is one seed)")
    if not 0 < o.strength <= 1:
        raise CharkitError(
            f"--strength {o.strength}: must be in (0, 1] (0.3-0.5 keeps the face's pose and light; 1 redraws it)"
        )
    for name, v in (("--padding", o.padding), ("--dilate", o.dilate), ("--mask-blur", o.mask_blur)):
        if v < 0:
            raise CharkitError(f"{name} {v}: must be 0 or more pixels")
    if o.margin < 0:
        raise CharkitError(
            f"--margin {o.margin}: must be 0 or more; repair never keeps a face that scores lower than the original"
        )
    if o.guidance is not None and o.guidance < 0:
        raise CharkitError(f"--guidance {o.guidance}: must be 0 or more")
    if o.steps is not None and o.steps < 1:
        raise CharkitError(f"--steps {o.steps}: must be at least 1")
    if o.target is not None and not -1 <= o.target <= 1:
        raise CharkitError(f"--target {o.target}: similarities lie in [-1, 1]; pick a value such as 0.45")


# -- the step ----------------------------------------------------------------------------------


def check_options(options: RepairOptions) -> RepairOptions:
    """The options with the precision name normalised (a copy), or a one-line error; the argument is not changed."""
    from ..devices import precision_name

    options = replace(options, dtype=precision_name(options.dtype))
    _check_options(options)
    return options


def load_render_plan(render_dir: Path, manifest: Manifest, options: RepairOptions) -> RenderPlan:
    """The render stage's plan of the storyboard that wrote the folder, on the models the manifest records."""
    from ..render.models import recorded_models
    from ..render.plan import RenderOptions
    from ..render.plan import check_inputs as check_render
    from ..render.storyboard import load_storyboard

    mf = render_dir / MANIFEST
    if not manifest.storyboard:
        raise CharkitError(f"{mf}: field 'storyboard' is empty; repair needs the storyboard that rendered the folder")
    board_path = (render_dir / manifest.storyboard).resolve()
    if not board_path.is_file():
        raise CharkitError(
            f"{mf}: storyboard {manifest.storyboard} not found at {board_path}; repair needs it (it resolves each "
            "image's model and LoRAs): restore it, or re-render"
        )
    board = load_storyboard(board_path)
    ropts = RenderOptions(
        device=options.device,
        dtype=options.dtype,
        allow_pickle_weights=options.allow_pickle_weights,
        face_models=options.face_models,
        progress=options.progress,
    )
    # rendered with --model instead of the storyboard's own models: plan on those, as render did (a tiny model's
    # own adapters included), never on storyboard models that may not even be installed
    models = recorded_models(manifest.models, board)
    return check_render(board, out=render_dir, models=models, options=ropts)


def select_records(manifest: Manifest, options: RepairOptions, where: Path) -> list[ImageRecord]:
    """The manifest's images that ``--scene`` selects (all of them by default)."""
    records = manifest.images
    if not options.scenes:
        return list(records)
    unknown = [s for s in options.scenes if s not in {r.scene for r in records}]
    if unknown:
        scenes = ", ".join(dict.fromkeys(r.scene for r in records))
        raise CharkitError(f"--scene {unknown[0]!r}: no such scene in {where}; scenes: {scenes}")
    return [r for r in records if r.scene in options.scenes]


def check_record(rec: ImageRecord, render_plan: RenderPlan, where: str) -> SceneJob:
    """The render job behind ``rec``, or a one-line error: unknown character, scene gone, storyboard changed."""
    from ..render.plan import inputs_hash

    board = render_plan.storyboard.path.name if render_plan.storyboard.path else "the storyboard"
    for name in rec.characters:
        if name not in render_plan.characters:
            known = ", ".join(render_plan.characters) or "none"
            raise CharkitError(
                f"{where}: unknown character {name!r}; the storyboard declares {known}: re-render the scene or "
                "add the character back"
            )
    job = next((j for j in render_plan.jobs if j.key == rec.key), None)
    if job is None:
        raise CharkitError(
            f"{where}: not in the storyboard any more; run `charkit render {board}` to update the folder"
        )
    as_rendered = replace(render_plan, options=replace(render_plan.options, dtype=rec.dtype, device=rec.device))
    if inputs_hash(job, as_rendered) != rec.inputs_hash:
        raise CharkitError(
            f"{where}: the storyboard, a character or the model changed since this image was rendered; run "
            f"`charkit render {board}` first"
        )
    return job


def plan_image(
    rec: ImageRecord,
    job: SceneJob,
    plan: RepairPlan,
    *,
    where: str,
    inpaint_models: dict,
) -> ImageJob:
    """One image's model, inpaint class, steps, guidance, resolution, original and inputs hash (no scoring yet)."""
    from ..families.inpaint import check_inpaint_model, check_strength

    options, render_dir = plan.options, plan.render_dir
    try:
        model = _resolve_inpaint_model(options, job.model, plan.render_plan, inpaint_models)
        pipeline_class = check_inpaint_model(model.spec, model.path)
        steps = options.steps or rec.steps
        check_strength(options.strength, steps)
        resolution = options.resolution or default_resolution(model)
        try:
            model.spec.check_size(resolution, resolution)
        except CharkitError as e:
            raise CharkitError(f"--resolution {resolution}: {e}") from None
    except CharkitError as e:
        raise CharkitError(f"{where}: {e}") from None
    source, sha = original_of(rec, render_dir)
    conditioned_by = "insightface" if (rec.ip_adapter or {}).get("mode") == "face" else None
    ij = ImageJob(
        record=rec,
        scene_job=job,
        model=model,
        pipeline_class=pipeline_class,
        source=source,
        source_sha256=sha,
        steps=steps,
        guidance=job_guidance(options, model.spec, pipeline_class, rec.guidance),
        resolution=resolution,
        independent=plan.evaluator.info.name != conditioned_by,
        inputs_hash="",
    )
    ij.inputs_hash = repair_inputs_hash(ij, options, plan.render_plan, plan.evaluator, plan.target)
    png = under_root(render_dir, rec.file)
    same = rec.repair and rec.repair.get("inputs_hash") == ij.inputs_hash
    if same and png.is_file() and sha256_file(png) == rec.sha256:
        ij.status = "done"  # repaired with these very inputs: resume skips it
    return ij


def check_inputs(
    render_dir: str | os.PathLike,
    *,
    options: RepairOptions | None = None,
    cache=None,
    score: bool = True,
) -> RepairPlan:
    """Validate the render folder and options, score each original, and list the faces to re-draw. Writes nothing.

    ``score=False`` skips the scoring (images are left ``repair`` with no faces): validation only.

    >>> plan = check_inputs("renders/ep1", options=RepairOptions(tries=4))  # doctest: +SKIP
    >>> [(i.record.scene, [f.character for f in i.faces]) for i in plan.pending]  # doctest: +SKIP
    [('s03-night', ['alice'])]
    """
    options = check_options(options or RepairOptions())
    render_dir = Path(render_dir).expanduser().resolve()
    manifest = read_manifest(render_dir)
    render_plan = load_render_plan(render_dir, manifest, options)
    records = select_records(manifest, options, render_dir / MANIFEST)
    evaluator = choose_evaluator(options, render_plan, records)
    target = evaluator.info.threshold if options.target is None else float(options.target)
    plan = RepairPlan(render_dir, manifest, render_plan, options, evaluator, target, images=[])
    inpaint_models: dict = {}
    for rec in records:
        if rec.locked:  # a take locked in the studio is kept as it is, as render keeps it
            plan.locked.append(rec.key)
            continue
        where = f"{render_dir / MANIFEST}: scene {rec.scene!r} (model {rec.model})"
        job = check_record(rec, render_plan, where)
        plan.images.append(plan_image(rec, job, plan, where=where, inpaint_models=inpaint_models))
    if score:
        for ij in plan.pending:
            find_faces(ij, plan, cache=cache)
    return plan


def profiles_for(plan: RepairPlan, names: list[str], *, cache=None) -> list:
    """The evaluator's reference profiles of ``names`` (built once per plan)."""
    from ..identity import profile_for_character

    for n in names:
        if n not in plan.profiles:
            plan.profiles[n] = profile_for_character(plan.render_plan.characters[n], plan.evaluator, cache=cache)
    return [plan.profiles[n] for n in names]


def find_faces(ij: ImageJob, plan: RepairPlan, *, cache=None) -> None:
    """Score ``ij``'s original against its characters; fill ``faces`` (below target), ``scores`` and ``not_found``."""
    from ..identity import score_image

    rec = ij.record
    if not rec.characters:
        ij.status = "pass"
        return
    profiles = profiles_for(plan, rec.characters, cache=cache)
    s = score_image(ij.source, profiles, plan.evaluator, threshold=plan.target, left_to_right=len(profiles) > 1)
    if s.status == "error":
        raise CharkitError(f"{ij.source}: cannot be read ({s.error}); re-render scene {rec.scene!r}")
    chars = plan.render_plan.characters
    job = ij.scene_job
    for m in s.matches or []:
        ij.scores[m.character] = None if m.similarity is None else round(float(m.similarity), 4)
        if m.face is None:
            ij.not_found.append(m.character)
        elif m.similarity < plan.target:
            f = s.faces[m.face]
            ij.faces.append(
                FaceJob(
                    character=m.character,
                    index=rec.characters.index(m.character),
                    face=m.face,
                    box=tuple(float(v) for v in f.box),
                    detector_score=float(f.score),
                    before=round(float(m.similarity), 4),
                    prompt=face_prompt(job, m.character, chars),
                    negative_prompt=job.negative_prompt,
                    lora=job.lora.get(m.character),
                    ip=face_ip(job, m.character, chars),
                )
            )
    if s.status == "no_face":
        ij.not_found = list(rec.characters)
        ij.scores = {n: None for n in rec.characters}
    if not ij.faces:
        ij.status = "no_face" if ij.not_found else "pass"
