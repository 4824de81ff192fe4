"""Model families on tiny real-architecture models: build, load (folder / single file), generate, adapters,
detection and the weights trust boundary. One case table per behaviour, family x variant."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from charkit.errors import CharkitError
from charkit.families import FAMILIES, detect_family, get_family, load_tiny
from charkit.families.sources import resolve_source

W, H, STEPS = 48, 32, 2  # non-square: catches swapped width/height
PROMPT = "a photo of a woman, red hair"
ADAPTER_CASES = [
    (f, mode)
    for f in FAMILIES
    for mode in ("image", "face")
    if get_family(f).SPEC.can("ip_adapter" if mode == "image" else "faceid")
]
FACEID_FAMILIES = [f for f in FAMILIES if get_family(f).SPEC.can("faceid")]
CONTROLNET_FAMILIES = [f for f in FAMILIES if get_family(f).SPEC.can("controlnet")]
SINGLE_FILE_FAMILIES = ["sd15", "sdxl"]


def _gen(family, pipe, seed=1, **kw):
    m = get_family(family)
    spec = m.SPEC
    return m.generate(
        pipe,
        prompt=PROMPT,
        width=W,
        height=H,
        steps=STEPS,
        guidance=spec.guidance,
        generator=torch.Generator().manual_seed(seed),
        **kw,
    )[0]


def _px(img) -> np.ndarray:
    return np.asarray(img).astype(np.int16)


def _diff(a, b) -> int:
    return int(np.abs(_px(a) - _px(b)).max())


@pytest.fixture(scope="module")
def pipes(tiny_models):
    """``get(family) -> plain pipeline`` loaded through load_pipeline(folder), cached per module."""
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = get_family(family).load_pipeline(tiny_models(family).root)
        return cache[family]

    return get


@pytest.fixture(scope="module")
def control_image():
    rng = np.random.RandomState(0)
    return Image.fromarray((rng.rand(H, W, 3) * 255).astype("uint8"))


# --- build / load / generate --------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_builds_loads_and_generates_deterministically(family, tiny_models, pipes):
    tiny = tiny_models(family)
    assert (tiny.root / "model_index.json").is_file()
    assert detect_family(tiny.root) == family
    pipe = pipes(family)
    a, b, c = _gen(family, pipe, seed=1), _gen(family, pipe, seed=1), _gen(family, pipe, seed=2)
    assert a.size == (W, H) and a.mode == "RGB"
    assert a.tobytes() == b.tobytes()  # same seed -> identical bytes
    assert a.tobytes() != c.tobytes()  # the seed matters
    assert _px(a).std() > 1  # not a blank image


@pytest.mark.parametrize("family", FAMILIES)
def test_num_images_with_generator_list(family, pipes):
    m = get_family(family)
    imgs = m.generate(
        pipes(family),
        prompt=PROMPT,
        width=W,
        height=H,
        steps=STEPS,
        guidance=m.SPEC.guidance,
        num_images=2,
        generator=[torch.Generator().manual_seed(s) for s in (1, 2)],
    )
    assert len(imgs) == 2 and all(i.size == (W, H) for i in imgs)
    with pytest.raises(CharkitError, match="generators"):
        m.generate(
            pipes(family),
            prompt=PROMPT,
            width=W,
            height=H,
            steps=STEPS,
            guidance=1.0,
            num_images=2,
            generator=[torch.Generator().manual_seed(1)],
        )


@pytest.mark.parametrize("family", FAMILIES)
def test_bad_size_is_a_clear_error(family, pipes):
    with pytest.raises(CharkitError, match="multiples of"):
        get_family(family).generate(
            pipes(family),
            prompt=PROMPT,
            width=W + 4,
            height=H,
            steps=STEPS,
            guidance=1.0,
            generator=torch.Generator().manual_seed(0),
        )


# --- ControlNet -------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", CONTROLNET_FAMILIES)
def test_controlnet_changes_pixels_and_follows_the_control_image(family, tiny_models, pipes, control_image):
    m = get_family(family)
    plain = pipes(family)
    cn = m.with_controlnet(plain, tiny_models(family).controlnet)
    base = _gen(family, plain)
    with_cn = _gen(family, cn, control_image=control_image)
    assert with_cn.size == (W, H)
    assert _diff(base, with_cn) > 0
    flipped = _gen(family, cn, control_image=control_image.transpose(Image.FLIP_LEFT_RIGHT))
    assert _diff(with_cn, flipped) > 0  # the control image itself steers the result
    assert _diff(with_cn, _gen(family, cn, control_image=control_image)) == 0
    with pytest.raises(CharkitError, match="pass control_image"):
        _gen(family, cn)
    with pytest.raises(CharkitError, match="no ControlNet"):
        _gen(family, plain, control_image=control_image)
    # load_pipeline(controlnet=...) builds the same variant from the folder
    cn2 = m.load_pipeline(tiny_models(family).root, controlnet=tiny_models(family).controlnet)
    assert _diff(with_cn, _gen(family, cn2, control_image=control_image)) == 0


# --- IP-Adapter (plain and FaceID) ------------------------------------------------------------------


@pytest.mark.parametrize("family,mode", ADAPTER_CASES)
def test_ip_adapter_changes_pixels_and_scale_zero_restores(family, mode, tiny_models, control_image):
    m = get_family(family)
    tiny = tiny_models(family)
    pipe = m.load_pipeline(tiny.root)  # own pipeline: adapters mutate the UNet
    base = _gen(family, pipe)
    if mode == "image":
        m.load_ip_adapter(pipe, tiny.ip_adapter, mode="image")
        cond = {"ip_adapter_image": control_image}
    else:
        m.load_ip_adapter(pipe, tiny.faceid, mode="face")
        emb = torch.nn.functional.normalize(torch.randn(512, generator=torch.Generator().manual_seed(3)), dim=0)
        cond = {"ip_adapter_embeds": m.faceid_embeds(emb, guidance=m.SPEC.guidance)}
    with_ip = _gen(family, pipe, **cond)
    assert _diff(base, with_ip) > 0
    pipe.set_ip_adapter_scale(0.0)
    if mode == "face":  # h94's FaceID files carry a LoRA (adapter faceid_0): scale 0 leaves it acting
        assert pipe.get_list_adapters() == {"unet": ["faceid_0"]}
        assert _diff(base, _gen(family, pipe, **cond)) > 1
        pipe.disable_lora()
    assert _diff(base, _gen(family, pipe, **cond)) <= 1  # scale 0 (+ its LoRA off) = no adapter (float noise only)
    m.unload_ip_adapter(pipe)
    assert _diff(base, _gen(family, pipe)) == 0  # unloading drops the FaceID LoRA too
    assert not pipe.get_list_adapters()


@pytest.mark.parametrize("family", FACEID_FAMILIES)
def test_ip_adapter_misuse_is_a_clear_error(family, tiny_models):
    m = get_family(family)
    tiny = tiny_models(family)
    pipe = m.load_pipeline(tiny.root)
    with pytest.raises(CharkitError, match="FaceID IP-Adapter, but mode 'image'"):
        m.load_ip_adapter(pipe, tiny.faceid, mode="image")
    with pytest.raises(CharkitError, match="choose 'image' or 'face'"):
        m.load_ip_adapter(pipe, tiny.ip_adapter, mode="plus")
    with pytest.raises(CharkitError, match="512 values"):
        m.faceid_embeds(np.zeros(128), guidance=5.0)  # a dlib descriptor is the wrong space
    with pytest.raises(CharkitError, match="no IP-Adapter is loaded"):
        _gen(family, pipe, ip_adapter_embeds=m.faceid_embeds(np.ones(512), guidance=5.0))
    m.load_ip_adapter(pipe, tiny.faceid, mode="face")
    with pytest.raises(CharkitError, match="an IP-Adapter is loaded"):
        _gen(family, pipe)
    with pytest.raises(CharkitError, match="no image encoder"):
        _gen(family, pipe, ip_adapter_image=Image.new("RGB", (W, H)))


@pytest.mark.parametrize(
    "family,feature",
    [
        (f, feat)
        for f in FAMILIES
        for feat in sorted({"ip_adapter", "faceid", "controlnet", "text_encoder_lora"})
        if not get_family(f).SPEC.can(feat)
    ],
)
def test_unsupported_feature_is_a_clear_error(family, feature, tiny_models, pipes):
    m = get_family(family)
    with pytest.raises(CharkitError, match=rf"{family}.*does not support {feature}"):
        m.SPEC.require(feature)
    if feature in ("ip_adapter", "faceid"):
        with pytest.raises(CharkitError, match=rf"{family}.*does not support {feature}"):
            m.load_ip_adapter(pipes(family), "unused.safetensors", mode="image" if feature == "ip_adapter" else "face")


def test_support_matrix_matches_the_contract():
    assert (
        get_family("sd15").SPEC.supports
        == get_family("sdxl").SPEC.supports
        == {"lora", "text_encoder_lora", "controlnet", "ip_adapter", "faceid", "clip_skip", "hires"}
    )
    assert get_family("flux").SPEC.supports == {"lora", "controlnet", "ip_adapter", "true_cfg", "hires"}
    assert get_family("sd3").SPEC.supports == {"lora", "controlnet", "clip_skip", "without_t5", "hires"}
    for f in FAMILIES:
        spec = get_family(f).SPEC
        assert spec.name == f and spec.prediction in {"epsilon", "v_prediction", "flow"}
        assert spec.width % spec.size_multiple == 0 and spec.steps > 0


# --- single file ------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", SINGLE_FILE_FAMILIES)
def test_single_file_matches_the_folder_model(family, tiny_models, pipes):
    m = get_family(family)
    tiny = tiny_models(family)
    assert detect_family(tiny.single_file) == family
    sf = m.load_pipeline(tiny.single_file, config=tiny.root)
    assert _diff(_gen(family, pipes(family)), _gen(family, sf)) <= 2
    with pytest.raises(CharkitError, match="needs config="):  # offline (conftest sets HF_HUB_OFFLINE=1)
        m.load_pipeline(tiny.single_file)


def test_single_file_of_another_family_is_refused(tiny_models):
    with pytest.raises(CharkitError, match="sdxl checkpoint, not sd15; use model family 'sdxl'"):
        get_family("sd15").load_pipeline(tiny_models("sdxl").single_file, config=tiny_models("sd15").root)
    with pytest.raises(CharkitError, match="this is a sd15 model, not sdxl"):
        get_family("sdxl").load_pipeline(tiny_models("sd15").root)


# --- the weights trust boundary -----------------------------------------------------------------------


class _Tripwire:
    """Unpickling this creates a marker file: proof that something unpickled it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def pickle_bomb(tmp_path):
    marker = tmp_path / "UNPICKLED"

    def make(name):
        p = tmp_path / name
        p.write_bytes(pickle.dumps({"state_dict": _Tripwire(marker)}))
        return p

    yield make
    assert not marker.exists(), "a pickle file was unpickled"


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin", ".pth"])
def test_pickle_weights_are_refused_unopened(suffix, pickle_bomb, tiny_models):
    bomb = pickle_bomb("model" + suffix)
    m = get_family("sd15")
    with pytest.raises(CharkitError, match="pickle format.*--allow-pickle-weights"):
        m.load_pipeline(bomb, config=tiny_models("sd15").root)
    with pytest.raises(CharkitError, match="pickle format"):
        detect_family(bomb)
    with pytest.raises(CharkitError, match="pickle format"):
        m.load_ip_adapter(m.tiny_pipeline(0), bomb, mode="face")
    # allowed, detection still never unpickles: it asks for the family instead
    with pytest.raises(CharkitError, match="cannot be detected without unpickling"):
        detect_family(bomb, allow_pickle_weights=True)


def test_folder_with_only_pickle_weights_is_refused(tiny_models, tmp_path):
    src = tiny_models("sd15").root
    folder = tmp_path / "pickled"
    shutil.copytree(src, folder, ignore=shutil.ignore_patterns("controlnet", "ip_adapter", "single_file"))
    unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(unet), unet.with_suffix(".bin"))
    unet.unlink()
    with pytest.raises(CharkitError, match="safetensors"):
        get_family("sd15").load_pipeline(folder)


@pytest.mark.parametrize(
    "source,match",
    [
        ("./nowhere/model.safetensors", "no such file or folder"),
        ("not a hub id", "no such file or folder"),
        ("charkit-test/not-cached-model", "could not load"),
    ],
)
def test_bad_sources_are_clear_errors(source, match):
    with pytest.raises(CharkitError, match=match):
        get_family("sd15").load_pipeline(source)


def test_source_kinds(tiny_models, tmp_path):
    assert resolve_source("runwayml/stable-diffusion-v1-5").kind == "hub"
    assert resolve_source(tiny_models("sd15").root).kind == "folder"
    assert resolve_source(tiny_models("sd15").single_file).kind == "file"
    (tmp_path / "empty").mkdir()
    with pytest.raises(CharkitError, match="not a diffusers model"):
        resolve_source(tmp_path / "empty")
    (tmp_path / "m.gguf").write_bytes(b"x")
    with pytest.raises(CharkitError, match="unsupported weights file type"):
        resolve_source(tmp_path / "m.gguf")


# --- detection -------------------------------------------------------------------------------------

_LAYOUT_KEYS = {
    "flux": ["double_blocks.0.img_attn.norm.key_norm.scale", "single_blocks.0.linear1.weight"],
    "flux-comfy": ["model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale"],
    "sd3": ["model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias"],
    "sdxl": ["conditioner.embedders.1.model.positional_embedding", "model.diffusion_model.input_blocks.0.0.weight"],
    "sd15": ["model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.transformer.text_model.x"],
}


@pytest.mark.parametrize("layout", sorted(_LAYOUT_KEYS))
def test_detect_family_from_single_file_keys(layout, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / f"{layout}.safetensors"
    save_file({k: torch.zeros(1) for k in _LAYOUT_KEYS[layout]}, str(path))
    assert detect_family(path) == layout.split("-")[0]
    assert detect_family(_LAYOUT_KEYS[layout]) == layout.split("-")[0]


@pytest.mark.parametrize(
    "keys,match",
    [
        (["conditioner.embedders.0.model.text_projection"], "refiner"),
        (["down_blocks.0.resnets.0.conv1.weight"], "bare diffusers UNet"),
        (["encoder.layers.0.weight"], "unrecognised checkpoint layout"),
    ],
)
def test_detect_family_rejects_unknown_layouts(keys, match):
    with pytest.raises(CharkitError, match=match):
        detect_family(keys)


def test_detect_family_rejects_a_corrupt_safetensors(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00" * 16)
    with pytest.raises(CharkitError, match="not a readable .safetensors"):
        detect_family(bad)


# --- scheduler --------------------------------------------------------------------------------------


def test_set_scheduler(tiny_models):
    from charkit.families import set_scheduler

    pipe = get_family("sd15").load_pipeline(tiny_models("sd15").root, scheduler="EulerDiscreteScheduler")
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert pipe.scheduler.config.steps_offset == 1  # the model's schedule config is kept
    with pytest.raises(CharkitError, match="is a flow-matching scheduler"):
        set_scheduler(pipe, "FlowMatchEulerDiscreteScheduler")
    with pytest.raises(CharkitError, match="unknown sampler 'MagicScheduler'"):
        set_scheduler(pipe, "MagicScheduler")
    set_scheduler(pipe, "DPM++ 2M Karras")  # A1111's names work too
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler" and pipe.scheduler.config.use_karras_sigmas


# --- tiny-model CLI --------------------------------------------------------------------------------


def test_tiny_model_cli_writes_a_loadable_deterministic_model(tmp_path, tiny_models):
    from charkit.cli import cli
    from charkit.paths import sha256_file

    out = tmp_path / "tiny"
    res = CliRunner().invoke(cli, ["tiny-model", "sd15", str(out), "--no-controlnet", "--no-ip-adapter", "--seed", "0"])
    assert res.exit_code == 0, res.output
    assert f"wrote tiny sd15 model to {out}" in res.output and "single_file" in res.output
    tiny = load_tiny(out)
    assert tiny.controlnet is None and tiny.ip_adapter is None and tiny.single_file.is_file()
    assert json.loads((out / "charkit-tiny.json").read_text())["family"] == "sd15"
    unet = "unet/diffusion_pytorch_model.safetensors"
    assert sha256_file(out / unet) == sha256_file(tiny_models("sd15").root / unet)  # same seed -> same weights
    again = CliRunner().invoke(cli, ["tiny-model", "sd15", str(out)])
    assert again.exit_code == 2 and "Error:" in again.output and "not empty" in again.output
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]  # nothing partial left behind
    bad = CliRunner().invoke(cli, ["tiny-model", "sd2", str(tmp_path / "x")])
    assert bad.exit_code == 2


# --- the diffusers -> LDM exporter on real block layouts ------------------------------------------------


def test_ldm_export_round_trips_through_diffusers_on_the_real_sd15_block_layout():
    """SD1.5's real layout (4 blocks, 2 layers each, attention in the first 3) at toy width: our export read back
    by diffusers' own single-file converters gives every tensor back under its original name."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    from charkit.families.ldm import unet_to_ldm, vae_to_ldm

    unet = UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=2,
        cross_attention_dim=16,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=8,
    )
    sd = unet.state_dict()
    back = convert_ldm_unet_checkpoint(
        {"model.diffusion_model." + k: v for k, v in unet_to_ldm(sd, unet.config).items()}, unet.config
    )
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)

    vae = AutoencoderKL(
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=2,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )
    sd = vae.state_dict()
    back = convert_ldm_vae_checkpoint(
        {"first_stage_model." + k: v for k, v in vae_to_ldm(sd, vae.config).items()}, vae.config
    )
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


def test_family_names_are_listed_only_in_the_registry():
    """Adding a family is one folder plus one registry entry: no other module keeps a list or table of families."""
    import ast
    from pathlib import Path

    import charkit
    from charkit.families import FAMILIES

    root = Path(charkit.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path == root / "families" / "registry.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                items = node.elts
            elif isinstance(node, ast.Dict):
                items = [k for k in node.keys if k is not None]
            else:
                continue
            names = {e.value for e in items if isinstance(e, ast.Constant) and e.value in FAMILIES}
            if len(names) >= 2:
                offenders.append(f"{path.relative_to(root)}:{node.lineno} {sorted(names)}")
    assert offenders == [], "family lists outside charkit/families/registry.py: " + "; ".join(offenders)


def test_misleading_diffusers_notices_are_quieted_during_charkit_loads_only():
    """diffusers 0.42 warns "kept in float32: []" on every from_pipe and IP-Adapter load, naming no module; charkit
    drops exactly that (and the false "image_encoder is not loaded") inside its loads; a real notice still shows."""
    import logging

    from charkit.families.sources import quiet_notices

    logger = logging.getLogger("diffusers.models.modeling_utils")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    try:
        empty = "There are modules in UNet2DConditionModel that should be kept in float32: []. Casting ..."
        named = "There are modules in T5EncoderModel that should be kept in float32: ['wo']. Casting ..."
        with quiet_notices():
            logger.warning(empty)
            logger.warning(named)
        logger.warning(empty)
    finally:
        logger.removeHandler(handler)
    assert seen == [named, empty]
