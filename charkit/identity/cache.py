"""On-disk cache of faces and embeddings, keyed by backend, model hash and image hash.

One SQLite file per cache folder (``$CHARKIT_CACHE_DIR``, else ``~/.cache/charkit``): a
re-verify of an unchanged folder only hashes files and reads rows, and a changed image,
a changed model file or another backend simply misses. SQLite gives atomic, concurrent-
safe writes for free (several ``accelerate`` ranks may share it). A file that is not (or no
longer) a valid SQLite database is moved aside with a one-line warning and the cache starts
afresh: a cache must never make a command unusable.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass

import numpy as np

from ..environment import check_cache_dir, check_output_dir
from ..errors import warn
from .base import Face

SCHEMA_VERSION = 1


@dataclass
class CachedImage:
    """What analysing one image produced; enough to report without decoding it again."""

    faces: list[Face]
    width: int
    height: int
    notes: list[str]
    thumbnail: bytes | None


def _retry_locked(fn, attempts: int = 200, wait: float = 0.05):
    for i in range(attempts):
        try:
            return fn()
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or i == attempts - 1:
                raise
            time.sleep(wait)


class FaceCache:
    """``get``/``put`` analysed images by (backend cache key, image sha256)."""

    def __init__(self, folder: str | os.PathLike | None = None):
        # a file in the way, a read-only place: one line naming the folder (or CHARKIT_CACHE_DIR)
        if folder is None:
            self.folder = check_cache_dir()
        else:
            self.folder = check_output_dir(folder, "face cache folder", min_free=0)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / f"faces-v{SCHEMA_VERSION}.sqlite"
        self._local = threading.local()
        self._guarded(self._create)

    def _create(self) -> None:
        with self._conn() as c:
            _retry_locked(
                lambda: c.execute(
                    "CREATE TABLE IF NOT EXISTS faces (backend TEXT, image_sha TEXT, data TEXT, emb BLOB, thumb BLOB,"
                    " PRIMARY KEY (backend, image_sha))"
                )
            )
            # other per-image measurements (the look profile of a face box), as JSON text
            _retry_locked(
                lambda: c.execute(
                    "CREATE TABLE IF NOT EXISTS extras (kind TEXT, image_sha TEXT, key TEXT, data TEXT,"
                    " PRIMARY KEY (kind, image_sha, key))"
                )
            )

    def _guarded(self, fn, *args):
        """``fn(*args)``; a corrupt database file is moved aside (one warning) and rebuilt, then ``fn`` runs again."""
        try:
            return fn(*args)
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError):  # locked, disk full, I/O: not corruption
                raise
            self._move_aside(e)
            self._create()
            return fn(*args)

    def _move_aside(self, error: Exception) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        aside = self.path.with_name(f"{self.path.name}.corrupt-{_dt.datetime.now():%Y%m%d-%H%M%S}")
        os.replace(self.path, aside)
        for extra in ("-wal", "-shm"):  # SQLite's side files belong to the broken database
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.path}{extra}")
        warn(f"{self.path}: the face cache was unreadable ({error}); moved it to {aside.name} and started a new one")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60)
            # Switching to WAL needs an exclusive lock and ignores the busy timeout: several processes
            # (accelerate ranks) opening the cache at once must retry it.
            _retry_locked(lambda: conn.execute("PRAGMA journal_mode=WAL"))
            self._local.conn = conn
        return conn

    def get(self, backend_key: str, image_sha: str) -> CachedImage | None:
        return self._guarded(self._get, backend_key, image_sha)

    def _get(self, backend_key: str, image_sha: str) -> CachedImage | None:
        row = (
            self._conn()
            .execute("SELECT data, emb, thumb FROM faces WHERE backend=? AND image_sha=?", (backend_key, image_sha))
            .fetchone()
        )
        if row is None:
            return None
        data, emb, thumb = row
        d = json.loads(data)
        embedded = d.get("embedded", [True] * len(d["faces"]))  # faces a backend could not embed: False
        vecs = iter(np.frombuffer(emb, dtype=np.float32).reshape(sum(embedded), -1) if any(embedded) else [])
        faces = []
        for fd, has in zip(d["faces"], embedded):
            f = Face.from_dict(fd)
            f.embedding = np.array(next(vecs)) if has else None
            faces.append(f)
        return CachedImage(faces=faces, width=d["width"], height=d["height"], notes=d["notes"], thumbnail=thumb)

    def get_extra(self, kind: str, image_sha: str, key: str) -> dict | None:
        """A measurement of ``kind`` (e.g. ``look-v1``) stored for this image and ``key`` (e.g. a face box)."""
        row = (
            self._conn()
            .execute("SELECT data FROM extras WHERE kind=? AND image_sha=? AND key=?", (kind, image_sha, key))
            .fetchone()
        )
        return None if row is None else json.loads(row[0])

    def put_extra(self, kind: str, image_sha: str, key: str, data: dict) -> None:
        with self._conn() as c:
            c.execute("INSERT OR REPLACE INTO extras VALUES (?, ?, ?, ?)", (kind, image_sha, key, json.dumps(data)))

    def put(self, backend_key: str, image_sha: str, entry: CachedImage) -> None:
        self._guarded(self._put, backend_key, image_sha, entry)

    def _put(self, backend_key: str, image_sha: str, entry: CachedImage) -> None:
        data = json.dumps(
            {
                "faces": [f.to_dict() for f in entry.faces],
                "embedded": [f.embedding is not None for f in entry.faces],
                "width": entry.width,
                "height": entry.height,
                "notes": entry.notes,
            }
        )
        emb = b"".join(np.asarray(f.embedding, np.float32).tobytes() for f in entry.faces if f.embedding is not None)
        with self._conn() as c:
            c.execute(
                "INSERT OR REPLACE INTO faces VALUES (?, ?, ?, ?, ?)",
                (backend_key, image_sha, data, emb, entry.thumbnail),
            )
