"""One render over several machines sharing an output folder: torchrun multi-node (two "nodes" on loopback, CPU,
gloo) and ``--shard K/N`` (batch schedulers such as Slurm job arrays). Either way the manifest comes out exactly as
one machine writes it, and so do the images."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_render import model_entry

from charkit.render.lifecycle import render_storyboard

DRIVER = """
import json, os, sys
import torch
torch.set_num_threads(1)
from charkit.render.lifecycle import render_storyboard
result = render_storyboard(sys.argv[1], out=sys.argv[2], progress=False, scene_batch=2)
rank = os.environ.get("RANK", "0")
with open(os.path.join(sys.argv[3], f"rank{rank}.json"), "w") as f:
    json.dump([list(r.key) for r in result.rendered], f)
"""


def _free_port() -> int:
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    except OSError as e:  # a sandbox without loopback networking
        pytest.skip(f"cannot bind loopback for a torchrun rendezvous ({e})")


def _env() -> dict:
    root = str(Path(__file__).resolve().parents[1])
    return {
        **os.environ,
        "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "GLOO_SOCKET_IFNAME": "lo",
    }


@pytest.fixture
def shared_board(tiny_models, render_env):
    render_env.character("alice")
    scenes = [{"id": f"s{i}", "prompt": f"photo of {{alice}} man, shot {i}", "seed": 10 + i} for i in range(6)]
    data = {
        "project": "season",
        "defaults": {"model": model_entry("sd15", tiny_models("sd15"), adapters=False), "size": "32x32", "steps": 2},
        "characters": {"alice": "characters/alice"},
        "scenes": scenes,
    }
    board = render_env.storyboard(data, "season.yaml")
    single = render_storyboard(board, out=render_env.root / "single", scene_batch=2, progress=False)
    return board, single


def _same_as_single(out: Path, single) -> None:
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == json.loads(single.manifest_path.read_text())
    for rec in manifest["images"]:
        assert (out / rec["file"]).read_bytes() == (single.out_dir / rec["file"]).read_bytes()
    assert not list(out.glob(".manifest.rank*"))


def test_two_nodes_with_torchrun_render_one_manifest(shared_board, render_env):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    board, single = shared_board
    out, logs = render_env.root / "multi", render_env.root / "logs"
    logs.mkdir()
    driver = render_env.root / "driver.py"
    driver.write_text(DRIVER)
    port = _free_port()
    cmd = [torchrun, "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d"]
    cmd += [
        "--rdzv_endpoint",
        f"127.0.0.1:{port}",
        "--rdzv_id",
        "charkit-test",
        str(driver),
        str(board),
        str(out),
        str(logs),
    ]
    nodes = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    for node in nodes:
        output = node.communicate(timeout=180)[0].decode()
        assert node.returncode == 0, output[-3000:]
    shares = [json.loads((logs / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(shares) and not set(map(tuple, shares[0])) & set(map(tuple, shares[1]))  # each node its own scenes
    assert sorted(k[0] for s in shares for k in s) == [f"s{i}" for i in range(6)]
    _same_as_single(out, single)


def test_shards_into_one_folder_give_the_single_machine_manifest(shared_board, render_env):
    """--shard K/N (Slurm array jobs): each shard renders its share of the scene batches and updates manifest.json
    under its file lock; one after the other, then two at once."""
    from click.testing import CliRunner

    from charkit.cli import cli

    board, single = shared_board
    out = render_env.root / "sharded"
    first = render_storyboard(board, out=out, shard=(0, 2), scene_batch=2, progress=False)
    assert 0 < len(first.rendered) < 6
    second = render_storyboard(board, out=out, shard=(1, 2), scene_batch=2, progress=False)
    assert len(first.rendered) + len(second.rendered) == 6
    _same_as_single(out, single)
    # two shards at once: one in a subprocess, one here; the manifest lock keeps both shards' records
    both = render_env.root / "concurrent"
    cmd = [sys.executable, "-m", "charkit.render.cli", str(board), "--out", str(both), "--device", "cpu", "-q"]
    other = subprocess.Popen(cmd + ["--shard", "1/2", "--scene-batch", "2"], env=_env(), stderr=subprocess.PIPE)
    render_storyboard(board, out=both, shard=(0, 2), scene_batch=2, progress=False)
    assert other.wait(timeout=180) == 0, other.stderr.read().decode()[-2000:]
    _same_as_single(both, single)
    r = CliRunner().invoke(cli, ["render", str(board), "--shard", "2/2"])
    assert r.exit_code == 2 and "K must be 0 .. N-1" in r.output
    for extra in ([], ["--repair"]):  # with --repair the report comes after it: refused the same way
        r = CliRunner().invoke(cli, ["render", str(board), "--shard", "0/2", "--verify", *extra, "--device", "cpu"])
        assert r.exit_code == 2 and "run `charkit verify DIR` after every shard" in r.output
