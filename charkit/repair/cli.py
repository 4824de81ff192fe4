"""``charkit repair``: the click layer over :func:`charkit.repair.lifecycle.repair_render_dir`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..cli_options import (
    allow_pickle_option,
    backend_option,
    device_option,
    dtype_option,
    face_models_option,
    quiet_option,
)


@click.command("repair")
@click.argument("render_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--target",
    type=float,
    help="Repair every character whose face scores below this (default: the evaluator's calibrated threshold).",
)
@click.option("--tries", type=int, default=3, show_default=True, help="Seeds tried per face; the best one may be kept.")
@click.option(
    "--strength",
    type=float,
    default=0.4,
    show_default=True,
    help="Denoising strength of the face crop (0.3-0.5 keeps pose and light; 1 redraws the face).",
)
@click.option("--steps", type=int, help="Sampling steps before strength (default: the scene's; runs steps x strength).")
@click.option(
    "--guidance",
    type=float,
    help="Guidance of the re-draw (default: the scene's; a Flux Fill model: 30, what it is trained for).",
)
@click.option(
    "--padding", type=int, default=32, show_default=True, help="Pixels of context around the feathered face box."
)
@click.option("--dilate", type=int, default=4, show_default=True, help="Pixels the detected face box grows by.")
@click.option(
    "--mask-blur", type=int, default=4, show_default=True, help="Feather width in pixels; nothing outside changes."
)
@click.option(
    "--margin",
    type=float,
    default=0.02,
    show_default=True,
    help="Keep a try only when it beats the original's score by at least this much.",
)
@click.option(
    "--resolution",
    type=int,
    help="Inpaint size of the crop's long side (default: the family's native resolution; 64 on a tiny model).",
)
@click.option(
    "--inpaint-model",
    metavar="SOURCE",
    help="A model of the same family that re-draws faces instead of the scene's (e.g. an inpainting fine-tune or "
    "FLUX.1-Fill-dev); the characters' LoRAs load onto it.",
)
@backend_option(
    default=None,
    help_text="Evaluator that scores every face (default: the storyboard's, but dlib for images conditioned with "
    "FaceID: never the model that conditioned the image).",
)
@device_option()
@dtype_option()
@face_models_option()
@allow_pickle_option()
@click.option("--scene", "scenes", multiple=True, metavar="ID", help="Repair only this scene (repeatable).")
@quiet_option()
def repair(
    render_dir,
    target,
    tries,
    strength,
    steps,
    guidance,
    padding,
    dilate,
    mask_blur,
    margin,
    resolution,
    inpaint_model,
    backend,
    device,
    dtype,
    face_models,
    allow_pickle_weights,
    scenes,
    quiet,
):
    """Re-draw only the faces that drifted; keep a try only when its identity score rises.

    Every face of a character scoring below the target is cropped, re-denoised with that
    character's LoRA and trigger words, pasted back through a feathered mask (no pixel
    outside it changes) and scored again. The original is kept in DIR/originals/ and the
    manifest records every try. Under `accelerate launch` the images are split across processes.

    \b
      charkit repair renders/ep1
      charkit repair renders/ep1 --tries 6 --strength 0.5 --target 0.5
      charkit repair renders/flux --inpaint-model black-forest-labs/FLUX.1-Fill-dev
    """
    from ..devices import resolve_device, resolve_precision
    from .lifecycle import repair_render_dir

    device = resolve_device(device)
    result = repair_render_dir(
        render_dir,
        target=target,
        tries=tries,
        strength=strength,
        steps=steps,
        guidance=guidance,
        padding=padding,
        dilate=dilate,
        mask_blur=mask_blur,
        margin=margin,
        resolution=resolution,
        backend=backend,
        face_models=face_models,
        inpaint_model=inpaint_model,
        device=device,
        dtype=resolve_precision(dtype, device),
        allow_pickle_weights=allow_pickle_weights,
        scenes=list(scenes) or None,
        progress=not quiet,
    )
    if result.manifest is None:
        return  # not the main process: it reports for everyone
    click.echo(summary(result))


def summary(result) -> str:
    """One line per outcome, counted from the merged manifest (under accelerate ``repaired`` is one share)."""
    faces = [
        f for r in result.manifest.images if r.repair and r.key not in set(result.skipped) for f in r.repair["faces"]
    ]
    kept = [f for f in faces if f["kept"]]
    lines = [
        f"repaired {len(kept)} of {len(faces)} drifted face{'s' if len(faces) != 1 else ''} "
        f"({len(faces) - len(kept)} kept the original), unchanged {len(result.skipped)}, "
        f"passing {len(result.passed)}"
        + (f", locked {len(result.locked)}" if result.locked else "")
        + f" -> {result.manifest_path}"
    ]
    for f in faces:
        if f["kept"]:
            lines.append(f"  {f['character']}: {f['before']:.3f} -> {f['after']:.3f} kept")
        else:
            best = "no face" if f["best_similarity"] is None else f"{f['best_similarity']:.3f}"
            lines.append(f"  {f['character']}: {f['before']:.3f}, best try {best}: original kept ({f['reason']})")
    for scene, model, names in result.not_found:
        lines.append(f"  no face found for {', '.join(names)} in {scene} ({model}): reported, not repaired")
    return "\n".join(lines)


if __name__ == "__main__":  # `accelerate launch -m charkit.repair.cli RENDER_DIR ...`
    from ..cli import main

    main(["repair", *sys.argv[1:]])
