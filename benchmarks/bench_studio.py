"""Benchmark: the studio's episode page on a 200-scene x 3-run project, and a re-roll job against the CLI.

    python benchmarks/bench_studio.py [--scenes 200] [--runs 3] [--repeat 5] [--no-reroll]

Part 1 builds a synthetic project (small noise PNGs, a models-matrix storyboard, the manifest written
through charkit.testing.stagefiles.write_render_manifest, a real `verify` report.json) and serves it with
uvicorn on a free loopback port. It measures, over real HTTP:
  cold page   the first GET of the episode page (scan, parse, hash every take, render the page)
  warm page   the same page again (time to first byte, median) and its size: page 1 (50 scenes) and all
              200 scenes on one page (?size=200)
  thumbnails  every thumbnail of page 1, generated (cold) and from the cache (warm)

Part 2 re-rolls one scene of a tiny SD1.5 project (64 px, 2 steps) as a studio job (POST, then polling
/jobs.json until done: storyboard edit + render_storyboard + verify) and as the CLI does it
(`charkit render BOARD --scene s01 --force --verify` in a fresh process), and prints the ratio.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

ASSETS = ROOT / "charkit" / "assets" / "demo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def character(root: Path) -> Path:
    d = root / "characters" / "obama"
    (d / "refs").mkdir(parents=True)
    for name in ("obama.jpg", "obama2.jpg", "obama3.jpg"):
        shutil.copy(ASSETS / name, d / "refs" / name)
    (d / "character.toml").write_text('name = "obama"\ntrigger = ["ohwx"]\nclass_word = "man"\n', encoding="utf-8")
    return d


def synthetic_project(root: Path, scenes: int, runs: int) -> Path:
    """A storyboard of ``scenes`` scenes rendered on ``runs`` models: noise PNGs, manifest, verify report."""
    import yaml

    from charkit.identity.dlib_backend import DlibBackend
    from charkit.testing.stagefiles import write_render_manifest
    from charkit.verify import verify

    character(root)
    labels = [f"m{i}" for i in range(runs)]
    ids = [f"s{i:03d}" for i in range(scenes)]
    board = {
        "project": "bench episode",
        "output": "renders/episode",
        "defaults": {"size": "64x64", "steps": 2},
        "characters": {"obama": "characters/obama"},
        "models": [{"label": m, "family": "sd15", "source": f"models/{m}"} for m in labels],
        "scenes": [{"id": s, "prompt": f"photo of {{obama}} man, scene {s}", "seed": i} for i, s in enumerate(ids)],
    }
    (root / "episode.yaml").write_text(yaml.safe_dump(board, sort_keys=False), encoding="utf-8")
    out = root / "renders" / "episode"
    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = []
    for i, s in enumerate(ids):
        for m in labels:
            f = f"{s}__{m}.png"
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(out / f)
            images.append(
                {
                    "scene": s,
                    "model": m,
                    "file": f,
                    "characters": ["obama"],
                    "prompt": board["scenes"][i]["prompt"],
                    "seed": i,
                }
            )
    write_render_manifest(out, images, characters={"obama": "../../characters/obama"}, project="bench episode")
    data = json.loads((out / "manifest.json").read_text())
    data["storyboard"] = "../../episode.yaml"
    data["models"] = [{"label": m, "family": "sd15", "source": f"models/{m}"} for m in labels]
    (out / "manifest.json").write_text(json.dumps(data), encoding="utf-8")
    verify([out], backend=DlibBackend(), out=out)
    return root


class Server:
    def __init__(self, root: Path):
        import uvicorn

        from charkit.studio.actions import RenderSettings
        from charkit.studio.app import create_app

        self.port = free_port()
        self.app = create_app(root, port=self.port, settings=RenderSettings("cpu", "fp32"))
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.cookies: dict[str, str] = {}

    def __enter__(self):
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """(status, time to first byte, total time, body) over a fresh connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        h = {"Host": f"127.0.0.1:{self.port}"}
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        h.update(headers or {})
        t0 = time.perf_counter()
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        first = r.read(1)
        ttfb = time.perf_counter() - t0
        data = first + r.read()
        total = time.perf_counter() - t0
        for v in r.headers.get_all("set-cookie") or []:
            k, _, rest = v.partition("=")
            self.cookies[k] = rest.split(";")[0]
        conn.close()
        return r.status, ttfb, total, data


def bench_page(scenes: int, runs: int, repeat: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["CHARKIT_CACHE_DIR"] = str(tmp / "cache")
        t0 = time.perf_counter()
        root = synthetic_project(tmp / "project", scenes, runs)
        build = time.perf_counter() - t0
        with Server(root) as srv:
            status, _, _, index = srv.request("GET", "/")
            eid = re.search(rb'href="/episodes/(e[0-9a-f]{12})"', index).group(1).decode()
            status, cold_ttfb, cold_total, page1 = srv.request("GET", f"/episodes/{eid}")
            assert status == 200
            warm = [srv.request("GET", f"/episodes/{eid}")[1] for _ in range(repeat)]
            _, all_ttfb, _, whole = srv.request("GET", f"/episodes/{eid}?size={scenes}")
            drift_ttfb = srv.request("GET", f"/episodes/{eid}?drift=1")[1]
            thumbs = re.findall(rb'src="(/thumb/[A-Za-z0-9_-]{24})"', page1)
            t0 = time.perf_counter()
            thumb_bytes = sum(len(srv.request("GET", t.decode())[3]) for t in thumbs)
            cold_thumbs = time.perf_counter() - t0
            t0 = time.perf_counter()
            for t in thumbs:
                srv.request("GET", t.decode())
            warm_thumbs = time.perf_counter() - t0
    return {
        "project": f"{scenes} scenes x {runs} runs ({scenes * runs} PNGs, report.json) built in {build:.1f} s",
        "cold_ttfb_ms": round(cold_ttfb * 1000, 1),
        "warm_ttfb_ms_median": round(statistics.median(warm) * 1000, 1),
        "drift_filter_ttfb_ms": round(drift_ttfb * 1000, 1),
        "page1_bytes": len(page1),
        "page1_scenes": page1.count(b'class="scene-row'),
        "one_page_all_scenes_ttfb_ms": round(all_ttfb * 1000, 1),
        "one_page_all_scenes_bytes": len(whole),
        "page1_thumbnails": len(thumbs),
        "thumbnail_bytes": thumb_bytes,
        "thumbnails_cold_ms_each": round(cold_thumbs / max(1, len(thumbs)) * 1000, 2),
        "thumbnails_warm_ms_each": round(warm_thumbs / max(1, len(thumbs)) * 1000, 2),
    }


REROLL_BOARD = """\
project: bench reroll
output: renders/episode
defaults:
  model: {{family: sd15, source: "{model}"}}
  size: 64x64
  steps: 2
characters:
  obama: characters/obama
scenes:
  - id: s01
    prompt: photo of {{obama}} man
    seed: 1
"""


def bench_reroll(repeat: int) -> dict:
    from charkit.families import get_family
    from charkit.render.lifecycle import render_storyboard

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["CHARKIT_CACHE_DIR"] = str(tmp / "cache")
        model = tmp / "tiny-sd15"
        get_family("sd15").build_tiny(model, controlnet=False, ip_adapter=False, single_file=False)
        root = tmp / "project"
        root.mkdir()
        character(root)
        board = root / "episode.yaml"
        board.write_text(REROLL_BOARD.format(model=model), encoding="utf-8")
        render_storyboard(board, device="cpu", verify=True, progress=False)
        studio, cli, inproc = [], [], []
        with Server(root) as srv:
            _, _, _, index = srv.request("GET", "/")
            eid = re.search(rb'href="/episodes/(e[0-9a-f]{12})"', index).group(1).decode()
            scene = srv.request("GET", f"/episodes/{eid}/scenes/s01")[3]
            run = re.search(rb'name="run" value="(r[0-9a-f]{12})"', scene).group(1).decode()
            csrf = srv.cookies[f"charkit_csrf_{srv.port}"]
            for _ in range(repeat):
                body = f"run={run}&mode=seed".encode()
                t0 = time.perf_counter()
                status, _, _, data = srv.request(
                    "POST",
                    f"/episodes/{eid}/scenes/s01/reroll",
                    body,
                    {
                        "Origin": f"http://127.0.0.1:{srv.port}",
                        "X-CSRF-Token": csrf,
                        "Content-Type": "application/x-www-form-urlencoded",
                    },
                )
                assert status == 200, data
                job = json.loads(data)["job"]["id"]
                while True:
                    jobs = {j["id"]: j for j in json.loads(srv.request("GET", "/jobs.json")[3])["jobs"]}
                    if jobs[job]["state"] in ("done", "failed"):
                        break
                    time.sleep(0.02)
                assert jobs[job]["state"] == "done", jobs[job]
                studio.append(time.perf_counter() - t0)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "charkit", "render", str(board), "--scene", "s01", "--force", "--verify"]
        cmd += ["--device", "cpu", "-q"]
        for _ in range(repeat):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, capture_output=True)
            cli.append(time.perf_counter() - t0)
        for _ in range(repeat):
            t0 = time.perf_counter()
            render_storyboard(board, scenes=["s01"], force=True, verify=True, device="cpu", progress=False)
            inproc.append(time.perf_counter() - t0)
    s, c, i = (statistics.median(x) for x in (studio, cli, inproc))
    return {
        "studio_job_s_median": round(s, 3),
        "cli_process_s_median": round(c, 3),
        "in_process_render_verify_s_median": round(i, 3),
        "ratio_studio_over_cli": round(s / c, 3),
        "ratio_studio_over_in_process": round(s / i, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-reroll", action="store_true", help="Skip part 2 (the tiny-model re-roll).")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    results = {"episode_page": bench_page(args.scenes, args.runs, args.repeat)}
    if not args.no_reroll:
        results["reroll"] = bench_reroll(max(1, min(args.repeat, 3)))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
