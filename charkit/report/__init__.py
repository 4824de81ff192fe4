"""The report toolkit shared by the prep, training and verify reports.

Every report charkit writes is a JSON record plus one self-contained HTML page: inline CSS and
SVG, thumbnails inlined as ``data:`` URIs, no scripts, and a Content-Security-Policy that forbids
every network fetch. This module holds what they share:

* :func:`environment`: the jinja2 environment of a stage's ``templates/`` folder, autoescape on for
  every template (user text only reaches a page through ``{{ }}``), undefined names are errors;
* :data:`CSP` and :func:`data_uri`;
* :func:`check_output` and :func:`commit`: a report's files appear together, all or nothing.

Thumbnails come from :func:`charkit.images.make_thumbnail` (one deterministic JPEG encoder).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import os
import secrets
import shutil
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from ..errors import CharkitError
from ..images import image_mime
from ..paths import atomic_write_text, fsync_dir

#: Content-Security-Policy of every report page: no network, no scripts, inline styles and data: images only.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


@functools.cache
def environment(package: str) -> Environment:
    """The jinja2 environment of ``<package>/templates/*.j2`` (autoescaped; ``csp`` and ``data_uri`` as globals).

    >>> environment("charkit.verify").get_template("report.html.j2")  # doctest: +SKIP
    """
    env = Environment(
        loader=PackageLoader(package, "templates"),
        autoescape=select_autoescape(enabled_extensions=("html", "j2"), default_for_string=True, default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.globals.update(csp=CSP, data_uri=data_uri)
    return env


def data_uri(data: bytes | None) -> str | None:
    """``data:<mime>;base64,...`` of JPEG or PNG bytes; None for no bytes or an unknown format.

    >>> data_uri(b"\\xff\\xd8\\xff...")[:23]
    'data:image/jpeg;base64,'
    """
    mime = image_mime(data) if data else None
    return None if mime is None else f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def check_output(out_dir: str | os.PathLike) -> Path:
    """The output folder, refused when it exists as something other than a folder (nothing is created)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CharkitError(f"{out}: exists and is not a folder; pass --out a folder (it is created if missing)")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CharkitError(f"{parent}: is not a folder, so {out} cannot be created; choose another --out")
            break
    return out


def commit(out_dir: Path, texts: dict[str, str]) -> None:
    """Stage every file as a complete temporary beside its target, then move them all into place.

    If anything fails, the staged temporaries are removed and any file already moved into
    place is rolled back to its previous version (or removed when there was none).
    """
    token = f"{os.getpid()}.{secrets.token_hex(4)}"
    staged: list[tuple[Path, Path]] = []
    placed: list[tuple[Path, Path | None]] = []  # (target, backup of its old version)
    try:
        for name, text in texts.items():
            tmp = out_dir / f".{name}.{token}.staged"
            staged.append((tmp, out_dir / name))
            atomic_write_text(tmp, text)
            os.chmod(tmp, 0o644)  # temp files are created 0600; a report is meant to be shared
        for tmp, final in staged:
            placed.append((final, _backup(final, token)))
            os.replace(tmp, final)
    except BaseException:
        for final, backup in reversed(placed):
            with contextlib.suppress(OSError):
                if backup is not None:
                    os.replace(backup, final)
                    backup.unlink(missing_ok=True)  # rename is a no-op when both names are one file
                else:
                    final.unlink(missing_ok=True)
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise
    for _, backup in placed:
        if backup is not None:
            with contextlib.suppress(OSError):
                backup.unlink()
    fsync_dir(out_dir)


def _backup(path: Path, token: str) -> Path | None:
    # A second name for the old file, so a failed commit can put it back; the old file
    # itself stays in place (readers never see it missing).
    if not path.exists():
        return None
    backup = path.with_name(f".{path.name}.{token}.old")
    try:
        os.link(path, backup)
    except OSError:  # filesystems without hard links
        shutil.copy2(path, backup)
    return backup
