"""Reference baseline and run comparison: is a run's look inside what the character's photos show?

The baseline is the range of each measure over the character's own reference photos, padded on
both sides by the measure's :data:`RESOLUTION` (a difference smaller than the measurement's own
repeatability is not a difference). A run is summarised by the median, p10 and p90 of each
measure, and one plain-language statement per measure follows these rules, in this order:

1. median above the padded range: "<more> than every reference photo" (``relation="above"``)
2. median below it: "<less> than every reference photo" (``relation="below"``)
3. median inside, but p10 below and p90 above it: "<measure> spreads wider than the references"
   (``relation="wider"``: the run is inconsistent, some images beyond each end)
4. otherwise ``relation="within"``: "<measure> within the references' range" when the median is
   inside their actual min-max, "<measure> at the references' low/high end (..., within the
   resolution R)" when it is outside by no more than the resolution.

Statements print the references' actual min-max, the run's median (p10-p90 for rule 3) and, for
more than one image, how many images lie beyond the padded range.
These are measurements of how the images look, compared with the photos; they say nothing about
whether an image is "realistic".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import CharkitError
from .measures import MEASURES, LookMeasures

#: Half-width added to each end of the reference range. Measured as the largest change of each
#: measure when one of the test photos is re-saved at JPEG q90 or its face box moved by 3 px
#: (tests/test_look.py: test_resolution_covers_repeatability), rounded up.
RESOLUTION = {
    "smoothness": 0.01,
    "sharpness": 0.2,
    "noise": 0.3,
    "saturation": 0.3,
    "brightness": 0.003,
    "contrast": 0.004,
}

#: (word when above, word when below, number format) per measure, for the statements.
WORDS = {
    "smoothness": ("smoother", "less smooth", ".2f"),
    "sharpness": ("sharper", "softer", ".1f"),
    "noise": ("noisier", "cleaner", ".1f"),
    "saturation": ("more saturated", "less saturated", ".1f"),
    "brightness": ("brighter", "darker", ".3f"),
    "contrast": ("higher in contrast", "lower in contrast", ".3f"),
}

RELATIONS = ("within", "above", "below", "wider")


@dataclass(frozen=True)
class MeasureRange:
    """One measure over the reference photos; ``lo``/``hi`` are the range padded by the resolution."""

    min: float
    max: float
    mean: float
    std: float
    resolution: float

    @property
    def lo(self) -> float:
        return self.min - self.resolution

    @property
    def hi(self) -> float:
        return self.max + self.resolution

    def position(self, value: float) -> float:
        """-1 at ``lo``, +1 at ``hi``, 0 in the middle; beyond +-1 outside the padded range."""
        return float(2.0 * (value - self.lo) / (self.hi - self.lo) - 1.0)

    def to_dict(self) -> dict:
        return {k: round(float(getattr(self, k)), 4) for k in ("min", "max", "mean", "std", "resolution")}

    @classmethod
    def from_dict(cls, d: dict) -> MeasureRange:
        return cls(**{k: float(d[k]) for k in ("min", "max", "mean", "std", "resolution")})


@dataclass(frozen=True)
class LookBaseline:
    """The look of a character's reference photos: one :class:`MeasureRange` per measure."""

    references: int
    scale_to: int
    ranges: dict[str, MeasureRange]
    upsampled: int = 0  # references whose face was smaller than scale_to

    def position(self, measures: LookMeasures) -> dict[str, float]:
        """Where one image sits relative to the references, per measure (see :meth:`MeasureRange.position`)."""
        _check_scale(measures, self)
        return {name: self.ranges[name].position(v) for name, v in measures.values().items()}

    def to_dict(self) -> dict:
        return {
            "references": self.references,
            "scale_to": self.scale_to,
            "upsampled": self.upsampled,
            "ranges": {name: r.to_dict() for name, r in self.ranges.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> LookBaseline:
        return cls(
            references=int(d["references"]),
            scale_to=int(d["scale_to"]),
            upsampled=int(d.get("upsampled", 0)),
            ranges={name: MeasureRange.from_dict(d["ranges"][name]) for name in MEASURES},
        )


def reference_look(measures: list[LookMeasures]) -> LookBaseline:
    """Min, max, mean and std of each measure over the reference photos.

    >>> base = reference_look([measure_look(img, face.box) for img, face in refs])  # doctest: +SKIP
    >>> base.ranges["smoothness"].min, base.ranges["smoothness"].max  # doctest: +SKIP
    (0.658, 0.7018)
    """
    if not measures:
        raise CharkitError("no reference face to measure: the look baseline needs at least one reference photo")
    scales = {m.scale_to for m in measures}
    if len(scales) > 1:
        raise ValueError(f"references measured at different scale_to values {sorted(scales)}: measure them alike")
    table = np.asarray([list(m.values().values()) for m in measures], dtype=np.float64)
    ranges = {
        name: MeasureRange(
            min=float(col.min()),
            max=float(col.max()),
            mean=float(col.mean()),
            std=float(col.std()),
            resolution=RESOLUTION[name],
        )
        for name, col in zip(MEASURES, table.T)
    }
    return LookBaseline(
        references=len(measures),
        scale_to=scales.pop(),
        ranges=ranges,
        upsampled=sum(m.upsampled for m in measures),
    )


@dataclass(frozen=True)
class MeasureComparison:
    """One measure of a run against the references."""

    name: str
    median: float
    p10: float
    p90: float
    relation: str  # one of RELATIONS
    above: int  # images above the padded reference range
    below: int  # images below it
    statement: str

    def to_dict(self) -> dict:
        return {
            "median": round(self.median, 4),
            "p10": round(self.p10, 4),
            "p90": round(self.p90, 4),
            "relation": self.relation,
            "above": self.above,
            "below": self.below,
            "statement": self.statement,
        }

    @classmethod
    def from_dict(cls, name: str, d: dict) -> MeasureComparison:
        return cls(
            name=name,
            median=float(d["median"]),
            p10=float(d["p10"]),
            p90=float(d["p90"]),
            relation=d["relation"],
            above=int(d["above"]),
            below=int(d["below"]),
            statement=d["statement"],
        )


@dataclass(frozen=True)
class LookComparison:
    """A run's look distribution against a character's references, with one statement per measure."""

    name: str
    images: int
    upsampled: int  # images whose face was smaller than scale_to
    baseline: LookBaseline
    measures: dict[str, MeasureComparison]
    positions: list[dict[str, float]] = field(default_factory=list)  # per image, in run order

    @property
    def statements(self) -> list[str]:
        """The per-measure statements, then a note on upscaled faces when there are any."""
        if not self.images:
            return ["no face measured in this run"]
        out = [m.statement for m in self.measures.values()]
        if self.upsampled:
            out.append(
                f"{self.upsampled} of {self.images} faces were smaller than {self.baseline.scale_to} px and upscaled: "
                "their smoothness and noise read smoother and cleaner than a larger face would"
            )
        return out

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "images": self.images,
            "upsampled": self.upsampled,
            "measures": {name: m.to_dict() for name, m in self.measures.items()},
            "statements": self.statements,
            "positions": [{k: round(v, 4) for k, v in p.items()} for p in self.positions],
            "baseline": self.baseline.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> LookComparison:
        return cls(
            name=d.get("name", ""),
            images=int(d["images"]),
            upsampled=int(d.get("upsampled", 0)),
            baseline=LookBaseline.from_dict(d["baseline"]),
            measures={name: MeasureComparison.from_dict(name, m) for name, m in d["measures"].items()},
            positions=[{k: float(v) for k, v in p.items()} for p in d.get("positions", [])],
        )


def compare_look(run: list[LookMeasures], baseline: LookBaseline, *, name: str = "") -> LookComparison:
    """The run's median/p10/p90 per measure and a statement of where it sits against the references.

    >>> cmp = compare_look(run_measures, reference_look(ref_measures), name="flux")  # doctest: +SKIP
    >>> cmp.measures["smoothness"].statement  # doctest: +SKIP
    'smoother than every reference photo (median 0.91 vs references 0.66-0.70; 18 of 20 images beyond)'
    """
    for m in run:
        _check_scale(m, baseline)
    measures: dict[str, MeasureComparison] = {}
    if run:
        table = np.asarray([list(m.values().values()) for m in run], dtype=np.float64)
        for key, col in zip(MEASURES, table.T):
            measures[key] = summarise(key, col, baseline.ranges[key], baseline.references)
    return LookComparison(
        name=name,
        images=len(run),
        upsampled=sum(m.upsampled for m in run),
        baseline=baseline,
        measures=measures,
        positions=[baseline.position(m) for m in run],
    )


def summarise(key: str, values: np.ndarray, ref: MeasureRange, references: int) -> MeasureComparison:
    """The distribution of one measure over a run and its statement (rules in the module docstring)."""
    values = np.asarray(values, dtype=np.float64)
    median, p10, p90 = (float(v) for v in np.percentile(values, [50, 10, 90]))
    # Every comparison goes through position(), so relations, counts and plotted positions agree even
    # where float rounding puts a value a hair past lo/hi.
    pos = [ref.position(v) for v in values]
    above, below = sum(x > 1 for x in pos), sum(x < -1 for x in pos)
    if ref.position(median) > 1:
        relation = "above"
    elif ref.position(median) < -1:
        relation = "below"
    elif ref.position(p10) < -1 and ref.position(p90) > 1:
        relation = "wider"
    else:
        relation = "within"
    return MeasureComparison(
        name=key,
        median=median,
        p10=p10,
        p90=p90,
        relation=relation,
        above=above,
        below=below,
        statement=statement(key, relation, median, p10, p90, ref, references, above + below, len(values)),
    )


def statement(
    key: str,
    relation: str,
    median: float,
    p10: float,
    p90: float,
    ref: MeasureRange,
    references: int,
    beyond: int,
    n: int,
) -> str:
    """The sentence for one measure, e.g. "darker than every reference photo (median 0.214 vs references 0.414-0.537)"."""
    more, less, fmt = WORDS[key]
    if references == 1:
        refs, every = f"reference {ref.min:{fmt}}", "the reference photo"
    else:
        refs, every = f"references {ref.min:{fmt}}-{ref.max:{fmt}}", "every reference photo"
    count = f"; {beyond} of {n} images beyond" if n > 1 else ""
    if relation in ("above", "below"):
        word = more if relation == "above" else less
        return f"{word} than {every} (median {median:{fmt}} vs {refs}{count})"
    if relation == "wider":
        return f"{key} spreads wider than the references (p10-p90 {p10:{fmt}}-{p90:{fmt}} vs {refs}; median {median:{fmt}})"
    if ref.min <= median <= ref.max:
        return f"{key} within the references' range (median {median:{fmt}} vs {refs})"
    end = "low" if median < ref.min else "high"
    return (
        f"{key} at the references' {end} end (median {median:{fmt}} vs {refs}, "
        f"within the resolution {ref.resolution:{fmt}})"
    )


def _check_scale(m: LookMeasures, baseline: LookBaseline) -> None:
    if m.scale_to != baseline.scale_to:
        raise ValueError(
            f"an image measured at scale_to={m.scale_to} cannot be compared with references measured at {baseline.scale_to}"
        )
