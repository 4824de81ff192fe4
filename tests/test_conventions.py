"""What A1111 / ComfyUI users type, as storyboard fields, on tiny models of every family where the family has it
(and a one-line error where it does not): prompt weighting, BREAK, prompts past 77 tokens, clip skip, sampler names,
VAE override, fp16 variant, ControlNet start/end, Flux true CFG, SD3 without T5, hires fix; the A1111 PNG fields
Civitai and A1111's PNG Info read; and scene batching (one pipeline call for several scenes, the same bytes on resume).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures_render import model_entry
from PIL import Image

from charkit.errors import CharkitError
from charkit.families import FAMILIES, get_family
from charkit.render.lifecycle import render_storyboard
from charkit.render.outputs import parse_a1111_parameters, read_png_metadata

LONG = "photo of {alice} man, " + "standing in the city street at night with light, " * 12


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def params(path) -> dict:
    return parse_a1111_parameters(read_png_metadata(path)["parameters"])


def records(result) -> dict:
    return {i["scene"]: i for i in json.loads(result.manifest_path.read_text())["images"]}


def render(env, model: dict, scenes: list[dict], name: str, **defaults):
    data = {
        "project": name,
        "output": f"out-{name}",
        "defaults": {"model": model, "size": "32x32", "steps": 2, "guidance": 5.0, **defaults},
        "characters": {"alice": "characters/alice"},
        "scenes": [{"seed": 5, **s} for s in scenes],
    }
    return render_storyboard(env.storyboard(data, f"{name}.yaml"), progress=False)


def convention_scenes(family: str) -> list[dict]:
    spec = get_family(family).SPEC
    scenes = [
        {"id": "base", "prompt": "photo of {alice} man"},
        {"id": "weight_one", "prompt": "photo of {alice} (man:1.0)"},
        {"id": "weighted", "prompt": "(photo of {alice} man:2)"},
        {"id": "break", "prompt": "photo of {alice} BREAK man"},
        {"id": "long_red", "prompt": LONG + "red"},  # past 77 tokens: only the end differs
        {"id": "long_blue", "prompt": LONG + "blue"},
        {"id": "hires", "prompt": "photo of {alice} man", "hires": {"scale": 2, "strength": 0.6, "steps": 2}},
    ]
    if spec.can("clip_skip"):
        scenes.append({"id": "clip2", "prompt": "photo of {alice} man", "clip_skip": 2})
    if spec.can("controlnet"):
        control = {"type": "canny", "image": "control.png"}
        scenes.append({"id": "cn", "prompt": "photo of {alice} man", "control": control})
        scenes.append({"id": "cn_late", "prompt": "photo of {alice} man", "control": {**control, "start": 0.5}})
    return scenes


@pytest.mark.parametrize("family", FAMILIES)
def test_conventions_render_on_every_family(family, tiny_models, render_env, faces_dir):
    render_env.character("alice")
    Image.open(faces_dir / "obama.jpg").save(render_env.root / "control.png")
    result = render(render_env, model_entry(family, tiny_models(family)), convention_scenes(family), family)
    out, recs = result.out_dir, records(result)
    base = pixels(out / "base.png")
    np.testing.assert_array_equal(pixels(out / "weight_one.png"), base)  # (word:1.0) is exactly word
    for scene in ("weighted", "break"):
        assert np.abs(pixels(out / f"{scene}.png") - base).max() > 0, scene
    # nothing is cut at 77 tokens: the last word of a long prompt still changes the image
    assert np.abs(pixels(out / "long_red.png") - pixels(out / "long_blue.png")).max() > 0
    assert recs["long_red"]["prompt"].endswith("red")
    # hires: the second pass at 2x, recorded with A1111's field names
    assert Image.open(out / "hires.png").size == (64, 64)
    p = params(out / "hires.png")
    assert (p["Size"], p["Hires upscale"], p["Hires steps"], p["Hires upscaler"], p["Denoising strength"]) == (
        "32x32",
        "2.0",
        "2",
        "Lanczos",
        "0.6",
    )
    assert recs["hires"]["settings"]["hires"]["width"] == 64
    if "clip2" in recs:
        assert np.abs(pixels(out / "clip2.png") - base).max() > 0
        assert params(out / "clip2.png")["Clip skip"] == "2" and "Clip skip" not in params(out / "base.png")
    if "cn" in recs:
        assert np.abs(pixels(out / "cn_late.png") - pixels(out / "cn.png")).max() > 0
        assert "Guidance Start: 0.5, Guidance End: 1.0" in params(out / "cn_late.png")["ControlNet 0"]
        assert recs["cn_late"]["settings"]["control"]["start"] == 0.5


UNSUPPORTED = [
    ("flux", {"clip_skip": 2}, "clip_skip", "does not support clip_skip"),
    ("sd15", {"true_cfg": 3.0}, "true_cfg", "does not support true_cfg"),
    ("sd15", {"scheduler": "Magic sampler"}, "scheduler", "unknown sampler 'Magic sampler'"),
    ("flux", {"scheduler": "Euler a"}, "scheduler", "does not fit flow-matching models"),
    (
        "sd15",
        {"control": {"type": "canny", "image": "control.png", "start": 0.6, "end": 0.5}},
        "control.end",
        "after start",
    ),
]


@pytest.mark.parametrize("family,fields,where,message", UNSUPPORTED, ids=[f"{u[0]}-{u[2]}" for u in UNSUPPORTED])
def test_a_convention_the_family_lacks_is_a_one_line_error(family, fields, where, message, tiny_models, render_env):
    render_env.character("alice")
    Image.new("RGB", (32, 32)).save(render_env.root / "control.png")
    with pytest.raises(CharkitError) as e:
        render(
            render_env, model_entry(family, tiny_models(family)), [{"id": "s", "prompt": "{alice}", **fields}], "bad"
        )
    msg = str(e.value)
    assert f"scene 's': field '{where}'" in msg and message in msg and "\n" not in msg, msg


# (storyboard name, A1111 "Sampler", "Schedule type", diffusers class)
SAMPLERS = [
    ("DPM++ 2M Karras", "DPM++ 2M", "Karras", "DPMSolverMultistepScheduler"),
    ("DPM++ SDE Karras", "DPM++ SDE", "Karras", "DPMSolverSDEScheduler"),
    ("Euler a", "Euler a", "Automatic", "EulerAncestralDiscreteScheduler"),
    ("Euler", "Euler", "Automatic", "EulerDiscreteScheduler"),
    ("DDIM", "DDIM", "Automatic", "DDIMScheduler"),
    ("UniPC", "UniPC", "Automatic", "UniPCMultistepScheduler"),
    ("LCM", "LCM", "Automatic", "LCMScheduler"),
    ("EulerAncestralDiscreteScheduler", "Euler a", "Automatic", "EulerAncestralDiscreteScheduler"),
]


def test_sampler_names_as_a1111_writes_them(tiny_models, render_env):
    pytest.importorskip("torchsde")  # DPM++ SDE (pip install torchsde; a dependency of charkit)
    render_env.character("alice")
    scenes = [{"id": "default", "prompt": "photo of {alice}"}]
    scenes += [{"id": f"s{i}", "prompt": "photo of {alice}", "scheduler": s[0]} for i, s in enumerate(SAMPLERS)]
    result = render(render_env, model_entry("sd15", tiny_models("sd15"), adapters=False), scenes, "samplers")
    recs = records(result)
    # sd15's default: DPM++ 2M without Karras sigmas
    p = params(result.out_dir / "default.png")
    assert (p["Sampler"], p["Schedule type"]) == ("DPM++ 2M", "Automatic")
    assert recs["default"]["settings"]["scheduler_config"] == {}
    images = {}
    for i, (_, sampler, schedule, cls) in enumerate(SAMPLERS):
        p = params(result.out_dir / f"s{i}.png")
        assert (p["Sampler"], p["Schedule type"], recs[f"s{i}"]["scheduler"]) == (sampler, schedule, cls)
        images[i] = pixels(result.out_dir / f"s{i}.png")
    assert np.abs(images[0] - pixels(result.out_dir / "default.png")).max() > 0  # Karras sigmas changed it
    np.testing.assert_array_equal(images[2], images[7])  # "Euler a" is EulerAncestralDiscreteScheduler


def test_vae_override_and_fp16_variant(tiny_models, render_env, tmp_path):
    tiny = tiny_models("sd15")
    pipe = get_family("sd15").tiny_pipeline(0)
    variant_dir = tmp_path / "tiny-fp16"
    pipe.save_pretrained(variant_dir, variant="fp16", safe_serialization=True)
    from charkit.testing.tinyparts import seeded

    with seeded(7):
        vae = type(pipe.vae).from_config(pipe.vae.config)
    vae.save_pretrained(tmp_path / "other-vae", safe_serialization=True)
    render_env.character("alice")
    base = model_entry("sd15", tiny, adapters=False)
    scenes = [{"id": "s", "prompt": "photo of {alice}"}]
    plain = render(render_env, base, scenes, "plain")
    other = render(render_env, {**base, "vae": str(tmp_path / "other-vae")}, scenes, "vae")
    assert np.abs(pixels(other.out_dir / "s.png") - pixels(plain.out_dir / "s.png")).max() > 0
    p = params(other.out_dir / "s.png")
    assert p["VAE"] == "other-vae" and len(p["VAE hash"]) == 10
    fp16 = render(render_env, {"source": str(variant_dir), "variant": "fp16"}, scenes, "fp16")
    assert records(fp16)["s"]["settings"]["variant"] == "fp16"
    # (saved from fp32 weights: the fp16 files hold the same values, so the same image)
    assert np.abs(pixels(fp16.out_dir / "s.png") - pixels(plain.out_dir / "s.png")).max() <= 1
    with pytest.raises(CharkitError, match="variant") as e:
        render(render_env, {**base, "variant": "fp16"}, scenes, "no-fp16")  # a folder without fp16 files
    assert "\n" not in str(e.value)


def test_sd3_without_t5(tiny_models, render_env):
    render_env.character("alice")
    scenes = [{"id": "s", "prompt": "photo of {alice} (man:1.2)"}]
    sd3 = model_entry("sd3", tiny_models("sd3"), adapters=False)
    with_t5 = render(render_env, sd3, scenes, "t5")
    without = render(render_env, {**sd3, "t5": False}, scenes, "no-t5")
    assert np.abs(pixels(without.out_dir / "s.png") - pixels(with_t5.out_dir / "s.png")).max() > 0
    assert records(without)["s"]["settings"]["t5"] is False
    flux = {**model_entry("flux", tiny_models("flux"), adapters=False), "t5": False}
    with pytest.raises(CharkitError, match="does not support without_t5"):
        render(render_env, flux, scenes, "flux-no-t5")


# --- scene batching ---------------------------------------------------------------------------------------------


def _batch_board(env, tiny, name: str, prompts: list[str], **defaults):
    scenes = [{"id": f"s{i}", "prompt": p, "seed": 100 + i} for i, p in enumerate(prompts)]
    data = {
        "project": name,
        "output": f"out-{name}",
        "defaults": {"model": model_entry("sd15", tiny, adapters=False), "size": "32x32", "steps": 2, **defaults},
        "characters": {"alice": "characters/alice"},
        "scenes": scenes,
    }
    return env.storyboard(data, f"{name}.yaml")


def test_scenes_batch_into_one_call_and_resume_draws_the_same_bytes(tiny_models, render_env, monkeypatch):
    render_env.character("alice")
    tiny = tiny_models("sd15")
    prompts = [f"photo of {{alice}} man, shot {i}" for i in range(5)]
    path = _batch_board(render_env, tiny, "batch", prompts)
    calls = []
    fam = get_family("sd15")
    original = fam.generate

    def counting(pipe, **kw):
        calls.append(kw["prompt"] if isinstance(kw["prompt"], str) else len(kw["prompt"]))
        return original(pipe, **kw)

    monkeypatch.setattr(fam, "generate", counting)
    batched = render_storyboard(path, scene_batch=3, progress=False)
    assert calls == [3, 2]  # 5 scenes, batches of 3: two pipeline calls
    recs = records(batched)
    assert recs["s0"]["settings"]["batch"] == ["s0", "s1", "s2"] and recs["s4"]["settings"]["batch"] == ["s3", "s4"]
    first = {s: (batched.out_dir / f"{s}.png").read_bytes() for s in recs}
    # one per call: per-image generators, so the same images up to batched-kernel rounding
    single = render_storyboard(path, out=render_env.root / "single", scene_batch=1, progress=False)
    for s in recs:
        assert np.abs(pixels(single.out_dir / f"{s}.png") - pixels(batched.out_dir / f"{s}.png")).max() <= 2
    # a deleted image re-renders with its whole batch: the same bytes as the full run
    (batched.out_dir / "s1.png").unlink()
    calls.clear()
    again = render_storyboard(path, scene_batch=3, progress=False)
    assert [r.key[0] for r in again.rendered] == ["s1"] and calls == [3]
    assert {s: (batched.out_dir / f"{s}.png").read_bytes() for s in recs} == first
    # a scene's inputs_hash covers its batch: changing one prompt re-renders its batch, not the other one
    text = path.read_text().replace("shot 0", "shot zero")
    path.write_text(text)
    changed = render_storyboard(path, scene_batch=3, progress=False)
    assert sorted(r.key[0] for r in changed.rendered) == ["s0", "s1", "s2"]
