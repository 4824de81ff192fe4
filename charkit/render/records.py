"""What a rendered scene records: the manifest record, its ``settings``, and the A1111 ``parameters`` text.

What is recorded is what was applied: the sampler actually built (A1111's "Sampler" / "Schedule type"), the
negative prompt only where the model used it (Flux without true CFG: none), each LoRA with the layout it was read
in and the number of modules it attached to, the IP-Adapter variant and the image encoder it got, the hires pass
with A1111's field names ("Hires upscale", "Hires steps", "Hires upscaler", "Denoising strength"), "Clip skip".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import __version__
from .manifest import ImageRecord
from .plan import RenderPlan, SceneJob


def applied_settings(loaded, job: SceneJob, cond, batch: list[SceneJob]) -> dict:
    """The record's ``settings``: everything applied that the record's other fields do not say."""
    from .fingerprint import source_fingerprint

    m = job.model
    out: dict[str, Any] = {
        "sampler": job.scheduler.sampler,
        "schedule_type": job.scheduler.schedule_type,
        "scheduler_config": dict(job.scheduler.overrides),
        "clip_skip": job.clip_skip,
    }
    if job.true_cfg is not None:
        out["true_cfg"] = job.true_cfg
    if job.hires is not None:
        h = job.hires
        out["hires"] = {
            "scale": h.scale,
            "strength": h.strength,
            "steps": h.steps,
            "upscaler": h.upscaler,
            "width": h.width,
            "height": h.height,
        }
    if job.control is not None:
        out["control"] = {"start": job.control.start, "end": job.control.end, "union_mode": cond.control_mode}
    applied = {n: s for n, s in job.lora.items() if s != 0}
    if applied:
        out["loras"] = {
            n: {"layout": loaded.loras[n].layout, "modules": sum(loaded.loras[n].modules.values())} for n in applied
        }
    if job.ip is not None and loaded.ip is not None:
        out["ip_adapter"] = {"variant": loaded.ip.variant, "image_encoder": loaded.ip.image_encoder}
    if m.vae is not None:
        out["vae"] = {"source": Path(m.vae).name, "sha256": source_fingerprint(m.vae)}
    if m.variant is not None:
        out["variant"] = m.variant
    if not m.t5:
        out["t5"] = False
    if len(batch) > 1:
        out["batch"] = [j.scene.id for j in batch]
    return out


def png_fields(job: SceneJob, plan: RenderPlan, settings: dict, extra: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :func:`~charkit.render.outputs.a1111_parameters` for ``job`` (seed aside)."""
    from .fingerprint import file_sha256

    m = job.model
    loras = {n: (file_sha256(plan.characters[n].lora_path(m.family)), s) for n, s in job.lora.items() if s != 0}
    control = None
    if job.control is not None:
        c = job.control
        control = {"type": c.type, "model": Path(m.controlnet[c.type]).name, "scale": c.scale}
        if (c.start, c.end) != (0.0, 1.0):
            control.update(start=c.start, end=c.end)
    flux_like = m.spec.can("true_cfg")  # guidance-distilled: Forge writes "CFG scale" (true) + "Distilled CFG Scale"
    vae = settings.get("vae")
    return dict(
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        steps=job.steps,
        scheduler=job.scheduler.sampler,
        schedule_type=job.scheduler.schedule_type,
        guidance=(job.true_cfg or 1.0) if flux_like else job.guidance,
        distilled_guidance=job.guidance if flux_like else None,
        width=job.width,
        height=job.height,
        model=m.label,
        model_hash=m.fingerprint if len(m.fingerprint) == 64 else None,
        loras=loras,
        control=control,
        clip_skip=job.clip_skip,
        hires=settings.get("hires"),
        vae=None if vae is None else (vae["source"], vae["sha256"] or ""),
        extra=extra,
    )


def extra_fields(job: SceneJob, plan: RenderPlan, settings: dict) -> dict[str, Any]:
    """charkit's own PNG fields (IP-Adapter, preset, version); the identity score is added per candidate."""
    extra: dict[str, Any] = {}
    if job.ip is not None:
        variant = (settings.get("ip_adapter") or {}).get("variant")
        extra["IP-Adapter"] = f"{job.ip.mode}{f' ({variant})' if variant else ''}, Weight: {job.ip.scale}"
    if job.preset != "none":
        extra["Preset"] = job.preset
    extra["Version"] = f"charkit {__version__}"
    return extra


def image_record(job: SceneJob, plan: RenderPlan, kept, rendered) -> ImageRecord:
    """The manifest record of the kept candidate (its ``sha256`` is set once the PNG is written)."""
    m = job.model
    files = rendered.files()
    return ImageRecord(
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
        scheduler=job.scheduler.class_name,
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
        identity={"similarity": kept.similarity, "status": kept.status, "backend": plan.scoring_backend.info.name}
        if rendered.scored
        else None,
        candidates=[c.score(f) for c, f in zip(rendered.candidates, files)],
        selection=rendered.selection.reason,
        inputs_hash=job.inputs_hash,
        dtype=plan.options.dtype_name,
        device=str(plan.options.device).split(":")[0],
        settings=rendered.settings,
    )
