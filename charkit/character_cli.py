"""``charkit character init|show``."""

from __future__ import annotations

import click

from .character import CharacterSpec, init_character, load_character
from .cli_options import backend_option, face_models_option


def _help(field: str) -> str:
    return CharacterSpec.model_fields[field].description or ""


@click.group()
def character():
    """Create and inspect characters (characters/NAME/character.toml + refs/)."""


@character.command("init")
@click.argument("name")
@click.option("--refs", required=True, type=click.Path(path_type=str), help="Folder of 10-30 photos of the character.")
@click.option(
    "--root",
    default="characters",
    show_default=True,
    type=click.Path(path_type=str),
    help="Folder that holds the character folders.",
)
@click.option("--trigger", multiple=True, help=_help("trigger"))
@click.option("--class-word", default="person", show_default=True, help=_help("class_word"))
@click.option("--description", default="", help=_help("description"))
@click.option("--negative-prompt", default="", help=_help("negative_prompt"))
@click.option("--force", is_flag=True, help="Replace an existing character of that name.")
def init(name, refs, root, trigger, class_word, description, negative_prompt, force):
    """Create characters/NAME from a folder of photos (validated and copied; originals untouched).

    \b
    Example:
      charkit character init alice --refs ~/photos/alice --trigger ohwx --class-word woman
    """
    r = init_character(
        name,
        refs,
        root=root,
        trigger=list(trigger),
        class_word=class_word,
        description=description,
        negative_prompt=negative_prompt,
        force=force,
    )
    from .paths import safe_text

    click.echo(safe_text(f"created {r.character.dir}/character.toml with {len(r.copied)} reference photos"))
    for rej in r.rejected:
        click.echo(safe_text(f"  skipped {rej.path}: {rej.reason}"))  # a non-UTF-8 name shows as \xNN


@character.command("show")
@click.argument("name")
@click.option(
    "--root",
    default="characters",
    show_default=True,
    type=click.Path(path_type=str),
    help="Folder that holds the character folders.",
)
@backend_option(help_text="Face model used for the reference statistics.", multiple=True)
@face_models_option()
def show(name, root, backend, face_models):
    """Print a character and its reference statistics (faces, leave-one-out baseline, outliers), per backend."""
    from .identity import backends_of, get_scorer, profile_for_character

    ch = load_character(name, root)
    click.echo(f"[{ch.dir}]")
    for key, value in ch.spec.model_dump().items():
        click.echo(f"{key} = {value!r}")
    for fb in backends_of(get_scorer(backend, face_models=face_models)):
        echo_profile(ch, profile_for_character(ch, fb), fb.info)


def echo_profile(ch, p, info) -> None:
    """One backend's view of the references; a lone reference is explained, never a bare nan."""
    fmt = lambda v: "-" if v is None or v != v else f"{v:.3f}"
    click.echo(f"references ({info.name}): {len(ch.ref_paths())} files, {len(p.used)} in the centroid")
    if len(p.used) < 2:
        click.echo(
            f"baseline: none: the leave-one-out baseline compares each reference with the others, and "
            f"{len(p.used)} usable reference leaves nothing to compare; add photos (10-30 is best); "
            f"threshold {info.threshold:.2f}"
        )
    else:
        click.echo(
            f"baseline (leave-one-out similarity): mean {fmt(p.baseline_mean)}, min {fmt(p.baseline_min)}; "
            f"threshold {info.threshold:.2f}"
        )
    for path in p.paths:
        flag = "  OUTLIER" if path in p.outliers else ""
        loo = p.loo.get(path)
        score = fmt(loo) if loo is not None and loo == loo else "  -  "
        click.echo(
            f"  {score}  {path}{flag}"
            + ("  (only reference: no other photo to compare with)" if score.strip() == "-" else "")
        )
    for r in p.rejected:
        click.echo(f"  rejected {r.path}: {r.reason}")
