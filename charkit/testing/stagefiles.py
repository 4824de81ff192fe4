"""Stage files for tests: folders described exactly as the stage that writes them would describe them.

Only the fields a test cares about are given; the rest take the values a tiny run would record. The
result goes through the models of :mod:`charkit.stagefiles`, so a test can never write a manifest
or a dataset.json that charkit itself would refuse to read.
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import __version__
from ..paths import sha256_file
from ..stagefiles import DatasetFile, DatasetItem, ImageRecord, RenderManifest, write_stage_file

_RECORD_DEFAULTS = {
    "model": "tiny-sd15",
    "family": "sd15",
    "model_source": "models/tiny-sd15",
    "seed": 0,
    "characters": [],
    "prompt": "",
    "negative_prompt": "",
    "width": 64,
    "height": 64,
    "steps": 1,
    "guidance": 7.0,
    "scheduler": "DPMSolverMultistepScheduler",
    "preset": "none",
}


def write_render_manifest(
    folder: str | os.PathLike,
    images: list[dict],
    *,
    characters: dict[str, str | os.PathLike] | None = None,
    project: str = "test episode",
) -> RenderManifest:
    """Write ``folder/manifest.json`` for image files already in ``folder``; returns the manifest.

    >>> write_render_manifest(tmp, [{"scene": "s01", "file": "s01.png", "characters": ["alice"]}],
    ...                       characters={"alice": "../characters/alice"})  # doctest: +SKIP
    """
    folder = Path(folder)
    records = []
    for img in images:
        fields = {**_RECORD_DEFAULTS, **img}
        f = folder / fields["file"]
        fields.setdefault("sha256", sha256_file(f) if f.is_file() else "")
        records.append(ImageRecord(**fields))
    manifest = RenderManifest(
        charkit_version=__version__,
        storyboard="",
        storyboard_sha256=None,
        project=project,
        characters={k: str(v) for k, v in (characters or {}).items()},
        models=[],
        images=records,
    )
    write_stage_file(folder / "manifest.json", manifest)
    return manifest


#: The dlib backend as a dataset.json records it (tests that build a dataset by hand never run prep).
_DLIB = {
    "name": "dlib",
    "model": "dlib_face_recognition_resnet_model_v1 + shape_predictor_5_face_landmarks",
    "model_hash": "0" * 64,
    "dim": 128,
    "metric": "1 - euclidean",
    "threshold": 0.4,
    "licence": "CC0 1.0",
}


def write_dataset_file(
    folder: str | os.PathLike,
    items: list[dict],
    *,
    character: str,
    family: str = "sd15",
    resolution: int = 64,
    trigger: str = "ohwx",
    class_word: str = "man",
    rejected: list[dict] | None = None,
) -> DatasetFile:
    """Write ``folder/dataset.json`` for crops already in ``folder`` (each item: file, caption, width, height, source)."""
    full = []
    for it in items:
        w, h = int(it["width"]), int(it["height"])
        defaults = {
            "face_box": [w * 0.25, h * 0.2, w * 0.75, h * 0.7],
            "similarity": None,
            "yaw": None,
            "pose": "frontal",
            "face_fraction": 0.25,
            "size_bin": "close-up",
            "source_width": w,
            "source_height": h,
            "crop_box": [0.0, 0.0, float(w), float(h)],
            "scale": 1.0,
        }
        full.append(DatasetItem(**{**defaults, **it}))
    dataset = DatasetFile(
        character=character,
        family=family,
        resolution=resolution,
        backend=_DLIB,
        trigger=trigger,
        class_word=class_word,
        items=full,
        rejected=rejected or [],
    )
    write_stage_file(Path(folder) / "dataset.json", dataset)
    return dataset
