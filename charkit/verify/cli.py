"""``charkit verify`` and ``charkit calibrate``: the click layer over :func:`charkit.verify.verify` and the
identity engine's calibration."""

from __future__ import annotations

import json
import sys

import click

from ..cli_options import LABEL_PATH, SIMILARITY, backend_option, face_models_option
from .lifecycle import verify as run_verify


def echo_summary(report, out) -> None:
    rows = [("run", "images", "pass", "drift", "no_face", "error", "mean sim", "min sim")]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"
    for r in report.runs:
        rows.append(
            (
                r.run,
                str(r.images),
                str(r.passed),
                str(r.drift),
                str(r.no_face),
                str(r.errors),
                fmt(r.mean_similarity),
                fmt(r.min_similarity),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    b = report.backend
    base = ", ".join(
        f"{c.name} {c.baseline_mean:.3f}" if c.baseline_mean is not None else f"{c.name} -" for c in report.characters
    )
    click.echo(f"backend {b.name} (threshold {report.threshold:.2f}); reference baseline: {base}")
    if out is not None:
        click.echo(f"report: {out}/report.html")


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
@backend_option(help_text="Face model that scores identity.")
@face_models_option()
@click.option(
    "--threshold",
    type=SIMILARITY,
    default=None,
    help="Similarity at or above which a face counts as the character (default: the backend's calibrated value).",
)
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=str),
    default="verify-report",
    show_default=True,
    help="Folder for report.json, report.csv and report.html.",
)
@click.option("--fail-on-drift", is_flag=True, help="Exit with code 1 when any image drifted.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout instead of the summary.")
def verify(paths, characters, runs, backend, face_models, threshold, out, fail_on_drift, as_json):
    """Score images against characters' reference faces and write an identity-drift report.

    \b
    Examples:
      charkit verify renders/ --character characters/alice
      charkit verify --run sd15=out/sd15 --run midjourney=~/Downloads/mj -c characters/alice
      charkit verify episode/ --fail-on-drift   # characters from the render manifest
    """
    from ..identity import get_backend

    fb = get_backend(backend, face_models=face_models, threshold=threshold)
    report = run_verify(
        list(paths),
        characters=list(characters),
        runs=list(runs),
        backend=fb,
        threshold=threshold,
        out=out,
        progress=not as_json and sys.stderr.isatty(),
    )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        echo_summary(report, out)
    if fail_on_drift and report.drift_found:
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
@backend_option(help_text="Face model to calibrate.")
@face_models_option()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def calibrate(characters, backend, face_models, as_json):
    """Measure same-person vs different-person similarity on your cast and suggest a threshold.

    \b
    Example:
      charkit calibrate -c characters/alice -c characters/bob --backend insightface
    """
    from ..character import load_character
    from ..identity import get_backend
    from ..identity.calibrate import calibrate as run_calibrate

    fb = get_backend(backend, face_models=face_models)
    c = run_calibrate([load_character(ch) for ch in characters], fb)
    if as_json:
        click.echo(json.dumps(c.to_dict(), indent=2))
        return
    click.echo(f"backend {fb.info.name} ({fb.info.model}), characters: {', '.join(c.characters)}")
    click.echo(f"same person      : {len(c.same):4d} pairs, similarity {min(c.same):.3f} - {max(c.same):.3f}")
    click.echo(
        f"different people : {len(c.different):4d} pairs, similarity {min(c.different):.3f} - {max(c.different):.3f}"
    )
    gap = "separate cleanly" if c.separable else "overlap"
    click.echo(
        f"the two sets {gap}; suggested --threshold {c.suggested:.3f} "
        f"({c.errors_at_suggested} pairs misclassified; the current {fb.info.threshold:.2f} misclassifies "
        f"{c.errors_at_default})"
    )
