"""Content fingerprints of everything a render depends on (for ``inputs_hash`` and resume).

Hashing a multi-GB checkpoint takes seconds, so file hashes are remembered on disk by
(path, size, mtime) in the charkit cache folder; an unchanged model is hashed once.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from ..paths import atomic_write_json, sha256_file

_lock = threading.Lock()
_memo: dict[tuple[str, int, int], str] = {}
_disk_loaded = False
_CACHE_NAME = "render-file-hashes.json"


def _cache_file() -> Path:
    from ..identity.cache import default_cache_dir

    return default_cache_dir() / _CACHE_NAME


def _load_disk() -> None:
    global _disk_loaded
    if _disk_loaded:
        return
    _disk_loaded = True
    try:
        data = json.loads(_cache_file().read_text("utf-8"))
        for k, v in data.items():
            path, size, mtime = json.loads(k)
            _memo[(path, int(size), int(mtime))] = v
    except (OSError, ValueError, TypeError):
        pass  # no or unreadable cache: hash again


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, cached by (absolute path, size, mtime_ns) in memory and on disk.

    >>> file_sha256("models/realisticVision.safetensors")  # doctest: +SKIP
    '9f3c...'
    """
    p = os.path.abspath(path)
    st = os.stat(p)
    key = (p, st.st_size, st.st_mtime_ns)
    with _lock:
        _load_disk()
        if key in _memo:
            return _memo[key]
    digest = sha256_file(p)
    with _lock:
        _memo[key] = digest
        if st.st_size >= 64 << 20:  # only big files are worth a disk entry
            try:
                atomic_write_json(_cache_file(), {json.dumps(list(k)): v for k, v in _memo.items() if _big(k)})
            except OSError:
                pass
    return digest


def _big(key: tuple[str, int, int]) -> bool:
    return key[1] >= 64 << 20


def folder_fingerprint(folder: str | os.PathLike) -> str:
    """Hash of a diffusers folder: model_index.json and its components' files (or every file when there is no index)."""
    root = Path(folder)
    index = root / "model_index.json"
    if index.is_file():
        components = [k for k, v in json.loads(index.read_text("utf-8")).items() if not k.startswith("_") and isinstance(v, list) and v[0]]
        files = [index] + [f for c in sorted(components) if (root / c).is_dir() for f in sorted((root / c).rglob("*")) if f.is_file()]
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
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()).hexdigest()
