"""What a repair leaves behind: the manifest's ``repair`` record and the PNG's ADetailer fields.

The ``parameters`` text of a repaired PNG is the render's own, with the fields AUTOMATIC1111's PNG Info
shows for ADetailer appended under ADetailer's own names (``adetailer/args.py``: ``ADetailer model``,
``ADetailer prompt``, ``ADetailer confidence``, ``ADetailer dilate erode``, ``ADetailer mask blur``,
``ADetailer denoising strength``, ``ADetailer inpaint only masked``, ``ADetailer inpaint padding``,
``ADetailer use inpaint width height``, ``ADetailer inpaint width``/``height``, ``ADetailer version``)
plus charkit's ``Repair`` field (before -> after per face, kept or not, evaluator).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .. import __version__
from .plan import ORIGINALS, REPAIR_VERSION, FaceJob, ImageJob, RepairPlan


@dataclass
class TryScore:
    """One try (seed) of one face, scored on the whole composited image."""

    seed: int
    similarity: float | None  # the repaired character's score (None: no face where it was)
    status: str  # "pass" | "drift" | "no_face" | "moved" (the face is elsewhere) | "harms_other" (another face dropped)
    scores: dict[str, float | None] = field(default_factory=dict)  # every character of the scene

    def to_dict(self) -> dict:
        return {"seed": self.seed, "similarity": self.similarity, "status": self.status}


@dataclass
class Decision:
    """Keep the best try, or the original."""

    kept: bool
    best: int | None  # index of the best valid try
    after: float | None  # the character's score after the decision (the original's when rejected)
    reason: str  # "improved" | "below_margin" | "no_face_after"


@dataclass
class FaceOutcome:
    """One face's repair: where, which tries, and what was decided."""

    face: FaceJob
    crop: Any  # masks.Crop
    seeds: list[int]
    tries: list[TryScore]
    decision: Decision

    def to_dict(self) -> dict:
        f, d = self.face, self.decision
        return {
            "character": f.character,
            "before": f.before,
            "after": d.after,
            "kept": d.kept,
            "reason": d.reason,
            "best_try": d.best,
            "best_similarity": None if d.best is None else self.tries[d.best].similarity,
            "seeds": list(self.seeds),
            "tries": [t.to_dict() for t in self.tries],
            "box": self.crop.face.to_list(),
            "mask": self.crop.mask.to_list(),
            "feathered": self.crop.feathered.to_list(),
            "crop": self.crop.crop.to_list(),
            "inpaint_size": list(self.crop.size),
            "prompt": f.prompt,
            "lora": f.lora,
            "ip_adapter": None
            if f.ip is None
            else {"mode": f.ip.mode, "scale": f.ip.scale, "character": f.ip.character},
        }


def repair_seed(image_seed: int, index: int, try_: int) -> int:
    """Seed of try ``try_`` of the face of the scene's ``index``-th character: image seed + 1000 x index + try.

    Face 0's first try uses the image's own seed, as ADetailer does.

    >>> repair_seed(1234, 1, 2)
    2236
    """
    return (image_seed + 1000 * index + try_) % (2**63)


def repair_record(job: ImageJob, plan: RepairPlan, outcomes: list[FaceOutcome], scores: dict) -> dict:
    """The manifest's ``repair`` record of one image (deterministic: no times, floats rounded)."""
    o, ev = plan.options, plan.evaluator.info
    kept = any(x.decision.kept for x in outcomes)
    return {
        "version": REPAIR_VERSION,
        "inputs_hash": job.inputs_hash,
        "kept": kept,
        "original": f"{ORIGINALS}/{job.record.file}" if kept else None,
        "original_sha256": job.source_sha256,
        "evaluator": {
            "name": ev.name,
            "model": ev.model,
            "model_hash": ev.model_hash,
            "threshold": ev.threshold,
            "independent": job.independent,
        },
        "target": plan.target,
        "margin": o.margin,
        "tries": o.tries,
        "strength": o.strength,
        "steps": job.steps,
        "guidance": job.guidance,
        "padding": o.padding,
        "dilate": o.dilate,
        "mask_blur": o.mask_blur,
        "resolution": job.resolution,
        "model": job.model.label,
        "inpaint_model": job.model.source if o.inpaint_model and job.model.source == o.inpaint_model else None,
        "pipeline": job.pipeline_class,
        "before": dict(job.scores),
        "after": dict(scores),
        "faces": [x.to_dict() for x in outcomes],
        "not_found": list(job.not_found),
    }


# Copied from charkit.render.outputs._quote
def _quote(value: Any) -> str:
    # A1111's own rule: quote a value that would break the "key: value, key: value" line.
    text = str(value)
    if any(c in text for c in ',:\n"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def adetailer_fields(job: ImageJob, plan: RepairPlan, outcomes: list[FaceOutcome]) -> dict[str, Any]:
    """ADetailer's PNG-info fields for the faces this repair re-drew, then charkit's ``Repair`` summary."""
    o = plan.options
    kept = [x for x in outcomes if x.decision.kept]
    drawn = kept or outcomes
    size = drawn[0].crop.size if drawn else (job.resolution, job.resolution)
    prompts = [x.face.prompt for x in drawn]
    fields: dict[str, Any] = {
        "ADetailer model": f"{plan.evaluator.info.name} (charkit identity repair)",
        # ADetailer applies prompt i to face i and separates them with [SEP]
        "ADetailer prompt": " [SEP] ".join(prompts) if len(set(prompts)) > 1 else prompts[0],
    }
    if job.scene_job.negative_prompt:
        fields["ADetailer negative prompt"] = job.scene_job.negative_prompt
    conf = min((x.face.detector_score for x in drawn), default=0.0)
    fields.update(
        {
            # ADetailer's field is its detector threshold (0-1); charkit has none, it records the repaired
            # face's detector score, clamped to 0-1 so that pasting the text into ADetailer still works
            "ADetailer confidence": round(min(1.0, max(0.0, conf)), 2),
            "ADetailer dilate erode": o.dilate,
            "ADetailer mask blur": o.mask_blur,
            "ADetailer denoising strength": o.strength,
            "ADetailer inpaint only masked": True,
            "ADetailer inpaint padding": o.padding,
            "ADetailer use inpaint width height": True,
            "ADetailer inpaint width": size[0],
            "ADetailer inpaint height": size[1],
        }
    )
    if job.steps != job.record.steps:
        fields["ADetailer use separate steps"] = True
        fields["ADetailer steps"] = job.steps
    if job.guidance != job.record.guidance:
        fields["ADetailer use separate CFG scale"] = True
        fields["ADetailer CFG scale"] = job.guidance
    if o.inpaint_model and job.model.source == o.inpaint_model:
        fields["ADetailer use separate checkpoint"] = True
        fields["ADetailer checkpoint"] = o.inpaint_model
    fields["ADetailer version"] = f"charkit {__version__}"
    fields["Repair"] = (
        "; ".join(
            f"{x.face.character} {x.face.before:.4f} -> {_num(x.decision.after)} "
            f"{'kept' if x.decision.kept else 'rejected'}"
            for x in outcomes
        )
        + f" ({plan.evaluator.info.name})"
    )
    return fields


def _num(v: float | None) -> str:
    return "none" if v is None else f"{v:.4f}"


def append_parameters(text: str, fields: dict[str, Any]) -> str:
    """``text`` (A1111 ``parameters``) with ``fields`` appended to its key/value line.

    >>> append_parameters("a cat\\nSteps: 20, Seed: 1", {"ADetailer mask blur": 4})
    'a cat\\nSteps: 20, Seed: 1, ADetailer mask blur: 4'
    """
    extra = ", ".join(f"{k}: {_quote(v)}" for k, v in fields.items())
    return f"{text}, {extra}" if text else extra
