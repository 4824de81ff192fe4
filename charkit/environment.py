"""The machine a run depends on: output folders that can be created and written, free disk space.

Stages call :func:`check_output_dir` from their ``check_inputs`` (it only looks: nothing is
created), so a folder behind a file, on a read-only disk or on a full one fails in one line before a
model loads. Failures that can only show up later (the disk fills mid-run) become one line too:
:func:`environment_error` turns an ``OSError`` (ENOSPC, EROFS, EACCES, ...) into an
:class:`~charkit.errors.EnvironmentProblem`, and the CLI applies it to every command.
:func:`removed_on_failure` takes away a folder a failed run created, so nothing partial is left.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from .errors import EnvironmentProblem

__all__ = [
    "MIN_FREE_BYTES",
    "check_cache_dir",
    "check_output_dir",
    "disk_errors",
    "environment_error",
    "existing_ancestor",
    "free_bytes",
    "removed_on_failure",
]

#: below this much free space a run cannot even write its first file: refuse before starting
MIN_FREE_BYTES = 1 << 20

_REASONS = {
    errno.ENOSPC: ("no space left on the device", "free some space there (or choose another folder) and run again"),
    errno.EDQUOT: ("disk quota exceeded", "free some space there (or choose another folder) and run again"),
    errno.EROFS: ("read-only file system", "choose a folder on a writable disk"),
    errno.EACCES: ("permission denied", "choose a folder you can write to"),
    errno.EPERM: ("operation not permitted", "choose a folder you can write to"),
    errno.ENOTDIR: ("a file is in the way of a folder", "move that file away or choose another folder"),
    errno.EISDIR: ("a folder is in the way of a file", "move that folder away or choose another path"),
    errno.EFBIG: ("file too large for this file system", "choose a folder on another disk"),
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter path"),
    errno.EIO: ("input/output error (a failing disk?)", "check the disk, or choose a folder on another one"),
}
# safetensors (Rust), torch.save and sqlite report a full disk in their own words
_FULL_DISK_TEXT = ("no space left on device", "storagefull", "database or disk is full", "errno 28")


def existing_ancestor(path: str | os.PathLike) -> Path:
    """``path`` itself when it exists, else its nearest existing parent (what a mkdir would start from)."""
    p = Path(os.path.abspath(Path(path).expanduser()))
    while not p.exists() and not p.is_symlink() and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes (for this user) on the disk that holds ``path`` or would hold it."""
    return shutil.disk_usage(existing_ancestor(path)).free


def check_output_dir(path: str | os.PathLike, what: str, *, min_free: int = MIN_FREE_BYTES) -> Path:
    """Check, without writing anything, that folder ``path`` exists or can be created, and can be written.

    ``what`` names it for the message (``"--out"``, ``"CHARKIT_CACHE_DIR"``). Returns the path.

    >>> check_output_dir("/proc/charkit", "--out")
    Traceback (most recent call last):
    ...
    charkit.errors.EnvironmentProblem: --out /proc/charkit: cannot create it: /proc is a virtual file system (no storage); choose a folder on a disk
    """
    p = Path(path).expanduser()
    base = existing_ancestor(p)
    where = f"{what} {path}" if str(path) not in what else what
    if base.is_symlink() and not base.exists():
        raise EnvironmentProblem(
            f"{where}: cannot create it: {base} is a broken link; remove it or choose another path"
        )
    if not base.is_dir():
        target = "use" if base == Path(os.path.abspath(p)) else "create"
        raise EnvironmentProblem(
            f"{where}: cannot {target} it: {base} is a file, not a folder; move the file away or choose another folder"
        )
    try:
        st = os.statvfs(base)
    except OSError:  # not every platform has statvfs
        return p
    if st.f_blocks == 0:
        raise EnvironmentProblem(
            f"{where}: cannot create it: {base} is a virtual file system (no storage); choose a folder on a disk"
        )
    if st.f_flag & os.ST_RDONLY or not os.access(base, os.W_OK | os.X_OK):
        why = "is on a read-only file system" if st.f_flag & os.ST_RDONLY else "is not writable for you"
        raise EnvironmentProblem(f"{where}: cannot write there: {base} {why}; choose a folder you can write to")
    free = st.f_bavail * st.f_frsize
    if free < min_free:
        raise EnvironmentProblem(
            f"{where}: the disk holding {base} is full ({free // 1024} KiB free); free some space or choose "
            "a folder on another disk"
        )
    return p


def check_cache_dir(min_free: int = 0) -> Path:
    """charkit's cache folder (``$CHARKIT_CACHE_DIR`` or ``~/.cache/charkit``) can be created and written."""
    from .paths import default_cache_dir

    named = "CHARKIT_CACHE_DIR" if os.environ.get("CHARKIT_CACHE_DIR") else "cache folder"
    return check_output_dir(default_cache_dir(), named, min_free=min_free)


def environment_error(e: BaseException) -> EnvironmentProblem | None:
    """One line for an error of the machine (full disk, read-only or unwritable place), else None.

    >>> str(environment_error(OSError(28, "No space left on device", "out/s01.png")))
    'out/s01.png: no space left on the device (ENOSPC); free some space there (or choose another folder) and run again'
    """
    if isinstance(e, EnvironmentProblem):
        return e
    code = getattr(e, "errno", None) if isinstance(e, OSError) else None
    text = " ".join(str(e).split())
    if code not in _REASONS and any(t in text.lower() for t in _FULL_DISK_TEXT):
        code = errno.ENOSPC
    if code not in _REASONS:
        return None
    reason, fix = _REASONS[code]
    filename = getattr(e, "filename", None)
    where = f"{os.fsdecode(filename)!s}: " if filename else ""
    return EnvironmentProblem(f"{where}{reason} ({errno.errorcode[code]}); {fix}")


@contextlib.contextmanager
def disk_errors() -> Iterator[None]:
    """Re-raise errors of the machine (see :func:`environment_error`) as one-line EnvironmentProblems."""
    try:
        yield
    except Exception as e:
        problem = environment_error(e)
        if problem is None or problem is e:
            raise
        raise problem from None


#: files a run may leave in a folder before anything real is written (locks): still "empty"
_SCAFFOLDING = (".manifest.json.lock",)


@contextlib.contextmanager
def removed_on_failure(folder: str | os.PathLike, *, keep_if=None) -> Iterator[Path]:
    """Remove ``folder`` (and the parents this run made for it) again when the block fails (errors, Ctrl-C).

    A folder that existed before is left alone; a created one is removed when it holds nothing
    (locks aside), or whatever it holds when ``keep_if(folder)`` is False.

    >>> with removed_on_failure(tmp / "renders"):  # doctest: +SKIP
    ...     render_everything()
    """
    folder = Path(os.path.abspath(Path(folder).expanduser()))
    base = existing_ancestor(folder)
    try:
        yield folder
    except BaseException:
        if base != folder and folder.is_dir():
            empty = all(p.name in _SCAFFOLDING for p in folder.iterdir())
            if (keep_if is None and empty) or (keep_if is not None and not keep_if(folder)):
                shutil.rmtree(folder, ignore_errors=True)
                for parent in folder.parents:  # the parents made for it, while empty
                    if parent == base or not parent.is_dir() or any(parent.iterdir()):
                        break
                    with contextlib.suppress(OSError):
                        parent.rmdir()
        raise
