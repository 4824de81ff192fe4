"""``DIR/manifest.json``: what was rendered, from what, and how close each face is.

The manifest is rewritten atomically after every scene, and an image enters it only after its
PNG is completely on disk, so after ``kill -9`` it lists exactly the finished images. A rerun
skips an image whose record has the same ``inputs_hash`` and whose file still has the recorded
sha256; everything else is rendered again.

``charkit verify DIR`` reads it: image order is scene order, and ``model`` and ``characters``
(declared left to right) say what each image should hold. Keep those field names.

Several writers may share one folder (``charkit render`` and ``charkit studio`` at once): every
read-modify-write holds :func:`manifest_lock` (a file lock beside the manifest) and re-reads the
file inside it, so no writer drops another's records (:func:`update_manifest`).
"""

from __future__ import annotations

import os
from pathlib import Path

from filelock import FileLock
from pydantic import BaseModel, ConfigDict

from ..paths import sha256_file
from ..stagefiles import CandidateScore, ImageRecord, RenderManifest, read_stage_file, write_stage_file

__all__ = [
    "MANIFEST",
    "PARTIAL_GLOB",
    "CandidateScore",
    "ImageRecord",
    "Manifest",
    "is_complete",
    "manifest_lock",
    "merge_records",
    "read_records",
    "update_manifest",
    "write_manifest",
    "write_partial",
]

MANIFEST = "manifest.json"
#: Per-process manifests of a multi-process run, merged into manifest.json by the main process.
PARTIAL_GLOB = ".manifest.rank*.json"

#: The manifest model (charkit.stagefiles.RenderManifest): the render stage's name for it.
Manifest = RenderManifest


class _Partial(BaseModel):
    """A per-process partial manifest: only the images that process finished (render-internal)."""

    model_config = ConfigDict(extra="ignore")
    images: list[ImageRecord]


def read_records(path: str | os.PathLike) -> list[ImageRecord]:
    """The image records of a manifest (or a per-process partial manifest); [] when the file is absent."""
    p = Path(path)
    if not p.is_file():
        return []
    model = _Partial if p.name.startswith(".manifest.rank") else RenderManifest
    return read_stage_file(p, model, fix="delete it to render every scene again").images


def write_manifest(path: str | os.PathLike, manifest: RenderManifest) -> None:
    write_stage_file(path, manifest)


def manifest_lock(path: str | os.PathLike, timeout: float = 120.0) -> FileLock:
    """The lock every manifest read-modify-write holds (``.manifest.json.lock`` beside it; not reentrant).

    >>> with manifest_lock("renders/ep1/manifest.json"):  # doctest: +SKIP
    ...     ...  # re-read, change, write_manifest
    """
    p = Path(path)
    return FileLock(p.with_name(f".{p.name}.lock"), timeout=timeout)


def update_manifest(
    path: str | os.PathLike, header: dict, order: list[tuple[str, str]], records: list[ImageRecord]
) -> RenderManifest:
    """Lock, re-read, merge ``records`` over the file's own by key, keep the keys in ``order``, write atomically.

    Records another writer added meanwhile survive (unless ``order`` leaves their key out); the
    merged manifest is returned.

    >>> update_manifest(out / MANIFEST, manifest_header(plan), plan.order, [record])  # doctest: +SKIP
    """
    with manifest_lock(path):
        manifest = RenderManifest(**header, images=merge_records(order, read_records(path), records))
        write_manifest(path, manifest)
    return manifest


def write_partial(path: str | os.PathLike, records: list[ImageRecord]) -> None:
    write_stage_file(path, _Partial(images=records))


def is_complete(record: ImageRecord, out_dir: str | os.PathLike) -> bool:
    """True when the record's PNG exists with the recorded sha256 (a finished, untouched render)."""
    f = Path(out_dir) / record.file
    return f.is_file() and sha256_file(f) == record.sha256


def merge_records(order: list[tuple[str, str]], *groups: list[ImageRecord]) -> list[ImageRecord]:
    """Records for the keys in ``order`` (scene order), later groups overriding earlier ones.

    Records of scenes no longer in the storyboard are dropped.
    """
    by_key: dict[tuple[str, str], ImageRecord] = {}
    for group in groups:
        for r in group:
            by_key[r.key] = r
    return [by_key[k] for k in order if k in by_key]
