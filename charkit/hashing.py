"""File hashes shared by every stage, memoised by (absolute path, size, mtime).

Hashing a multi-GB checkpoint or a 300 MB face pack takes seconds, so hashes are remembered in
memory and, for big files, on disk in the charkit cache folder: an unchanged model is hashed once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from .paths import atomic_write_json, default_cache_dir, sha256_file

_lock = threading.Lock()
_memo: dict[tuple[str, int, int], str] = {}
_disk_loaded = False
_CACHE_NAME = "file-hashes.json"


def _cache_file() -> Path:
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
            with contextlib.suppress(OSError):  # a read-only cache only costs a re-hash next time
                atomic_write_json(_cache_file(), {json.dumps(list(k)): v for k, v in _memo.items() if _big(k)})
    return digest


def _big(key: tuple[str, int, int]) -> bool:
    return key[1] >= 64 << 20


def files_sha256(paths: Iterable[str | os.PathLike]) -> str:
    """One hash over several model files (names and contents, in the given order)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(os.path.basename(p).encode())
        h.update(bytes.fromhex(file_sha256(p)))
    return h.hexdigest()
