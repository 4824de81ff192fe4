"""`charkit render` on tiny real models: the family x adapter case table, scale restoration,
determinism, resume after kill -9, single-file sources, best-of-N, metadata, multi-process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fixtures_render import model_entry
from PIL import Image

from charkit.errors import CharkitError
from charkit.families import FAMILIES, get_family
from charkit.render.lifecycle import render_storyboard
from charkit.render.manifest import MANIFEST
from charkit.render.outputs import parse_a1111_parameters, read_png_metadata

SIZE = "32x32"
PROMPT = "photo of {alice} man"
CASES = ("plain", "lora", "controlnet", "ip_image", "faceid")
FEATURE = {"lora": "lora", "controlnet": "controlnet", "ip_image": "ip_adapter", "faceid": "faceid"}
TABLE = [(f, c) for f in FAMILIES for c in CASES]


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def supported(family: str, case: str) -> bool:
    return case == "plain" or get_family(family).SPEC.can(FEATURE[case])


def case_scene(case: str, scene_id: str | None = None) -> dict:
    """A scene identical to `plain` except for the adapter under test (same prompt and seed)."""
    s: dict = {"id": scene_id or case, "prompt": PROMPT, "seed": 7, "lora": {"alice": 0}}
    if case == "lora":
        s["lora"] = {"alice": 1.0}
    elif case == "controlnet":
        s["control"] = {"type": "canny", "image": "control.png"}
    elif case == "ip_image":
        s["ip_adapter"] = {"mode": "image", "scale": 1.0}
    elif case == "faceid":
        s["ip_adapter"] = {"mode": "face", "scale": 1.0, "character": "mara"}
    return s


def family_board(env, family: str, tiny, lora, pack, cases) -> Path:
    env.character("alice", lora={family: lora})
    env.character("mara", markers=2)
    Image.open(env.faces_dir / "obama.jpg").save(env.root / "control.png")
    # plain first; "after_*" scenes repeat plain after an adapter scene: they must render exactly as plain.
    scenes = [case_scene("plain")]
    for case in cases:
        if case != "plain":
            scenes.append(case_scene(case))
            scenes.append(case_scene("plain", f"after_{case}"))
    return env.storyboard(
        {
            "project": f"table-{family}",
            "output": "out",
            "defaults": {"model": model_entry(family, tiny), "size": SIZE, "steps": 2, "guidance": 5.0},
            "characters": {"alice": "characters/alice", "mara": "characters/mara"},
            "identity": {"face_models": str(pack)},
            "scenes": scenes,
        }
    )


@pytest.fixture(scope="module")
def family_runs(tiny_models, tiny_loras, fake_face_pack, faces_dir, tmp_path_factory):
    """``get(family) -> (out_dir, manifest)``: one storyboard per family with every supported case, rendered once."""
    from fixtures_render import RenderEnv

    cache: dict = {}

    def get(family: str):
        if family not in cache:
            env = RenderEnv(tmp_path_factory.mktemp(f"table-{family}"), faces_dir)
            cases = [c for c in CASES if supported(family, c)]
            board = family_board(env, family, tiny_models(family), tiny_loras(family), fake_face_pack, cases)
            result = render_storyboard(board, progress=False)
            cache[family] = (result.out_dir, json.loads(result.manifest_path.read_text()))
        return cache[family]

    return get


@pytest.mark.parametrize("family,case", TABLE, ids=[f"{f}-{c}" for f, c in TABLE])
def test_case_table(family, case, family_runs, tiny_models, tiny_loras, fake_face_pack, render_env):
    if not supported(family, case):
        # What a family cannot do is a one-line error naming scene, field, family and feature; nothing is written.
        board = family_board(render_env, family, tiny_models(family), tiny_loras(family), fake_face_pack, [case])
        with pytest.raises(CharkitError) as e:
            render_storyboard(board, progress=False)
        msg = str(e.value)
        assert f"scene '{case}'" in msg and f"does not support {FEATURE[case]}" in msg and family in msg
        assert "\n" not in msg and not (render_env.root / "out").exists()
        return
    out, manifest = family_runs(family)
    plain = pixels(out / "plain.png")
    assert plain.shape == (32, 32, 3) and plain.std() > 0
    if case == "plain":
        assert [i["scene"] for i in manifest["images"]][0] == "plain"
        return
    changed = pixels(out / f"{case}.png")
    assert np.abs(changed - plain).max() > 0, f"{case} did not change the pixels on {family}"
    # The adapter's scales were restored: the next scene without it renders exactly as plain.
    np.testing.assert_array_equal(pixels(out / f"after_{case}.png"), plain)
    rec = {i["scene"]: i for i in manifest["images"]}[case]
    if case == "lora":
        assert rec["lora"] == {"alice": 1.0}
    if case == "controlnet":
        assert rec["control"]["type"] == "canny"
    if case in ("ip_image", "faceid"):
        assert rec["ip_adapter"]["mode"] == {"ip_image": "image", "faceid": "face"}[case]


def test_disabled_lora_equals_never_loaded(tiny_models, tiny_loras, render_env):
    """A scene without LoRA on a pipeline holding one is bit-identical to a pipeline that never loaded it."""
    tiny = tiny_models("sd15")
    render_env.character("alice", lora={"sd15": tiny_loras("sd15")})
    render_env.character("bob")  # no LoRA at all
    scenes = [
        {"id": "with", "prompt": PROMPT, "seed": 3, "lora": {"alice": 1.0}},
        {"id": "without", "prompt": "photo of {bob} man", "characters": ["bob"], "seed": 3},
    ]
    base = {
        "defaults": {"model": model_entry("sd15", tiny), "size": SIZE, "steps": 2},
        "project": "p",
        "characters": {"alice": "characters/alice", "bob": "characters/bob"},
    }
    both = render_storyboard(render_env.storyboard({**base, "output": "a", "scenes": scenes}, "a.yaml"), progress=False)
    alone = render_storyboard(
        render_env.storyboard({**base, "output": "b", "scenes": scenes[1:]}, "b.yaml"), progress=False
    )
    np.testing.assert_array_equal(pixels(both.out_dir / "without.png"), pixels(alone.out_dir / "without.png"))


@pytest.fixture
def sd15_board(tiny_models, render_env):
    """A 3-scene sd15 storyboard (lifelike preset on one) with a two-character scene."""
    render_env.character("alice")
    render_env.character("bob", trigger="zwx", negative_prompt="cartoon")
    return render_env.storyboard(
        {
            "project": "Episode 1",
            "output": "out",
            "defaults": {
                "model": model_entry("sd15", tiny_models("sd15"), adapters=False),
                "size": SIZE,
                "steps": 2,
                "negative_prompt": "blurry",
                "seed": 11,
            },
            "characters": {"alice": "characters/alice", "bob": "characters/bob"},
            "scenes": [
                {"id": "s01-arrival", "prompt": "photo of {alice} man at a station"},
                {"id": "s02-cafe", "prompt": "{alice} and {bob} at a cafe, {{film}}", "preset": "lifelike"},
                {"id": "s03-night", "prompt": "{bob} at night", "seed": 5},
            ],
        }
    )


def test_manifest_fields_prompts_and_metadata_round_trip(sd15_board):
    r = render_storyboard(sd15_board, progress=False)
    m = json.loads(r.manifest_path.read_text())
    # The manifest schema `charkit verify` and users rely on (golden: a change here is a format change).
    assert list(m) == [
        "format_version",
        "charkit_version",
        "storyboard",
        "storyboard_sha256",
        "project",
        "characters",
        "models",
        "images",
    ]
    assert list(m["images"][0]) == [
        "scene",
        "model",
        "family",
        "model_source",
        "seed",
        "file",
        "sha256",
        "characters",
        "prompt",
        "negative_prompt",
        "width",
        "height",
        "steps",
        "guidance",
        "scheduler",
        "preset",
        "lora",
        "control",
        "ip_adapter",
        "identity",
        "candidates",
        "selection",
        "inputs_hash",
        "dtype",
        "device",
        "locked",
        "settings",
    ]
    assert m["project"] == "Episode 1" and m["storyboard"] == "../episode.yaml"
    assert (r.out_dir / m["characters"]["bob"]).resolve() == (sd15_board.parent / "characters" / "bob").resolve()
    imgs = m["images"]
    assert [i["scene"] for i in imgs] == ["s01-arrival", "s02-cafe", "s03-night"]
    cafe = imgs[1]
    assert cafe["prompt"] == "ohwx and zwx at a cafe, {film}"
    assert cafe["characters"] == ["alice", "bob"]  # declared left to right (order of placeholders)
    assert cafe["negative_prompt"] == "blurry, cartoon"
    assert imgs[2]["seed"] == 5 and imgs[0]["seed"] != imgs[1]["seed"]
    for i in imgs:
        assert {
            "scene",
            "model",
            "family",
            "seed",
            "file",
            "sha256",
            "characters",
            "prompt",
            "negative_prompt",
            "identity",
            "candidates",
            "inputs_hash",
        } <= set(i)
        assert i["identity"] is None and i["model"] == "sd15" and i["family"] == "sd15"
        meta = read_png_metadata(r.out_dir / i["file"])
        expected = dict(i)
        expected.pop("sha256")
        assert meta["charkit"] == expected
        params = parse_a1111_parameters(meta["parameters"])
        assert params["prompt"] == i["prompt"] and params["negative_prompt"] == i["negative_prompt"]
        assert params["Seed"] == str(i["seed"]) and params["Size"] == "32x32" and params["Steps"] == "2"
        assert params["Sampler"] == "DPM++ 2M" and params["Model"] == "sd15" and len(params["Model hash"]) == 10
    assert "Preset: lifelike" in read_png_metadata(r.out_dir / "s02-cafe.png")["parameters"]
    assert not list(r.out_dir.glob("*.part")) and not list(r.out_dir.glob(".manifest.rank*"))


def test_deterministic_and_resume_only_changed(sd15_board):
    first = render_storyboard(sd15_board, progress=False)
    before = {p.name: p.read_bytes() for p in first.out_dir.glob("*.png")}
    again = render_storyboard(sd15_board, progress=False)
    assert again.rendered == [] and len(again.skipped) == 3  # nothing changed: nothing rendered
    forced = render_storyboard(sd15_board, force=True, progress=False)
    assert len(forced.rendered) == 3
    assert {p.name: p.read_bytes() for p in first.out_dir.glob("*.png")} == before  # byte-identical PNGs
    # Change one scene's prompt: only it renders again.
    text = sd15_board.read_text().replace("at night", "at dawn")
    sd15_board.write_text(text)
    changed = render_storyboard(sd15_board, progress=False)
    assert [r.key for r in changed.rendered] == [("s03-night", "sd15")]
    # A tampered PNG is not trusted.
    (first.out_dir / "s01-arrival.png").write_bytes(b"not a png")
    fixed = render_storyboard(sd15_board, progress=False)
    assert [r.key for r in fixed.rendered] == [("s01-arrival", "sd15")]
    assert (first.out_dir / "s01-arrival.png").read_bytes() == before["s01-arrival.png"]


def test_resume_after_kill_9(tiny_models, render_env):
    """kill -9 after the first image lands: no half image, and the rerun renders only what is missing."""
    render_env.character("alice")
    scenes = [{"id": f"s{i}", "prompt": f"photo of {{alice}} man, shot {i}"} for i in range(5)]
    board = render_env.storyboard(
        {
            "project": "kill",
            "output": "out",
            "characters": {"alice": "characters/alice"},
            "scenes": scenes,
            "defaults": {"model": model_entry("sd15", tiny_models("sd15"), adapters=False), "size": SIZE, "steps": 4},
        }
    )
    out = render_env.root / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "charkit.render.cli", str(board), "--device", "cpu", "-q"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    while not (out / MANIFEST).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)  # the manifest appears once the first PNG is complete
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / MANIFEST).exists(), proc.stderr.read().decode()[-2000:]
    done = {i["scene"] for i in json.loads((out / MANIFEST).read_text())["images"]}
    assert "s0" in done and len(done) < 5, "the run finished before it was killed; make the scenes slower"
    for png in out.glob("*.png"):
        Image.open(png).load()  # every PNG on disk is complete
    stamps = {s: (out / f"{s}.png").stat().st_mtime_ns for s in done}
    rerun = render_storyboard(board, progress=False)
    assert sorted(r.key[0] for r in rerun.rendered) == sorted({f"s{i}" for i in range(5)} - done)
    assert sorted(k[0] for k in rerun.skipped) == sorted(done)
    assert {s: (out / f"{s}.png").stat().st_mtime_ns for s in done} == stamps  # untouched
    m = json.loads((out / MANIFEST).read_text())
    assert [i["scene"] for i in m["images"]] == [f"s{i}" for i in range(5)]
    assert not list(out.glob(".*.part"))


def test_single_file_source_and_matrix(tiny_models, render_env):
    tiny = tiny_models("sd15")
    render_env.character("alice")
    board = render_env.storyboard(
        {
            "project": "matrix",
            "output": "out",
            "defaults": {"size": SIZE, "steps": 2},
            "characters": {"alice": "characters/alice"},
            # family detected from the checkpoint's keys / model_index.json
            "models": [
                {"source": str(tiny.root), "label": "folder"},
                {"source": str(tiny.single_file), "config": str(tiny.root), "label": "single"},
            ],
            "scenes": [{"id": "s1", "prompt": PROMPT, "seed": 1}, {"id": "s2", "prompt": "{alice} walking", "seed": 2}],
        }
    )
    r = render_storyboard(board, progress=False)
    m = json.loads(r.manifest_path.read_text())
    assert [(i["scene"], i["model"], i["file"]) for i in m["images"]] == [
        ("s1", "folder", "s1__folder.png"),
        ("s1", "single", "s1__single.png"),
        ("s2", "folder", "s2__folder.png"),
        ("s2", "single", "s2__single.png"),
    ]
    assert {i["family"] for i in m["images"]} == {"sd15"}
    a, b = pixels(r.out_dir / "s1__folder.png"), pixels(r.out_dir / "s1__single.png")
    assert np.abs(a - b).max() <= 2  # the same weights through from_single_file


def test_pickle_weights_refused(tiny_models, tiny_loras, render_env):
    render_env.character("alice")
    ckpt = render_env.root / "model.ckpt"
    ckpt.write_bytes(b"\x80\x04not really a pickle")
    board = render_env.storyboard(
        {
            "project": "p",
            "defaults": {"model": {"family": "sd15", "source": "model.ckpt"}},
            "characters": {"alice": "characters/alice"},
            "scenes": [{"id": "s1", "prompt": PROMPT}],
        }
    )
    with pytest.raises(CharkitError, match=r"defaults\.model: .*pickle.*--allow-pickle-weights"):
        render_storyboard(board, progress=False)
    # A character's LoRA in a pickle format is refused the same way.
    bin_lora = render_env.root / "alice.bin"
    bin_lora.write_bytes(tiny_loras("sd15").read_bytes())
    render_env.character("bob", lora={"sd15": bin_lora})
    toml = render_env.root / "characters" / "bob" / "character.toml"
    (render_env.root / "characters" / "bob" / "loras" / "sd15" / "best.safetensors").rename(toml.parent / "l.bin")
    toml.write_text(toml.read_text().replace("loras/sd15/best.safetensors", "l.bin"))
    board2 = render_env.storyboard(
        {
            "project": "p",
            "defaults": {"model": model_entry("sd15", tiny_models("sd15"), adapters=False)},
            "characters": {"bob": "characters/bob"},
            "scenes": [{"id": "s1", "prompt": "{bob}"}],
        },
        "b.yaml",
    )
    with pytest.raises(CharkitError, match=r"scene 's1': field 'lora.bob'.*pickle"):
        render_storyboard(board2, progress=False)


def test_best_of_n_batched_and_sequential(tiny_models, render_env):
    """Tiny models draw noise: every candidate is no_face, the first is kept, and all scores are recorded."""
    render_env.character("alice")
    data = {
        "project": "bon",
        "characters": {"alice": "characters/alice"},
        "defaults": {"model": model_entry("sd15", tiny_models("sd15"), adapters=False), "size": SIZE, "steps": 2},
        "scenes": [{"id": "s1", "prompt": PROMPT, "seed": 40, "candidates": 3}],
    }
    batched = render_storyboard(render_env.storyboard({**data, "output": "b"}, "b.yaml"), progress=False)
    seq = render_storyboard(render_env.storyboard({**data, "output": "s"}, "s.yaml"), batch_size=1, progress=False)
    for r in (batched, seq):
        rec = json.loads(r.manifest_path.read_text())["images"][0]
        assert [c["seed"] for c in rec["candidates"]] == [40, 41, 42]
        assert all(c["status"] == "no_face" and c["similarity"] is None for c in rec["candidates"])
        assert rec["seed"] == 40 and rec["selection"] == "first_no_face"
        assert rec["identity"] == {"similarity": None, "status": "no_face", "backend": "dlib"}
        assert read_png_metadata(r.out_dir / "s1.png")["charkit"]["candidates"] == rec["candidates"]
    # Each candidate has its own generator: batching changes at most float rounding.
    assert np.abs(pixels(batched.out_dir / "s1.png") - pixels(seq.out_dir / "s1.png")).max() <= 2


def test_verify_writes_identity_report(sd15_board):
    r = render_storyboard(sd15_board, verify=True, progress=False)
    m = json.loads(r.manifest_path.read_text())
    assert all(i["identity"]["status"] == "no_face" and i["identity"]["backend"] == "dlib" for i in m["images"])
    report = json.loads((r.out_dir / "report.json").read_text())
    assert [Path(i["path"]).name for i in report["images"]] == [i["file"] for i in m["images"]]
    assert (r.out_dir / "report.html").is_file()


def _render_in_process(board: str, out: str) -> None:
    import torch

    torch.set_num_threads(1)
    render_storyboard(board, out=out, progress=False)


def test_two_processes_split_scenes_and_merge_one_manifest(sd15_board, tmp_path):
    from accelerate import debug_launcher

    out = tmp_path / "dist"
    debug_launcher(_render_in_process, args=(str(sd15_board), str(out)), num_processes=2)
    m = json.loads((out / MANIFEST).read_text())
    assert [i["scene"] for i in m["images"]] == ["s01-arrival", "s02-cafe", "s03-night"]
    assert not list(out.glob(".manifest.rank*"))
    # Same pixels as a single-process render.
    single = render_storyboard(sd15_board, out=tmp_path / "single", progress=False)
    for i in m["images"]:
        assert (out / i["file"]).read_bytes() == (single.out_dir / i["file"]).read_bytes()


def test_cli_render_and_user_errors(sd15_board, render_env):
    from charkit.cli import cli

    r = CliRunner().invoke(cli, ["render", str(sd15_board), "--device", "cpu", "-q", "--scene", "s01-arrival"])
    assert r.exit_code == 0, r.output
    assert "rendered 1" in r.output and (render_env.root / "out" / "s01-arrival.png").exists()
    assert not (render_env.root / "out" / "s02-cafe.png").exists()
    bad = render_env.storyboard("project: x\nscenes:\n  - id: ../escape\n    prompt: hi\n", "bad.yaml")
    r = CliRunner().invoke(cli, ["render", str(bad), "--device", "cpu"])
    assert r.exit_code == 2 and "Error:" in r.output and "scene '../escape': field 'id'" in r.output
    assert "not a safe file name" in r.output
    assert "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["render", str(sd15_board), "--device", "cpu", "--scene", "nope"])
    assert r.exit_code == 2 and "--scene 'nope': no such scene" in r.output


def test_scales_restore_exact_state_even_on_error(tiny_models, tiny_loras):
    """lora_scales / ip_adapter_scale put back exactly what they found, also when the scene raises."""
    from charkit.render.scales import denoiser, ip_adapter_scale, lora_layers, lora_scales

    fam = get_family("sd15")
    tiny = tiny_models("sd15")
    pipe = fam.load_pipeline(tiny.root)
    lora = tiny_loras("sd15")
    pipe.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name="alice")
    pipe.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name="bob")
    pipe.set_adapters(["bob"], [0.25])

    def state():
        return [(m.disable_adapters, list(m.active_adapters), dict(m.scaling)) for m in lora_layers(pipe)]

    before = state()
    with pytest.raises(RuntimeError), lora_scales(pipe, {"alice": 1.0}):
        assert lora_layers(pipe)[0].active_adapters == ["alice"]
        raise RuntimeError("scene failed")
    assert state() == before
    with lora_scales(pipe, {}):
        assert all(m.disable_adapters for m in lora_layers(pipe))
    assert state() == before
    with lora_scales(pipe, {"alice": 1.0, "bob": 0.5}):  # two characters in one scene
        layer = lora_layers(pipe)[0]
        assert (
            sorted(layer.active_adapters) == ["alice", "bob"] and layer.scaling["bob"] == 0.5 * layer.scaling["alice"]
        )
    assert state() == before

    fam.load_ip_adapter(pipe, tiny.faceid, mode="face", scale=0.3)
    procs = [p for p in denoiser(pipe).attn_processors.values() if hasattr(p, "scale")]
    with ip_adapter_scale(pipe, 0.9):
        assert all(p.scale == [0.9] for p in procs)
    assert all(p.scale == [0.3] for p in procs)


def _edit_prompt(board_path, scene_id, prompt):
    import yaml

    data = yaml.safe_load(board_path.read_text())
    next(s for s in data["scenes"] if s["id"] == scene_id)["prompt"] = prompt
    board_path.write_text(yaml.safe_dump(data, sort_keys=False))


PENDING = [
    # (what changed since the last full render, options, scenes expected to render again)
    ("nothing", {}, []),
    ("force", {"force": True}, ["s01-arrival", "s02-cafe", "s03-night"]),
    ("a prompt", {"edit": ("s02-cafe", "{alice} and {bob} at a bar")}, ["s02-cafe"]),
    ("a png deleted", {"delete": "s03-night.png"}, ["s03-night"]),
    ("a png changed by hand", {"touch": "s01-arrival.png"}, ["s01-arrival"]),
    ("a prompt, but only another scene selected", {"edit": ("s02-cafe", "x {alice}"), "scenes": ("s01-arrival",)}, []),
    ("force on one selected scene", {"force": True, "scenes": ("s03-night",)}, ["s03-night"]),
]


@pytest.mark.parametrize("case,change,expected", PENDING, ids=[p[0] for p in PENDING])
def test_pending_jobs(sd15_board, case, change, expected):
    from charkit.render.lifecycle import pending_jobs
    from charkit.render.plan import RenderOptions, check_inputs
    from charkit.render.storyboard import load_storyboard

    first = render_storyboard(sd15_board, progress=False)
    out = first.out_dir
    if "edit" in change:
        _edit_prompt(sd15_board, *change["edit"])
    if "delete" in change:
        (out / change["delete"]).unlink()
    if "touch" in change:
        with open(out / change["touch"], "ab") as f:
            f.write(b"\0")
    options = RenderOptions(force=change.get("force", False), scenes=change.get("scenes"), progress=False)
    pending, kept = pending_jobs(check_inputs(load_storyboard(sd15_board), options=options))
    assert [j.scene.id for j in pending] == expected
    # what is not pending and still intact is kept; an unselected scene whose inputs changed keeps its old image
    assert {r.scene for r in kept} == {"s01-arrival", "s02-cafe", "s03-night"} - set(expected) - (
        {"s03-night"} if "delete" in change else set()
    ) - ({"s01-arrival"} if "touch" in change else set())
