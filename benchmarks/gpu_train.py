"""Real peak GPU memory of a few LoRA training steps at real size (Flux.1-dev, SDXL), next to charkit's plan.

Each case builds the released architecture from tests/data/configs/<model> with random weights (directly in
the training dtype), saves it as a diffusers folder on local disk, and then runs charkit's own training path on
it: ``check_inputs -> load`` (the quantised base through diffusers' bitsandbytes backend, encoders on the CPU)
``-> cache`` (caching on the GPU, encoders back to the CPU, the denoiser onto the GPU) ``-> train_step x N ->
render_probes`` (one probe). ``torch.cuda.max_memory_allocated`` is read per phase and compared with
``charkit train --plan``'s estimate for the same preset (the ratio measured / planned is the plan's error).
Random weights draw noise; memory and speed are what is measured. Goal: the Flux preset <= 24 GiB.

    python benchmarks/gpu_train.py                    # all cases (one GPU; ~6-8 minutes on an H100)
    python benchmarks/gpu_train.py --cases flux-nf4   # a subset
    python benchmarks/gpu_train.py --smoke            # no GPU: the same flow on the tiny models, on CPU

``benchmarks/gpu_check.py`` calls :func:`run` (``run("cuda") -> list[dict]``, one dict per case).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "tests" / "data" / "configs"
FACES = ROOT / "tests" / "data" / "faces"
sys.path.insert(0, str(ROOT))

#: case -> (family, config folder, resolution, preset changes)
CASES = {
    "flux-nf4": ("flux", "flux1-dev", 512, {}),
    "flux-nf4-1024": ("flux", "flux1-dev", 1024, {}),
    "flux-bf16-swap": ("flux", "flux1-dev", 512, {"memory": {"base_quantization": "none", "block_swap": 24}}),
    "sdxl": ("sdxl", "sdxl-base", 1024, {}),
}
STEPS = 3


# -- real architectures, random weights -----------------------------------------------------------


@contextlib.contextmanager
def default_device_dtype(device, dtype):
    """Create parameters directly on ``device`` in ``dtype`` (a 12 B transformer never exists in fp32)."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def build_pipeline(folder: Path, *, device="cpu", dtype=None):
    """A random-weight pipeline of the architecture in ``folder`` (model_index.json + component configs), with
    charkit's offline tokenizers (random weights read any ids below the vocabulary size)."""
    import diffusers
    import torch
    import transformers

    from charkit.testing.tinyparts import clip_tokenizer, t5_tokenizer

    dtype = dtype or torch.float32
    index = json.loads((folder / "model_index.json").read_text())
    parts = {}
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list):
            continue
        lib, cls_name = entry
        if lib is None or name in ("safety_checker", "feature_extractor", "image_encoder"):
            parts[name] = None
        elif name.startswith("tokenizer"):
            parts[name] = t5_tokenizer(512) if "T5" in cls_name else clip_tokenizer(77)
        elif name == "scheduler":
            cfg = json.loads((folder / name / "scheduler_config.json").read_text())
            parts[name] = getattr(diffusers, cls_name).from_config(cfg)
        else:
            cfg = json.loads((folder / name / "config.json").read_text())
            with default_device_dtype(device, dtype):
                if lib == "diffusers":
                    parts[name] = getattr(diffusers, cls_name).from_config(
                        {k: v for k, v in cfg.items() if not k.startswith("_")}
                    )
                else:
                    parts[name] = getattr(transformers, cls_name)(transformers.AutoConfig.for_model(**cfg))
    cls = getattr(diffusers, index["_class_name"])
    extra = {"requires_safety_checker": False} if "safety_checker" in parts else {}
    return cls(**parts, **extra)


def save_random_model(folder: Path, out: Path, *, device, dtype) -> Path:
    pipe = build_pipeline(folder, device=device, dtype=dtype)
    pipe.save_pretrained(out, safe_serialization=True)
    del pipe
    gc.collect()
    return out


# -- one case ---------------------------------------------------------------------------------------


def make_character(root: Path, size: int) -> Path:
    from PIL import Image

    from charkit.character import CharacterSpec, save_spec
    from charkit.testing.stagefiles import write_dataset_file

    d = root / "characters" / "alice"
    (d / "refs").mkdir(parents=True)
    ds = d / "dataset" / "images"
    ds.mkdir(parents=True)
    items = []
    for n in ("obama.jpg", "obama2.jpg", "obama3.jpg"):
        shutil.copy(FACES / n, d / "refs" / n)
        with Image.open(FACES / n) as im:
            im.convert("RGB").resize((size, size)).save(ds / (Path(n).stem + ".png"))
        items.append(
            {"file": f"images/{Path(n).stem}.png", "caption": "ohwx man", "width": size, "height": size, "source": n}
        )
    write_dataset_file(d / "dataset", items, character="alice", resolution=size)
    save_spec(d, CharacterSpec(name="alice", trigger=["ohwx"], class_word="man"))
    return d


def case_preset(family: str, size: int, changes: dict, *, smoke: bool) -> dict:
    from charkit.train.config import load_preset

    p = load_preset(ROOT / "training" / f"{family}-lora.toml").model_dump(mode="json", exclude_none=True)
    for k, v in changes.items():
        p[k].update(v)
    p["train"].update(steps=STEPS, resolution=size)
    p["eval"].update(every=10_000, prompts=["a photo of {trigger} {class}"], seeds=[1], steps=2 if smoke else 4)
    p["checkpoints"]["reserve_disk_mb"] = 0
    return p


def measure(character: Path, model: Path, preset: dict, *, device: str) -> dict:
    """charkit's training path on ``model``: peak memory per phase (GiB, None off CUDA) and step seconds."""
    import torch

    from charkit.train import loop

    cuda = device.startswith("cuda")
    peaks = {}

    def phase(name):
        if cuda:
            torch.cuda.synchronize()
            peaks[name] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()

    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    plan = loop.check_inputs(
        character, model=model, preset=preset, device=device, out=character / "run", register=False
    )
    session = loop.load(plan)
    phase("load")
    loop.cache(session)
    phase("cache")
    times = []
    for _ in range(STEPS):
        t = time.perf_counter()
        loop.train_step(session)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        session.step += 1
    phase("train")
    loop.render_probes(session, loop.probe_specs(["a photo of ohwx man"], [1], trigger="ohwx", class_word="man"))
    phase("probe")
    reserved = torch.cuda.max_memory_reserved() / 2**30 if cuda else None
    row = {
        "peaks": peaks,
        "reserved_gib": reserved,
        "step_s": min(times[1:] or times),
        "optimizer": session.optimizer_name,
    }
    del session
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return row


def run(
    device: str = "cuda", cases: list[str] | None = None, *, smoke: bool = False, workdir: Path | None = None
) -> list[dict]:
    """Measure ``cases`` (default: all) on ``device``; one dict per case with the measured peaks, the plan's and
    their ratio. ``smoke``: the tiny models at 64 px on CPU (checks the flow, measures nothing)."""
    import torch

    from charkit.train.config import parse_preset
    from charkit.train.memory import plan_memory

    work = Path(workdir or tempfile.mkdtemp(prefix="charkit-gpu-train-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for name in cases or list(CASES):
            family, folder, size, changes = CASES[name]
            size = 64 if smoke else size
            preset = case_preset(family, size, changes, smoke=smoke)
            if smoke:
                from charkit.families import get_family

                model = work / f"tiny-{family}"
                if not model.exists():
                    get_family(family).build_tiny(model, controlnet=False, ip_adapter=False, single_file=False)
            else:
                model = work / f"{folder}-random"
                if not model.exists():
                    save_random_model(CONFIGS / folder, model, device=device, dtype=torch.bfloat16)
            character = make_character(work / name, size)
            t0 = time.perf_counter()
            got = measure(character, model, preset, device="cpu" if smoke else device)
            planned = plan_memory(parse_preset(preset), CONFIGS / folder, resolution=size)
            totals = planned.phase_totals
            peak = max(got["peaks"].values()) if got["peaks"] else None
            rows.append(
                {
                    "case": name,
                    "family": family,
                    "resolution": size,
                    "measured_peak_gib": None if peak is None else round(peak, 2),
                    "measured": {k: round(v, 2) for k, v in got["peaks"].items()},
                    "reserved_gib": None if got["reserved_gib"] is None else round(got["reserved_gib"], 2),
                    "planned_peak_gib": round(planned.peak_gib, 2),
                    "planned": {k: round(v, 2) for k, v in totals.items()},
                    "measured_over_planned": None if peak is None else round(peak / (planned.peak_gib - 0.75), 3),
                    "fits_24": None if peak is None else peak + 0.75 <= 24,
                    "step_s": round(got["step_s"], 3),
                    "optimizer": got["optimizer"],
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    finally:
        if workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return rows


def table(rows: list[dict], device_name: str) -> str:
    out = [
        f"charkit gpu_train on {device_name}",
        "| case | px | measured peak GiB (load / cache / train / probe) | planned GiB | measured / planned | fits 24 GB | s/step |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["measured"]
        phases = " / ".join(f"{m.get(k, 0):.2f}" for k in ("load", "cache", "train", "probe")) if m else "-"
        out.append(
            f"| {r['case']} | {r['resolution']} | {phases} | {r['planned_peak_gib']:.2f} | {r['measured_over_planned']} | "
            f"{r['fits_24']} | {r['step_s']:.2f} |"
        )
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    ap.add_argument("--smoke", action="store_true", help="tiny models on CPU: checks the flow, measures nothing")
    ap.add_argument("--workdir", default=None, help="where the random-weight models go (default: a temp folder)")
    args = ap.parse_args(argv)
    import torch

    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in CASES]
    if bad:
        print(f"unknown case {bad[0]!r}: choose from {', '.join(CASES)}", file=sys.stderr)
        return 2
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_train: no CUDA device here; nothing to measure (run it on a GPU machine, or use --smoke)")
        return 0
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    rows = run(
        "cpu" if args.smoke else "cuda", cases, smoke=args.smoke, workdir=Path(args.workdir) if args.workdir else None
    )
    print(table(rows, "cpu (smoke)" if args.smoke else torch.cuda.get_device_name(0)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
