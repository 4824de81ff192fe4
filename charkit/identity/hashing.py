"""Model-file hashes, memoised per (path, size, mtime) so a 300 MB pack is hashed once per process."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable

from ..paths import sha256_file

_memo: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _memo:
        _memo[key] = sha256_file(path)
    return _memo[key]


def files_sha256(paths: Iterable[str | os.PathLike]) -> str:
    """One hash over several model files (names and contents, in the given order)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(os.path.basename(p).encode())
        h.update(bytes.fromhex(file_sha256(p)))
    return h.hexdigest()
