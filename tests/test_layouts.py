"""charkit.testing.layouts: tiny artifacts in the real layouts of released files, checked two ways.

(a) key names, nesting, file/folder names and config fields against the documented real layouts (tables below);
(b) every artifact goes through *stock diffusers* on the tiny models exactly as a real one would, and changes pixels.
(c) known real-world defects, shown on the real code paths (diffusers' behaviour, not charkit's).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from charkit.families import get_family
from charkit.testing.layouts import (
    VIT_BIGG,
    VIT_H,
    faceid_file_name,
    write_flux_union_controlnet,
    write_h94_faceid,
    write_h94_ip_adapter,
    write_kohya_lora,
    write_sdxl_union_controlnet,
)

SIZE, STEPS = 64, 1
PROMPT = "a photo of a woman"
ID_EMBEDS = torch.randn(1, 1, 512, generator=torch.Generator().manual_seed(1))  # one ArcFace id, no CFG half


def _pipe(family: str):
    return get_family(family).tiny_pipeline(0)  # fresh: load_ip_adapter registers an image encoder only once


def _render(pipe, **kw) -> np.ndarray:
    out = pipe(
        PROMPT,
        num_inference_steps=STEPS,
        height=SIZE,
        width=SIZE,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        **kw,
    )
    return np.asarray(out.images[0], dtype=np.float64)


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max())


def _keys(path) -> dict[str, torch.Tensor]:
    if str(path).endswith(".safetensors"):
        with safe_open(str(path), "pt") as f:
            names = f.keys()
            return {k: f.get_tensor(k) for k in names}
    nested = torch.load(path, map_location="cpu", weights_only=True)
    return {f"{head}.{k}": v for head, sd in nested.items() for k, v in sd.items()}


def _numbers(keys, suffix: str) -> set[int]:
    return {int(m[1]) for k in keys if (m := re.fullmatch(rf"ip_adapter\.(\d+)\.{re.escape(suffix)}", k))}


@pytest.fixture(scope="module")
def unets():
    return {"sd15": _pipe("sd15").unet, "sdxl": _pipe("sdxl").unet}


@pytest.fixture(scope="module")
def h94(tmp_path_factory, unets):
    root = tmp_path_factory.mktemp("h94") / "IP-Adapter"
    return root, write_h94_ip_adapter(root, sd15_unet=unets["sd15"], sdxl_unet=unets["sdxl"])


@pytest.fixture(scope="module")
def face_image():
    return Image.fromarray((np.random.RandomState(0).rand(SIZE, SIZE, 3) * 255).astype("uint8"))


# --- (a) h94/IP-Adapter: key layout per file ---------------------------------------------------------------

RESAMPLER_KEYS = [  # tencent-ailab/IP-Adapter ip_adapter/resampler.py, as diffusers' converter reads them
    "image_proj.latents",
    "image_proj.proj_in.weight",
    "image_proj.proj_out.bias",
    "image_proj.norm_out.weight",
    "image_proj.layers.0.0.norm1.weight",
    "image_proj.layers.0.0.norm2.bias",
    "image_proj.layers.3.0.to_q.weight",
    "image_proj.layers.3.0.to_kv.weight",
    "image_proj.layers.3.0.to_out.weight",
    "image_proj.layers.3.1.0.weight",
    "image_proj.layers.3.1.1.weight",
    "image_proj.layers.3.1.3.weight",
]
PLAIN_KEYS = ["image_proj.proj.weight", "image_proj.proj.bias", "image_proj.norm.weight", "image_proj.norm.bias"]
FULL_FACE_KEYS = [f"image_proj.proj.{i}.{p}" for i in (0, 2, 3) for p in ("weight", "bias")]

# (file, family, required keys, forbidden keys, shape checks {key: shape})
H94_TABLE = [
    ("models/ip-adapter_sd15.safetensors", "sd15", PLAIN_KEYS, ["image_proj.latents"],
     {"image_proj.proj.weight": (4 * 32, VIT_H.projection_dim)}),
    ("models/ip-adapter-plus_sd15.safetensors", "sd15", RESAMPLER_KEYS, ["image_proj.proj.weight", "image_proj.layers.4.0.to_q.weight"],
     {"image_proj.latents": (1, 16, 32), "image_proj.proj_in.weight": (32, VIT_H.hidden_size), "image_proj.layers.0.0.to_kv.weight": (128, 32)}),
    ("models/ip-adapter-plus-face_sd15.safetensors", "sd15", RESAMPLER_KEYS, ["image_proj.proj.weight"],
     {"image_proj.proj_out.weight": (32, 32)}),
    ("models/ip-adapter-full-face_sd15.safetensors", "sd15", FULL_FACE_KEYS, ["image_proj.norm.weight", "image_proj.latents"],
     {"image_proj.proj.0.weight": (VIT_H.hidden_size, VIT_H.hidden_size), "image_proj.proj.3.weight": (32,)}),
    ("sdxl_models/ip-adapter_sdxl.safetensors", "sdxl", PLAIN_KEYS, [],
     {"image_proj.proj.weight": (4 * 80, VIT_BIGG.projection_dim)}),
    ("sdxl_models/ip-adapter_sdxl_vit-h.safetensors", "sdxl", PLAIN_KEYS, [],
     {"image_proj.proj.weight": (4 * 80, VIT_H.projection_dim)}),
    ("sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors", "sdxl", RESAMPLER_KEYS, [],
     {"image_proj.proj_in.weight": (64, VIT_H.hidden_size), "image_proj.proj_out.weight": (80, 64)}),
    ("sdxl_models/ip-adapter-plus-face_sdxl_vit-h.safetensors", "sdxl", RESAMPLER_KEYS, [],
     {"image_proj.latents": (1, 16, 64)}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "family", "required", "forbidden", "shapes"), H94_TABLE, ids=[r[0] for r in H94_TABLE]
)
def test_h94_file_has_the_real_keys(h94, unets, name, family, required, forbidden, shapes):
    root, paths = h94
    assert paths[name] == root / name
    sd = _keys(root / name)
    assert set(required) <= set(sd), sorted(set(required) - set(sd))
    assert not set(forbidden) & set(sd)
    assert {k.split(".")[0] for k in sd} == {"image_proj", "ip_adapter"}
    assert {k: tuple(sd[k].shape) for k in shapes} == shapes
    assert {v.dtype for v in sd.values()} == {torch.float16}  # h94 ships fp16
    # ip_adapter.N: one to_k_ip/to_v_ip pair per cross-attention processor, numbered 1, 3, 5, ...
    n_cross = sum(1 for p in unets[family].attn_processors if p.endswith("attn2.processor"))
    odd = set(range(1, 2 * n_cross, 2))
    assert _numbers(sd, "to_k_ip.weight") == _numbers(sd, "to_v_ip.weight") == odd
    assert {k for k in sd if k.startswith("ip_adapter.")} == {
        f"ip_adapter.{n}.to_{kv}_ip.weight" for n in odd for kv in "kv"
    }


def test_h94_folders_and_image_encoders(h94):
    root, paths = h94
    assert sorted(p.name for p in (root / "models").iterdir()) == sorted(
        [
            "image_encoder",
            "ip-adapter-full-face_sd15.safetensors",
            "ip-adapter-plus-face_sd15.safetensors",
            "ip-adapter-plus_sd15.safetensors",
            "ip-adapter_sd15.safetensors",
        ]
    )
    for sub, tower in (("models", VIT_H), ("sdxl_models", VIT_BIGG)):
        folder = paths[f"{sub}/image_encoder"]
        assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
        cfg = json.loads((folder / "config.json").read_text())
        assert cfg["architectures"] == ["CLIPVisionModelWithProjection"]
        assert (cfg["hidden_size"], cfg["projection_dim"], cfg["hidden_act"]) == (
            tower.hidden_size,
            tower.projection_dim,
            "gelu",
        )
    assert VIT_H.hidden_size != VIT_BIGG.hidden_size and VIT_H.projection_dim != VIT_BIGG.projection_dim


# --- (b) h94/IP-Adapter through stock diffusers --------------------------------------------------------------

# (family, subfolder, weight file, image_encoder_folder, diffusers projection class, tower it must get)
H94_LOAD = [
    ("sd15", "models", "ip-adapter_sd15.safetensors", "image_encoder", "ImageProjection", VIT_H),
    ("sd15", "models", "ip-adapter-plus_sd15.safetensors", "image_encoder", "IPAdapterPlusImageProjection", VIT_H),
    ("sd15", "models", "ip-adapter-plus-face_sd15.safetensors", "image_encoder", "IPAdapterPlusImageProjection", VIT_H),
    ("sd15", "models", "ip-adapter-full-face_sd15.safetensors", "image_encoder", "IPAdapterFullImageProjection", VIT_H),
    ("sdxl", "sdxl_models", "ip-adapter_sdxl.safetensors", "image_encoder", "ImageProjection", VIT_BIGG),
    ("sdxl", "sdxl_models", "ip-adapter_sdxl_vit-h.safetensors", "models/image_encoder", "ImageProjection", VIT_H),
    ("sdxl", "sdxl_models", "ip-adapter-plus_sdxl_vit-h.safetensors", "models/image_encoder", "IPAdapterPlusImageProjection", VIT_H),
    ("sdxl", "sdxl_models", "ip-adapter-plus-face_sdxl_vit-h.safetensors", "models/image_encoder", "IPAdapterPlusImageProjection", VIT_H),
]  # fmt: skip


@pytest.mark.parametrize(
    ("family", "sub", "weight", "encoder", "proj_cls", "tower"), H94_LOAD, ids=[r[2] for r in H94_LOAD]
)
def test_h94_adapter_loads_in_diffusers_and_renders(h94, face_image, family, sub, weight, encoder, proj_cls, tower):
    root, _ = h94
    pipe = _pipe(family)
    base = _render(pipe)
    pipe.load_ip_adapter(root, subfolder=sub, weight_name=weight, image_encoder_folder=encoder)
    assert type(pipe.unet.encoder_hid_proj.image_projection_layers[0]).__name__ == proj_cls
    assert pipe.image_encoder.config.hidden_size == tower.hidden_size
    with_ip = _render(pipe, ip_adapter_image=face_image)
    assert _diff(with_ip, base) > 1e-3
    pipe.unload_ip_adapter()
    assert _diff(_render(pipe), base) < 1e-6


# --- (c) the ViT-H / bigG encoder trap of the real repo ------------------------------------------------------


@pytest.mark.parametrize("weight", ["ip-adapter_sdxl_vit-h.safetensors", "ip-adapter-plus_sdxl_vit-h.safetensors"])
def test_vit_h_adapter_with_bare_image_encoder_folder_gets_bigg_and_fails(h94, face_image, weight):
    # diffusers joins a slash-free image_encoder_folder to the subfolder: "image_encoder" -> sdxl_models/image_encoder
    root, _ = h94
    pipe = _pipe("sdxl")
    pipe.load_ip_adapter(root, subfolder="sdxl_models", weight_name=weight, image_encoder_folder="image_encoder")
    assert pipe.image_encoder.config.hidden_size == VIT_BIGG.hidden_size
    with pytest.raises(RuntimeError, match="mat1 and mat2 shapes cannot be multiplied"):
        _render(pipe, ip_adapter_image=face_image)


# --- (a) h94/IP-Adapter-FaceID: nesting, numbering, LoRA tensors ---------------------------------------------

FACEID_CASES = [
    (f, v, fmt) for f in ("sd15", "sdxl") for v in ("faceid", "faceid-plusv2") for fmt in ("bin", "safetensors")
]
FACEID_PROJ = {  # ip_adapter/ip_adapter_faceid.py: MLPProjModel / ProjPlusModel
    "faceid": [
        "image_proj.proj.0.weight",
        "image_proj.proj.0.bias",
        "image_proj.proj.2.weight",
        "image_proj.norm.weight",
    ],
    "faceid-plusv2": [
        "image_proj.proj.0.weight",
        "image_proj.proj.2.bias",
        "image_proj.norm.bias",
        "image_proj.perceiver_resampler.proj_in.weight",
        "image_proj.perceiver_resampler.proj_out.weight",
        "image_proj.perceiver_resampler.norm_out.weight",
        "image_proj.perceiver_resampler.layers.0.0.to_q.weight",
        "image_proj.perceiver_resampler.layers.3.0.to_kv.weight",
        "image_proj.perceiver_resampler.layers.3.1.3.weight",
    ],
}
LORA_SUFFIXES = [f"to_{p}_lora.{d}.weight" for p in ("q", "k", "v", "out") for d in ("down", "up")]


@pytest.fixture(scope="module")
def faceid_dir(tmp_path_factory, unets):
    root = tmp_path_factory.mktemp("IP-Adapter-FaceID")
    for family, variant, fmt in FACEID_CASES:
        write_h94_faceid(root, unets[family], variant=variant, fmt=fmt)
    return root


@pytest.mark.parametrize(("family", "variant", "fmt"), FACEID_CASES)
def test_faceid_file_has_the_real_layout(faceid_dir, unets, family, variant, fmt):
    unet = unets[family]
    path = faceid_dir / faceid_file_name(unet, variant, fmt)
    assert path.name == f"ip-adapter-{variant}_{family}.{fmt}"
    if fmt == "bin":  # h94's torch pickle: {"image_proj": {...}, "ip_adapter": {...}}, keys without the prefix
        nested = torch.load(path, map_location="cpu", weights_only=True)
        assert list(nested) == ["image_proj", "ip_adapter"]
        assert "proj.0.weight" in nested["image_proj"] and "0.to_q_lora.down.weight" in nested["ip_adapter"]
    sd = _keys(path)
    assert set(FACEID_PROJ[variant]) <= set(sd)
    assert "image_proj.latents" not in sd and "image_proj.perceiver_resampler.latents" not in sd
    assert sd["image_proj.proj.0.weight"].shape == (1024, 512)  # 512-d ArcFace id -> 2x
    # LoRA on EVERY attention processor (self and cross), numbered 0..n-1 in unet.attn_processors order
    names = list(unet.attn_processors)
    for suffix in LORA_SUFFIXES:
        assert _numbers(sd, suffix) == set(range(len(names)))
    assert _numbers(sd, "to_k_ip.weight") == {i for i, n in enumerate(names) if n.endswith("attn2.processor")}
    cross = unet.config.cross_attention_dim
    assert sd["ip_adapter.1.to_k_lora.down.weight"].shape[1] == cross  # cross-attention k/v read the text width
    assert sd["ip_adapter.0.to_k_lora.down.weight"].shape[1] == sd["ip_adapter.0.to_q_lora.down.weight"].shape[1]
    assert all(sd[k].abs().sum() > 0 for k in sd if k.endswith("lora.up.weight"))  # trained, not a fresh zero init
    assert {v.dtype for v in sd.values()} == {torch.float16}


# --- (b) FaceID through stock diffusers: the faceid_0 LoRA ---------------------------------------------------


def _faceid_pipe(family, faceid_dir, variant="faceid", fmt="bin", *, h94_root=None, face_image=None):
    pipe = _pipe(family)
    name = faceid_file_name(pipe.unet, variant, fmt)
    if variant == "faceid-plusv2":  # the ViT-H encoder comes from elsewhere (laion/CLIP-ViT-H-14 in real use)
        from transformers import CLIPVisionModelWithProjection

        enc = CLIPVisionModelWithProjection.from_pretrained(h94_root / "models" / "image_encoder")
        pipe.register_modules(image_encoder=enc)
    pipe.load_ip_adapter(faceid_dir, subfolder="", weight_name=name, image_encoder_folder=None)
    if variant == "faceid-plusv2":
        clip = pipe.prepare_ip_adapter_image_embeds([face_image], None, "cpu", 1, False)[0]
        proj = pipe.unet.encoder_hid_proj.image_projection_layers[0]
        proj.clip_embeds, proj.shortcut = clip, True  # shortcut=True is what makes it plus-*v2*
    return pipe


@pytest.mark.parametrize(("family", "variant", "fmt"), FACEID_CASES)
def test_faceid_loads_with_its_lora_adapter_and_the_lora_changes_pixels(
    faceid_dir, h94, face_image, family, variant, fmt
):
    base = _render(_pipe(family))
    pipe = _faceid_pipe(family, faceid_dir, variant, fmt, h94_root=h94[0], face_image=face_image)
    assert pipe.image_encoder is None or variant == "faceid-plusv2"
    assert pipe.get_list_adapters() == {"unet": ["faceid_0"]}
    assert pipe.get_active_adapters() == ["faceid_0"]
    assert "faceid_0" in pipe.unet.peft_config
    # file index N -> the N-th UNet processor (the plus-v2 Resampler's own processors come after them)
    procs = [n for n in pipe.unet.attn_processors if not n.startswith("encoder_hid_proj")]
    lora_modules = [n for n, m in pipe.unet.named_modules() if "faceid_0" in getattr(m, "lora_A", {})]
    assert len(lora_modules) == 4 * len(procs)  # to_q, to_k, to_v, to_out.0 of every processor
    sd = _keys(faceid_dir / faceid_file_name(pipe.unet, variant, fmt))
    for i, name in enumerate(procs):
        to_out = pipe.unet.get_submodule(name.removesuffix(".processor") + ".to_out.0")
        assert torch.equal(to_out.lora_B["faceid_0"].weight, sd[f"ip_adapter.{i}.to_out_lora.up.weight"].float())
    on = _render(pipe, ip_adapter_image_embeds=[ID_EMBEDS])
    assert _diff(on, base) > 1e-3
    pipe.disable_lora()
    off = _render(pipe, ip_adapter_image_embeds=[ID_EMBEDS])
    assert _diff(on, off) > 1e-3
    pipe.enable_lora()
    assert _diff(_render(pipe, ip_adapter_image_embeds=[ID_EMBEDS]), on) == 0


def test_faceid_plusv2_without_clip_embeds_fails(faceid_dir):
    pipe = _pipe("sd15")
    pipe.load_ip_adapter(
        faceid_dir, subfolder="", weight_name="ip-adapter-faceid-plusv2_sd15.bin", image_encoder_folder=None
    )
    assert type(pipe.unet.encoder_hid_proj.image_projection_layers[0]).__name__ == "IPAdapterFaceIDPlusImageProjection"
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'dtype'"):
        _render(pipe, ip_adapter_image_embeds=[ID_EMBEDS])


# --- (c) how diffusers' faceid_0 adapter interacts with other LoRAs and with unloading -----------------------


@pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute")  # peft: a second adapter, as intended
def test_faceid_lora_is_switched_off_by_any_other_lora_or_set_adapters(faceid_dir, tmp_path):
    pipe = _faceid_pipe("sd15", faceid_dir)
    face_on = _render(pipe, ip_adapter_image_embeds=[ID_EMBEDS])
    style = write_kohya_lora(tmp_path / "style.safetensors", pipe, "sd15", text_encoder=False)
    pipe.load_lora_weights(style, adapter_name="style")
    assert pipe.get_active_adapters() == ["style"]  # loading a LoRA deactivates faceid_0
    only_style = _render(pipe, ip_adapter_image_embeds=[ID_EMBEDS])
    pipe.set_adapters(["style"])
    assert _diff(_render(pipe, ip_adapter_image_embeds=[ID_EMBEDS]), only_style) == 0
    pipe.set_adapters(["style", "faceid_0"], adapter_weights=[1.0, 0.0])
    assert _diff(_render(pipe, ip_adapter_image_embeds=[ID_EMBEDS]), only_style) == 0
    pipe.set_adapters(["style", "faceid_0"], adapter_weights=[1.0, 1.0])  # what a render must do to keep FaceID
    assert _diff(_render(pipe, ip_adapter_image_embeds=[ID_EMBEDS]), only_style) > 1e-3
    # disable_lora() wins over set_adapters(): only enable_lora() brings the LoRA back
    pipe.set_adapters(["faceid_0"])
    pipe.disable_lora()
    face_off = _render(pipe, ip_adapter_image_embeds=[ID_EMBEDS])
    pipe.set_adapters(["faceid_0"])
    assert _diff(_render(pipe, ip_adapter_image_embeds=[ID_EMBEDS]), face_off) == 0
    pipe.enable_lora()
    assert _diff(_render(pipe, ip_adapter_image_embeds=[ID_EMBEDS]), face_on) == 0


def test_unload_ip_adapter_leaves_the_faceid_lora_and_a_second_file_reuses_it(faceid_dir, tmp_path, unets):
    base = _render(_pipe("sd15"))
    pipe = _faceid_pipe("sd15", faceid_dir)
    pipe.unload_ip_adapter()
    assert pipe.get_active_adapters() == ["faceid_0"]
    assert _diff(_render(pipe), base) > 1e-3  # the FaceID LoRA still changes every render
    # another FaceID file: diffusers skips its LoRA because an adapter named faceid_0 exists
    other = write_h94_faceid(tmp_path, unets["sd15"], seed=5)
    pipe.load_ip_adapter(tmp_path, subfolder="", weight_name=other.name, image_encoder_folder=None)
    fresh = _pipe("sd15")
    fresh.load_ip_adapter(tmp_path, subfolder="", weight_name=other.name, image_encoder_folder=None)
    a, b = (_render(p, ip_adapter_image_embeds=[ID_EMBEDS]) for p in (pipe, fresh))
    assert _diff(a, b) > 1e-3
    pipe.delete_adapters("faceid_0")  # the way out: drop the stale adapter, then load again
    pipe.unload_ip_adapter()
    pipe.load_ip_adapter(tmp_path, subfolder="", weight_name=other.name, image_encoder_folder=None)
    assert _diff(_render(pipe, ip_adapter_image_embeds=[ID_EMBEDS]), b) < 1e-5


# --- kohya-ss/sd-scripts LoRAs ----------------------------------------------------------------------------------

# (family, exact keys a real file of that family has (for the tiny UNet's blocks), substrings no key may contain)
KOHYA_TABLE = [
    ("sd15", [
        "lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight",
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight",
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj.alpha",
        "lora_unet_up_blocks_0_attentions_1_transformer_blocks_0_attn2_to_out_0.lora_down.weight",
        "lora_unet_up_blocks_0_attentions_1_proj_out.lora_up.weight",
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight",
        "lora_te_text_model_encoder_layers_1_mlp_fc2.alpha",
    ], ["input_blocks", "lora_te1_", "to_out_lora"]),
    ("sdxl", [
        "lora_unet_input_blocks_3_1_proj_in.lora_down.weight",  # down_blocks.1.attentions.0 (real SDXL: input_blocks_4_1)
        "lora_unet_input_blocks_3_1_transformer_blocks_1_attn2_to_k.lora_up.weight",
        "lora_unet_middle_block_1_transformer_blocks_0_ff_net_2.alpha",
        "lora_unet_output_blocks_0_1_transformer_blocks_0_attn1_to_out_0.lora_down.weight",
        "lora_unet_output_blocks_1_1_proj_out.lora_up.weight",  # up_blocks.0.attentions.1
        "lora_te1_text_model_encoder_layers_0_self_attn_k_proj.lora_down.weight",
        "lora_te2_text_model_encoder_layers_1_mlp_fc1.alpha",
    ], ["down_blocks", "up_blocks", "mid_block", "lora_te_text"]),
]  # fmt: skip
KOHYA_KEY = re.compile(r"lora_(unet|te|te1|te2)_[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)")


@pytest.fixture(scope="module")
def kohya(tmp_path_factory):
    root = tmp_path_factory.mktemp("kohya")
    pipes = {f: _pipe(f) for f in ("sd15", "sdxl")}
    files = {f: write_kohya_lora(root / f"{f}_style.safetensors", pipes[f], f) for f in pipes}
    files["sd15-locon"] = write_kohya_lora(root / "sd15_locon.safetensors", pipes["sd15"], "sd15", conv_rank=2)
    return files


@pytest.mark.parametrize(("family", "required", "never"), KOHYA_TABLE, ids=[r[0] for r in KOHYA_TABLE])
def test_kohya_lora_has_the_real_keys_and_metadata(kohya, family, required, never):
    path = kohya[family]
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    sd = _keys(path)
    assert set(required) <= set(sd), sorted(set(required) - set(sd))
    assert all(KOHYA_KEY.fullmatch(k) for k in sd)
    assert not [k for k in sd for bad in never if bad in k]
    modules = {k.split(".")[0] for k in sd}
    assert len(sd) == 3 * len(modules)  # lora_down, lora_up, alpha for each module
    for m in modules:
        rank = sd[f"{m}.lora_down.weight"].shape[0]
        assert sd[f"{m}.alpha"].shape == () and float(sd[f"{m}.alpha"]) == 2.0 != rank == 4
        assert sd[f"{m}.lora_up.weight"].abs().sum() > 0
    if family == "sd15":  # proj_in/proj_out are 1x1 convs in SD1.5 (use_linear_projection False): 4-D LoRA
        assert sd["lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight"].ndim == 4
    else:
        assert sd["lora_unet_input_blocks_3_1_proj_in.lora_down.weight"].ndim == 2
    assert {v.dtype for v in sd.values()} == {torch.float16}
    assert meta["ss_network_module"] == "networks.lora"
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("4", "2.0")
    assert meta["ss_base_model_version"] == {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0"}[family]
    assert "ss_network_args" not in meta  # kohya writes it only for --network_args (the LoCon file has it)


def _lora_targets(unet) -> set[str]:
    """The diffusers paths a kohya LoRA must land on, found independently of the builder."""
    out = set()
    for name, mod in unet.named_modules():
        if type(mod).__name__ == "Transformer2DModel":
            out |= {f"{name}.{c}" for c, m in mod.named_modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)}
    return out


@pytest.mark.parametrize("case", ["sd15", "sdxl", "sd15-locon"])
def test_kohya_lora_loads_in_diffusers_onto_the_right_modules_and_changes_pixels(kohya, case):
    family = case.split("-")[0]
    pipe = _pipe(family)
    base = _render(pipe)
    targets = _lora_targets(pipe.unet)
    pipe.load_lora_weights(kohya[case], adapter_name="style")
    got = {n for n, m in pipe.unet.named_modules() if "style" in getattr(m, "lora_A", {})}
    if case == "sd15-locon":  # kohya conv_dim: 3x3 convs at conv_dim, time_emb_proj / 1x1 shortcuts at network_dim
        sd = _keys(kohya[case])
        assert sd["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"].shape == (2, 32, 3, 3)
        assert sd["lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight"].shape == (32, 2, 1, 1)
        assert sd["lora_unet_up_blocks_0_resnets_0_time_emb_proj.lora_down.weight"].shape[0] == 4
        assert "lora_unet_up_blocks_1_resnets_0_conv_shortcut.alpha" in sd
        with safe_open(str(kohya[case]), "pt") as f:
            assert json.loads(f.metadata()["ss_network_args"]) == {"conv_dim": "2", "conv_alpha": "1.0"}
        assert targets < got
        assert {
            "down_blocks.0.resnets.0.conv1",
            "down_blocks.0.downsamplers.0.conv",
            "up_blocks.0.upsamplers.0.conv",
        } <= got
    else:
        assert got == targets  # SDXL: sgm names mapped back to exactly these modules
    assert {pipe.unet.get_submodule(n).scaling["style"] for n in got if n.endswith("to_q")} == {0.5}  # alpha / rank
    encoders = ["text_encoder"] + (["text_encoder_2"] if family == "sdxl" else [])
    assert pipe.get_list_adapters() == {"unet": ["style"], **{e: ["style"] for e in encoders}}
    for e in encoders:
        te = getattr(pipe, e)
        hit = [n for n, m in te.named_modules() if "style" in getattr(m, "lora_A", {})]
        assert len(hit) == 6 * te.config.num_hidden_layers  # q, k, v, out_proj, fc1, fc2 in every layer
    assert _diff(_render(pipe), base) > 1e-3


# --- union ControlNets -------------------------------------------------------------------------------------------


def test_sdxl_union_controlnet_real_config_and_render(tmp_path, face_image):
    from diffusers import ControlNetUnionModel, StableDiffusionXLControlNetUnionPipeline

    pipe = _pipe("sdxl")
    folder = write_sdxl_union_controlnet(tmp_path / "controlnet-union-sdxl-1.0", pipe.unet)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["_class_name"] == "ControlNetModel"  # as in xinsir's file
    assert cfg["num_control_type"] == 6 and cfg["addition_embed_type"] == "text_time"
    assert (cfg["num_trans_channel"], cfg["num_proj_channel"]) == (32, 32) == (cfg["block_out_channels"][0],) * 2
    with safe_open(str(folder / "diffusion_pytorch_model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_slice("task_embedding").get_shape() == [6, 32]
    assert {
        "transformer_layes.0.attn.in_proj_weight",
        "spatial_ch_projs.weight",
        "control_add_embedding.linear_1.weight",
    } <= keys
    cn = ControlNetUnionModel.from_pretrained(folder)
    union = StableDiffusionXLControlNetUnionPipeline(**pipe.components, controlnet=cn)
    canny = _render(union, control_image=[face_image], control_mode=[3])
    assert _diff(canny, _render(pipe)) > 1e-3
    assert _diff(canny, _render(union, control_image=[face_image], control_mode=[1])) > 1e-4  # the mode matters


def test_flux_union_controlnet_real_config_and_render(tmp_path, face_image):
    from diffusers import FluxControlNetModel, FluxControlNetPipeline

    pipe = get_family("flux").tiny_pipeline(0)
    folder = write_flux_union_controlnet(tmp_path / "FLUX.1-dev-Controlnet-Union", pipe.transformer)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["_class_name"] == "FluxControlNetModel" and cfg["num_mode"] == 10
    assert (cfg["num_layers"], cfg["num_single_layers"]) == (1, 1)
    cn = FluxControlNetModel.from_pretrained(folder)
    assert cn.controlnet_mode_embedder.weight.shape == (10, 32)
    union = FluxControlNetPipeline(**pipe.components, controlnet=cn)

    def render(p, **kw):
        return _render(p, max_sequence_length=32, **kw)

    canny = render(union, control_image=face_image, control_mode=0)
    assert _diff(canny, render(pipe)) > 1e-3
    assert _diff(canny, render(union, control_image=face_image, control_mode=2)) > 1e-5
    with pytest.raises(ValueError, match="`controlnet_mode` cannot be `None`"):
        render(union, control_image=face_image)
