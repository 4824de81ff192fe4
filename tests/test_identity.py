"""Identity engine on real photos and real dlib embeddings."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from fixtures_faces import FACES_DIR, no_face_photo, side_by_side
from PIL import Image

from charkit.errors import CharkitError
from charkit.identity import build_profile, score_image
from charkit.identity.dlib_backend import DlibBackend


@pytest.fixture(scope="module")
def obama(dlib_backend, face_cache):
    return build_profile("obama", [FACES_DIR / "obama.jpg", FACES_DIR / "obama2.jpg"], dlib_backend, cache=face_cache)


@pytest.fixture(scope="module")
def biden(dlib_backend, face_cache):
    return build_profile("biden", [FACES_DIR / "biden.jpg"], dlib_backend, cache=face_cache)


def test_same_person_passes_other_person_drifts(obama, dlib_backend, face_cache):
    same = score_image(FACES_DIR / "obama3.jpg", [obama], dlib_backend, cache=face_cache)
    other = score_image(FACES_DIR / "biden.jpg", [obama], dlib_backend, cache=face_cache)
    assert same.status == "pass" and other.status == "drift"
    # measured: same person ~0.67, another person ~0.19 (threshold 0.40)
    assert same.similarity > 0.55 > 0.30 > other.similarity
    assert same.similarity == pytest.approx(1 - same.distance)
    assert same.relative == pytest.approx(same.similarity / obama.baseline_mean)
    assert other.matches[0].status == "drift"


def test_profile_baseline_is_leave_one_out(obama, dlib_backend):
    a, b = obama.embeddings
    # with two references each one's "others" centroid is the other photo
    assert obama.baseline_mean == pytest.approx(dlib_backend.similarity(a, b), abs=1e-6)
    assert obama.baseline_min == pytest.approx(obama.baseline_mean)
    assert obama.centroid.shape == (128,)
    assert obama.outliers == []


def test_outlier_reference_is_flagged_and_left_out_of_centroid(dlib_backend, face_cache):
    refs = [FACES_DIR / n for n in ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg")]
    p = build_profile("obama", refs, dlib_backend, cache=face_cache)
    assert p.outliers == [str(FACES_DIR / "biden.jpg")]
    assert p.used == [str(r) for r in refs[:3]]
    three = build_profile("obama", refs[:3], dlib_backend, cache=face_cache)
    np.testing.assert_allclose(p.centroid, three.centroid, atol=1e-6)
    assert p.baseline_mean == pytest.approx(three.baseline_mean)


def test_no_face_and_unreadable(obama, dlib_backend, tmp_path):
    empty = score_image(no_face_photo(tmp_path / "hall.jpg"), [obama], dlib_backend)
    assert empty.status == "no_face" and empty.similarity is None and empty.faces == []
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    err = score_image(bad, [obama], dlib_backend)
    assert err.status == "error" and "image" in err.error


def test_profile_without_faces_is_a_clear_error(dlib_backend, tmp_path):
    with pytest.raises(CharkitError, match="no usable reference face"):
        build_profile("ghost", [no_face_photo(tmp_path / "hall.jpg")], dlib_backend)


def _rgb(path):
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.parametrize(
    "variant",
    ["rgba", "exif_rotated", "grayscale", "cmyk", "sixteen_bit", "palette"],
)
def test_intake_variants_are_scored(variant, obama, dlib_backend, tmp_path):
    src = Image.open(FACES_DIR / "obama3.jpg").convert("RGB")
    src = src.resize((src.width // 2, src.height // 2))
    path = tmp_path / f"{variant}.png"
    if variant == "rgba":
        shutil.copy(FACES_DIR / "32bit.png", path)
        assert Image.open(path).mode == "RGBA"
    elif variant == "exif_rotated":
        # pixels stored sideways, EXIF says "rotate 90 CW to display" (orientation 6), as phones write them
        path = tmp_path / "rotated.jpg"
        exif = Image.Exif()
        exif[0x0112] = 6
        src.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif.tobytes(), quality=92)
        assert dlib_backend.detect(_rgb(path)) == []  # the raw pixels hold no upright face
    elif variant == "grayscale":
        src.convert("L").save(path)
    elif variant == "cmyk":
        path = tmp_path / "cmyk.jpg"
        src.convert("CMYK").save(path, quality=92)
    elif variant == "sixteen_bit":
        grey = np.asarray(src.convert("L"), dtype=np.uint16) * 257
        Image.fromarray(grey.astype(np.uint16)).save(path)
        assert Image.open(path).mode.startswith("I")
    elif variant == "palette":
        src.convert("P", palette=Image.Palette.ADAPTIVE).save(path)
    s = score_image(path, [obama], dlib_backend)
    assert s.status == "pass", (variant, s.similarity, s.error)
    assert s.width == Image.open(path).size[0] or variant == "exif_rotated"
    if variant == "exif_rotated":
        assert (s.width, s.height) == src.size and any("exif" in n for n in s.notes)


def test_two_characters_assigned_face_by_face(obama, biden, dlib_backend, tmp_path):
    scene = side_by_side("obama3.jpg", "biden.jpg", tmp_path / "scene.jpg")
    s = score_image(scene, [biden, obama], dlib_backend)
    assert len(s.faces) == 2 and s.status == "pass"
    by_name = {m.character: m for m in s.matches}
    left = min(range(2), key=lambda i: s.faces[i].box[0])
    assert by_name["obama"].face == left and by_name["biden"].face == 1 - left
    assert all(m.status == "pass" for m in s.matches)
    # a manifest declares characters left to right: [biden, obama] is the wrong way round
    flipped = score_image(scene, [biden, obama], dlib_backend, left_to_right=True)
    assert flipped.swapped == [["biden", "obama"]] and flipped.status == "drift"
    in_order = score_image(scene, [obama, biden], dlib_backend, left_to_right=True)
    assert in_order.swapped == [] and in_order.status == "pass"


def test_missing_character(obama, biden, dlib_backend, tmp_path):
    s = score_image(FACES_DIR / "obama3.jpg", [obama, biden], dlib_backend)
    assert s.missing == ["biden"] and s.status == "drift"
    assert {m.character: m.status for m in s.matches} == {"obama": "pass", "biden": "missing"}


def test_cache_serves_unchanged_images_and_misses_changed_ones(obama, face_cache, tmp_path):
    calls = []

    class Counting(DlibBackend):
        def analyze(self, image):
            calls.append(image.shape)
            return super().analyze(image)

    b = Counting()
    img = tmp_path / "a.jpg"
    shutil.copy(FACES_DIR / "obama3.jpg", img)
    first = score_image(img, [obama], b, cache=face_cache)
    n = len(calls)
    again = score_image(img, [obama], b, cache=face_cache)
    assert len(calls) == n and again.similarity == pytest.approx(first.similarity, abs=1e-6)
    buf = io.BytesIO()
    Image.open(img).save(buf, format="JPEG", quality=70)
    img.write_bytes(buf.getvalue())
    score_image(img, [obama], b, cache=face_cache)
    assert len(calls) == n + 1


def test_decompression_bomb_is_refused(tmp_path):
    from charkit.images import read_image

    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 10000)).save(bomb)
    r = read_image(bomb)
    assert hasattr(r, "reason") and "decompression bomb" in r.reason


def _fill_cache(args):
    folder, i = args
    from charkit.identity.cache import CachedImage, FaceCache

    cache = FaceCache(folder)
    for k in range(10):
        cache.put("dlib-x", f"{i}-{k}", CachedImage([], 1, 1, [], None))


def test_face_cache_is_safe_for_concurrent_processes(tmp_path):
    # accelerate ranks open one cache at once; switching it to WAL must not fail with "database is locked"
    import multiprocessing as mp

    from charkit.identity.cache import FaceCache

    with mp.get_context("fork").Pool(4) as pool:
        pool.map(_fill_cache, [(tmp_path, i) for i in range(4)])
    assert FaceCache(tmp_path).get("dlib-x", "3-9") is not None
    assert len(FaceCache(tmp_path)._conn().execute("SELECT 1 FROM faces").fetchall()) == 40


def test_duplicate_reference_is_skipped_not_counted_in_baseline(dlib_backend, face_cache):
    # 32bit.png is obama2.jpg re-saved as RGBA PNG: it must not inflate the leave-one-out baseline
    refs = [FACES_DIR / n for n in ("obama.jpg", "obama2.jpg", "32bit.png")]
    p = build_profile("obama", refs, dlib_backend, cache=face_cache)
    assert [r.reason for r in p.rejected] == ["near_duplicate of obama2.jpg"]
    two = build_profile("obama", refs[:2], dlib_backend, cache=face_cache)
    assert p.used == two.used and p.baseline_mean == pytest.approx(two.baseline_mean)
