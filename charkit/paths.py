"""Paths and atomic writes shared by every stage.

Writes follow pip's pattern: write a temporary file next to the target, flush,
fsync, then ``os.replace`` it over the target, so a reader (or a resume after
``kill -9``) sees either the old file or the complete new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .errors import CharkitError

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync it and move it into place.

    >>> with atomic_open(tmp / "x.json", "w") as f:  # doctest: +SKIP
    ...     f.write("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600 files: give the result the permissions a plain open() would have
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(path)  # a full disk fails in write/fsync, which name no file: name the target
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make renames in ``directory`` durable (not every filesystem allows opening a directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def default_cache_dir() -> Path:
    """charkit's cache folder: ``$CHARKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/charkit`` (``~/.cache/charkit``)."""
    env = os.environ.get("CHARKIT_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "charkit"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(safe_text(text))


def safe_text(text: str) -> str:
    """``text`` that always encodes as UTF-8: a file name's undecodable bytes (lone surrogates) become ``\\xNN``.

    >>> safe_text(os.fsdecode(b"caf\\xe9.png"))
    'caf\\\\xe9.png'
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:  # surrogate escapes of os.fsdecode: back to the bytes, then shown as \xNN
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # other lone surrogates
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def portable_name(name: str) -> str:
    """A file name that is valid UTF-8: undecodable bytes become ``%NN`` (for copies charkit makes).

    >>> portable_name(os.fsdecode(b"caf\\xe9.jpg"))
    'caf%E9.jpg'
    """
    raw = os.fsencode(name)
    try:
        raw.decode("utf-8")
        return name
    except UnicodeDecodeError:
        pass
    out, i = [], 0
    while i < len(raw):
        for j in range(min(len(raw), i + 4), i, -1):  # the longest valid UTF-8 sequence at i
            try:
                out.append(raw[i:j].decode("utf-8"))
                i = j
                break
            except UnicodeDecodeError:
                continue
        else:
            out.append(f"%{raw[i]:02X}")
            i += 1
    return "".join(out)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False, allow_nan=False) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_name(name: str, what: str = "name") -> str:
    """Validate a user-chosen name that becomes a file or folder name.

    Letters, digits, ``.``, ``_`` and ``-``; it must start with a letter or digit, so it
    can never be ``..``, hidden, absolute or contain a separator.
    """
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or name in {".", ".."}:
        raise CharkitError(
            f"{what} {name!r} is not a safe file name: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def under_root(root: str | os.PathLike, *parts: str) -> Path:
    """Join ``parts`` under ``root`` and refuse any result that escapes it (``..``, absolute, links)."""
    root_p = Path(root).resolve()
    target = root_p.joinpath(*parts).resolve()
    if target != root_p and root_p not in target.parents:
        raise CharkitError(f"path {os.path.join(*parts)!r} escapes the output folder {str(root_p)!r}")
    return target
