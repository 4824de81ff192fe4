"""The project folder as the studio sees it: scanned, parsed and joined into episodes, runs and takes.

    ROOT/
      characters/<name>/character.toml + refs/    characters (reference photos)
      *.yaml                                       storyboards: one episode each
      renders/<board>/manifest.json + PNGs         render folders (a run per model)
      imports/<label>/charkit-import.json          folders imported from Midjourney, Leonardo, DALL-E, ...
      .../report.json                              verify reports: scores, matched to images by sha256
      .../training_report.json                     training runs

Every request rescans the tree (``os.walk``, hidden folders and virtualenvs skipped) and re-parses
only the files whose size or mtime changed, so the CLI and the studio can work on one folder and
the page always shows what is on disk. A file that cannot be read becomes one line in
:attr:`ProjectView.problems`, never an exception.

Scores are joined by content: a report's ``sha256`` of an image is compared with the image's current
bytes, so a score of an older take never shows next to a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..errors import CharkitError
from ..stagefiles import ImageRecord, ImageScoreRecord, RenderManifest, VerifyReportFile, parse_stage_file

MANIFEST = "manifest.json"
REPORT = "report.json"
TRAINING_REPORT = "training_report.json"
CHARACTER = "character.toml"
IMPORT_RECORD = "charkit-import.json"
IMPORTS_DIR = "imports"
SKIP_DIRS = {"node_modules", "__pycache__", "site-packages", "venv", "candidates"}
MAX_DEPTH = 8
MAX_DIRS = 20_000

#: badge of a take, in the order the "drifted only" filter and summaries count them
BADGES = ("pass", "drift", "missing", "no_face", "error", "unscored", "not_rendered")
DRIFTED = {"drift", "missing"}


# ------------------------------------------------------------------------------------------ imports


class ImportedFile(BaseModel):
    model_config = ConfigDict(extra="ignore")

    file: str = Field(description="Stored file name inside the import folder (made safe).")
    original: str = Field(description="The file name as it was uploaded (shown escaped, never used as a path).")
    scene: str | None = Field(description="Scene id it stands for (files are matched to scenes in sorted order).")
    sha256: str = Field(description="sha256 of the file.")


class ImportRecord(BaseModel):
    """``imports/<label>/charkit-import.json``: a folder of external images imported as a run (written last)."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = Field(default=1, description="Format of this file.")
    charkit_version: str = Field(description="charkit version that imported it.")
    label: str = Field(description="Run label (the folder name).")
    storyboard: str = Field(description="The episode's storyboard, relative to the project root.")
    source: str = Field(description="Where the images came from (e.g. 'upload').")
    imported: str = Field(description="Import time (ISO 8601, local).")
    files: list[ImportedFile] = Field(description="Imported images, in scene order.")
    rejected: list[dict] = Field(default_factory=list, description="Files left out: {name, reason}.")


# -------------------------------------------------------------------------------------------- views


@dataclass
class Score:
    """One backend's verdict on one take."""

    backend: str
    similarity: float | None
    relative: float | None
    status: str  # pass | drift | missing | no_face | error
    source: str  # the report it came from (relative to ROOT), or "render" (best-of-N at render time)
    missing: list[str] = field(default_factory=list)


@dataclass
class Take:
    """What one run holds for one scene: the image (or nothing), its record and its scores."""

    scene: str
    path: Path | None
    record: ImageRecord | None = None
    raw: dict | None = None  # the record as written (fields a newer charkit added, e.g. repair)
    scores: list[Score] = field(default_factory=list)
    original_name: str | None = None  # imports: the uploaded file name

    @property
    def locked(self) -> bool:
        return bool(self.record is not None and self.record.locked)

    @property
    def badge(self) -> str:
        """drift / missing from any backend wins; then error; a face some backend scored beats no face."""
        if self.path is None:
            return "not_rendered"
        statuses = {s.status for s in self.scores}
        for b in ("drift", "missing", "error", "pass", "no_face"):
            if b in statuses:
                return b
        return "unscored"

    def score(self, backend: str) -> Score | None:
        return next((s for s in self.scores if s.backend == backend), None)


@dataclass
class Run:
    """One column of the episode grid: a model's images in a render folder, or an imported folder."""

    id: str
    label: str
    kind: str  # "render" | "import"
    folder: Path
    rel: str  # folder relative to ROOT
    model: str | None = None
    family: str | None = None
    takes: dict[str, Take] = field(default_factory=dict)
    manifest_path: Path | None = None
    source: str | None = None  # imports: where from

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(BADGES, 0)
        for t in self.takes.values():
            out[t.badge] += 1
        return out

    def mean_similarity(self, backend: str) -> float | None:
        sims = [s.similarity for t in self.takes.values() for s in t.scores if s.backend == backend]
        sims = [v for v in sims if v is not None]
        return sum(sims) / len(sims) if sims else None

    @property
    def backends(self) -> list[str]:
        return sorted({s.backend for t in self.takes.values() for s in t.scores})


@dataclass
class SceneRow:
    id: str
    index: int
    prompt: str
    seed: int | None
    candidates: int
    characters: list[str]
    lora: dict[str, float]


@dataclass
class LookRow:
    """A run's look profile, when a report carries one (``look`` in report.json)."""

    run: str
    statements: list[str]
    measures: dict[str, Any]


@dataclass
class Episode:
    id: str
    title: str
    storyboard: Path | None
    rel: str
    board: Any = None  # Storyboard, None for a render folder whose storyboard is gone
    error: str | None = None
    scenes: list[SceneRow] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    look: list[LookRow] = field(default_factory=list)

    def run(self, run_id: str) -> Run | None:
        return next((r for r in self.runs if r.id == run_id), None)

    def scene(self, scene_id: str) -> SceneRow | None:
        return next((s for s in self.scenes if s.id == scene_id), None)

    def drifted(self, scene_id: str) -> bool:
        return any(r.takes.get(scene_id) is not None and r.takes[scene_id].badge in DRIFTED for r in self.runs)

    @property
    def drifted_count(self) -> int:
        return sum(self.drifted(s.id) for s in self.scenes)

    @property
    def render_runs(self) -> list[Run]:
        return [r for r in self.runs if r.kind == "render"]


@dataclass
class CharacterEntry:
    name: str
    folder: Path
    rel: str
    character: Any = None  # charkit.character.Character
    error: str | None = None


@dataclass
class TrainingEntry:
    id: str
    rel: str
    folder: Path
    report: dict | None = None
    checkpoints: list = field(default_factory=list)  # CheckpointScore
    error: str | None = None


@dataclass
class ProjectView:
    """One consistent picture of the project, built per request."""

    root: Path
    episodes: list[Episode]
    characters: list[CharacterEntry]
    trainings: list[TrainingEntry]
    problems: list[str]

    def episode(self, eid: str) -> Episode | None:
        return next((e for e in self.episodes if e.id == eid), None)

    def character(self, name: str) -> CharacterEntry | None:
        return next((c for c in self.characters if c.name == name), None)

    def training(self, tid: str) -> TrainingEntry | None:
        return next((t for t in self.trainings if t.id == tid), None)


# ------------------------------------------------------------------------------------------ scanning


@dataclass
class _Scan:
    storyboards: list[Path] = field(default_factory=list)
    renders: list[Path] = field(default_factory=list)
    reports: list[Path] = field(default_factory=list)
    characters: list[Path] = field(default_factory=list)
    trainings: list[Path] = field(default_factory=list)
    imports: list[Path] = field(default_factory=list)
    truncated: bool = False


def short_id(prefix: str, text: str) -> str:
    """A stable opaque handle for a project item (looked up in the scan, never used as a path)."""
    return prefix + hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def scan_tree(root: Path) -> _Scan:
    """Every file the studio reads, found by name under ``root`` (hidden folders, virtualenvs, node_modules skipped)."""
    out = _Scan()
    for seen, (dirpath, dirnames, filenames) in enumerate(os.walk(root), start=1):
        d = Path(dirpath)
        depth = len(d.relative_to(root).parts)
        dirnames[:] = sorted(n for n in dirnames if not n.startswith(".") and n not in SKIP_DIRS and depth < MAX_DEPTH)
        names = set(filenames)
        if seen > MAX_DIRS:
            out.truncated = True
            dirnames[:] = []
        if MANIFEST in names:
            out.renders.append(d)
        if REPORT in names:
            out.reports.append(d / REPORT)
        if CHARACTER in names:
            out.characters.append(d)
        if TRAINING_REPORT in names:
            out.trainings.append(d)
        if IMPORT_RECORD in names:
            out.imports.append(d)
        for n in sorted(names):
            if n.endswith((".yaml", ".yml")) and not n.startswith("."):
                out.storyboards.append(d / n)
    return out


class _Memo:
    """Parse results cached by (path, size, mtime): a changed file is parsed again, an unchanged one never."""

    def __init__(self):
        self._data: dict[tuple[str, Path], tuple[tuple[int, int], Any]] = {}
        self._lock = threading.Lock()

    def get(self, kind: str, path: Path, parse: Callable[[Path], Any]) -> Any:
        try:
            st = path.stat()
        except OSError as e:
            return CharkitError(f"{path}: cannot read it ({e.strerror or e})")
        stamp = (st.st_mtime_ns, st.st_size)
        hit = self._data.get((kind, path))
        if hit is not None and hit[0] == stamp:
            return hit[1]
        try:
            value = parse(path)
        except CharkitError as e:
            value = e
        with self._lock:
            self._data[(kind, path)] = (stamp, value)
        return value


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise CharkitError(f"{path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    except (ValueError, RecursionError) as e:
        raise CharkitError(f"{path}: not valid JSON ({str(e)[:120]})") from None


def _parse_storyboard(path: Path):
    """A Storyboard, None for YAML that is not a storyboard (no ``scenes:``), or raise one line."""
    from ..configfiles import parse_yaml
    from ..render.storyboard import load_storyboard

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    try:
        head = parse_yaml(text, str(path))
    except CharkitError:  # broken YAML that looks like a storyboard: its one-line error is worth showing
        head = {"scenes": None} if re.search(r"^scenes\s*:", text, re.M) else None
    if not isinstance(head, dict) or "scenes" not in head:
        return None
    return load_storyboard(path)


def _parse_manifest(path: Path) -> tuple[RenderManifest, list[dict]]:
    data = _read_json(path)
    manifest = parse_stage_file(RenderManifest, data, str(path))
    return manifest, [d if isinstance(d, dict) else {} for d in data.get("images", [])]


def _parse_report(path: Path) -> tuple[VerifyReportFile, Any]:
    data = _read_json(path)
    look = data.pop("look", None) if isinstance(data, dict) else None  # a look profile, when the report has one
    return parse_stage_file(VerifyReportFile, data, str(path)), look


def _parse_import(path: Path) -> ImportRecord:
    return parse_stage_file(ImportRecord, _read_json(path), str(path))


def _parse_character(path: Path):
    from ..character import load_character

    return load_character(path.parent)


def _parse_training(path: Path) -> tuple[dict, list]:
    from ..train.evaluate import CheckpointScore

    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("checkpoints"), list):
        raise CharkitError(f"{path}: not a charkit training report (no checkpoints list)")
    try:
        checkpoints = [CheckpointScore.from_dict(c) for c in data["checkpoints"]]
    except (KeyError, TypeError, ValueError) as e:
        raise CharkitError(f"{path}: checkpoints: unreadable entry ({type(e).__name__}: {e})") from None
    return data, checkpoints


def _look_rows(look: Any) -> list[LookRow]:
    """Look comparisons from a report's ``look`` (a list of runs, or a mapping run -> comparison)."""
    items = look.items() if isinstance(look, dict) else enumerate(look if isinstance(look, list) else [])
    rows = []
    for key, value in items:
        if not isinstance(value, dict):
            continue
        name = str(value.get("name") or value.get("run") or key)
        statements = [str(s) for s in value.get("statements", []) if isinstance(s, (str, int, float))]
        measures = value.get("measures") if isinstance(value.get("measures"), dict) else {}
        rows.append(LookRow(run=name, statements=statements, measures=measures))
    return rows


# ------------------------------------------------------------------------------------------- project


class Project:
    """The studio's project: ``view()`` rescans ROOT and joins what it found.

    >>> view = Project(root, files).view()  # doctest: +SKIP
    >>> [e.title for e in view.episodes]  # doctest: +SKIP
    ['Episode 1']
    """

    def __init__(self, root: str | os.PathLike, files):
        self.root = Path(root).resolve()
        self.files = files  # charkit.studio.files.FileIndex
        self._memo = _Memo()

    def rel(self, path: Path) -> str:
        try:
            return Path(path).resolve().relative_to(self.root).as_posix() or "."
        except ValueError:
            return str(path)

    def view(self) -> ProjectView:
        scan = scan_tree(self.root)
        problems: list[str] = []
        if scan.truncated:
            problems.append(f"{self.root}: more than {MAX_DIRS} folders; only the first were scanned")
        scores, looks = self._score_index(scan, problems)
        episodes: dict[Path, Episode] = {}
        for p in scan.storyboards:
            board = self._memo.get("storyboard", p, _parse_storyboard)
            if board is None:
                continue
            rel = self.rel(p)
            ep = Episode(id=short_id("e", rel), title=p.stem, storyboard=p.resolve(), rel=rel)
            if isinstance(board, CharkitError):
                ep.error = str(board)
            else:
                ep.board, ep.title = board, board.project
                ep.scenes = _scene_rows(board)
            episodes[p.resolve()] = ep
        for folder in scan.renders:
            parsed = self._memo.get("manifest", folder / MANIFEST, _parse_manifest)
            if isinstance(parsed, CharkitError):
                problems.append(str(parsed))
                continue
            manifest, raw = parsed
            board_path = (folder / manifest.storyboard).resolve() if manifest.storyboard else None
            ep = episodes.get(board_path) if board_path is not None else None
            if ep is None:  # a render folder whose storyboard is not in the project: shown on its own
                rel = self.rel(folder)
                ep = Episode(id=short_id("e", rel + "/"), title=manifest.project, storyboard=None, rel=rel)
                ep.scenes = _scenes_from_records(manifest.images)
                episodes[folder.resolve()] = ep
            ep.runs.extend(self._render_runs(folder, manifest, raw, ep, scores))
        for folder in scan.imports:
            rec = self._memo.get("import", folder / IMPORT_RECORD, _parse_import)
            if isinstance(rec, CharkitError):
                problems.append(str(rec))
                continue
            ep = episodes.get((self.root / rec.storyboard).resolve())
            if ep is not None:
                ep.runs.append(self._import_run(folder, rec, scores))
        for ep in episodes.values():  # the look rows of every report that scored one of the episode's takes
            shas = {self._sha(t.path) for r in ep.runs for t in r.takes.values() if t.path is not None}
            ep.look = [row for _, (rows, scored) in sorted(looks.items()) if scored & shas for row in rows]
        characters = []
        for d in scan.characters:
            ch = self._memo.get("character", d / CHARACTER, _parse_character)
            entry = CharacterEntry(name=d.name, folder=d, rel=self.rel(d))
            if isinstance(ch, CharkitError):
                entry.error = str(ch)
            else:
                entry.name, entry.character = ch.name, ch
            characters.append(entry)
        trainings = []
        for d in scan.trainings:
            rel = self.rel(d)
            t = TrainingEntry(id=short_id("t", rel), rel=rel, folder=d)
            parsed = self._memo.get("training", d / TRAINING_REPORT, _parse_training)
            if isinstance(parsed, CharkitError):
                t.error = str(parsed)
            else:
                t.report, t.checkpoints = parsed
            trainings.append(t)
        eps = sorted(episodes.values(), key=lambda e: (e.storyboard is None, e.rel))
        return ProjectView(self.root, eps, sorted(characters, key=lambda c: c.name), trainings, problems)

    # -- joins ------------------------------------------------------------------------------

    def _score_index(self, scan: _Scan, problems: list[str]):
        """sha256 -> {backend: (mtime, score)} over every report; each report's look rows and the images it scored."""
        index: dict[str, dict[str, tuple[int, Score]]] = {}
        looks: dict[Path, tuple[list[LookRow], set[str]]] = {}
        for path in scan.reports:
            parsed = self._memo.get("report", path, _parse_report)
            if isinstance(parsed, CharkitError):
                problems.append(str(parsed))
                continue
            report, look = parsed
            if look:
                looks[path] = (_look_rows(look), {img.sha256 for img in report.images if img.sha256})
            mtime = path.stat().st_mtime_ns
            rel = self.rel(path)
            for img in report.images:
                if not img.sha256:
                    continue
                for s in _scores_of(img, report.backend.name, rel):
                    best = index.setdefault(img.sha256, {}).get(s.backend)
                    if best is None or best[0] <= mtime:
                        index[img.sha256][s.backend] = (mtime, s)
        return index, looks

    def _sha(self, path: Path) -> str | None:
        try:
            return self.files.sha256(path)
        except OSError:  # gone since the scan
            return None

    def _scores(self, path: Path, index, record: ImageRecord | None) -> list[Score]:
        sha = self._sha(path)
        if sha is None:
            return []
        found = {b: s for b, (_, s) in index.get(sha, {}).items()}
        ident = record.identity if record is not None else None
        if ident and ident.get("backend") and ident["backend"] not in found and (record.sha256 == sha):
            status = ident.get("status") or "no_face"
            found[ident["backend"]] = Score(ident["backend"], ident.get("similarity"), None, status, "render")
        return [found[b] for b in sorted(found)]

    def _render_runs(self, folder: Path, manifest: RenderManifest, raw: list[dict], ep: Episode, index) -> list[Run]:
        rel = self.rel(folder)
        labels = list(dict.fromkeys([m.label for m in manifest.models] + [r.model for r in manifest.images]))
        runs = []
        default_out = ep.board.output_dir().resolve() if ep.board is not None else None
        for label in labels:
            records = [(r, d) for r, d in zip(manifest.images, raw + [{}] * len(manifest.images)) if r.model == label]
            if not records and len(labels) > 1:
                continue
            name = label if folder.resolve() == default_out else f"{folder.name}/{label}"
            run = Run(
                id=short_id("r", f"{rel}\0{label}"),
                label=name,
                kind="render",
                folder=folder.resolve(),
                rel=rel,
                model=label,
                family=next((m.family for m in manifest.models if m.label == label), None),
                manifest_path=folder / MANIFEST,
            )
            for rec, d in records:
                p = folder / rec.file
                inside = self.files.inside(p)
                path = inside if inside is not None and inside.is_relative_to(folder.resolve()) else None
                take = Take(scene=rec.scene, path=path, record=rec, raw=d)
                if path is not None:
                    take.scores = self._scores(path, index, rec)
                run.takes[rec.scene] = take
            runs.append(run)
        return runs

    def _import_run(self, folder: Path, rec: ImportRecord, index) -> Run:
        rel = self.rel(folder)
        run = Run(
            id=short_id("r", f"{rel}\0import"),
            label=rec.label,
            kind="import",
            folder=folder.resolve(),
            rel=rel,
            source=rec.source,
        )
        for f in rec.files:
            if f.scene is None:
                continue
            path = self.files.inside(folder / f.file)
            path = path if path is not None and path.is_relative_to(folder.resolve()) else None
            take = Take(scene=f.scene, path=path, original_name=f.original)
            if path is not None:
                take.scores = self._scores(path, index, None)
            run.takes[f.scene] = take
        return run


def _scores_of(img: ImageScoreRecord, backend: str, source: str) -> list[Score]:
    """One Score per backend: a report scored by several (a panel) lists each backend's own verdict."""
    if len(img.scores) < 2:
        return [_score_of(img, backend, source)]
    return [
        Score(name, v.similarity, None, "missing" if v.status == "drift" and img.missing else v.status, source)
        for name, v in img.scores.items()
    ]


def _score_of(img: ImageScoreRecord, backend: str, source: str) -> Score:
    status = img.status
    if status == "drift" and img.missing:
        status = "missing"
    return Score(backend, img.similarity, img.relative, status, source, list(img.missing))


def _scene_rows(board) -> list[SceneRow]:
    from ..render.jobs import default_seed
    from ..render.storyboard import placeholders

    d = board.defaults
    rows = []
    for i, s in enumerate(board.scenes):
        rows.append(
            SceneRow(
                id=s.id,
                index=i,
                prompt=s.prompt,
                seed=s.seed if s.seed is not None else default_seed(d.seed, s.id),
                candidates=s.candidates or d.candidates,
                characters=list(s.characters) if s.characters is not None else placeholders(s.prompt),
                lora=dict(s.lora),
            )
        )
    return rows


def _scenes_from_records(records: list[ImageRecord]) -> list[SceneRow]:
    rows: dict[str, SceneRow] = {}
    for r in records:
        if r.scene not in rows:
            rows[r.scene] = SceneRow(r.scene, len(rows), r.prompt, r.seed, len(r.candidates) or 1, r.characters, {})
    return list(rows.values())
