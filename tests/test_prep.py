"""`charkit prep` on real photos with real dlib embeddings.

One prepared character (module fixture) serves most asserts: obama.jpg, obama2.jpg, obama3.jpg
(kept), biden.jpg (identity outlier), a re-saved smaller copy of obama.jpg (near-duplicate), a
truncated JPEG (unreadable), a background crop (no face) and two portraits pasted side by side
(several faces).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fixtures_faces import make_character, no_face_photo
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from charkit.cli import cli
from charkit.dataset import aspect_buckets, choose_bucket, hamming, phash, plan_crop, prep_dataset
from charkit.dataset import prep as prep_mod
from charkit.dataset.buckets import MIN_FACE_HEIGHT, bucket_step
from charkit.dataset.report import estimate_yaw, pose_bin, render_html
from charkit.errors import CharkitError
from charkit.paths import sha256_file

FACES = Path(__file__).parent / "data" / "faces"


def duplicate_photo(path: Path) -> Path:
    """obama.jpg re-saved at 90% size and JPEG quality 60: the same photo, different bytes."""
    with Image.open(FACES / "obama.jpg") as im:
        im.resize((round(im.width * 0.9), round(im.height * 0.9)), Image.LANCZOS).save(path, quality=60)
    return path


def two_faces_photo(path: Path) -> Path:
    """Head-and-shoulders crops of obama2.jpg and biden.jpg side by side: two faces of equal size."""
    with Image.open(FACES / "obama2.jpg") as a, Image.open(FACES / "biden.jpg") as b:
        left = a.crop((70, 200, 570, 800)).resize((250, 300), Image.LANCZOS)
        right = b.crop((340, 130, 840, 730)).resize((250, 300), Image.LANCZOS)
    out = Image.new("RGB", (500, 300))
    out.paste(left, (0, 0))
    out.paste(right, (250, 0))
    out.save(path, quality=92)
    return path


def corrupt_photo(path: Path) -> Path:
    path.write_bytes((FACES / "obama.jpg").read_bytes()[:400])  # a JPEG cut off after its header
    return path


def tree_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def prepped(tmp_path_factory, dlib_backend, face_cache):
    root = tmp_path_factory.mktemp("prep")
    d = make_character(root, "obama", ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"])
    refs = d / "refs"
    duplicate_photo(refs / "obama_copy.jpg")
    corrupt_photo(refs / "corrupt.jpg")
    no_face_photo(refs / "curtains.jpg")
    two_faces_photo(refs / "two_faces.jpg")
    (refs / "obama2.txt").write_text("at a podium,\n  red tie\n", encoding="utf-8")
    before = tree_hashes(refs)
    result = prep_dataset(d, family="sd15", backend=dlib_backend, cache=face_cache)
    return d, result, before


def reasons(result) -> dict[str, str]:
    return {Path(r.path).name: r.reason for r in result.rejected}


def test_keeps_the_character_and_rejects_with_reasons(prepped):
    d, result, _ = prepped
    assert sorted(it.source for it in result.items) == ["obama.jpg", "obama2.jpg", "obama3.jpg"]
    why = reasons(result)
    assert set(why) == {"biden.jpg", "obama_copy.jpg", "corrupt.jpg", "curtains.jpg", "two_faces.jpg"}
    m = re.fullmatch(r"identity_outlier \(similarity (-?\d\.\d\d) < threshold 0\.40\)", why["biden.jpg"])
    assert m and float(m.group(1)) < 0.40
    assert why["obama_copy.jpg"] == "near_duplicate of obama.jpg"  # the larger copy stays
    assert why["corrupt.jpg"].startswith("unreadable: ")
    assert why["curtains.jpg"] == "no_face"
    assert why["two_faces.jpg"].startswith("several_faces")
    # leave-one-out similarity of what was kept: same person, above the threshold
    assert all(it.similarity is not None and it.similarity >= 0.40 for it in result.items)


def test_originals_untouched(prepped):
    d, _, before = prepped
    assert tree_hashes(d / "refs") == before


def test_crops_have_bucket_sizes_and_hold_the_face(prepped, dlib_backend, face_cache):
    d, result, _ = prepped
    buckets = {(b.width, b.height) for b in aspect_buckets(512)}
    for it in result.items:
        with Image.open(d / "dataset" / it.file) as im:
            crop = im.convert("RGB")
        assert crop.size == (it.width, it.height) and crop.size in buckets
        assert it.width % 64 == 0 and it.height % 64 == 0
        # portrait photos go to portrait buckets
        assert (it.width < it.height) == (it.source_width < it.source_height)
        faces = dlib_backend.analyze(np.asarray(crop))
        assert faces, f"no face found again in {it.file}"
        found = faces[0]
        assert _iou(found.box, it.face_box) > 0.5
        # the crop is still the same person as the original photo (its faces come from the prep run's cache)
        original = face_cache.get(dlib_backend.info.cache_key, sha256_file(d / "refs" / it.source)).faces[0]
        assert dlib_backend.similarity(found.embedding, original.embedding) >= dlib_backend.info.threshold
        x0, y0, x1, y1 = it.face_box
        assert 0 <= x0 < x1 <= it.width and 0 <= y0 < y1 <= it.height and not it.face_cut


def test_captions(prepped):
    d, result, _ = prepped
    by_source = {it.source: it for it in result.items}
    assert by_source["obama2.jpg"].caption == "ohwx man, at a podium, red tie"
    assert by_source["obama.jpg"].caption == "ohwx man"
    for it in result.items:
        txt = (d / "dataset" / it.file).with_suffix(".txt").read_text(encoding="utf-8")
        assert txt == it.caption + "\n"


def test_dataset_json_layout(prepped, dlib_backend):
    d, result, _ = prepped
    data = json.loads((d / "dataset" / "dataset.json").read_text())
    assert (data["character"], data["family"], data["resolution"]) == ("obama", "sd15", 512)
    assert data["backend"] == dlib_backend.info.to_dict()
    assert [it["file"] for it in data["items"]] == [it.file for it in result.items]
    for it in data["items"]:
        assert {"file", "caption", "width", "height", "source", "face_box", "similarity"} <= set(it)
        assert (d / "dataset" / it["file"]).is_file()
    assert {r["source"]: r["reason"] for r in data["rejected"]} == reasons(result)
    # nothing else in the folder: images + captions, dataset.json, the two reports
    names = sorted(p.relative_to(d / "dataset").as_posix() for p in (d / "dataset").rglob("*") if p.is_file())
    stems = sorted(Path(it.file).stem for it in result.items)
    expected = ["dataset.json", "prep_report.html", "prep_report.json"]
    expected += [f"images/{s}.{ext}" for s in stems for ext in ("png", "txt")]
    assert names == sorted(expected)
    assert not [p for p in d.iterdir() if p.name.startswith(".")]  # no staging folders left behind


def test_report_counts_coverage_and_escaping(prepped):
    d, result, _ = prepped
    rep = json.loads(result.report_json.read_text())
    assert rep["counts"] == {
        "references": 8,
        "kept": 3,
        "rejected": 5,
        "reasons": {"identity_outlier": 1, "near_duplicate": 1, "no_face": 1, "several_faces": 1, "unreadable": 1},
    }
    cov = rep["coverage"]
    assert sum(cov["pose"].values()) == 3 and sum(cov["size"].values()) == 3
    assert cov["pose"]["left"] == 1 and cov["pose"]["frontal"] == 2  # obama2.jpg looks to the image's left
    assert any("only 3 images kept" in w for w in cov["warnings"])
    html = result.report_html.read_text()
    assert "identity_outlier (similarity" in html and "&lt; threshold 0.40" in html
    assert html.count("data:image/jpeg;base64,") == 3 + 4  # kept crops + readable rejected originals
    assert "http" not in html.replace("http-equiv", "")  # self-contained
    rep["kept"][0]["caption"] = "<script>alert(1)</script>"
    evil = render_html(rep, {})
    assert "<script>alert" not in evil and "&lt;script&gt;alert(1)&lt;/script&gt;" in evil


def test_rerun_replaces_atomically(tmp_path, dlib_backend, face_cache, monkeypatch):
    d = make_character(tmp_path, "obama", ["obama.jpg", "obama2.jpg"])
    first = prep_dataset(d, backend=dlib_backend, cache=face_cache)
    ds = d / "dataset"
    (ds / "images" / "stale.png").write_bytes(b"left from an older run")
    snapshot = tree_hashes(ds)

    # A run that dies half-way through writing crops leaves the previous dataset exactly as it was.
    real_make_item, calls = prep_mod.make_item, []

    def dies_on_second_item(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real_make_item(*args, **kwargs)

    monkeypatch.setattr(prep_mod, "make_item", dies_on_second_item)
    with pytest.raises(KeyboardInterrupt):
        prep_dataset(d, backend=dlib_backend, cache=face_cache)
    monkeypatch.undo()
    assert len(calls) == 2 and tree_hashes(ds) == snapshot
    assert not [p for p in d.iterdir() if p.name.startswith(".")]

    # A complete rerun (through the CLI) replaces the folder as a whole: the stray file is gone.
    r = CliRunner().invoke(cli, ["prep", str(d), "--backend", "dlib"])
    assert r.exit_code == 0, r.output
    assert "kept 2 of 2 references" in r.output
    assert not (ds / "images" / "stale.png").exists()
    after = tree_hashes(ds)
    del snapshot["images/stale.png"]
    assert after == snapshot  # deterministic: same crops, captions, dataset.json and reports
    assert len(first.items) == 2


# ---------------------------------------------------------------------------------- bad datasets


def _missing(tmp_path):
    return tmp_path / "nobody", []


def _no_toml(tmp_path):
    (tmp_path / "ghost" / "refs").mkdir(parents=True)
    return tmp_path / "ghost", []


def _empty_refs(tmp_path):
    d = make_character(tmp_path, "empty", [])
    (d / "refs" / "notes.txt").write_text("no photos here")
    return d, []


def _all_rejected(tmp_path):
    d = make_character(tmp_path, "bad", [])
    corrupt_photo(d / "refs" / "broken.jpg")
    no_face_photo(d / "refs" / "curtains.jpg")
    return d, []


def _out_is_refs(tmp_path):
    d = make_character(tmp_path, "obama", ["obama.jpg"])
    return d, ["--out", str(d / "refs")]


BAD = [
    (_missing, "character folder not found"),
    (_no_toml, "no character here"),
    (_empty_refs, "no reference images"),
    (_all_rejected, "all 2 references were rejected (1 no_face, 1 unreadable); see "),
    (_out_is_refs, "would replace the folder holding the reference photos"),
]


@pytest.mark.parametrize("make, message", BAD, ids=[b[0].__name__.strip("_") for b in BAD])
def test_bad_datasets(make, message, tmp_path, dlib_backend):
    d, extra = make(tmp_path)
    refs = d / "refs"
    before = tree_hashes(refs) if refs.is_dir() else None
    out = Path(extra[1]) if extra else None
    with pytest.raises(CharkitError, match=re.escape(message)):
        prep_dataset(d, backend=dlib_backend, out=out, cache=False)
    r = CliRunner().invoke(cli, ["prep", str(d), "--backend", "dlib", *extra])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]
    assert not (d / "dataset").exists()  # nothing that looks like a dataset
    if before is not None:
        assert tree_hashes(refs) == before
    if make is _all_rejected:  # the report that explains it exists, outside the dataset folder
        rep = json.loads((d / "dataset.failed" / "prep_report.json").read_text())
        assert rep["counts"]["kept"] == 0 and rep["dataset"] is None
        assert str(d / "dataset.failed" / "prep_report.html") in lines[0]


# ------------------------------------------------------------------------ buckets, crop, hash, pose


@settings(max_examples=60, deadline=None, derandomize=True)
@given(res=st.integers(8, 256).map(lambda k: k * 8), w=st.integers(16, 4000), h=st.integers(16, 4000))
def test_buckets_property(res, w, h):
    buckets = aspect_buckets(res)
    step = bucket_step(res)
    assert buckets and all(b.width % step == 0 and b.height % step == 0 for b in buckets)
    assert all(abs(b.width * b.height / res**2 - 1) <= 0.15 for b in buckets)
    chosen = choose_bucket(w, h, buckets)
    best = min(abs(math.log(b.ratio / (w / h))) for b in buckets)
    assert abs(math.log(chosen.ratio / (w / h))) == pytest.approx(best)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    w=st.integers(64, 3000),
    h=st.integers(64, 3000),
    fx=st.floats(0, 1),
    fy=st.floats(0, 1),
    fs=st.floats(0.02, 0.6),
)
def test_plan_crop_property(w, h, fx, fy, fs):
    side = fs * min(w, h)
    x0, y0 = fx * (w - side), fy * (h - side)
    face = (x0, y0, x0 + side, y0 + side)
    bucket = choose_bucket(w, h, aspect_buckets(512))
    cp = plan_crop(w, h, face, bucket)
    bx0, by0, bx1, by1 = cp.box
    eps = 1e-6
    assert -eps <= bx0 < bx1 <= w + eps and -eps <= by0 < by1 <= h + eps
    assert (bx1 - bx0) / (by1 - by0) == pytest.approx(bucket.ratio, rel=1e-6)
    fits = side <= (bx1 - bx0) + eps and side <= (by1 - by0) + eps
    if fits:
        assert not cp.face_cut
        assert bx0 - eps <= face[0] and face[2] <= bx1 + eps and by0 - eps <= face[1] and face[3] <= by1 + eps
    if by1 - by0 < h - eps:  # tightened: the face is big enough in the crop, unless the bucket size forbids
        assert side / (by1 - by0) >= MIN_FACE_HEIGHT - 1e-6 or (by1 - by0) <= bucket.height + eps
    cx = (face[0] + face[2]) / 2
    if bx0 > eps and bx1 < w - eps:  # not clamped: the face is centred horizontally
        assert (bx0 + bx1) / 2 == pytest.approx(cx)


def test_phash_separates_copies_from_other_photos(tmp_path):
    copy = duplicate_photo(tmp_path / "copy.jpg")
    with Image.open(FACES / "obama.jpg") as a, Image.open(copy) as b, Image.open(FACES / "obama2.jpg") as c:
        ha, hb, hc = phash(a), phash(b), phash(c)
    assert hamming(ha, hb) <= 4
    assert hamming(ha, hc) >= 20


def test_yaw_bins():
    # dlib 5-point order: two corners of one eye, two of the other, base of the nose
    frontal = [(60, 40), (50, 40), (20, 40), (30, 40), (40, 60)]
    to_left = [(60, 40), (50, 40), (20, 40), (30, 40), (28, 60)]
    to_right = [(60, 40), (50, 40), (20, 40), (30, 40), (52, 60)]
    assert pose_bin(estimate_yaw(frontal, "dlib")) == "frontal"
    assert pose_bin(estimate_yaw(to_left, "dlib")) == "left"
    assert pose_bin(estimate_yaw(to_right, "dlib")) == "right"
    assert pose_bin(estimate_yaw([(20, 40), (60, 40), (52, 55), (25, 70), (55, 70)], "insightface")) == "right"
    assert estimate_yaw(frontal[:3], "dlib") is None and pose_bin(None) == "unknown"


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
