"""``render_storyboard``: a storyboard in, PNGs and a manifest out.

Reads like diffusers' ``__call__``; every step is a public function you can call alone::

    check_inputs                      storyboard -> RenderPlan (or a one-line error; nothing written)
    pending_jobs                      skip scenes whose inputs_hash and PNG are unchanged (resume)
    load                              each model's pipeline once, with every character's LoRA
    for each scene:
        condition                     control map, IP-Adapter image / FaceID embedding, pipeline variant
        with scene_scales(...):       LoRA + IP-Adapter scales, restored after the scene
            denoise                   seeded generators, best-of-N candidates in batches
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
import gc
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from .. import __version__
from ..distributed import SingleProcess, device_for, my_share, process_state
from ..environment import removed_on_failure
from ..errors import CharkitError
from ..interrupts import Interrupted, guard, raise_if_stopped, stopped
from ..paths import under_root
from .candidates import Candidate, Selection, batches, candidate_seeds, select_best
from .conditioning import Conditioner
from .distributed import final_merge, partial_path, recover_partials
from .manifest import (
    MANIFEST,
    ImageRecord,
    Manifest,
    is_complete,
    read_records,
    update_manifest,
    write_partial,
)
from .outputs import a1111_parameters, encode_png, write_png
from .plan import ModelPlan, RenderOptions, RenderPlan, SceneJob, check_inputs, manifest_header
from .presets import postprocess
from .scales import denoiser, lora_layers, scene_scales
from .storyboard import ModelSpec, Storyboard, load_storyboard

__all__ = [
    "Conditioning",
    "LoadedModel",
    "RenderContext",
    "RenderResult",
    "SceneResult",
    "adapter_name",
    "check_inputs",
    "condition",
    "denoise",
    "load",
    "pending_jobs",
    "record",
    "render_candidates",
    "render_storyboard",
    "score_candidates",
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


@dataclass
class LoadedModel:
    """A loaded pipeline and the adapter state charkit tracks on it."""

    plan: ModelPlan
    pipe: Any
    adapters: dict[str, str]  # character -> peft adapter name
    plain_processors: dict  # attention processors before any IP-Adapter was loaded
    ip_mode: str | None = None  # IP-Adapter loaded now: "image" | "face" | None
    variants: dict = field(default_factory=dict)  # control type -> ControlNet pipeline sharing the components
    offloaded: Any = None  # the pipeline whose cpu-offload hooks are active
    lora_layers: list = field(default_factory=list)  # peft layers (looked up once, not per scene)


@dataclass
class Conditioning:
    """What one scene feeds the pipeline besides the prompt."""

    pipe: Any
    control_image: Image.Image | None = None
    control_scale: float = 1.0
    ip_image: Image.Image | None = None
    ip_embeds: list | None = None
    ip_scale: float | None = None  # None: no IP-Adapter in this scene


@dataclass
class RenderContext:
    """Per-run state shared by the steps: the plan, device, and caches (control maps, profiles)."""

    plan: RenderPlan
    device: str
    conditioner: Conditioner
    face_cache: Any = None
    state: Any = field(default_factory=SingleProcess)  # accelerate's PartialState under `accelerate launch`
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


def adapter_name(character: str) -> str:
    """peft adapter name of a character's LoRA (module dict keys cannot hold '.')."""
    return character.replace(".", "_")


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


def load(model: ModelPlan, plan: RenderPlan, *, device: str, jobs: list[SceneJob] | None = None) -> LoadedModel:
    """Load ``model`` once, with the LoRA of every character its jobs use (disabled until a scene enables it).

    >>> loaded = load(plan.models[0], plan, device="cuda")  # doctest: +SKIP
    """
    opts = plan.options
    fam = model.module
    pipe = fam.load_pipeline(
        model.path,
        device="cpu" if opts.cpu_offload else device,
        dtype=opts.torch_dtype,
        allow_pickle_weights=opts.allow_pickle_weights,
        config=model.config,
        scheduler=model.scheduler,
    )
    jobs = [j for j in (jobs if jobs is not None else plan.jobs) if j.model is model]
    adapters: dict[str, str] = {}
    for name in sorted({n for j in jobs for n in j.lora}):
        path = plan.characters[name].lora_path(model.family)
        try:
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter_name(name))
        except Exception as e:  # a size mismatch (another family or model size), a broken or foreign file
            raise CharkitError(
                f"LoRA of {name} ({path}) does not load into model {model.label} ({model.family}): "
                f"{' '.join(str(e).split())[:200]}; train a LoRA for this model or fix [lora] {model.family} in "
                f"{plan.characters[name].dir / 'character.toml'}"
            ) from None
        adapters[name] = adapter_name(name)
    if adapters:
        pipe.disable_lora()  # the resting state: no LoRA active outside a scene
    loaded = LoadedModel(
        plan=model,
        pipe=pipe,
        adapters=adapters,
        plain_processors=dict(denoiser(pipe).attn_processors),
        lora_layers=lora_layers(pipe),
    )
    if opts.vae_tiling:
        pipe.vae.enable_tiling()
    if opts.compile:
        denoiser(pipe).compile()
    return loaded


def release(loaded: LoadedModel) -> None:
    """Free a model's memory before the next one loads."""
    import torch

    loaded.variants.clear()
    loaded.pipe = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _ensure_ip_adapter(loaded: LoadedModel, mode: str, ctx: RenderContext) -> None:
    if loaded.ip_mode == mode:
        return
    m = loaded.plan
    m.module.load_ip_adapter(
        loaded.pipe,
        m.faceid if mode == "face" else m.ip_adapter,
        mode=mode,
        image_encoder=m.image_encoder,
        allow_pickle_weights=ctx.options.allow_pickle_weights,
    )
    loaded.ip_mode = mode
    loaded.variants.clear()  # ControlNet variants must pick up the new image encoder


def _controlnet_variant(loaded: LoadedModel, control_type: str, ctx: RenderContext):
    if control_type not in loaded.variants:
        m = loaded.plan
        loaded.variants[control_type] = m.module.with_controlnet(
            loaded.pipe, m.controlnet[control_type], allow_pickle_weights=ctx.options.allow_pickle_weights
        )
    return loaded.variants[control_type]


def condition(loaded: LoadedModel, job: SceneJob, ctx: RenderContext) -> Conditioning:
    """Control map, IP-Adapter image or FaceID embedding of ``job``, and the pipeline that takes them."""

    cond = Conditioning(pipe=loaded.pipe)
    if job.ip is not None:
        _ensure_ip_adapter(loaded, job.ip.mode, ctx)
        cond.ip_scale = job.ip.scale
        if job.ip.mode == "image":
            cond.ip_image = ctx.conditioner.ip_image(job.ip.image)
        else:
            emb = ctx.conditioner.faceid_embedding(
                ctx.plan.characters[job.ip.character], ctx.plan.faceid_backend, cache=ctx.face_cache
            )
            cond.ip_embeds = loaded.plan.module.faceid_embeds(
                emb, guidance=job.guidance, device=ctx.device, dtype=ctx.options.torch_dtype
            )
    if job.control is not None:
        c = job.control
        cond.control_image = ctx.conditioner.control_map(
            c.type,
            c.image,
            job.width,
            job.height,
            preprocess=c.preprocess,
            low=c.low,
            high=c.high,
            where=f"scene {job.scene.id!r}: control",
        )
        cond.control_scale = c.scale
        cond.pipe = _controlnet_variant(loaded, c.type, ctx)
    if ctx.options.cpu_offload and loaded.offloaded is not cond.pipe:
        # Offload hooks live on the shared components: re-arm them for the pipeline about to run.
        cond.pipe.enable_model_cpu_offload(device=ctx.device)
        loaded.offloaded = cond.pipe
    return cond


def denoise(
    loaded: LoadedModel, cond: Conditioning, job: SceneJob, seeds: list[int], ctx: RenderContext
) -> list[Image.Image]:
    """One pipeline call rendering one image per seed (a CPU ``torch.Generator`` each: same noise on any device)."""
    import torch

    cond.pipe.set_progress_bar_config(
        disable=not (ctx.options.progress and ctx.state.is_main_process),
        leave=False,
        desc=f"{job.scene.id} ({job.model.label})",
    )
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    return loaded.plan.module.generate(
        cond.pipe,
        prompt=job.prompt,
        negative_prompt=job.negative_prompt or None,
        width=job.width,
        height=job.height,
        steps=job.steps,
        guidance=job.guidance,
        generator=generators,
        num_images=len(seeds),
        control_image=cond.control_image,
        control_scale=cond.control_scale,
        ip_adapter_image=cond.ip_image,
        ip_adapter_embeds=cond.ip_embeds,
    )


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


def record(rendered: Rendered, ctx: RenderContext) -> ImageRecord:
    """Write the kept candidate as ``DIR/<file>`` and the others as ``DIR/candidates/<scene>__<model>/<seed>.png``
    (atomic, with metadata); return the manifest record."""
    job, candidates, selection, scored = rendered.job, rendered.candidates, rendered.selection, rendered.scored
    kept = candidates[selection.index]
    plan = ctx.plan
    m = job.model
    backend = plan.scoring_backend
    files = [
        job.file if i == selection.index else f"candidates/{job.scene.id}__{m.label}/{c.seed}.png"
        for i, c in enumerate(candidates)
    ]
    rec = ImageRecord(
        scene=job.scene.id,
        model=m.label,
        family=m.family,
        model_source=m.source,
        seed=kept.seed,
        file=job.file,
        sha256="",
        characters=list(job.characters),
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        width=job.width,
        height=job.height,
        steps=job.steps,
        guidance=job.guidance,
        scheduler=m.scheduler,
        preset=job.preset,
        lora=dict(job.lora),
        control=None
        if job.control is None
        else {
            "type": job.control.type,
            "image": job.control.image_text,
            "scale": job.control.scale,
            "preprocess": job.control.preprocess,
        },
        ip_adapter=None
        if job.ip is None
        else {"mode": job.ip.mode, "scale": job.ip.scale, "character": job.ip.character},
        identity={"similarity": kept.similarity, "status": kept.status, "backend": backend.info.name}
        if scored
        else None,
        candidates=[c.score(f) for c, f in zip(candidates, files)],
        selection=selection.reason,
        inputs_hash=job.inputs_hash,
        dtype=plan.options.dtype_name,
        device=str(plan.options.device).split(":")[0],
    )
    loras = {n: (_sha(plan.characters[n].lora_path(m.family)), s) for n, s in job.lora.items() if s != 0}
    extra: dict[str, Any] = {}
    if job.ip is not None:
        extra["IP-Adapter"] = f"{job.ip.mode}, Weight: {job.ip.scale}"
    if job.preset != "none":
        extra["Preset"] = job.preset
    if scored and kept.similarity is not None:
        extra["Identity"] = f"{kept.similarity:.4f} ({kept.status}, {backend.info.name})"
    extra["Version"] = f"charkit {__version__}"
    common = dict(
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        steps=job.steps,
        scheduler=m.scheduler,
        guidance=job.guidance,
        width=job.width,
        height=job.height,
        model=m.label,
        model_hash=m.fingerprint if len(m.fingerprint) == 64 else None,
        loras=loras,
        control=None
        if job.control is None
        else {"type": job.control.type, "model": Path(m.controlnet[job.control.type]).name, "scale": job.control.scale},
    )
    for i, (c, f) in enumerate(zip(candidates, files)):
        if i == selection.index:
            continue
        own = {k: v for k, v in extra.items() if k != "Identity"}  # a candidate carries its own score
        if c.similarity is not None:
            own["Identity"] = f"{c.similarity:.4f} ({c.status}, {backend.info.name})"
        meta = {"scene": job.scene.id, "model": m.label, "seed": c.seed, "candidate_of": job.file, "status": c.status}
        params_c = a1111_parameters(**common, seed=c.seed, extra=own)
        write_png(under_root(plan.out_dir, f), encode_png(c.image, parameters=params_c, meta=meta))
    params = a1111_parameters(**common, seed=kept.seed, extra=extra)
    data = encode_png(kept.image, parameters=params, meta=rec.png_meta())
    rec.sha256 = write_png(under_root(plan.out_dir, job.file), data)
    return rec


def _sha(path: Path) -> str:
    from .fingerprint import file_sha256

    return file_sha256(path)


@dataclass
class Rendered:
    """A scene's candidates after denoising, post-processing and scoring, before anything is written."""

    job: SceneJob
    candidates: list[Candidate]
    selection: Selection
    scored: bool
    seconds: float


def render_candidates(loaded: LoadedModel, job: SceneJob, ctx: RenderContext) -> Rendered:
    """condition -> (scales) denoise -> postprocess -> score -> select, for one scene on one model."""
    t0 = time.perf_counter()
    cond = condition(loaded, job, ctx)
    lora = {loaded.adapters[n]: s for n, s in job.lora.items()}
    candidates: list[Candidate] = []
    with scene_scales(
        loaded.pipe,
        lora=lora,
        ip_scale=cond.ip_scale,
        plain_processors=loaded.plain_processors if loaded.ip_mode is not None else None,
        layers=loaded.lora_layers,
    ):
        for chunk in batches(candidate_seeds(job.seed, job.candidates), ctx.options.batch_size):
            for seed, image in zip(chunk, denoise(loaded, cond, job, chunk, ctx)):
                candidates.append(Candidate(seed=seed, image=postprocess(image, job.preset, seed=seed)))
    scored = score_candidates(candidates, job, ctx)
    selection = (
        select_best(candidates) if scored else Selection(0, "single" if len(candidates) == 1 else "first_no_face")
    )
    return Rendered(job, candidates, selection, scored, time.perf_counter() - t0)


# -- manifest bookkeeping --------------------------------------------------------------------


class ManifestWriter:
    """Rewrites manifest.json (single process) or this rank's partial manifest after every scene.

    manifest.json is updated under its file lock (:func:`update_manifest`): the kept records are
    re-read from the file, so what another writer (the studio) changed meanwhile survives.
    """

    def __init__(self, plan: RenderPlan, state, kept: list[ImageRecord], previous: set | None = None):
        self.plan = plan
        self.state = state
        self.header = manifest_header(plan)
        self.kept = kept
        # complete images of scenes about to render again (--force, changed inputs): listed until replaced,
        # so an interrupted run loses no finished image from the manifest
        self.previous = previous or set()
        self.new: list[ImageRecord] = []
        self.partial = None if state.num_processes <= 1 else partial_path(plan.out_dir, state.process_index)

    def _update(self) -> Manifest:
        # The kept, the previous and the newly rendered keys, in scene order: scenes never finished drop out.
        done = {r.key for r in self.kept} | {r.key for r in self.new} | self.previous
        order = [k for k in self.plan.order if k in done]
        return update_manifest(self.plan.out_dir / MANIFEST, self.header, order, self.new)

    def add(self, rec: ImageRecord) -> None:
        self.new.append(rec)
        if self.partial is None:
            self._update()
        else:
            write_partial(self.partial, self.new)

    def finish(self) -> Manifest | None:
        self.state.wait_for_everyone()
        manifest = None
        if self.state.is_main_process:
            if self.partial is None:
                manifest = self._update()
            else:
                manifest = final_merge(self.plan.out_dir, self.header, self.plan.order, self.kept)
        self.state.wait_for_everyone()
        return manifest


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


def _group_by_model(jobs: list[SceneJob]) -> list[tuple[ModelPlan, list[SceneJob]]]:
    # Render model by model (one pipeline in memory at a time), scenes in order within each.
    groups: dict[int, tuple[ModelPlan, list[SceneJob]]] = {}
    for j in jobs:
        groups.setdefault(id(j.model), (j.model, []))[1].append(j)
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


def render_jobs(jobs: list[SceneJob], ctx: RenderContext, writer: ManifestWriter) -> list[SceneResult]:
    """Render ``jobs`` model by model; each scene is recorded on a writer thread while the next one denoises.

    One writer thread keeps "PNG complete, then manifest" in order; a failed write stops the run at the
    next scene instead of at the end.
    """
    from tqdm.auto import tqdm

    futures: list[Future] = []
    show = ctx.options.progress and ctx.state.is_main_process
    bar = tqdm(total=len(jobs), desc="render", unit="scene", disable=not show)
    try:
        # After Ctrl-C (charkit.interrupts) the scene being denoised stops within one step; leaving the pool
        # waits for the scenes already denoised to be written, so every finished image is on disk and listed.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="charkit-record") as pool:
            for model, group in _group_by_model(jobs):
                raise_if_stopped()
                loaded = load(model, ctx.plan, device=ctx.device, jobs=group)
                try:
                    with guard(denoiser(loaded.pipe), getattr(loaded.pipe, "vae", None)):
                        for job in group:
                            raise_if_stopped()
                            bar.set_postfix_str(f"{job.scene.id} ({model.label})")
                            rendered = render_candidates(loaded, job, ctx)
                            futures.append(pool.submit(_record_and_add, rendered, ctx, writer))
                            _raise_failed(futures)
                            bar.update()
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
    (``device="cuda"``, ``dtype="fp16"``, ``verify=True``, ``scenes=["s01"]``, ...).

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
        writer = ManifestWriter(plan, state, kept, previous=complete_keys(plan, pending))
        try:
            rendered = render_jobs(my_share(state, pending), make_context(plan, state), writer)
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
    )
