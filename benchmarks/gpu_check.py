"""Real-architecture SD1.5, SDXL and Flux (random weights) on CUDA: stock diffusers vs charkit render.

For each family the script builds the real architecture from its published config (SD1.5:
UNet 860M + CLIP-L + VAE; SDXL base: UNet 2.6B + CLIP-L + OpenCLIP-bigG + VAE; Flux.1-dev:
transformer 12B + T5-XXL encoder + CLIP-L + 16-channel VAE) with random weights directly on the
GPU, saves it once as a diffusers folder on local disk, then loads that folder twice:

* stock: ``DiffusionPipeline.from_pretrained`` + one ``pipe(...)`` call per scene;
* charkit: ``render_storyboard`` over a storyboard of the same scenes (same size, steps, seeds),
  writing PNGs with metadata and the manifest.

It prints one table: load time, denoising it/s (after a warm-up scene), and peak VRAM of each,
and the charkit/stock ratios. Random weights produce noise images; speed and memory are what
is measured. Budget: under 8 minutes on one H100 (Flux's save/load dominates).

Then the render paths of issue 10 on the same saved models (a second table, one row each; :func:`check_paths`):
scene batching (storyboard throughput ``--scene-batch 4`` vs one call per scene; goal >= 1.5x), the hires pass,
IP-Adapter plus (h94 layout), ``--cpu-offload`` with an image encoder that arrives in a later scene (the hooks
re-armed), a union ControlNet (xinsir SDXL layout), and a BFL transformer-only Flux single file at FLUX.1's real
width (3072; charkit's reader vs diffusers' own, then a render from it).

    python benchmarks/gpu_check.py                       # all three, defaults below
    python benchmarks/gpu_check.py --families sd15,sdxl  # a subset
    python benchmarks/gpu_check.py --dry-run             # no GPU: build configs on the meta device, count parameters
    python benchmarks/gpu_check.py --smoke               # no GPU: the whole flow on tiny models on CPU
    python benchmarks/gpu_check.py --no-paths            # only the stock vs charkit table
    python benchmarks/gpu_check.py --families none --train   # only the training memory check (gpu_train.py)

``--train [CASES]`` adds benchmarks/gpu_train.py's training memory table (real peaks of Flux NF4, SDXL, ... next
to ``charkit train --plan``; 6-8 minutes on one H100): with the render checks that is more than one 10-minute
device call, so a GPU session runs it as a second call.

Without CUDA (and without --dry-run/--smoke) it prints a message and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# family -> (width, height, steps, scenes, guidance, dtype name) used on the GPU
DEFAULTS = {
    "sd15": (512, 512, 20, 4, 7.0, "fp16"),
    "sdxl": (1024, 1024, 20, 4, 6.0, "fp16"),
    "flux": (1024, 1024, 12, 3, 3.5, "bf16"),
}
SMOKE = {f: (32, 32, 2, 2, g, "fp32") for f, (_, _, _, _, g, _) in DEFAULTS.items()}


# -- real-architecture builders -------------------------------------------------------------------


def _clip_text(
    hidden: int, layers: int, heads: int, intermediate: int, *, projection: int | None = None, act: str = "quick_gelu"
):
    """A CLIP text config of real size whose special-token ids match charkit's offline tokenizer."""
    from charkit.testing.tinyparts import clip_text_config

    cfg = clip_text_config(hidden, projection_dim=projection or hidden, layers=layers, positions=77)
    cfg.vocab_size = 49408
    cfg.num_attention_heads = heads
    cfg.intermediate_size = intermediate
    cfg.hidden_act = act
    return cfg


def _sd_vae(**kw):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=kw.pop("latent_channels", 4),
        sample_size=kw.pop("sample_size", 512),
        **kw,
    )


def build_sd15(models=contextlib.nullcontext):
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    from charkit.testing.tinyparts import clip_tokenizer

    with models():
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        vae, te = _sd_vae(), CLIPTextModel(_clip_text(768, 12, 12, 3072))
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=te,
        tokenizer=clip_tokenizer(77),
        unet=unet,
        scheduler=DPMSolverMultistepScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            timestep_spacing="leading",
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_sdxl(models=contextlib.nullcontext):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from charkit.testing.tinyparts import clip_tokenizer

    with models():
        unet, vae, te, te2 = _sdxl_models()
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=te,
        text_encoder_2=te2,
        tokenizer=clip_tokenizer(77),
        tokenizer_2=clip_tokenizer(77),
        unet=unet,
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            timestep_spacing="leading",
        ),
    )


def _sdxl_models():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    unet = UNet2DConditionModel(
        sample_size=128,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )
    vae = _sd_vae(sample_size=1024, scaling_factor=0.13025, force_upcast=True)
    te = CLIPTextModel(_clip_text(768, 12, 12, 3072))
    te2 = CLIPTextModelWithProjection(_clip_text(1280, 32, 20, 5120, projection=1280, act="gelu"))
    return unet, vae, te, te2


def build_flux(models=contextlib.nullcontext):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    from charkit.testing.tinyparts import clip_tokenizer, t5_tokenizer

    t5 = T5Config(
        vocab_size=32128,
        d_model=4096,
        d_kv=64,
        d_ff=10240,
        num_layers=24,
        num_heads=64,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=0,
        eos_token_id=1,
    )
    with models():
        vae = _sd_vae(
            sample_size=1024,
            latent_channels=16,
            use_quant_conv=False,
            use_post_quant_conv=False,
            scaling_factor=0.3611,
            shift_factor=0.1159,
        )
        te, te2 = CLIPTextModel(_clip_text(768, 12, 12, 3072)), T5EncoderModel(t5)
        transformer = FluxTransformer2DModel(guidance_embeds=True)  # the published Flux.1-dev config
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        ),
        vae=vae,
        text_encoder=te,
        tokenizer=clip_tokenizer(77),
        text_encoder_2=te2,
        tokenizer_2=t5_tokenizer(512),
        transformer=transformer,
    )


BUILDERS = {"sd15": build_sd15, "sdxl": build_sdxl, "flux": build_flux}


@contextlib.contextmanager
def default_device_dtype(device, dtype):
    """Create parameters directly on ``device`` in ``dtype`` (a 12B transformer never exists in fp32)."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def build(family: str, *, device: str, dtype, smoke: bool):
    if smoke:
        from charkit.families import get_family

        return get_family(family).tiny_pipeline(0)
    # Only the models are created on the GPU in low precision; schedulers and tokenizers stay fp32 on CPU.
    return BUILDERS[family](lambda: default_device_dtype(device, dtype))


def param_count(pipe) -> int:
    return sum(p.numel() for c in pipe.components.values() if hasattr(c, "parameters") for p in c.parameters())


# -- the two contenders ----------------------------------------------------------------------------


@dataclass
class Row:
    family: str
    runner: str
    load_s: float
    it_s: float
    peak_gib: float | None


def _peak_reset(cuda: bool) -> None:
    import torch

    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak(cuda: bool) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if cuda else None


def prompts(n: int) -> list[str]:
    return [f"a photo of a woman in a red jacket, shot {i}" for i in range(n + 1)]  # first one: warm-up


def run_stock(family: str, folder: Path, *, device: str, dtype, size, steps, scenes, guidance) -> Row:
    import torch
    from diffusers import DiffusionPipeline

    cuda = device.startswith("cuda")
    _peak_reset(cuda)
    t0 = time.perf_counter()
    pipe = DiffusionPipeline.from_pretrained(folder, torch_dtype=dtype, use_safetensors=True).to(device)
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - t0
    times = []
    for i, prompt in enumerate(prompts(scenes)):
        g = torch.Generator("cpu").manual_seed(100 + i)
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.inference_mode():
            pipe(prompt, width=size[0], height=size[1], num_inference_steps=steps, guidance_scale=guidance, generator=g)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    peak = _peak(cuda)
    del pipe
    _peak_reset(cuda)
    return Row(family, "diffusers", load_s, steps * scenes / sum(times[1:]), peak)


def run_charkit(
    family: str, folder: Path, work: Path, *, device: str, dtype_name: str, size, steps, scenes, guidance
) -> Row:
    import yaml

    from charkit.render.lifecycle import render_storyboard

    cuda = device.startswith("cuda")
    board = work / f"{family}.yaml"
    board.write_text(
        yaml.safe_dump(
            {
                "project": f"gpu-check-{family}",
                "output": f"out-{family}",
                "defaults": {
                    "model": {"family": family, "source": str(folder)},
                    "size": f"{size[0]}x{size[1]}",
                    "steps": steps,
                    "guidance": guidance,
                },
                "scenes": [{"id": f"s{i}", "prompt": p, "seed": 100 + i} for i, p in enumerate(prompts(scenes))],
            },
            sort_keys=False,
        )
    )
    _peak_reset(cuda)
    t0 = time.perf_counter()
    result = render_storyboard(board, device=device, dtype=dtype_name, force=True, progress=False)
    total = time.perf_counter() - t0
    scene_s = [r.seconds for r in result.rendered]
    peak = _peak(cuda)
    _peak_reset(cuda)
    # load + fixed costs = total minus the scenes (writes overlap with the next scene)
    return Row(family, "charkit", total - sum(scene_s), steps * scenes / sum(scene_s[1:]), peak)


# -- the render paths of issue 10 --------------------------------------------------------------------------


@dataclass
class PathRow:
    family: str
    check: str
    value: str
    ok: bool


def _board(work: Path, name: str, model: dict, scenes: list[dict], *, size, steps, guidance, **_run) -> Path:
    import yaml

    data = {
        "project": name,
        "output": f"out-{name}",
        "defaults": {"model": model, "size": f"{size[0]}x{size[1]}", "steps": steps, "guidance": guidance},
        "characters": {"alice": "alice"},
        "scenes": scenes,
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _character(work: Path) -> None:
    d = work / "alice" / "refs"
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(__file__).resolve().parents[1] / "tests" / "data" / "faces" / "obama.jpg", d / "obama.jpg")
    (work / "alice" / "character.toml").write_text('name = "alice"\ntrigger = ["ohwx"]\nclass_word = "man"\n')


def _scenes(n: int, **extra) -> list[dict]:
    return [
        {"id": f"s{i}", "prompt": f"a photo of {{alice}} in a red jacket, shot {i}", "seed": 7 + i, **extra}
        for i in range(n)
    ]


def _render(board: Path, **options):
    from charkit.render.lifecycle import render_storyboard

    return render_storyboard(board, force=True, progress=False, **options)


def path_scene_batching(family, model, work, run) -> PathRow:
    """Storyboard throughput with --scene-batch 4 vs one call per scene (both after a warm-up render): the scenes'
    device time (condition -> denoise -> postprocess), model loads and overlapped writes left out."""
    board = _board(work, f"{family}-batch", model, _scenes(8), **run)
    _render(board, scene_batch=4, device=run["device"], dtype=run["dtype"])
    t = {}
    for sb in (1, 4):
        result = _render(board, scene_batch=sb, device=run["device"], dtype=run["dtype"])
        t[sb] = sum(r.seconds for r in result.rendered)
    ratio = t[1] / t[4]
    return PathRow(
        family, "scene batching: 8 scenes, 1 call/scene vs --scene-batch 4", f"{ratio:.2f}x (goal >= 1.5)", ratio >= 1.5
    )


def path_hires(family, model, work, run) -> PathRow:
    board = _board(work, f"{family}-hires", model, _scenes(1, hires={"scale": 1.5, "strength": 0.5}), **run)
    t0 = time.perf_counter()
    result = _render(board, device=run["device"], dtype=run["dtype"])
    from PIL import Image

    size = Image.open(result.rendered[0].file).size
    want = tuple(int(round(v * 1.5 / 8) * 8) for v in run["size"])
    return PathRow(
        family, "hires fix x1.5, strength 0.5", f"{size[0]}x{size[1]} in {time.perf_counter() - t0:.1f}s", size == want
    )


def _h94(work: Path, folder: Path) -> Path:
    import torch
    from diffusers import UNet2DConditionModel

    from charkit.testing.layouts import write_h94_ip_adapter

    with torch.device("meta"):  # the adapters need the UNet's config and processors only
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet"))
    root = work / "IP-Adapter"
    write_h94_ip_adapter(root, sd15_unet=unet, sdxl_unet=unet)
    return root


def path_ip_plus_and_offload(family, model, work, run) -> list[PathRow]:
    """IP-Adapter plus (h94 layout); --cpu-offload when a later scene loads the image encoder (GPU only)."""
    root = _h94(work, Path(model["source"]))
    plus = {**model, "ip_adapter": str(root / "models" / "ip-adapter-plus_sd15.safetensors")}
    ip = {"ip_adapter": {"mode": "image", "scale": 0.6}}
    board = _board(work, f"{family}-plus", plus, _scenes(1, **ip), **run)
    result = _render(board, device=run["device"], dtype=run["dtype"])
    variant = result.manifest.images[0].settings["ip_adapter"]["variant"]
    rows = [PathRow(family, "IP-Adapter plus (h94 models/ layout)", variant, variant == "plus")]
    if run["device"].startswith("cuda"):
        scenes = [_scenes(1)[0], {**_scenes(2)[1], **ip}]  # the image encoder arrives in the second scene
        board = _board(work, f"{family}-offload", plus, scenes, **run)
        try:
            _render(board, device=run["device"], dtype=run["dtype"], cpu_offload=True)
            rows.append(PathRow(family, "--cpu-offload, image encoder added by scene 2", "rendered", True))
        except RuntimeError as e:  # the device mismatch of un-re-armed hooks
            rows.append(PathRow(family, "--cpu-offload, image encoder added by scene 2", str(e)[:60], False))
    return rows


def path_union(family, model, work, run) -> PathRow:
    import torch
    from diffusers import UNet2DConditionModel

    from charkit.testing.layouts import write_sdxl_union_controlnet

    unet = UNet2DConditionModel.from_pretrained(model["source"], subfolder="unet", torch_dtype=torch.float16)
    union = write_sdxl_union_controlnet(work / "controlnet-union-sdxl-1.0", unet)
    del unet
    shutil.copy(Path(__file__).resolve().parents[1] / "tests" / "data" / "faces" / "obama.jpg", work / "control.jpg")
    cn = {**model, "controlnet": {"canny": str(union)}}
    board = _board(work, f"{family}-union", cn, _scenes(1, control={"type": "canny", "image": "control.jpg"}), **run)
    result = _render(board, device=run["device"], dtype=run["dtype"])
    mode = result.manifest.images[0].settings["control"]["union_mode"]
    return PathRow(family, "union ControlNet (xinsir layout), canny", f"control_mode {mode}", mode == "canny")


def path_flux_single_file(family, model, work, run, *, smoke: bool) -> PathRow:
    """A BFL transformer-only file: at FLUX.1's width (3072, shallow) charkit's reader equals diffusers' own."""
    import torch
    from diffusers import FluxTransformer2DModel

    from charkit.families import get_spec
    from charkit.families.singlefile import load_original_single_file
    from charkit.testing.singlefile import write_bfl_flux

    src = Path(model["source"])
    cfg = work / "flux-shallow"
    shutil.copytree(src, cfg, ignore=shutil.ignore_patterns("transformer"), copy_function=os.link)  # no copy
    base = FluxTransformer2DModel.load_config(src, subfolder="transformer")
    if not smoke:  # real width, 2 double + 4 single blocks
        base.update(num_layers=2, num_single_layers=4)
    with torch.device(run["device"]):
        transformer = FluxTransformer2DModel.from_config(base).to(run["torch_dtype"])
    transformer.save_pretrained(cfg / "transformer")
    pipe = type("P", (), {"transformer": transformer})()
    file = write_bfl_flux(work / "flux1-shallow.safetensors", pipe)
    ours = load_original_single_file(get_spec("flux"), file, config=str(cfg), dtype=run["torch_dtype"]).transformer
    same = True
    if not smoke:
        theirs = FluxTransformer2DModel.from_single_file(str(file), config=str(cfg), subfolder="transformer")
        same = all(
            torch.equal(a.cpu(), b.cpu()) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values())
        )
    board = _board(work, "flux-single", {"family": "flux", "source": str(file), "config": str(cfg)}, _scenes(1), **run)
    _render(board, device=run["device"], dtype=run["dtype"])
    width = base["num_attention_heads"] * base["attention_head_dim"]
    return PathRow(family, f"BFL transformer-only file (width {width}), reader == diffusers'", "rendered", same)


def check_paths(
    family: str, folder: Path, work: Path, *, device: str, dtype_name: str, size, steps, guidance, smoke: bool
):
    """The render paths of issue 10 on ``family``'s saved model (the module docstring lists them)."""
    import torch

    run = dict(size=size, steps=steps, guidance=guidance, device=device, dtype=dtype_name)
    _character(work)
    model = {"family": family, "source": str(folder)}
    rows: list[PathRow] = []
    if family == "sd15":
        rows.append(path_scene_batching(family, model, work, run))
        rows.append(path_hires(family, model, work, run))
        rows += path_ip_plus_and_offload(family, model, work, run)
    elif family == "sdxl":
        rows.append(path_union(family, model, work, run))
    elif family == "flux":
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
        rows.append(path_flux_single_file(family, model, work, {**run, "torch_dtype": dtype}, smoke=smoke))
    return rows


# -- main ------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="stock diffusers vs charkit render on real-architecture models (CUDA)")
    ap.add_argument("--families", default="sd15,sdxl,flux", help="comma-separated subset of sd15,sdxl,flux")
    ap.add_argument(
        "--dry-run", action="store_true", help="build configs on the meta device and count parameters (no GPU)"
    )
    ap.add_argument("--smoke", action="store_true", help="run the whole flow on tiny models on CPU (checks the script)")
    ap.add_argument("--workdir", default=None, help="where to save the random-weight models (default: a temp folder)")
    ap.add_argument("--no-paths", action="store_true", help="skip the render-path checks (issue 10) after each family")
    ap.add_argument(
        "--train",
        nargs="?",
        const="all",
        default=None,
        metavar="CASES",
        help="also run benchmarks/gpu_train.py (all its cases, or a comma-separated subset)",
    )
    args = ap.parse_args(argv)
    families = [f.strip() for f in args.families.split(",") if f.strip() and f.strip() != "none"]
    bad = [f for f in families if f not in BUILDERS]
    if bad:
        print(f"unknown family {bad[0]!r}: choose from {', '.join(BUILDERS)}", file=sys.stderr)
        return 2

    import torch

    if args.dry_run:
        for f in families:
            pipe = BUILDERS[f](lambda: torch.device("meta"))
            print(
                f"{f:<5} {type(pipe).__name__:<28} {param_count(pipe) / 1e9:6.2f} B parameters "
                f"(defaults: {'x'.join(map(str, DEFAULTS[f][:2]))}, {DEFAULTS[f][2]} steps, {DEFAULTS[f][3]} scenes, {DEFAULTS[f][5]})"
            )
        return 0
    if not args.smoke and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device here; nothing to measure (run it on a GPU machine, or use --dry-run / --smoke)"
        )
        return 0

    device = "cpu" if args.smoke else "cuda"
    settings = SMOKE if args.smoke else DEFAULTS
    card = "cpu (smoke)" if args.smoke else torch.cuda.get_device_name(0)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="charkit-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, tuple, Row, Row]] = []
    path_rows: list[PathRow] = []
    start = time.perf_counter()
    try:
        for f in families:
            w, h, steps, scenes, guidance, dtype_name = settings[f]
            dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
            t0 = time.perf_counter()
            pipe = build(f, device=device, dtype=dtype, smoke=args.smoke)
            n_params = param_count(pipe)
            folder = work / f"{f}-random"
            pipe.save_pretrained(folder, safe_serialization=True)
            del pipe
            _peak_reset(device == "cuda")
            print(
                f"[{time.perf_counter() - start:6.1f}s] {f}: built and saved {n_params / 1e9:.2f} B params "
                f"in {time.perf_counter() - t0:.1f}s",
                flush=True,
            )
            kw = dict(size=(w, h), steps=steps, scenes=scenes, guidance=guidance)
            stock = run_stock(f, folder, device=device, dtype=dtype, **kw)
            ck = run_charkit(f, folder, work, device=device, dtype_name=dtype_name, **kw)
            rows.append((f, (w, h, steps, scenes, dtype_name), stock, ck))
            if not args.no_paths:
                path_rows += check_paths(
                    f,
                    folder,
                    work,
                    device=device,
                    dtype_name=dtype_name,
                    size=(w, h),
                    steps=steps,
                    guidance=guidance,
                    smoke=args.smoke,
                )
            print(f"[{time.perf_counter() - start:6.1f}s] {f}: done", flush=True)
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    def gib(v):
        return "-" if v is None else f"{v:.2f}"

    print(f"\ncharkit gpu_check on {card}, torch {torch.__version__}, total {time.perf_counter() - start:.0f}s")
    print(
        "| family | size | steps x scenes | dtype | load s (diffusers / charkit) | it/s diffusers | it/s charkit | "
        "it/s ratio | peak GiB diffusers | peak GiB charkit |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for f, (w, h, steps, scenes, dt), s, c in rows:
        print(
            f"| {f} | {w}x{h} | {steps} x {scenes} | {dt} | {s.load_s:.1f} / {c.load_s:.1f} | {s.it_s:.2f} | {c.it_s:.2f} | "
            f"{c.it_s / s.it_s:.3f} | {gib(s.peak_gib)} | {gib(c.peak_gib)} |"
        )
    if path_rows:
        print("\n| family | render path | result | ok |")
        print("|---|---|---|---|")
        for r in path_rows:
            print(f"| {r.family} | {r.check} | {r.value} | {'yes' if r.ok else 'NO'} |")
    if args.train is not None:
        train_check(args.train, device=device, smoke=args.smoke, card=card)
    return 0 if all(r.ok for r in path_rows) else 1


def train_check(cases: str, *, device: str, smoke: bool, card: str) -> None:
    """benchmarks/gpu_train.py: the training stage's real peaks next to ``charkit train --plan`` (a table)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import gpu_train

    chosen = None if cases == "all" else [c.strip() for c in cases.split(",") if c.strip()]
    print("\n" + gpu_train.table(gpu_train.run(device, chosen, smoke=smoke), card))


if __name__ == "__main__":
    sys.exit(main())
