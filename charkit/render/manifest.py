"""``DIR/manifest.json``: what was rendered, from what, and how close each face is.

The manifest is rewritten atomically after every scene, and an image enters it only after its
PNG is completely on disk, so after ``kill -9`` it lists exactly the finished images. A rerun
skips an image whose record has the same ``inputs_hash`` and whose file still has the recorded
sha256; everything else is rendered again.

``charkit verify DIR`` reads it: image order is scene order, and ``model`` and ``characters``
(declared left to right) say what each image should hold. Keep those field names.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import CharkitError
from ..paths import atomic_write_json, sha256_file

MANIFEST = "manifest.json"
#: Per-process manifests of a multi-process run, merged into manifest.json by the main process.
PARTIAL_GLOB = ".manifest.rank*.json"


@dataclass
class CandidateScore:
    """One best-of-N candidate: its seed and identity score (None when it was not scored)."""

    seed: int
    similarity: float | None
    status: str | None  # "pass" | "drift" | "no_face" | "error" | None (not scored)


@dataclass
class ImageRecord:
    """One rendered image, as the manifest and the PNG's ``charkit`` chunk record it."""

    scene: str
    model: str  # model label (file suffix under a models matrix)
    family: str
    model_source: str
    seed: int  # seed of the kept candidate
    file: str  # relative to the output folder
    sha256: str
    characters: list[str]  # declared left to right
    prompt: str  # expanded (trigger words in place of {name})
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    scheduler: str
    preset: str
    lora: dict[str, float] = field(default_factory=dict)  # character -> scale actually applied
    control: dict | None = None  # {type, image, scale, preprocess}
    ip_adapter: dict | None = None  # {mode, scale, character, image}
    identity: dict | None = None  # {similarity, status, backend} of the kept image; None when not scored
    candidates: list[CandidateScore] = field(default_factory=list)
    selection: str = "single"  # "single" | "best_identity" | "first_no_face"
    inputs_hash: str = ""
    dtype: str = "float32"
    device: str = "cpu"

    @property
    def key(self) -> tuple[str, str]:
        return (self.scene, self.model)

    def to_dict(self) -> dict:
        return asdict(self)

    def png_meta(self) -> dict:
        """The PNG ``charkit`` chunk: the record without its own file hash (a file cannot hold its own hash)."""
        d = self.to_dict()
        d.pop("sha256")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ImageRecord:
        d = dict(d)
        d["candidates"] = [CandidateScore(**c) for c in d.get("candidates", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Manifest:
    """The whole manifest.json."""

    charkit_version: str
    storyboard: str
    storyboard_sha256: str | None
    project: str
    characters: dict[str, str]  # name -> character folder
    models: list[dict] = field(default_factory=list)  # {label, family, source}
    images: list[ImageRecord] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "charkit_version": self.charkit_version,
            "storyboard": self.storyboard,
            "storyboard_sha256": self.storyboard_sha256,
            "project": self.project,
            "characters": dict(self.characters),
            "models": list(self.models),
            "images": [r.to_dict() for r in self.images],
        }

    def record(self, scene: str, model: str) -> ImageRecord | None:
        for r in self.images:
            if r.key == (scene, model):
                return r
        return None


def read_records(path: str | os.PathLike) -> list[ImageRecord]:
    """The image records of a manifest (or a per-process partial manifest); [] when the file is absent."""
    p = Path(path)
    if not p.is_file():
        return []
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        return [ImageRecord.from_dict(d) for d in data["images"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CharkitError(
            f"{p}: not a readable render manifest ({type(e).__name__}: {e}); delete it to render every scene again"
        ) from None


def write_manifest(path: str | os.PathLike, manifest: Manifest) -> None:
    atomic_write_json(path, manifest.to_dict())


def write_partial(path: str | os.PathLike, records: list[ImageRecord]) -> None:
    atomic_write_json(path, {"images": [r.to_dict() for r in records]})


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
