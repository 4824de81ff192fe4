"""Opaque file ids: the studio serves a file only by an id it issued for a file inside ROOT.

An id is an HMAC of the file's path (relative to ROOT) and its content hash under a secret that
lives only in the server process: it cannot be guessed or built from a path, it changes when the
file's bytes change (so a browser cache never shows an old take), and a request for anything else
is a 404. Nothing in a URL is ever joined to a path.

Thumbnails are small deterministic JPEGs (:func:`charkit.images.make_thumbnail`) cached on disk by
content hash under ``$CHARKIT_CACHE_DIR/studio-thumbs``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from ..images import image_mime, is_image_file, load_image, make_thumbnail
from ..paths import atomic_write_bytes, default_cache_dir, sha256_file

#: what an issued id looks like (anything else is refused before a lookup)
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{24}$")
THUMB_SIDE = 256

#: served with their own MIME type; anything else goes out as an attachment, never rendered inline
_MIMES = {b"RIFF": "image/webp", b"GIF8": "image/gif", b"BM": "image/bmp"}


@dataclass(frozen=True)
class IssuedFile:
    path: Path
    sha256: str


class FileIndex:
    """``issue(path) -> id`` for files under ``root``; ``lookup(id) -> IssuedFile | None``.

    >>> files = FileIndex(root, secret=b"...")  # doctest: +SKIP
    >>> fid = files.issue(root / "renders/ep1/s01.png")  # doctest: +SKIP
    >>> files.lookup(fid).path.name  # doctest: +SKIP
    's01.png'
    """

    def __init__(self, root: str | os.PathLike, *, secret: bytes, cache_dir: str | os.PathLike | None = None):
        self.root = Path(root).resolve()
        self._secret = secret
        self._issued: dict[str, IssuedFile] = {}
        self._hashes: dict[Path, tuple[int, int, str]] = {}
        self._lock = threading.Lock()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "studio-thumbs"

    def inside(self, path: str | os.PathLike) -> Path | None:
        """The resolved path (links followed) when it is a file inside ROOT, else None."""
        try:
            p = Path(path).resolve()
        except (OSError, RuntimeError):
            return None
        if not p.is_relative_to(self.root) or not p.is_file():
            return None
        return p

    def sha256(self, path: Path) -> str:
        """Content hash, recomputed only when the file's size or mtime changed."""
        st = path.stat()
        memo = self._hashes.get(path)
        if memo is not None and memo[:2] == (st.st_mtime_ns, st.st_size):
            return memo[2]
        sha = sha256_file(path)
        self._hashes[path] = (st.st_mtime_ns, st.st_size, sha)
        return sha

    def issue(self, path: str | os.PathLike | None) -> str | None:
        """An id for ``path``, or None when it is not an image file inside ROOT (the studio serves nothing else)."""
        p = self.inside(path) if path is not None else None
        if p is None or not is_image_file(p):
            return None
        sha = self.sha256(p)
        rel = p.relative_to(self.root).as_posix()
        digest = hmac.new(self._secret, f"{rel}\0{sha}".encode(), hashlib.sha256).digest()
        fid = base64.urlsafe_b64encode(digest).decode("ascii")[:24]
        with self._lock:
            self._issued[fid] = IssuedFile(p, sha)
        return fid

    def lookup(self, fid: str) -> IssuedFile | None:
        """The file behind an issued id, when it still is that file (same bytes, still inside ROOT)."""
        if not isinstance(fid, str) or not ID_PATTERN.fullmatch(fid):
            return None
        entry = self._issued.get(fid)
        if entry is None or self.inside(entry.path) != entry.path:
            return None
        try:
            if self.sha256(entry.path) != entry.sha256:
                return None  # the take changed since the page was built: the page reloads with a new id
        except OSError:
            return None
        return entry

    def thumbnail(self, entry: IssuedFile, side: int = THUMB_SIDE) -> bytes | None:
        """JPEG thumbnail of an issued file (cached by content hash); None when it cannot be decoded."""
        cached = self.cache_dir / f"{entry.sha256}-{side}.jpg"
        try:
            return cached.read_bytes()
        except OSError:
            pass
        try:
            data = make_thumbnail(load_image(entry.path).image, side)
        except ValueError:
            return None
        atomic_write_bytes(cached, data)
        return data


def media_type(data: bytes) -> str | None:
    """The image MIME type of ``data`` by its magic bytes (PNG, JPEG, WebP, GIF, BMP), else None."""
    mime = image_mime(data)
    if mime:
        return mime
    for magic, m in _MIMES.items():
        if data.startswith(magic) and (m != "image/webp" or data[8:12] == b"WEBP"):
            return m
    return None
