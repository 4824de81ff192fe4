"""Several face models at once, evaluator independence, and the summaries that name causes (real photos).

dlib and sface score every face together: each backend's similarity per face, one combined decision,
disagreements flagged in report.json, report.csv, report.html and the terminal; a model that
conditioned an image (IP-Adapter FaceID: insightface) does not judge it unless the user insists.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from face_sets import HARD_VARIANTS, VARIANTS
from fixtures_faces import FACES_DIR, make_character, no_face_photo
from PIL import Image

from charkit.cli import cli
from charkit.errors import CharkitError
from charkit.identity import BackendPanel, build_profile, get_scorer, independent_scorer, score_image
from charkit.testing.stagefiles import write_render_manifest


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _save(im: Image.Image, path: Path) -> Path:
    im.convert("RGB").save(path, quality=95)
    return path


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    """The held-out photo, an impostor, a sigma-12 blur (the backends disagree), an eighth-size copy (too small for
    sface), a photo without a face and an unreadable file."""
    d = tmp_path_factory.mktemp("shots")
    held_out = Image.open(FACES_DIR / "obama3.jpg").convert("RGB")
    shutil.copy(FACES_DIR / "obama3.jpg", d / "s01.jpg")
    shutil.copy(FACES_DIR / "biden.jpg", d / "s02.jpg")
    _save(HARD_VARIANTS["blur12"](held_out), d / "s03.jpg")
    _save(HARD_VARIANTS["eighth"](held_out), d / "s04.png")
    no_face_photo(d / "s05.jpg")
    (d / "s06.png").write_bytes(b"not an image")
    return d


@pytest.fixture(scope="module")
def two_backend_report(shots, characters_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    r = run("verify", shots, "-c", characters_root / "obama", "--out", out)  # the default: auto = dlib + sface
    assert r.exit_code == 0, r.output
    return out, r.output


def test_two_backends_give_both_scores_per_face(two_backend_report):
    out, _ = two_backend_report
    data = json.loads((out / "report.json").read_text())
    assert data["backend"]["name"] == "dlib+sface" and data["backend"]["threshold"] == 0.0
    assert [b["name"] for b in data["backends"]] == ["dlib", "sface"] and "every counted backend" in data[
        "combined_rule"
    ]
    by = {Path(i["path"]).name: i for i in data["images"]}
    assert {n: i["status"] for n, i in by.items()} == {
        "s01.jpg": "pass",
        "s02.jpg": "drift",
        "s03.jpg": "drift",  # dlib 0.374 drift, sface 0.443 pass: a disagreement is a drift
        "s04.png": "pass",  # sface: face_too_small is no opinion; dlib passes
        "s05.jpg": "no_face",
        "s06.png": "error",
    }
    for name in ("s01.jpg", "s02.jpg", "s03.jpg"):
        (m,) = by[name]["matches"]
        assert set(m["scores"]) == {"dlib", "sface"} and all(s["similarity"] is not None for s in m["scores"].values())
        assert by[name]["scored_by"] == ["dlib", "sface"] and by[name]["conditioned_by"] is None
    assert [n for n, i in by.items() if i["disagree"]] == ["s03.jpg"]
    blur = by["s03.jpg"]["matches"][0]
    assert (blur["scores"]["dlib"]["status"], blur["scores"]["sface"]["status"], blur["agree"]) == (
        "drift",
        "pass",
        False,
    )
    small = by["s04.png"]
    assert small["matches"][0]["scores"]["sface"]["status"] == "missing" and small["matches"][0]["agree"] is None
    assert any(n.startswith("sface: face 0 not scored: face_too_small") for n in small["notes"])
    (summary,) = data["runs"]
    assert (summary["compared"], summary["disagreements"], summary["agreement"]) == (3, 1, 0.6667)
    assert summary["by_backend"]["sface"] == {"pass": 2, "drift": 1, "no_face": 2, "error": 1}
    assert summary["by_backend"]["dlib"] == {"pass": 2, "drift": 2, "no_face": 1, "error": 1}


def test_disagreements_show_in_csv_html_and_terminal(two_backend_report):
    out, output = two_backend_report
    rows = {Path(r["path"]).name: r for r in csv.DictReader((out / "report.csv").open())}
    assert rows["s03.jpg"]["agree"] == "no" and rows["s01.jpg"]["agree"] == "yes"
    assert (rows["s03.jpg"]["dlib_status"], rows["s03.jpg"]["sface_status"]) == ("drift", "pass")
    assert float(rows["s03.jpg"]["dlib_similarity"]) < 0.4 < float(rows["s03.jpg"]["sface_similarity"])
    assert rows["s04.png"]["sface_status"] == "no_face" and rows["s05.jpg"]["dlib_status"] == "no_face"
    assert rows["s01.jpg"]["scored_by"] == "dlib;sface"
    html = (out / "report.html").read_text()
    table = html[html.index('<section id="disagreements">') : html.index('<section id="plot">')]
    assert "s03.jpg" in table and "s01.jpg" not in table
    assert "scored by dlib, sface" in html and '<span class="backend">sface</span>' in html
    assert "backends agree on 2 of 3 faces (67%):" in output
    assert "disagree: " in output and "s03.jpg: obama: dlib drift 0.37" in output and "sface pass 0.44" in output
    assert "error: " in output and "s06.png: not a readable image" in output


def test_a_conditioning_model_is_not_counted_unless_allowed(shots, characters_root, face_cache):
    """Any backend that conditioned an image (here: sface, standing in for insightface ArcFace) leaves its decision."""
    from charkit.verify import lifecycle as vl

    panel = get_scorer(["dlib", "sface"])
    for allow in (False, True):
        inputs = vl.check_inputs([shots / "s03.jpg"], None, [characters_root / "obama"])
        inputs.jobs[0].conditioned_by = "sface"
        profiles = vl.load_profiles(inputs, panel, cache=face_cache, threshold=None)
        (s,), _ = vl.score(inputs, profiles, panel, cache=face_cache, allow_same_evaluator=allow, look=False)
        (m,) = s.matches
        assert m.scores["sface"].independent is False and s.scores["sface"].independent is False
        if allow:
            assert s.scored_by == ["dlib", "sface"] and m.agree is False
        else:  # dlib alone decides; sface's pass is recorded, not counted
            assert s.scored_by == ["dlib"] and m.agree is None and m.scores["sface"].status == "pass"
            assert "sface: not counted (it conditioned this image; --allow-same-evaluator counts it)" in s.notes
        assert s.status == "drift"


def test_faceid_images_are_not_scored_by_insightface_alone(marker_characters, fake_face_pack, tmp_path):
    from charkit.testing.fake_insightface import draw_marker_image

    d = tmp_path / "episode"
    d.mkdir()
    draw_marker_image((480, 360), [(240, 180, 120, 0)]).save(d / "s01.png")
    face = {"mode": "face", "scale": 0.7, "character": "alice"}
    write_render_manifest(
        d,
        [{"scene": "s01", "file": "s01.png", "characters": ["alice"], "ip_adapter": face}],
        characters={"alice": marker_characters / "alice"},
    )
    args = ["verify", d, "--backend", "insightface", "--face-models", fake_face_pack, "--out", tmp_path / "out"]
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and not (tmp_path / "out").exists()
    assert "were conditioned with insightface ArcFace embeddings" in r.output and "--allow-same-evaluator" in r.output
    r = run(*args, "--allow-same-evaluator", "--json")
    data = json.loads(r.stdout)
    (img,) = data["images"]
    assert data["allow_same_evaluator"] and img["conditioned_by"] == "insightface" and img["status"] == "pass"
    assert img["scores"]["insightface"]["independent"] is False
    assert "--allow-same-evaluator: a model that conditioned" in (tmp_path / "out" / "report.html").read_text()


def test_render_scores_a_faceid_run_with_another_model(dlib_backend, fake_face_pack, tmp_path):
    """render's plan drops insightface from the scorer of a run it conditions (FaceID), or refuses it alone."""
    from charkit.render.plan import plan_backends

    def plan(*names, allow=False):
        faceid = SimpleNamespace(ip=SimpleNamespace(mode="face"), scored=True)
        board = SimpleNamespace(
            identity=SimpleNamespace(backend="dlib", face_models=str(fake_face_pack), threshold=None),
            resolve=lambda p: p,
            label="episode.yaml",
        )
        options = SimpleNamespace(face_models=None, backend=names, verify=False, allow_same_evaluator=allow)
        p = SimpleNamespace(
            storyboard=board, options=options, jobs=[faceid], scoring_backend=None, faceid_backend=None, warnings=[]
        )
        plan_backends(p)
        return p.scoring_backend

    assert plan("insightface", "dlib").info.name == "dlib"  # a panel of two loses the conditioning model
    assert isinstance(plan("insightface", "dlib", allow=True), BackendPanel)
    with pytest.raises(CharkitError, match="conditioned with insightface ArcFace embeddings.*--allow-same-evaluator"):
        plan("insightface")
    assert plan("insightface", allow=True).info.name == "insightface"
    assert independent_scorer(dlib_backend, "insightface") is dlib_backend


# -- best-of-N and checkpoints rank by the combined score ---------------------------------------------


@pytest.fixture(scope="module")
def panel_profile(characters_root, face_cache):
    panel = get_scorer(["dlib", "sface"])
    refs = sorted((characters_root / "obama" / "refs").iterdir())
    return panel, build_profile("obama", refs, panel, cache=face_cache)


def _candidates():
    held_out = Image.open(FACES_DIR / "obama3.jpg").convert("RGB")
    return [
        Image.open(FACES_DIR / "biden.jpg").convert("RGB"),
        VARIANTS["blur4"](held_out),
        held_out,
        HARD_VARIANTS["blur12"](held_out),
    ]


def test_best_of_n_keeps_the_best_combined_score(panel_profile):
    from charkit.render.candidates import Candidate, select_best
    from charkit.render.lifecycle import score_candidates

    panel, profile = panel_profile
    candidates = [Candidate(seed=i, image=im) for i, im in enumerate(_candidates())]
    ctx = SimpleNamespace(
        plan=SimpleNamespace(scoring_backend=panel), profile=lambda n: profile, options=SimpleNamespace(verify=False)
    )
    assert score_candidates(candidates, SimpleNamespace(characters=["obama"], scored=True), ctx)
    assert [c.status for c in candidates] == ["drift", "pass", "pass", "drift"]
    sims = [c.similarity for c in candidates]
    assert sims[0] < 0 < sims[1] and sims[2] > sims[3]
    assert select_best(candidates).index == max(range(4), key=lambda i: sims[i])
    assert select_best(candidates).index in (1, 2)  # a clear photo of him, never the impostor or the heavy blur


def test_checkpoint_choice_ranks_by_the_combined_score(panel_profile):
    from charkit.train.evaluate import CheckpointScore, ProbeSpec, choose_checkpoint, score_probes, summarize

    panel, profile = panel_profile
    imgs = _candidates()
    spec = ProbeSpec(index=0, prompt="a photo of ohwx man", text="a photo of man", seed=1)
    early = summarize(100, score_probes([imgs[0], imgs[3]], [spec, spec], ["a", "b"], profile=profile, backend=panel))
    late = summarize(200, score_probes([imgs[1], imgs[2]], [spec, spec], ["c", "d"], profile=profile, backend=panel))
    assert isinstance(early, CheckpointScore) and early.identity < 0 < late.identity
    assert choose_checkpoint([early, late]).step == 200


# -- summaries that name causes (issue #9, item 8) ------------------------------------------------------


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict[str, Path]:
    """Folders of one kind of image each."""
    root = tmp_path_factory.mktemp("single")
    out = {}
    for name, make in {
        "pass": lambda p: shutil.copy(FACES_DIR / "obama3.jpg", p / "a.jpg"),
        "drift": lambda p: shutil.copy(FACES_DIR / "biden.jpg", p / "a.jpg"),
        "no_face": lambda p: no_face_photo(p / "a.jpg"),
        "error": lambda p: (p / "a.png").write_bytes(b"\x89PNG broken"),
    }.items():
        (root / name).mkdir()
        make(root / name)
        out[name] = root / name
    return out


#: (folder, characters, extra options, exit code, what the --fail-on-drift line says)
FAIL_CASES = [
    ("pass", ["obama"], [], 0, None),
    ("drift", ["obama"], [], 1, "1 drift"),
    ("drift", ["obama"], ["--tolerate", "missing", "--tolerate", "no_face", "--tolerate", "error"], 1, "1 drift"),
    ("no_face", ["obama"], [], 1, "1 no_face (--tolerate no_face to accept those)"),
    ("no_face", ["obama"], ["--tolerate", "no_face"], 0, None),
    ("error", ["obama"], [], 1, "1 error (--tolerate error to accept those)"),
    ("error", ["obama"], ["--tolerate", "error"], 0, None),
    ("pass", ["obama", "biden"], [], 1, "1 missing (--tolerate missing to accept those)"),  # one face, two characters
    ("pass", ["obama", "biden"], ["--tolerate", "missing"], 0, None),
]


@pytest.mark.parametrize("folder, chars, extra, code, line", FAIL_CASES)
def test_fail_on_drift_fails_on_every_cause_unless_tolerated(
    folder, chars, extra, code, line, single, characters_root, tmp_path
):
    args = ["verify", single[folder], "--backend", "dlib", "--out", tmp_path / "o", "--fail-on-drift", *extra]
    for c in chars:
        args += ["-c", characters_root / c]
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == code, r.output
    if line:
        assert r.stderr.strip().splitlines()[-1] == f"--fail-on-drift: {line}"


def test_summary_counts_per_character_and_names_the_error_files(single, characters_root, tmp_path):
    r = run(
        "verify",
        "--run", f"a={single['pass']}", "--run", f"b={single['error']}", "--run", f"c={single['no_face']}",
        "-c", characters_root / "obama", "-c", characters_root / "biden",
        "--backend", "dlib", "--out", tmp_path / "o",
    )  # fmt: skip
    lines = r.output.splitlines()
    assert lines[0].split() == [
        "run",
        "character",
        "images",
        "pass",
        "drift",
        "missing",
        "no_face",
        "error",
        "mean",
        "sim",
        "min",
        "sim",
    ]
    rows = {tuple(ln.split()[:2]): ln.split()[2:8] for ln in lines[1:7]}
    assert rows[("a", "obama")] == ["1", "1", "0", "0", "0", "0"]
    assert rows[("a", "biden")] == ["1", "0", "0", "1", "0", "0"]  # the observed bug: it said "drift"
    assert rows[("b", "obama")] == ["1", "0", "0", "0", "0", "1"] and rows[("c", "biden")] == [
        "1",
        "0",
        "0",
        "0",
        "1",
        "0",
    ]
    assert f"error: {single['error'] / 'a.png'}: not a readable image (unknown or corrupt format)" in lines


THRESHOLDS = [
    (["--threshold", "nan"], "--threshold nan: not a usable threshold for dlib"),
    (
        ["--threshold", "5"],
        "--threshold 5.0: not a usable threshold for dlib (a same-person threshold lies strictly between 0 and 1",
    ),
    (["--threshold", "-1"], "--threshold -1.0: not a usable threshold for dlib"),
    (["--threshold", "inf"], "--threshold inf: not a usable threshold"),
    (["--threshold", "high"], "'high': expected a number such as 0.45, or BACKEND=NUMBER"),
    (["--backend", "sface", "--threshold", "sface=1"], "--threshold 1.0: not a usable threshold for sface"),
    (
        ["--threshold", "sface=0.5"],
        "sface is not one of the scoring backends (dlib); name one of them, or add --backend sface",
    ),
    (["--threshold", "0.4", "--threshold", "0.5"], "given twice without a backend name"),
]


@pytest.mark.parametrize("extra, message", THRESHOLDS, ids=[" ".join(e) for e, _ in THRESHOLDS])
def test_bad_threshold_is_one_line(extra, message, single, characters_root, tmp_path):
    backend = [] if "--backend" in extra else ["--backend", "dlib"]
    args = ["verify", single["pass"], "-c", characters_root / "obama", *backend, *extra, "--out", tmp_path / "o"]
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and message in r.output, r.output
    assert not (tmp_path / "o").exists()


def test_named_thresholds_apply_to_their_backend(single, characters_root, tmp_path):
    r = run("verify", single["pass"], "-c", characters_root / "obama", "--threshold", "sface=0.45", "--threshold", "0.5",
            "--out", tmp_path / "o", "--json")  # fmt: skip
    data = json.loads(r.stdout)
    assert {b["name"]: b["threshold"] for b in data["backends"]} == {"dlib": 0.5, "sface": 0.45}


def test_render_summary_counts_scenes_without_a_face(tiny_models, render_env):
    from fixtures_render import model_entry

    from charkit.render.cli import render

    render_env.character("alice")
    board = render_env.storyboard(
        {
            "project": "noise",
            "output": "out",
            "characters": {"alice": "characters/alice"},
            "identity": {"backend": ["dlib", "sface"]},  # best-of-N by the combined score
            "defaults": {
                "model": model_entry("sd15", tiny_models("sd15"), adapters=False),
                "size": {"width": 32, "height": 32},
                "steps": 1,
            },
            "scenes": [{"id": f"s{i}", "prompt": "photo of {alice}", "candidates": 2} for i in (1, 2)],
        }
    )
    r = CliRunner().invoke(render, [str(board), "--quiet"])
    assert r.exit_code == 0, r.output
    assert r.output.rstrip().endswith("; 2 scene(s) showed no face")  # tiny random models draw noise
    manifest = json.loads((board.parent / "out" / "manifest.json").read_text())
    assert [i["identity"] for i in manifest["images"]] == [
        {"similarity": None, "status": "no_face", "backend": "dlib+sface"}
    ] * 2


def test_studio_lists_each_backend_of_a_panel_report(two_backend_report):
    from charkit.stagefiles import VerifyReportFile, read_stage_file
    from charkit.studio.project import _scores_of

    out, _ = two_backend_report
    report = read_stage_file(out / "report.json", VerifyReportFile)
    blur = next(i for i in report.images if i.path.endswith("s03.jpg"))
    assert [(s.backend, s.status) for s in _scores_of(blur, report.backend.name, "r")] == [
        ("dlib", "drift"),
        ("sface", "pass"),
    ]


def test_character_show_explains_a_single_reference(characters_root):
    r = run("character", "show", "biden", "--root", characters_root)
    assert r.exit_code == 0, r.output
    assert "nan" not in r.output
    assert r.output.count("baseline: none: the leave-one-out baseline compares each reference with the others") == 2
    assert "(only reference: no other photo to compare with)" in r.output and "references (sface)" in r.output


def test_calibrate_two_backends_and_too_few_pairs(tmp_path):
    make_character(tmp_path, "obama", ["obama.jpg", "obama2.jpg"])
    make_character(tmp_path, "biden", ["biden.jpg"])
    r = run("calibrate", "-c", tmp_path / "obama", "-c", tmp_path / "biden", "--json")
    data = json.loads(r.stdout)
    assert [c["backend"]["name"] for c in data["calibrations"]] == ["dlib", "sface"]
    for c in data["calibrations"]:
        assert (c["same"]["pairs"], c["different"]["pairs"]) == (1, 2)
        assert c["suggested_threshold"] is None and not c["enough_pairs"] and "too few pairs" in c["note"]
    assert data["agreement"] == {"backends": ["dlib", "sface"], "pairs": 3, "agree": 3, "rate": 1.0}
    text = run("calibrate", "-c", tmp_path / "obama", "-c", tmp_path / "biden", "--backend", "dlib").output
    assert "1 pairs" in text and "too few pairs to suggest a threshold (1 same-person, 2 different-person" in text
    assert "suggested --threshold" not in text


def test_two_character_scene_faces_line_up_across_backends(characters_root, face_cache, tmp_path):
    from fixtures_faces import side_by_side

    from charkit.character import load_character
    from charkit.identity import profile_for_character

    panel = get_scorer("auto")
    profiles = [
        profile_for_character(load_character(characters_root / n), panel, cache=face_cache) for n in ("obama", "biden")
    ]
    s = score_image(side_by_side("obama3.jpg", "biden.jpg", tmp_path / "duo.jpg"), profiles, panel, left_to_right=True)
    assert s.status == "pass" and len(s.faces) == 2 and not s.disagree
    obama, biden = s.matches
    assert {b.face for b in obama.scores.values()} == {obama.face} and {b.face for b in biden.scores.values()} == {
        biden.face
    }
    assert (
        obama.face != biden.face and s.faces[obama.face].box[0] < s.faces[biden.face].box[0]
    )  # declared left to right


SCORER_ERRORS = [
    (
        lambda: get_scorer(["dlib", "magic"]),
        "--backend 'magic': unknown face backend; choose one of auto, dlib, sface, insightface",
    ),
    (lambda: get_scorer("dlib", threshold={"sface": 0.5}), "sface is not one of the scoring backends (dlib)"),
    (lambda: get_scorer("sface", threshold=1.5), "--threshold 1.5: not a usable threshold for sface"),
]


@pytest.mark.parametrize("call, message", SCORER_ERRORS, ids=[m[:30] for _, m in SCORER_ERRORS])
def test_scorer_errors_are_one_line(call, message):
    with pytest.raises(CharkitError) as e:
        call()
    assert message in str(e.value) and "\n" not in str(e.value)


def test_auto_is_the_offline_pair_and_names_are_deduplicated():
    from charkit.identity import scorer_names

    assert scorer_names("auto") == ("dlib", "sface") and scorer_names(["sface", "auto", "sface"]) == ("sface", "dlib")
    assert get_scorer(["dlib", "dlib"]).info.name == "dlib"  # one backend named twice is that backend
    panel = get_scorer("auto")
    assert panel.info.name == "dlib+sface" and panel.info.threshold == 0.0 and panel.info.dim == 0
    assert [i.name for i in panel.infos] == ["dlib", "sface"]


def test_render_verify_with_a_panel_and_a_storyboard_threshold(shots, characters_root, face_cache):
    from charkit.verify import verify

    panel = get_scorer(["dlib", "sface"], threshold=0.45)  # as render builds it from identity.threshold
    report = verify(
        [shots / "s01.jpg"], characters=[characters_root / "obama"], backend=panel, threshold=0.45, cache=face_cache
    )
    assert [b.threshold for b in report.members] == [0.45, 0.45] and report.threshold == 0.0
    with pytest.raises(CharkitError, match="a panel's thresholds are its backends'"):
        verify(
            [shots / "s01.jpg"], characters=[characters_root / "obama"], backend=panel, threshold=0.5, cache=face_cache
        )
