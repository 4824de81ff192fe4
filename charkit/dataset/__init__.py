"""Dataset preparation: reference photos -> filtered, face-aware crops with captions.

    result = prep_dataset("characters/alice", family="sdxl")
    result.items[0].file, result.rejected[0].reason

``charkit prep`` (:mod:`charkit.dataset.cli`) is the click layer; docs/dataset.md has the rules.
"""

from __future__ import annotations

from .buckets import Bucket, CropPlan, aspect_buckets, choose_bucket, plan_crop
from .phash import hamming, phash
from .prep import (
    Candidate,
    DatasetItem,
    PrepPlan,
    PrepResult,
    analyze_refs,
    caption_for,
    check_inputs,
    crop_item,
    prep_dataset,
    record,
    reject_duplicates,
    reject_outliers,
    screen_faces,
)

__all__ = [
    "Bucket",
    "Candidate",
    "CropPlan",
    "DatasetItem",
    "PrepPlan",
    "PrepResult",
    "analyze_refs",
    "aspect_buckets",
    "caption_for",
    "check_inputs",
    "choose_bucket",
    "crop_item",
    "hamming",
    "phash",
    "plan_crop",
    "prep_dataset",
    "record",
    "reject_duplicates",
    "reject_outliers",
    "screen_faces",
]
