"""Benchmark: how fast Ctrl-C stops a render, what the stop checks cost, what tiny-model sizing saves.

    python benchmarks/bench_interrupts.py [--size 256] [--repeat 3]

Prints three ratios (goals in brackets):
  stop latency   seconds from a stop request to the end of the pipeline call / seconds per step   [< 0.1]
  hook overhead  time of a guarded render / an unguarded one (charkit.interrupts.guard)          [~1.0]
  tiny sizing    time per scene at the storyboard's 512x768, 30 steps / at the scaled-down 64x96, 4 steps

A tiny random SD1.5 (charkit tiny-model) on the CPU; --size sets the square size of the stop-latency
render (its steps are long: a tiny VAE only halves the size, so 256 px means 128x128 latents). The
stop request comes from a timer thread half-way through the second step, as a signal handler would.
Times are wall seconds (the pipeline's own work); OMP_NUM_THREADS=1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from charkit import interrupts  # noqa: E402
from charkit.families import get_family  # noqa: E402


def render(pipe, size: tuple[int, int], steps: int, callback=None) -> float:
    t = time.perf_counter()
    pipe(
        "a lighthouse in a storm",
        width=size[0],
        height=size[1],
        num_inference_steps=steps,
        generator=torch.Generator("cpu").manual_seed(0),
        callback_on_step_end=callback,
    )
    return time.perf_counter() - t


def stop_latency(pipe, size: int) -> tuple[float, float]:
    """(seconds per step, seconds from the stop request to the end of the call)."""
    step_times: list[float] = []
    marks = {"last": time.perf_counter()}

    def timing(p, step, t, kwargs):
        now = time.perf_counter()
        step_times.append(now - marks["last"])
        marks["last"] = now
        if step == 0:  # request a stop half-way through the next step, from another thread
            threading.Timer(
                step_times[0] / 2, lambda: (marks.update(req=time.perf_counter()), interrupts.request_stop())
            ).start()
        return kwargs

    with interrupts.handle_interrupts(), interrupts.guard(pipe.unet, pipe.vae):
        marks["last"] = time.perf_counter()
        with contextlib.suppress(interrupts.Interrupted):  # the point: the call ends early
            render(pipe, (size, size), 50, callback=timing)
        ended = time.perf_counter()
    return step_times[0], ended - marks["req"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        pipe = get_family("sd15").load_pipeline(get_family("sd15").build_tiny(Path(tmp) / "m", controlnet=False).root)
        pipe.set_progress_bar_config(disable=True)
        step, latency = stop_latency(pipe, args.size)
        plain = min(render(pipe, (64, 64), 20) for _ in range(args.repeat))
        with interrupts.guard(pipe.unet, pipe.vae):
            guarded = min(render(pipe, (64, 64), 20) for _ in range(args.repeat))
        small = min(render(pipe, (64, 96), 4) for _ in range(args.repeat))
        full_step = render(pipe, (512, 768), 1)  # one step of the full size (30 of them per scene)
    print(
        f"stop latency   {latency / step:.3f}  ({latency:.2f} s after the request; a {args.size} px step takes {step:.2f} s)"
    )
    print(f"hook overhead  {guarded / plain:.3f}  ({guarded:.3f} s vs {plain:.3f} s, 64 px, 20 steps)")
    print(
        f"tiny sizing    {30 * full_step / small:.0f}  (512x768, 30 steps ~{30 * full_step:.0f} s vs 64x96, 4 steps {small:.2f} s)"
    )


if __name__ == "__main__":
    main()
