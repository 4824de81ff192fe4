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
    help="Render on this model instead of the storyboard's, or supply the model a storyboard does not name (hub id, "
    "diffusers folder or .safetensors file; family detected). Repeat to render every scene on each (a comparison "
    "matrix). A tiny model (charkit tiny-model) brings its own ControlNet and IP-Adapters.",
)
@click.option(
    "--model-config",
    type=click.Path(path_type=str),
    default=None,
    metavar="DIR",
    help="Diffusers folder or hub id with the configs and tokenizers of a single-file --model (needed offline).",
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
@backend_option(
    default=None, help_text="Face backend for best-of-N and --verify (default: the storyboard's, dlib).", multiple=True
)
@click.option(
    "--allow-same-evaluator",
    is_flag=True,
    help="Let insightface score the FaceID scenes it conditioned (by default a FaceID run is scored by another model).",
)
@click.option(
    "--full-size",
    is_flag=True,
    help="Render a tiny model (charkit tiny-model) at the storyboard's sizes and steps too (default: scaled down "
    "to seconds per scene, with a warning).",
)
@click.option(
    "--overwrite-other-project",
    is_flag=True,
    help="Render into an output folder that holds another project's manifest (its images are replaced or dropped "
    "from the manifest); without it such a folder is refused.",
)
@click.option(
    "--repair",
    is_flag=True,
    help="After rendering, re-draw the faces that drifted (charkit repair with its defaults: a try is kept only "
    "when the identity score rises); with --verify the report shows the repaired images.",
)
@quiet_option()
def render(
    storyboard,
    out,
    models,
    model_config,
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
    allow_same_evaluator,
    full_size,
    overwrite_other_project,
    repair,
    quiet,
):
    """Render a storyboard: every scene as DIR/<scene>.png plus DIR/manifest.json.

    Reruns render only scenes whose inputs changed. Under `accelerate launch` the scenes
    are split across processes.

    \b
      charkit render examples/episode.yaml --model models/tiny-sd15     # a tiny model: seconds, offline
      charkit render examples/episode.yaml --verify                     # the storyboard's real models (GPU)
      charkit render episode.yaml --model sd15=runwayml/stable-diffusion-v1-5 --model sdxl=models/juggernaut.safetensors
      charkit render episode.yaml --model models/x.safetensors --model-config models/sd15-diffusers
      accelerate launch -m charkit render episode.yaml --device cuda
      charkit render episode.yaml --shard 0/4      # one of 4 machines / array jobs, one shared output folder
      charkit render episode.yaml --repair --verify   # re-draw drifted faces, then the report
    """
    from ..devices import resolve_device, resolve_precision
    from ..distributed import process_state
    from .lifecycle import render_storyboard
    from .plan import RenderOptions, check_options
    from .storyboard import load_storyboard

    device = resolve_device(device)
    if repair and verify:
        check_options(RenderOptions(verify=True, shard=shard))  # the report comes later, refused as without --repair
    board = load_storyboard(storyboard, model_given=bool(models))  # --model supplies a model it may lack
    state = process_state(device)
    result = render_storyboard(
        board,
        out=out,
        models=[command_line_model(m, model_config, board) for m in models] or None,
        device=device,
        dtype=resolve_precision(dtype, device),
        verify=verify and not repair,  # with --repair the report comes after the repair
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
        backend=tuple(backend) or None,
        allow_same_evaluator=allow_same_evaluator,
        scenes=list(scenes) or None,
        progress=not quiet,
        full_size=full_size,
        overwrite_other_project=overwrite_other_project,
        state=state,
    )
    repaired = repair_after_render(result, state, verify=verify, backend=backend, quiet=quiet) if repair else None
    if result.manifest is not None:  # the main process reports for everyone
        echo_outcome(result, repaired)


def echo_outcome(result, repaired) -> None:
    """The warnings (stderr), the render's line, and the repair's lines after ``--repair``."""
    for warning in result.warnings:
        click.echo(f"Warning: {warning}", err=True)
    click.echo(render_summary(result))
    if repaired is not None:
        from ..repair.cli import summary

        click.echo(summary(repaired))


def repair_after_render(result, state, *, verify: bool, backend: tuple[str, ...], quiet: bool):
    """``--repair``: :func:`charkit.repair.repair_render_dir` on the render folder with the render's device,
    precision and face settings (every process takes its share; a ``--shard`` repairs its own scenes only, the
    other shards may still be rendering theirs), then the report when asked (main process)."""
    from ..repair.lifecycle import repair_render_dir
    from .lifecycle import other_shards, run_verify

    plan = result.plan
    opts = plan.options
    scenes = list(opts.scenes) if opts.scenes else None
    if opts.shard is not None:
        others = other_shards(plan)
        own = [j.scene.id for j in plan.jobs if j.key not in others and (scenes is None or j.scene.id in scenes)]
        scenes = list(dict.fromkeys(own))
        if not scenes:
            return None  # an empty shard: nothing of its own to repair
    repaired = repair_render_dir(
        result.out_dir,
        backend=(backend[0] if len(backend) == 1 else list(backend)) if backend else None,
        face_models=opts.face_models,
        device=opts.device,
        dtype=opts.dtype,
        allow_pickle_weights=opts.allow_pickle_weights,
        scenes=scenes,
        progress=not quiet,
        state=state,
    )
    if repaired.manifest is not None:
        result.manifest = repaired.manifest
    if verify and state.is_main_process and result.plan.characters:
        result.verify_report = run_verify(result.plan)
    state.wait_for_everyone()
    return repaired if repaired.manifest is not None else None


def render_summary(result) -> str:
    """The one line a render prints: rendered, unchanged, locked, left out, identity, faces not found."""
    # Counted from the merged manifest: under accelerate, result.rendered holds this process's share only.
    locked = sum(r.locked for r in result.manifest.images)
    line = f"rendered {len(result.manifest.images) - len(result.skipped)}, unchanged {len(result.skipped)}"
    line += f" ({locked} locked, kept as they are)" if locked else ""
    line += f", {len(result.left_out)} optional scenes left out (see the warnings)" if result.left_out else ""
    line += f" -> {result.manifest_path}"
    if result.verify_report is not None:
        runs = result.verify_report.runs
        passed = sum(r.passed for r in runs)
        line += f"; identity: {passed}/{sum(r.images for r in runs)} pass (report.html)"
    no_face = sum(1 for r in result.manifest.images if r.identity and r.identity.get("status") == "no_face")
    line += f"; {no_face} scene(s) showed no face" if no_face else ""
    return line


def command_line_model(spec, model_config: str | None, board):
    """A ``--model`` as the storyboard would hold it: local paths absolute (they are relative to the working
    folder, not the storyboard), ``--model-config`` attached, and a tiny model's own adapters filled in."""
    from .models import with_tiny_parts

    def local(text: str) -> str:
        p = Path(text).expanduser()
        return str(p.resolve()) if p.exists() else text

    update: dict = {"source": local(spec.source)}
    if model_config is not None and spec.config is None:
        update["config"] = local(model_config)
    return with_tiny_parts(spec.model_copy(update=update), board)


if __name__ == "__main__":  # `accelerate launch -m charkit.render.cli STORYBOARD ...`
    from ..cli import main

    main(["render", *sys.argv[1:]])
