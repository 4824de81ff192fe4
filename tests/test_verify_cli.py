"""`charkit verify` and `charkit character` through click's CliRunner, on real photos."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures_faces import FACES_DIR, no_face_photo

from charkit.cli import cli
from charkit.testing.stagefiles import write_render_manifest

HOSTILE = '<img src=x onerror=alert(1)> "q".jpg'


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("shots")
    shutil.copy(FACES_DIR / "obama3.jpg", d / "s01.jpg")
    shutil.copy(FACES_DIR / "biden.jpg", d / "s02.jpg")
    no_face_photo(d / "s03.jpg")
    shutil.copy(FACES_DIR / "32bit.png", d / HOSTILE)
    return d


def test_verify_writes_reports_and_separates_people(shots, characters_root, tmp_path):
    out = tmp_path / "report"
    r = run("verify", shots, "--character", characters_root / "obama", "--backend", "dlib", "--out", out)
    assert r.exit_code == 0, r.output
    data = json.loads((out / "report.json").read_text())
    assert data["backend"]["name"] == "dlib" and data["threshold"] == 0.4
    assert set(data["baseline"]["obama"]) >= {"mean", "min"}
    by_name = {Path(i["path"]).name: i for i in data["images"]}
    assert [by_name[n]["status"] for n in ("s01.jpg", "s02.jpg", "s03.jpg", HOSTILE)] == [
        "pass",
        "drift",
        "no_face",
        "pass",
    ]
    assert by_name["s03.jpg"]["similarity"] is None and by_name["s03.jpg"]["faces"] == []
    assert by_name["s01.jpg"]["similarity"] > 0.55 > 0.3 > by_name["s02.jpg"]["similarity"]
    for img in data["images"]:
        assert {"path", "run", "status", "similarity", "faces"} <= set(img)
    assert data["runs"][0]["pass"] == 2 and data["runs"][0]["drift"] == 1 and data["runs"][0]["no_face"] == 1
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert {row["status"] for row in rows} == {"pass", "drift", "no_face"}
    html = (out / "report.html").read_text()
    assert "<img src=x onerror" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "non-commercial" not in html or "insightface" in html
    assert "dlib" in html and "CC0" in html  # backend and licence note


def test_fail_on_drift_and_json(shots, characters_root, tmp_path):
    r = run(
        "verify",
        shots,
        "-c",
        characters_root / "obama",
        "--backend",
        "dlib",
        "--out",
        tmp_path / "o",
        "--fail-on-drift",
    )
    assert r.exit_code == 1
    only_pass = tmp_path / "pass"
    only_pass.mkdir()
    shutil.copy(shots / "s01.jpg", only_pass)
    r = run(
        "verify",
        only_pass,
        "-c",
        characters_root / "obama",
        "--backend",
        "dlib",
        "--out",
        tmp_path / "p",
        "--fail-on-drift",
        "--json",
    )
    assert r.exit_code == 0
    assert json.loads(r.stdout)["images"][0]["status"] == "pass"


def test_runs_side_by_side(shots, characters_root, tmp_path):
    ext = tmp_path / "midjourney"
    ext.mkdir()
    shutil.copy(FACES_DIR / "obama2.jpg", ext / "s01.png")
    r = run(
        "verify",
        "--run",
        f"sd15={shots}",
        "--run",
        f"midjourney={ext}",
        "-c",
        characters_root / "obama",
        "--backend",
        "dlib",
        "--out",
        tmp_path / "cmp",
    )
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "cmp" / "report.json").read_text())
    assert [x["run"] for x in data["runs"]] == ["sd15", "midjourney"]
    assert data["runs"][1]["pass"] == 1


def test_manifest_supplies_order_model_and_characters(characters_root, tmp_path):
    d = tmp_path / "episode"
    d.mkdir()
    from fixtures_faces import side_by_side

    side_by_side("obama3.jpg", "biden.jpg", d / "b_duo.jpg")
    shutil.copy(FACES_DIR / "obama3.jpg", d / "a_solo.jpg")
    write_render_manifest(
        d,
        [
            {"scene": "duo", "model": "sd15", "file": "b_duo.jpg", "characters": ["obama", "biden"]},
            {"scene": "solo", "model": "sd15", "file": "a_solo.jpg", "characters": ["obama"]},
        ],
        characters={"obama": characters_root / "obama", "biden": characters_root / "biden"},
    )
    r = run("verify", d, "--backend", "dlib", "--out", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    images = json.loads((tmp_path / "rep" / "report.json").read_text())["images"]
    assert [(i["scene"], i["model"], i["order"]) for i in images] == [("duo", "sd15", 0), ("solo", "sd15", 1)]
    duo = images[0]
    assert duo["status"] == "pass" and duo["expected"] == ["obama", "biden"]
    assert {m["character"]: m["status"] for m in duo["matches"]} == {"obama": "pass", "biden": "pass"}


BAD = [
    (["verify", "{tmp}/nope", "-c", "{chars}/obama"], "no such file or folder"),
    (["verify", "{shots}", "--run", "oops", "-c", "{chars}/obama"], "expected LABEL=PATH"),
    (["verify", "{shots}", "-c", "{tmp}/ghost"], "no character here"),
    (["verify", "{shots}"], "no character to compare with"),
    (["verify", "{shots}", "-c", "{bad}"], "field 'trigger'"),
    (["character", "init", "../evil", "--refs", "{shots}", "--root", "{tmp}/c"], "not a safe file name"),
    (["character", "init", "x", "--refs", "{tmp}/nope", "--root", "{tmp}/c"], "not a folder"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[m for _, m in BAD])
def test_bad_input_is_one_line_exit_2_nothing_written(argv, message, shots, characters_root, tmp_path):
    bad = tmp_path / "badchar"
    (bad / "refs").mkdir(parents=True)
    (bad / "character.toml").write_text('name = "bad"\ntrigger = "ohwx"\n')
    out = tmp_path / "out"
    fmt = dict(tmp=tmp_path, chars=characters_root, shots=shots, bad=bad)
    r = CliRunner().invoke(cli, [a.format(**fmt) for a in argv] + (["--out", str(out)] if argv[0] == "verify" else []))
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], r.output
    assert not out.exists() and not (tmp_path / "c").exists()


def test_character_init_and_show(tmp_path):
    refs = tmp_path / "photos"
    refs.mkdir()
    for n in ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"):
        shutil.copy(FACES_DIR / n, refs / n)
    (refs / "broken.jpg").write_bytes(b"nope")
    r = run(
        "character",
        "init",
        "barack",
        "--refs",
        refs,
        "--root",
        tmp_path / "chars",
        "--trigger",
        "ohwx",
        "--class-word",
        "man",
    )
    assert r.exit_code == 0, r.output
    assert "4 reference photos" in r.output and "skipped" in r.output and "broken.jpg" in r.output
    assert sorted(p.name for p in (tmp_path / "chars" / "barack" / "refs").iterdir()) == sorted(
        ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"]
    )
    r = run("character", "show", "barack", "--root", tmp_path / "chars", "--backend", "dlib")
    assert r.exit_code == 0, r.output
    assert "trigger = ['ohwx']" in r.output and "baseline" in r.output
    outlier_lines = [ln for ln in r.output.splitlines() if "OUTLIER" in ln]
    assert len(outlier_lines) == 1 and "biden.jpg" in outlier_lines[0]
    r = run("character", "init", "barack", "--refs", refs, "--root", tmp_path / "chars")
    assert r.exit_code == 2 and "already exists" in r.output


def test_loose_image_files_form_one_run(shots, characters_root, tmp_path):
    r = run(
        "verify",
        shots / "s01.jpg",
        shots / "s02.jpg",
        "-c",
        characters_root / "obama",
        "--backend",
        "dlib",
        "--out",
        tmp_path / "loose",
    )
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "loose" / "report.json").read_text())
    assert len(data["runs"]) == 1 and data["runs"][0]["images"] == 2
    assert [Path(i["path"]).name for i in data["images"]] == ["s01.jpg", "s02.jpg"]


def test_character_toml_typo_gets_a_hint(tmp_path):
    d = tmp_path / "chars" / "typo"
    (d / "refs").mkdir(parents=True)
    (d / "character.toml").write_text('name = "typo"\ntriger = ["ohwx"]\n')
    r = CliRunner().invoke(cli, ["character", "show", "typo", "--root", str(tmp_path / "chars")])
    assert r.exit_code == 2
    assert r.output.strip() == f"Error: {d / 'character.toml'}: field 'triger': unknown field; did you mean 'trigger'?"


# -- the look profile, end to end -----------------------------------------------------------------


@pytest.fixture(scope="module")
def look_runs(tmp_path_factory) -> dict[str, Path]:
    """The two reference photos as they are, and four transforms of them, one run folder each (PNG: lossless).

    Each is cropped to 3.2 face boxes around the face first (more than the 2 boxes the look measures see, and at
    least 800 px, so dlib needs no upsampling): the same measures, a fraction of the pixels to write and detect.
    """
    from fixtures_look import BOXES, REFERENCES, transformed

    root = tmp_path_factory.mktemp("look-runs")
    out = {}
    for t in ("original", "blur", "dark", "desaturate", "grain"):
        (root / t).mkdir()
        for name in REFERENCES:
            x0, y0, x1, y1 = BOXES[name]
            cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, 1.6 * (x1 - x0)
            im = transformed(name, t)[0]
            box = (max(0, cx - half), max(0, cy - half), min(im.width, cx + half), min(im.height, cy + half))
            im.crop(tuple(round(v) for v in box)).save(root / t / f"{Path(name).stem}.png", compress_level=1)
        out[t] = root / t
    return out


def test_look_profile_per_image_and_per_run(look_runs, characters_root, tmp_path, monkeypatch):
    out = tmp_path / "rep"
    args = [a for t, d in look_runs.items() for a in ("--run", f"{t}={d}")]
    r = run("verify", *args, "-c", characters_root / "obama", "--backend", "dlib", "--out", out)
    assert r.exit_code == 0, r.output
    data = json.loads((out / "report.json").read_text())
    for img in data["images"]:  # every image: the six measures of its face
        assert set(img["look"]) >= {"smoothness", "sharpness", "noise", "saturation", "brightness", "contrast"}
        assert img["look"]["character"] == "obama" and img["look"]["face_px"] > 250
    relation = {(lk["run"], k): m["relation"] for lk in data["look"] for k, m in lk["measures"].items()}
    assert {k: v for (run_, k), v in relation.items() if run_ == "original"} == dict.fromkeys(
        ("smoothness", "sharpness", "noise", "saturation", "brightness", "contrast"), "within"
    )  # the untouched photos sit inside their own range
    assert relation[("blur", "smoothness")] == "above" and relation[("dark", "brightness")] == "below"
    assert relation[("desaturate", "saturation")] == "below" and relation[("grain", "noise")] == "above"
    statements = {lk["run"]: lk["statements"] for lk in data["look"]}
    assert statements["blur"][0].startswith("smoother than every reference photo")
    assert "look of dark against obama's photos: " in r.output and "darker than every reference photo" in r.output
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert all(float(row["look_smoothness"]) > 0 and int(row["look_face_px"]) > 250 for row in rows)
    html = (out / "report.html").read_text()
    assert html.count('<table class="look"') == 5 and html.count('<svg class="lookplot"') == 1
    # a re-verify of the unchanged folders reads faces and looks from the cache: no image is decoded
    from charkit.identity.analyze import ImageFile

    decoded = []
    real = ImageFile.load
    monkeypatch.setattr(ImageFile, "load", lambda self: decoded.append(self.path) or real(self))
    again = run(
        "verify", *args, "-c", characters_root / "obama", "--backend", "dlib", "--out", tmp_path / "again", "--json"
    )
    assert json.loads(again.stdout)["look"] == data["look"] and decoded == []
