"""Ctrl-C and SIGTERM on real `charkit` processes: each stops within one step, exits 130, says what was finished
and how to resume, and leaves only complete outputs."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from fixtures_faces import make_character
from PIL import Image

from charkit import interrupts
from charkit.cli import cli
from charkit.paths import sha256_file

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")

REPO = Path(__file__).resolve().parents[1]
#: a step here is a few tens of milliseconds: stopping "within one step" leaves this much for the writer and exit
EXIT_WITHIN_S = 10.0


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "charkit.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"exited {proc.returncode} before the signal:\n{out}\n{err}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail("timed out waiting for the run to get going")
        time.sleep(0.05)


def stop(proc: subprocess.Popen, sig: int) -> tuple[float, str]:
    """Send ``sig``; return (seconds until the process exited, its stderr)."""
    t0 = time.monotonic()
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the process ignored the signal for a minute")
    return time.monotonic() - t0, err


def cached_faces() -> int:
    db = Path(os.environ["CHARKIT_CACHE_DIR"]) / "faces-v1.sqlite"
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(db, timeout=1) as c:
            return c.execute("SELECT count(*) FROM faces").fetchone()[0]
    except sqlite3.Error:
        return 0


def photos(folder: Path, faces_dir: Path, n: int, *, offset: int = 0) -> Path:
    """``n`` distinct real photos (crops of the public-domain portraits): none is in the face cache yet."""
    folder.mkdir(parents=True)
    sources = [Image.open(faces_dir / f).convert("RGB") for f in ("obama.jpg", "obama2.jpg", "biden.jpg")]
    for i in range(n):
        im = sources[i % 3]
        d = 4 + 3 * i + offset
        im.crop((d, d, im.width - d, im.height - d)).save(folder / f"{i:03d}.jpg", quality=90)
    return folder


# -- the library pieces -------------------------------------------------------------------------


def test_a_stop_request_ends_a_pipeline_call_at_the_next_step(tiny_models):
    from charkit.families import get_family

    pipe = get_family("sd15").load_pipeline(tiny_models("sd15").root)
    seen = []
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the suite runs as a background job (nohup ... &)

    def count(p, step, t, kwargs):
        seen.append(step)
        if step == 1:
            interrupts.request_stop("SIGINT")  # what the first Ctrl-C does
        return kwargs

    with interrupts.handle_interrupts():
        with pytest.raises(interrupts.Interrupted):
            pipe("x", num_inference_steps=50, height=32, width=32, callback_on_step_end=interrupts.step_callback(count))
        assert interrupts.stop_requested() == "SIGINT"
    assert seen == [0, 1] and interrupts.stop_requested() is None  # the flag ends with the command
    with interrupts.handle_interrupts(), interrupts.guard(pipe.unet):  # the same through the denoiser's hook
        interrupts.request_stop("SIGTERM")
        with pytest.raises(interrupts.Interrupted):
            pipe("x", num_inference_steps=50, height=32, width=32)
        with interrupts.deferred():
            interrupts.raise_if_stopped()  # a deferred section (checkpoint + evaluation) finishes
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


# -- real processes -------------------------------------------------------------------------------


def test_sigint_during_a_long_render_keeps_only_complete_listed_images(tiny_models, tmp_path):
    """A --force rerun interrupted in its second scene: the first is re-rendered and listed, the second keeps its
    earlier complete image and manifest entry; nothing half-written is left."""
    tiny = tiny_models("sd15")
    make_character(tmp_path / "characters", "obama", ["obama.jpg", "obama2.jpg"])
    board = {
        "project": "interrupts",
        "defaults": {"model": {"source": str(tiny.root)}, "size": "64x64", "steps": 2},
        "characters": {"obama": "characters/obama"},
        "scenes": [{"id": "s01", "prompt": "{obama} man"}, {"id": "s02", "prompt": "{obama} man, night"}],
    }
    (tmp_path / "ep.yaml").write_text(yaml.safe_dump(board))
    out = tmp_path / "out"
    first = CliRunner().invoke(cli, ["render", str(tmp_path / "ep.yaml"), "--out", str(out), "-q"])
    assert first.exit_code == 0, first.output
    before = {r["scene"]: r for r in json.loads((out / "manifest.json").read_text())["images"]}
    board["scenes"][1]["steps"] = 500  # the second scene now denoises for a long time
    (tmp_path / "ep.yaml").write_text(yaml.safe_dump(board))

    first_inode = (out / "s01.png").stat().st_ino
    proc = start(["render", "ep.yaml", "--out", str(out), "--force"], tmp_path)
    # s01 written again (a new file moved into place) and listed: the run is in s02's 500 steps now
    wait_for(lambda: (out / "s01.png").stat().st_ino != first_inode, proc)
    time.sleep(1.0)  # well into s02's 500 steps
    seconds, err = stop(proc, signal.SIGINT)
    assert proc.returncode == 130, err
    assert seconds < EXIT_WITHIN_S, seconds
    last = err.strip().splitlines()[-1]
    assert last.startswith("charkit: interrupted (SIGINT): 1 of 2 scenes rendered") and "run the same command" in last
    images = {r["scene"]: r for r in json.loads((out / "manifest.json").read_text())["images"]}
    assert set(images) == {"s01", "s02"}  # the --force run lost no finished image from the manifest
    assert images["s02"] == before["s02"]  # not re-rendered: the earlier complete image stays listed
    assert all(sha256_file(out / r["file"]) == r["sha256"] for r in images.values())
    assert not [p for p in out.rglob("*") if p.name.endswith(".part")]


def test_sigterm_during_training_stops_at_a_step_and_says_how_to_resume(tiny_models, tmp_path):
    tiny = tiny_models("sd15")
    d = make_character(tmp_path / "characters", "alice", ["obama.jpg", "obama2.jpg"])
    preset = tmp_path / "p.toml"
    preset.write_text(
        'family = "sd15"\n[lora]\nrank = 4\nalpha = 4\n[train]\nsteps = 1000\nresolution = 64\nmixed_precision = "no"\n'
        '[eval]\nevery = 2\nprompts = ["a photo of {trigger} {class}"]\nseeds = [1]\nsteps = 2\n'
        "[checkpoints]\nreserve_disk_mb = 0\nmax_count = 1000\n"
    )
    run = d / "loras" / "sd15" / "r1"
    proc = start(["train", str(d), "-m", str(tiny.root), "-p", str(preset), "--run", "r1", "--device", "cpu"], tmp_path)
    wait_for(lambda: (run / "evals" / "step-000002.json").is_file(), proc)
    seconds, err = stop(proc, signal.SIGTERM)
    assert proc.returncode == 130, err
    assert seconds < EXIT_WITHIN_S, seconds
    last = err.strip().splitlines()[-1]
    assert last.startswith("charkit: interrupted (SIGTERM): stopped at step") and "--resume" in last
    from charkit.train import checkpoints as ckpt

    assert ckpt.latest_checkpoint(run) is not None  # complete checkpoints stay
    assert not (run / "best.safetensors").exists()  # nothing pretends the run finished
    assert not list((run / "checkpoints").glob(".*"))  # no half-written checkpoint folder


def test_sigint_stops_verify_and_prep_between_images_with_nothing_written(faces_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CHARKIT_CACHE_DIR", str(tmp_path / "cache"))  # rows counted here are this test's own
    images = photos(tmp_path / "imgs", faces_dir, 40)
    char = make_character(tmp_path / "characters", "obama", ["obama.jpg"])
    out = tmp_path / "report"
    proc = start(["verify", str(images), "-c", str(char), "--out", str(out), "--backend", "dlib"], tmp_path)
    wait_for(lambda: cached_faces() >= 4, proc)
    seconds, err = stop(proc, signal.SIGINT)
    assert proc.returncode == 130, err
    assert seconds < EXIT_WITHIN_S, seconds
    assert "charkit: interrupted (SIGINT): no report was written" in err
    assert not out.exists()

    alice = make_character(tmp_path / "characters", "alice", [])
    for p in photos(tmp_path / "more", faces_dir, 40, offset=1).iterdir():
        p.rename(alice / "refs" / p.name)
    start_rows = cached_faces()
    proc = start(["prep", str(alice), "--backend", "dlib"], tmp_path)
    wait_for(lambda: cached_faces() >= start_rows + 4, proc)
    seconds, err = stop(proc, signal.SIGINT)
    assert proc.returncode == 130, err
    assert seconds < EXIT_WITHIN_S, seconds
    assert "was left as it was" in err
    assert sorted(p.name for p in alice.iterdir()) == ["character.toml", "refs"]  # no dataset, no staging folder


def test_sigint_during_repair_stops_in_the_face_being_redrawn_and_keeps_the_image(tiny_models, tmp_path, monkeypatch):
    """A repair interrupted while it re-draws a face: exit 130 within seconds, the PNG and manifest as they were."""
    from fixtures_repair import portrait, swap_scene_image

    monkeypatch.setenv("CHARKIT_CACHE_DIR", str(tmp_path / "cache"))  # rows counted here are this test's own
    make_character(tmp_path / "characters", "obama", ["obama.jpg", "obama2.jpg"])
    board = {
        "project": "interrupts",
        "defaults": {"model": {"source": str(tiny_models("sd15").root)}, "size": "64x64", "steps": 2},
        "characters": {"obama": "characters/obama"},
        "scenes": [{"id": "s01", "prompt": "{obama} man"}, {"id": "s02", "prompt": "{obama} man, night"}],
    }
    (tmp_path / "ep.yaml").write_text(yaml.safe_dump(board))
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["render", str(tmp_path / "ep.yaml"), "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    for scene, flip in (("s01", False), ("s02", True)):
        swap_scene_image(out, scene, portrait("biden.jpg", flip=flip))  # the wrong person: both faces drifted
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    args = ["repair", str(out), "--backend", "dlib", "--tries", "1", "--strength", "1.0", "--steps", "3000"]
    proc = start([*args, "--resolution", "64", "--device", "cpu"], tmp_path)
    wait_for(lambda: cached_faces() >= 2, proc)  # the faces are being scored: the model loads next
    time.sleep(2.0)  # re-drawing the first face (3000 steps); a stop before it would do as well
    seconds, err = stop(proc, signal.SIGINT)
    assert proc.returncode == 130, err
    assert seconds < EXIT_WITHIN_S, seconds
    last = err.strip().splitlines()[-1]
    assert last.startswith("charkit: interrupted (SIGINT): 0 of 2 images repaired") and "run the same command" in last
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing half-done
    assert not (out / "originals").exists() and not [p for p in out.rglob("*") if p.name.endswith(".part")]


def test_ctrl_c_stops_the_studio_and_the_render_job_it_runs(tiny_models, tmp_path):
    """Ctrl-C while the studio re-renders a long scene: the job stops within a block, the server exits 0 in
    seconds, and the scene's earlier image and manifest entry are as they were."""
    import re
    import socket

    import httpx

    make_character(tmp_path / "characters", "obama", ["obama.jpg"])
    board = {
        "project": "studio-stop",
        "output": "renders/ep",
        "defaults": {"model": {"source": str(tiny_models("sd15").root)}, "size": "64x64", "steps": 2},
        "characters": {"obama": "characters/obama"},
        "scenes": [{"id": "s01", "prompt": "{obama} man", "seed": 1}],
    }
    (tmp_path / "ep.yaml").write_text(yaml.safe_dump(board))
    r = CliRunner().invoke(cli, ["render", str(tmp_path / "ep.yaml"), "-q"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "renders" / "ep"
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    board["scenes"][0].update(steps=500, size="128x128")  # the re-roll now denoises for half a minute
    (tmp_path / "ep.yaml").write_text(yaml.safe_dump(board))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = start(["studio", ".", "--port", str(port)], tmp_path)
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, headers={"Origin": base}) as client:

        def up() -> bool:
            try:
                return client.get("/").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, proc)
        eid = re.search(r'href="/episodes/(e[0-9a-f]+)"', client.get("/").text).group(1)
        page = client.get(f"/episodes/{eid}/scenes/s01").text
        token = re.search(r'csrf-token" content="([^"]+)"', page).group(1)
        found = re.search(r'name="run" value="(r[0-9a-f]+)"', page)
        assert found, page
        run = found.group(1)
        queued = client.post(
            f"/episodes/{eid}/scenes/s01/reroll", data={"run": run, "mode": "seed"}, headers={"x-csrf-token": token}
        )
        assert queued.status_code == 200, queued.text
        wait_for(lambda: client.get("/jobs.json").json()["jobs"][0]["progress"] >= 0.15, proc)  # rendering now
    time.sleep(1.5)
    seconds, err = stop(proc, signal.SIGINT)
    assert proc.returncode == 0, err
    assert seconds < EXIT_WITHIN_S, seconds
    assert err.strip().splitlines()[-1] == "charkit studio stopped"
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing half-written
