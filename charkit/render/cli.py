"""``charkit render``: the click layer over :func:`charkit.render.lifecycle.render_storyboard`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..cli_options import (
    MODEL_SOURCE,
    allow_pickle_option,
    backend_option,
    device_option,
    dtype_option,
    face_models_option,
    quiet_option,
)


class ShardType(click.ParamType):
    """``K/N``: shard K (0-based) of N."""

    name = "K/N"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            k, n = (int(x) for x in str(value).split("/"))
        except ValueError:
            self.fail(f"{value!r} is not K/N (e.g. 0/4)", param, ctx)
        if not 0 <= k < n:
            self.fail(f"{value!r}: K must be 0 .. N-1 (e.g. 0/4 .. 3/4)", param, ctx)
        return (k, n)


SHARD = ShardType()


@click.command("render")
@click.argument("storyboard", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder (default: the storyboard's `output:`).",
)
@click.option(
    "--model",
    "models",
    multiple=True,
    type=MODEL_SOURCE,
    help="Render on this model instead of the storyboard's (hub id, diffusers folder or .safetensors file; family "
    "detected). Repeat to render every scene on each (a comparison matrix).",
)
@device_option()
@dtype_option()
@click.option(
    "--verify",
    is_flag=True,
    help="Score every image by identity and write report.json/.csv/.html into the output folder.",
)
@click.option("--force", is_flag=True, help="Render every scene again, even unchanged ones.")
@click.option(
    "--scene",
    "scenes",
    multiple=True,
    metavar="ID",
    help="Render only this scene (repeatable); others keep their images.",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), help="Best-of-N candidates per pipeline call (default: all at once)."
)
@click.option(
    "--scene-batch",
    type=click.IntRange(min=1),
    help="Scenes per pipeline call when they share model, size, steps, guidance, sampler, LoRAs and conditioning "
    "(per-image prompts and seeds; default 4 on a GPU, 1 on a CPU). Batches come from the storyboard, so a "
    "resumed run draws the same bytes.",
)
@click.option(
    "--shard",
    type=SHARD,
    metavar="K/N",
    help="Render only shard K of N (0-based; e.g. a Slurm job array: --shard $SLURM_ARRAY_TASK_ID/N), all "
    "shards writing one output folder and manifest (needs file locks that work there).",
)
@click.option(
    "--compile", "compile_", is_flag=True, help="torch.compile the UNet / transformer (pays off on long runs, GPU)."
)
@click.option(
    "--cpu-offload", is_flag=True, help="Keep models in CPU memory and move each to the GPU only while it runs."
)
@click.option("--vae-tiling", is_flag=True, help="Decode in tiles (large images on small GPUs).")
@allow_pickle_option()
@click.option(
    "--annotators",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Folder with lllyasviel/Annotators weights (openpose and depth detection).",
)
@face_models_option()
@backend_option(default=None, help_text="Face backend for best-of-N and --verify (default: the storyboard's, dlib).")
@quiet_option()
def render(
    storyboard,
    out,
    models,
    device,
    dtype,
    verify,
    force,
    scenes,
    batch_size,
    scene_batch,
    shard,
    compile_,
    cpu_offload,
    vae_tiling,
    allow_pickle_weights,
    annotators,
    face_models,
    backend,
    quiet,
):
    """Render a storyboard: every scene as DIR/<scene>.png plus DIR/manifest.json.

    Reruns render only scenes whose inputs changed. Under `accelerate launch` the scenes
    are split across processes.

    \b
      charkit render examples/episode.yaml
      charkit render episode.yaml --out renders/ep1 --verify
      charkit render episode.yaml --model sd15=runwayml/stable-diffusion-v1-5 --model sdxl=models/juggernaut.safetensors
      accelerate launch -m charkit render episode.yaml --device cuda
      charkit render episode.yaml --shard 0/4      # one of 4 machines / array jobs, one shared output folder
    """
    from ..devices import resolve_device, resolve_precision
    from .lifecycle import render_storyboard

    device = resolve_device(device)
    result = render_storyboard(
        storyboard,
        out=out,
        models=list(models) or None,
        device=device,
        dtype=resolve_precision(dtype, device),
        verify=verify,
        force=force,
        batch_size=batch_size,
        scene_batch=scene_batch,
        shard=shard,
        compile=compile_,
        cpu_offload=cpu_offload,
        vae_tiling=vae_tiling,
        allow_pickle_weights=allow_pickle_weights,
        annotators=annotators,
        face_models=face_models,
        backend=backend,
        scenes=list(scenes) or None,
        progress=not quiet,
    )
    if result.manifest is None:
        return  # not the main process: it reports for everyone
    for warning in result.warnings:
        click.echo(f"Warning: {warning}", err=True)
    # Counted from the merged manifest: under accelerate, result.rendered holds this process's share only.
    locked = sum(r.locked for r in result.manifest.images)
    line = f"rendered {len(result.manifest.images) - len(result.skipped)}, unchanged {len(result.skipped)}"
    line += f" ({locked} locked, kept as they are)" if locked else ""
    line += f" -> {result.manifest_path}"
    if result.verify_report is not None:
        runs = result.verify_report.runs
        passed = sum(r.passed for r in runs)
        line += f"; identity: {passed}/{sum(r.images for r in runs)} pass (report.html)"
    click.echo(line)


if __name__ == "__main__":  # `accelerate launch -m charkit.render.cli STORYBOARD ...`
    from ..cli import main

    main(["render", *sys.argv[1:]])
