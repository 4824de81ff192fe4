"""Benchmark: the two offline face backends (sface, dlib), and scoring with both against one.

    python benchmarks/bench_identity_backends.py [--repeat N]

Prints four ratios (goals in brackets):
  speed          sface images/s / dlib images/s (detect + embed every face)        [>= 1]
  two vs dlib    time to score with dlib and sface / with dlib alone               (the price of a second opinion)
  two vs sface   time to score with dlib and sface / with sface alone
  two vs sum     time to score with both / (dlib alone + sface alone)              [~1: no cost beyond its own]

The images are the public-domain test portraits (tests/data/faces: 910x1137 to 1434x2333, one face
each), decoded once outside the timings; "scoring" is charkit's score_image on the decoded array
against an obama profile of the same backend (detect, embed, assign, status); "both" is score_image
with a BackendPanel of the two (each backend's score, then the combined decision), so the two-backend
time is what a caller pays for a second, independent evaluator on every image. One thread each
(OMP_NUM_THREADS=1; sface's OpenCV pool follows it, dlib is single-threaded); times are CPU seconds
of this process (each image's best of N runs, summed), so a busy shared box does not skew the ratios.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

FACES = ROOT / "tests" / "data" / "faces"
PHOTOS = ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "32bit.png")


def best_time(fn, repeat: int) -> float:
    """Best CPU time of ``repeat`` calls (process time: the other jobs on a shared box do not count)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    from charkit.identity import BackendPanel, build_profile, score_image
    from charkit.identity.dlib_backend import DlibBackend
    from charkit.identity.sface_backend import SFaceBackend

    images = [np.asarray(Image.open(FACES / f).convert("RGB")) for f in PHOTOS]
    backends = {"dlib": DlibBackend(), "sface": SFaceBackend()}
    panel = BackendPanel(list(backends.values()))
    refs = [FACES / "obama.jpg", FACES / "obama2.jpg"]
    profiles = {n: build_profile("obama", refs, b) for n, b in {**backends, "both": panel}.items()}
    for b in backends.values():  # warm-up: model loading and first-call set-up are start-up cost
        b.analyze(images[0])
    score_image(images[0], [profiles["dlib"]], backends["dlib"])  # scipy import

    # per image, the best of N runs, summed: robust to a busy box
    def per_image(fn) -> float:
        return sum(best_time(lambda im=im: fn(im), args.repeat) for im in images)

    timings = {
        "analyze dlib": per_image(backends["dlib"].analyze),
        "analyze sface": per_image(backends["sface"].analyze),
        "score dlib": per_image(lambda im: score_image(im, [profiles["dlib"]], backends["dlib"])),
        "score sface": per_image(lambda im: score_image(im, [profiles["sface"]], backends["sface"])),
        "score both": per_image(lambda im: score_image(im, [profiles["both"]], panel)),  # one combined verdict
    }
    # where the time goes, per face (every photo holds one)
    stages = {}
    for name, b in backends.items():
        t_detect = per_image(b.detect)
        t_embed = per_image(lambda im, b=b: b.embed(im, b.detect(im)[0])) - t_detect
        stages[name] = (t_detect / len(images), t_embed / len(images))

    n = len(images)
    print(f"images: {n} test portraits ({', '.join(PHOTOS)}), one face each; best of {args.repeat}")
    for name in backends:
        det, emb = stages[name]
        print(
            f"{name:6}: {n / timings[f'analyze {name}']:6.2f} img/s analyze ({1000 * timings[f'analyze {name}'] / n:5.0f} ms/img:"
            f" detect {1000 * det:4.0f} ms, embed {1000 * emb:4.0f} ms per face)"
        )
    for key in ("score dlib", "score sface", "score both"):
        print(f"{key:12}: {n / timings[key]:6.2f} img/s ({timings[key]:.2f} s)")
    print(f"RATIO speed sface/dlib = {timings['analyze dlib'] / timings['analyze sface']:.2f}  (goal >= 1)")
    print(f"RATIO two backends / dlib alone = {timings['score both'] / timings['score dlib']:.2f}")
    print(f"RATIO two backends / sface alone = {timings['score both'] / timings['score sface']:.2f}")
    overhead = timings["score both"] / (timings["score dlib"] + timings["score sface"])
    print(f"RATIO two backends / (dlib + sface) = {overhead:.2f}  (goal ~1: a second backend costs only its own time)")


if __name__ == "__main__":
    main()
