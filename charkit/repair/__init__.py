"""The repair stage: re-draw only the faces that drifted, keep a result only when the identity score rises.

    plan.py       check_inputs: manifest + storyboard -> RepairPlan of FaceJobs (faces below target); writes nothing
    masks.py      face box -> mask -> feathered box -> padded square crop; paste-back that keeps outside bytes
    records.py    the manifest's ``repair`` record, ADetailer's PNG-info fields, the keep/reject Decision
    lifecycle.py  check_inputs -> load -> (crop -> draw -> paste -> score_tries -> decide) per face -> record
    cli.py        ``charkit repair RENDER_DIR``

The family side (which diffusers pipeline inpaints, ``from_pipe`` variants, the checked call) is the
engine's: :mod:`charkit.families.inpaint`. Scoring is the identity engine's (:mod:`charkit.identity`).
"""

from __future__ import annotations

from .lifecycle import (
    ImageRepair,
    RepairResult,
    decide,
    draw,
    load,
    record,
    repair_face,
    repair_image,
    repair_render_dir,
    score_tries,
)
from .masks import Box, Crop, crop_inputs, feather_mask, paste, plan_crop
from .plan import FaceJob, ImageJob, RepairOptions, RepairPlan, check_inputs
from .records import Decision, FaceOutcome, TryScore, repair_seed

__all__ = [
    "Box",
    "Crop",
    "Decision",
    "FaceJob",
    "FaceOutcome",
    "ImageJob",
    "ImageRepair",
    "RepairOptions",
    "RepairPlan",
    "RepairResult",
    "TryScore",
    "check_inputs",
    "crop_inputs",
    "decide",
    "draw",
    "feather_mask",
    "load",
    "paste",
    "plan_crop",
    "record",
    "repair_face",
    "repair_image",
    "repair_render_dir",
    "repair_seed",
    "score_tries",
]
