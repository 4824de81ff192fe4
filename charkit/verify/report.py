"""Turn a :class:`~charkit.verify.results.VerifyReport` into report.json, report.csv and report.html.

The steps are public and run in this order by :func:`write_report`::

    check_output -> render_json / render_csv / render_html -> commit

Everything is rendered in memory first, then all three files are staged as complete
temporary files and moved into place together, so a failure leaves the previous report
(or nothing) behind, never a mix.

HTML safety: the template environment autoescapes everything; user text (paths, run
labels, character names, scene ids, notes, errors) only ever reaches the page through
``{{ }}``, and nothing is marked safe. Thumbnails are inlined as ``data:`` URIs built
from base64 of the bytes, the drift plot is inline SVG computed here, and a
Content-Security-Policy forbids every network fetch and every script.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from jinja2 import Environment

from ..identity.results import ImageScore
from ..images import image_mime
from ..look import MEASURES
from ..report import check_output, commit, data_uri
from ..report import environment as report_environment
from ..stagefiles import VerifyReportFile, parse_stage_file
from .look_view import LookView, build_look_views
from .results import VerifyReport

#: Columns of report.csv, one row per (image, expected character); then ``<backend>_similarity`` and
#: ``<backend>_status`` for each scoring backend (:func:`csv_columns`).
CSV_COLUMNS = (
    "path",
    "run",
    "scene",
    "model",
    "order",
    "status",
    "character",
    "face",
    "similarity",
    "distance",
    "relative",
    "faces",
    "missing",
    "swapped",
    "error",
    "scored_by",
    "conditioned_by",
    "agree",
    *(f"look_{m}" for m in MEASURES),
    "look_face_px",
)

#: Run colours (Okabe-Ito, colour-blind safe), assigned in run order and cycled.
RUN_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#7A7A00", "#000000")

REPORT_FILES = ("report.json", "report.csv", "report.html")

# Cells starting with these are formulas to a spreadsheet (OWASP "CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class ReportPaths:
    """Where :func:`write_report` put the three files."""

    json: Path
    csv: Path
    html: Path


# --------------------------------------------------------------------------------------
# write_report: the lifecycle
# --------------------------------------------------------------------------------------


def write_report(report: VerifyReport, out_dir: Path, *, thumbnails: dict[str, bytes] | None = None) -> ReportPaths:
    """Write report.json, report.csv and report.html into ``out_dir``, all or nothing.

    ``thumbnails`` maps ``ImageScore.path`` to JPEG (or PNG) bytes, e.g. from
    :func:`charkit.images.make_thumbnail`; images without one get a placeholder.

    >>> paths = write_report(report, Path("out"), thumbnails={"a.png": jpeg})  # doctest: +SKIP
    >>> paths.html.name  # doctest: +SKIP
    'report.html'
    """
    out = check_output(out_dir)
    texts = {
        "report.json": render_json(report),
        "report.csv": render_csv(report),
        "report.html": render_html(report, thumbnails),
    }
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        commit(out, texts)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only succeeds when nothing was left in it
        raise
    return ReportPaths(json=out / "report.json", csv=out / "report.csv", html=out / "report.html")


# --------------------------------------------------------------------------------------
# report.json
# --------------------------------------------------------------------------------------


def render_json(report: VerifyReport) -> str:
    """``report.json``: :meth:`VerifyReport.to_dict` validated as :class:`~charkit.stagefiles.VerifyReportFile`,
    strict JSON (no NaN/Infinity)."""
    record = parse_stage_file(VerifyReportFile, report.to_dict(), "report.json")
    try:
        return json.dumps(record.model_dump(mode="json", by_alias=True), indent=2, allow_nan=False) + "\n"
    except ValueError as e:
        raise ValueError(
            f"report.json: the report holds a NaN or infinite number ({e}); this is a scoring bug"
        ) from None


# --------------------------------------------------------------------------------------
# report.csv
# --------------------------------------------------------------------------------------


def csv_rows(report: VerifyReport) -> list[dict[str, str]]:
    """One row per (image, expected character), cells as they are written (see docs/reports.md).

    ``status`` is this character's verdict in this image (``pass``/``drift``/``missing``),
    or the image's own status when it has no match (``no_face``/``error``).
    Text cells that a spreadsheet would run as a formula are prefixed with ``'``.
    """
    rows: list[dict[str, str]] = []
    for img in report.images:
        by_char = {m.character: m for m in img.matches}
        chars: list[str | None] = list(dict.fromkeys([*img.expected, *by_char]))
        if not chars:
            chars = [None]
        for ch in chars:
            m = by_char.get(ch) if ch is not None else None
            if m is not None:
                status = img.status if img.status in ("no_face", "error") else m.status
                face, sim, dist, rel = m.face, m.similarity, m.distance, m.relative
            elif ch is None:  # an image scored without a named character
                status, face, sim, dist, rel = img.status, None, img.similarity, img.distance, img.relative
            else:
                status = img.status if img.status in ("no_face", "error") else "missing"
                face = sim = dist = rel = None
            rows.append(
                {**_row(img, ch, status, face, sim, dist, rel), **_backend_cells(report, img, m), **_look_cells(m)}
            )
    return rows


def csv_columns(report: VerifyReport) -> tuple[str, ...]:
    """The header of ``report.csv``: :data:`CSV_COLUMNS`, then two columns per scoring backend."""
    return CSV_COLUMNS + tuple(f"{b.name}_{k}" for b in report.members for k in ("similarity", "status"))


def _backend_cells(report: VerifyReport, img: ImageScore, m) -> dict[str, str]:
    out = {"scored_by": _text(";".join(img.scored_by)), "conditioned_by": _text(img.conditioned_by)}
    out["agree"] = "" if m is None or m.agree is None else ("yes" if m.agree else "no")
    for b in report.members:
        own = m.scores.get(b.name) if m is not None else None
        verdict = img.scores.get(b.name)
        if verdict is not None and verdict.status in ("no_face", "error") and (own is None or own.status == "missing"):
            status = verdict.status  # this backend saw no face it could score, or could not read the file
        elif own is not None:
            status = own.status
        else:
            status = "missing" if verdict is not None else None
        out[f"{b.name}_similarity"] = _num(own.similarity if own is not None else None)
        out[f"{b.name}_status"] = _text(status)
    return out


def _look_cells(m) -> dict[str, str]:
    look = m.look if m is not None else None
    out = {f"look_{k}": _num(None if look is None else float(getattr(look, k))) for k in MEASURES}
    out["look_face_px"] = _num(None if look is None else int(look.face_px))
    return out


def _row(img: ImageScore, ch, status, face, sim, dist, rel) -> dict[str, str]:
    return {
        "path": _text(img.path),
        "run": _text(img.run),
        "scene": _text(img.scene),
        "model": _text(img.model),
        "order": _num(img.order),
        "status": _text(status),
        "character": _text(ch),
        "face": _num(face),
        "similarity": _num(sim),
        "distance": _num(dist),
        "relative": _num(rel),
        "faces": _num(len(img.faces)),
        "missing": _text(";".join(img.missing)),
        "swapped": _text(";".join("<->".join(pair) for pair in img.swapped)),
        "error": _text(img.error),
    }


def render_csv(report: VerifyReport) -> str:
    """``report.csv`` as text (UTF-8, ``\\n`` line ends, header row first)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=csv_columns(report), lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(report))
    return buf.getvalue()


def _text(value: object) -> str:
    if value is None:
        return ""
    s = str(value)
    return "'" + s if s.startswith(_FORMULA_START) else s


def _num(value: float | int | None) -> str:
    # Numbers are written as numbers (a negative similarity stays "-0.12", not "'-0.12").
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {value!r}")
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        raise ValueError(f"report.csv: non-finite number {value!r}; this is a scoring bug")
    return repr(round(float(value), 4))


# --------------------------------------------------------------------------------------
# report.html: view model (all geometry computed here, all text escaped by the template)
# --------------------------------------------------------------------------------------


@dataclass
class Slot:
    """One position along the scene order: a scene id, or a bare order number for plain folders."""

    key: tuple
    label: str
    order: int
    index: int = 0


@dataclass
class Box:
    """A face box in the original image's pixel space (the overlay's viewBox)."""

    x: float
    y: float
    w: float
    h: float
    matched: bool
    status: str  # match status for the highlighted face, "" for other faces
    label: str
    label_x: float
    label_y: float


@dataclass
class MatchLine:
    character: str
    similarity: str
    relative: str
    status: str
    backends: list[BackendLine] = field(default_factory=list)  # shown when several backends scored
    agree: bool | None = None


@dataclass
class BackendLine:
    """One backend's opinion of a character, as a card lists it."""

    backend: str
    similarity: str
    status: str
    counted: bool


@dataclass
class Disagreement:
    """A character face on which the backends disagree (a row of the disagreements table)."""

    run: str
    scene: str
    name: str
    path: str
    character: str
    combined: str
    backends: list[BackendLine]


@dataclass
class Card:
    """One image cell of the grid."""

    image: ImageScore
    name: str
    slot: Slot
    run_index: int
    colour: str
    thumb: str | None  # data: URI
    width: int | None
    height: int | None
    boxes: list[Box]
    font: float
    matches: list[MatchLine]
    swapped: list[str]
    panel: bool = False


@dataclass
class PlotPoint:
    x: float
    y: float
    status: str
    title: str


@dataclass
class PlotMarker:
    path: str  # SVG path data of the marker shape
    status: str
    title: str


@dataclass
class PlotSeries:
    run: str
    colour: str
    points: list[PlotPoint]
    markers: list[PlotMarker]

    @property
    def polyline(self) -> str:
        return " ".join(f"{p.x:.1f},{p.y:.1f}" for p in self.points)


@dataclass
class HLine:
    y: float
    label: str
    value: str
    kind: str  # "threshold" | "baseline"
    label_y: float = 0.0  # nudged so labels of close lines do not overlap


@dataclass
class Plot:
    width: int
    height: int
    left: float
    right: float
    top: float
    bottom: float
    yticks: list[tuple[float, str]]
    xticks: list[tuple[float, str, str]]  # x, short label, full label
    series: list[PlotSeries]
    lines: list[HLine]


@dataclass
class RunView:
    run: str
    colour: str
    summary: object | None  # RunSummary


@dataclass
class GridRow:
    slot: Slot
    cells: list[list[Card]]  # one list of cards per run


@dataclass
class ReportView:
    report: VerifyReport
    runs: list[RunView]
    slots: list[Slot]
    cards: list[Card]
    rows: list[GridRow]
    plot: Plot
    headline: dict = field(default_factory=dict)
    panel: bool = False  # several backends scored
    disagreements: list[Disagreement] = field(default_factory=list)
    looks: list[LookView] = field(default_factory=list)


def scene_slots(images: list[ImageScore]) -> tuple[list[Slot], list[Slot]]:
    """Positions along the scene order, and the slot of each image (same order as ``images``).

    Images with a scene id share the slot of that id. Images without one (a plain folder,
    e.g. downloads from a SaaS tool) join the scene that sits at their ``order`` in
    another run, so external images line up with the rendered scenes they correspond to;
    failing that they get a slot of their own, labelled ``#order``.
    """
    by_order: dict[int, str] = {}
    for img in sorted(images, key=lambda i: i.order):
        if img.scene is not None:
            by_order.setdefault(img.order, img.scene)
    slots: dict[tuple, Slot] = {}
    of_image: list[Slot] = []
    for img in images:
        scene = img.scene if img.scene is not None else by_order.get(img.order)
        key = ("scene", scene) if scene is not None else ("order", img.order)
        slot = slots.get(key)
        if slot is None:
            slot = slots[key] = Slot(key=key, label=scene if scene is not None else f"#{img.order}", order=img.order)
        slot.order = min(slot.order, img.order)
        of_image.append(slot)
    ordered = sorted(slots.values(), key=lambda s: s.order)  # stable: ties keep first appearance
    for i, s in enumerate(ordered):
        s.index = i
    return ordered, of_image


def build_view(report: VerifyReport, thumbnails: dict[str, bytes] | None = None) -> ReportView:
    """Everything the template draws, computed from the report (numbers and plain strings only)."""
    thumbs = _data_uris(report, thumbnails or {})
    run_names = list(dict.fromkeys([r.run for r in report.runs] + [i.run for i in report.images]))
    summaries = {r.run: r for r in report.runs}
    runs = [
        RunView(run=r, colour=RUN_COLOURS[k % len(RUN_COLOURS)], summary=summaries.get(r))
        for k, r in enumerate(run_names)
    ]
    run_index = {r: k for k, r in enumerate(run_names)}
    slots, of_image = scene_slots(report.images)

    cards = [
        _card(img, slot, run_index[img.run], runs[run_index[img.run]].colour, thumbs.get(img.path))
        for img, slot in zip(report.images, of_image)
    ]
    cards.sort(key=lambda c: (c.slot.index, c.run_index, c.image.order))  # stable within ties
    rows = []
    for slot in slots:
        cells: list[list[Card]] = [[] for _ in runs]
        for c in cards:
            if c.slot is slot:
                cells[c.run_index].append(c)
        rows.append(GridRow(slot=slot, cells=cells))

    counts = {s: sum(1 for i in report.images if i.status == s) for s in ("pass", "drift", "no_face", "error")}
    headline = {"images": len(report.images), "scored": counts["pass"] + counts["drift"], **counts}
    return ReportView(
        report=report,
        runs=runs,
        slots=slots,
        cards=cards,
        rows=rows,
        plot=build_plot(report, runs, slots, cards),
        headline=headline,
        panel=len(report.members) > 1,
        disagreements=[d for c in cards for d in _disagreements(c)],
        looks=build_look_views(report.look, {r.run: r.colour for r in runs}),
    )


def _backend_lines(m, scored_by: list[str]) -> list[BackendLine]:
    return [
        BackendLine(backend=n, similarity=_fmt(b.similarity), status=b.status, counted=n in scored_by)
        for n, b in m.scores.items()
    ]


def _disagreements(card: Card) -> list[Disagreement]:
    return [
        Disagreement(
            run=card.image.run,
            scene=card.slot.label,
            name=card.name,
            path=card.image.path,
            character=m.character,
            combined=f"{m.status} {_fmt(m.similarity)}",
            backends=_backend_lines(m, card.image.scored_by),
        )
        for m in card.image.matches
        if m.agree is False
    ]


def _data_uris(report: VerifyReport, thumbnails: dict[str, bytes]) -> dict[str, str]:
    wanted = {i.path for i in report.images}
    out = {}
    for path, data in thumbnails.items():
        path = str(path)  # accept Path keys too
        if path not in wanted:
            continue
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"thumbnail for {path!r} must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if image_mime(data) is None:
            raise ValueError(f"thumbnail for {path!r} is not JPEG or PNG bytes (use charkit.images.make_thumbnail)")
        out[path] = data_uri(data)
    return out


def _card(img: ImageScore, slot: Slot, run_index: int, colour: str, thumb: str | None) -> Card:
    w, h = img.width, img.height
    sized = isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0
    font = max(w, h) * 0.05 if sized else 0.0
    boxes: list[Box] = []
    if sized:
        labels: dict[int, list] = {}
        for m in img.matches:
            if m.face is not None and 0 <= m.face < len(img.faces):
                labels.setdefault(m.face, []).append(m)
        for k, f in enumerate(img.faces):
            x0, y0, x1, y1 = (float(v) for v in f.box)
            x0, x1 = sorted((_clamp(x0, 0, w), _clamp(x1, 0, w)))
            y0, y1 = sorted((_clamp(y0, 0, h), _clamp(y1, 0, h)))
            ms = labels.get(k, [])
            text = " / ".join(f"{m.character} {_fmt(m.similarity, 2)}" for m in ms)
            status = "drift" if any(m.status != "pass" for m in ms) else ("pass" if ms else "")
            # Label above the box when there is room, else just inside its top edge.
            ly = y0 - font * 0.3 if y0 > font * 1.2 else y0 + font * 1.05
            boxes.append(
                Box(
                    x=x0,
                    y=y0,
                    w=x1 - x0,
                    h=y1 - y0,
                    matched=bool(ms),
                    status=status,
                    label=text,
                    label_x=x0,
                    label_y=ly,
                )
            )
    matches = [
        MatchLine(
            character=m.character,
            similarity=_fmt(m.similarity),
            relative=_rel(m.relative),
            status=m.status,
            backends=_backend_lines(m, img.scored_by) if len(m.scores) > 1 else [],
            agree=m.agree,
        )
        for m in img.matches
    ]
    return Card(
        image=img,
        name=PurePath(img.path.replace("\\", "/")).name or img.path,
        slot=slot,
        run_index=run_index,
        colour=colour,
        thumb=thumb,
        width=w if sized else None,
        height=h if sized else None,
        boxes=boxes,
        font=font,
        matches=matches,
        swapped=[" \u2194 ".join(p) for p in img.swapped],
        panel=len(img.scores) > 1,
    )


def build_plot(report: VerifyReport, runs: list[RunView], slots: list[Slot], cards: list[Card]) -> Plot:
    """The drift plot: similarity (y) along the scene order (x), one series per run.

    Images without a similarity (no face, unreadable, character missing) are drawn as
    markers on the x axis. The threshold and each character's baseline mean are
    horizontal lines.
    """
    n = max(1, len(slots))
    left, right_pad, top, bottom_pad = 56.0, 150.0, 16.0, 92.0
    step = 56.0
    width = int(max(640.0, left + right_pad + n * step))
    height = 360
    right = width - right_pad
    bottom = height - bottom_pad
    step = (right - left) / n

    values = [c.image.similarity for c in cards if _finite(c.image.similarity)]
    values.append(report.threshold)
    values += [c.baseline_mean for c in report.characters if _finite(c.baseline_mean)]
    lo, hi = min(values) - 0.05, max(values) + 0.05
    tick = _nice_step((hi - lo) / 5)
    lo, hi = math.floor(lo / tick) * tick, math.ceil(hi / tick) * tick

    def y_of(v: float) -> float:
        return bottom - (v - lo) / (hi - lo) * (bottom - top)

    yticks = []
    k = 0
    while lo + k * tick <= hi + tick * 1e-6:
        v = round(lo + k * tick, 9) + 0.0  # + 0.0 turns -0.0 into 0.0
        yticks.append((y_of(v), f"{v:.{_decimals(tick)}f}"))
        k += 1

    xticks = [(left + (s.index + 0.5) * step, _short(s.label, 14), s.label) for s in slots]
    nr = max(1, len(runs))
    dodge = min(step * 0.5 / nr, 8.0)
    series = []
    for ri, run in enumerate(runs):
        dx = (ri - (nr - 1) / 2) * dodge
        points, markers = [], []
        for c in cards:
            if c.run_index != ri:
                continue
            img = c.image
            x = left + (c.slot.index + 0.5) * step + dx
            title = f"{img.run} \u00b7 {c.slot.label} \u00b7 {c.name} \u00b7 {img.status}"
            if _finite(img.similarity):
                points.append(
                    PlotPoint(
                        x=x, y=y_of(img.similarity), status=img.status, title=f"{title} \u00b7 {img.similarity:.3f}"
                    )
                )
            else:
                markers.append(PlotMarker(path=_marker(img.status, x, bottom), status=img.status, title=title))
        series.append(PlotSeries(run=run.run, colour=run.colour, points=points, markers=markers))

    lines = [HLine(y=y_of(report.threshold), label="threshold", value=_fmt(report.threshold), kind="threshold")]
    for ch in report.characters:
        if _finite(ch.baseline_mean):
            lines.append(
                HLine(
                    y=y_of(ch.baseline_mean), label=f"baseline {ch.name}", value=_fmt(ch.baseline_mean), kind="baseline"
                )
            )
    _spread_labels(lines, gap=12.0)
    return Plot(
        width=width,
        height=height,
        left=left,
        right=right,
        top=top,
        bottom=bottom,
        yticks=yticks,
        xticks=xticks,
        series=series,
        lines=lines,
    )


def _spread_labels(lines: list[HLine], gap: float) -> None:
    # Walk the lines top to bottom and push each label down until it clears the one above.
    last = -math.inf
    for line in sorted(lines, key=lambda ln: ln.y):
        line.label_y = max(line.y + 4, last + gap)
        last = line.label_y


def _marker(status: str, x: float, y: float) -> str:
    r = 5.0
    if status == "no_face":  # hollow square
        return f"M{x - r:.1f},{y - r:.1f}L{x + r:.1f},{y - r:.1f}L{x + r:.1f},{y + r:.1f}L{x - r:.1f},{y + r:.1f}z"
    if status == "error":  # cross
        return f"M{x - r:.1f},{y - r:.1f}L{x + r:.1f},{y + r:.1f}M{x - r:.1f},{y + r:.1f}L{x + r:.1f},{y - r:.1f}"
    # a scored status without a similarity (character missing): diamond
    return f"M{x:.1f},{y - r:.1f}L{x + r:.1f},{y:.1f}L{x:.1f},{y + r:.1f}L{x - r:.1f},{y:.1f}z"


def _nice_step(raw: float) -> float:
    for s in (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0):
        if raw <= s:
            return s
    return 10.0


def _decimals(step: float) -> int:
    return 0 if step >= 1 else (1 if round(step * 10, 9) == int(round(step * 10, 9)) else 2)


def _clamp(v: float, lo: float, hi: float) -> float:
    return min(max(v, lo), hi)


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def _short(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "\u2026"


def _fmt(v: float | None, nd: int = 3) -> str:
    return "\u2014" if not _finite(v) else f"{v:.{nd}f}"


def _pct(v: float | None) -> str:
    return "\u2014" if not _finite(v) else f"{v * 100:.0f}%"


def _rel(v: float | None) -> str:
    return "\u2014" if not _finite(v) else f"{v:.2f}\u00d7"


# --------------------------------------------------------------------------------------
# report.html
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def environment() -> Environment:
    """The report toolkit's environment for this stage's templates, with the report's number filters."""
    env = report_environment("charkit.verify")
    env.filters.update(num=_fmt, pct=_pct, rel=_rel, short=_short)
    return env


def render_html(report: VerifyReport, thumbnails: dict[str, bytes] | None = None) -> str:
    """``report.html``: one self-contained page (inline CSS and SVG, thumbnails as data: URIs)."""
    view = build_view(report, thumbnails)
    return environment().get_template("report.html.j2").render(v=view, r=report, b=report.backend)
