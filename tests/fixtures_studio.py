"""A tiny studio project (tiny SD1.5, 64 px, 2 steps), rendered once per session; each test module gets a copy.

<root>/characters/obama/refs/        three real portraits + a re-saved copy with an XSS file name
<root>/episode.yaml                  three scenes (one best-of-2, one prompt with an XSS payload), with comments
<root>/renders/episode/              rendered by render_storyboard (noise: no_face everywhere)
<root>/training/obama-sd15/run-1/    a training_report.json as `charkit train` writes it (probe PNGs beside)
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

XSS = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=1">'
XSS_REF = 'zz<img src=x onerror="window.__pwned=1">.jpg'

STORYBOARD = """\
# The podium: a three-scene test episode.
project: Podium {xss}
output: renders/episode   # the studio and the CLI share this folder

defaults:
  model: {{family: sd15, source: "{model}"}}
  size: 64x64
  steps: 2
  seed: 7

characters:
  obama: characters/obama

scenes:
  # the opening shot
  - id: s01
    prompt: photo of {{obama}} man at a podium
    seed: 100
  - id: s02
    prompt: "{{obama}} man at a desk, {xss}"   # the prompt holds markup
    seed: 200
  - id: s03
    prompt: portrait of {{obama}} man, warm light
    candidates: 2
"""


def training_report(run_dir: Path) -> dict:
    """A finished run's training_report.json (the fields charkit.train.report.build_report writes)."""
    from PIL import Image

    from charkit.train.evaluate import CHOICE_RULE

    checkpoints = []
    for step, ident in ((2, 0.41), (4, 0.47), (6, 0.44)):
        probes = []
        for seed in (1, 2):
            rel = f"samples/step-{step:05d}/p00-s{seed}.png"
            (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 64), (step * 20, seed * 60, 90)).save(run_dir / rel)
            probes.append(
                {"prompt": "a photo of ohwx man", "seed": seed, "image": rel, "status": "pass", "similarity": ident}
            )
        checkpoints.append(
            {
                "step": step,
                "identity": ident,
                "face_rate": 1.0,
                "pass_rate": 1.0,
                "adherence": None,
                "loss": 0.1 / step,
                "checkpoint": f"checkpoints/step-{step:05d}",
                "probes": probes,
            }
        )
    return {
        "charkit_version": "0.1.0",
        "status": "done",
        "character": "obama",
        "trigger": "ohwx",
        "family": "sd15",
        "model": "tiny-sd15",
        "run": "run-1",
        "identity": {"backend": {"name": "dlib", "threshold": 0.4}, "references": 3, "baseline_mean": 0.68},
        "checkpoints": checkpoints,
        "choice": {
            "step": 4,
            "reason": "highest mean identity (0.4700) among 3 checkpoints with faces",
            "rule": CHOICE_RULE,
            "candidates": [2, 4, 6],
            "ranked": [4, 6, 2],
            "identity_measured": True,
        },
        "rule": CHOICE_RULE,
    }


@pytest.fixture(scope="session")
def studio_base(tmp_path_factory, faces_dir):
    """The rendered project, built once; copy it with :func:`studio_copy` before changing anything."""
    import json

    from charkit.families import get_family
    from charkit.render.lifecycle import render_storyboard

    base = tmp_path_factory.mktemp("studio-base")
    model = base / "tiny-sd15"
    get_family("sd15").build_tiny(model, controlnet=False, ip_adapter=False, single_file=False)
    root = base / "project"
    refs = root / "characters" / "obama" / "refs"
    refs.mkdir(parents=True)
    for name in ("obama.jpg", "obama2.jpg", "obama3.jpg"):
        shutil.copy(faces_dir / name, refs / name)
    shutil.copy(faces_dir / "obama2.jpg", refs / XSS_REF)  # a re-saved copy: rejected as a near-duplicate
    (root / "characters" / "obama" / "character.toml").write_text(
        'name = "obama"\ntrigger = ["ohwx"]\nclass_word = "man"\ndescription = "test character"\n', encoding="utf-8"
    )
    (root / "episode.yaml").write_text(STORYBOARD.format(model=model, xss=XSS.replace('"', "'")), encoding="utf-8")
    render_storyboard(root / "episode.yaml", device="cpu", verify=True, progress=False)  # = charkit render --verify
    run_dir = root / "training" / "obama-sd15" / "run-1"
    run_dir.mkdir(parents=True)
    (run_dir / "training_report.json").write_text(json.dumps(training_report(run_dir)), encoding="utf-8")
    return root


def studio_copy(base: Path, dest: Path) -> Path:
    shutil.copytree(base, dest, symlinks=True)
    return dest


@pytest.fixture
def studio_project(studio_base, tmp_path) -> Path:
    """A private copy of the rendered project."""
    return studio_copy(studio_base, tmp_path / "project")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveStudio:
    """The studio under uvicorn on a free loopback port, in a thread; ``stop()`` shuts it down cleanly."""

    def __init__(self, root: Path, **kwargs):
        import uvicorn

        from charkit.studio.actions import RenderSettings
        from charkit.studio.app import create_app

        self.port = free_port()
        self.app = create_app(root, port=self.port, settings=RenderSettings("cpu", "fp32"), **kwargs)
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        )
        self.thread = threading.Thread(target=self.server.run, name="studio-test-server", daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveStudio:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the studio did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive(), "the studio did not stop"
