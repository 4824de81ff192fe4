"""The look engine: how an image looks in and around the face, next to the character's own photos.

    refs = [measure_look(img, face) for img, face in reference_faces]   # per image, at matched scale
    baseline = reference_look(refs)                                      # min/max/mean/std per measure
    cmp = compare_look([measure_look(img, face) for img, face in run_faces], baseline, name="flux")
    cmp.statements   # ["smoother than every reference photo (median 0.83 vs references 0.66-0.70; ...)", ...]

Six measures (smoothness, sharpness, noise, saturation, brightness, contrast; units in
:data:`UNITS` and docs/look.md), all taken after resampling the face to ``scale_to`` pixels so a
phone photo and a render are compared at the same physical scale. It is a measurement of look,
named as such, not a verdict on realism.
"""

from __future__ import annotations

from .compare import (
    RELATIONS,
    RESOLUTION,
    LookBaseline,
    LookComparison,
    MeasureComparison,
    MeasureRange,
    compare_look,
    reference_look,
)
from .crop import MatchedCrop, matched_crop
from .measures import MEASURES, UNITS, LookMeasures, measure_look

#: Bump when a measure's definition changes: cached measurements of the old kind are not reused.
LOOK_VERSION = 1

__all__ = [
    "LOOK_VERSION",
    "MEASURES",
    "RELATIONS",
    "RESOLUTION",
    "UNITS",
    "LookBaseline",
    "LookComparison",
    "LookMeasures",
    "MatchedCrop",
    "MeasureComparison",
    "MeasureRange",
    "compare_look",
    "matched_crop",
    "measure_look",
    "reference_look",
]
