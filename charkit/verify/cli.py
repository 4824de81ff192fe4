"""``charkit verify`` and ``charkit calibrate``: the click layer over :func:`charkit.verify.verify` and the
identity engine's calibration."""

from __future__ import annotations

import json
import sys

import click

from ..cli_options import LABEL_PATH, backend_option, face_models_option
from .lifecycle import verify as run_verify
from .results import CHARACTER_STATUSES, character_counts

#: what --fail-on-drift fails on besides drift, each of which --tolerate can lift
TOLERABLE = ("missing", "no_face", "error")


class ThresholdValue(click.ParamType):
    """``VALUE`` (every scoring backend) or ``BACKEND=VALUE`` -> ``(backend or None, value)``."""

    name = "[BACKEND=]VALUE"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        name, _, number = str(value).rpartition("=")
        try:
            return (name or None, float(number))
        except ValueError:
            self.fail(f"{value!r}: expected a number such as 0.45, or BACKEND=NUMBER such as sface=0.45", param, ctx)


def thresholds(values: tuple, names: tuple[str, ...]) -> float | dict[str, float] | None:
    """``--threshold`` values as :func:`charkit.identity.get_scorer` takes them."""
    from ..errors import CharkitError

    bare = [t for n, t in values if n is None]
    if len(bare) > 1:
        raise CharkitError("--threshold: given twice without a backend name; write BACKEND=VALUE, e.g. sface=0.45")
    named = {n: t for n, t in values if n is not None}
    if not named:
        return bare[0] if bare else None
    from ..identity import scorer_names

    return {**({n: bare[0] for n in scorer_names(names)} if bare else {}), **named}


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def echo_summary(report, out) -> None:
    """The terminal summary: per run and character, counts of every verdict; the files behind errors; disagreements."""
    fmt = lambda v: "-" if v is None else f"{v:.3f}"
    rows = [("run", "character", "images", *CHARACTER_STATUSES, "mean sim", "min sim")]
    for c in character_counts(report.images):
        sims = c.similarities
        mean, low = (sum(sims) / len(sims), min(sims)) if sims else (None, None)
        rows.append(
            (c.run, c.character, str(sum(c.counts.values())), *map(str, c.counts.values()), fmt(mean), fmt(low))
        )
    if len(rows) > 1:
        _table(rows)
    members = report.members
    base = ", ".join(f"{c.name} {fmt(c.baseline_mean)}" for c in report.characters)
    if len(members) > 1:
        who = " + ".join(f"{b.name} (threshold {b.threshold:.2f})" for b in members)
        click.echo(
            f"scored by {who}: sim is the combined score, 0 = each backend's threshold; reference baseline: {base}"
        )
    else:
        click.echo(f"backend {report.backend.name} (threshold {report.threshold:.2f}); reference baseline: {base}")
    _echo_disagreements(report)
    for img in report.images:
        if img.status == "error":
            click.echo(f"error: {img.path}: {img.error}")
    for r in report.look:
        notable = [m.statement for m in r.comparison.measures.values() if m.relation != "within"]
        if notable:
            click.echo(f"look of {r.run} against {r.character}'s photos: " + "; ".join(notable))
    if out is not None:
        click.echo(f"report: {out}/report.html")


def _echo_disagreements(report) -> None:
    compared = sum(r.compared for r in report.runs)
    if not compared:
        return
    rows = [(img, m) for img in report.images for m in img.matches if m.agree is False]
    agreed = compared - len(rows)
    click.echo(f"backends agree on {agreed} of {compared} faces ({agreed / compared:.0%})" + (":" if rows else ""))
    for img, m in rows:
        opinions = ", ".join(
            f"{n} {b.status} {b.similarity:.3f}" for n, b in m.scores.items() if b.similarity is not None
        )
        click.echo(f"  disagree: {img.path}: {m.character}: {opinions} -> {m.status}")


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=str))
@click.option(
    "--character",
    "-c",
    "characters",
    multiple=True,
    metavar="DIR",
    help="Character folder (characters/NAME) every image should show; repeat for multi-character scenes.",
)
@click.option(
    "--run",
    "runs",
    multiple=True,
    type=LABEL_PATH,
    help="A labelled run to compare side by side (a render folder, or images from Midjourney/Leonardo/DALL-E).",
)
@backend_option(help_text="Face model that scores identity.", multiple=True)
@face_models_option()
@click.option(
    "--threshold",
    "threshold",
    multiple=True,
    type=ThresholdValue(),
    help="Similarity at or above which a face counts as the character (default: each backend's calibrated value); "
    "BACKEND=VALUE sets one backend's when several score. Strictly between 0 and 1.",
)
@click.option(
    "--allow-same-evaluator",
    is_flag=True,
    help="Let the face model that conditioned an image (IP-Adapter FaceID: insightface) judge it too. Its "
    "scores flatter the images it conditioned; by default it is left out of their decision.",
)
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=str),
    default="verify-report",
    show_default=True,
    help="Folder for report.json, report.csv and report.html.",
)
@click.option(
    "--fail-on-drift",
    is_flag=True,
    help="Exit with code 1 when any image drifted, a character is missing, an image shows no face or cannot be "
    "read (see --tolerate).",
)
@click.option(
    "--tolerate",
    multiple=True,
    type=click.Choice(TOLERABLE),
    help="With --fail-on-drift: do not fail on these (repeatable), e.g. --tolerate no_face for a folder of wide shots.",
)
@click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout instead of the summary.")
def verify(
    paths,
    characters,
    runs,
    backend,
    face_models,
    threshold,
    allow_same_evaluator,
    out,
    fail_on_drift,
    tolerate,
    as_json,
):
    """Score images against characters' reference faces and write an identity-drift report.

    \b
    Examples:
      charkit verify renders/ --character characters/alice          # dlib + sface (auto)
      charkit verify --run sd15=out/sd15 --run midjourney=~/Downloads/mj -c characters/alice
      charkit verify episode/ --fail-on-drift   # characters from the render manifest
      charkit verify renders/ -c characters/alice --backend sface --threshold 0.45
    """
    from ..identity import get_scorer

    fb = get_scorer(backend, face_models=face_models, threshold=thresholds(threshold, backend))
    report = run_verify(
        list(paths),
        characters=list(characters),
        runs=list(runs),
        backend=fb,
        out=out,
        progress=not as_json and sys.stderr.isatty(),
        allow_same_evaluator=allow_same_evaluator,
    )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        echo_summary(report, out)
    failures = report.failures(tuple(tolerate))
    if fail_on_drift and failures:
        found = ", ".join(f"{n} {k}" for k, n in failures.items())
        lift = [k for k in TOLERABLE if k in failures]
        hint = f" (--tolerate {' --tolerate '.join(lift)} to accept those)" if lift else ""
        click.echo(f"--fail-on-drift: {found}{hint}", err=True)
        sys.exit(1)


@click.command()
@click.option(
    "--character",
    "-c",
    "characters",
    multiple=True,
    required=True,
    metavar="DIR",
    help="Character folder; give two or more (same-person pairs within, different-person pairs across).",
)
@backend_option(help_text="Face model to calibrate.", multiple=True)
@face_models_option()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def calibrate(characters, backend, face_models, as_json):
    """Measure same-person vs different-person similarity on your cast and suggest a threshold.

    \b
    Needs at least 3 same-person and 3 different-person pairs to suggest one. With several
    backends (auto: dlib and sface), each is calibrated and their agreement on the pairs is shown.

    \b
    Example:
      charkit calibrate -c characters/alice -c characters/bob --backend insightface
    """
    from ..character import load_character
    from ..identity import backends_of, get_scorer
    from ..identity.calibrate import agreement
    from ..identity.calibrate import calibrate as run_calibrate

    cast = [load_character(ch) for ch in characters]
    results = [run_calibrate(cast, b) for b in backends_of(get_scorer(backend, face_models=face_models))]
    agree = agreement(results) if len(results) > 1 else None
    if as_json:
        data = results[0].to_dict() if agree is None else {"calibrations": [c.to_dict() for c in results]}
        if agree is not None:
            data["agreement"] = agree.to_dict()
        click.echo(json.dumps(data, indent=2))
        return
    for c in results:
        _echo_calibration(c)
    if agree is not None and agree.pairs:
        click.echo(
            f"{' and '.join(agree.backends)} take the same decision on {agree.agree} of {agree.pairs} pairs "
            f"({agree.rate:.0%}), each at its own threshold"
        )


def _echo_calibration(c) -> None:
    b = c.backend
    span = lambda v: f"similarity {min(v):.3f} - {max(v):.3f}" if v else "no pairs"
    click.echo(f"backend {b.name} ({b.model}), characters: {', '.join(c.characters)}")
    click.echo(f"same person      : {len(c.same):4d} pairs, {span(c.same)}")
    click.echo(f"different people : {len(c.different):4d} pairs, {span(c.different)}")
    if c.suggested is None:
        click.echo(f"{c.too_few}; the current {b.threshold:.2f} misclassifies {c.errors_at_default}")
        return
    gap = "separate cleanly" if c.separable else "overlap"
    click.echo(
        f"the two sets {gap}; suggested --threshold {c.suggested:.3f} "
        f"({c.errors_at_suggested} pairs misclassified; the current {b.threshold:.2f} misclassifies "
        f"{c.errors_at_default})"
    )
