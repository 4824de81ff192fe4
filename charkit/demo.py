"""``charkit demo``: the whole loop, photos -> LoRA -> scenes -> identity report, in one command.

Without ``--model`` it runs offline on a CPU in a few minutes: tiny random-weight SD1.5 and SDXL
pipelines (built from configs), an example character made from public-domain portraits shipped
with charkit, ``prep`` -> a short ``train`` with identity-scored checkpoints -> ``render`` of a
three-scene episode on both families with best-of-N -> ``verify`` of the renders plus a folder of
"external" images, written as one comparison report. Tiny random models draw noise, so their
scenes show ``no_face``; the external photos show what ``pass`` and ``drift`` look like.

With ``--model`` (a hub id, diffusers folder or single .safetensors file) the same loop runs for
real on that model, at the family's resolution and the preset's step count: use a GPU.

Lifecycle (each step a public function)::

    prepare_models -> prepare_characters -> prep -> train -> render -> verify -> summarize
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import click

from .errors import CharkitError

DEMO_ASSETS = "assets/demo"
#: the example character: two distinct portraits and a re-saved copy (prep rejects it as a near-duplicate)
OBAMA_REFS = ("obama.jpg", "obama2.jpg", "32bit.png")
BIDEN_REFS = ("biden.jpg",)
#: "external" images (stand-ins for a Midjourney/Leonardo/DALL-E download folder), in scene order
EXTERNAL = (("01-obama3.jpg", "obama3.jpg"), ("02-biden.jpg", "biden.jpg"), ("03-hall.jpg", None))

#: the demo's tiny models: the UNet families (fast on a CPU); the transformer families have tiny models too
TINY_DENOISER = "unet"
TINY_SIZE = 64


@dataclass
class DemoModel:
    label: str
    family: str
    source: str
    tiny: bool


@dataclass
class DemoResult:
    out: Path
    models: list[DemoModel]
    prep: object
    training: object
    render: object
    report: object
    report_html: Path
    seconds: dict[str, float] = field(default_factory=dict)


def _asset(name: str) -> Path:
    return Path(str(resources.files("charkit") / DEMO_ASSETS / name))


def prepare_models(out: Path, model: str | None, *, allow_pickle_weights: bool = False) -> list[DemoModel]:
    """Tiny SD1.5 + SDXL pipelines under ``out/models`` (built once), or the user's real model."""
    from .families import get_family, resolve_family

    if model is not None:
        family = resolve_family(model, allow_pickle_weights=allow_pickle_weights)
        return [DemoModel(label=family, family=family, source=str(model), tiny=False)]
    models = []
    from .families import specs

    for fam in [s.name for s in specs() if s.denoiser == TINY_DENOISER]:
        folder = out / "models" / f"tiny-{fam}"
        if not (folder / "model_index.json").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            get_family(fam).build_tiny(folder, controlnet=False, ip_adapter=False, single_file=False)
        models.append(DemoModel(label=f"tiny-{fam}", family=fam, source=str(folder), tiny=True))
    return models


def prepare_characters(out: Path) -> dict[str, Path]:
    """Copy the example characters (public-domain portraits shipped with charkit) under ``out/characters``."""
    from .character import CharacterSpec, save_spec

    chars = {}
    specs = {
        "obama": (
            OBAMA_REFS,
            CharacterSpec(
                name="obama",
                trigger=["ohwx"],
                class_word="man",
                description="Demo character: public-domain portraits of Barack Obama.",
                negative_prompt="blurry, deformed, cartoon",
            ),
        ),
        "biden": (
            BIDEN_REFS,
            CharacterSpec(
                name="biden",
                trigger=["zwx"],
                class_word="man",
                description="Demo character: the public-domain portrait of Joe Biden.",
            ),
        ),
    }
    for name, (refs, spec) in specs.items():
        d = out / "characters" / name
        if not (d / "character.toml").is_file():
            (d / "refs").mkdir(parents=True, exist_ok=True)
            for r in refs:
                shutil.copy(_asset(r), d / "refs" / r)
            save_spec(d, spec)
        chars[name] = d
    return chars


def external_folder(out: Path) -> Path:
    """Images "made elsewhere": two real portraits and a real photo without a face."""
    from PIL import Image

    d = out / "external-photos"
    d.mkdir(parents=True, exist_ok=True)
    for name, src in EXTERNAL:
        if (d / name).exists():
            continue
        if src is None:  # the chandelier corner of obama3.jpg: a real photo with no face
            with Image.open(_asset("obama3.jpg")) as im:
                im.crop((0, 0, 620, 900)).save(d / name, quality=90)
        else:
            shutil.copy(_asset(src), d / name)
    return d


TINY_STEPS = 6


def training_preset(family: str, *, tiny: bool) -> str | dict:
    """The family's preset file, or a preset shrunk for tiny models (steps come from ``--steps``)."""
    if tiny:
        return {
            "family": family,
            "lora": {"rank": 4, "alpha": 4},
            "train": {"batch_size": 1, "resolution": TINY_SIZE, "mixed_precision": "no"},
            "optimizer": {"learning_rate": 1e-3},
            "eval": {
                "seeds": [1],
                "steps": 2,
                "prompts": ["a photo of {trigger} {class}, portrait", "an oil painting of {trigger} {class}"],
            },
        }
    preset_file = Path("training") / f"{family}-lora.toml"
    return str(preset_file) if preset_file.is_file() else {"family": family}


def storyboard(out: Path, models: list[DemoModel], characters: dict[str, Path], *, candidates: int) -> dict:
    """A three-scene episode with two characters, rendered on every model (a models matrix)."""
    tiny = all(m.tiny for m in models)
    defaults = {"seed": 7, "preset": "lifelike", "candidates": candidates}
    if tiny:
        defaults.update({"size": f"{TINY_SIZE}x{TINY_SIZE}", "steps": 4})
    return {
        "project": "charkit demo: the podium",
        "output": str(out / "renders"),
        "defaults": defaults,
        "characters": {n: str(p) for n, p in characters.items()},
        "identity": {"backend": "dlib"},
        "models": [{"label": m.label, "family": m.family, "source": m.source} for m in models],
        "scenes": [
            {"id": "s01-podium", "prompt": "photo of {obama} man speaking at a podium, flags, press photo"},
            {
                "id": "s02-walk",
                "prompt": "{obama} man and {biden} man walking side by side, White House lawn",
                "characters": ["obama", "biden"],
            },
            {"id": "s03-office", "prompt": "portrait of {obama} man in the Oval Office, warm light", "seed": 1234},
        ],
    }


def prep_step(characters: dict[str, Path], model: DemoModel, backend, echo):
    """``charkit prep`` of the example character (the re-saved copy is rejected as a near-duplicate)."""
    from .dataset import prep_dataset

    prep = prep_dataset(
        characters["obama"], family=model.family, resolution=TINY_SIZE if model.tiny else None, backend=backend
    )
    echo(
        f"prep: kept {len(prep.items)} of {len(prep.items) + len(prep.rejected)} references"
        + "".join(f"; rejected {Path(r.path).name} ({r.reason})" for r in prep.rejected)
    )
    return prep


def train_step(
    out: Path, characters: dict[str, Path], model: DemoModel, *, steps, device, dtype, allow_pickle_weights, echo
):
    """A short ``charkit train`` with two identity-scored checkpoints (tiny models), registered in character.toml."""
    from .train import train_lora

    if model.tiny:
        steps = steps or TINY_STEPS
    lora_dir = out / "loras" / model.family
    shutil.rmtree(lora_dir, ignore_errors=True)  # the demo's own scratch: every run trains afresh
    training = train_lora(
        characters["obama"],
        model=model.source,
        preset=training_preset(model.family, tiny=model.tiny),
        steps=steps,
        eval_every=max(1, steps // 2) if model.tiny else None,
        device=device,
        dtype=None if model.tiny else dtype,
        backend="dlib",
        allow_pickle_weights=allow_pickle_weights,
        progress=False,
        out=lora_dir,
    )
    echo(
        f"train: {training.steps} steps, {len(training.scores)} checkpoints scored; "
        f"chose step {training.choice.step} ({training.choice.reason})"
    )
    return training


def render_step(out: Path, models, characters, *, candidates: int, device, dtype, allow_pickle_weights, echo):
    """``charkit render`` of the three-scene episode on every demo model, best-of-N."""
    from .render.lifecycle import render_storyboard
    from .render.storyboard import parse_storyboard

    board = parse_storyboard(storyboard(out, models, characters, candidates=candidates), source="demo storyboard")
    rendered = render_storyboard(
        board,
        out=out / "renders",
        device=device,
        dtype=dtype,
        progress=False,
        allow_pickle_weights=allow_pickle_weights,
    )
    echo(
        f"render: {len(rendered.rendered)} images rendered, {len(rendered.skipped)} unchanged "
        f"({len(board.scenes)} scenes x {len(models)} models, best of {candidates})"
    )
    return rendered


def verify_step(out: Path, characters, backend):
    """``charkit verify`` of the renders beside a folder of "external" photos: one comparison report."""
    from .verify import verify

    return verify(
        [],
        runs=[("renders", out / "renders"), ("external-photos", external_folder(out))],
        characters=[characters["obama"]],
        backend=backend,
        out=out / "report",
    )


def run_demo(
    *,
    model: str | None = None,
    out: str | os.PathLike = "demo-out",
    device: str | None = None,
    dtype: str | None = None,
    steps: int | None = None,
    candidates: int = 2,
    allow_pickle_weights: bool = False,
    echo=print,
) -> DemoResult:
    """Run the whole loop; returns every stage's result.

    >>> r = run_demo(out="/tmp/demo")  # doctest: +SKIP
    >>> r.report_html.name  # doctest: +SKIP
    'report.html'
    """
    from .devices import resolve_device, resolve_precision
    from .identity import get_backend

    out = Path(out)
    device = resolve_device(device)
    dtype = resolve_precision(dtype, device)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t0
        timings[name] = time.perf_counter() - t0
        t0 = time.perf_counter()

    echo(f"charkit demo -> {out}/ ({'tiny random models, offline' if model is None else model} on {device})")
    models = prepare_models(out, model, allow_pickle_weights=allow_pickle_weights)
    characters = prepare_characters(out)
    lap("models + characters")
    backend = get_backend("dlib")  # offline, and independent of any conditioning model
    prep = prep_step(characters, models[0], backend, echo)
    lap("prep")
    common = dict(device=device, dtype=dtype, allow_pickle_weights=allow_pickle_weights, echo=echo)
    training = train_step(out, characters, models[0], steps=steps, **common)
    lap("train")
    rendered = render_step(out, models, characters, candidates=candidates, **common)
    lap("render")
    report = verify_step(out, characters, backend)
    lap("verify")
    return DemoResult(
        out=out,
        models=models,
        prep=prep,
        training=training,
        render=rendered,
        report=report,
        report_html=out / "report" / "report.html",
        seconds=timings,
    )


def summary_lines(result: DemoResult) -> list[str]:
    """The closing table: one row per run of the comparison report."""
    rows = [("run", "images", "pass", "drift", "no_face", "mean similarity")]
    for r in result.report.runs:
        mean = "-" if r.mean_similarity is None else f"{r.mean_similarity:.3f}"
        rows.append((r.run, str(r.images), str(r.passed), str(r.drift), str(r.no_face), mean))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    base = result.report.characters[0]
    lines.append(
        f"reference baseline {base.name}: {base.baseline_mean:.3f} (threshold {result.report.threshold:.2f}, "
        f"{result.report.backend.name})"
    )
    return lines


@click.command()
@click.option(
    "--model",
    default=None,
    metavar="SOURCE",
    help="Run the loop for real on this model (hub id, diffusers folder or .safetensors file); "
    "default: tiny random SD1.5 + SDXL models, offline.",
)
@click.option(
    "--out",
    default="demo-out",
    show_default=True,
    type=click.Path(path_type=str),
    help="Folder for everything the demo writes.",
)
@click.option("--device", default=None, help="torch device (default: cuda when available, else cpu).")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float16", "bfloat16"]),
    default=None,
    help="Render dtype (default: float16 on CUDA, float32 on CPU).",
)
@click.option(
    "--steps", type=int, default=None, help="Training steps (default: 6 for tiny models, the preset's otherwise)."
)
@click.option("--candidates", type=int, default=2, show_default=True, help="Best-of-N candidates per scene.")
@click.option("--allow-pickle-weights", is_flag=True, help="Allow .ckpt/.pt/.bin weights (unsafe: they can run code).")
def demo(model, out, device, dtype, steps, candidates, allow_pickle_weights):
    """Run the whole loop: photos -> LoRA -> scenes on two models -> identity report.

    \b
    Examples:
      charkit demo                                      # offline, CPU, tiny random models
      charkit demo --model stabilityai/stable-diffusion-xl-base-1.0 --device cuda
    """
    if candidates < 1:
        raise CharkitError("--candidates must be at least 1")
    from .cli_options import quiet_run

    quiet_run()  # the demo prints its own story: library bars and notices go to the run log (as with -q)
    started = time.perf_counter()
    result = run_demo(
        model=model,
        out=out,
        device=device,
        dtype=dtype,
        steps=steps,
        candidates=candidates,
        allow_pickle_weights=allow_pickle_weights,
        echo=click.echo,
    )
    click.echo("")
    for line in summary_lines(result):
        click.echo(line)
    click.echo("")
    if model is None:
        click.echo(
            "Tiny random models draw noise, so their scenes show no_face: every step above was real "
            "(diffusers pipelines, a peft LoRA, dlib face embeddings), only the weights are random. "
            "The external-photos run shows what pass and drift look like on real faces. "
            "Run `charkit demo --model <hub id | folder | file.safetensors>` on a GPU for the real loop."
        )
    click.echo(f"done in {time.perf_counter() - started:.0f} s; report: {result.report_html}")
