"""``repair_render_dir``: re-draw only the faces that drifted, and keep a result only when the score rises.

Every step is a public function you can call alone::

    check_inputs                      manifest + storyboard -> RepairPlan: faces below target (or a one-line error)
    load                              each model once, with every character's LoRA (render's own load)
    for each image, for each drifted face (left to right):
        plan_crop / crop_inputs       face box -> mask -> feathered box -> padded square crop at native size
        with scene_scales(...):       only this character's LoRA, its FaceID / IP-Adapter references
            draw                      N tries (seed = image seed + 1000 x face + try), one inpaint call
        paste                         each try back through the feathered mask (outside pixels: same bytes)
        score_tries                   the evaluator scores every composite (all the scene's characters)
        decide                        best try, kept only when after - before >= margin
    record                            originals/<file> (once) -> new PNG with ADetailer fields -> manifest
    finish                            one manifest.json (merged across processes)

>>> result = repair_render_dir("renders/ep1", tries=4, device="cuda", dtype="fp16")  # doctest: +SKIP
>>> [(f.face.character, f.face.before, f.decision.after, f.decision.kept) for i in result.repaired for f in i.faces]  # doctest: +SKIP
[('alice', 0.31, 0.52, True)]
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from ..distributed import SingleProcess, device_for, my_share, process_state
from ..interrupts import Interrupted, guard, raise_if_stopped, stopped
from ..paths import atomic_write_bytes, sha256_file, under_root
from ..render.distributed import RecordWriter, final_merge, recover_partials
from ..render.manifest import MANIFEST, PARTIAL_GLOB, ImageRecord, Manifest, update_manifest
from ..render.scales import denoiser
from .masks import Box, Crop, crop_inputs, paste, plan_crop
from .plan import (
    ORIGINALS,
    SAME_FACE_IOU,
    FaceJob,
    ImageJob,
    RepairOptions,
    RepairPlan,
    check_inputs,
    job_guidance,
    profiles_for,
    read_manifest,
)
from .records import (
    Decision,
    FaceOutcome,
    TryScore,
    adetailer_fields,
    append_parameters,
    repair_record,
    repair_seed,
)

__all__ = [
    "ImageRepair",
    "RepairContext",
    "RepairResult",
    "check_inputs",
    "decide",
    "draw",
    "load",
    "make_context",
    "record",
    "repair_face",
    "repair_image",
    "repair_jobs",
    "repair_render_dir",
    "score_tries",
]

#: ``candidates(face, crop, inputs, seeds) -> [PIL image of crop.size per seed]``: what re-draws a face.
Candidates = Callable[[FaceJob, Crop, tuple[Image.Image, Image.Image], list[int]], list[Image.Image]]


# -- results ---------------------------------------------------------------------------------


@dataclass
class ImageRepair:
    """One image after its faces were tried, before anything is written."""

    job: ImageJob
    image: Image.Image  # the original with every kept face pasted in
    faces: list[FaceOutcome]
    scores: dict[str, float | None]  # character -> similarity of ``image``
    seconds: float = 0.0

    @property
    def key(self) -> tuple[str, str]:
        return self.job.key

    @property
    def kept(self) -> bool:
        return any(f.decision.kept for f in self.faces)


@dataclass
class RepairResult:
    """What a repair run did. ``manifest`` is None on processes other than the main one."""

    render_dir: Path
    manifest_path: Path
    manifest: Manifest | None
    repaired: list[ImageRepair]  # images whose faces were tried (kept or not), this process's share
    skipped: list[tuple[str, str]]  # already repaired with the same inputs
    locked: list[tuple[str, str]]  # locked takes (charkit studio): left as they are
    passed: list[tuple[str, str]]  # every face at or above the target
    not_found: list[tuple[str, str, list[str]]]  # (scene, model, characters without a face): reported, not guessed


@dataclass
class RepairContext:
    """Per-run state shared by the steps."""

    plan: RepairPlan
    device: str
    render_ctx: Any = None  # charkit.render.lifecycle.RenderContext (FaceID embeddings, IP images)
    cache: Any = None  # FaceCache for the references


def make_context(plan: RepairPlan, *, cache=None, state=None) -> RepairContext:
    """The run state for ``plan``'s steps (conditioning caches shared with render's ``condition``)."""
    from ..render.conditioning import Conditioner
    from ..render.lifecycle import RenderContext

    o = plan.options
    render_ctx = RenderContext(
        plan=plan.render_plan,
        device=o.device,
        conditioner=Conditioner(allow_pickle_weights=o.allow_pickle_weights, device=o.device),
        face_cache=cache,
        state=state or SingleProcess(),
    )
    return RepairContext(plan=plan, device=o.device, render_ctx=render_ctx, cache=cache)


# -- steps -----------------------------------------------------------------------------------


def load(plan: RepairPlan, model, *, device: str, jobs: list[ImageJob]):
    """Load ``model`` once with the LoRA of every character its images use (render's :func:`load`).

    >>> loaded = load(plan, plan.pending[0].model, device="cuda", jobs=plan.pending)  # doctest: +SKIP
    """
    from ..render.lifecycle import load as load_model

    scene_jobs = [replace(j.scene_job, model=model) for j in jobs if j.model is model]
    return load_model(model, plan.render_plan, device=device, jobs=scene_jobs)


def _inpaint_variant(loaded):
    from ..families.inpaint import inpaint_pipeline

    # ``variants`` is cleared whenever the IP-Adapter changes, so the variant picks up a new image encoder.
    if "inpaint" not in loaded.variants:
        loaded.variants["inpaint"] = inpaint_pipeline(loaded.plan.spec, loaded.pipe)
    return loaded.variants["inpaint"]


def draw(loaded, job: ImageJob, face: FaceJob, crop: Crop, inputs, seeds: list[int], ctx: RepairContext) -> list:
    """Re-draw ``face`` once per seed at the inpaint size, with only its character's LoRA and references."""
    import torch

    from ..families.inpaint import inpaint
    from ..render.lifecycle import condition
    from ..render.scales import scene_scales

    scene = replace(job.scene_job, model=loaded.plan, control=None, ip=face.ip)
    cond = condition(loaded, scene, ctx.render_ctx)
    ipipe = _inpaint_variant(loaded)
    lora = {}
    if face.lora is not None and face.character in loaded.adapters:
        lora = {loaded.adapters[face.character]: face.lora}
    image, mask = inputs
    with scene_scales(
        loaded.pipe,
        lora=lora,
        ip_scale=cond.ip_scale,
        plain_processors=loaded.plain_processors if loaded.ip_mode is not None else None,
        layers=loaded.lora_layers,
    ):
        return inpaint(
            loaded.plan.spec,
            ipipe,
            image=image,
            mask=mask,
            prompt=face.prompt,
            negative_prompt=face.negative_prompt or None,
            width=crop.size[0],
            height=crop.size[1],
            steps=job.steps,
            guidance=job.guidance,
            strength=ctx.plan.options.strength,
            generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
            num_images=len(seeds),
            ip_adapter_image=cond.ip_image,
            ip_adapter_embeds=cond.ip_embeds,
        )


def score_tries(
    composites: list[Image.Image],
    seeds: list[int],
    job: ImageJob,
    face: FaceJob,
    current: dict[str, float | None],
    ctx: RepairContext,
) -> list[TryScore]:
    """Score each composite with the evaluator; a try counts only if the face stays put and no other face drops."""
    from ..identity import score_image

    plan = ctx.plan
    chars = job.record.characters
    profiles = profiles_for(plan, chars, cache=ctx.cache)
    out = []
    original = Box.around(face.box, composites[0].size) if composites else None
    for seed, im in zip(seeds, composites):
        s = score_image(im, profiles, plan.evaluator, threshold=plan.target, left_to_right=len(chars) > 1)
        scores = {m.character: None if m.similarity is None else round(float(m.similarity), 4) for m in s.matches}
        match = next((m for m in s.matches if m.character == face.character), None)
        if match is None or match.face is None:
            out.append(TryScore(seed, None, "no_face", scores))
            continue
        sim = scores[face.character]
        if Box.around(s.faces[match.face].box, im.size).iou(original) < SAME_FACE_IOU:
            status = "moved"
        elif any(
            n != face.character and b is not None and (scores.get(n) is None or scores[n] < b)
            for n, b in current.items()
        ):
            status = "harms_other"
        else:
            status = match.status
        out.append(TryScore(seed, sim, status, scores))
    return out


def decide(before: float, tries: list[TryScore], margin: float) -> Decision:
    """Keep the best valid try only when it beats ``before`` by ``margin``; ties keep the earliest try.

    >>> decide(0.31, [TryScore(1, 0.30, "drift"), TryScore(2, 0.52, "pass")], 0.02)
    Decision(kept=True, best=1, after=0.52, reason='improved')
    >>> decide(0.31, [TryScore(1, None, "no_face")], 0.02).reason
    'no_face_after'
    """
    valid = [
        (i, t.similarity) for i, t in enumerate(tries) if t.similarity is not None and t.status in ("pass", "drift")
    ]
    if not valid:
        return Decision(False, None, before, "no_face_after")
    best, sim = max(valid, key=lambda v: (v[1], -v[0]))
    if sim - before >= margin - 1e-9:
        return Decision(True, best, sim, "improved")
    return Decision(False, best, before, "below_margin")


def repair_face(
    loaded,
    job: ImageJob,
    face: FaceJob,
    image: Image.Image,
    current: dict[str, float | None],
    ctx: RepairContext,
    *,
    candidates: Candidates | None = None,
) -> tuple[FaceOutcome, Image.Image, dict]:
    """crop -> draw N tries -> paste -> score -> decide, for one face; returns the outcome, image and scores."""
    o = ctx.plan.options
    spec = job.model.spec
    crop = plan_crop(
        face.box,
        image.size,
        dilate=o.dilate,
        mask_blur=o.mask_blur,
        padding=o.padding,
        resolution=job.resolution,
        multiple=spec.size_multiple,
    )
    inputs = crop_inputs(image, crop)
    seeds = [repair_seed(job.record.seed, face.index, t) for t in range(o.tries)]
    if candidates is not None:
        drawn = candidates(face, crop, inputs, seeds)
    else:
        drawn = draw(loaded, job, face, crop, inputs, seeds, ctx)
    composites = [paste(image, crop, c) for c in drawn]
    tries = score_tries(composites, seeds, job, face, current, ctx)
    decision = decide(face.before, tries, o.margin)
    outcome = FaceOutcome(face=face, crop=crop, seeds=seeds, tries=tries, decision=decision)
    if decision.kept:
        return outcome, composites[decision.best], dict(tries[decision.best].scores)
    return outcome, image, current


def repair_image(loaded, job: ImageJob, ctx: RepairContext, *, candidates: Candidates | None = None) -> ImageRepair:
    """Every drifted face of one image, left to right, each starting from the image with the earlier kept faces."""
    t0 = time.perf_counter()
    with Image.open(job.source) as im:
        image = im.convert("RGB")
    current = dict(job.scores)
    outcomes = []
    for face in job.faces:
        face = replace(face, before=current.get(face.character, face.before))
        outcome, image, current = repair_face(loaded, job, face, image, current, ctx, candidates=candidates)
        outcomes.append(outcome)
    return ImageRepair(job=job, image=image, faces=outcomes, scores=current, seconds=time.perf_counter() - t0)


def record(rep: ImageRepair, ctx: RepairContext) -> ImageRecord:
    """Write what the repair decided and return the image's new manifest record.

    Kept: the original goes to ``originals/<file>`` first (atomic; an existing copy of the same original
    is never rewritten), then the new PNG (atomic, render metadata + ADetailer fields). Rejected: the PNG
    is the original's exact bytes (rewritten only if an earlier repair had replaced it).
    """
    from ..render.outputs import encode_png, read_png_metadata, write_png

    plan, job = ctx.plan, rep.job
    rec = job.record.model_copy()
    rec.repair = repair_record(job, plan, rep.faces, rep.scores)
    png = under_root(plan.render_dir, rec.file)
    if rep.kept:
        keep = under_root(plan.render_dir, ORIGINALS, rec.file)
        if not (keep.is_file() and sha256_file(keep) == job.source_sha256):
            atomic_write_bytes(keep, job.source.read_bytes())
        params = read_png_metadata(job.source)["parameters"] or rec.prompt
        params = append_parameters(params, adetailer_fields(job, plan, rep.faces))
        rec.sha256 = write_png(png, encode_png(rep.image, parameters=params, meta=rec.png_meta()))
    else:
        if job.source != png and not (png.is_file() and sha256_file(png) == job.source_sha256):
            atomic_write_bytes(png, job.source.read_bytes())
        rec.sha256 = job.source_sha256
    return rec


# -- manifest bookkeeping --------------------------------------------------------------------


class RepairWriter(RecordWriter):
    """Updates manifest.json (single process) or this rank's partial manifest after every image.

    manifest.json is updated under its file lock (render's :func:`update_manifest`): records another
    writer (the studio) changed meanwhile survive; only the repaired images' records are replaced.
    """

    def __init__(self, plan: RepairPlan, state):
        super().__init__(plan.render_dir, state)
        self.plan = plan

    def update(self) -> Manifest:
        if not self.new:  # nothing repaired: the folder's manifest as it is
            return read_manifest(self.plan.render_dir)
        return update_manifest(self.plan.render_dir / MANIFEST, self.plan.header, self.plan.order, self.new)

    def merge(self) -> Manifest:
        return final_merge(self.plan.render_dir, self.plan.header, self.plan.order, self.plan.manifest.images)


def _fold_partials(render_dir: Path) -> None:
    """Main process: partial manifests of a killed multi-process repair (or render) go into manifest.json first."""
    from .plan import manifest_header

    if not any(render_dir.glob(PARTIAL_GLOB)):
        return
    m = read_manifest(render_dir)
    recover_partials(render_dir, manifest_header(m), [r.key for r in m.images])


def _group_by_model(jobs: list[ImageJob]) -> list[tuple[Any, list[ImageJob]]]:
    groups: dict[int, tuple[Any, list[ImageJob]]] = {}
    for j in jobs:
        groups.setdefault(id(j.model), (j.model, []))[1].append(j)
    return list(groups.values())


# -- the lifecycle ---------------------------------------------------------------------------


def repair_jobs(
    jobs: list[ImageJob], ctx: RepairContext, writer: RepairWriter, *, candidates: Candidates | None = None
) -> list[ImageRepair]:
    """Repair ``jobs`` model by model (each model loaded once); every image is recorded as soon as it is done."""
    from tqdm.auto import tqdm

    from ..render.lifecycle import release

    o = ctx.plan.options
    show = o.progress and ctx.render_ctx.state.is_main_process
    bar = tqdm(total=sum(len(j.faces) for j in jobs), desc="repair", unit="face", disable=not show)
    repaired: list[ImageRepair] = []
    try:
        for model, group in _group_by_model(jobs):
            raise_if_stopped()
            loaded = None if candidates is not None else load(ctx.plan, model, device=ctx.device, jobs=group)
            try:
                # After Ctrl-C the face being re-drawn stops within one block; finished images are recorded.
                with guard(*([denoiser(loaded.pipe), getattr(loaded.pipe, "vae", None)] if loaded else [])):
                    for job in group:
                        raise_if_stopped()
                        if loaded is not None:  # a hub or single-file model: its inpaint class is known now
                            job.pipeline_class = type(_inpaint_variant(loaded)).__name__
                            job.guidance = job_guidance(o, model.spec, job.pipeline_class, job.record.guidance)
                        rep = repair_image(loaded, job, ctx, candidates=candidates)
                        writer.add(record(rep, ctx))
                        repaired.append(rep)
                        bar.update(len(job.faces))
            finally:
                if loaded is not None:
                    release(loaded)
    finally:
        bar.close()
    return repaired


def repair_render_dir(
    render_dir: str | os.PathLike,
    *,
    options: RepairOptions | None = None,
    state=None,
    candidates: Candidates | None = None,
    **option_values,
) -> RepairResult:
    """Repair every face below the target in a render folder; keep a try only when it beats the original.

    How to repair comes as ``options`` (a :class:`RepairOptions`) or as its fields by name (``tries=4``,
    ``strength=0.5``, ``device="cuda"``, ...). ``candidates`` replaces the model that re-draws faces (a
    seam for tests and other drawers; then no model is loaded).

    >>> result = repair_render_dir("renders/ep1", device="cuda")  # doctest: +SKIP
    >>> result.manifest.images[2].repair["faces"][0]["kept"]  # doctest: +SKIP
    True
    """
    from ..identity.cache import FaceCache

    if options is not None and option_values:
        raise TypeError("pass either options=RepairOptions(...) or its fields by name, not both")
    options = options or RepairOptions(**option_values)
    state = state or process_state(options.device)
    options = replace(options, device=device_for(state, options.device))
    root = Path(render_dir).expanduser().resolve()
    if state.is_main_process and (root / MANIFEST).is_file():
        _fold_partials(root)
    state.wait_for_everyone()
    cache = FaceCache()
    plan = check_inputs(root, options=options, cache=cache)
    state.wait_for_everyone()  # every process planned from the same files before anyone writes
    writer = RepairWriter(plan, state)
    ctx = make_context(plan, cache=cache, state=state)
    try:
        repaired = repair_jobs(my_share(state, plan.pending), ctx, writer, candidates=candidates)
    except Interrupted as e:
        raise stopped(
            f"{len(writer.new)} of {len(plan.pending)} images repaired; {root / MANIFEST} records every finished "
            "repair (an unfinished one left its image as it was); run the same command again to repair the rest",
            e.signal_name,
        ) from None
    manifest = writer.finish()
    return RepairResult(
        render_dir=root,
        manifest_path=root / MANIFEST,
        manifest=manifest,
        repaired=repaired,
        skipped=[i.key for i in plan.images if i.status == "done"],
        locked=list(plan.locked),
        passed=[i.key for i in plan.images if i.status == "pass"],
        not_found=[(*i.key, list(i.not_found)) for i in plan.images if i.not_found],
    )
