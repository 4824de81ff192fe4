"""charkit render on the real SD1.5 architecture vs the same raw diffusers calls. Prints ratios (not a test).

The model is SD1.5 at full size from diffusers' default configs with random weights (UNet 860M, CLIP-L, VAE; the
builder of gpu_check.py), saved once as a diffusers folder, with a full-size ControlNet (``ControlNetModel.from_unet``,
zero convs perturbed), an h94-layout FaceID file for that UNet (its LoRA included) and a kohya LoRA (UNet + CLIP),
all in the real layouts of charkit.testing.layouts. Every scene uses all three, at 256 px on the CPU:

* charkit: ``render_storyboard`` of the scenes (LoRA through load_lora, FaceID's LoRA per scene, canny map,
  A1111 prompt encoding, sampler per scene, PNG + manifest on the writer thread);
* raw: ``StableDiffusionControlNetPipeline`` + ``load_lora_weights`` + ``load_ip_adapter`` + ``set_adapters`` and one
  ``pipe(...)`` call per scene with the same control map, FaceID embedding, seeds and steps.

Both are loaded side by side and their scenes interleaved (raw, charkit, raw, charkit, ...), so a drift in the box's
other load hits both alike (and who goes first alternates); charkit runs its public steps (``load``, then per scene ``render_candidates`` and
``record``, what ``render_storyboard`` runs). Per image, after one warm-up scene each (first calls are slower):
charkit's scene time (condition -> denoise -> postprocess) and that plus writing the PNG with its metadata, over the
raw call. Goal <= 1.03. About 8-10 minutes on
2 idle cores with the defaults (a third of it building and saving the model); on a loaded box, longer.

    .venv/bin/python benchmarks/bench_real_size.py [--steps 2] [--scenes 2] [--size 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def build_assets(work: Path) -> dict:
    """The full-size SD1.5 folder, its ControlNet, an h94 FaceID file and a kohya LoRA (all random weights);
    kept from an earlier run with the same --workdir."""
    import torch
    from diffusers import ControlNetModel
    from gpu_check import build_sd15

    from charkit.testing.layouts import write_h94_faceid, write_kohya_lora
    from charkit.testing.tinyparts import perturb_zero_params

    done = {"model": work / "sd15", "controlnet": work / "controlnet", "lora": work / "alice.safetensors"}
    done["faceid"] = work / "faceid" / "ip-adapter-faceid_sd15.safetensors"
    if all(p.exists() for p in done.values()):
        return done
    pipe = build_sd15()
    pipe.save_pretrained(work / "sd15", safe_serialization=True)
    cn = ControlNetModel.from_unet(pipe.unet)
    perturb_zero_params(cn, 3)
    cn.save_pretrained(work / "controlnet", safe_serialization=True)
    faceid = write_h94_faceid(work / "faceid", pipe.unet, fmt="safetensors", dtype=torch.float32)
    lora = write_kohya_lora(work / "alice.safetensors", pipe, "sd15", dtype=torch.float32)
    return {"model": work / "sd15", "controlnet": work / "controlnet", "faceid": faceid, "lora": lora}


def make_inputs(work: Path, assets: dict) -> tuple[Path, Path]:
    """A marker character (the fake insightface pack detects it) with the LoRA, a control photo, a fake pack."""
    import tomli_w

    from charkit.testing.fake_insightface import draw_marker_image, write_fake_pack

    d = work / "characters" / "alice"
    shutil.rmtree(d, ignore_errors=True)
    (d / "refs").mkdir(parents=True)
    for i, (cx, cy) in enumerate([(256, 256), (240, 270), (270, 240)]):
        draw_marker_image(512, [(cx, cy, 160, 2)]).save(d / "refs" / f"m{i}.png")
    (d / "loras").mkdir()
    shutil.copy(assets["lora"], d / "loras" / "best.safetensors")
    spec = {"name": "alice", "trigger": ["ohwx"], "class_word": "man", "refs": "refs"}
    spec["lora"] = {"sd15": "loras/best.safetensors"}
    (d / "character.toml").write_text(tomli_w.dumps(spec), encoding="utf-8")
    shutil.copy(ROOT / "tests" / "data" / "faces" / "obama.jpg", work / "control.jpg")
    return d, write_fake_pack(work / "pack" / "models", name="buffalo_l")


def write_storyboard(work: Path, assets: dict, pack: Path, *, scenes: int, steps: int, size: int) -> Path:
    import yaml

    model = {
        "family": "sd15",
        "source": str(assets["model"]),
        "controlnet": {"canny": str(assets["controlnet"])},
        "faceid": str(assets["faceid"]),
    }
    data = {
        "project": "real-size",
        "output": "out",
        "defaults": {"model": model, "size": f"{size}x{size}", "steps": steps, "guidance": 7.0},
        "characters": {"alice": "characters/alice"},
        "identity": {"face_models": str(pack)},
        "scenes": [
            {
                "id": f"s{i}",
                "prompt": f"photo of {{alice}} man, shot {i}",
                "seed": 100 + i,
                "lora": {"alice": 1.0},
                "control": {"type": "canny", "image": "control.jpg"},
                "ip_adapter": {"mode": "face", "scale": 0.6},
            }
            for i in range(scenes + 1)  # +1: the warm-up scene
        ],
    }
    path = work / "board.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def charkit_scenes(board: Path):
    """charkit's own steps for each scene (check_inputs, load, then per scene render_candidates + record): a
    function rendering scene ``i`` and returning (scene seconds, seconds with the PNG + metadata written)."""
    from charkit.distributed import SingleProcess
    from charkit.render.lifecycle import load, make_context, record, render_candidates
    from charkit.render.plan import RenderOptions, check_inputs
    from charkit.render.storyboard import load_storyboard

    plan = check_inputs(load_storyboard(board), options=RenderOptions(progress=False))
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    loaded = load(plan.models[0], plan, device="cpu")
    ctx = make_context(plan, SingleProcess())
    last = {}

    def scene(i: int) -> tuple[float, float]:
        t = time.perf_counter()
        rendered = render_candidates(loaded, plan.jobs[i % len(plan.jobs)], ctx)
        t_scene = time.perf_counter() - t
        last["record"] = record(rendered, ctx)
        return t_scene, time.perf_counter() - t

    return scene, last


def raw_pipeline(assets: dict, board: Path, *, size: int):
    """The raw diffusers pipeline with the same LoRA, FaceID and ControlNet, and a function timing one scene."""
    import torch
    from diffusers import ControlNetModel, DPMSolverMultistepScheduler, StableDiffusionControlNetPipeline

    from charkit.families import get_family
    from charkit.render.conditioning import Conditioner
    from charkit.render.plan import RenderOptions, check_inputs
    from charkit.render.storyboard import load_storyboard

    plan = check_inputs(load_storyboard(board), options=RenderOptions(progress=False))
    conditioner = Conditioner()
    emb = conditioner.faceid_embedding(plan.characters["alice"], plan.faceid_backend)
    control = conditioner.control_map("canny", plan.jobs[0].control.image, size, size, preprocess=True)
    cn = ControlNetModel.from_pretrained(assets["controlnet"])
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        assets["model"], controlnet=cn, safety_checker=None, requires_safety_checker=False
    )
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(assets["lora"]), adapter_name="alice")
    faceid = Path(assets["faceid"])
    pipe.load_ip_adapter(str(faceid.parent), subfolder="", weight_name=faceid.name, image_encoder_folder=None)
    pipe.set_adapters(["alice", "faceid_0"], [1.0, 1.0])
    pipe.set_ip_adapter_scale(0.6)
    embeds = get_family("sd15").faceid_embeds(emb, guidance=7.0)

    def scene(i: int) -> float:
        job = plan.jobs[i % len(plan.jobs)]
        t = time.perf_counter()
        with torch.inference_mode():
            pipe(
                job.prompt,
                image=control,
                width=size,
                height=size,
                num_inference_steps=job.steps,
                guidance_scale=7.0,
                generator=torch.Generator("cpu").manual_seed(job.seed),
                ip_adapter_image_embeds=embeds,
            )
        return time.perf_counter() - t

    return scene


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--scenes", type=int, default=2, help="timed scenes per contender (after one warm-up)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="charkit-bench-real-"))
    try:
        assets = build_assets(work)
        built = time.perf_counter() - start
        _, pack = make_inputs(work, assets)
        board = write_storyboard(work, assets, pack, scenes=args.scenes, steps=args.steps, size=args.size)
        # both loaded, scenes interleaved: a drift in the box's other load hits both alike
        raw_scene = raw_pipeline(assets, board, size=args.size)
        ck_scene, last = charkit_scenes(board)
        raw_scene(0), ck_scene(0)  # warm-ups
        raw, ck = [], []
        for i in range(1, args.scenes + 1):  # ABBA: who goes first alternates
            if i % 2:
                raw.append(raw_scene(i))
                ck.append(ck_scene(i))
            else:
                ck.append(ck_scene(i))
                raw.append(raw_scene(i))
        ck_seconds, ck_wall = [c[0] for c in ck], [c[1] for c in ck]
        settings = last["record"].settings
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    raw_s = sum(raw) / len(raw)
    ck_s = sum(ck_seconds) / len(ck_seconds)
    ck_wall = sum(ck_wall) / len(ck_wall)
    print(
        f"SD1.5 real architecture (random weights), {args.size}x{args.size}, {args.steps} steps, LoRA (kohya) + "
        f"ControlNet (canny) + FaceID (h94, LoRA {settings['loras']['alice']['modules']} modules), cpu, "
        f"{torch.get_num_threads()} threads; build+save {built:.0f}s, total {time.perf_counter() - start:.0f}s"
    )
    print(f"{'measure':<56} {'value':>10}")
    print(f"{'raw diffusers call, s/image':<56} {raw_s:>10.2f}")
    print(f"{'charkit scene (condition..postprocess), s/image':<56} {ck_s:>10.2f}")
    print(f"{'charkit scene + PNG and metadata written, s/image':<56} {ck_wall:>10.2f}")
    print(f"{'ratio charkit scene / raw call (goal <= 1.03)':<56} {ck_s / raw_s:>10.3f}")
    print(f"{'ratio charkit scene + write / raw call':<56} {ck_wall / raw_s:>10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
