"""`charkit demo`: the whole loop offline on tiny models, through the click command."""

from __future__ import annotations

import json

import tomllib
from click.testing import CliRunner

from charkit.cli import cli


def test_demo_runs_the_whole_loop(tmp_path):
    out = tmp_path / "demo"
    r = CliRunner().invoke(
        cli, ["demo", "--out", str(out), "--steps", "2", "--candidates", "2"], catch_exceptions=False
    )
    assert r.exit_code == 0, r.output
    # prep rejected the re-saved copy as a near-duplicate, the rest was kept
    assert "prep: kept 2 of 3" in r.output and "near_duplicate" in r.output
    # train: a LoRA exported in both formats and registered for sd15 in the demo character
    spec = tomllib.loads((out / "characters" / "obama" / "character.toml").read_text())
    lora = out / "characters" / "obama" / spec["lora"]["sd15"]
    assert lora.is_file() and lora.with_name("best.kohya.safetensors").is_file()
    # render: 3 scenes x 2 models, with the LoRA on the sd15 scenes
    manifest = json.loads((out / "renders" / "manifest.json").read_text())
    assert [(i["scene"], i["model"]) for i in manifest["images"]] == [
        (s, m) for s in ("s01-podium", "s02-walk", "s03-office") for m in ("tiny-sd15", "tiny-sdxl")
    ]
    assert all((out / "renders" / i["file"]).is_file() and len(i["candidates"]) == 2 for i in manifest["images"])
    assert {i["model"]: bool(i["lora"]) for i in manifest["images"]} == {"tiny-sd15": True, "tiny-sdxl": False}
    # verify: one comparison report; noise has no face, the real photos pass and drift
    report = json.loads((out / "report" / "report.json").read_text())
    runs = {x["run"]: x for x in report["runs"]}
    assert runs["renders/tiny-sd15"]["no_face"] == 3 and runs["renders/tiny-sdxl"]["no_face"] == 3
    assert (runs["external-photos"]["pass"], runs["external-photos"]["drift"], runs["external-photos"]["no_face"]) == (
        1,
        1,
        1,
    )
    assert (out / "report" / "report.html").is_file()
    # the closing summary table and the plain explanation
    assert "external-photos" in r.output and "draw noise" in r.output and "report.html" in r.output
