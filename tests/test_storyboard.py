"""Storyboard parsing and check_inputs: bad input -> one-line errors naming file, scene and field; the
pieces of the render lifecycle that need no denoising (prompts, hashes, grain, metadata, selection)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from charkit.cli_options import MODEL_SOURCE
from charkit.errors import CharkitError
from charkit.render.candidates import Candidate, batches, select_best
from charkit.render.jobs import default_seed
from charkit.render.outputs import a1111_parameters, encode_png, parse_a1111_parameters
from charkit.render.plan import RenderOptions, check_inputs
from charkit.render.presets import film_grain, postprocess
from charkit.render.storyboard import expand_prompt, load_storyboard, placeholders

GOOD_SCENE = "  - id: s1\n    prompt: photo of {alice} man\n"

# (storyboard YAML, fragments the one-line error must contain). {model} is the tiny sd15 folder.
SCHEMA_CASES = [
    ("project: [unclosed\n", ["invalid YAML at line"]),
    ("- just\n- a list\n", ["a storyboard is a YAML mapping"]),
    ("project: t\n", ["field 'scenes'", "required field is missing"]),
    ("project: t\nscenes: []\n", ["field 'scenes'", "at least 1"]),
    ("project: t\nscenez: []\n", ["field 'scenez'", "unknown field"]),
    ("project: t\nscenes:\n  - id: s1\n    promt: hi\n", ["scene 's1': field 'promt'", "unknown field"]),
    (
        "project: t\nscenes:\n  - id: s1\n    prompt: hi\n    control: {type: pose, image: x.png}\n",
        ["scene 's1': field 'control.type'", "'canny', 'openpose' or 'depth'"],
    ),
    (
        "project: t\nscenes:\n  - id: s1\n    prompt: hi\n    size: 64by64\n",
        ["scene 's1': field 'size'", "WIDTHxHEIGHT"],
    ),
    (
        "project: t\nscenes:\n  - id: s1\n    prompt: hi\n    seed: -1\n",
        ["scene 's1': field 'seed'", "greater than or equal to 0"],
    ),
    (
        "project: t\nscenes:\n  - id: s1\n    prompt: hi\n    ip_adapter: {mode: faces}\n",
        ["scene 's1': field 'ip_adapter.mode'"],
    ),
    ("project: t\nscenes:\n  - {id: s1, prompt: a}\n  - {id: s1, prompt: b}\n", ["scene id 's1' appears twice"]),
    ("project: t\nscenes:\n  - {id: ../evil, prompt: a}\n", ["scene '../evil': field 'id'", "not a safe file name"]),
    ("project: t\nscenes:\n  - {id: a/b, prompt: a}\n", ["scene 'a/b': field 'id'", "not a safe file name"]),
    ("project: t\nscenes:\n  - {id: .hidden, prompt: a}\n", ["field 'id'", "not a safe file name"]),
    ("project: t\nscenes:\n  - {prompt: a}\n", ["scene #1: field 'id'", "required field is missing"]),
    (
        "project: t\ndefaults: {model: {family: sd2, source: x}}\nscenes:\n  - {id: s1, prompt: a}\n",
        ["field 'defaults.model.family'", "'sd15', 'sdxl', 'sd3' or 'flux'"],
    ),
    ("project: t\nscenes:\n  - {id: s1, prompt: a}\n", ["no model: set defaults.model"]),
    (
        "project: t\nmodels: [{model}]\nscenes:\n  - {id: s1, prompt: a, model: {model}}\n",
        ["cannot pick its own model"],
    ),
    (
        "project: t\ncharacters: {'../x': characters/alice}\nscenes:\n  - {id: s1, prompt: a}\n",
        ["character name '../x'"],
    ),
    ("project: t\ndefaults: {candidates: 0}\nscenes:\n  - {id: s1, prompt: a}\n", ["field 'defaults.candidates'"]),
]


def _board_text(
    model: str, scenes: str = GOOD_SCENE, extra: str = "", characters: str = "  alice: characters/alice\n"
) -> str:
    return f"project: t\noutput: out\ndefaults:\n  model: {model}\n  size: 32x32\n{extra}characters:\n{characters}scenes:\n{scenes}"


@pytest.fixture
def sd15_root(tiny_models) -> str:
    return str(tiny_models("sd15").root)


@pytest.fixture
def alice(render_env):
    return render_env.character("alice")


@pytest.mark.parametrize("text,fragments", SCHEMA_CASES, ids=[f"schema{i}" for i in range(len(SCHEMA_CASES))])
def test_malformed_storyboards(text, fragments, render_env, sd15_root, alice):
    path = render_env.storyboard(text.replace("{model}", sd15_root), "bad.yaml")
    from charkit.render.lifecycle import render_storyboard

    with pytest.raises(CharkitError) as e:
        render_storyboard(path, progress=False)
    msg = str(e.value)
    assert msg.startswith(str(path)), msg
    for frag in fragments:
        assert frag in msg, msg
    assert "\n" not in msg
    assert not (render_env.root / "out").exists() and not (render_env.root / "renders").exists()


def _plan_cases(tiny):
    cn = str(tiny.controlnet)
    model_cn = f"{{family: sd15, source: {tiny.root}, controlnet: {{canny: {cn}, openpose: {cn}}}}}"
    ctl = "    control: {{type: {t}, image: {img}}}\n"
    return [
        (
            dict(scenes="  - {id: s1, prompt: '{carol} waves'}\n"),
            ["scene 's1': field 'prompt'", "unknown character 'carol'"],
        ),
        (
            dict(scenes="  - {id: s1, prompt: hi, characters: [carol]}\n"),
            ["field 'characters'", "unknown character 'carol'"],
        ),
        (
            dict(scenes="  - {id: s1, prompt: '{alice}', characters: []}\n"),
            ["field 'prompt'", "{alice} is not in this scene's characters"],
        ),
        (dict(scenes="  - {id: s1, prompt: hi, candidates: 3}\n"), ["field 'candidates'", "best-of-N"]),
        (
            dict(scenes="  - {id: s1, prompt: '{alice}', lora: {alice: 0.8}}\n"),
            ["field 'lora.alice'", "has no sd15 LoRA"],
        ),
        (
            dict(scenes="  - {id: s1, prompt: hi, lora: {alice: 0.8}}\n"),
            ["field 'lora.alice'", "not in this scene's characters"],
        ),
        (
            dict(scenes="  - id: s1\n    prompt: hi\n" + ctl.format(t="canny", img="control.png")),
            ["field 'control.type'", "has no canny ControlNet"],
        ),
        (
            dict(model=model_cn, scenes="  - id: s1\n    prompt: hi\n" + ctl.format(t="canny", img="missing.png")),
            ["field 'control.image'", "missing.png: no such file"],
        ),
        (
            dict(model=model_cn, scenes="  - id: s1\n    prompt: hi\n" + ctl.format(t="openpose", img="control.png")),
            ["field 'control.type'", "openpose detection needs annotator weights", "--annotators", "preprocess: false"],
        ),
        (
            dict(scenes="  - {id: s1, prompt: '{alice}', ip_adapter: {mode: image}}\n"),
            ["field 'ip_adapter.mode'", "has no ip_adapter weights"],
        ),
        (dict(scenes="  - {id: s1, prompt: hi, size: 36x36}\n"), ["field 'size'", "multiples of 8"]),
        (dict(model="./missing.safetensors"), ["defaults.model", "no such file"]),
        (dict(model=f"{{family: sdxl, source: {tiny.root}}}"), ["defaults.model", "is a sd15 model", "family: sd15"]),
        (dict(model=str(tiny.single_file)), ["defaults.model"]),  # a single file needs config: offline
        (
            dict(
                model=f"{{source: {tiny.root}, controlnet: {{openpose: {cn}}}}}",
                scenes="  - id: s1\n    prompt: hi\n" + ctl.format(t="depth", img="control.png"),
            ),
            ["has no depth ControlNet"],
        ),
        (dict(characters="  alice: characters/nobody\n"), ["characters.alice", "no character here"]),
        (
            dict(characters="  bob: characters/alice\n", scenes="  - {id: s1, prompt: hi}\n"),
            ["characters.bob", "holds character 'alice'"],
        ),
        (dict(extra="  scheduler: FancyScheduler\n"), ["field 'scheduler'", "unknown sampler 'FancyScheduler'"]),
        (
            dict(model="{family: sd15, source: charkit-test/not-cached}"),
            ["defaults.model", "not in the local Hugging Face cache"],
        ),
    ]


def test_check_inputs_errors(tiny_models, render_env, alice):
    """Inputs that parse but cannot render: one line naming file, scene and field; nothing written."""
    tiny = tiny_models("sd15")
    Image.new("RGB", (32, 32)).save(render_env.root / "control.png")
    for kw, fragments in _plan_cases(tiny):
        kw = dict(kw)
        model = kw.pop("model", str(tiny.root))
        path = render_env.storyboard(_board_text(model, **kw), "bad.yaml")
        with pytest.raises(CharkitError) as e:
            check_inputs(load_storyboard(path), options=RenderOptions())
            pytest.fail(f"no error for {kw}")
        msg = str(e.value)
        assert msg.startswith(str(path)) and "\n" not in msg, msg
        for frag in fragments:
            assert frag in msg, (kw, msg)
    assert not (render_env.root / "out").exists()


def test_flux_cannot_do_openpose(tiny_models, render_env, alice):
    tiny = tiny_models("flux")
    Image.new("RGB", (32, 32)).save(render_env.root / "control.png")
    text = _board_text(
        f"{{family: flux, source: {tiny.root}}}",
        "  - id: s1\n    prompt: hi\n    control: {type: openpose, image: control.png}\n",
    )
    with pytest.raises(CharkitError, match=r"scene 's1': field 'control.type': .*flux.*no 'openpose' control"):
        check_inputs(load_storyboard(render_env.storyboard(text)))


def test_plan_resolves_prompts_sizes_and_hashes(tiny_models, render_env, alice):
    tiny = tiny_models("sd15")
    render_env.character("bob", trigger="zwx", negative_prompt="cartoon")
    Image.new("RGB", (32, 32), (10, 20, 30)).save(render_env.root / "control.png")
    model = f"{{source: {tiny.root}, controlnet: {{canny: {tiny.controlnet}}}}}"
    scenes = (
        "  - {id: s1, prompt: '{bob} and {alice}, {{x}}', negative_prompt: dark}\n"
        "  - id: s2\n    prompt: '{alice}'\n    size: 64x48\n    control: {type: canny, image: control.png, scale: 0.5}\n"
    )
    path = render_env.storyboard(
        _board_text(model, scenes, characters="  alice: characters/alice\n  bob: characters/bob\n")
    )
    plan = check_inputs(load_storyboard(path))
    s1, s2 = plan.jobs
    assert s1.prompt == "zwx and ohwx, {x}" and s1.characters == ["bob", "alice"]
    assert s1.negative_prompt == "dark, cartoon"
    assert (s1.width, s1.height, s2.width, s2.height) == (32, 32, 64, 48)
    assert s1.model.family == "sd15" and s1.model.label == "sd15"  # detected from model_index.json
    assert s1.seed == default_seed(0, "s1") and s1.steps == 25 and s1.guidance == 7.0  # family defaults
    assert plan.out_dir == (render_env.root / "out").resolve()
    # inputs_hash follows the inputs: a new control image changes s2 only.
    before = {j.scene.id: j.inputs_hash for j in plan.jobs}
    Image.new("RGB", (32, 32), (99, 20, 30)).save(render_env.root / "control.png")
    after = {j.scene.id: j.inputs_hash for j in check_inputs(load_storyboard(path)).jobs}
    assert after["s1"] == before["s1"] and after["s2"] != before["s2"]
    # --model replaces the model and keeps its ControlNet
    over = check_inputs(load_storyboard(path), models=[MODEL_SOURCE.convert(f"mine={tiny.root}", None, None)])
    assert {j.model.label for j in over.jobs} == {"mine"} and over.jobs[1].model.controlnet


def test_placeholders_and_expansion():
    assert placeholders("{a} and {b} then {a}, {{c}}") == ["a", "b"]
    assert expand_prompt("{{lit}} {a}", {"a": "ohwx"}) == "{lit} ohwx"
    assert MODEL_SOURCE.convert("rv=models/rv.safetensors", None, None).label == "rv"
    assert MODEL_SOURCE.convert("org/model", None, None).label is None


@settings(derandomize=True, max_examples=60, deadline=None)
@given(
    st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=40),
    st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
)
def test_expansion_property(text, name):
    # Text without braces is untouched; a placeholder becomes exactly the trigger text.
    assert expand_prompt(text, {}) == text
    assert expand_prompt(text + "{" + name + "}" + text, {name: "ohwx man"}) == text + "ohwx man" + text


def test_default_seed_is_stable():
    assert default_seed(5, "cafe") == default_seed(5, "cafe") != default_seed(6, "cafe")
    assert default_seed(0, "a") != default_seed(0, "b")


def test_film_grain_deterministic():
    img = Image.new("RGB", (48, 32), (120, 130, 140))
    a, b, c = film_grain(img, 1), film_grain(img, 1), film_grain(img, 2)
    assert a.tobytes() == b.tobytes() != c.tobytes()
    diff = np.asarray(a, dtype=np.float64) - np.asarray(img, dtype=np.float64)
    assert 3 < diff.std() < 15 and abs(diff.mean()) < 1.5  # visible grain, no colour cast
    assert postprocess(img, "none", seed=1) is img


def test_candidates_batches_and_selection():
    assert batches([1, 2, 3], None) == [[1, 2, 3]] and batches([1, 2, 3], 2) == [[1, 2], [3]]
    c = lambda sim, st="drift": Candidate(0, None, sim, st)
    assert select_best([c(None, "no_face")]).reason == "single"
    assert (
        select_best([c(None, "no_face"), c(None, "no_face")]).index,
        select_best([c(None, "no_face")] * 2).reason,
    ) == (0, "first_no_face")
    assert select_best([c(0.3), c(0.6, "pass"), c(0.6, "pass")]).index == 1  # ties keep the earliest
    assert select_best([c(None, "no_face"), c(0.2)]).index == 1


def test_png_metadata_round_trip_and_deterministic_bytes():
    params = a1111_parameters(
        prompt="ohwx, at a cafe",
        negative_prompt="blurry, bad",
        steps=2,
        scheduler="EulerAncestralDiscreteScheduler",
        guidance=7.5,
        seed=123,
        width=32,
        height=32,
        model="sd15",
        model_hash="ab" * 32,
        loras={"alice": ("cd" * 32, 0.8)},
        control={"type": "canny", "model": "cn", "scale": 0.5},
        extra={"Note": 'a, "b"'},
    )
    parsed = parse_a1111_parameters(params)
    assert parsed["prompt"] == "ohwx, at a cafe" and parsed["negative_prompt"] == "blurry, bad"
    assert parsed["Sampler"] == "Euler a" and parsed["Seed"] == "123" and parsed["Model hash"] == "abababab" + "ab"
    assert parsed["Lora hashes"] == "alice: " + "cd" * 6 and parsed["Note"] == 'a, "b"'
    assert parsed["ControlNet 0"] == "Module: canny, Model: cn, Weight: 0.5"
    img = Image.new("RGB", (16, 16), (1, 2, 3))
    one = encode_png(img, parameters=params, meta={"scene": "s1", "seed": 123})
    assert one == encode_png(img, parameters=params, meta={"seed": 123, "scene": "s1"})
    import io

    with Image.open(io.BytesIO(one)) as im:
        assert im.text["parameters"] == params and json.loads(im.text["charkit"]) == {"scene": "s1", "seed": 123}


def test_every_storyboard_field_is_documented_and_the_example_parses():
    from pathlib import Path

    from charkit.render import storyboard as sb

    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "rendering.md").read_text()
    for model in (
        sb.Storyboard,
        sb.Defaults,
        sb.Scene,
        sb.ModelSpec,
        sb.ControlSpec,
        sb.HiresSpec,
        sb.IPAdapterSpec,
        sb.IdentitySpec,
    ):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no help text"
            assert f"`{name}`" in doc, f"{model.__name__}.{name} is not documented in docs/rendering.md"
    board = load_storyboard(root / "examples" / "episode.yaml")
    assert len(board.scenes) == 5 and set(board.characters) == {"obama", "biden"}
    assert board.scenes[2].characters == ["obama", "biden"]


def test_every_problem_of_a_storyboard_is_reported_in_one_run(tiny_models, render_env, alice):
    """Three mistakes in three scenes: one check_inputs names all three (the CLI prints one line each)."""
    from click.testing import CliRunner

    from charkit.cli import cli
    from charkit.errors import InputProblems

    tiny = tiny_models("sd15")
    scenes = (
        "  - {id: s1, prompt: '{carol} waves'}\n"
        "  - {id: s2, prompt: hi, size: 36x36}\n"
        "  - {id: s3, prompt: '{alice}', lora: {alice: 0.8}}\n"
    )
    path = render_env.storyboard(_board_text(str(tiny.root), scenes), "three.yaml")
    with pytest.raises(InputProblems) as e:
        check_inputs(load_storyboard(path))
    assert len(e.value.problems) == 3
    for frag, problem in zip(["'s1'", "'s2'", "'s3'"], e.value.problems):
        assert frag in problem and problem.startswith(str(path))
    r = CliRunner().invoke(cli, ["render", str(path), "--device", "cpu"])
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.startswith("Error: ")]
    assert len(lines) == 3 and "unknown character 'carol'" in lines[0] and "multiples of 8" in lines[1]
