"""``render_storyboard``: a storyboard in, PNGs and a manifest out.

Reads like diffusers' ``__call__``; every step is a public function you can call alone::

    check_inputs                      storyboard -> RenderPlan (or a one-line error; nothing written)
    pending_jobs                      skip scenes whose inputs_hash and PNG are unchanged (resume)
    load                              each model's pipeline once, with every character's LoRA (load_lora:
                                      any layout, verified to attach)
    for each scene batch (scenes that share everything but prompt and seed; best-of-N: one scene):
        condition                     control map, IP-Adapter image / FaceID embedding, pipeline variant
        with scene_scales(...):       LoRA (+ FaceID's own LoRA) + IP-Adapter scales, restored after the scene
            denoise                   A1111 prompts, the scene's sampler, seeded generators, one call per batch
            hires                     upscale + img2img second pass (A1111's hires fix)
        postprocess                   preset (lifelike: film grain seeded by the image seed)
        score_candidates / select     identity score of each candidate, keep the best
        record                        PNG (atomic, A1111 + charkit metadata), other candidates under
                                      candidates/ -> manifest (locked read-modify-write, atomic)
    finish                            one manifest.json (merged across processes); --verify report

>>> result = render_storyboard("examples/episode.yaml", device="cuda", dtype="fp16")  # doctest: +SKIP
>>> [r.file.name for r in result.rendered][:2]  # doctest: +SKIP
['s01-arrival.png', 's02-cafe.png']
"""

from __future__ import annotations

import dataclasses
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..distributed import SingleProcess, device_for, my_share, process_state
from ..environment import removed_on_failure
from ..interrupts import Interrupted, guard, raise_if_stopped, stopped
from ..paths import under_root
from .candidates import Candidate, Selection, batches, candidate_seeds, select_best
from .conditioning import Conditioner
from .distributed import RecordWriter, final_merge, recover_partials
from .manifest import (
    MANIFEST,
    ImageRecord,
    Manifest,
    is_complete,
    read_records,
    update_manifest,
)
from .outputs import a1111_parameters, encode_png, write_png
from .plan import ModelPlan, RenderOptions, RenderPlan, SceneJob, check_inputs, manifest_header, shard_batches
from .presets import postprocess
from .records import applied_settings, extra_fields, image_record, png_fields
from .scales import denoiser, scene_scales
from .steps import (
    Conditioning,
    LoadedModel,
    adapter_name,
    arm_offload,
    condition,
    denoise,
    hires,
    load,
    release,
)
from .storyboard import ModelSpec, Storyboard, load_storyboard

__all__ = [
    "Conditioning",
    "LoadedModel",
    "RenderContext",
    "RenderResult",
    "SceneResult",
    "WorkUnit",
    "adapter_name",
    "arm_offload",
    "check_inputs",
    "condition",
    "denoise",
    "hires",
    "load",
    "pending_jobs",
    "record",
    "release",
    "render_batch",
    "render_candidates",
    "render_storyboard",
    "score_candidates",
    "work_units",
]


# -- results ---------------------------------------------------------------------------------


@dataclass
class SceneResult:
    """One rendered image."""

    key: tuple[str, str]  # (scene id, model label)
    file: Path
    record: ImageRecord
    seconds: float  # condition -> denoise -> postprocess -> score (what a scene costs the device)
    write_seconds: float = 0.0  # PNG encode + atomic writes + manifest (overlaps the next scene in a run)


@dataclass
class RenderResult:
    """What a render did. ``manifest`` is None on processes other than the main one."""

    out_dir: Path
    manifest_path: Path
    manifest: Manifest | None
    rendered: list[SceneResult]
    skipped: list[tuple[str, str]]  # unchanged scenes kept from an earlier run
    verify_report: Any = None
    left_out: list[str] = field(default_factory=list)  # `optional: true` scenes not rendered, with why
    warnings: list[str] = field(default_factory=list)  # what check_inputs warned about (one line each)
    plan: Any = field(default=None, repr=False)  # the RenderPlan (a later step, e.g. verify after repair)


@dataclass
class RenderContext:
    """Per-run state shared by the steps: the plan, device, and caches (control maps, profiles)."""

    plan: RenderPlan
    device: str
    conditioner: Conditioner
    face_cache: Any = None
    state: Any = field(default_factory=SingleProcess)  # accelerate's PartialState under `accelerate launch`
    step_callback: Any = None  # diffusers callback_on_step_end for every pipeline call (e.g. to stop a render)
    _profiles: dict = field(default_factory=dict)

    @property
    def options(self) -> RenderOptions:
        return self.plan.options

    def profile(self, name: str):
        """The reference profile of a character for the scoring backend (built once per run)."""
        from ..identity import profile_for_character

        if name not in self._profiles:
            self._profiles[name] = profile_for_character(
                self.plan.characters[name], self.plan.scoring_backend, cache=self.face_cache
            )
        return self._profiles[name]


# -- steps -----------------------------------------------------------------------------------


def pending_jobs(plan: RenderPlan) -> tuple[list[SceneJob], list[ImageRecord]]:
    """Split the plan into jobs to render and finished records to keep.

    A record is kept when its PNG is intact (sha256) and, for selected scenes, its
    ``inputs_hash`` matches and ``force`` is off. A locked take (``charkit studio``) is kept
    whatever its inputs_hash or ``force``.
    """
    existing = {r.key: r for r in read_records(plan.out_dir / MANIFEST)}
    selected = {j.key for j in plan.selected()}
    pending, kept = [], []
    for job in plan.jobs:
        rec = existing.get(job.key)
        complete = rec is not None and rec.file == job.file and is_complete(rec, plan.out_dir)
        if job.key not in selected:
            if complete:
                kept.append(rec)
        elif complete and (rec.locked or (not plan.options.force and rec.inputs_hash == job.inputs_hash)):
            kept.append(rec)
        else:
            pending.append(job)
    return pending, kept


def score_candidates(candidates: list[Candidate], job: SceneJob, ctx: RenderContext) -> bool:
    """Score each candidate against the scene's characters (faces matched left to right); False when not scored."""
    from ..identity import score_image

    backend = ctx.plan.scoring_backend
    if backend is None or not job.characters or not (job.scored or ctx.options.verify):
        return False
    profiles = [ctx.profile(n) for n in job.characters]
    for c in candidates:
        s = score_image(c.image, profiles, backend, left_to_right=len(profiles) > 1)
        c.similarity = None if s.similarity is None else round(float(s.similarity), 4)
        c.status = s.status
    return True


@dataclass
class Rendered:
    """A scene's candidates after denoising, post-processing and scoring, before anything is written."""

    job: SceneJob
    candidates: list[Candidate]
    selection: Selection
    scored: bool
    seconds: float
    settings: dict = field(default_factory=dict)  # what was applied (the record's ``settings``)

    def files(self) -> list[str]:
        """Where each candidate is written: the kept one as the scene's file, the others under candidates/."""
        job = self.job
        return [
            job.file if i == self.selection.index else f"candidates/{job.scene.id}__{job.model.label}/{c.seed}.png"
            for i, c in enumerate(self.candidates)
        ]


def record(rendered: Rendered, ctx: RenderContext) -> ImageRecord:
    """Write the kept candidate as ``DIR/<file>`` and the others as ``DIR/candidates/<scene>__<model>/<seed>.png``
    (atomic, with metadata); return the manifest record."""
    job, candidates, selection = rendered.job, rendered.candidates, rendered.selection
    plan = ctx.plan
    kept = candidates[selection.index]
    backend = plan.scoring_backend
    rec = image_record(job, plan, kept, rendered)
    extra = extra_fields(job, plan, rendered.settings)
    common = png_fields(job, plan, rendered.settings, extra)
    for i, (c, f) in enumerate(zip(candidates, rendered.files())):
        own = dict(extra)
        if c.similarity is not None:  # a candidate carries its own score
            own = {**extra, "Identity": f"{c.similarity:.4f} ({c.status}, {backend.info.name})"}
            own["Version"] = own.pop("Version")
        params = a1111_parameters(**{**common, "extra": own}, seed=c.seed)
        if i == selection.index:
            rec.sha256 = write_png(
                under_root(plan.out_dir, f), encode_png(c.image, parameters=params, meta=rec.png_meta())
            )
        else:
            meta = {"scene": job.scene.id, "model": job.model.label, "seed": c.seed, "candidate_of": job.file}
            meta["status"] = c.status
            write_png(under_root(plan.out_dir, f), encode_png(c.image, parameters=params, meta=meta))
    return rec


def _select(candidates: list[Candidate], job: SceneJob, ctx: RenderContext) -> tuple[Selection, bool]:
    scored = score_candidates(candidates, job, ctx)
    if scored:
        return select_best(candidates), True
    return Selection(0, "single" if len(candidates) == 1 else "first_no_face"), False


def _images(loaded: LoadedModel, cond: Conditioning, jobs: list[SceneJob], seeds: list[int], ctx) -> list:
    job = jobs[0]
    batch = jobs if len(jobs) > 1 else None
    images = denoise(loaded, cond, job, seeds, ctx, jobs=batch)
    if job.hires is not None:
        images = hires(loaded, cond, job, images, seeds, ctx, jobs=batch)
    return images


def _scales(loaded: LoadedModel, job: SceneJob, cond: Conditioning):
    return scene_scales(
        loaded.pipe,
        lora={loaded.adapters[n]: s for n, s in job.lora.items()},
        ip_scale=cond.ip_scale,
        plain_processors=loaded.plain_processors if loaded.ip_mode is not None else None,
        layers=loaded.lora_layers,
    )


def render_candidates(loaded: LoadedModel, job: SceneJob, ctx: RenderContext) -> Rendered:
    """condition -> (scales) denoise [-> hires] -> postprocess -> score -> select, for one scene on one model."""
    t0 = time.perf_counter()
    cond = condition(loaded, job, ctx)
    candidates: list[Candidate] = []
    with _scales(loaded, job, cond):
        for chunk in batches(candidate_seeds(job.seed, job.candidates), ctx.options.batch_size):
            for seed, image in zip(chunk, _images(loaded, cond, [job], chunk, ctx)):
                candidates.append(Candidate(seed=seed, image=postprocess(image, job.preset, seed=seed)))
    selection, scored = _select(candidates, job, ctx)
    settings = applied_settings(loaded, job, cond, [job])
    return Rendered(job, candidates, selection, scored, time.perf_counter() - t0, settings)


def render_batch(loaded: LoadedModel, jobs: list[SceneJob], ctx: RenderContext) -> list[Rendered]:
    """A scene batch (:func:`~charkit.render.plan.plan_batches`: same everything but prompt and seed) in one
    pipeline call with per-image prompts and generators; one :class:`Rendered` per scene."""
    if len(jobs) == 1:
        return [render_candidates(loaded, jobs[0], ctx)]
    t0 = time.perf_counter()
    cond = condition(loaded, jobs[0], ctx)
    with _scales(loaded, jobs[0], cond):
        images = _images(loaded, cond, jobs, [j.seed for j in jobs], ctx)
    out = []
    seconds = (time.perf_counter() - t0) / len(jobs)
    for job, image in zip(jobs, images):
        candidates = [Candidate(seed=job.seed, image=postprocess(image, job.preset, seed=job.seed))]
        selection, scored = _select(candidates, job, ctx)
        out.append(Rendered(job, candidates, selection, scored, seconds, applied_settings(loaded, job, cond, jobs)))
    return out


# -- manifest bookkeeping --------------------------------------------------------------------


class ManifestWriter(RecordWriter):
    """Rewrites manifest.json (single process, or one ``--shard``) or this rank's partial manifest after every scene.

    manifest.json is updated under its file lock (:func:`update_manifest`): the kept records are
    re-read from the file, so what another writer (the studio, another shard) changed meanwhile survives.
    ``others``: keys other shards render; their records in the file are kept whatever this one does.
    """

    def __init__(
        self, plan: RenderPlan, state, kept: list[ImageRecord], previous: set | None = None, others: set | None = None
    ):
        super().__init__(plan.out_dir, state)
        self.plan = plan
        self.header = manifest_header(plan)
        self.kept = kept
        # complete images of scenes about to render again (--force, changed inputs): listed until replaced,
        # so an interrupted run loses no finished image from the manifest
        self.previous = previous or set()
        self.others = others or set()

    def update(self) -> Manifest:
        # The kept, the previous and the newly rendered keys, in scene order: scenes never finished drop out;
        # the records of other shards' scenes are theirs.
        done = {r.key for r in self.kept} | {r.key for r in self.new} | self.previous
        order = [k for k in self.plan.order if k in done or k in self.others]
        return update_manifest(self.plan.out_dir / MANIFEST, self.header, order, self.new)

    def merge(self) -> Manifest:
        return final_merge(self.plan.out_dir, self.header, self.plan.order, self.kept)


def _record_and_add(rendered: Rendered, ctx: RenderContext, writer: ManifestWriter) -> SceneResult:
    t0 = time.perf_counter()
    rec = record(rendered, ctx)
    writer.add(rec)
    job = rendered.job
    return SceneResult(job.key, ctx.plan.out_dir / job.file, rec, rendered.seconds, time.perf_counter() - t0)


def _raise_failed(futures: list[Future]) -> None:
    # A failed write stops the run at the next scene instead of at the end.
    for f in futures:
        if f.done() and f.exception() is not None:
            raise f.exception()


@dataclass
class WorkUnit:
    """One scene batch to render: every job of the batch (rendered together) and those among them to record."""

    jobs: list[SceneJob]
    record: list[SceneJob]

    @property
    def model(self) -> ModelPlan:
        return self.jobs[0].model


def work_units(plan: RenderPlan, pending: list[SceneJob]) -> list[WorkUnit]:
    """The batches with a pending scene, whole (a batch always renders as in a full run), in plan order, of this
    ``--shard`` only."""
    wanted = {id(j) for j in pending}
    mine = shard_batches(plan.batches, plan.options.shard)
    units = []
    for i, group in enumerate(plan.batches):
        todo = [j for j in group if id(j) in wanted]
        if todo and i in mine:
            units.append(WorkUnit(list(group), todo))
    return units


def other_shards(plan: RenderPlan) -> set:
    """Keys rendered by the other shards of a ``--shard`` run (their records in manifest.json are theirs)."""
    mine = shard_batches(plan.batches, plan.options.shard)
    return {j.key for i, group in enumerate(plan.batches) if i not in mine for j in group}


def _group_by_model(units: list[WorkUnit]) -> list[tuple[ModelPlan, list[WorkUnit]]]:
    # Render model by model (one pipeline in memory at a time), batches in order within each.
    groups: dict[int, tuple[ModelPlan, list[WorkUnit]]] = {}
    for u in units:
        groups.setdefault(id(u.model), (u.model, []))[1].append(u)
    return list(groups.values())


def run_verify(plan: RenderPlan):
    """The identity report (report.json/.csv/.html) of the rendered folder, written into it."""
    from ..identity.cache import FaceCache
    from ..verify import verify

    return verify(
        [plan.out_dir],
        backend=plan.scoring_backend,
        threshold=plan.storyboard.identity.threshold,
        out=plan.out_dir,
        cache=FaceCache(),
        progress=plan.options.progress,
        allow_same_evaluator=plan.options.allow_same_evaluator,
    )


# -- the lifecycle ---------------------------------------------------------------------------


def complete_keys(plan: RenderPlan, pending: list[SceneJob]) -> set[tuple[str, str]]:
    """Keys of pending jobs whose earlier image is still complete on disk (kept in the manifest until replaced)."""
    wanted = {j.key: j.file for j in pending}
    return {
        r.key
        for r in read_records(plan.out_dir / MANIFEST)
        if wanted.get(r.key) == r.file and is_complete(r, plan.out_dir)
    }


def prepare_output(plan: RenderPlan, state) -> None:
    """The output folder exists, and partial manifests of a killed multi-process run are folded in (main process)."""
    if state.is_main_process:
        plan.out_dir.mkdir(parents=True, exist_ok=True)
        recover_partials(plan.out_dir, manifest_header(plan), plan.order)
    state.wait_for_everyone()


def make_context(plan: RenderPlan, state) -> RenderContext:
    """Per-run state for the steps: device, control-map and FaceID caches, the face cache, the process state."""
    from ..identity.cache import FaceCache

    opts = plan.options
    return RenderContext(
        plan=plan,
        device=opts.device,
        conditioner=Conditioner(
            annotators=Path(opts.annotators) if opts.annotators else None,
            allow_pickle_weights=opts.allow_pickle_weights,
            device=opts.device,
        ),
        face_cache=FaceCache() if (plan.scoring_backend or plan.faceid_backend) else None,
        state=state,
    )


def render_jobs(units: list[WorkUnit], ctx: RenderContext, writer: ManifestWriter) -> list[SceneResult]:
    """Render ``units`` model by model; each scene is recorded on a writer thread while the next batch denoises.

    One writer thread keeps "PNG complete, then manifest" in order; a failed write stops the run at the
    next scene instead of at the end. (A list of SceneJobs is taken too: each then renders alone.)
    """
    from tqdm.auto import tqdm

    units = [u if isinstance(u, WorkUnit) else WorkUnit([u], [u]) for u in units]
    futures: list[Future] = []
    show = ctx.options.progress and ctx.state.is_main_process
    bar = tqdm(total=sum(len(u.record) for u in units), desc="render", unit="scene", disable=not show)
    try:
        # After Ctrl-C (charkit.interrupts) the scene being denoised stops within one step; leaving the pool
        # waits for the scenes already denoised to be written, so every finished image is on disk and listed.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="charkit-record") as pool:
            for model, group in _group_by_model(units):
                raise_if_stopped()
                loaded = load(model, ctx.plan, device=ctx.device, jobs=[j for u in group for j in u.jobs])
                try:
                    with guard(denoiser(loaded.pipe), getattr(loaded.pipe, "vae", None)):
                        for unit in group:
                            raise_if_stopped()
                            bar.set_postfix_str(f"{unit.jobs[0].scene.id} ({model.label})")
                            keep = {id(j) for j in unit.record}
                            for rendered in render_batch(loaded, unit.jobs, ctx):
                                if id(rendered.job) in keep:
                                    futures.append(pool.submit(_record_and_add, rendered, ctx, writer))
                                    bar.update()
                            _raise_failed(futures)
                finally:
                    release(loaded)
    finally:
        bar.close()
    return [f.result() for f in futures]


def render_storyboard(
    storyboard: Storyboard | str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    models: list[ModelSpec] | None = None,
    options: RenderOptions | None = None,
    state=None,
    **option_values,
) -> RenderResult:
    """Render every scene of a storyboard (skipping unchanged ones) and write the manifest.

    How to run comes as ``options`` (a :class:`RenderOptions`) or as its fields by name
    (``device="cuda"``, ``dtype="fp16"``, ``verify=True``, ``scenes=["s01"]``, ``shard=(0, 4)``, ...).

    >>> result = render_storyboard("examples/episode.yaml", out="renders/ep1", device="cpu")  # doctest: +SKIP
    >>> result.manifest_path.name  # doctest: +SKIP
    'manifest.json'
    """
    if options is not None and option_values:
        raise TypeError("pass either options=RenderOptions(...) or its fields by name, not both")
    options = options or RenderOptions(**option_values)
    board = storyboard if isinstance(storyboard, Storyboard) else load_storyboard(storyboard)
    state = state or process_state(options.device)
    options = dataclasses.replace(options, device=device_for(state, options.device))
    plan = check_inputs(board, out=out, models=models, options=options)
    with removed_on_failure(plan.out_dir):  # a run that fails before its first image leaves no empty folder
        prepare_output(plan, state)
        pending, kept = pending_jobs(plan)
        state.wait_for_everyone()  # every process planned from the same files before anyone writes
        others = other_shards(plan) if plan.options.shard else None
        writer = ManifestWriter(plan, state, kept, previous=complete_keys(plan, pending), others=others)
        units = my_share(state, work_units(plan, pending))  # whole batches per process: the same bytes as one
        try:
            rendered = render_jobs(units, make_context(plan, state), writer)
        except Interrupted as e:
            raise stopped(
                f"{len(writer.new)} of {len(pending)} scenes rendered, {len(kept)} kept from before; "
                f"{plan.out_dir / MANIFEST} lists every finished image; run the same command again to render the rest",
                e.signal_name,
            ) from None
    manifest = writer.finish()
    report = run_verify(plan) if plan.options.verify and state.is_main_process and plan.characters else None
    state.wait_for_everyone()
    return RenderResult(
        out_dir=plan.out_dir,
        manifest_path=plan.out_dir / MANIFEST,
        manifest=manifest,
        rendered=rendered,
        skipped=[r.key for r in kept],
        verify_report=report,
        left_out=list(plan.skipped),
        warnings=list(plan.warnings),
        plan=plan,
    )
