"""``charkit prep``: the click layer over :func:`charkit.dataset.prep.prep_dataset`."""

from __future__ import annotations

import click

from ..cli_options import backend_option, device_option, face_models_option
from ..families import FAMILIES


@click.command()
@click.argument("character", metavar="CHARACTER")
@click.option(
    "--family",
    type=click.Choice(FAMILIES),
    default="sd15",
    show_default=True,
    help="Model family the dataset is for; sets the default resolution and aspect buckets.",
)
@click.option(
    "--resolution",
    type=int,
    default=None,
    help="Training resolution in pixels (buckets keep about resolution² pixels); default: the family's.",
)
@backend_option(help_text="Face model that screens the references.")
@face_models_option()
@click.option(
    "--out",
    type=click.Path(path_type=str),
    default=None,
    metavar="DIR",
    help="Output folder (default: CHARACTER/dataset); replaced as a whole on success.",
)
@click.option(
    "--max-duplicates-distance",
    type=click.IntRange(0, 64),
    default=10,
    show_default=True,
    help="Perceptual-hash bits (of 64) at or under which two photos with near-identical faces are duplicates.",
)
@device_option()
def prep(character, family, resolution, backend, face_models, out, max_duplicates_distance, device):
    """Filter, crop and caption a character's reference photos into a training dataset.

    Rejects unreadable, no-face and several-face photos, identity outliers and near-duplicates
    (reasons in prep_report.html); never touches the originals.

    \b
    Examples:
      charkit prep characters/alice
      charkit prep characters/alice --family sdxl
      charkit prep alice --resolution 768 --out /tmp/alice-ds
    """
    from ..devices import onnx_providers, resolve_device
    from ..identity import get_backend
    from .prep import prep_dataset

    device = resolve_device(device)
    fb = get_backend(backend, face_models=face_models, providers=onnx_providers(device))
    r = prep_dataset(
        character,
        family=family,
        resolution=resolution,
        backend=fb,
        out=out,
        max_duplicates_distance=max_duplicates_distance,
        device=device,
    )
    for rej in r.rejected:
        click.echo(f"rejected {rej.path}: {rej.reason}")
    for w in r.warnings:
        click.echo(f"warning: {w}")
    n = len(r.items) + len(r.rejected)
    click.echo(f"kept {len(r.items)} of {n} references -> {r.out} ({r.family}, {r.resolution}px, {r.backend.name})")
    click.echo(f"report: {r.report_html}")
