"""The report in a real browser: Debian's chromium, headless, driven by playwright (no browser download).

Asserts that thumbnails, the drift plot and the look profile (table and plot) render, that nothing is
fetched from the network, and that XSS payloads in a prompt and a file name stay inert text.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from fixtures_faces import FACES_DIR

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
XSS_NAME = "<img src=x onerror=\"document.body.dataset.pwned='name'\">.jpg"
XSS_PROMPT = "portrait of {name} <script>document.body.dataset.pwned='prompt'</script><img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def report_html(tmp_path_factory, characters_root) -> Path:
    from charkit.identity.dlib_backend import DlibBackend
    from charkit.testing.stagefiles import write_render_manifest
    from charkit.verify import verify

    ep = tmp_path_factory.mktemp("episode")
    shutil.copy(FACES_DIR / "obama3.jpg", ep / "s01.jpg")
    shutil.copy(FACES_DIR / "obama2.jpg", ep / XSS_NAME)
    shutil.copy(FACES_DIR / "biden.jpg", ep / "s03.jpg")
    images = [
        {"scene": "s01", "model": "tiny-sd15", "file": "s01.jpg", "characters": ["obama"], "prompt": "a calm portrait"},
        {"scene": "s02", "model": "tiny-sd15", "file": XSS_NAME, "characters": ["obama"], "prompt": XSS_PROMPT},
        {"scene": "s03", "model": "tiny-sd15", "file": "s03.jpg", "characters": ["obama"], "prompt": "at the desk"},
    ]
    write_render_manifest(ep, images, characters={"obama": characters_root / "obama"})
    out = tmp_path_factory.mktemp("report")
    verify([ep], backend=DlibBackend(), out=out)
    return out / "report.html"


def test_report_renders_offline_and_inert(report_html, tmp_path):
    requests: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.on("request", lambda r: requests.append(r.url))
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(report_html.as_uri(), wait_until="load")
            images = page.evaluate(
                "[...document.querySelectorAll('img')].map(i => [i.complete, i.naturalWidth, i.getAttribute('src').slice(0, 11)])"
            )
            plot = page.evaluate(
                "(() => { const s = document.querySelector('svg polyline');"
                " if (!s) return null; const b = s.getBBox(); return [b.width, b.height]; })()"
            )
            look = page.evaluate(
                "(() => { const rows = [...document.querySelectorAll('table.look tbody tr')];"
                " const svg = document.querySelector('svg.lookplot'); const b = svg.getBoundingClientRect();"
                " return [rows.filter(r => r.getBoundingClientRect().height > 0).map(r => r.cells[0].innerText),"
                " [b.width, b.height], svg.querySelectorAll('circle, path.clipped').length,"
                " svg.querySelector('rect.band').getBBox().width]; })()"
            )
            pwned = page.evaluate("document.body.dataset.pwned || null")
            text = page.inner_text("body")
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    # thumbnails: every <img> is an inlined data: URI that decoded to real pixels
    assert len(images) >= 3 and all(ok and w > 0 and src.startswith("data:image") for ok, w, src in images), images
    # drift plot: a polyline with real extent
    assert plot is not None and plot[0] > 50 and plot[1] > 5, plot
    # the look profile: its per-run table (six measures) and its plot (every face, each measure) are drawn
    rows, (width, height), marks, band = look
    assert rows == ["smoothness", "sharpness", "noise", "saturation", "brightness", "contrast"], rows
    assert width > 300 and height > 150 and band > 50 and marks == 3 * 6
    assert "Look profile against the reference photos" in text and "reference photo" in text
    # nothing but the file itself (and inline data: URIs) was requested
    assert [u for u in requests if not u.startswith(("file://", "data:"))] == []
    # the payloads are shown as text and never ran
    assert pwned is None and dialogs == []
    assert "onerror=" in text and "<script>document.body.dataset.pwned='prompt'</script>" in text
    from PIL import Image

    with Image.open(shot) as im:
        assert im.width == 1280 and im.height > 1000
        assert len(im.convert("RGB").getcolors(1 << 20) or []) > 2000  # photos rendered, not an empty page
