"""The bad-input table: hostile input and a hostile environment, each through the real CLI.

Every row runs one `charkit` command (CliRunner, one process) and expects either one `Error:` line per problem
with exit code 2 and nothing partial left behind, or (rows marked ok) a run that copes: a corrupt face cache moved
aside, a non-UTF-8 file name shown escaped. Read-only and full disks are real tmpfs mounts where this machine
allows mounting (tests run as root: chmod does not stop root), else the same conditions injected at statvfs;
a disk that fills mid-run is a real small tmpfs where the data is big enough, else an injected ENOSPC at the
write layer (fsync / copyfile), which is where a real one surfaces.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from fixtures_faces import make_character

from charkit.cli import cli

REPO = Path(__file__).resolve().parents[1]


# -- the environment ------------------------------------------------------------------------------


def _mount_tmpfs(where: Path, size: str, *, ro: bool = False) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if ro else "")
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


def _fake_statvfs(monkeypatch, prefix: Path, *, rdonly: bool = False, full: bool = False) -> None:
    """statvfs of ``prefix`` as on a read-only or a full disk (for machines that cannot mount a tmpfs)."""
    real = os.statvfs

    def statvfs(path):
        st = real(path)
        if not os.path.abspath(os.fsdecode(path)).startswith(str(prefix)):
            return st
        values = list(st)
        if rdonly:
            values[8] |= os.ST_RDONLY
        if full:
            values[3] = values[4] = 0
        return os.statvfs_result(values)

    monkeypatch.setattr(os, "statvfs", statvfs)


def inject_enospc(monkeypatch, under: Path, *, after: int = 0) -> None:
    """A disk that fills up: the (after+1)-th durable write under ``under`` fails like a real ENOSPC does (at the
    flush/fsync of an atomic write, or half-way through a file copy)."""
    real_fsync, real_copyfile = os.fsync, shutil.copyfile
    seen = [0]

    def full() -> bool:
        seen[0] += 1
        return seen[0] > after

    def fsync(fd):
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            path = ""
        if path.startswith(str(under)) and full():
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    def copyfile(src, dst, *, follow_symlinks=True):
        if os.path.abspath(os.fsdecode(dst)).startswith(str(under)) and full():
            data = Path(src).read_bytes()
            Path(dst).write_bytes(data[: len(data) // 2])  # what a real full disk leaves: a truncated copy
            raise OSError(errno.ENOSPC, "No space left on device", os.fsdecode(dst))
        return real_copyfile(src, dst, follow_symlinks=follow_symlinks)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(shutil, "copyfile", copyfile)


class World:
    """One test's files: characters, a tiny model, storyboards, and places that cannot be written."""

    def __init__(self, root: Path, tiny_models, tiny_loras, monkeypatch, request):
        self.root, self._tiny, self._loras, self.mp, self._request = root, tiny_models, tiny_loras, monkeypatch, request
        self.file = root / "a-file"
        self.file.write_text("not a folder")
        self.proc = Path("/proc") / f"charkit-{uuid.uuid4().hex[:8]}"

    # places
    def _mount(self, name: str, size: str, *, ro: bool = False) -> Path | None:
        where = self.root / name
        if not _mount_tmpfs(where, size, ro=ro):
            return None
        self._request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(where)], capture_output=True))
        return where

    @cached_property
    def readonly(self) -> Path:
        """A read-only file system (a real ro tmpfs where mounting works)."""
        where = self._mount("ro", "1m", ro=True)
        if where is None:
            where = self.root / "ro"
            _fake_statvfs(self.mp, where, rdonly=True)
        return where

    @cached_property
    def full(self) -> Path:
        """A disk with no space left (a real tmpfs filled to the last byte where mounting works)."""
        where = self._mount("full", "256k")
        if where is None:
            where = self.root / "full"
            where.mkdir()
            _fake_statvfs(self.mp, where, full=True)
            return where
        with contextlib.suppress(OSError), open(where / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        return where

    def small_disk(self, size: str = "1536k") -> Path:
        """A real small disk (the row is skipped where mounting is not allowed)."""
        return self._mount("small", size) or pytest.skip("cannot mount a tmpfs here")

    @property
    def really_full(self) -> Path:
        """A full disk that really refuses writes (for commands with no up-front check)."""
        if self._mount("probe", "64k") is None:
            pytest.skip("cannot mount a tmpfs here")
        return self.full

    # inputs
    @cached_property
    def tiny(self) -> Path:
        return self._tiny("sd15").root

    @cached_property
    def tiny_model(self):
        return self._tiny("sd15")

    @cached_property
    def obama(self) -> Path:
        return make_character(self.root / "characters", "obama", ["obama.jpg", "obama2.jpg"])

    def lora(self, family: str = "sd15") -> Path:
        return self._loras(family)

    def character_with_lora(self, lora_file: Path, name: str = "alice") -> Path:
        d = make_character(self.root / "characters", name, ["obama.jpg", "obama2.jpg"])
        dest = d / "loras" / "sd15" / lora_file.name
        dest.parent.mkdir(parents=True)
        shutil.copy(lora_file, dest)
        with open(d / "character.toml", "a") as f:
            f.write(f'\n[lora]\nsd15 = "loras/sd15/{lora_file.name}"\n')
        return d

    def board(self, scenes=None, *, name: str = "ep.yaml", **top) -> Path:
        """A storyboard on the tiny model (32x32, 1 step) rendering into ./out."""
        t = self.tiny_model
        model = {"source": str(t.root), "controlnet": {"canny": str(t.controlnet)}, "ip_adapter": str(t.ip_adapter)}
        model.update(image_encoder=str(t.image_encoder), faceid=str(t.faceid))
        data = {
            "project": "robustness",
            "output": "out",
            "defaults": {"model": model, "size": "32x32", "steps": 1},
            "characters": {"obama": str(self.obama)},
            "scenes": scenes or [{"id": "s01", "prompt": "{obama} man"}],
        }
        data.update(top)
        p = self.root / name
        p.write_text(yaml.safe_dump(data, sort_keys=False))
        return p

    def text(self, name: str, text: str | bytes) -> Path:
        p = self.root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        (p.write_bytes if isinstance(text, bytes) else p.write_text)(text)
        return p

    @cached_property
    def images(self) -> Path:
        d = self.root / "imgs"
        d.mkdir()
        shutil.copy(REPO / "tests" / "data" / "faces" / "obama3.jpg", d / "a.jpg")
        return d

    def render_folder(self, images) -> Path:
        """A render folder whose manifest.json holds ``images`` (raw JSON values)."""
        d = self.root / "rendered"
        d.mkdir(exist_ok=True)
        shutil.copy(REPO / "tests" / "data" / "faces" / "obama.jpg", d / "s01.png")
        manifest = {
            "charkit_version": "0",
            "storyboard": "",
            "storyboard_sha256": None,
            "project": "other project",
            "characters": {"obama": str(self.obama)},
            "models": [],
            "images": images,
        }
        (d / "manifest.json").write_text(json.dumps(manifest))
        return d

    @cached_property
    def preset(self) -> Path:
        return self.text(
            "p.toml",
            'family = "sd15"\n[lora]\nrank = 4\nalpha = 4\n[train]\nsteps = 2\nresolution = 64\nmixed_precision = "no"\n'
            '[eval]\nevery = 2\nprompts = ["a photo of {trigger} {class}"]\nseeds = [1]\nsteps = 1\n'
            "[checkpoints]\nreserve_disk_mb = 0\n",
        )

    def train(self, *extra: str) -> list[str]:
        return ["train", str(self.obama), "-m", str(self.tiny), "-p", str(self.preset), "--device", "cpu", "-q", *extra]


@pytest.fixture
def world(tmp_path, tiny_models, tiny_loras, monkeypatch, request) -> World:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHARKIT_CACHE_DIR", str(tmp_path / "cache"))  # each row its own face cache
    return World(tmp_path, tiny_models, tiny_loras, monkeypatch, request)


# -- the table --------------------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    args: Callable[[World], list[str]]
    needles: tuple[str, ...] = ()
    exit_code: int = 2
    errors: int = 1  # `Error:` lines expected (several problems of one input come together)
    then: Callable[[World], object] | None = None  # must hold (truthy, or not raise) after the command
    setup: Callable[[World], object] | None = None
    env: dict = field(default_factory=dict)
    absent: tuple[str, ...] = ()  # must not appear (a hint that is not true here)
    story: bool = False  # the command tells its own story before the error (charkit demo)


def gone(*parts: str) -> Callable[[World], bool]:
    return lambda w: not (w.root.joinpath(*parts)).exists()


def absent_under(folder: str, pattern: str) -> Callable[[World], bool]:
    return lambda w: not list((w.root / folder).rglob(pattern)) if (w.root / folder).exists() else True


def no_out(w: World) -> bool:
    return not (w.root / "out").exists()


def _cache_dir(w: World, where: Path) -> None:
    w.mp.setenv("CHARKIT_CACHE_DIR", str(where))


def _deep_yaml(w: World) -> Path:
    return w.text("deep.yaml", "project: x\nscenes: " + "[" * 3000 + "]" * 3000 + "\n")


def _corrupt_cache(w: World, data: bytes = b"this is not a database" * 100) -> None:
    folder = Path(os.environ["CHARKIT_CACHE_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "faces-v1.sqlite").write_bytes(data)


def _truncated_sqlite(w: World) -> None:
    """A real SQLite face cache whose pages after the first were overwritten (a disk that lost blocks)."""
    import sqlite3

    folder = Path(os.environ["CHARKIT_CACHE_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "faces-v1.sqlite"
    with contextlib.closing(sqlite3.connect(db)) as c, c:
        c.execute(
            "CREATE TABLE faces (backend TEXT, image_sha TEXT, data TEXT, emb BLOB, thumb BLOB,"
            " PRIMARY KEY (backend, image_sha))"
        )
        c.executemany(
            "INSERT INTO faces VALUES (?, ?, '{}', x'', ?)", [("b", f"{i:064d}", b"x" * 900) for i in range(300)]
        )
    data = db.read_bytes()
    db.write_bytes(data[:4096] + b"\xff" * (len(data) - 4096))


def _non_utf8_folder(w: World, name: str = "odd") -> Path:
    d = w.root / name
    d.mkdir()
    shutil.copy(REPO / "tests" / "data" / "faces" / "obama3.jpg", os.fsencode(d) + b"/caf\xe9.jpg")
    return d


def _escaped_in_reports(folder: Path) -> bool:
    """Every report is valid UTF-8 and shows the undecodable byte escaped (\\xe9), never raw or lost."""
    texts = {p.suffix: p.read_bytes().decode("utf-8") for p in folder.glob("report.*")}
    json.loads(texts[".json"])
    return "caf\\xe9.jpg" in texts[".html"] and "caf\\xe9.jpg" in texts[".csv"] and "caf" in texts[".json"]


def _unreadable_non_utf8(w: World) -> Path:
    d = w.root / "odd2"
    d.mkdir()
    shutil.copy(REPO / "tests" / "data" / "faces" / "obama.jpg", d / "ok.jpg")
    with open(os.fsencode(d) + b"/bad\xff.jpg", "wb") as f:
        f.write(b"not an image")
    return d


def _merge_keys(w: World) -> Path:
    text = w.board().read_text().split("scenes:")[0]
    return w.text(
        "merge.yaml", text + "scenes:\n  - &first {id: s01, prompt: '{obama} man'}\n  - <<: *first\n    id: s02\n"
    )


def _wrong_family_lora(w: World) -> Path:
    from safetensors.torch import load_file, save_file

    src = w.lora("sdxl")
    dest = w.root / "wrong.safetensors"
    save_file(load_file(src), dest, metadata={"format": "pt", "charkit.family": "sdxl"})
    return w.character_with_lora(dest)


def _truncated(w: World, name: str, src: Path) -> Path:
    data = src.read_bytes()
    return w.text(name, data[: len(data) // 3])


def _scene_with(w: World, **scene) -> Path:
    return w.board([{"id": "s01", "prompt": "{obama} man", **scene}])


def _tiny_board(w: World, **defaults) -> Path:
    return w.board(defaults={"model": {"source": str(w.tiny)}, **defaults})


def _log_of(w: World) -> str:
    return (w.root / "run.log").read_text() if (w.root / "run.log").exists() else ""


def _diffusers_warns(w: World, text: str) -> None:
    """diffusers logs a warning while the pipeline loads (as its loaders do), under verbosity set by the run."""
    from diffusers.utils import logging as dlog

    from charkit.families import loading

    original = loading.finish_pipeline

    def finish(*args, **kwargs):
        dlog.get_logger("diffusers.pipelines.pipeline_utils").warning(text)
        return original(*args, **kwargs)

    w.mp.setattr(loading, "finish_pipeline", finish)


def _interrupt_at(w: World, module: str, name: str, error=None) -> None:
    """The stage's next call of ``module.name`` meets a stop request (what a Ctrl-C during it amounts to)."""
    import importlib

    from charkit import interrupts

    def stopped(*args, **kwargs):
        if error is not None:
            raise error
        interrupts.request_stop("SIGINT")
        interrupts.raise_if_stopped()

    w.mp.setattr(importlib.import_module(module), name, stopped)


THRESHOLDS = [("nan", "nan"), ("inf", "inf"), ("5", "5.0"), ("-1", "-1.0"), ("0", "0.0"), ("1", "1.0"), ("abc", "abc")]

CASES: list[Case] = [
    # --- output, root and cache locations that cannot be created -----------------------------------------
    Case(
        "render-out-under-a-file",
        lambda w: ["render", str(w.board()), "--out", str(w.file / "out")],
        ("--out", "is a file, not a folder"),
    ),
    Case(
        "render-out-in-proc",
        lambda w: ["render", str(w.board()), "--out", str(w.proc)],
        ("--out", "virtual file system"),
    ),
    Case(
        "render-out-read-only",
        lambda w: ["render", str(w.board()), "--out", str(w.readonly / "out")],
        ("--out", "read-only"),
    ),
    Case(
        "render-output-field-under-a-file",
        lambda w: ["render", str(w.board(output=str(w.file / "o")))],
        ("field 'output'", "is a file"),
    ),
    Case("render-out-is-a-file", lambda w: ["render", str(w.board()), "--out", str(w.file)], ("--out", "is a file")),
    Case(
        "verify-out-under-a-file",
        lambda w: ["verify", str(w.images), "-c", str(w.obama), "--out", str(w.file / "r")],
        ("--out", "is a file"),
    ),
    Case(
        "verify-out-in-proc",
        lambda w: ["verify", str(w.images), "-c", str(w.obama), "--out", str(w.proc)],
        ("--out", "virtual file system"),
    ),
    Case(
        "verify-out-read-only",
        lambda w: ["verify", str(w.images), "-c", str(w.obama), "--out", str(w.readonly / "r")],
        ("--out", "read-only"),
    ),
    Case(
        "verify-out-is-a-file",
        lambda w: ["verify", str(w.images), "-c", str(w.obama), "--out", str(w.file)],
        ("--out", "is a file"),
    ),
    Case(
        "train-out-under-a-file",
        lambda w: w.train("--out", str(w.file / "run")),
        ("--out", "is a file"),
        then=lambda w: not (w.obama / "dataset").exists(),
    ),
    Case("train-out-in-proc", lambda w: w.train("--out", str(w.proc)), ("--out", "virtual file system")),
    Case("train-out-read-only", lambda w: w.train("--out", str(w.readonly / "run")), ("--out", "read-only")),
    Case(
        "train-run-folder-behind-a-file",
        lambda w: (w.obama / "loras").write_text("x") and w.train(),
        ("run folder", "is a file"),
    ),
    Case(
        "init-root-under-a-file",
        lambda w: ["character", "init", "x", "--refs", str(w.images), "--root", str(w.file / "c")],
        ("--root", "is a file"),
    ),
    Case(
        "init-root-in-proc",
        lambda w: ["character", "init", "x", "--refs", str(w.images), "--root", str(w.proc)],
        ("--root", "virtual file system"),
    ),
    Case(
        "init-root-read-only",
        lambda w: ["character", "init", "x", "--refs", str(w.images), "--root", str(w.readonly)],
        ("--root", "read-only"),
    ),
    Case(
        "prep-out-under-a-file", lambda w: ["prep", str(w.obama), "--out", str(w.file / "ds")], ("--out", "is a file")
    ),
    Case("prep-out-in-proc", lambda w: ["prep", str(w.obama), "--out", str(w.proc)], ("--out", "virtual file system")),
    Case(
        "prep-out-read-only", lambda w: ["prep", str(w.obama), "--out", str(w.readonly / "ds")], ("--out", "read-only")
    ),
    Case(
        "cache-dir-under-a-file-verify",
        lambda w: ["verify", str(w.images), "-c", str(w.obama)],
        ("CHARKIT_CACHE_DIR", "is a file"),
        setup=lambda w: _cache_dir(w, w.file / "cache"),
    ),
    Case(
        "cache-dir-under-a-file-prep",
        lambda w: ["prep", str(w.obama)],
        ("CHARKIT_CACHE_DIR", "is a file"),
        setup=lambda w: _cache_dir(w, w.file / "cache"),
        then=lambda w: not (w.obama / "dataset").exists(),
    ),
    Case(
        "cache-dir-in-proc-render-best-of-n",
        lambda w: [
            "render",
            str(w.board(defaults={"model": {"source": str(w.tiny)}, "size": "32x32", "steps": 1, "candidates": 2})),
        ],
        ("CHARKIT_CACHE_DIR", "virtual file system"),
        setup=lambda w: _cache_dir(w, w.proc),
        then=no_out,
    ),
    Case(
        "cache-dir-under-a-file-train",
        lambda w: w.train(),
        ("CHARKIT_CACHE_DIR", "is a file"),
        setup=lambda w: _cache_dir(w, w.file / "cache"),
    ),
    Case(
        "cache-dir-read-only-verify",
        lambda w: ["verify", str(w.images), "-c", str(w.obama)],
        ("CHARKIT_CACHE_DIR", "read-only"),
        setup=lambda w: _cache_dir(w, w.readonly / "cache"),
    ),
    Case(
        "cache-dir-in-proc-render-verify",
        lambda w: ["render", str(w.board()), "--verify"],
        ("CHARKIT_CACHE_DIR", "virtual file system"),
        setup=lambda w: _cache_dir(w, w.proc),
        then=no_out,
    ),
    # --- a full disk ---------------------------------------------------------------------------------------------
    Case(
        "render-out-on-a-full-disk",
        lambda w: ["render", str(w.board()), "--out", str(w.full / "out")],
        ("--out", "is full"),
    ),
    Case(
        "verify-out-on-a-full-disk",
        lambda w: ["verify", str(w.images), "-c", str(w.obama), "--out", str(w.full / "r")],
        ("--out", "is full"),
    ),
    Case("train-out-on-a-full-disk", lambda w: w.train("--out", str(w.full / "run")), ("--out", "is full")),
    Case(
        "init-root-on-a-full-disk",
        lambda w: ["character", "init", "x", "--refs", str(w.images), "--root", str(w.full)],
        ("--root", "is full"),
    ),
    Case(
        "prep-out-on-a-full-disk", lambda w: ["prep", str(w.obama), "--out", str(w.full / "ds")], ("--out", "is full")
    ),
    Case(
        "render-disk-fills-at-the-first-image",
        lambda w: ["render", str(w.board()), "-q"],
        ("s01.png", "ENOSPC"),
        setup=lambda w: inject_enospc(w.mp, w.root / "out"),
        then=no_out,
    ),
    Case(
        "render-disk-fills-at-the-manifest",
        lambda w: ["render", str(w.board()), "-q"],
        ("manifest.json", "ENOSPC"),
        setup=lambda w: inject_enospc(w.mp, w.root / "out", after=1),
        then=lambda w: not (w.root / "out" / "manifest.json").exists() and absent_under("out", "*.part")(w),
    ),
    Case(
        "verify-disk-fills-at-the-report",
        lambda w: ["verify", str(w.images), "-c", str(w.obama), "--out", str(w.root / "rep")],
        ("ENOSPC",),
        setup=lambda w: inject_enospc(w.mp, w.root / "rep"),
        then=lambda w: not list((w.root / "rep").glob("report.*")) if (w.root / "rep").exists() else True,
    ),
    Case(
        "train-disk-fills-at-the-first-checkpoint",
        lambda w: w.train("--run", "r1"),
        ("ENOSPC",),
        setup=lambda w: inject_enospc(w.mp, w.obama / "loras"),
        then=lambda w: not (w.obama / "loras" / "sd15" / "r1").exists(),
    ),
    Case(
        "prep-disk-fills-while-cropping",
        lambda w: ["prep", str(w.obama)],
        ("ENOSPC",),
        setup=lambda w: inject_enospc(w.mp, w.obama),
        then=lambda w: sorted(p.name for p in w.obama.iterdir()) == ["character.toml", "refs"],
    ),
    Case(
        "init-disk-fills-while-copying",
        lambda w: [
            "character",
            "init",
            "x",
            "--refs",
            str(REPO / "tests" / "data" / "faces"),
            "--root",
            str(w.root / "chars"),
        ],
        ("ENOSPC", "chars/.x.init"),
        setup=lambda w: inject_enospc(w.mp, w.root / "chars", after=1),
        then=gone("chars"),
    ),
    Case(
        "init-real-small-disk-fills-while-copying",
        lambda w: [
            "character",
            "init",
            "x",
            "--refs",
            str(REPO / "tests" / "data" / "faces"),
            "--root",
            str(w.small_disk()),
        ],
        ("ENOSPC",),
        then=lambda w: os.listdir(w.root / "small") == [],
    ),
    Case(
        "tiny-model-real-small-disk",
        lambda w: ["tiny-model", "sd15", str(w.small_disk("512k") / "m")],
        ("ENOSPC",),
        then=lambda w: os.listdir(w.root / "small") == [],
    ),
    Case("demo-out-on-a-full-disk", lambda w: ["demo", "--out", str(w.really_full / "demo")], ("ENOSPC",), story=True),
    Case(
        "log-file-unwritable-is-not-an-error",
        lambda w: ["render", str(_tiny_board(w, size="512x512")), "-q"],
        ("rendered 1",),
        exit_code=0,
        errors=0,
        env={"CHARKIT_LOG_FILE": "/proc/charkit.log"},
    ),
    # --- a corrupt face cache -----------------------------------------------------------------------------------
    Case(
        "corrupt-face-cache-verify",
        lambda w: ["verify", str(w.images), "-c", str(w.obama), "--out", "rep"],
        ("warning: ", "face cache was unreadable", "moved it to"),
        exit_code=0,
        errors=0,
        setup=_corrupt_cache,
        then=lambda w: (
            (w.root / "rep" / "report.json").is_file()
            and list(Path(os.environ["CHARKIT_CACHE_DIR"]).glob("*.corrupt-*"))
        ),
    ),
    Case(
        "corrupt-face-cache-prep",
        lambda w: ["prep", str(w.obama)],
        ("face cache was unreadable",),
        exit_code=0,
        errors=0,
        setup=_corrupt_cache,
        then=lambda w: (w.obama / "dataset" / "dataset.json").is_file(),
    ),
    Case(
        "malformed-face-cache-pages",
        lambda w: ["verify", str(w.images), "-c", str(w.obama), "--out", "rep"],
        ("face cache was unreadable",),
        exit_code=0,
        errors=0,
        setup=_truncated_sqlite,
    ),
    # --- deep nesting, duplicate keys, encodings -----------------------------------------------------------------
    Case("storyboard-nested-3000-deep", lambda w: ["render", str(_deep_yaml(w))], ("deep.yaml", "nested more than")),
    Case(
        "storyboard-mapping-nested-deep",
        lambda w: ["render", str(w.text("d.yaml", "a: " + "{b: " * 2000 + "1" + "}" * 2000))],
        ("nested more than",),
    ),
    Case(
        "storyboard-duplicate-top-level-key",
        lambda w: ["render", str(w.text("dup.yaml", w.board().read_text() + "project: again\n"))],
        ("key 'project' is written twice",),
    ),
    Case(
        "storyboard-duplicate-scene-key",
        lambda w: [
            "render",
            str(w.text("dup2.yaml", "project: p\nscenes:\n  - id: s1\n    prompt: a\n    prompt: b\n")),
        ],
        ("line 5", "key 'prompt' is written twice", "first on line 4"),
    ),
    Case(
        "storyboard-merge-keys-still-work",
        lambda w: ["render", str(_merge_keys(w)), "-q"],
        ("rendered 2",),
        exit_code=0,
        errors=0,
    ),
    Case(
        "storyboard-not-utf8",
        lambda w: ["render", str(w.text("latin.yaml", "project: caf\xe9\n".encode("latin-1")))],
        ("not UTF-8",),
    ),
    Case(
        "character-toml-nested-deep",
        lambda w: [
            "character",
            "show",
            str(w.text("deep/character.toml", "name = 'deep'\nx = " + "[" * 3000 + "]" * 3000).parent),
        ],
        ("character.toml", "nested more than"),
    ),
    Case(
        "character-toml-duplicate-key",
        lambda w: ["character", "show", str(w.text("dupc/character.toml", 'name = "a"\nname = "b"\n').parent)],
        ("not valid TOML", "Cannot overwrite"),
    ),
    Case(
        "character-toml-not-utf8",
        lambda w: [
            "character",
            "show",
            str(w.text("lat/character.toml", 'name = "caf\xe9"\n'.encode("latin-1")).parent),
        ],
        ("not UTF-8",),
    ),
    Case(
        "preset-nested-deep",
        lambda w: w.train("-p", str(w.text("deep.toml", 'family = "sd15"\nx = ' + "[" * 3000 + "]" * 3000))),
        ("deep.toml", "nested more than"),
    ),
    Case(
        "preset-duplicate-key",
        lambda w: w.train("-p", str(w.text("dup.toml", 'family = "sd15"\nfamily = "sdxl"\n'))),
        ("dup.toml", "not valid TOML"),
    ),
    Case(
        "preset-not-utf8",
        lambda w: w.train("-p", str(w.text("lat.toml", 'family = "sd15" # caf\xe9\n'.encode("latin-1")))),
        ("not UTF-8",),
    ),
    Case(
        "manifest-nested-deep",
        lambda w: ["verify", str(w.render_folder(json.loads("[" * 500 + "]" * 500)))],
        ("manifest.json",),
    ),
    # --- thresholds ------------------------------------------------------------------------------------------------
    *[
        Case(
            f"verify-threshold-{name}",
            lambda w, v=value: ["verify", str(w.images), "-c", str(w.obama), "--threshold", v],
            ("--threshold", shown),
        )
        for value, shown in [(v, s) for v, s in THRESHOLDS]
        for name in [value.replace("-", "minus")]
    ],
    Case(
        "verify-threshold-in-range-works",
        lambda w: ["verify", str(w.images), "-c", str(w.obama), "--threshold", "0.45", "--out", "rep"],
        ("0.45",),
        exit_code=0,
        errors=0,
    ),
    Case(
        "storyboard-threshold-5",
        lambda w: ["render", str(w.board(identity={"threshold": 5}))],
        ("identity.threshold", "less than 1"),
    ),
    Case(
        "storyboard-threshold-nan",
        lambda w: ["render", str(w.text("nan.yaml", w.board().read_text() + "identity: {threshold: .nan}\n"))],
        ("identity.threshold",),
    ),
    # --- malformed manifests -----------------------------------------------------------------------------------
    Case(
        "manifest-null-image-entry-verify",
        lambda w: ["verify", str(w.render_folder([None]))],
        ("manifest.json", "images"),
    ),
    Case(
        "manifest-entry-without-file",
        lambda w: ["verify", str(w.render_folder([{"scene": "s01", "model": "m"}]))],
        ("manifest.json",),
    ),
    Case(
        "manifest-not-json", lambda w: ["verify", str(w.text("bad/manifest.json", "{nope").parent)], ("manifest.json",)
    ),
    Case(
        "manifest-images-not-a-list", lambda w: ["verify", str(w.render_folder({"a": 1}))], ("manifest.json", "images")
    ),
    Case(
        "manifest-null-image-entry-render",
        lambda w: ["render", str(w.board()), "--out", str(w.render_folder([None]))],
        ("manifest.json",),
        errors=1,
    ),
    # --- names that are not UTF-8 -------------------------------------------------------------------------------
    Case(
        "verify-non-utf8-file-name",
        lambda w: ["verify", str(_non_utf8_folder(w)), "-c", str(w.obama), "--out", "rep"],
        ("report",),
        exit_code=0,
        errors=0,
        then=lambda w: _escaped_in_reports(w.root / "rep"),
    ),
    Case(
        "init-non-utf8-photo-name",
        lambda w: ["character", "init", "x", "--refs", str(_non_utf8_folder(w))],
        ("created",),
        exit_code=0,
        errors=0,
        then=lambda w: os.listdir(w.root / "characters" / "x" / "refs") == ["caf%E9.jpg"],
    ),
    Case(
        "init-unreadable-non-utf8-photo-shown-escaped",
        lambda w: ["character", "init", "y", "--refs", str(_unreadable_non_utf8(w))],
        ("skipped", "bad\\xff.jpg"),
        exit_code=0,
        errors=0,
    ),
    # --- files a render reads after the model loads, checked before --------------------------------------------
    Case(
        "lora-registered-for-the-wrong-family",
        lambda w: [
            "render",
            str(
                w.board(
                    characters={"alice": str(_wrong_family_lora(w))}, scenes=[{"id": "s01", "prompt": "{alice} man"}]
                )
            ),
        ],
        ("lora.alice", "trained for sdxl, not sd15"),
        then=no_out,
    ),
    Case(
        "lora-of-another-model-size",
        lambda w: [
            "render",
            str(
                w.board(
                    characters={"alice": str(w.character_with_lora(w.lora("sdxl")))},
                    scenes=[{"id": "s01", "prompt": "{alice} man"}],
                )
            ),
            "-q",
        ],
        ("LoRA of alice", "does not load into model"),
        then=no_out,
    ),
    Case(
        "lora-truncated-safetensors",
        lambda w: [
            "render",
            str(
                w.board(
                    characters={"alice": str(w.character_with_lora(_truncated(w, "t.safetensors", w.lora())))},
                    scenes=[{"id": "s01", "prompt": "{alice} man"}],
                )
            ),
        ],
        ("lora.alice", "not a readable .safetensors"),
        then=no_out,
    ),
    Case(
        "lora-pickle-that-does-not-load",
        lambda w: [
            "render",
            str(
                w.board(
                    characters={"alice": str(w.character_with_lora(w.text("bad.bin", b"garbage, not a pickle")))},
                    scenes=[{"id": "s01", "prompt": "{alice} man"}],
                )
            ),
            "--allow-pickle-weights",
            "-q",
        ],
        ("LoRA of alice", "does not load"),
        then=no_out,
    ),
    Case(
        "lora-pickle-refused-without-the-flag",
        lambda w: [
            "render",
            str(
                w.board(
                    characters={"alice": str(w.character_with_lora(w.text("p.bin", b"x")))},
                    scenes=[{"id": "s01", "prompt": "{alice} man"}],
                )
            ),
        ],
        ("pickle",),
        then=no_out,
    ),
    Case(
        "control-image-truncated",
        lambda w: [
            "render",
            str(
                _scene_with(
                    w,
                    control={
                        "type": "canny",
                        "image": str(_truncated(w, "c.png", REPO / "examples/poses/two-people-stairs.png")),
                    },
                )
            ),
        ],
        ("control.image", "could not decode"),
        then=no_out,
    ),
    Case(
        "ip-image-truncated",
        lambda w: [
            "render",
            str(
                _scene_with(
                    w,
                    ip_adapter={
                        "mode": "image",
                        "image": str(_truncated(w, "i.jpg", REPO / "examples/layouts/window.jpg")),
                    },
                )
            ),
        ],
        ("ip_adapter.image",),
        then=no_out,
    ),
    Case(
        "control-image-missing",
        lambda w: ["render", str(_scene_with(w, control={"type": "canny", "image": "nope.png"}))],
        ("control.image", "no such file"),
    ),
    # --- storyboards, models and folders ---------------------------------------------------------------------------
    Case(
        "every-problem-of-a-storyboard-at-once",
        lambda w: [
            "render",
            str(
                w.board(
                    [
                        {"id": "s01", "prompt": "{nobody}"},
                        {"id": "s02", "prompt": "{obama}", "control": {"type": "canny", "image": "nope.png"}},
                    ],
                    output=str(w.file / "o"),
                )
            ),
        ],
        ("field 'output'", "unknown character 'nobody'", "nope.png"),
        errors=3,
    ),
    Case(
        "model-less-storyboard-with-model",
        lambda w: ["render", str(w.board(defaults={"size": "32x32", "steps": 1})), "--model", str(w.tiny), "-q"],
        ("rendered 1",),
        exit_code=0,
        errors=0,
    ),
    Case(
        "model-less-storyboard-without-model",
        lambda w: ["render", str(w.board(defaults={"size": "32x32", "steps": 1}))],
        ("no model", "--model"),
    ),
    Case(
        "single-file-model-with-model-config",
        lambda w: [
            "render",
            str(w.board(defaults={"size": "32x32", "steps": 1})),
            "--model",
            str(w.tiny_model.single_file),
            "--model-config",
            str(w.tiny),
            "-q",
        ],
        ("rendered 1",),
        exit_code=0,
        errors=0,
    ),
    Case(
        "single-file-model-offline-without-config",
        lambda w: [
            "render",
            str(w.board(defaults={"size": "32x32", "steps": 1})),
            "--model",
            str(w.tiny_model.single_file),
        ],
        ("single-file", "--model-config"),
    ),
    Case(
        "another-projects-render-folder",
        lambda w: ["render", str(w.board()), "--out", str(w.render_folder([]))],
        ("holds the renders of another project", "--overwrite-other-project"),
        then=lambda w: json.loads((w.root / "rendered" / "manifest.json").read_text())["project"] == "other project",
    ),
    Case(
        "another-projects-folder-allowed-by-flag",
        lambda w: ["render", str(w.board()), "--out", str(w.render_folder([])), "--overwrite-other-project", "-q"],
        ("rendered 1",),
        exit_code=0,
        errors=0,
    ),
    Case(
        "faceid-without-a-pack-gives-true-hints",
        lambda w: ["render", str(_scene_with(w, ip_adapter={"mode": "face"})), "--model", str(w.tiny)],
        ("ip_adapter.mode", "insightface pack", "--face-models"),
        absent=("--backend dlib",),
        then=no_out,
    ),
    Case(
        "optional-scene-with-a-mistake-still-fails",
        lambda w: ["render", str(w.board([{"id": "s01", "prompt": "{obama}", "optional": True, "size": "30x30"}]))],
        ("size",),
    ),
    Case(
        "optional-scene-without-its-lora-is-left-out",
        lambda w: [
            "render",
            str(
                w.board(
                    [
                        {"id": "s01", "prompt": "{obama}"},
                        {"id": "s02", "prompt": "{obama}", "lora": {"obama": 0.5}, "optional": True},
                    ]
                )
            ),
            "-q",
        ],
        ("warning: skipped optional scene 's02'", "rendered 1", "1 optional scenes left out"),
        exit_code=0,
        errors=0,
    ),
    Case(
        "tiny-model-at-full-size-is-scaled-down",
        lambda w: ["render", str(_tiny_board(w, size="512x768", steps=30)), "-q"],
        ("warning: model", "tiny random model", "64x96", "--full-size"),
        exit_code=0,
        errors=0,
        then=lambda w: json.loads((w.root / "out" / "manifest.json").read_text())["images"][0]["width"] == 64,
    ),
    Case(
        "train-tiny-model-at-full-size-is-scaled-down",
        lambda w: w.train(
            "-p", str(REPO / "training" / "sd15-lora.toml"), "--steps", "1", "--eval-every", "1", "--no-register"
        ),
        ("warning: --model", "tiny random model", "64 px"),
        exit_code=0,
        errors=0,
    ),
    Case(
        "unknown-scene-and-bad-out-together",
        lambda w: ["render", str(w.board()), "--scene", "nope", "--out", str(w.proc)],
        ("--scene 'nope'", "virtual file system"),
        errors=2,
    ),
    # --- interrupts reaching the CLI ------------------------------------------------------------------------------
    Case(
        "stop-request-in-verify-exits-130",
        lambda w: ["verify", str(w.images), "-c", str(w.obama), "--out", "rep"],
        ("charkit: interrupted (SIGINT): no report was written",),
        exit_code=130,
        errors=0,
        setup=lambda w: _interrupt_at(w, "charkit.verify.lifecycle", "analyze_file"),
        then=gone("rep"),
    ),
    Case(
        "second-ctrl-c-exits-130",
        lambda w: ["prep", str(w.obama)],
        ("charkit: interrupted (SIGINT)",),
        exit_code=130,
        errors=0,
        setup=lambda w: _interrupt_at(w, "charkit.dataset.prep", "detect", KeyboardInterrupt),
        then=lambda w: sorted(p.name for p in w.obama.iterdir()) == ["character.toml", "refs"],
    ),
    # --- quiet runs and their log ------------------------------------------------------------------------------
    Case(
        "quiet-keeps-library-warnings-in-the-log",
        lambda w: [
            "render",
            str(_scene_with(w, control={"type": "canny", "image": str(REPO / "examples/layouts/window.jpg")})),
            "-q",
        ],
        ("rendered 1",),
        exit_code=0,
        errors=0,
        env={"CHARKIT_LOG_FILE": "run.log"},
        setup=lambda w: _diffusers_warns(w, "a diffusers notice for the log"),
        absent=("a diffusers notice", "Loading pipeline components", "%|"),
        then=lambda w: "a diffusers notice for the log" in _log_of(w),  # diffusers' warning: in the log only
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_and_environment(case: Case, world: World):
    for k, v in case.env.items():
        world.mp.setenv(k, v)
    if case.setup is not None:
        case.setup(world)
    args = case.args(world)
    result = CliRunner().invoke(cli, args)
    out = result.output
    assert result.exit_code == case.exit_code, f"charkit {' '.join(args)}\n{out}"
    assert "Traceback" not in out and not isinstance(result.exception, Exception | KeyboardInterrupt), out
    errors = [line for line in out.splitlines() if line.startswith("Error: ")]
    assert len(errors) == case.errors, out
    if case.exit_code == 2 and not case.story:
        others = [line for line in out.splitlines() if line.strip() and not line.startswith(("Error: ", "warning: "))]
        assert others == [], out  # nothing but the one-line errors
    for needle in case.needles:
        assert needle in out, (needle, out)
    for wrong in case.absent:
        assert wrong not in out, (wrong, out)
    if case.then is not None:
        assert case.then(world), out


def test_the_table_covers_the_issue():
    assert len(CASES) >= 80


def test_registering_a_lora_keeps_the_comments_and_layout_of_character_toml(tmp_path):
    from charkit.character import load_character, register_lora

    d = make_character(tmp_path, "alice", ["obama.jpg"])
    text = "# Alice, our lead\n" + (d / "character.toml").read_text().replace(
        "class_word", "# the noun after the trigger\nclass_word"
    )
    (d / "character.toml").write_text(
        text + "\n[lora]  # trained by charkit train\nsdxl = 'loras/sdxl/best.safetensors'\n"
    )
    register_lora(d, "sd15", d / "loras" / "sd15" / "run-1" / "best.safetensors")
    after = (d / "character.toml").read_text()
    assert (
        after.startswith(text)
        and "# trained by charkit train" in after
        and "sdxl = 'loras/sdxl/best.safetensors'" in after
    )
    assert load_character(d).spec.lora == {
        "sdxl": "loras/sdxl/best.safetensors",
        "sd15": "loras/sd15/run-1/best.safetensors",
    }


def test_a_warning_said_twice_in_one_command_is_one_line(tmp_path, monkeypatch, capsys):
    """`render --repair` plans the render twice (render, then repair): each warning is still one line."""
    import warnings

    from charkit.cli_options import run_log
    from charkit.errors import warn

    monkeypatch.setenv("CHARKIT_LOG_FILE", str(tmp_path / "run.log"))
    with run_log("render"), warnings.catch_warnings():
        warnings.simplefilter("always")  # what a reset warnings registry amounts to
        for _ in range(2):
            warn("model sd15 is a tiny random model: 3 scenes render at 64x96")
        warn("skipped optional scene 's02'")
    assert capsys.readouterr().err.splitlines() == [
        "warning: model sd15 is a tiny random model: 3 scenes render at 64x96",
        "warning: skipped optional scene 's02'",
    ]
