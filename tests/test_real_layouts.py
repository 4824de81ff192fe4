"""`charkit render` on the files users download: every defect of issue 10, each on real-layout fixtures.

Fixtures come from charkit.testing.layouts / singlefile (h94 IP-Adapter and FaceID with its LoRA, kohya / OneTrainer
LoRAs, BFL / Stability single files, union ControlNets), tiny but with the real key names and folder layouts.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from fixtures_render import model_entry
from PIL import Image

from charkit.errors import CharkitError
from charkit.families import get_family
from charkit.render.conditioning import Conditioner
from charkit.render.lifecycle import render_storyboard
from charkit.render.outputs import parse_a1111_parameters, read_png_metadata

SIZE = "32x32"


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def records(result) -> dict:
    return {i["scene"]: i for i in json.loads(result.manifest_path.read_text())["images"]}


def board(env, model: dict, scenes: list[dict], *, name: str, pack=None, characters=None, **defaults) -> str:
    data = {
        "project": name,
        "output": f"out-{name}",
        "defaults": {"model": model, "size": SIZE, "steps": 2, "guidance": 5.0, **defaults},
        "characters": characters or {"alice": "characters/alice"},
        "scenes": scenes,
    }
    if pack is not None:
        data["identity"] = {"face_models": str(pack)}
    return env.storyboard(data, f"{name}.yaml")


@pytest.fixture(scope="module")
def h94(tmp_path_factory):
    """h94/IP-Adapter (models/, sdxl_models/, both encoders) and h94/IP-Adapter-FaceID files (with their LoRA)."""
    from charkit.testing.layouts import write_h94_faceid, write_h94_ip_adapter

    unets = {f: get_family(f).tiny_pipeline(0).unet for f in ("sd15", "sdxl")}
    root = tmp_path_factory.mktemp("h94")
    write_h94_ip_adapter(root / "IP-Adapter", sd15_unet=unets["sd15"], sdxl_unet=unets["sdxl"])
    faceid = root / "IP-Adapter-FaceID"
    for family in unets:
        for variant in ("faceid", "faceid-plusv2"):
            write_h94_faceid(faceid, unets[family], variant=variant, fmt="safetensors")
    write_h94_faceid(faceid / "other", unets["sd15"], fmt="safetensors", seed=5)  # a second FaceID file
    return root


# --- 1. FaceID's own LoRA: on in FaceID scenes (with character LoRAs), off elsewhere, whatever the order --------


def _faceid_env(render_env, tiny_loras, h94, family="sd15"):
    render_env.character("alice", lora={family: tiny_loras(family)})
    render_env.character("mara", markers=2)
    return {
        **model_entry(family, render_env.tiny, adapters=False),
        "faceid": str(h94 / "IP-Adapter-FaceID" / f"ip-adapter-faceid_{family}.safetensors"),
    }


FACE = {"mode": "face", "scale": 1.0, "character": "mara"}
ORDER_SCENES = {
    "plain": {"id": "plain", "prompt": "photo of {mara} man", "seed": 3},
    "face": {"id": "face", "prompt": "photo of {mara} man", "seed": 3, "ip_adapter": FACE},
    "face_lora": {
        "id": "face_lora",
        "prompt": "{alice} and {mara}",
        "seed": 3,
        "lora": {"alice": 1.0},
        "ip_adapter": FACE,
    },
    "lora": {"id": "lora", "prompt": "{alice} and {mara}", "seed": 3, "lora": {"alice": 1.0}},
}


@pytest.mark.parametrize("order", [("plain", "face"), ("face_lora", "plain", "lora")], ids=["no-lora", "with-lora"])
def test_scene_outputs_do_not_depend_on_scene_order(order, tiny_models, tiny_loras, render_env, h94, fake_face_pack):
    """The same storyboard in two orders gives the same bytes per scene (FaceID's LoRA never leaks)."""
    render_env.tiny = tiny_models("sd15")
    model = _faceid_env(render_env, tiny_loras, h94)
    chars = {"alice": "characters/alice", "mara": "characters/mara"}
    scenes = [ORDER_SCENES[s] for s in order]
    a = render_storyboard(board(render_env, model, scenes, name="fwd", pack=fake_face_pack, characters=chars))
    b = render_storyboard(board(render_env, model, scenes[::-1], name="rev", pack=fake_face_pack, characters=chars))
    for s in order:
        assert (a.out_dir / f"{s}.png").read_bytes() == (b.out_dir / f"{s}.png").read_bytes(), s


def test_faceid_lora_is_active_next_to_a_character_lora(tiny_models, tiny_loras, render_env, h94, fake_face_pack):
    """A FaceID scene with a character LoRA renders as stock diffusers does with both adapters on."""
    from charkit.render.plan import RenderOptions, check_inputs
    from charkit.render.storyboard import load_storyboard

    tiny = render_env.tiny = tiny_models("sd15")
    model = _faceid_env(render_env, tiny_loras, h94)
    chars = {"alice": "characters/alice", "mara": "characters/mara"}
    path = board(render_env, model, [ORDER_SCENES["face_lora"]], name="fl", pack=fake_face_pack, characters=chars)
    result = render_storyboard(path, progress=False)
    m = get_family("sd15")
    plan = check_inputs(load_storyboard(path), options=RenderOptions())
    emb = Conditioner().faceid_embedding(plan.characters["mara"], plan.faceid_backend)
    pipe = m.load_pipeline(tiny.root)
    pipe.load_lora_weights(
        str(render_env.root / "characters/alice/loras/sd15"), weight_name="best.safetensors", adapter_name="alice"
    )
    pipe.load_ip_adapter(
        h94 / "IP-Adapter-FaceID", subfolder="", weight_name=model["faceid"].split("/")[-1], image_encoder_folder=None
    )
    pipe.set_adapters(["alice", "faceid_0"], [1.0, 1.0])
    pipe.set_ip_adapter_scale(1.0)
    job = plan.jobs[0]
    with torch.inference_mode():
        ref = pipe(
            job.prompt,
            width=32,
            height=32,
            num_inference_steps=2,
            guidance_scale=5.0,
            generator=[torch.Generator().manual_seed(3)],
            ip_adapter_image_embeds=m.faceid_embeds(emb, guidance=5.0),
        ).images[0]
    assert np.abs(pixels(result.out_dir / "face_lora.png") - np.asarray(ref, dtype=np.int16)).max() <= 1
    assert records(result)["face_lora"]["settings"]["ip_adapter"]["variant"] == "faceid"


# --- 2. SDXL ViT-H adapters get models/image_encoder; a hub id works as image encoder ----------------------------


def test_sdxl_vit_h_adapter_gets_the_vit_h_encoder(tiny_models, render_env, h94):
    """h94's sdxl_models/ip-adapter_sdxl_vit-h needs models/image_encoder (ViT-H), not sdxl_models/image_encoder."""
    from charkit.testing.layouts import VIT_H

    render_env.character("alice")
    model = {**model_entry("sdxl", tiny_models("sdxl"), adapters=False)}
    model["ip_adapter"] = str(h94 / "IP-Adapter" / "sdxl_models" / "ip-adapter_sdxl_vit-h.safetensors")
    ip = {"mode": "image", "scale": 1.0}
    scenes = [
        {"id": "plain", "prompt": "photo of {alice}", "seed": 1},
        {"id": "ip", "prompt": "photo of {alice}", "seed": 1, "ip_adapter": ip},
    ]
    result = render_storyboard(board(render_env, model, scenes, name="vith"), progress=False)
    rec = records(result)["ip"]
    assert rec["settings"]["ip_adapter"]["image_encoder"].endswith("models/image_encoder")
    assert not rec["settings"]["ip_adapter"]["image_encoder"].endswith("sdxl_models/image_encoder")
    assert np.abs(pixels(result.out_dir / "ip.png") - pixels(result.out_dir / "plain.png")).max() > 0
    # a given encoder that does not fit is a one-line error naming the fix
    model["image_encoder"] = str(h94 / "IP-Adapter" / "sdxl_models" / "image_encoder")
    with pytest.raises(CharkitError, match=rf"needs a CLIP image encoder with projection_dim {VIT_H.projection_dim}"):
        render_storyboard(board(render_env, model, scenes[1:], name="vith-bad"), progress=False)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A local Hugging Face cache (the real snapshot layout) that hub ids resolve to, offline."""
    import huggingface_hub.constants as c

    root = tmp_path / "hub"
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_CACHE", str(root))

    def add(repo_id: str, folder) -> str:
        import shutil

        repo = root / f"models--{repo_id.replace('/', '--')}"
        commit = "0" * 40
        shutil.copytree(folder, repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(commit)
        return repo_id

    return add


def test_image_encoder_as_hub_id(tiny_models, render_env, h94, hub_cache):
    render_env.character("alice")
    repo = hub_cache("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", h94 / "IP-Adapter" / "models" / "image_encoder")
    model = {**model_entry("sd15", tiny_models("sd15"), adapters=False), "image_encoder": repo}
    model["ip_adapter"] = str(h94 / "IP-Adapter" / "models" / "ip-adapter_sd15.safetensors")
    scenes = [{"id": "ip", "prompt": "photo of {alice}", "seed": 1, "ip_adapter": {"mode": "image", "scale": 1.0}}]
    result = render_storyboard(board(render_env, model, scenes, name="hubenc"), progress=False)
    assert records(result)["ip"]["settings"]["ip_adapter"]["image_encoder"] == repo


# --- 3. Flux / SD3 single files: transformer only (BFL / Civitai) and all-in-one --------------------------------


def _single_files(family: str, tiny, tmp_path) -> dict:
    from charkit.testing.singlefile import write_bfl_flux, write_sd3_single_file, write_sd3_transformer

    pipe = get_family(family).load_pipeline(tiny.root)
    folder = tiny.root
    if family == "sd3":  # SD3 files store CLIP-L unprojected (readers set an identity projection): make it so
        with torch.no_grad():
            pipe.text_encoder.text_projection.weight.copy_(torch.eye(pipe.text_encoder.config.hidden_size))
        folder = tmp_path / "sd3-identity-projection"
        pipe.save_pretrained(folder)
    if family == "flux":
        return folder, {
            "transformer": write_bfl_flux(tmp_path / "flux1-tiny.safetensors", pipe),
            "full": write_bfl_flux(tmp_path / "flux1-tiny-aio.safetensors", pipe, full=True),
        }
    return folder, {
        "transformer": write_sd3_transformer(tmp_path / "sd3-mmdit.safetensors", pipe),
        "no_te": write_sd3_single_file(tmp_path / "sd3.5_tiny.safetensors", pipe, with_text_encoders=False),
        "full": write_sd3_single_file(tmp_path / "sd3.5_tiny_incl_clips_t5.safetensors", pipe),
    }


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_flux_sd3_single_files_render_like_the_folder(family, tiny_models, render_env, tmp_path):
    render_env.character("alice")
    tiny = tiny_models(family)
    folder, files = _single_files(family, tiny, tmp_path)
    models = [{"source": str(folder), "label": "folder"}]
    models += [{"source": str(f), "config": str(folder), "label": k} for k, f in files.items()]
    data = {
        "project": "sf",
        "output": "out-sf",
        "defaults": {"size": SIZE, "steps": 2},
        "characters": {"alice": "characters/alice"},
        "models": models,
        "scenes": [{"id": "s", "prompt": "photo of {alice}", "seed": 2}],
    }
    result = render_storyboard(render_env.storyboard(data, "sf.yaml"), progress=False)
    ref = pixels(result.out_dir / "s__folder.png")
    for label in files:
        assert np.abs(pixels(result.out_dir / f"s__{label}.png") - ref).max() <= 2, label


# --- 4. every family's kohya-layout LoRA applies (one mapper); one that matches nothing is an error -------------


LORA_CASES = [("sd3", "kohya"), ("sd3", "onetrainer"), ("sd3", "export"), ("flux", "kohya"), ("flux", "onetrainer")]


@pytest.mark.parametrize("family,layout", LORA_CASES, ids=[f"{f}-{layout}" for f, layout in LORA_CASES])
def test_transformer_lora_layouts_apply_like_the_diffusers_file(family, layout, tiny_models, render_env, tmp_path):
    from charkit.testing.layouts import transformer_lora_layers, write_transformer_lora

    tiny = tiny_models(family)
    pipe = get_family(family).load_pipeline(tiny.root)
    ref = write_transformer_lora(tmp_path / "ref.safetensors", pipe, family, layout="diffusers", dtype=torch.float32)
    if layout == "export":  # charkit's own best.kohya.safetensors (train/export.py)
        from charkit.families.loraformats import to_kohya
        from charkit.train.export import write_lora

        sd = to_kohya(family, transformer_lora_layers(pipe, family), alpha=2.0)
        lora = write_lora(tmp_path / "best.kohya.safetensors", sd, {})
    else:
        lora = write_transformer_lora(
            tmp_path / f"{layout}.safetensors", pipe, family, layout=layout, dtype=torch.float32
        )
    render_env.character("alice", lora={family: lora})
    render_env.character("bob", lora={family: ref}, trigger="ohwx")
    model = model_entry(family, tiny, adapters=False)
    scenes = [
        {"id": "plain", "prompt": "photo of {alice}", "seed": 4, "lora": {"alice": 0}},
        {"id": "file", "prompt": "photo of {alice}", "seed": 4, "lora": {"alice": 1.0}},
        {"id": "ref", "prompt": "photo of {bob}", "seed": 4, "lora": {"bob": 1.0}},
    ]
    chars = {"alice": "characters/alice", "bob": "characters/bob"}
    result = render_storyboard(board(render_env, model, scenes, name="lora", characters=chars), progress=False)
    out = result.out_dir
    assert np.abs(pixels(out / "file.png") - pixels(out / "plain.png")).max() > 0
    assert np.abs(pixels(out / "file.png") - pixels(out / "ref.png")).max() <= 1
    applied = records(result)["file"]["settings"]["loras"]["alice"]
    assert applied["modules"] > 0 and applied["layout"] in ("kohya_flux", "kohya_sd3", "onetrainer")


def test_lora_that_matches_no_module_is_an_error(tiny_models, tiny_loras, render_env):
    render_env.character("alice", lora={"sd3": tiny_loras("sd15")})  # an SD1.5 LoRA declared for SD3
    model = model_entry("sd3", tiny_models("sd3"), adapters=False)
    scenes = [{"id": "s", "prompt": "photo of {alice}", "seed": 1}]
    with pytest.raises(CharkitError, match="matched no modules|fits no module") as e:
        render_storyboard(board(render_env, model, scenes, name="wrong"), progress=False)
    assert "\n" not in str(e.value)


# --- 5. IP-Adapter plus / plus-face / full-face, FaceID plus-v2 ---------------------------------------------------

IP_VARIANTS = [
    ("ip_adapter", "models/ip-adapter-plus_sd15.safetensors", "plus"),
    ("ip_adapter", "models/ip-adapter-plus-face_sd15.safetensors", "plus"),
    ("ip_adapter", "models/ip-adapter-full-face_sd15.safetensors", "full-face"),
    ("faceid", "ip-adapter-faceid-plusv2_sd15.safetensors", "faceid-plus"),
]


@pytest.mark.parametrize("field,file,variant", IP_VARIANTS, ids=[v[1].split("/")[-1] for v in IP_VARIANTS])
def test_ip_adapter_variants_render(field, file, variant, tiny_models, render_env, h94, fake_face_pack):
    render_env.character("mara", markers=2)
    model = model_entry("sd15", tiny_models("sd15"), adapters=False)
    if field == "faceid":
        model["faceid"] = str(h94 / "IP-Adapter-FaceID" / file)
        model["image_encoder"] = str(h94 / "IP-Adapter" / "models" / "image_encoder")  # ViT-H for the face crop
        ip = {"mode": "face", "scale": 1.0}
    else:
        model["ip_adapter"] = str(h94 / "IP-Adapter" / file)
        ip = {"mode": "image", "scale": 1.0}
    scenes = [
        {"id": "plain", "prompt": "photo of {mara}", "seed": 1},
        {"id": "ip", "prompt": "photo of {mara}", "seed": 1, "ip_adapter": ip},
    ]
    path = board(render_env, model, scenes, name="ipv", pack=fake_face_pack, characters={"mara": "characters/mara"})
    result = render_storyboard(path, progress=False)
    assert np.abs(pixels(result.out_dir / "ip.png") - pixels(result.out_dir / "plain.png")).max() > 0
    assert records(result)["ip"]["settings"]["ip_adapter"]["variant"] == variant
    assert f"({variant})" in read_png_metadata(result.out_dir / "ip.png")["parameters"]


# --- 6. union ControlNets: xinsir SDXL (ControlNetUnionModel), InstantX Flux (control_mode) ----------------------


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_union_controlnet_renders_with_its_control_mode(family, tiny_models, render_env, tmp_path):
    from charkit.testing.layouts import write_flux_union_controlnet, write_sdxl_union_controlnet

    tiny = tiny_models(family)
    pipe = get_family(family).tiny_pipeline(0)
    if family == "sdxl":
        union = write_sdxl_union_controlnet(tmp_path / "controlnet-union-sdxl-1.0", pipe.unet)
    else:
        union = write_flux_union_controlnet(tmp_path / "FLUX.1-dev-Controlnet-Union", pipe.transformer)
    render_env.character("alice")
    Image.fromarray((np.random.RandomState(0).rand(32, 32, 3) * 255).astype("uint8")).save(render_env.root / "map.png")
    model = {**model_entry(family, tiny, adapters=False), "controlnet": {"canny": str(union), "depth": str(union)}}
    same_map = {"image": "map.png", "preprocess": False}
    scenes = [
        {"id": "plain", "prompt": "photo of {alice}", "seed": 1},
        {"id": "canny", "prompt": "photo of {alice}", "seed": 1, "control": {"type": "canny", **same_map}},
        {"id": "depth", "prompt": "photo of {alice}", "seed": 1, "control": {"type": "depth", **same_map}},
    ]
    result = render_storyboard(board(render_env, model, scenes, name="union"), progress=False)
    out, recs = result.out_dir, records(result)
    assert np.abs(pixels(out / "canny.png") - pixels(out / "plain.png")).max() > 0
    # the same map under another control mode: the union model's task embedding makes the difference
    assert np.abs(pixels(out / "canny.png") - pixels(out / "depth.png")).max() > 0
    assert recs["canny"]["settings"]["control"]["union_mode"] == "canny"
    assert recs["depth"]["settings"]["control"]["union_mode"] == "depth"


# --- 7. --cpu-offload re-arms its hooks when a later scene adds an image encoder --------------------------------


def test_cpu_offload_is_rearmed_when_the_pipeline_gains_a_component(tiny_models, render_env, monkeypatch):
    """On a GPU the hooks move each component while it runs; here the bookkeeping (CPU has no offload): every time
    the pipeline about to run, or one of its components, differs from what the hooks were armed for, they are armed
    again. The GPU check (benchmarks/gpu_check.py) runs the real hooks."""
    import dataclasses

    from diffusers import DiffusionPipeline

    from charkit.distributed import SingleProcess
    from charkit.render.lifecycle import condition, load, make_context
    from charkit.render.plan import RenderOptions, check_inputs
    from charkit.render.storyboard import load_storyboard

    render_env.character("alice")
    Image.new("RGB", (32, 32), "white").save(render_env.root / "control.png")
    scenes = [
        {"id": "plain", "prompt": "photo of {alice}"},
        {"id": "ip", "prompt": "photo of {alice}", "ip_adapter": {"mode": "image"}},
        {"id": "ip2", "prompt": "photo of {alice}", "ip_adapter": {"mode": "image"}},
        {"id": "cn", "prompt": "photo of {alice}", "control": {"type": "canny", "image": "control.png"}},
    ]
    path = board(render_env, model_entry("sd15", tiny_models("sd15")), scenes, name="offload")
    plan = check_inputs(load_storyboard(path), options=RenderOptions())
    plan.options = dataclasses.replace(plan.options, cpu_offload=True)  # past check_options: CPU has no offload
    armed: list[str] = []
    monkeypatch.setattr(DiffusionPipeline, "enable_model_cpu_offload", lambda self, *a, **k: armed.append(scene))
    loaded = load(plan.models[0], plan, device="cpu")
    ctx = make_context(plan, SingleProcess())
    for job in plan.jobs:
        scene = job.scene.id
        condition(loaded, job, ctx)
    # plain: armed; ip: a new image encoder on the same pipeline -> again; ip2: nothing new; cn: another pipeline
    assert armed == ["plain", "ip", "cn"]


# --- 8. Flux negative prompts: applied with true_cfg, otherwise recorded as not applied --------------------------


def test_flux_negative_prompt_is_applied_only_with_true_cfg_and_recorded_as_applied(tiny_models, render_env):
    render_env.character("alice", negative_prompt="blurry")
    model = model_entry("flux", tiny_models("flux"), adapters=False)
    scenes = [
        {"id": "off", "prompt": "photo of {alice}", "seed": 1},
        {"id": "other_negative", "prompt": "photo of {alice}", "seed": 1, "negative_prompt": "red"},
    ]
    result = render_storyboard(board(render_env, model, scenes, name="neg"), progress=False)
    out, recs = result.out_dir, records(result)
    np.testing.assert_array_equal(pixels(out / "off.png"), pixels(out / "other_negative.png"))  # both ignored
    assert recs["off"]["negative_prompt"] == recs["other_negative"]["negative_prompt"] == ""  # recorded as such
    off = parse_a1111_parameters(read_png_metadata(out / "off.png")["parameters"])
    assert off["negative_prompt"] == ""
    assert (off["CFG scale"], off["Distilled CFG Scale"]) == ("1.0", "5.0")  # Forge's names for Flux
    assert any("true_cfg" in w for w in result.warnings)
    # with true CFG the negative prompt applies
    on = render_storyboard(board(render_env, model, scenes[:1], name="neg-on", true_cfg=4.0), progress=False)
    assert records(on)["off"]["negative_prompt"] == "blurry" and records(on)["off"]["settings"]["true_cfg"] == 4.0
    assert np.abs(pixels(on.out_dir / "off.png") - pixels(out / "off.png")).max() > 0
    params = parse_a1111_parameters(read_png_metadata(on.out_dir / "off.png")["parameters"])
    assert (params["negative_prompt"], params["CFG scale"], params["Distilled CFG Scale"]) == ("blurry", "4.0", "5.0")


# --- 9. FaceID wants buffalo_l's ArcFace space: another pack renders, with a warning -----------------------------


@pytest.mark.parametrize("pack_name,warns", [("fakepack", True), ("buffalo_l", False)])
def test_faceid_warns_about_a_pack_other_than_buffalo_l(pack_name, warns, tiny_models, render_env, tmp_path):
    from charkit.testing.fake_insightface import write_fake_pack

    pack = write_fake_pack(tmp_path / "models", name=pack_name)
    render_env.character("mara", markers=2)
    model = model_entry("sd15", tiny_models("sd15"))
    scenes = [{"id": "f", "prompt": "photo of {mara}", "ip_adapter": {"mode": "face"}}]
    result = render_storyboard(
        board(render_env, model, scenes, name=pack_name, pack=pack, characters={"mara": "characters/mara"}),
        progress=False,
    )
    assert any("buffalo_l" in w for w in result.warnings) == warns


# --- 10. diffusers' other errors are one line too -------------------------------------------------------------


def test_a_single_file_without_its_components_is_a_one_line_error(tiny_models, render_env, tmp_path):
    """An SD1.5 single file that holds only the UNet: diffusers raises SingleFileComponentError; the CLI says one line."""
    from safetensors.torch import load_file, save_file

    from charkit.cli import cli

    tiny = tiny_models("sd15")
    sd = load_file(str(tiny.single_file))
    unet_only = tmp_path / "unet-only.safetensors"
    save_file({k: v for k, v in sd.items() if k.startswith("model.diffusion_model.")}, str(unet_only))
    render_env.character("alice")
    model = {"source": str(unet_only), "config": str(tiny.root)}
    path = board(render_env, model, [{"id": "s", "prompt": "photo of {alice}"}], name="unet-only")
    r = CliRunner().invoke(cli, ["render", str(path), "--device", "cpu", "-q"])
    assert r.exit_code == 2, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert "Traceback" not in r.output and len(errors) == 1, r.output
    assert "could not load (SingleFileComponentError" in errors[0]


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_kohya_civitai_lora_applies_to_unet_and_text_encoders(family, tiny_models, render_env, tmp_path):
    """kohya sd-scripts files as Civitai hosts them (lora_unet_ / lora_te_ or lora_te1_ / lora_te2_, SDXL in sgm
    block names): every module attaches, and the manifest says how many."""
    from charkit.testing.layouts import write_kohya_lora

    tiny = tiny_models(family)
    pipe = get_family(family).load_pipeline(tiny.root)
    lora = write_kohya_lora(tmp_path / f"{family}_style.safetensors", pipe, family)
    render_env.character("alice", lora={family: lora})
    scenes = [
        {"id": "plain", "prompt": "photo of {alice}", "seed": 4, "lora": {"alice": 0}},
        {"id": "lora", "prompt": "photo of {alice}", "seed": 4, "lora": {"alice": 0.8}},
    ]
    result = render_storyboard(board(render_env, model_entry(family, tiny, adapters=False), scenes, name="k"))
    assert np.abs(pixels(result.out_dir / "lora.png") - pixels(result.out_dir / "plain.png")).max() > 0
    applied = records(result)["lora"]["settings"]["loras"]["alice"]
    from safetensors import safe_open

    with safe_open(str(lora), "pt") as f:
        modules = {k.split(".")[0] for k in list(f.keys())}
    assert applied == {"layout": "kohya_sd", "modules": len(modules)}
    assert "Lora hashes" in read_png_metadata(result.out_dir / "lora.png")["parameters"]
