"""Fitting a GPU: the memory plan on real model configs, the quantised-base config, block swap, cached probe prompts.

The plans build the released architectures (tests/data/configs: FLUX.1-dev, SD3.5 medium, SDXL base) on the
meta device, so a 12 B transformer costs nothing here. What needs a GPU (bitsandbytes kernels, real peak memory,
moving blocks between devices) is measured by benchmarks/gpu_train.py; here the same code paths run on CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from charkit.cli import cli
from charkit.errors import CharkitError
from charkit.families import get_family, get_spec
from charkit.train.config import load_preset, parse_preset
from charkit.train.memory import plan_memory
from charkit.train.offload import BlockSwap, check_quantization, quantization_spec

REPO = Path(__file__).resolve().parents[1]
CONFIGS = Path(__file__).parent / "data" / "configs"


def preset(family: str, **sections):
    data = load_preset(REPO / "training" / f"{family}-lora.toml").model_dump(exclude_none=True)
    for k, v in sections.items():
        data[k] = {**data[k], **v}
    return parse_preset(data)


# (label, family, config folder, preset changes, resolution, fits in 24 GiB)
PLAN_CASES = [
    ("flux-nf4-512", "flux", "flux1-dev", {}, 512, True),
    ("flux-bf16-512", "flux", "flux1-dev", {"memory": {"base_quantization": "none"}}, 512, False),
    ("flux-bf16-512-swap", "flux", "flux1-dev", {"memory": {"base_quantization": "none", "block_swap": 20}}, 512, True),
    ("sd35m-512", "sd3", "sd35-medium", {}, 512, True),
]


@pytest.fixture(scope="module")
def plans():
    return {
        label: plan_memory(preset(fam, **changes), CONFIGS / folder, resolution=res, vram_gib=24)
        for label, fam, folder, changes, res, _ in PLAN_CASES
    }


@pytest.mark.parametrize("label, family, folder, changes, res, fits", PLAN_CASES, ids=[c[0] for c in PLAN_CASES])
def test_plans_on_real_configs(plans, label, family, folder, changes, res, fits):
    plan = plans[label]
    assert plan.fits is fits, plan.to_text()
    text = plan.to_text()
    assert ("24 GiB: fits" in text) is fits and text.startswith(f"memory plan: {family}, ")
    rows = {r.name: r for r in plan.rows}
    den = get_spec(family).denoiser
    # Weights live where the loop puts them: encoders only while caching, the VAE back for the probes.
    assert rows["vae"].phases["train"] is None and rows["vae"].phases["probe"] > 0
    assert all(rows[n].phases["train"] is None for n in rows if n.startswith("text_encoder"))
    assert rows[den].phases["train"] > 0 and rows["activations"].phases["train"] > 0
    assert plan.peak_gib == max(plan.phase_totals.values())


def test_flux_numbers_match_the_release(plans):
    nf4, bf16 = plans["flux-nf4-512"], plans["flux-bf16-512"]
    t5 = next(r for r in nf4.rows if r.name == "text_encoder_2")
    assert t5.what.startswith("4.76 B") and 8.5 < t5.phases["cache"] < 9.2  # T5-XXL in bf16
    den_nf4 = next(r for r in nf4.rows if r.name == "transformer").phases["train"]
    den_bf16 = next(r for r in bf16.rows if r.name == "transformer").phases["train"]
    assert 21.5 < den_bf16 < 22.5  # 11.9 B parameters x 2 bytes
    assert 0.24 < den_nf4 / den_bf16 < 0.28  # 4 bits + double-quantised scales, the rest in bf16
    # The quantised transformer loads onto the GPU at once; unquantised it waits on the CPU while the caches fill.
    assert next(r for r in bf16.rows if r.name == "transformer").phases["cache"] is None
    swap = next(r for r in plans["flux-bf16-512-swap"].rows if r.name == "transformer").phases["train"]
    assert den_bf16 - swap > 4  # the last 20 (single) blocks, less the two on the GPU at a time


def test_gradient_checkpointing_and_rank_move_the_plan():
    sd3 = CONFIGS / "sd35-medium"
    on = plan_memory(preset("sd3"), sd3, resolution=512)
    off = plan_memory(preset("sd3", train={"gradient_checkpointing": False}), sd3, resolution=512)
    act = lambda p: next(r for r in p.rows if r.name == "activations").phases["train"]
    assert act(off) > 3 * act(on) and any("gradient_checkpointing = true would save" in n for n in off.notes)
    big = plan_memory(preset("sd3", lora={"rank": 64}), sd3, resolution=512)
    lora = lambda p: next(r for r in p.rows if r.name == "LoRA weights + gradients").phases["train"]
    assert lora(big) == pytest.approx(4 * lora(on), rel=1e-6)
    assert on.fits is None and "no device to compare with: pass --vram" in on.to_text()


def test_plan_cli_on_a_tiny_model(tiny_models, tmp_path):
    """--plan reads the model's configs and prints the table; nothing trains, nothing is written."""
    from test_train import make_character, write_dataset

    d = make_character(tmp_path / "characters")
    write_dataset(d)  # prepped at 64 px: the plan is for that resolution
    model = tiny_models("sd15").root
    res = CliRunner().invoke(
        cli,
        ["train", str(d), "-m", str(model), "-p", str(REPO / "training" / "sd15-lora.toml"), "--plan", "--vram", "24"],
    )
    assert res.exit_code == 0, res.output
    assert res.output.startswith("memory plan: sd15, ") and ", 64 px, " in res.output, res.output
    assert "unet" in res.output and "24 GiB: fits" in res.output
    assert not (d / "loras").exists()
    bad = CliRunner().invoke(
        cli, ["train", str(d), "-m", str(tmp_path), "-p", str(REPO / "training" / "sd15-lora.toml"), "--plan"]
    )
    assert bad.exit_code == 2 and bad.output.startswith("Error: --plan ") and "model_index.json" in bad.output


# ------------------------------------------------------------------------------------------ quantisation


def test_quantization_spec_and_where_it_runs(monkeypatch):
    p = preset("flux")
    q = quantization_spec(p, get_spec("flux"), torch.bfloat16)
    assert (q.method, q.backend, q.component) == ("nf4", "bitsandbytes_4bit", "transformer")
    assert q.kwargs == {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": torch.bfloat16,
    }
    assert quantization_spec(
        preset("flux", memory={"base_quantization": "int8"}), get_spec("flux"), torch.bfloat16
    ).kwargs == {"load_in_8bit": True}
    assert quantization_spec(preset("sd15"), get_spec("sd15"), torch.float16) is None
    assert "stays unquantised on cpu" in check_quantization(p, torch.device("cpu"))
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CharkitError, match=r"needs bitsandbytes: pip install 'charkit\[gpu\]'"):
        check_quantization(p, torch.device("cuda"))


def test_quantization_config_for_diffusers():
    pytest.importorskip("bitsandbytes")
    from charkit.train.offload import quantization_config

    cfg = quantization_config(quantization_spec(preset("flux"), get_spec("flux"), torch.bfloat16))
    bnb = cfg.quant_mapping["transformer"]
    assert bnb.load_in_4bit and bnb.bnb_4bit_quant_type == "nf4" and bnb.bnb_4bit_compute_dtype == torch.bfloat16


@pytest.mark.parametrize(
    "changes, needle",
    [
        (
            {"memory": {"block_swap": 4}, "train": {"gradient_checkpointing": False}},
            "needs train.gradient_checkpointing",
        ),
        ({"memory": {"block_swap": 4, "base_quantization": "nf4"}}, "unquantised base"),
    ],
)
def test_block_swap_preset_rules(changes, needle):
    with pytest.raises(CharkitError, match=needle):
        preset("flux", **changes)
    with pytest.raises(CharkitError, match="transformer families"):
        preset("sdxl", memory={"block_swap": 2})


# ------------------------------------------------------------------------------------------ block swap


def test_block_swap_hooks_keep_the_step_exact():
    """Swapped blocks run through the hooks in forward and in the recomputation of backward; loss and LoRA
    gradients are those of the plain model (on CPU the two devices are one, so only the mechanism is tested)."""
    from peft import LoraConfig

    def step(swap: int):
        pipe = get_family("flux").tiny_pipeline(0)
        t = pipe.transformer
        t.requires_grad_(False)
        torch.manual_seed(0)
        t.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_q", "to_v"]))
        for n, p in t.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.1, generator=torch.Generator().manual_seed(1))
        t.enable_gradient_checkpointing()
        hooks = BlockSwap(t, swap, torch.device("cpu")) if swap else None
        g = torch.Generator().manual_seed(3)
        x = torch.randn(1, 16, 4, generator=g)
        out = t(
            hidden_states=x,
            timestep=torch.tensor([0.5]),
            guidance=torch.tensor([1.0]) if t.config.guidance_embeds else None,
            pooled_projections=torch.randn(1, t.config.pooled_projection_dim, generator=g),
            encoder_hidden_states=torch.randn(1, 8, t.config.joint_attention_dim, generator=g),
            txt_ids=torch.zeros(8, 3),
            img_ids=torch.zeros(16, 3),
            return_dict=False,
        )[0]
        loss = out.float().pow(2).mean()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in t.named_parameters() if p.grad is not None}
        return float(loss.detach()), grads, hooks

    base_loss, base_grads, _ = step(0)
    loss, grads, hooks = step(2)
    assert loss == base_loss and grads.keys() == base_grads.keys() and grads
    assert all(torch.equal(grads[k], base_grads[k]) for k in grads)
    assert hooks.onloads == 2 * 2  # 2 blocks x (forward + recomputation in backward)
    with pytest.raises(CharkitError, match="at most"):
        BlockSwap(get_family("flux").tiny_pipeline(0).transformer, 9, torch.device("cpu"))


# ---------------------------------------------------------------------------------------- probe prompts


@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_probes_from_cached_embeddings_match_the_prompt_path(family, tiny_models, tmp_path):
    """Probes render from prompt embeddings cached before training (so the text encoders can leave the GPU):
    the pixels equal those of the family's generate() with the prompt text."""
    from test_train import make_character, tiny_preset, write_dataset

    from charkit.families import family_part
    from charkit.train import loop
    from charkit.train.evaluate import probe_specs

    d = make_character(tmp_path / "characters")
    write_dataset(d)
    plan = loop.check_inputs(d, model=tiny_models(family).root, preset=tiny_preset(family), device="cpu")
    session = loop.load(plan)
    loop.cache(session)
    assert session.probe_embeds  # cached with the captions
    specs = probe_specs(plan.preset.eval.prompts, [1, 2], trigger="ohwx", class_word="man")
    images = loop.render_probes(session, specs)
    ref = family_part(family, "pipeline").generate(
        session.pipe,
        prompt=specs[0].prompt,
        width=plan.probe_width,
        height=plan.probe_height,
        steps=plan.preset.eval.steps,
        guidance=get_spec(family).guidance,
        generator=[torch.Generator("cpu").manual_seed(s) for s in (1, 2)],
        num_images=2,
    )
    for a, b in zip(images, ref):
        assert np.array_equal(np.asarray(a), np.asarray(b))
