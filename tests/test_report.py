"""report.json / report.csv / report.html from a hand-built VerifyReport with hostile strings."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import charkit.report as report_toolkit
from charkit.errors import CharkitError
from charkit.identity.base import BackendInfo, Face
from charkit.identity.results import (
    STATUSES,
    BackendMatch,
    BackendVerdict,
    CharacterMatch,
    ImageScore,
    ProfileSummary,
)
from charkit.images import load_image, make_thumbnail, thumbnails_for
from charkit.look import LookMeasures, compare_look, reference_look
from charkit.verify import report as report_writer
from charkit.verify.look import RunLook
from charkit.verify.report import CSV_COLUMNS, render_html, scene_slots, write_report
from charkit.verify.results import RunSummary, VerifyReport

GOLDEN = Path(__file__).parent / "data" / "golden"

XSS_FILE = "<img src=x onerror=alert(1)>.png"
XSS_RUN = '"><script>alert(1)</script>'
QUOTED_SCENE = "s03 \"night\" 'rain'"
XSS_NOTE = "</textarea><svg onload=alert(3)>"
XSS_ERROR = "could not decode image: <script>alert(2)</script>"
XSS_LICENCE = '<a href="https://evil.example/x">click</a> javascript:alert(4)'


def _face(x0, y0, x1, y1, score=0.99):
    return Face(box=(x0, y0, x1, y1), score=score, landmarks=[((x0 + x1) / 2, (y0 + y1) / 2)])


def _match(ch, face, sim, baseline, threshold=0.4):
    if face is None:
        return CharacterMatch(character=ch, face=None, similarity=None, distance=None, relative=None, status="missing")
    return CharacterMatch(
        character=ch,
        face=face,
        similarity=sim,
        distance=1.0 - sim,
        relative=sim / baseline,
        status="pass" if sim >= threshold else "drift",
    )


def build_report() -> VerifyReport:
    """Three runs over three scenes: pass, drift, a two-character image, no_face, error, a missing character."""
    ob, bi = 0.6234, 0.5812  # baseline means
    backend = BackendInfo(
        name="dlib",
        model="dlib_face_recognition_resnet_model_v1",
        model_hash="3c7e0c1f9a2b4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6",
        dim=128,
        metric="1 - L2 distance",
        threshold=0.4,
        licence="dlib: Boost Software License; ResNet model: CC0",
    )
    characters = [
        ProfileSummary(
            name="obama",
            folder="characters/obama/refs",
            references=3,
            baseline_mean=ob,
            baseline_min=0.5521,
            outliers=["characters/obama/refs/odd <b>one</b>.jpg"],
            rejected=[
                {
                    "path": "characters/obama/refs/broken.jpg",
                    "reason": "not a readable image (unknown or corrupt format)",
                }
            ],
        ),
        ProfileSummary(name="biden", folder="characters/biden/refs", references=2, baseline_mean=bi, baseline_min=bi),
    ]
    m = _match
    images = [
        # run sd15: rendered from a manifest (scene ids, model)
        ImageScore(
            path="renders/sd15/s01.png",
            run="sd15",
            status="pass",
            similarity=0.6123,
            distance=0.3877,
            relative=0.6123 / ob,
            faces=[_face(180, 120, 330, 300)],
            matches=[m("obama", 0, 0.6123, ob)],
            expected=["obama"],
            width=512,
            height=512,
            sha256="11" * 32,
            scene="s01",
            model="sd15",
            order=0,
        ),
        ImageScore(
            path=f"renders/sd15/{XSS_FILE}",
            run="sd15",
            status="drift",
            similarity=0.3101,
            distance=0.6899,
            relative=0.3101 / ob,
            faces=[_face(80, 100, 220, 270), _face(470, 90, 620, 280)],
            matches=[m("obama", 1, 0.3101, ob), m("biden", 0, 0.5222, bi)],
            expected=["obama", "biden"],
            swapped=[["obama", "biden"]],
            width=768,
            height=512,
            sha256="22" * 32,
            scene="s02",
            model="sd15",
            order=1,
        ),
        ImageScore(
            path="renders/sd15/s03.png",
            run="sd15",
            status="no_face",
            expected=["obama"],
            width=512,
            height=512,
            sha256="33" * 32,
            scene=QUOTED_SCENE,
            model="sd15",
            order=2,
            notes=["exif-orientation-6"],
        ),
        # run with a hostile label (same scenes)
        ImageScore(
            path="renders/xl/s01.png",
            run=XSS_RUN,
            status="pass",
            similarity=0.5511,
            distance=0.4489,
            relative=0.5511 / ob,
            faces=[_face(150, 80, 360, 330)],
            matches=[m("obama", 0, 0.5511, ob)],
            expected=["obama"],
            width=512,
            height=512,
            scene="s01",
            model="sdxl",
            order=0,
        ),
        ImageScore(
            path="renders/xl/s02.png",
            run=XSS_RUN,
            status="drift",
            faces=[_face(200, 100, 400, 330)],
            matches=[m("obama", 0, 0.4512, ob), m("biden", None, None, bi)],
            expected=["obama", "biden"],
            missing=["biden"],
            width=768,
            height=512,
            scene="s02",
            model="sdxl",
            order=1,
        ),
        ImageScore(
            path="renders/xl/s03.png",
            run=XSS_RUN,
            status="error",
            expected=["obama"],
            scene=QUOTED_SCENE,
            model="sdxl",
            order=2,
            error=XSS_ERROR,
        ),
        # an external folder (no manifest: no scene ids, order from sorted paths)
        ImageScore(
            path="@SUM(A1).png",
            run="mj",
            status="drift",
            similarity=-0.1234,
            distance=1.1234,
            relative=-0.1234 / ob,
            faces=[_face(10, 10, 90, 100)],
            matches=[m("obama", 0, -0.1234, ob)],
            expected=["obama"],
            width=256,
            height=320,
            model="+cmd",
            order=0,
            notes=[XSS_NOTE],
        ),
        ImageScore(
            path="external/mj/02.png",
            run="mj",
            status="pass",
            similarity=0.5004,
            distance=0.4996,
            relative=0.5004 / ob,
            faces=[_face(40, 30, 200, 220)],
            matches=[m("obama", 0, 0.5004, ob)],
            expected=["obama"],
            width=320,
            height=320,
            model="=1+2",
            order=1,
        ),
    ]
    runs = [
        RunSummary(
            run="sd15",
            images=3,
            passed=1,
            drift=1,
            no_face=1,
            errors=0,
            mean_similarity=0.4612,
            min_similarity=0.3101,
            pass_rate=0.5,
        ),
        RunSummary(
            run=XSS_RUN,
            images=3,
            passed=1,
            drift=1,
            no_face=0,
            errors=1,
            mean_similarity=0.5511,
            min_similarity=0.5511,
            pass_rate=0.5,
        ),
        RunSummary(
            run="mj",
            images=2,
            passed=1,
            drift=1,
            no_face=0,
            errors=0,
            mean_similarity=0.1885,
            min_similarity=-0.1234,
            pass_rate=0.5,
        ),
    ]
    for img in images:  # as score_faces records a lone backend: its own verdicts, under its name
        _one_backend(img, "dlib")
    for r in runs:
        r.by_backend = {"dlib": {st: sum(i.status == st for i in images if i.run == r.run) for st in STATUSES}}
    for c in characters:
        c.backends = {"dlib": {"references": c.references, "baseline_mean": c.baseline_mean, "threshold": 0.4}}
    # the look of three faces: s01 (like the references), the two-character image's obama, and the mj image
    images[0].matches[0].look = _look(0.67, 13.5, 1.6, 22.0, 0.48, 0.20)
    images[1].matches[0].look = _look(0.86, 9.0, 0.1, 22.5, 0.47, 0.19, face_px=170)
    images[6].matches[0].look = _look(0.70, 14.0, 1.7, 30.0, 0.25, 0.30)
    baseline = reference_look([_look(0.66, 13.2, 1.9, 21.3, 0.54, 0.17), _look(0.70, 14.5, 1.3, 23.9, 0.41, 0.24)])
    look = [
        RunLook(
            run,
            "obama",
            compare_look(
                [i.matches[0].look for i in images if i.run == run and i.matches and i.matches[0].look],
                baseline,
                name=run,
            ),
        )
        for run in ("sd15", XSS_RUN, "mj")
    ]
    return VerifyReport(
        backend=backend,
        threshold=0.4,
        characters=characters,
        runs=runs,
        images=images,
        licence_note=XSS_LICENCE,
        charkit_version="0.1.0",
        look=look,
    )


def _one_backend(img: ImageScore, name: str) -> None:
    img.scores, img.scored_by = {name: BackendVerdict(img.status, img.similarity)}, [name]
    for m in img.matches:
        m.scores = {name: BackendMatch(name, m.face, m.similarity, m.distance, m.relative, m.status)}


def _look(smooth, sharp, noise, sat, bright, contrast, face_px=300) -> LookMeasures:
    return LookMeasures(smooth, sharp, noise, sat, bright, contrast, face_px=face_px)


# Which photo stands in for each rendered image (resized to the image's declared size, so boxes line up).
PHOTOS = {
    "renders/sd15/s01.png": "obama.jpg",
    f"renders/sd15/{XSS_FILE}": "obama2.jpg",
    "renders/sd15/s03.png": "32bit.png",
    "renders/xl/s01.png": "obama3.jpg",
    "renders/xl/s02.png": "biden.jpg",
    "external/mj/02.png": "obama.jpg",
}  # "@SUM(A1).png" and the unreadable renders/xl/s03.png have no thumbnail: placeholders


@pytest.fixture(scope="module")
def report() -> VerifyReport:
    return build_report()


@pytest.fixture(scope="module")
def thumbs(report) -> dict[str, bytes]:
    faces = Path(__file__).parent / "data" / "faces"
    sizes = {i.path: (i.width, i.height) for i in report.images}
    return {p: make_thumbnail(load_image(faces / f).image.resize(sizes[p])) for p, f in PHOTOS.items()}


@pytest.fixture(scope="module")
def written(report, thumbs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "out"
    return write_report(report, out, thumbnails=thumbs)


@pytest.fixture(scope="module")
def tree(written):
    return parse_html(written.html.read_text(encoding="utf-8"))


# -- a small DOM over html.parser ---------------------------------------------------------

#: Every element report.html may contain: no script, iframe, object, embed, link or base, ever.
ALLOWED_TAGS = {
    "html",
    "head",
    "meta",
    "title",
    "style",
    "body",
    "header",
    "h1",
    "h2",
    "p",
    "b",
    "dl",
    "dt",
    "dd",
    "div",
    "section",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
    "span",
    "ul",
    "li",
    "figure",
    "figcaption",
    "img",
    "svg",
    "g",
    "line",
    "polyline",
    "circle",
    "path",
    "rect",
    "text",
    "label",
    "input",
    "h3",
    "caption",
}

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Node:
    def __init__(self, tag, attrs, parent):
        self.tag, self.attr_list, self.parent = tag, attrs, parent
        self.attrs = dict(attrs)
        self.children: list[Node] = []
        self.parts: list = []  # text and child nodes in document order

    @property
    def classes(self) -> list[str]:
        return (self.attrs.get("class") or "").split()

    def find_all(self, tag=None, cls=None) -> list[Node]:
        out = []
        for c in self.children:
            if (tag is None or c.tag == tag) and (cls is None or cls in c.classes):
                out.append(c)
            out += c.find_all(tag, cls)
        return out

    def text(self) -> str:
        return "".join(p if isinstance(p, str) else p.text() for p in self.parts)


class Tree(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.cur = Node("#root", [], None)
        self.elements: list[Node] = []
        self.texts: list[str] = []

    def handle_starttag(self, tag, attrs):
        n = Node(tag, attrs, self.cur)
        self.cur.children.append(n)
        self.cur.parts.append(n)
        self.elements.append(n)
        if tag not in VOID:
            self.cur = n

    def handle_startendtag(self, tag, attrs):
        n = Node(tag, attrs, self.cur)
        self.cur.children.append(n)
        self.cur.parts.append(n)
        self.elements.append(n)

    def handle_endtag(self, tag):
        n = self.cur
        while n is not self.root and n.tag != tag:
            n = n.parent
        if n is not self.root:
            self.cur = n.parent

    def handle_data(self, data):
        self.cur.parts.append(data)
        self.texts.append(data)


def parse_html(text: str) -> Tree:
    t = Tree()
    t.feed(text)
    t.close()
    return t


# -- files -------------------------------------------------------------------------------


def test_write_report_writes_three_files(written, report):
    assert (
        written.json.name == "report.json" and written.csv.name == "report.csv" and written.html.name == "report.html"
    )
    for p in (written.json, written.csv, written.html):
        assert p.is_file() and p.stat().st_size > 0
        assert p.stat().st_mode & 0o777 == 0o644
    # nothing but the three files: no staged or temporary leftovers
    assert sorted(p.name for p in written.json.parent.iterdir()) == ["report.csv", "report.html", "report.json"]
    text = written.json.read_text(encoding="utf-8")
    assert text == json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n"
    data = json.loads(text)
    assert data["threshold"] == 0.4 and data["backend"]["name"] == "dlib"
    assert data["baseline"]["obama"] == {"mean": 0.6234, "min": 0.5521, "references": 3}
    assert [i["path"] for i in data["images"]] == [i.path for i in report.images]


def test_render_is_deterministic(report, thumbs):
    assert render_html(report, thumbs) == render_html(report, thumbs)


# -- HTML safety ---------------------------------------------------------------------------


def test_html_keeps_hostile_strings_inert(written, tree):
    raw = written.html.read_text(encoding="utf-8")
    assert "<script" not in raw.lower()
    for el in tree.elements:
        assert el.tag in ALLOWED_TAGS, el.tag
        for name, value in el.attr_list:
            assert not name.lower().startswith("on"), (el.tag, name, value)
            assert name.lower() not in ("href", "xlink:href", "srcset", "action", "formaction"), (el.tag, name)
            assert "javascript:" not in (value or "").lower()
            assert "url(" not in (value or "").lower()
    # the hostile strings survive as text, which they can only do if they were escaped
    texts = "".join(tree.texts)
    for s in (XSS_FILE, XSS_RUN, QUOTED_SCENE, XSS_NOTE, XSS_ERROR, XSS_LICENCE):
        assert s in texts, s
    assert not any(el.tag == "img" and el.attrs.get("src") == "x" for el in tree.elements)
    # CSP: nothing may be fetched and nothing may run, even if escaping ever failed
    csp = [
        el.attrs["content"]
        for el in tree.elements
        if el.tag == "meta" and el.attrs.get("http-equiv") == "Content-Security-Policy"
    ]
    assert csp == [report_toolkit.CSP] and "default-src 'none'" in csp[0] and "script-src" not in csp[0]


def test_html_fetches_nothing(tree, thumbs):
    imgs = [el for el in tree.elements if el.tag == "img"]
    assert len(imgs) == len(thumbs)
    inlined = set()
    for el in imgs:
        src = el.attrs["src"]
        assert src.startswith("data:image/jpeg;base64,")
        inlined.add(base64.b64decode(src.split(",", 1)[1], validate=True))
    assert inlined == set(thumbs.values())
    for el in tree.elements:
        for name, value in el.attr_list:
            if name in ("src", "href", "xlink:href", "poster", "data"):
                assert not re.match(r"\s*(https?:)?//", value or ""), (el.tag, name, value)
    css = "".join(el.text() for el in tree.elements if el.tag == "style")
    assert "url(" not in css and "@import" not in css and "http" not in css


def test_template_environment_autoescapes():
    env = report_writer.environment()
    assert env.autoescape("report.html.j2") is True
    assert env.from_string("{{ x }}").render(x="<b>&\"'") == "&lt;b&gt;&amp;&#34;&#39;"
    template = (Path(report_writer.__file__).parent / "templates" / "report.html.j2").read_text(encoding="utf-8")
    assert "|safe" not in template.replace(" ", "") and "Markup" not in Path(report_writer.__file__).read_text()


_FRAGMENTS = st.sampled_from(
    [
        "<",
        ">",
        "&",
        '"',
        "'",
        "<script>",
        "</svg>",
        "<!--",
        "]]>",
        "onload=",
        "javascript:",
        "&lt;",
        "{{ x }}",
        "\u2028",
        "=",
        "/",
    ]
)
_HOSTILE = st.lists(
    st.one_of(_FRAGMENTS, st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=6)), min_size=1, max_size=6
).map("".join)


@settings(max_examples=25, derandomize=True, deadline=None)
@given(run=_HOSTILE, path=_HOSTILE, scene=_HOSTILE, character=_HOSTILE)
def test_any_user_text_stays_text(run, path, scene, character):
    rep = build_report()
    img = rep.images[0]
    img.run, img.path, img.scene = run, path, scene
    img.matches[0].character = character
    t = parse_html(render_html(rep))
    for el in t.elements:
        assert el.tag in ALLOWED_TAGS, el.tag
        assert not any(name.startswith("on") for name, _ in el.attr_list)
    texts = "".join(t.texts)
    assert run in texts and scene in texts and character in texts
    assert any(el.attrs.get("title") == path for el in t.elements)


# -- drift plot ----------------------------------------------------------------------------


def _plot(tree) -> Node:
    (svg,) = tree.root.find_all("svg", "plot")
    return svg


def _points(polyline: Node) -> list[tuple[float, float]]:
    return [tuple(map(float, p.split(","))) for p in polyline.attrs["points"].split()]


def test_plot_has_one_polyline_per_run_and_threshold(tree, report):
    svg = _plot(tree)
    series = svg.find_all("g", "series")
    assert [g.attrs["data-run"] for g in series] == ["sd15", XSS_RUN, "mj"]
    assert len(svg.find_all("polyline")) == 3
    assert all(len(g.find_all("polyline")) == 1 for g in series)
    colours = [g.find_all("polyline")[0].attrs["stroke"] for g in series]
    assert len(set(colours)) == 3
    # the threshold line sits exactly on the 0.4 grid line; one baseline line per character
    (thr,) = svg.find_all("line", "threshold")
    assert thr.attrs["y1"] == thr.attrs["y2"]
    grid_y = {
        t.text(): float(t.attrs["y"]) - 4
        for t in svg.find_all("g", "yaxis")[0].find_all("text")
        if t.text() != "similarity"
    }
    assert float(thr.attrs["y1"]) == pytest.approx(grid_y["0.4"], abs=0.06)
    assert len(svg.find_all("line", "baseline")) == 2
    # points: one per image with a similarity; markers on the axis for the rest
    scored = [i for i in report.images if i.similarity is not None]
    assert len(svg.find_all("circle")) == len(scored)
    markers = svg.find_all("path", "mk")
    assert sorted(m.classes[1] for m in markers) == ["s-drift", "s-error", "s-no_face"]
    (axis_y,) = {
        float(line.attrs["y1"]) for line in svg.find_all("line", "axis") if line.attrs["y1"] == line.attrs["y2"]
    }
    for m in markers:  # every marker straddles the x axis
        ys = [float(v) for v in re.findall(r"[ML]?[\d.]+,([\d.]+)", m.attrs["d"])]
        assert min(ys) <= axis_y <= max(ys)


def test_plot_follows_scene_order_and_scale(tree):
    svg = _plot(tree)
    sd15, xl, mj = (g.find_all("polyline")[0] for g in svg.find_all("g", "series"))
    a, b = _points(sd15)
    assert a[0] < b[0]  # s01 before s02
    assert a[1] < b[1]  # 0.6123 is drawn higher than 0.3101
    # the external run (no scene ids) lines up with the rendered scenes by order, dodged a few pixels
    m0, m1 = _points(mj)
    assert abs(m0[0] - a[0]) < 20 and abs(m1[0] - b[0]) < 20
    assert m0[1] > b[1]  # -0.1234 is below 0.3101
    assert len(_points(xl)) == 1


# -- image grid ----------------------------------------------------------------------------


def test_grid_groups_runs_side_by_side(tree, report, thumbs):
    (grid,) = tree.root.find_all("table", "grid")
    head = [th.text() for th in grid.find_all("thead")[0].find_all("th")]
    assert head == ["scene", "sd15", XSS_RUN, "mj"]
    rows = grid.find_all("tbody")[0].find_all("tr")
    assert [r.find_all("th")[0].text() for r in rows] == ["s01", "s02", QUOTED_SCENE]
    for r in rows:
        assert len(r.find_all("td")) == 3
    # the external image at order 0 sits in the s01 row, under mj
    s01_mj = rows[0].find_all("td")[2]
    assert "@SUM(A1).png" in s01_mj.text()
    cards = grid.find_all("figure", "card")
    assert len(cards) == len(report.images)
    assert len(tree.root.find_all("div", "placeholder")) == len(report.images) - len(thumbs)
    assert "unreadable" in rows[2].find_all("td")[1].text()


def test_cards_overlay_face_boxes_and_badges(tree, report):
    cards = {c.find_all("p", "file")[0].attrs["title"]: c for c in tree.root.find_all("figure", "card")}
    assert set(cards) == {i.path for i in report.images}
    two = cards[f"renders/sd15/{XSS_FILE}"]
    (svg,) = two.find_all("svg", "overlay")
    assert svg.attrs["viewbox"] == "0 0 768 512"  # html.parser lower-cases attribute names
    rects = svg.find_all("rect")
    assert [(r.attrs["x"], r.attrs["y"], r.attrs["width"], r.attrs["height"]) for r in rects] == [
        ("80.0", "100.0", "140.0", "170.0"),
        ("470.0", "90.0", "150.0", "190.0"),
    ]
    assert rects[0].classes == ["face", "m-pass"] and rects[1].classes == ["face", "m-drift"]
    assert [t.text() for t in svg.find_all("text")] == ["biden 0.52", "obama 0.31"]
    assert two.find_all("span", "badge")[0].text() == "drift"
    assert "swapped: obama \u2194 biden" in two.text()
    missing = cards["renders/xl/s02.png"]
    assert "missing: biden" in missing.text()
    assert [li.classes for li in missing.find_all("li")] == [["m-pass"], ["m-missing"]]
    for img in report.images:
        card = cards[img.path]
        assert card.find_all("span", "badge")[0].classes == ["badge", f"s-{img.status}"]
        assert len(card.find_all("rect")) == (len(img.faces) if img.width else 0)
    assert "0.612" in cards["renders/sd15/s01.png"].text() and "0.98\u00d7" in cards["renders/sd15/s01.png"].text()


def test_single_run_is_a_card_grid():
    one = build_report()
    one.images = [i for i in one.images if i.run == "sd15"]
    one.runs = one.runs[:1]
    t = parse_html(render_html(one))
    assert not t.root.find_all("table", "grid")
    assert len(t.root.find_all("div", "cards")[0].find_all("figure", "card")) == 3
    assert len(_plot(t).find_all("polyline")) == 1
    assert len(t.root.find_all("div", "placeholder")) == 3  # no thumbnails at all


def test_empty_and_partial_reports_render():
    empty = build_report()
    empty.images = []
    t = parse_html(render_html(empty))
    assert len(_plot(t).find_all("polyline")) == 3 and not _plot(t).find_all("circle")
    assert "held in 0 of 0 scored images" in t.root.find_all("p", "headline")[0].text()
    # a run that has images but no summary row still gets a row, a colour and a line
    partial = build_report()
    partial.runs = partial.runs[:1]
    t = parse_html(render_html(partial))
    rows = t.root.find_all("table", "summary")[0].find_all("tbody")[0].find_all("tr")
    assert [r.find_all("td")[0].text() for r in rows] == ["sd15", XSS_RUN, "mj"]
    assert rows[1].find_all("td")[1].text() == "no summary"
    assert len(_plot(t).find_all("polyline")) == 3


def test_scene_slots_align_plain_folders():
    def img(run, order, scene=None):
        return ImageScore(path=f"{run}/{order}.png", run=run, status="pass", scene=scene, order=order)

    images = [img("b", 1, "s2"), img("b", 0, "s1"), img("ext", 0), img("ext", 1), img("ext", 5)]
    slots, of_image = scene_slots(images)
    assert [s.label for s in slots] == ["s1", "s2", "#5"]
    assert [s.label for s in of_image] == ["s2", "s1", "s1", "s2", "#5"]


# -- CSV -----------------------------------------------------------------------------------


def test_csv_rows_and_formula_neutralisation(written):
    text = written.csv.read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    header = tuple(csv.reader(io.StringIO(text)).__next__())
    assert header == report_writer.csv_columns(build_report()) == (*CSV_COLUMNS, "dlib_similarity", "dlib_status")
    # one row per (image, expected character): 6 one-character images + 2 two-character images
    assert len(rows) == 10
    two = [r for r in rows if r["path"] == f"renders/sd15/{XSS_FILE}"]
    assert [(r["character"], r["status"], r["face"], r["similarity"]) for r in two] == [
        ("obama", "drift", "1", "0.3101"),
        ("biden", "pass", "0", "0.5222"),
    ]
    assert two[0]["faces"] == "2" and two[0]["swapped"] == "obama<->biden"
    missing = [r for r in rows if r["path"] == "renders/xl/s02.png"]
    assert [(r["character"], r["status"], r["missing"]) for r in missing] == [
        ("obama", "pass", "biden"),
        ("biden", "missing", "biden"),
    ]
    assert missing[1]["similarity"] == "" and missing[1]["face"] == ""
    statuses = {r["path"]: r["status"] for r in rows}
    assert statuses["renders/sd15/s03.png"] == "no_face" and statuses["renders/xl/s03.png"] == "error"
    err = next(r for r in rows if r["path"] == "renders/xl/s03.png")
    assert err["error"] == XSS_ERROR and err["scene"] == QUOTED_SCENE and err["run"] == XSS_RUN
    # formulas neutralised in text cells, numbers left as numbers
    mj = next(r for r in rows if r["run"] == "mj" and r["order"] == "0")
    assert mj["path"] == "'@SUM(A1).png" and mj["model"] == "'+cmd"
    assert mj["similarity"] == "-0.1234" and float(mj["relative"]) < 0
    assert next(r for r in rows if r["run"] == "mj" and r["order"] == "1")["model"] == "'=1+2"


@pytest.mark.parametrize("cell", ["=1+1", "+1", "-cmd", "@SUM(A1)", "\tx", "\rx"])
def test_csv_text_cells_starting_like_formulas_are_quoted(cell):
    assert report_writer._text(cell) == "'" + cell
    assert report_writer._text("a" + cell) == "a" + cell
    assert report_writer._num(-0.5) == "-0.5" and report_writer._num(-3) == "-3"


# -- golden files --------------------------------------------------------------------------


def _fragment(html: str, section: str) -> str:
    m = re.search(rf'<section id="{section}">.*?</section>\n', html, re.S)
    assert m, section
    return m.group(0)


def _golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(actual.encode("utf-8"))
    assert path.read_bytes().decode("utf-8") == actual, (
        f"{name} changed; rerun with UPDATE_GOLDEN=1 and review the diff"
    )


def test_golden_json_csv_and_html_fragments(written):
    _golden("report.json", written.json.read_text(encoding="utf-8"))
    _golden("report.csv", written.csv.read_text(encoding="utf-8"))
    html = written.html.read_text(encoding="utf-8")
    _golden("report_summary.html", _fragment(html, "summary"))
    _golden("report_plot.html", _fragment(html, "plot"))
    _golden("report_look.html", _fragment(html, "look"))


# -- thumbnails ------------------------------------------------------------------------------


def test_make_thumbnail_is_small_deterministic_jpeg(faces_dir):
    photo = load_image(faces_dir / "obama.jpg").image  # 910 x 1137
    a = make_thumbnail(photo)
    assert a == make_thumbnail(load_image(faces_dir / "obama.jpg").image)
    with Image.open(io.BytesIO(a)) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (205, 256)
        assert not im.info.get("exif") and not im.info.get("icc_profile")
    with Image.open(io.BytesIO(make_thumbnail(photo, max_side=64))) as im:
        assert im.size == (51, 64)
    with Image.open(io.BytesIO(make_thumbnail(Image.new("RGB", (100, 50), (200, 10, 10))))) as im:
        assert im.size == (100, 50)  # never enlarged
    rgba = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    with Image.open(io.BytesIO(make_thumbnail(rgba))) as im:
        assert min(im.getpixel((20, 20))) > 245  # transparent -> white, not black
    with pytest.raises(ValueError, match="max_side"):
        make_thumbnail(photo, max_side=4)


def test_thumbnails_for_skips_unreadable(faces_dir, tmp_path):

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    got = thumbnails_for([faces_dir / "biden.jpg", bad, faces_dir / "biden.jpg"], max_side=32)
    assert list(got) == [str(faces_dir / "biden.jpg")]
    assert got[str(faces_dir / "biden.jpg")] == make_thumbnail(load_image(faces_dir / "biden.jpg").image, 32)


# -- all or nothing ------------------------------------------------------------------------


def test_failure_while_writing_leaves_the_old_report(report, thumbs, tmp_path, monkeypatch):
    out = tmp_path / "out"
    old = build_report()
    old.images = old.images[:1]
    write_report(old, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = report_toolkit.atomic_write_text
    calls = []

    def failing(path, text):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real(path, text)

    monkeypatch.setattr(report_toolkit, "atomic_write_text", failing)
    with pytest.raises(OSError, match="No space"):
        write_report(report, out, thumbnails=thumbs)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # old files intact, no temporaries left


def _fail_placing(monkeypatch, name):
    """Make moving the staged ``name`` into place fail, after the files before it were moved."""
    real = os.replace

    def replace(src, dst):
        if str(src).endswith(".staged") and Path(dst).name == name:
            raise OSError(5, "I/O error")
        real(src, dst)

    monkeypatch.setattr(report_toolkit.os, "replace", replace)


def test_failure_while_placing_rolls_back(report, tmp_path, monkeypatch):
    out = tmp_path / "out"
    old = build_report()
    old.images = old.images[:1]
    write_report(old, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _fail_placing(monkeypatch, "report.html")  # report.json and report.csv are already replaced by then
    with pytest.raises(OSError, match="I/O error"):
        write_report(report, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_failure_in_a_new_folder_leaves_nothing(report, tmp_path, monkeypatch):
    out = tmp_path / "fresh" / "out"
    _fail_placing(monkeypatch, "report.csv")
    with pytest.raises(OSError, match="I/O error"):
        write_report(report, out)
    assert not out.exists()


def test_bad_input_writes_nothing(report, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="not JPEG or PNG"):
        write_report(report, out, thumbnails={"renders/sd15/s01.png": b"GIF89a..."})
    nan = build_report()
    nan.images[0].similarity = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        write_report(nan, out)
    assert not out.exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CharkitError, match="not a folder"):
        write_report(report, blocker)
    with pytest.raises(CharkitError, match="not a folder"):
        write_report(report, blocker / "sub")


# -- several backends ------------------------------------------------------------------------------


def build_panel_report() -> VerifyReport:
    """dlib + sface: one image they agree on, one they disagree on, one FaceID image sface 'conditioned'."""
    from charkit.identity.panel import COMBINED_METRIC, COMBINED_RULE

    rep = build_report()
    dlib = rep.backend
    sface = BackendInfo("sface", "YuNet + SFace", "ab" * 32, 128, "cosine", 0.4, "Apache-2.0")
    panel_info = BackendInfo("dlib+sface", "dlib; sface", "cd" * 32, 0, COMBINED_METRIC, 0.0, "CC0; Apache-2.0")
    imgs = [rep.images[0], rep.images[3], rep.images[7]]
    verdicts = [
        (("pass", 0.61), ("pass", 0.66), True, None),
        (("drift", 0.37), ("pass", 0.44), False, None),
        (("pass", 0.52), ("pass", 0.71), None, "sface"),
    ]
    for img, (d, s, agree, conditioned) in zip(imgs, verdicts):
        (m,) = img.matches
        counted = ["dlib"] if conditioned == "sface" else ["dlib", "sface"]
        m.scores = {
            "dlib": BackendMatch("dlib", 0, d[1], 1 - d[1], d[1] / 0.62, d[0]),
            "sface": BackendMatch("sface", 0, s[1], 1 - s[1], s[1] / 0.62, s[0], independent=conditioned != "sface"),
        }
        m.agree, m.status = agree, "drift" if agree is False else "pass"
        m.similarity = sum((v[1] - 0.4) / 0.6 for v, n in ((d, "dlib"), (s, "sface")) if n in counted) / len(counted)
        img.status, img.similarity = m.status, m.similarity
        img.scores = {"dlib": BackendVerdict(*d), "sface": BackendVerdict(*s, independent=conditioned != "sface")}
        img.scored_by, img.conditioned_by = counted, conditioned
    rep.images = imgs
    rep.backend, rep.backends, rep.combined_rule, rep.threshold = panel_info, [dlib, sface], COMBINED_RULE, 0.0
    rep.runs = [RunSummary("sd15", 3, 2, 1, 0, 0, 0.1, -0.05, 2 / 3, compared=2, disagreements=1)]
    return rep


def test_panel_report_names_every_backend_and_flags_disagreements():
    rep = build_panel_report()
    record = json.loads(report_writer.render_json(rep))  # validates as VerifyReportFile
    assert [b["name"] for b in record["backends"]] == ["dlib", "sface"] and record["backend"]["dim"] == 0
    assert [i["disagree"] for i in record["images"]] == [False, True, False]
    assert record["images"][2]["matches"][0]["scores"]["sface"]["independent"] is False
    t = parse_html(render_html(rep))
    (dis,) = t.root.find_all("table", "disagreements")
    (row,) = dis.find_all("tbody")[0].find_all("tr")
    assert [td.text() for td in row.find_all("td")][3:] == ["obama", "drift 0.008", "0.370 drift", "0.440 pass"]
    header = t.root.find_all("dl", "backend")[0].text()
    assert "dlib" in header and "sface" in header and "YuNet + SFace" in header and COMBINED_RULE_WORDS in t.root.text()
    cards = {c.find_all("p", "file")[0].attrs["title"]: c for c in t.root.find_all("figure", "card")}
    faceid = cards[rep.images[2].path]
    assert "conditioned by sface (IP-Adapter FaceID)" in faceid.text() and "scored by dlib" in faceid.text()
    (nc,) = faceid.find_all("li", "not-counted")
    assert "sface" in nc.text() and "not counted" in nc.text()
    assert [s.text() for s in cards[rep.images[1].path].find_all("span", "disagree")] == ["backends disagree"]
    assert "combined score" in _plot(t).text()
    summary = t.root.find_all("table", "summary")[0]
    assert [th.text() for th in summary.find_all("th")][-3:] == ["dlib pass", "sface pass", "backends agree"]
    assert "50% (1 of 2)" in summary.text()
    rows = list(csv.DictReader(io.StringIO(report_writer.render_csv(rep))))
    assert [(r["agree"], r["dlib_status"], r["sface_status"], r["conditioned_by"]) for r in rows] == [
        ("yes", "pass", "pass", ""),
        ("no", "drift", "pass", ""),
        ("", "pass", "pass", "sface"),
    ]


COMBINED_RULE_WORDS = "passes only when every counted backend with an opinion passes"


def test_look_plot_clips_far_faces_to_arrows():
    from charkit.verify.look_view import build_look_views

    rep = build_report()
    (view,) = build_look_views(rep.look, {"sd15": "#111111", XSS_RUN: "#222222", "mj": "#333333"})
    assert [t.run for t in view.tables] == ["sd15", XSS_RUN, "mj"] and view.references == 2
    assert [len(t.rows) for t in view.tables] == [6, 0, 6] and view.tables[1].notes == ["no face measured in this run"]
    mj = next(s for s in view.plot.series if s.run == "mj")
    arrows = [d for d in mj.dots if d.arrow]
    assert arrows and all(d.x in (view.plot.left, view.plot.right) for d in arrows)  # saturation 30 is far above
    lo, hi = view.plot.band
    assert view.plot.left < lo < hi < view.plot.right and len(mj.dots) == 6 and len(mj.medians) == 6
