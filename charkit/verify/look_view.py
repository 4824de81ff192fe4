"""What report.html draws of the look profile: per character, one table per run and one small plot.

The plot puts every measured face of every run on one axis per measure: its position against the
character's reference photos (-1 at the low end of their range, +1 at the high end, the shaded band;
clipped to -3..+3, a clipped face is drawn as a triangle at the edge), the run's median as a bar.
Numbers and plain strings only: the template escapes every one.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from ..look import MEASURES, UNITS
from ..look.compare import WORDS
from .look import RunLook

#: the plot's x range, in positions (the references' padded range is -1..+1)
CLIP = 3.0


@dataclass
class LookRowView:
    """One measure of one run, as the table shows it."""

    measure: str
    unit: str
    references: str  # the references' min-max
    median: str
    spread: str  # p10-p90
    beyond: str  # faces outside the references' padded range
    relation: str  # within | above | below | wider
    statement: str


@dataclass
class LookTableView:
    run: str
    colour: str
    images: int
    rows: list[LookRowView]
    notes: list[str] = field(default_factory=list)  # statements past the six (upscaled faces, no face)


@dataclass
class LookDot:
    x: float
    y: float
    title: str
    arrow: str = ""  # SVG path of a triangle pointing out of the plot when the face lies past its range


@dataclass
class LookSeries:
    run: str
    colour: str
    dots: list[LookDot]
    medians: list[LookDot]


@dataclass
class LookPlotView:
    width: int
    height: int
    left: float
    right: float
    top: float
    bottom: float
    band: tuple[float, float]  # x of position -1 and +1
    xticks: list[tuple[float, str]]
    rows: list[tuple[float, str]]  # y and label of each measure's axis
    series: list[LookSeries]


@dataclass
class LookView:
    """Everything the look section shows for one character."""

    character: str
    references: int
    tables: list[LookTableView]
    plot: LookPlotView


def build_look_views(looks: list[RunLook], colours: dict[str, str]) -> list[LookView]:
    """One :class:`LookView` per character, runs in report order."""
    by_char: OrderedDict[str, list[RunLook]] = OrderedDict()
    for r in looks:
        by_char.setdefault(r.character, []).append(r)
    return [
        LookView(
            character=ch,
            references=runs[0].comparison.baseline.references,
            tables=[_table(r, colours.get(r.run, "#000000")) for r in runs],
            plot=_plot(runs, colours),
        )
        for ch, runs in by_char.items()
    ]


def _table(r: RunLook, colour: str) -> LookTableView:
    c = r.comparison
    rows = []
    for key, m in c.measures.items():
        rng, fmt = c.baseline.ranges[key], WORDS[key][2]
        rows.append(
            LookRowView(
                measure=key,
                unit=UNITS[key],
                references=f"{rng.min:{fmt}}\u2013{rng.max:{fmt}}",
                median=f"{m.median:{fmt}}",
                spread=f"{m.p10:{fmt}}\u2013{m.p90:{fmt}}",
                beyond=f"{m.above + m.below} of {c.images}",
                relation=m.relation,
                statement=m.statement,
            )
        )
    return LookTableView(run=r.run, colour=colour, images=c.images, rows=rows, notes=c.statements[len(rows) :])


def _arrow(p: float, x: float, y: float) -> str:
    if -CLIP <= p <= CLIP:
        return ""
    d = -5.0 if p < 0 else 5.0  # the tip points the way the face lies
    return f"M{x + d:.1f},{y:.1f}L{x - d:.1f},{y - 4:.1f}L{x - d:.1f},{y + 4:.1f}z"


def _plot(runs: list[RunLook], colours: dict[str, str]) -> LookPlotView:
    left, right, top, row_h = 110.0, 560.0, 24.0, 34.0
    bottom = top + row_h * len(MEASURES)
    x_of = lambda p: left + (max(-CLIP, min(CLIP, p)) + CLIP) / (2 * CLIP) * (right - left)
    n = max(1, len(runs))
    series = []
    for k, r in enumerate(runs):
        dy = (k - (n - 1) / 2) * min(8.0, (row_h - 10) / n)  # runs side by side inside each measure's row
        dots, medians = [], []
        for i, key in enumerate(MEASURES):
            y = top + row_h * (i + 0.5) + dy
            for j, pos in enumerate(r.comparison.positions):
                p = pos[key]
                dots.append(
                    LookDot(x_of(p), y, f"{r.run} \u00b7 face {j + 1} \u00b7 {key} {p:+.2f}", _arrow(p, x_of(p), y))
                )
            m = r.comparison.measures.get(key)
            if m is not None:
                p = r.comparison.baseline.ranges[key].position(m.median)
                medians.append(LookDot(x_of(p), y, f"{r.run} \u00b7 {key} median {p:+.2f}"))
        series.append(LookSeries(run=r.run, colour=colours.get(r.run, "#000000"), dots=dots, medians=medians))
    return LookPlotView(
        width=int(right + 24),
        height=int(bottom + 34),
        left=left,
        right=right,
        top=top,
        bottom=bottom,
        band=(x_of(-1.0), x_of(1.0)),
        xticks=[(x_of(float(v)), f"{v:+d}" if v else "0") for v in range(-3, 4)],
        rows=[(top + row_h * (i + 0.5), key) for i, key in enumerate(MEASURES)],
        series=series,
    )
