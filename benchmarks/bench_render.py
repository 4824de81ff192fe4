"""How much does charkit's render lifecycle cost on top of diffusers? Prints ratios (not a test).

On one tiny SD1.5 pipeline with the same settings (size, steps, seeds):

1. per image: ``charkit render`` (LoRA/IP state context, seeded generators, film grain, PNG with
   metadata, atomic writes, manifest after every scene) vs the raw diffusers call, and vs the raw
   call plus a plain ``image.save``. Fixed costs (imports, check_inputs, load) are removed by
   differencing two storyboard lengths: (T(N2 scenes) - T(N1 scenes)) / (N2 - N1). Goal <= 1.03x.
2. an N-scene storyboard (one load) vs N separate renders that each load the model.
3. best-of-N: all candidates in one batched pipeline call vs one call per candidate.
4. scene batching: a storyboard whose scenes share model, size, steps, sampler and LoRAs, rendered with
   ``--scene-batch 4`` (one pipeline call per 4 scenes, per-image prompts and generators) vs one call per scene.
   Goal >= 1.3x on a tiny model on CPU at 32 px, where per-call costs dominate as they do on a GPU (at 64 px the tiny
   UNet is compute-bound on one CPU thread and batching gains nothing); gpu_check.py measures it on a GPU (>= 1.5x).

    .venv/bin/python benchmarks/bench_render.py [--steps 8] [--size 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT / "tests" / "data" / "faces"


def storyboard(path: Path, tiny_root: Path, n: int, *, steps: int, size: int, out: str, candidates: int = 1) -> Path:
    import yaml

    scenes = [{"id": f"s{i:03d}", "prompt": f"photo of {{alice}} man, shot {i}", "seed": 1000 + i} for i in range(n)]
    if candidates > 1:
        for s in scenes:
            s["candidates"] = candidates
    data = {
        "project": "bench",
        "output": out,
        "defaults": {
            "model": {"family": "sd15", "source": str(tiny_root)},
            "size": f"{size}x{size}",
            "steps": steps,
            "guidance": 7.0,
        },
        "characters": {"alice": "alice"},
        "scenes": scenes,
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def make_character(work: Path) -> None:
    d = work / "alice"
    (d / "refs").mkdir(parents=True, exist_ok=True)
    for f in ("obama.jpg", "obama2.jpg"):
        shutil.copy(FACES / f, d / "refs" / f)
    (d / "character.toml").write_text('name = "alice"\ntrigger = ["ohwx"]\nclass_word = "man"\n')


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n1", type=int, default=2)
    ap.add_argument("--n2", type=int, default=10)
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument("--scene-batch", type=int, default=4)
    ap.add_argument("--batch-scenes", type=int, default=12, help="storyboard length of the scene-batching measure")
    ap.add_argument(
        "--batch-px",
        type=int,
        default=32,
        help="image size of the scene-batching measure (small: per-call costs dominate, as on a GPU)",
    )
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from diffusers import StableDiffusionPipeline

    from charkit.families import get_family
    from charkit.render.lifecycle import render_storyboard

    work = Path(tempfile.mkdtemp(prefix="charkit-bench-render-"))
    try:
        tiny = get_family("sd15").build_tiny(work / "tiny", controlnet=False, ip_adapter=False, single_file=False)
        make_character(work)
        kw = dict(steps=args.steps, size=args.size)
        short = storyboard(work / "short.yaml", tiny.root, args.n1, out="o_short", **kw)
        long = storyboard(work / "long.yaml", tiny.root, args.n2, out="o_long", **kw)
        render_storyboard(short, progress=False)  # warm-up: imports, caches, first-call costs

        pipe = StableDiffusionPipeline.from_pretrained(tiny.root, safety_checker=None, requires_safety_checker=False)
        from diffusers import DPMSolverMultistepScheduler

        pipe.scheduler = DPMSolverMultistepScheduler.from_config(
            pipe.scheduler.config
        )  # the family default charkit uses
        pipe.set_progress_bar_config(disable=True)

        def raw(n: int, save_to: Path | None = None) -> None:
            for i in range(n):
                g = torch.Generator("cpu").manual_seed(1000 + i)
                with torch.inference_mode():
                    img = pipe(
                        f"photo of ohwx man, shot {i}",
                        width=args.size,
                        height=args.size,
                        num_inference_steps=args.steps,
                        guidance_scale=7.0,
                        generator=g,
                    ).images[0]
                if save_to is not None:
                    img.save(save_to / f"{i}.png")

        raw(1)
        saves = work / "raw_saves"
        saves.mkdir()
        per_raw, per_raw_save, per_ck = [], [], []
        for _ in range(args.repeats):
            per_raw.append(timed(lambda: raw(args.n2)) / args.n2)
            per_raw_save.append(timed(lambda: raw(args.n2, saves)) / args.n2)
            t_short = timed(lambda: render_storyboard(short, force=True, progress=False))
            t_long = timed(lambda: render_storyboard(long, force=True, progress=False))
            per_ck.append((t_long - t_short) / (args.n2 - args.n1))
        raw_s, raw_save_s, ck_s = map(statistics.median, (per_raw, per_raw_save, per_ck))

        # 2. one storyboard of N scenes vs N single-scene renders (each loads the model)
        singles = [storyboard(work / f"one{i}.yaml", tiny.root, 1, out=f"o_one{i}", **kw) for i in range(args.n2)]
        t_board = statistics.median(
            timed(lambda: render_storyboard(long, force=True, progress=False)) for _ in range(args.repeats)
        )
        t_separate = statistics.median(
            timed(lambda: [render_storyboard(s, force=True, progress=False) for s in singles])
            for _ in range(args.repeats)
        )

        # 3. best-of-N batched vs sequential (identity scoring included in both)
        bon = storyboard(work / "bon.yaml", tiny.root, 2, out="o_bon", candidates=args.candidates, **kw)
        render_storyboard(bon, force=True, progress=False)
        t_batched = statistics.median(
            timed(lambda: render_storyboard(bon, force=True, progress=False)) for _ in range(args.repeats)
        )
        t_seq = statistics.median(
            timed(lambda: render_storyboard(bon, force=True, batch_size=1, progress=False)) for _ in range(args.repeats)
        )

        # 4. scene batching: one call per `scene_batch` scenes vs one call per scene (same load in both)
        many = storyboard(
            work / "many.yaml", tiny.root, args.batch_scenes, out="o_many", steps=args.steps, size=args.batch_px
        )
        render_storyboard(many, force=True, scene_batch=args.scene_batch, progress=False)
        t_scene_batched = statistics.median(
            timed(lambda: render_storyboard(many, force=True, scene_batch=args.scene_batch, progress=False))
            for _ in range(args.repeats)
        )
        t_scene_single = statistics.median(
            timed(lambda: render_storyboard(many, force=True, scene_batch=1, progress=False))
            for _ in range(args.repeats)
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"tiny sd15, {args.size}x{args.size}, {args.steps} steps, torch threads {torch.get_num_threads()}, "
        f"device cpu, median of {args.repeats}"
    )
    print(f"{'measure':<52} {'value':>10}")
    print(f"{'raw diffusers call, s/image':<52} {raw_s:>10.4f}")
    print(f"{'raw diffusers call + image.save, s/image':<52} {raw_save_s:>10.4f}")
    print(f"{'charkit render, s/image (differenced)':<52} {ck_s:>10.4f}")
    print(f"{'ratio charkit / raw call (goal <= 1.03)':<52} {ck_s / raw_s:>10.3f}")
    print(f"{'ratio charkit / raw call + save':<52} {ck_s / raw_save_s:>10.3f}")
    print(f"{f'{args.n2}-scene storyboard, s':<52} {t_board:>10.3f}")
    print(f"{f'{args.n2} separate single-scene renders, s':<52} {t_separate:>10.3f}")
    print(f"{'ratio separate / storyboard':<52} {t_separate / t_board:>10.2f}")
    print(f"{f'best-of-{args.candidates} x 2 scenes, batched, s':<52} {t_batched:>10.3f}")
    print(f"{f'best-of-{args.candidates} x 2 scenes, sequential, s':<52} {t_seq:>10.3f}")
    print(f"{'ratio sequential / batched':<52} {t_seq / t_batched:>10.2f}")
    print(f"{f'{args.batch_scenes} scenes at {args.batch_px} px, one call per scene, s':<52} {t_scene_single:>10.3f}")
    print(f"{f'{args.batch_scenes} scenes, --scene-batch {args.scene_batch}, s':<52} {t_scene_batched:>10.3f}")
    print(f"{'ratio per-scene / scene-batched (goal >= 1.3)':<52} {t_scene_single / t_scene_batched:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
