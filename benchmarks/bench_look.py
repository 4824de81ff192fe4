"""Benchmark: milliseconds per image for measure_look at 512 px and 2048 px.

    python benchmarks/bench_look.py [--repeat 20]

The images are the public-domain test portraits (tests/data/faces) resized so their longer
side is 512 or 2048 px, face box scaled along. The cost is mostly fixed (the matched crop is
about 2 x scale_to on a side whatever the photo's size); what grows with the photo is the crop's
downscale and, for PIL input, the conversion to an array.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
from fixtures_look import BOXES, photo  # noqa: E402

from charkit.look import measure_look  # noqa: E402


def bench(side: int, repeat: int) -> tuple[float, float]:
    """(median ms per image from a numpy array, median ms from a PIL image) over the test photos."""
    arr_ms, pil_ms = [], []
    for name, box in BOXES.items():
        im = photo(name)
        f = side / max(im.size)
        im = im.resize((round(im.width * f), round(im.height * f)))
        arr, b = np.asarray(im), tuple(v * f for v in box)
        measure_look(arr, b)  # warm-up
        for _ in range(repeat):
            t = time.perf_counter()
            measure_look(arr, b)
            arr_ms.append(1e3 * (time.perf_counter() - t))
            t = time.perf_counter()
            measure_look(im, b)
            pil_ms.append(1e3 * (time.perf_counter() - t))
    return statistics.median(arr_ms), statistics.median(pil_ms)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    print("| image side | ms per image (array) | ms per image (PIL) |\n|---|---|---|")
    for side in (512, 2048):
        a, p = bench(side, args.repeat)
        print(f"| {side} px | {a:.1f} | {p:.1f} |")


if __name__ == "__main__":
    main()
