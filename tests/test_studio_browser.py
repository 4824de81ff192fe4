"""charkit studio in a real browser: Debian's chromium, headless, driven by playwright (no browser download),
against the studio served by uvicorn on a free loopback port, on a tiny-model project.

The user's path: open the episode, import a folder of external images, filter the drifted scenes, re-roll
one, watch its job finish, see the new take and its score, lock it; then `charkit render --force` leaves the
locked PNG byte for byte. Refusals over real HTTP: path traversal, a foreign Host, a POST without the CSRF
token, a cross-origin form post from another local site. XSS payloads in a prompt, a project title and file
names stay inert (``window.__pwned`` is never set), and the CSP blocks nothing the studio itself needs.
"""

from __future__ import annotations

import http.client
import io
import os
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures_studio import LiveStudio

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM and not os.environ.get("CHARKIT_REQUIRE_BROWSER"):
    pytest.skip("Debian's chromium is not installed (make test installs it)", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
XSS_FILE = "03-<img src=x onerror=window.__pwned=1>.jpg"
PWNED = "window.__pwned === undefined"


def _raw_get(port: int, target: str, host: str | None = None) -> int:
    """A GET with exactly this request target and Host (no client-side normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", target, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host or f"127.0.0.1:{port}")
        conn.endheaders()
        r = conn.getresponse()
        body = r.read()
        assert b"root:" not in body
        return r.status
    finally:
        conn.close()


class _Attacker:
    """Another local site (another port: another origin) whose page auto-submits a form to the studio."""

    def __init__(self, target: str, fields: dict[str, str]):
        inputs = "".join(f'<input type="hidden" name="{k}" value="{v}">' for k, v in fields.items())
        page = f'<html><body><form id="f" method="post" action="{target}">{inputs}</form><script>document.getElementById("f").submit()</script></body></html>'

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                data = page.encode()
                self.send_response(200)
                self.send_header("content-type", "text/html")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def _uploads(faces_dir: Path) -> list[dict]:
    from PIL import Image

    buf = io.BytesIO()
    Image.open(faces_dir / "obama3.jpg").crop((0, 0, 300, 400)).save(buf, format="JPEG")  # a photo without a face
    return [
        {"name": "01-obama3.jpg", "mimeType": "image/jpeg", "buffer": (faces_dir / "obama3.jpg").read_bytes()},
        {"name": "02-biden.jpg", "mimeType": "image/jpeg", "buffer": (faces_dir / "biden.jpg").read_bytes()},
        {"name": XSS_FILE, "mimeType": "image/jpeg", "buffer": buf.getvalue()},
    ]


def _shots(tmp_path: Path) -> Path:
    out = Path(os.environ.get("CHARKIT_STUDIO_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_review_import_reroll_lock_in_a_real_browser(studio_project, faces_dir, tmp_path):
    from charkit.cli import cli
    from charkit.render.manifest import MANIFEST
    from charkit.stagefiles import RenderManifest, read_stage_file

    render_dir = studio_project / "renders" / "episode"
    shots = _shots(tmp_path)
    live = LiveStudio(studio_project).start()
    requests: list[str] = []
    console: list[tuple[str, str]] = []
    dialogs: list[str] = []
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.on("request", lambda r: requests.append(r.url))
                page.on("console", lambda m: console.append((page.url, m.text)))
                page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
                page.set_default_timeout(60_000)

                # -- the project, then the episode
                page.goto(live.url + "/")
                assert page.evaluate(PWNED)
                page.click('a[href^="/episodes/"]')
                page.wait_for_selector("#grid")
                episode_url = page.url
                assert page.locator("tr.scene-row").count() == 3 and page.evaluate(PWNED)

                # -- import a folder of external images as a run; the page reloads when its job is done
                page.fill("#import-form input[name=label]", "midjourney")
                page.set_input_files("#import-form input[type=file]", files=_uploads(faces_dir))
                page.click("#import-form button[type=submit]")
                page.wait_for_selector("#grid th:has-text('midjourney')")
                assert page.evaluate(PWNED)
                assert XSS_FILE in page.inner_text("#grid")  # the file name is shown, as text
                page.screenshot(path=str(shots / "studio-episode.png"), full_page=True)

                # -- drifted only: the scene whose imported take is someone else
                page.click("#filter-drift")
                page.wait_for_url("**drift=1")
                rows = page.locator("tr.scene-row")
                assert rows.count() == 1 and rows.first.get_attribute("data-scene") == "s02"

                # -- the scene: re-roll it with a new seed and watch the job
                page.click("tr.scene-row a.scene-link")
                page.wait_for_selector("#scene-seed")
                assert page.inner_text("#scene-seed").strip() == "200" and page.evaluate(PWNED)
                take = page.locator("section.take", has=page.locator("h2", has_text="sd15")).first
                old_src = take.locator("figure.current img").get_attribute("src")
                take.locator("button.reroll-seed").click()
                page.wait_for_selector("#jobs li.job[data-scene=s02]")
                states = {page.get_attribute("#jobs li.job[data-scene=s02]", "data-state")}
                page.screenshot(path=str(shots / "studio-reroll.png"), full_page=True)
                page.wait_for_selector('#scene-seed:text-is("201")')  # the page reloaded with the new take
                page.wait_for_selector("#jobs li.job.done[data-scene=s02]")
                assert states <= {"queued", "running", "done"}
                take = page.locator("section.take", has=page.locator("h2", has_text="sd15")).first
                new_src = take.locator("figure.current img").get_attribute("src")
                assert new_src != old_src  # a new take, a new file id
                img = take.locator("figure.current img")
                img.scroll_into_view_if_needed()
                assert img.evaluate("i => i.decode().then(() => i.naturalWidth)") == 64  # the 64 px render itself
                scores = take.locator("figure.current ul.scores").inner_text()
                assert "dlib" in scores and "no face" in scores  # scored after the render
                assert "before:" in take.inner_text()  # the previous take is kept beside it
                assert page.locator("#scene-prompt").inner_text().count("<script>") == 1 and page.evaluate(PWNED)
                params = take.locator("pre.a1111").inner_text()
                assert "Seed: 201" in params
                take.locator("button.copy").click()
                take.locator("button.copy[data-copied='1']").wait_for()  # the handler awaits the clipboard
                assert take.locator("button.copy").inner_text() == "copied"

                # -- lock the new take; the page reloads showing it locked
                take.locator("button.lock-take").click()
                page.wait_for_selector("button.unlock")
                locked_png = (render_dir / "s02.png").read_bytes()
                assert read_stage_file(render_dir / MANIFEST, RenderManifest).record("s02", "sd15").locked

                # -- a POST without the CSRF token, from the studio's own page: refused
                status = page.evaluate(
                    "async (url) => { const fd = new FormData(); fd.append('run', 'x'); "
                    "return (await fetch(url, {method: 'POST', body: fd})).status; }",
                    page.url + "/lock",
                )
                assert status == 403

                # -- the other views stay inert too
                for path in ("/", "/characters/obama", episode_url.removeprefix(live.url) + "/compare"):
                    page.goto(live.url + path)
                    assert page.evaluate(PWNED), path
                run_id = page.locator("form.pick input[name=run]").first.get_attribute("value")

                # -- a cross-origin form post from another local site: refused, nothing changes
                lock_url = episode_url + "/scenes/s01/lock"
                with _Attacker(lock_url, {"run": run_id, "locked": "1"}) as evil:
                    page.goto(evil.url)
                    page.wait_for_url(lock_url)
                    assert "cross-origin request refused" in page.inner_text("body")
                assert not read_stage_file(render_dir / MANIFEST, RenderManifest).record("s01", "sd15").locked
            finally:
                browser.close()

        # -- real HTTP: traversal and DNS rebinding are refused by the live server
        for target in (
            "/file/../../etc/passwd",
            "/file/..%2f..%2fetc%2fpasswd",
            "/file/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
            "/thumb/..%252f..%252fetc%252fpasswd",
            "/file/%2e%2e/%2e%2e/etc/passwd",
            "/static/..%2f..%2fapp.py",
        ):
            assert 400 <= _raw_get(live.port, target) < 500, target
        assert _raw_get(live.port, "/", host=f"evil.example:{live.port}") == 421
        assert _raw_get(live.port, "/") == 200
    finally:
        live.stop()

    # -- the CLI renders the episode again: the locked take is kept byte for byte
    r = CliRunner().invoke(cli, ["render", str(studio_project / "episode.yaml"), "--device", "cpu", "-q", "--force"])
    assert r.exit_code == 0, r.output
    assert "(1 locked, kept as they are)" in r.output
    assert (render_dir / "s02.png").read_bytes() == locked_png

    studio_requests = [u for u in requests if u.startswith(live.url)]
    assert [u for u in requests if not u.startswith((live.url, "http://127.0.0.1:", "data:"))] == []
    assert any("/thumb/" in u for u in studio_requests) and any(
        u.endswith("/static/studio.js") for u in studio_requests
    )
    assert dialogs == []
    assert [t for url, t in console if url.startswith(live.url) and "Content Security Policy" in t] == []
    for name in ("studio-episode.png", "studio-reroll.png"):
        from PIL import Image

        with Image.open(shots / name) as im:
            assert im.width == 1400 and len(im.convert("RGB").getcolors(1 << 20) or []) > 200
