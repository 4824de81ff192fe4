"""The README's tour runs as written: every `charkit ...` line of its tested block, in order, offline, in one
process, on a copy of what the repository ships; whatever it writes is git-ignored."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from charkit.cli import cli

REPO = Path(__file__).resolve().parents[1]
MARKER = "<!-- tour: tested by tests/test_tour.py -->"
SHIPPED = ("characters", "examples", "training", "charkit/assets/demo", ".gitignore")


def tour_lines() -> list[list[str]]:
    """The argument lists of the README's tested tour block (comments stripped)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split(MARKER, 1)[1].split("```", 2)[1]
    return [shlex.split(line, comments=True)[1:] for line in block.splitlines() if line.startswith("charkit ")]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def clone(tmp_path, monkeypatch) -> Path:
    """A fresh clone's working tree (the parts the tour reads), as the working folder."""
    root = tmp_path / "clone"
    root.mkdir()
    for name in SHIPPED:
        src, dest = REPO / name, root / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest)
    monkeypatch.chdir(root)
    return root


def test_the_readme_tour_runs_as_written(clone):
    lines = tour_lines()
    assert [a[0] for a in lines][:2] == ["tiny-model", "character"] and len(lines) >= 8
    shipped = _files(clone)
    runner = CliRunner()
    outputs = []
    for args in lines:
        r = runner.invoke(cli, args)
        outputs.append(r.output)
        assert r.exit_code == 0, f"charkit {shlex.join(args)} -> {r.exit_code}\n{r.output}"
        assert "Traceback" not in r.output
    by_command = {" ".join(a[:2]): out for a, out in zip(lines, outputs)}
    # the episode rendered as shipped: three scenes, the two optional ones left out with one line each
    render = by_command["render examples/episode.yaml"]
    assert render.count("warning: skipped optional scene") == 2 and "tiny random model" in render
    manifest = json.loads((clone / "renders" / "lighthouse-ep1" / "manifest.json").read_text())
    assert [i["scene"] for i in manifest["images"]] == ["s01-arrival", "s03-meeting", "s05-letter"]
    assert {(i["width"], i["height"], i["steps"]) for i in manifest["images"]} == {(64, 96, 4)}
    runs = {r["run"]: r for r in json.loads((clone / "verify-report" / "report.json").read_text())["runs"]}
    assert (runs["photos"]["pass"], runs["photos"]["drift"]) == (4, 1)  # the real photos: biden drifts
    # the trained LoRA is registered in the tour's own character; the shipped files are untouched
    assert "[lora]" in (clone / "characters" / "alice" / "character.toml").read_text()
    assert {k: v for k, v in _files(clone).items() if k in shipped} == shipped
    if shutil.which("git"):  # everything the tour wrote is git-ignored
        subprocess.run(["git", "init", "-q"], cwd=clone, check=True)
        untracked = subprocess.run(
            ["git", "ls-files", "--others", "--exclude-standard"], cwd=clone, check=True, capture_output=True, text=True
        ).stdout.split()
        assert set(untracked) == set(shipped), sorted(set(untracked) - set(shipped))
