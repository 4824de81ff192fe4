"""Content fingerprints of everything a render depends on (for ``inputs_hash`` and resume).

File hashes come from :mod:`charkit.hashing` (memoised in memory and on disk).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..hashing import file_sha256


def folder_fingerprint(folder: str | os.PathLike) -> str:
    """Hash of a diffusers folder: model_index.json and its components' files (or every file when there is no index)."""
    root = Path(folder)
    index = root / "model_index.json"
    if index.is_file():
        components = [
            k
            for k, v in json.loads(index.read_text("utf-8")).items()
            if not k.startswith("_") and isinstance(v, list) and v[0]
        ]
        files = [index] + [
            f for c in sorted(components) if (root / c).is_dir() for f in sorted((root / c).rglob("*")) if f.is_file()
        ]
    else:
        files = sorted(f for f in root.rglob("*") if f.is_file())
    h = hashlib.sha256()
    for f in files:
        rel = f.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        h.update(rel.as_posix().encode())
        h.update(bytes.fromhex(file_sha256(f)))
    return h.hexdigest()


def hub_fingerprint(repo_id: str) -> str:
    """``hub:<id>@<commit>`` of the cached snapshot (``hub:<id>`` when it is not cached)."""
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(repo_id, local_files_only=True)
        return f"hub:{repo_id}@{Path(path).name}"
    except Exception:  # not cached (the load step reports that properly)
        return f"hub:{repo_id}"


def source_fingerprint(source: str | os.PathLike | None) -> str | None:
    """Fingerprint of a model source: file sha256, folder hash, or hub snapshot id."""
    if source is None:
        return None
    p = Path(source)
    if p.is_file():
        return file_sha256(p)
    if p.is_dir():
        return folder_fingerprint(p)
    return hub_fingerprint(str(source))


def stable_hash(obj) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys).

    >>> stable_hash({"b": 1, "a": 2}) == stable_hash({"a": 2, "b": 1})
    True
    """
    return hashlib.sha256(
        json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    ).hexdigest()
