"""Render a scene series from Python with charkit's library API.

Offline by default: builds a tiny random-weight SD1.5 (noise images, but every step real) and uses
the example characters in characters/ (public-domain portraits), so it runs anywhere in seconds:

    .venv/bin/python examples/render_series.py --out /tmp/series
    .venv/bin/python examples/render_series.py --storyboard examples/episode.yaml --device cuda   # a real run

It shows the lifecycle step by step (check_inputs -> load -> render_candidates -> record), then the
one-call version (render_storyboard), a resume, and the PNG metadata.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


def build_storyboard(model_dir: Path, out: Path):
    """A storyboard built in code (the same model as the YAML file parses into)."""
    from charkit.render.storyboard import Storyboard

    return Storyboard.model_validate(
        {
            "project": "API demo",
            "output": str(out / "renders"),
            "defaults": {
                "model": {"family": "sd15", "source": str(model_dir)},
                "size": "64x64",
                "steps": 4,
                "preset": "lifelike",
                "seed": 7,
            },
            "characters": {"obama": str(REPO / "characters" / "obama"), "biden": str(REPO / "characters" / "biden")},
            "scenes": [
                {"id": "s01-podium", "prompt": "photo of {obama} man at a podium"},
                {"id": "s02-walk", "prompt": "{obama} man and {biden} man walking, press photo", "candidates": 3},
                {"id": "s03-office", "prompt": "portrait of {biden} man in an office", "seed": 1234},
            ],
        }
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("out/render-series"))
    ap.add_argument("--storyboard", type=Path, help="render this YAML storyboard instead of the built-in demo")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    args = ap.parse_args(argv)

    from charkit.render.lifecycle import render_storyboard
    from charkit.render.outputs import read_png_metadata

    if args.storyboard:
        result = render_storyboard(args.storyboard, device=args.device, dtype=args.dtype)
        print(f"rendered {len(result.rendered)}, unchanged {len(result.skipped)} -> {result.manifest_path}")
        return 0

    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    from charkit.distributed import SingleProcess
    from charkit.families import get_family
    from charkit.render.lifecycle import load, make_context, record, render_candidates
    from charkit.render.plan import RenderOptions, check_inputs

    model_dir = args.out / "tiny-sd15"
    if not (model_dir / "model_index.json").is_file():
        get_family("sd15").build_tiny(model_dir, controlnet=False, ip_adapter=False, single_file=False)
    board = build_storyboard(model_dir, args.out)

    # 1. The lifecycle by hand: every step is a public function.
    plan = check_inputs(board, out=args.out / "by-hand", options=RenderOptions(device=args.device, dtype=args.dtype))
    print("plan:", [(j.scene.id, j.prompt, j.seed) for j in plan.jobs])
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    ctx = make_context(plan, state=SingleProcess())  # caches control maps and reference profiles
    loaded = load(plan.models[0], plan, device=args.device)
    rendered = render_candidates(loaded, plan.jobs[0], ctx)  # condition -> denoise -> postprocess -> score -> select
    rec = record(rendered, ctx)  # the kept candidate as a PNG with its metadata
    print(f"step by step: {rec.file} ({rec.selection}) in {rendered.seconds:.2f}s")

    # 2. The same in one call; a rerun renders nothing (every scene unchanged).
    result = render_storyboard(board, device=args.device, dtype=args.dtype, progress=False)
    again = render_storyboard(board, device=args.device, dtype=args.dtype, progress=False)
    print(
        f"render_storyboard: {len(result.rendered)} rendered; rerun: {len(again.rendered)} rendered, {len(again.skipped)} unchanged"
    )
    for rec in result.manifest.images:
        scores = [c.status for c in rec.candidates]
        print(
            f"  {rec.file:<16} seed {rec.seed:<11} characters {rec.characters} candidates {scores} kept by {rec.selection}"
        )

    # 3. What the PNG carries (A1111 `parameters` + the charkit record).
    meta = read_png_metadata(result.out_dir / result.manifest.images[1].file)
    print("parameters chunk:\n  " + meta["parameters"].replace("\n", "\n  "))
    print("charkit chunk keys:", sorted(meta["charkit"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
