"""``charkit train``: the click layer over :func:`charkit.train.train_lora` (the library does the work)."""

from __future__ import annotations

import click

from ..cli_options import allow_pickle_option, backend_option, device_option, dtype_option, quiet_option


@click.command("train")
@click.argument("character", type=click.Path(file_okay=False, path_type=str))
@click.option(
    "--model", "-m", required=True, help="Base model: hub id, local diffusers folder, or single .safetensors file."
)
@click.option(
    "--preset",
    "-p",
    required=True,
    type=click.Path(dir_okay=False, path_type=str),
    help="Training preset, e.g. training/sd15-lora.toml (its 'family' must match the model).",
)
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Override train.steps (quick runs).")
@click.option(
    "--eval-every",
    type=click.IntRange(min=1),
    default=None,
    help="Override eval.every: checkpoint + probe renders every N steps.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=str),
    default=None,
    help="Run folder (default: CHARACTER/loras/<family>/<run>).",
)
@click.option(
    "--run", "run_name", default=None, help="Run name under CHARACTER/loras/<family>/ (default: run-<date>-<time>)."
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run (--run/--out, else the newest) from its newest complete checkpoint.",
)
@device_option()
@dtype_option("Mixed precision on GPU (auto: the preset's train.mixed_precision); CPU always trains in fp32.")
@backend_option(default="dlib", help_text="Face backend that scores identity of the probe renders.", multiple=True)
@click.option(
    "--clip-model",
    type=click.Path(file_okay=False, path_type=str),
    default=None,
    help="Local CLIP model folder for prompt adherence (default: eval.clip_model, then $CHARKIT_CLIP_MODEL).",
)
@click.option(
    "--model-config",
    type=click.Path(path_type=str),
    default=None,
    help="Diffusers folder or hub id with the configs of a single-file --model (needed offline).",
)
@allow_pickle_option()
@click.option("--no-register", is_flag=True, help="Do not record the LoRA in character.toml.")
@click.option(
    "--plan",
    "plan_only",
    is_flag=True,
    help="Print the estimated peak GPU memory per component (from the model's configs, no weights loaded) and "
    "whether it fits the device (or --vram), then stop.",
)
@click.option(
    "--vram",
    type=click.FloatRange(min=1),
    default=None,
    help="GPU memory in GiB to check --plan against (default: the CUDA device's).",
)
@click.option(
    "--full-size",
    is_flag=True,
    help="Train a tiny model (charkit tiny-model) at the preset's resolution too (default: 64 px, with a warning).",
)
@quiet_option()
def train(
    character,
    model,
    preset,
    steps,
    eval_every,
    out,
    run_name,
    resume,
    device,
    dtype,
    backend,
    clip_model,
    model_config,
    allow_pickle_weights,
    no_register,
    plan_only,
    vram,
    full_size,
    quiet,
):
    """Train a character LoRA and pick its best checkpoint by measured identity.

    \b
    Runs `charkit prep` first when CHARACTER has no dataset/ folder. Every --eval-every steps it
    saves a checkpoint, renders the preset's probe prompts and scores the face against the
    references; at the end it exports best.safetensors (diffusers) and best.kohya.safetensors
    and writes training_report.html. Ctrl-C stops at the next step; `--resume` continues from
    the newest complete checkpoint. A tiny model (charkit tiny-model) trains at 64 px.

    \b
    Examples:
      charkit train characters/alice -m runwayml/stable-diffusion-v1-5 -p training/sd15-lora.toml
      charkit train characters/alice -m ./tiny-sd15 -p training/sd15-lora.toml --steps 20 --eval-every 10
      charkit train characters/alice -m ./sdxl -p training/sdxl-lora.toml --run first --resume
      charkit train characters/alice -m black-forest-labs/FLUX.1-dev -p training/flux-lora.toml --plan --vram 24
    """
    if plan_only:
        from .loop import resolve_preset
        from .memory import plan_for_character

        p = resolve_preset(preset, steps=steps, eval_every=eval_every, dtype=None if dtype == "auto" else dtype)
        click.echo(
            plan_for_character(character, p, model, model_config=model_config, vram_gib=vram, device=device).to_text()
        )
        return
    from .loop import train_lora

    result = train_lora(
        character,
        model=model,
        preset=preset,
        steps=steps,
        eval_every=eval_every,
        out=out,
        run=run_name,
        resume=resume,
        device=device,
        dtype=None if dtype == "auto" else dtype,
        backend=backend,
        clip_model=clip_model,
        model_config=model_config,
        allow_pickle_weights=allow_pickle_weights,
        register=not no_register,
        full_size=full_size,
        progress=not quiet,
        log=lambda message: click.echo(f"charkit train: {message}", err=True),
    )
    if result is None:  # a non-main process of a multi-GPU run
        return
    click.echo(f"best: step {result.choice.step}: {result.best}")
    if result.kohya:
        click.echo(f"kohya: {result.kohya}")
    click.echo(f"why: {result.choice.reason}")
    click.echo(f"report: {result.report_html}")
    if result.registered:
        click.echo(f"registered in {result.registered}")
