"""charkit studio without a browser: every route and every refusal through FastAPI's TestClient, on a
tiny-model project (tiny SD1.5, 64 px, 2 steps), plus the pieces it stands on (storyboard round-trip edits,
the manifest lock, locked takes in render, the job queue, file ids, the CLI)."""

from __future__ import annotations

import difflib
import json
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from fixtures_studio import XSS, XSS_REF

from charkit.cli import cli
from charkit.errors import CharkitError
from charkit.render.manifest import MANIFEST, read_records, update_manifest
from charkit.stagefiles import ImageRecord, RenderManifest, read_stage_file
from charkit.studio.actions import RenderSettings
from charkit.studio.app import create_app
from charkit.studio.files import FileIndex
from charkit.studio.jobs import JobQueue
from charkit.studio.storyboard_edit import edit_scene

PORT = 8765
BASE = f"http://127.0.0.1:{PORT}"


class Studio:
    """A TestClient that sends what the studio's own page sends: its Origin and the CSRF header."""

    def __init__(self, root: Path, **kwargs):
        self.root = root
        self.app = create_app(root, port=PORT, settings=RenderSettings("cpu", "fp32"), **kwargs)
        self.client = TestClient(self.app, base_url=BASE, raise_server_exceptions=False)

    def __enter__(self):
        self.client.__enter__()
        self.get("/")  # sets the CSRF cookie
        return self

    def __exit__(self, *exc):
        self.client.__exit__(*exc)

    @property
    def jobs(self) -> JobQueue:
        return self.app.state.studio.jobs

    def get(self, path: str, **kw):
        return self.client.get(path, **kw)

    def post(self, path: str, data=None, files=None, headers=None):
        h = {"Origin": BASE, "X-CSRF-Token": self.client.cookies.get(f"charkit_csrf_{PORT}", "")}
        h.update(headers or {})
        return self.client.post(path, data=data, files=files, headers=h)

    def episode_id(self) -> str:
        return re.search(r'href="/episodes/(e[0-9a-f]{12})"', self.get("/").text).group(1)

    def run_id(self, eid: str, label: str = "sd15") -> str:
        page = self.get(f"/episodes/{eid}/scenes/s01").text
        return re.search(r'<section class="take" data-run="(r[0-9a-f]{12})">\s*<h2>' + re.escape(label), page).group(1)

    def finish(self, response) -> dict:
        assert response.status_code == 200, response.text
        job = self.jobs.wait(response.json()["job"]["id"], timeout=120)
        return job.to_dict()


def manifest(root: Path) -> RenderManifest:
    return read_stage_file(root / "renders" / "episode" / MANIFEST, RenderManifest)


def png(root: Path, scene: str) -> bytes:
    return (root / "renders" / "episode" / f"{scene}.png").read_bytes()


# ------------------------------------------------------------------------------------------- pages


def test_every_page_renders_escaped(studio_project):
    with Studio(studio_project) as s:
        index = s.get("/")
        assert index.status_code == 200 and "Podium" in index.text and "obama" in index.text
        eid = s.episode_id()
        ep = s.get(f"/episodes/{eid}")
        assert ep.status_code == 200
        assert re.findall(r'data-scene="(s\d+)"', ep.text) == ["s01", "s02", "s03"]
        assert re.findall(r'data-badge="(\w+)"', ep.text) == ["no_face"] * 3  # tiny models draw noise
        assert "dlib" in ep.text  # the render's --verify style report: per-backend scores
        # user text is text: the XSS prompt and title are escaped, never markup
        assert "<script>window.__pwned" not in ep.text and "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in ep.text
        assert "drifted only" in s.get(f"/episodes/{eid}").text
        assert re.findall(r'data-scene="(s\d+)"', s.get(f"/episodes/{eid}?drift=1").text) == []
        paged = s.get(f"/episodes/{eid}?page=2&size=2").text
        assert re.findall(r'class="scene-row[^"]*" data-scene="(s\d+)"', paged) == ["s03"] and "page 2 of 2" in paged
        # scene: candidates of best-of-2, their files, and the A1111 parameters with a copy button
        scene = s.get(f"/episodes/{eid}/scenes/s03").text
        assert "Candidates (best of 2)" in scene and scene.count('<li class="candidate') == 2
        assert 'data-copy="params-' in scene and "Seed: " in scene and "Steps: 2" in scene
        s02 = s.get(f"/episodes/{eid}/scenes/s02").text
        assert "<script>window" not in s02 and "&lt;script&gt;" in s02 and "Seed: 200" in s02
        comp = s.get(f"/episodes/{eid}/compare")
        assert comp.status_code == 200 and "Compare runs" in comp.text
        # characters: leave-one-out scores, and the re-saved copy (XSS file name) rejected as a near-duplicate
        char = s.get("/characters/obama").text
        assert len(re.findall(r"leave-one-out 0\.\d{3}", char)) == 3
        assert "near_duplicate of obama2.jpg" in char and "&lt;img src=x onerror=" in char and XSS_REF not in char
        # training: per-checkpoint scores and why step 4 won
        tid = re.search(r'href="/training/(t[0-9a-f]{12})"', index.text).group(1)
        train = s.get(f"/training/{tid}").text
        assert "Why step 4" in train and "margin of +0.0300" in train and train.count("<tr") == 4
        assert s.get("/jobs.json").json() == {"jobs": []}
        js, css = s.get("/static/studio.js"), s.get("/static/studio.css")
        assert js.status_code == css.status_code == 200 and "textContent" in js.text
        assert "innerHTML" not in js.text.replace("never innerHTML", "")
        for r in (index, ep, comp):
            csp = r.headers["content-security-policy"]
            assert "default-src 'none'" in csp and "script-src 'self'" in csp and "http" not in csp
            assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
        # every <script> and stylesheet is the studio's own; no inline script, no remote source anywhere
        for page in (index.text, ep.text, scene, char, train):
            assert re.findall(r"<script[^>]*>", page) == ['<script src="/static/studio.js" defer>']
            assert "http://" not in page and "https://" not in page and " style=" not in page


def test_missing_things_are_404_with_one_line(studio_project):
    with Studio(studio_project) as s:
        eid = s.episode_id()
        for path in (
            "/episodes/e000000000000",
            f"/episodes/{eid}/scenes/nope",
            "/characters/nobody",
            "/training/t000000000000",
            "/static/app.py",
            "/static/..%2fapp.py",
        ):
            r = s.get(path)
            assert r.status_code == 404, path
            assert "Traceback" not in r.text
        r = s.get(f"/episodes/{eid}?page=abc")
        assert r.status_code == 400 and "page" in r.text and "Traceback" not in r.text


# ------------------------------------------------------------------------------------------- files


TRAVERSALS = [
    "/file/../../etc/passwd",
    "/file/..%2f..%2fetc%2fpasswd",
    "/file/%2e%2e/%2e%2e/etc/passwd",
    "/file/%252e%252e%252fetc%252fpasswd",
    "/file/....//....//etc/passwd",
    "/file/%2fetc%2fpasswd",
    "/file/..%5c..%5cetc%5cpasswd",
    "/thumb/../../etc/passwd",
    "/thumb/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/file/etc/passwd",
    "/file/episode.yaml",
    "/file/AAAAAAAAAAAAAAAAAAAAAAAA",  # well-formed, never issued
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_files_only_by_issued_id(studio_base, path):
    with Studio(studio_base) as s:
        r = s.get(path)
        assert 400 <= r.status_code < 500 and b"root:" not in r.content, (path, r.status_code)


def test_issued_ids_serve_images_and_change_with_the_bytes(studio_project, tmp_path):
    with Studio(studio_project) as s:
        eid = s.episode_id()
        page = s.get(f"/episodes/{eid}/scenes/s01").text
        full = re.search(r'href="/file/([A-Za-z0-9_-]{24})"', page).group(1)
        r = s.get(f"/file/{full}")
        assert (
            r.status_code == 200
            and r.headers["content-type"] == "image/png"
            and r.content == png(studio_project, "s01")
        )
        thumb = re.search(r'src="/thumb/([A-Za-z0-9_-]{24})"', page).group(1)
        assert s.get(f"/thumb/{thumb}").headers["content-type"] == "image/jpeg"
        # the take changes: its old id stops working, the page issues a new one
        shutil.copy(
            studio_project / "characters" / "obama" / "refs" / "obama.jpg",
            studio_project / "renders" / "episode" / "s01.png",
        )
        assert s.get(f"/file/{full}").status_code == 404
        new = re.search(r'href="/file/([A-Za-z0-9_-]{24})"', s.get(f"/episodes/{eid}/scenes/s01").text).group(1)
        assert new != full and s.get(f"/file/{new}").headers["content-type"] == "image/jpeg"
    # a link inside ROOT that points outside is never issued
    outside = tmp_path / "secret.png"
    outside.write_bytes(png(studio_project, "s02"))
    (studio_project / "renders" / "episode" / "link.png").symlink_to(outside)
    files = FileIndex(studio_project, secret=b"k" * 32, cache_dir=tmp_path / "thumbs")
    assert files.issue(studio_project / "renders" / "episode" / "link.png") is None
    assert files.issue(outside) is None and files.issue(studio_project / "renders" / "episode" / "s02.png")


# --------------------------------------------------------------------------------------- refusals


def _lock_request(s: Studio):
    eid = s.episode_id()
    return f"/episodes/{eid}/scenes/s01/lock", {"run": s.run_id(eid), "locked": "1"}


REFUSALS = [
    # (what, headers to send instead of the page's, status, text)
    ("no Origin, no Referer", {"Origin": None}, 403, "cross-origin"),
    ("foreign Origin", {"Origin": "http://evil.example"}, 403, "cross-origin"),
    ("another port on this machine", {"Origin": "http://127.0.0.1:9999"}, 403, "cross-origin"),
    ("foreign Referer, no Origin", {"Origin": None, "Referer": "http://evil.example/x"}, 403, "cross-origin"),
    ("cross-site fetch", {"Sec-Fetch-Site": "cross-site"}, 403, "cross-site"),
    ("no CSRF token", {"X-CSRF-Token": None}, 403, "CSRF"),
    ("wrong CSRF token", {"X-CSRF-Token": "x" * 32}, 403, "CSRF"),
]


@pytest.mark.parametrize(("what", "headers", "status", "text"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_state_changes_refused_without_origin_and_csrf(studio_project, what, headers, status, text):
    with Studio(studio_project) as s:
        path, data = _lock_request(s)
        h = {"Origin": BASE, "X-CSRF-Token": s.client.cookies.get(f"charkit_csrf_{PORT}")}
        h.update(headers)
        h = {k: v for k, v in h.items() if v is not None}
        r = s.client.post(path, data=data, headers=h)
        assert r.status_code == status and text in r.text, (what, r.status_code, r.text)
        assert not any(rec.locked for rec in manifest(studio_project).images)
        # the same request as the page sends it goes through
        assert s.post(path, data).status_code == 200 and manifest(studio_project).record("s01", "sd15").locked


@pytest.mark.parametrize("host", ["evil.example:8765", "127.0.0.1.nip.io:8765", "localhost:9999", "127.0.0.1"])
def test_foreign_host_refused_dns_rebinding(studio_base, host):
    with Studio(studio_base) as s:
        r = s.client.get("/", headers={"Host": host})
        assert r.status_code == 421 and "Host" in r.text
        assert s.client.get("/", headers={"Host": f"localhost:{PORT}"}).status_code == 200


def test_token_required_off_loopback(studio_base):
    token = "t0ken-" + "x" * 20
    app = create_app(studio_base, host="0.0.0.0", port=PORT, token=token)
    with TestClient(app, base_url=BASE, raise_server_exceptions=False) as c:
        assert c.get("/").status_code == 401
        assert c.get("/?token=wrong").status_code == 401
        assert c.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        r = c.get("/episodes/x?token=" + token + "&drift=1", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/episodes/x?drift=1"  # the token leaves the URL
        assert "HttpOnly" in r.headers["set-cookie"] and "SameSite=Strict" in r.headers["set-cookie"]
        assert c.get("/").status_code == 200  # the cookie carries it from now on
        r = c.get(BASE + "//evil.example/?token=" + token, follow_redirects=False)
        assert r.headers["location"].startswith("/evil.example")  # never a redirect to another host


def test_cli_refuses_remote_host_without_token(tmp_path):
    with pytest.raises(CharkitError, match="needs a token"):
        create_app(tmp_path, host="0.0.0.0")  # the library refuses it too
    r = CliRunner().invoke(cli, ["studio", str(tmp_path), "--host", "0.0.0.0"])
    assert r.exit_code == 2 and "--token" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["studio", str(tmp_path), "--host", "0.0.0.0", "--token", "short"])
    assert r.exit_code == 2 and "at least 16 characters" in r.output
    r = CliRunner().invoke(cli, ["studio", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "not a folder" in r.output
    r = CliRunner().invoke(cli, ["studio", "--help"])
    assert r.exit_code == 0 and "--token" in r.output and "127.0.0.1" in r.output


# ------------------------------------------------------------------------------------------ actions


def test_reroll_new_seed_writes_storyboard_and_rerenders(studio_project):
    board = studio_project / "episode.yaml"
    before_text = board.read_text()
    before_png = png(studio_project, "s02")
    with Studio(studio_project) as s:
        eid = s.episode_id()
        r = s.post(f"/episodes/{eid}/scenes/s02/reroll", {"run": s.run_id(eid), "mode": "seed"})
        job = s.finish(r)
        assert job["state"] == "done" and job["progress"] == 1.0, job
        # the storyboard changed by exactly one line, comments and layout kept
        diff = [
            d for d in difflib.ndiff(before_text.splitlines(), board.read_text().splitlines()) if d[:2] in ("- ", "+ ")
        ]
        assert diff == ["-     seed: 200", "+     seed: 201"], diff
        rec = manifest(studio_project).record("s02", "sd15")
        assert rec.seed == 201 and png(studio_project, "s02") != before_png
        # the new take is scored (report.json beside it) and the old one kept as "before"
        report = json.loads((studio_project / "renders" / "episode" / "report.json").read_text())
        assert rec.sha256 in {i["sha256"] for i in report["images"]}
        scene = s.get(f"/episodes/{eid}/scenes/s02").text
        assert '<span class="take-seed">201</span>' in scene and "before: " in scene and "no face" in scene
        assert (studio_project / "renders" / "episode" / ".studio" / "history" / "s02__sd15").is_dir()
        assert [j["state"] for j in s.get("/jobs.json").json()["jobs"]] == ["done"]


def test_reroll_more_candidates_keeps_every_candidate(studio_project):
    with Studio(studio_project) as s:
        eid = s.episode_id()
        job = s.finish(
            s.post(
                f"/episodes/{eid}/scenes/s01/reroll", {"run": s.run_id(eid), "mode": "candidates", "candidates": "3"}
            )
        )
        assert job["state"] == "done", job.get("error")
        rec = manifest(studio_project).record("s01", "sd15")
        assert [c.seed for c in rec.candidates] == [100, 101, 102] and rec.selection == "first_no_face"
        files = [c.file for c in rec.candidates]
        assert files == ["s01.png", "candidates/s01__sd15/101.png", "candidates/s01__sd15/102.png"]
        assert all((studio_project / "renders" / "episode" / f).is_file() for f in files)
        assert "candidates: 3" in (studio_project / "episode.yaml").read_text()
        scene = s.get(f"/episodes/{eid}/scenes/s01").text
        assert (
            "Candidates (best of 3)" in scene and len(re.findall(r'class="candidate[^"]*"><a href="/file/', scene)) == 3
        )
        bad = s.post(
            f"/episodes/{eid}/scenes/s01/reroll", {"run": s.run_id(eid), "mode": "candidates", "candidates": "99"}
        )
        assert bad.status_code == 400 and bad.json() == {"error": "candidates 99: choose 2 to 64"}


def test_edit_scene_and_failed_job_shows_one_line(studio_project):
    board = studio_project / "episode.yaml"
    with Studio(studio_project) as s:
        eid = s.episode_id()
        run = s.run_id(eid)
        prompt = "{obama} man on a ferry <b>at dawn</b>"
        job = s.finish(s.post(f"/episodes/{eid}/scenes/s01/edit", {"run": run, "prompt": prompt, "seed": "4242"}))
        assert job["state"] == "done", job.get("error")
        rec = manifest(studio_project).record("s01", "sd15")
        assert rec.seed == 4242 and rec.prompt == "ohwx man on a ferry <b>at dawn</b>"
        text = board.read_text()
        assert "# the opening shot" in text and "seed: 4242" in text and "<b>at dawn</b>" in text
        same = s.post(
            f"/episodes/{eid}/scenes/s01/edit", {"run": run, "prompt": prompt, "seed": "4242", "lora.obama": ""}
        )
        assert same.json() == {"ok": True, "message": "s01: nothing changed"}  # untouched fields write nothing
        # bad values never reach the file
        for data, error in (
            ({"seed": "-1"}, "seed -1: must be 0 to 2^63-1"),
            ({"seed": "x"}, "seed 'x': not a whole number"),
            ({"prompt": "  "}, "prompt: empty"),
            ({"lora.bob": "0.5"}, "lora.bob: not a character of scene s01"),
        ):
            r = s.post(f"/episodes/{eid}/scenes/s01/edit", {"run": run, **data})
            assert r.status_code == 400 and r.json()["error"].startswith(error), r.text
        assert board.read_text() == text
        # a LoRA scale for a character without a LoRA: the storyboard is valid, the render refuses: one line
        job = s.finish(s.post(f"/episodes/{eid}/scenes/s01/edit", {"run": run, "lora.obama": "0.8"}))
        assert job["state"] == "failed" and job["error"].count("\n") == 0
        assert "obama has no sd15 LoRA" in job["error"] and "Traceback" not in job["error"]
        page = s.get(f"/episodes/{eid}").text
        assert "obama has no sd15 LoRA" in page  # the queue on every page shows the failed job's line


def test_lock_is_kept_by_cli_render_whatever_changes(studio_project):
    from charkit.render.lifecycle import render_storyboard

    board = studio_project / "episode.yaml"
    locked_png = png(studio_project, "s02")
    with Studio(studio_project) as s:
        eid = s.episode_id()
        run = s.run_id(eid)
        r = s.post(f"/episodes/{eid}/scenes/s02/lock", {"run": run, "locked": "1"})
        assert r.status_code == 200 and r.json()["reload"] is True
        assert manifest(studio_project).record("s02", "sd15").locked
        assert "unlock" in s.get(f"/episodes/{eid}/scenes/s02").text
        r = s.post(f"/episodes/{eid}/scenes/s02/reroll", {"run": run, "mode": "seed"})
        assert r.status_code == 409 and "locked" in r.json()["error"]
        assert s.post(f"/episodes/{eid}/scenes/s02/repair", {"run": run}).status_code == 409
    edit_scene(board, "s02", seed=999)  # the storyboard moves on; the locked take must not
    r = CliRunner().invoke(cli, ["render", str(board), "--device", "cpu", "-q", "--force"])
    assert r.exit_code == 0, r.output
    assert "rendered 2, unchanged 1 (1 locked, kept as they are)" in r.output
    assert png(studio_project, "s02") == locked_png and manifest(studio_project).record("s02", "sd15").seed == 200
    # a locked take whose PNG was altered is no longer complete: it renders again
    (studio_project / "renders" / "episode" / "s02.png").write_bytes(png(studio_project, "s01"))
    result = render_storyboard(board, device="cpu", progress=False)
    assert [x.key for x in result.rendered] == [("s02", "sd15")]
    assert manifest(studio_project).record("s02", "sd15").seed == 999


def test_repair_runs_the_repair_stage_on_the_take(studio_project):
    # The tiny model draws no face: the repair stage reports it (not guessed) and the take's bytes stay.
    with Studio(studio_project) as s:
        eid = s.episode_id()
        png = next(studio_project.rglob("s01.png"))
        before = png.read_bytes()
        job = s.finish(s.post(f"/episodes/{eid}/scenes/s01/repair", {"run": s.run_id(eid)}))
        assert job["state"] == "done", job.get("error")
        assert png.read_bytes() == before


def test_import_external_folder_as_a_run(studio_project, faces_dir):
    from PIL import Image

    crop = Image.open(faces_dir / "obama3.jpg").crop((0, 0, 300, 400))  # a real photo without a face
    import io

    buf = io.BytesIO()
    crop.save(buf, format="JPEG")
    xss_name = "03-<img src=x onerror=window.__pwned=1>.jpg"  # multipart clients send '"' as %22
    uploads = [
        ("files", ("01-obama3.jpg", (faces_dir / "obama3.jpg").read_bytes(), "image/jpeg")),
        ("files", ("02-biden.jpg", (faces_dir / "biden.jpg").read_bytes(), "image/jpeg")),
        ("files", (xss_name, buf.getvalue(), "image/jpeg")),
        ("files", ("notes.txt", b"not an image", "text/plain")),
    ]
    with Studio(studio_project) as s:
        eid = s.episode_id()
        job = s.finish(s.post(f"/episodes/{eid}/import", {"label": "midjourney"}, files=uploads))
        assert job["state"] == "done", job.get("error")
        folder = studio_project / "imports" / "midjourney"
        record = json.loads((folder / "charkit-import.json").read_text())
        assert [(f["scene"], f["original"]) for f in record["files"]] == [
            ("s01", "01-obama3.jpg"),
            ("s02", "02-biden.jpg"),
            ("s03", xss_name),
        ]
        assert [f["file"] for f in record["files"]][2] == "003-03-_img_src_x_onerror_window.__pwned_1.jpg"
        assert record["rejected"] == [{"name": "notes.txt", "reason": "not an image file (png, jpg, webp, ...)"}]
        assert not list((studio_project / "imports").glob(".*"))  # no staging left behind
        ep = s.get(f"/episodes/{eid}").text
        assert "midjourney" in ep and re.findall(r'data-badge="(\w+)"', ep) == [
            "no_face",
            "pass",
            "no_face",
            "drift",
            "no_face",
            "no_face",
        ]
        assert "03-&lt;img src=x onerror=window.__pwned=1&gt;.jpg" in ep and xss_name not in ep
        assert re.findall(r'class="scene-row[^"]*" data-scene="(s\d+)"', s.get(f"/episodes/{eid}?drift=1").text) == [
            "s02"
        ]
        assert "imported" in s.get(f"/episodes/{eid}/compare").text
        again = s.post(f"/episodes/{eid}/import", {"label": "midjourney"}, files=uploads[:1])
        assert again.status_code == 400 and "already exists" in again.json()["error"]
        bad = s.post(f"/episodes/{eid}/import", {"label": "../escape"}, files=uploads[:1])
        assert bad.status_code == 400 and "not a safe file name" in bad.json()["error"]
        junk = s.finish(s.post(f"/episodes/{eid}/import", {"label": "junk"}, files=[uploads[3]]))
        assert junk["state"] == "failed" and "nothing imported" in junk["error"]
        assert not (studio_project / "imports" / "junk").exists()


def test_broken_files_are_one_line_problems(studio_project):
    (studio_project / "broken.yaml").write_text("project: x\nscenes: [\n", encoding="utf-8")
    (studio_project / "other").mkdir()
    (studio_project / "other" / "manifest.json").write_text("{not json", encoding="utf-8")
    (studio_project / "notes.yaml").write_text("just: a config\n", encoding="utf-8")  # not a storyboard: ignored
    with Studio(studio_project) as s:
        index = s.get("/")
        assert index.status_code == 200
        assert "broken.yaml: invalid YAML" in index.text and "manifest.json: not valid JSON" in index.text
        assert "notes.yaml" not in index.text and "Traceback" not in index.text


# ------------------------------------------------------------------------------------ building blocks


def test_storyboard_edit_keeps_comments_and_refuses_invalid(tmp_path):
    p = tmp_path / "b.yaml"
    text = (
        "# top comment\nproject: t   # title\ndefaults:\n    model: {family: sd15, source: m}\n"
        "scenes:\n- id: a   # first\n  prompt: 'hi {{x}}'\n- {id: b, prompt: there}\n"
    )
    p.write_text(text, encoding="utf-8")
    edit_scene(p, "b", seed=5)
    edit_scene(p, "a", prompt="line one\nline two")
    new = p.read_text()
    assert "# top comment" in new and "# title" in new and "# first" in new
    assert "- {id: b, prompt: there, seed: 5}" in new and "  prompt: |-\n      line one\n      line two" in new
    assert "    model: {family: sd15, source: m}" in new  # four-space mappings stay four-space
    for kwargs, error in (({"candidates": 0}, "field 'candidates'"), ({"prompt": "a\x00b"}, "control characters")):
        with pytest.raises(CharkitError, match=error):
            edit_scene(p, "a", **kwargs)
    assert p.read_text() == new
    with pytest.raises(CharkitError, match="no scene 'zz'"):
        edit_scene(p, "zz", seed=1)


def _rec(scene: str, **kw) -> ImageRecord:
    fields = dict(model="m", family="sd15", model_source="x", seed=1, file=f"{scene}.png", sha256="", characters=[])
    fields.update(prompt="", negative_prompt="", width=8, height=8, steps=1, guidance=1.0, scheduler="s", preset="none")
    fields.update(kw)
    return ImageRecord(scene=scene, **fields)


def test_update_manifest_merges_concurrent_writers(tmp_path):
    path = tmp_path / MANIFEST
    header = {"charkit_version": "0", "storyboard": "", "storyboard_sha256": None, "project": "p", "characters": {}}
    order = [(f"s{i:02d}", "m") for i in range(40)]

    # two writers (a render and the studio), each adding its own records one by one, at the same time
    def writer(keys):
        for k in keys:
            update_manifest(path, header, order, [_rec(k[0], seed=int(k[0][1:]))])

    threads = [threading.Thread(target=writer, args=(order[i::2],)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.key for r in read_records(path)] == order  # nobody lost a record, scene order kept
    # a writer holding a stale copy of a record does not undo another's lock: it only sends what it changed
    locked = _rec("s01", seed=1, locked=True)
    update_manifest(path, header, order, [locked])
    update_manifest(path, header, order, [_rec("s02", seed=99)])
    recs = {r.scene: r for r in read_records(path)}
    assert recs["s01"].locked and recs["s02"].seed == 99
    # keys outside the order drop out (a scene removed from the storyboard)
    assert [r.scene for r in update_manifest(path, header, order[:3], []).images] == ["s00", "s01", "s02"]


def test_job_queue_runs_one_at_a_time_in_order():
    q = JobQueue()
    running, seen, gate = [], [], threading.Event()

    def work(name, fail=None):
        def fn(progress):
            running.append(name)
            assert len(running) == 1, "two jobs ran at once"
            progress(0.5, f"half of {name}")
            if name == "a":
                gate.wait(10)
            seen.append(name)
            running.remove(name)
            if fail:
                raise fail
            return name

        return fn

    a = q.submit("test", "a", work("a"))
    b = q.submit("test", "b", work("b", fail=CharkitError("scene b: bad\ninput")))
    c = q.submit("test", "c", work("c", fail=ZeroDivisionError("division by zero")))
    time.sleep(0.2)
    assert [j["state"] for j in q.list()] == ["queued", "queued", "running"]
    assert q.get(a.id).message == "half of a"
    gate.set()
    assert q.wait(c.id).state == "failed"
    assert seen == ["a", "b", "c"]
    assert q.get(a.id).state == "done" and q.get(a.id).result == "a"
    assert q.get(b.id).error == "scene b: bad input"  # one line, as the page shows it
    assert q.get(c.id).error == "ZeroDivisionError: division by zero"
    blocker = threading.Event()
    q.submit("test", "slow", lambda p: blocker.wait(10))
    late = q.submit("test", "late", lambda p: None)
    time.sleep(0.1)
    blocker.set()
    q.close()
    assert q.get(late.id).state in ("done", "failed")
    with pytest.raises(CharkitError, match="shutting down"):
        q.submit("test", "after", lambda p: None)


def test_cli_summary_and_docs_know_the_studio():
    from charkit.clidoc import render

    assert "## `charkit studio`" in render() and "`--token`" in render()
    doc = (Path(__file__).resolve().parents[1] / "docs" / "studio.md").read_text(encoding="utf-8")
    for word in ("127.0.0.1", "--token", "CSRF", "Origin", "locked", "re-roll", "import", "repair"):
        assert word in doc, word
    assert XSS.startswith("<script>")


def test_second_backend_scores_and_look_profile_show(studio_project):
    render_dir = studio_project / "renders" / "episode"
    report = json.loads((render_dir / "report.json").read_text())
    report["backend"] = {**report["backend"], "name": "sface"}
    for img in report["images"]:
        img.update(status="pass", similarity=0.7123, relative=1.01)
    other = studio_project / "reports" / "sface"
    other.mkdir(parents=True)
    report["look"] = [{"name": "sd15", "images": 3, "statements": ["smoother than every reference photo <b>x</b>"]}]
    (other / "report.json").write_text(json.dumps(report), encoding="utf-8")
    with Studio(studio_project) as s:
        eid = s.episode_id()
        ep = s.get(f"/episodes/{eid}").text
        # each backend's verdict on its own line; a face one backend scored beats another's no face
        assert (
            ep.count('<span class="backend">sface</span> 0.712') == 3
            and ep.count('<span class="backend">dlib</span>') == 3
        )
        assert re.findall(r'data-badge="(\w+)"', ep) == ["pass"] * 3
        assert "Look profile" in ep and "smoother than every reference photo &lt;b&gt;x&lt;/b&gt;" in ep
        run = s.run_id(eid)
        comp = s.get(f"/episodes/{eid}/compare?run={run}").text
        assert comp.count('type="checkbox" name="run"') == 1 and "sface 0.712" in comp


def test_busy_and_locked_scenes_refuse_new_jobs(studio_project):
    with Studio(studio_project) as s:
        eid = s.episode_id()
        run = s.run_id(eid)
        gate = threading.Event()
        blocker = s.jobs.submit("reroll", "a long render", lambda p: gate.wait(30), episode=eid, scene="s03")
        try:
            for action, data in (("reroll", {"mode": "seed"}), ("edit", {"seed": "1"}), ("repair", {})):
                r = s.post(f"/episodes/{eid}/scenes/s03/{action}", {"run": run, **data})
                assert r.status_code == 409 and "already has a job in the queue (a long render)" in r.json()["error"]
        finally:
            gate.set()
        s.jobs.wait(blocker.id)
        assert s.post(f"/episodes/{eid}/scenes/s03/lock", {"run": run, "locked": "1"}).status_code == 200
        r = s.post(f"/episodes/{eid}/scenes/s03/edit", {"run": run, "seed": "1"})
        assert r.status_code == 409 and "locked" in r.json()["error"]
        assert s.post(f"/episodes/{eid}/scenes/s03/lock", {"run": run, "locked": "0"}).status_code == 200
        assert not manifest(studio_project).record("s03", "sd15").locked
        r = s.post(f"/episodes/{eid}/scenes/s03/lock", {"run": "r000000000000"})
        assert r.status_code == 404 and r.json() == {"error": "no such run in this episode"}


def test_reroll_of_a_folder_rendered_on_a_tiny_model_renders_on_it_again(tiny_models, render_env):
    """The README tour renders `--model models/tiny-sd15` a storyboard whose own models are not installed; the
    studio's re-roll plans on what the manifest records (the tiny model and its ControlNet), not on those."""
    from fixtures_render import render_on_tiny_override

    from charkit.render.storyboard import load_storyboard
    from charkit.studio import actions

    tiny = tiny_models("sd15")
    render_env.character("obama")
    path, out = render_on_tiny_override(render_env, tiny)
    models = actions.manifest_models(out, load_storyboard(path))
    assert [(m.source, m.label) for m in models] == [(str(tiny.root), "sd15")] and models[0].controlnet
    quiet = lambda *a: None
    with pytest.raises(CharkitError, match="org/not-installed: not in the local Hugging Face cache"):
        actions.render_scene(path, "s1", out=out, settings=RenderSettings(), progress=quiet)
    edit_scene(path, "s1", seed=4)  # what the re-roll button does
    done = actions.render_scene(path, "s1", out=out, settings=RenderSettings(), progress=quiet, models=models)
    assert done["rendered"] == [("s1", "sd15", 4)]
