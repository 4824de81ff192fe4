"""``charkit tiny-model``: write a tiny random-weight pipeline of a family (for tests, demos, benchmarks)."""

from __future__ import annotations

from pathlib import Path

import click

from . import FAMILIES


@click.command("tiny-model")
@click.argument("family", type=click.Choice(FAMILIES))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights (same seed -> same files).")
@click.option("--no-controlnet", is_flag=True, help="Skip the tiny ControlNet.")
@click.option("--no-ip-adapter", is_flag=True, help="Skip the tiny IP-Adapter (plain + FaceID) and image encoder.")
def tiny_model(family: str, out_dir: Path, seed: int, no_controlnet: bool, no_ip_adapter: bool):
    """Write a tiny FAMILY pipeline to OUT_DIR (a new or empty folder).

    OUT_DIR loads like a real model (a diffusers folder); beside it come the extras the family
    supports: controlnet/, ip_adapter/ and single_file/. Seconds to build, random weights:
    images are noise, but every code path is real.

    \b
    Examples:
      charkit tiny-model sd15 models/tiny-sd15
      charkit tiny-model flux models/tiny-flux --no-controlnet --seed 3
    """
    from . import get_family

    tiny = get_family(family).build_tiny(out_dir, seed=seed, controlnet=not no_controlnet, ip_adapter=not no_ip_adapter)
    click.echo(f"wrote tiny {family} model to {tiny.root}")
    for label, path in (
        ("pipeline", tiny.root),
        ("controlnet", tiny.controlnet),
        ("ip_adapter", tiny.ip_adapter),
        ("image_encoder", tiny.image_encoder),
        ("faceid", tiny.faceid),
        ("single_file", tiny.single_file),
    ):
        if path is not None:
            click.echo(f"  {label:<13} {path}")
