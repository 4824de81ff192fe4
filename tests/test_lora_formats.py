"""LoRA layouts of every family and the original (BFL / Stability) single-file layouts.

Every case trains nothing: a tiny real pipeline gets a peft LoRA with random nonzero lora_B (a fresh LoRA is an
exact no-op), renders a reference, and the exported file must reproduce those pixels in a fresh pipeline.
Name maps are checked against the inverse that diffusers itself ships (its single-file and kohya converters).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from charkit.errors import CharkitError
from charkit.families import get_family, get_spec
from charkit.families.loraformats import (
    adapter_modules,
    all_linear_targets,
    detect_lora_layout,
    load_lora,
    to_diffusers,
    to_kohya,
    to_onetrainer,
)

SIZE = 32


def render(pipe) -> np.ndarray:
    with torch.no_grad():
        return pipe(
            prompt="a photo of a man",
            num_inference_steps=2,
            generator=torch.Generator().manual_seed(3),
            output_type="np",
            height=SIZE,
            width=SIZE,
        ).images


def fresh(family: str):
    pipe = get_family(family).tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def family_lora(family: str):  # the family spec (structure facts)
    return get_spec(family)


def add_lora(model, targets, *, seed: int = 1, rank: int = 4, alpha: float = 8) -> dict[str, torch.Tensor]:
    """A peft LoRA on ``targets`` with random nonzero lora_B; returns its peft state dict."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    model.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets)))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return get_peft_model_state_dict(model)


def save(path, sd, metadata=None):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=metadata)
    return path


def targets_for(family: str, which: str, denoiser) -> list[str]:
    return list(family_lora(family).lora_targets) if which == "default" else all_linear_targets(family, denoiser)


# --------------------------------------------------------------------------------------------- layouts

LAYOUT_CASES = [
    ({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": 0}, "diffusers"),
    ({"transformer.transformer_blocks.0.attn.to_q.lora_B.weight": 0}, "diffusers"),
    ({"base_model.model.transformer_blocks.0.attn.to_q.lora_A.weight": 0}, "peft"),
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": 0}, "kohya_sd"),
    ({"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_up.weight": 0}, "kohya_sd"),
    ({"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": 0}, "kohya_sd"),
    ({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": 0}, "kohya_flux"),
    ({"lora_unet_single_blocks_37_linear1.lora_up.weight": 0}, "kohya_flux"),
    ({"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": 0}, "kohya_sd3"),
    ({"lora_transformer_single_transformer_blocks_0_proj_mlp.lora_down.weight": 0}, "onetrainer"),
    ({"double_blocks.0.img_attn.qkv.weight": 0}, "unknown"),
    ({}, "unknown"),
]


@pytest.mark.parametrize("keys, layout", LAYOUT_CASES, ids=[c[1] + str(i) for i, c in enumerate(LAYOUT_CASES)])
def test_detect_lora_layout(keys, layout):
    assert detect_lora_layout(keys) == layout


# ------------------------------------------------------------------------------ export -> load -> pixels

# (family, targets, text encoders trained too)
EXPORT_CASES = [
    ("sd15", "default", True),
    ("sd15", "all_linear", False),
    ("sdxl", "default", True),
    ("sdxl", "all_linear", False),
    ("sd3", "default", False),
    ("sd3", "all_linear", False),
    ("flux", "default", False),
    ("flux", "all_linear", False),
]


@pytest.mark.parametrize("family, which, te", EXPORT_CASES, ids=[f"{f}-{w}" for f, w, _ in EXPORT_CASES])
def test_kohya_export_loads_back_with_the_trained_pixels(family, which, te, tmp_path):
    """to_kohya -> file -> load_lora in a fresh pipeline renders exactly what the trained pipeline renders."""
    fl = family_lora(family)
    pipe = fresh(family)
    base = render(pipe)
    den = getattr(pipe, fl.denoiser)
    layers = {fl.denoiser: add_lora(den, targets_for(family, which, den))}
    if te:
        for i, name in enumerate(fl.lora_text_encoders):
            layers[name] = add_lora(getattr(pipe, name), fl.text_encoder_lora_targets, seed=2 + i)
    trained = render(pipe)
    assert np.abs(trained - base).max() > 1e-3, "the LoRA does not change the pixels"

    path = save(tmp_path / "alice.kohya.safetensors", to_kohya(family, layers, alpha=8))
    other = fresh(family)
    info = load_lora(other, path, family=family, adapter_name="alice")
    assert np.abs(render(other) - trained).max() < 1e-4
    expected_layout = {"sd3": "kohya_sd3", "flux": "kohya_flux"}.get(family, "kohya_sd")
    assert info.layout == expected_layout and info.adapter_name == "alice" and len(info.sha256) == 64
    assert info.converted == (family in ("sd3", "flux"))
    assert set(info.modules) == set(layers) and all(n > 0 for n in info.modules.values())
    if family in ("sd15", "sdxl"):  # 1:1 names: every trained module, nothing else
        assert info.modules == {c: len({k.split(".lora_")[0] for k in sd}) for c, sd in layers.items()}
    with pytest.raises(CharkitError, match="already loaded"):
        load_lora(other, path, family=family, adapter_name="alice")
    # a second adapter on the wrapped model maps to the same modules
    assert load_lora(other, path, family=family, adapter_name="bob").modules == info.modules


def test_sd_scripts_sdxl_file_with_ldm_block_names(tmp_path):
    """sd-scripts names SDXL UNet modules the LDM way (lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q);
    load_lora validates and loads those too."""
    from charkit.families.ldm import unet_to_ldm

    pipe = fresh("sdxl")
    ldm = unet_to_ldm({k: k for k in pipe.unet.state_dict()}, pipe.unet.config)
    layers = {"unet": add_lora(pipe.unet, all_linear_targets("sdxl", pipe.unet))}
    trained = render(pipe)
    rename = {
        "lora_unet_" + d[: -len(".weight")].replace(".", "_"): "lora_unet_" + o[: -len(".weight")].replace(".", "_")
        for o, d in ldm.items()
        if o.endswith(".weight")
    }
    sd = {}
    for k, v in to_kohya("sdxl", layers, alpha=8).items():
        base, _, rest = k.partition(".")
        sd[f"{rename.get(base, base)}.{rest}"] = v
    assert any(k.startswith("lora_unet_input_blocks_") for k in sd) and not any("down_blocks" in k for k in sd)
    other = fresh("sdxl")
    load_lora(other, save(tmp_path / "sdxl-ldm.safetensors", sd), family="sdxl", adapter_name="l")
    assert np.abs(render(other) - trained).max() < 1e-4


def bfl_block_modules(pipe) -> set[str]:
    from charkit.families.flux.bfl import module_map
    from charkit.families.namemap import module_shapes

    names = module_map(module_shapes(pipe.transformer)).modules
    return {n for n in names if n.startswith(("double_blocks.", "single_blocks."))}


def test_flux_kohya_keys_are_bfl_names_fused_like_sd_scripts():
    """kohya's own naming: lora_unet_<BFL module>, qkv/linear1 fused (down stacked, up block-diagonal, alpha x n)."""
    pipe = fresh("flux")
    den = pipe.transformer
    layers = add_lora(den, all_linear_targets("flux", den), rank=4, alpha=8)
    sd = to_kohya("flux", {"transformer": layers}, alpha=8)
    bfl = bfl_block_modules(pipe)
    assert {k.rsplit(".", 2)[0] if "lora_" in k.split(".", 1)[1] else k.rsplit(".", 1)[0] for k in sd} == {
        "lora_unet_" + n.replace(".", "_") for n in bfl
    }
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in sd
    assert "lora_unet_single_blocks_0_linear1.lora_up.weight" in sd
    assert "lora_unet_double_blocks_0_img_mod_lin.alpha" in sd
    qkv_down, qkv_up = (
        sd["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"],
        sd["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"],
    )
    assert qkv_down.shape == (12, 32) and qkv_up.shape == (96, 12)
    assert float(sd["lora_unet_double_blocks_0_img_attn_qkv.alpha"]) == 24  # alpha/rank = 8/4 kept
    assert not qkv_up[:32, 4:].any() and not qkv_up[32:64, :4].any()  # block-diagonal
    assert torch.equal(qkv_down[4:8], layers["transformer_blocks.0.attn.to_k.lora_A.weight"])
    assert sd["lora_unet_single_blocks_0_linear1.lora_up.weight"].shape == (32 * 3 + 128, 16)
    assert float(sd["lora_unet_double_blocks_0_img_attn_proj.alpha"]) == 8
    # default targets adapt only q/k/v of linear1: its MLP rows stay zero
    pipe = fresh("flux")
    layers = add_lora(pipe.transformer, family_lora("flux").lora_targets)
    up = to_kohya("flux", {"transformer": layers}, alpha=8)["lora_unet_single_blocks_0_linear1.lora_up.weight"]
    assert up.shape == (224, 12) and not up[96:].any()


def test_flux_kohya_file_loads_through_stock_diffusers(tmp_path):
    """diffusers' own kohya-Flux reader loads the blocks of the file to the same pixels. Two limits of diffusers
    0.42 that load_lora does not have: it hard-codes FLUX.1's linear1 split (3072 x 3 + 12288; at tiny width it
    fails, test_fused_flux_lora_matches_diffusers_at_flux1_size covers real width), and it silently drops the
    modules outside the blocks (embedders, final layer)."""
    pipe = fresh("flux")
    den = pipe.transformer
    linear1 = ("to_q", "to_k", "to_v", "proj_mlp")
    blocks = [n for n in all_linear_targets("flux", den) if not (n.startswith("single_") and n.endswith(linear1))]
    top = [
        n
        for n, m in den.named_modules()
        if isinstance(m, torch.nn.Linear) and not n.startswith(("transformer_", "single_"))
    ]
    layers = add_lora(den, blocks)
    trained = render(pipe)
    path = save(tmp_path / "blocks.safetensors", to_kohya("flux", {"transformer": layers}, alpha=8))
    stock = fresh("flux")
    stock.load_lora_weights(str(path), adapter_name="s")
    assert np.abs(render(stock) - trained).max() < 1e-4

    pipe = fresh("flux")
    layers = add_lora(pipe.transformer, blocks + top)
    trained = render(pipe)
    sd = to_kohya("flux", {"transformer": layers}, alpha=8)
    assert {"lora_unet_final_layer_adaLN_modulation_1.lora_up.weight", "lora_unet_guidance_in_in_layer.alpha"} <= set(
        sd
    )
    path = save(tmp_path / "all.safetensors", sd)
    stock = fresh("flux")
    stock.load_lora_weights(str(path), adapter_name="s")
    assert not adapter_modules(stock, "s")["transformer"] & set(top)  # dropped without an error
    ours = fresh("flux")
    info = load_lora(ours, path, family="flux", adapter_name="s")
    assert info.modules["transformer"] == len(blocks) + len(top)
    assert np.abs(render(ours) - trained).max() < 1e-4

    with_linear1 = to_kohya("flux", {"transformer": add_lora(fresh("flux").transformer, ["to_q"])}, alpha=4)
    with pytest.raises(AssertionError):
        fresh("flux").load_lora_weights(save(tmp_path / "l1.safetensors", with_linear1), adapter_name="s")


def test_fused_flux_lora_matches_diffusers_at_flux1_size():
    """At FLUX.1's width, diffusers' _convert_kohya_flux_lora_to_diffusers and to_diffusers split charkit's fused
    file (and sd-scripts' default dense one: one LoRA over the whole fused Linear) into the same weight deltas."""
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    from charkit.families.namemap import module_shapes

    with torch.device("meta"):
        den = FluxTransformer2DModel(num_layers=1, num_single_layers=1, guidance_embeds=True)

    shapes = {"transformer": module_shapes(den)}
    g = torch.Generator().manual_seed(0)
    parts = ["attn.to_q", "attn.to_k", "attn.to_v"]
    mods = [f"transformer_blocks.0.{p}" for p in parts] + [f"single_transformer_blocks.0.{p}" for p in parts]
    mods += ["single_transformer_blocks.0.proj_mlp", "transformer_blocks.0.ff.net.2"]
    peft = {}
    for m in mods:
        out, inp = shapes["transformer"][m]
        peft[f"{m}.lora_A.weight"] = torch.randn(2, inp, generator=g)
        peft[f"{m}.lora_B.weight"] = torch.randn(out, 2, generator=g)
    dense = {  # sd-scripts' default: one rank-3 LoRA over the whole linear1
        "lora_unet_single_blocks_0_linear1.lora_down.weight": torch.randn(3, 3072, generator=g),
        "lora_unet_single_blocks_0_linear1.lora_up.weight": torch.randn(21504, 3, generator=g),
        "lora_unet_single_blocks_0_linear1.alpha": torch.tensor(1.5),
    }
    for kohya in (to_kohya("flux", {"transformer": peft}, alpha=1.0), dense):
        theirs = _deltas(_convert_kohya_flux_lora_to_diffusers(dict(kohya)))
        ours = _deltas(to_diffusers("flux", kohya, shapes))
        assert set(ours) == set(theirs)
        for k in ours:
            torch.testing.assert_close(ours[k], theirs[k], rtol=1e-5, atol=1e-5)
    # and charkit's fused file reproduces each module's own delta (scale alpha / r = 1 / 2)
    fused = _deltas(to_diffusers("flux", to_kohya("flux", {"transformer": peft}, alpha=1.0), shapes))
    for m in mods:
        expect = _deltas(
            {f"{m}.lora_A.weight": peft[f"{m}.lora_A.weight"] * 0.5, f"{m}.lora_B.weight": peft[f"{m}.lora_B.weight"]}
        )
        torch.testing.assert_close(fused[f"transformer.{m}"], expect[m], rtol=1e-5, atol=1e-4)


def _deltas(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``module -> (lora_B @ lora_A) @ probe`` of a diffusers-keyed LoRA (alpha folded in): the weight delta
    applied to a fixed random probe, which is cheap at FLUX.1 size."""
    out = {}
    for k in sd:
        if k.endswith(".lora_A.weight"):
            a = sd[k]
            probe = torch.randn(a.shape[1], 2, generator=torch.Generator().manual_seed(a.shape[1]))
            out[k[: -len(".lora_A.weight")]] = sd[k.replace("lora_A", "lora_B")] @ (a @ probe)
    return out


SD3_STOCK_CASES = [("kohya_sd3", to_kohya), ("onetrainer", to_onetrainer)]


@pytest.mark.parametrize("layout, writer", SD3_STOCK_CASES, ids=[c[0] for c in SD3_STOCK_CASES])
def test_sd3_non_diffusers_files_load_nothing_in_stock_diffusers(layout, writer, tmp_path):
    """Stock diffusers 0.42 converts no SD3 LoRA layout: it loads zero keys and renders the base model, with only
    a log warning. load_lora converts the file and applies it (incl. the last block's shift/scale swap)."""
    pipe = fresh("sd3")
    base = render(pipe)
    layers = add_lora(pipe.transformer, all_linear_targets("sd3", pipe.transformer))
    trained = render(pipe)
    sd = writer("sd3", {"transformer": layers}, alpha=8)
    assert detect_lora_layout(sd) == layout
    path = save(tmp_path / "s.safetensors", sd)
    stock = fresh("sd3")
    stock.load_lora_weights(str(path), adapter_name="s")
    assert adapter_modules(stock, "s") == {}
    assert np.array_equal(render(stock), base)
    ours = fresh("sd3")
    info = load_lora(ours, path, family="sd3", adapter_name="s")
    assert info.converted and info.modules["transformer"] == len({k.split(".lora_")[0] for k in layers})
    assert np.abs(render(ours) - trained).max() < 1e-4


def test_onetrainer_flux_file_with_mlp_targets(tmp_path):
    """charkit's old Flux "kohya" export (OneTrainer naming) with MLP targets breaks stock diffusers; load_lora reads it."""
    pipe = fresh("flux")
    layers = add_lora(pipe.transformer, all_linear_targets("flux", pipe.transformer))
    trained = render(pipe)
    path = save(tmp_path / "ot.safetensors", to_onetrainer("flux", {"transformer": layers}, alpha=8))
    with pytest.raises(KeyError, match="single_transformer_blocks.0"):
        fresh("flux").load_lora_weights(str(path), adapter_name="o")
    ours = fresh("flux")
    assert load_lora(ours, path, family="flux", adapter_name="o").layout == "onetrainer"
    assert np.abs(render(ours) - trained).max() < 1e-4


# ------------------------------------------------------------------------------------------------ errors


@pytest.fixture(scope="module")
def family_files(tmp_path_factory):
    """``family -> kohya LoRA file`` for that family's tiny denoiser (default targets)."""
    root = tmp_path_factory.mktemp("family-loras")
    out = {}
    for family in ("sd15", "sdxl", "sd3", "flux"):
        fl = family_lora(family)
        pipe = fresh(family)
        layers = {fl.denoiser: add_lora(getattr(pipe, fl.denoiser), fl.lora_targets)}
        out[family] = save(root / f"{family}.safetensors", to_kohya(family, layers, alpha=4))
    return out


WRONG_FAMILY_CASES = [
    ("flux", "sd3", "matched no modules of this sd3 model; is it for another family?"),
    ("sd3", "flux", "matched no modules of this flux model; is it for another family?"),
    ("sd15", "flux", "matched no modules of this flux model; is it for another family?"),
    ("flux", "sd15", "matched no modules of this sd15 model; is it for another family?"),
    ("sd15", "sdxl", "does not fit unet module"),
]


@pytest.mark.parametrize(
    "lora_family, model_family, needle", WRONG_FAMILY_CASES, ids=[f"{a}-into-{b}" for a, b, _ in WRONG_FAMILY_CASES]
)
def test_lora_for_another_family_is_a_one_line_error(family_files, lora_family, model_family, needle):
    pipe = fresh(model_family)
    with pytest.raises(CharkitError) as err:
        load_lora(pipe, family_files[lora_family], family=model_family, adapter_name="x")
    msg = str(err.value)
    assert needle in msg and "\n" not in msg and str(family_files[lora_family]) in msg
    assert adapter_modules(pipe, "x") == {}  # nothing left half-loaded


def _bad_files(tmp_path, family_files):
    from safetensors.torch import load_file

    good = load_file(str(family_files["flux"]))
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00\x01not a safetensors file")
    (tmp_path / "model.ckpt").write_bytes(b"")
    return {
        "empty": (save(tmp_path / "empty.safetensors", {}), "holds no tensors"),
        "garbage": (tmp_path / "garbage.safetensors", "not a readable .safetensors file"),
        "pickle": (tmp_path / "model.ckpt", "only .safetensors"),
        "missing": (tmp_path / "nope.safetensors", "no such file"),
        "not a lora": (
            save(tmp_path / "weights.safetensors", {"double_blocks.0.img_attn.qkv.weight": torch.zeros(2, 2)}),
            "no LoRA tensors found",
        ),
        "stray key": (
            save(
                tmp_path / "stray.safetensors",
                {
                    **good,
                    "lora_unet_double_blocks_7_img_attn_qkv.lora_down.weight": torch.zeros(4, 32),
                    "lora_unet_double_blocks_7_img_attn_qkv.lora_up.weight": torch.zeros(96, 4),
                },
            ),
            "'lora_unet_double_blocks_7_img_attn_qkv.lora_down.weight' fits no module of this flux model",
        ),
        "wrong shape": (
            save(
                tmp_path / "shape.safetensors",
                {**good, "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(12, 31)},
            ),
            "does not fit transformer module",
        ),
    }


BAD_CASES = ["empty", "garbage", "pickle", "missing", "not a lora", "stray key", "wrong shape"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_lora_files_are_one_line_errors(case, family_files, tmp_path):
    path, needle = _bad_files(tmp_path, family_files)[case]
    pipe = fresh("flux")
    with pytest.raises(CharkitError) as err:
        load_lora(pipe, path, family="flux", adapter_name="x")
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert adapter_modules(pipe, "x") == {}


def test_family_must_match_the_pipeline(family_files):
    with pytest.raises(CharkitError, match="the pipeline is a sd3 model, not flux; pass family='sd3'"):
        load_lora(fresh("sd3"), family_files["flux"], family="flux", adapter_name="x")


# ----------------------------------------------------------------------------------------- single files


def _transformer_out(model, family: str):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if family == "sd3":
            return model(
                hidden_states=torch.randn(1, 4, 8, 8, generator=g),
                encoder_hidden_states=torch.randn(1, 5, 32, generator=g),
                pooled_projections=torch.randn(1, 64, generator=g),
                timestep=torch.tensor([500.0]),
            ).sample
    raise AssertionError(family)


def test_sd3_single_files_load_with_diffusers_from_single_file(tmp_path):
    """The Stability layout is the real one: diffusers' from_single_file reads all three variants back."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    from charkit.testing.singlefile import write_sd3_single_file, write_sd3_transformer
    from charkit.testing.tinyparts import clip_text_config, seeded

    pipe = fresh("sd3")
    # Real SD3 has CLIP-L 768 / CLIP-G 1280 wide; diffusers tells them apart by width, so the tiny ones must differ.
    with seeded(7):
        pipe.text_encoder_2 = CLIPTextModelWithProjection(clip_text_config(48, projection_dim=32)).eval()
    with torch.no_grad():  # SD3 uses CLIP-L's pooled output unprojected: files hold no projection for it
        pipe.text_encoder.text_projection.weight.copy_(torch.eye(32))
    pipe.save_pretrained(tmp_path / "sd3")
    files = {
        "transformer": write_sd3_transformer(tmp_path / "mmdit.safetensors", pipe),
        "no_te": write_sd3_single_file(tmp_path / "sd3.5_medium.safetensors", pipe, with_text_encoders=False),
        "full": write_sd3_single_file(tmp_path / "incl_clips_t5.safetensors", pipe),
    }
    ref = _transformer_out(pipe.transformer, "sd3")
    for f in files.values():
        t = SD3Transformer2DModel.from_single_file(str(f), config=str(tmp_path / "sd3"), subfolder="transformer")
        torch.testing.assert_close(_transformer_out(t, "sd3"), ref, rtol=1e-5, atol=1e-5)
    whole = StableDiffusion3Pipeline.from_single_file(str(files["full"]), config=str(tmp_path / "sd3"))
    assert whole.text_encoder_3.training  # diffusers leaves the T5 read from a single file in train mode (dropout on)
    whole.text_encoder_3.eval()
    whole.set_progress_bar_config(disable=True)
    assert np.abs(render(whole) - render(pipe)).max() < 1e-4


def test_bfl_flux_layout_matches_diffusers_converter_at_flux1_dev_size():
    """to_bfl is the exact inverse of diffusers' convert_flux_transformer_checkpoint_to_diffusers at FLUX.1-dev
    size (19 double, 38 single blocks, guidance): row-id tensors (one column) keep it to a few MB."""
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    from charkit.families.flux.bfl import to_bfl

    with torch.device("meta"):
        dev = FluxTransformer2DModel(guidance_embeds=True)
    ids = {}
    for n, (k, v) in enumerate(sorted(dev.state_dict().items())):
        rows = n * 1_000_000 + torch.arange(v.shape[0], dtype=torch.float64)
        ids[k] = rows[:, None] if v.ndim > 1 else rows
    bfl = to_bfl(ids)
    assert "double_blocks.18.img_attn.norm.query_norm.scale" in bfl and "single_blocks.37.linear1.weight" in bfl
    assert bfl["single_blocks.0.linear1.weight"].shape[0] == 3072 * 3 + 12288
    back = convert_flux_transformer_checkpoint_to_diffusers(dict(bfl))
    assert set(back) == set(ids)
    assert all(torch.equal(back[k], ids[k]) for k in ids)


def test_bfl_flux_single_files_of_the_tiny_model(tmp_path):
    from safetensors import safe_open

    from charkit.families import detect_family
    from charkit.testing.singlefile import write_bfl_flux

    pipe = fresh("flux")
    dit = write_bfl_flux(tmp_path / "flux1-tiny.safetensors", pipe)
    full = write_bfl_flux(tmp_path / "flux1-tiny-aio.safetensors", pipe, full=True)
    with safe_open(str(dit), "pt") as f:
        keys = set(f.keys())
    blocks = {"double_blocks.0." + s for s in ("img_attn.qkv.weight", "txt_attn.proj.bias", "img_mod.lin.weight")}
    assert (
        blocks
        | {"single_blocks.0.linear1.weight", "final_layer.adaLN_modulation.1.weight", "guidance_in.in_layer.weight"}
        <= keys
    )
    assert {k for k in keys if k.endswith(".scale")} == {
        f"double_blocks.0.{s}_attn.norm.{q}_norm.scale" for s in ("img", "txt") for q in ("query", "key")
    } | {f"single_blocks.0.norm.{q}_norm.scale" for q in ("query", "key")}
    assert detect_family(dit) == "flux" and detect_family(full) == "flux"
    with safe_open(str(full), "pt") as f:
        names = f.keys()
    heads = {".".join(k.split(".")[:2]) for k in names}
    assert heads == {
        "model.diffusion_model",
        "text_encoders.clip_l",
        "text_encoders.t5xxl",
        "vae.encoder",
        "vae.decoder",
    }
    # diffusers' reader hard-codes FLUX.1's 3072 width for linear1, so it cannot read a tiny BFL file (see above)
    from diffusers import FluxTransformer2DModel

    pipe.transformer.save_config(tmp_path / "cfg" / "transformer")
    with pytest.raises(RuntimeError, match="split"):
        FluxTransformer2DModel.from_single_file(str(dit), config=str(tmp_path / "cfg"), subfolder="transformer")
