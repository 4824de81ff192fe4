"""The look profile on real photos (tests/data/faces) and their transforms, plus its invariants.

The main test is a table: each transform of a real portrait must move each measure the way the
transform physically should ("+", "-", "=" within the measure's resolution, "." not asserted).
"""

from __future__ import annotations

import functools
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures_look import BOXES, REFERENCES, photo, transformed
from hypothesis import given, settings
from hypothesis import strategies as st

from charkit.errors import CharkitError
from charkit.identity.base import Face
from charkit.look import (
    MEASURES,
    RESOLUTION,
    LookBaseline,
    LookComparison,
    LookMeasures,
    MeasureRange,
    compare_look,
    matched_crop,
    measure_look,
    reference_look,
)

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = tuple(BOXES)


def measured(name: str, transform: str = "original", scale_to: int = 256) -> LookMeasures:
    return _measured(name, transform, scale_to)  # one cache key however the call is spelled


@functools.cache
def _measured(name: str, transform: str, scale_to: int) -> LookMeasures:
    return measure_look(*transformed(name, transform), scale_to=scale_to)


# -- the transform table -------------------------------------------------------------------------

#: transform -> expected direction per measure, in MEASURES order:
#:             smoothness sharpness noise saturation brightness contrast
EXPECTED = {
    "blur":       ("+", "-", "-", "=", "=", "."),  # contrast: a low-pass can only lower it, by ~resolution
    "dark":       ("=", "=", "-", "-", "-", "-"),  # detail measures are ratios: exposure cancels
    "desaturate": ("=", "=", "=", "-", "=", "="),
    "grain":      ("-", "=", "+", "=", "=", "="),  # sharpness blurs 1 px before its gradient: grain stays out
    "jpeg10":     ("+", ".", "-", ".", "=", "="),  # flat 8x8 blocks: skin texture and grain gone; chroma shifts
}  # fmt: skip


def _direction_holds(symbol: str, delta: float, resolution: float) -> bool:
    return {
        "+": delta > resolution,
        "-": delta < -resolution,
        "=": abs(delta) <= resolution,
        ".": True,
    }[symbol]


@pytest.mark.parametrize("transform", list(EXPECTED))
@pytest.mark.parametrize("name", PHOTOS)
def test_transform_moves_each_measure_as_expected(name, transform):
    before, after = measured(name).values(), measured(name, transform).values()
    wrong = [
        f"{k}: {before[k]:.4f} -> {after[k]:.4f} (expected {sym})"
        for k, sym in zip(MEASURES, EXPECTED[transform])
        if not _direction_holds(sym, after[k] - before[k], RESOLUTION[k])
    ]
    assert wrong == []


@pytest.mark.parametrize("name", PHOTOS)
def test_exact_effects_of_gain_grain_and_blur(name):
    orig, dark = measured(name), measured(name, "dark")
    assert dark.brightness / orig.brightness == pytest.approx(0.5, abs=0.005)
    assert dark.contrast / orig.contrast == pytest.approx(0.5, abs=0.01)
    assert 5.0 < measured(name, "grain").noise < 8.5  # sigma 8 grain, partly averaged by the matched resampling
    assert measured(name, "blur").smoothness > 0.8
    assert measured(name, "jpeg10").noise == 0.0  # JPEG q10 leaves flat blocks: no grain at all


@pytest.mark.parametrize("name", PHOTOS)
def test_resolution_covers_repeatability(name):
    # RESOLUTION is "how far a measure moves when nothing about the look changed".
    orig = measured(name).values()
    for t in ("jpeg90", "shift3", "mirror"):
        moved = {k: round(abs(v - orig[k]), 4) for k, v in measured(name, t).values().items()}
        assert all(moved[k] <= RESOLUTION[k] for k in MEASURES), (t, moved)
    assert measured(name, "mirror").values() == pytest.approx(orig, rel=1e-4)  # float32 sums, mirrored order


# -- matched scale -------------------------------------------------------------------------------

#: tolerance per measure when only the photo's size changed: (absolute, relative)
SCALE_TOLERANCE = {
    "smoothness": (0.025, 0.0),
    "sharpness": (0.0, 0.05),
    "noise": (0.0, 0.35),  # the least scale-robust: the resampler of the resized file shapes the finest grain
    "saturation": (0.0, 0.01),
    "brightness": (0.005, 0.0),
    "contrast": (0.005, 0.0),
}
#: (transform, scale_to, measures held invariant). Half size at 256 upscales a ~130 px face, which
#: no resampler can do without losing fine detail: only sharpness and tone are held there.
SCALE_CASES = [
    ("double", 256, MEASURES),
    ("half", 128, MEASURES),
    ("half", 256, ("sharpness", "saturation", "brightness", "contrast")),
]


@pytest.mark.parametrize(("transform", "scale_to", "held"), SCALE_CASES, ids=lambda v: str(v)[:12])
@pytest.mark.parametrize("name", PHOTOS)
def test_measures_hold_when_the_photo_is_resized(name, transform, scale_to, held):
    orig, resized = measured(name, scale_to=scale_to).values(), measured(name, transform, scale_to).values()
    off = {}
    for k in held:
        absolute, relative = SCALE_TOLERANCE[k]
        if abs(resized[k] - orig[k]) > absolute + relative * abs(orig[k]):
            off[k] = (round(orig[k], 4), round(resized[k], 4))
    assert off == {}


@pytest.mark.parametrize("name", PHOTOS)
def test_an_upscaled_face_is_flagged_and_reads_smoother(name):
    small = measured(name, "half")
    assert small.upsampled and not measured(name).upsampled and not measured(name, "double").upsampled
    assert small.smoothness > measured(name).smoothness + RESOLUTION["smoothness"]
    assert small.noise < measured(name).noise


def test_matched_crop_layout():
    crop = matched_crop(photo("obama.jpg"), BOXES["obama.jpg"])
    assert crop.face_px == 258 and crop.rgb.shape[:2] == (512, 512)  # 2.0 x 258 px, x 256/258
    rows, cols = np.nonzero(crop.face)
    assert cols.max() - cols.min() + 1 == pytest.approx(1.2 * 256, abs=2)
    assert crop.context.sum() == pytest.approx((1.4 * 256) ** 2, rel=0.02)
    assert not (crop.face & ~crop.context).any()


# -- the held-out photo --------------------------------------------------------------------------


def test_held_out_photo_sits_in_the_references_range_for_most_measures():
    # Two references form a range (padded by RESOLUTION); no synthetic variants are needed.
    baseline = reference_look([measured(r) for r in REFERENCES])
    held_out = compare_look([measured("obama3.jpg")], baseline, name="obama3")
    relations = {k: m.relation for k, m in held_out.measures.items()}
    # Smoothness and the tone measures match the references. obama3.jpg is a wide shot in a bright
    # room: its face is visibly softer (sharpness 8.6 vs 13.2-14.5) and a little grainier.
    assert relations == {
        "smoothness": "within",
        "sharpness": "below",
        "noise": "above",
        "saturation": "within",
        "brightness": "within",
        "contrast": "within",
    }
    assert (
        held_out.measures["sharpness"].statement
        == "softer than every reference photo (median 8.6 vs references 13.2-14.5)"
    )
    assert held_out.measures["smoothness"].statement == (
        "smoothness within the references' range (median 0.68 vs references 0.66-0.70)"
    )


def test_transformed_runs_read_as_their_transform():
    baseline = reference_look([measured(r) for r in REFERENCES])
    blurred = compare_look([measured(n, "blur") for n in PHOTOS], baseline, name="blurred")
    assert blurred.measures["smoothness"].relation == "above"
    assert blurred.measures["smoothness"].statement.startswith("smoother than every reference photo (median 0.83")
    assert blurred.measures["smoothness"].statement.endswith("; 4 of 4 images beyond)")
    dark = compare_look([measured(n, "dark") for n in PHOTOS], baseline)
    assert dark.measures["brightness"].statement.startswith("darker than every reference photo")
    grey = compare_look([measured(n, "desaturate") for n in PHOTOS], baseline)
    assert grey.measures["saturation"].statement.startswith("less saturated than every reference photo")
    assert compare_look([measured(r) for r in REFERENCES], baseline).measures["noise"].relation == "within"


# -- statement rules -----------------------------------------------------------------------------


def _lm(**values) -> LookMeasures:
    base = dict(smoothness=0.65, sharpness=12.0, noise=1.5, saturation=22.0, brightness=0.45, contrast=0.2)
    return LookMeasures(**{**base, **values}, face_px=300)


TWO_REFS = reference_look([_lm(smoothness=0.60, brightness=0.40), _lm(smoothness=0.70, brightness=0.50)])

#: (measure, run values, relation, statement): the rules of charkit.look.compare, one row each
STATEMENT_CASES = [
    ("smoothness", [0.65] * 5, "within", "smoothness within the references' range (median 0.65 vs references 0.60-0.70)"),
    ("smoothness", [0.705] * 3, "within", "smoothness at the references' high end (median 0.70 vs references 0.60-0.70, within the resolution 0.01)"),
    ("smoothness", [0.595, 0.6, 0.9], "within", "smoothness within the references' range (median 0.60 vs references 0.60-0.70)"),
    ("brightness", [0.398], "within", "brightness at the references' low end (median 0.398 vs references 0.400-0.500, within the resolution 0.003)"),
    ("smoothness", [0.9, 0.91, 0.92], "above", "smoother than every reference photo (median 0.91 vs references 0.60-0.70; 3 of 3 images beyond)"),
    ("smoothness", [0.5, 0.52, 0.68], "below", "less smooth than every reference photo (median 0.52 vs references 0.60-0.70; 2 of 3 images beyond)"),
    ("smoothness", [0.9], "above", "smoother than every reference photo (median 0.90 vs references 0.60-0.70)"),
    ("smoothness", [0.4, 0.5, 0.65, 0.8, 0.9], "wider", "smoothness spreads wider than the references (p10-p90 0.44-0.86 vs references 0.60-0.70; median 0.65)"),
    ("brightness", [0.2, 0.21, 0.22, 0.6], "below", "darker than every reference photo (median 0.215 vs references 0.400-0.500; 4 of 4 images beyond)"),
    ("brightness", [0.6] * 2, "above", "brighter than every reference photo (median 0.600 vs references 0.400-0.500; 2 of 2 images beyond)"),
]  # fmt: skip


@pytest.mark.parametrize(("key", "values", "relation", "text"), STATEMENT_CASES)
def test_statement_rules(key, values, relation, text):
    cmp = compare_look([_lm(**{key: v}) for v in values], TWO_REFS)
    assert (cmp.measures[key].relation, cmp.measures[key].statement) == (relation, text)


def test_single_reference_is_named_as_such():
    one = reference_look([_lm(noise=1.0)])
    cmp = compare_look([_lm(noise=3.0)] * 2, one)
    assert (
        cmp.measures["noise"].statement
        == "noisier than the reference photo (median 3.0 vs reference 1.0; 2 of 2 images beyond)"
    )
    assert compare_look([_lm(noise=1.2)], one).measures["noise"].relation == "within"  # inside the resolution


def test_upscaled_faces_and_empty_runs_are_said():
    small = LookMeasures(**_lm().values(), face_px=120)
    assert compare_look([small, _lm()], TWO_REFS).statements[-1].startswith("1 of 2 faces were smaller than 256 px")
    empty = compare_look([], TWO_REFS, name="none")
    assert (empty.images, empty.measures, empty.statements) == (0, {}, ["no face measured in this run"])


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: reference_look([]), CharkitError, "needs at least one reference photo"),
        (
            lambda: reference_look([_lm(), LookMeasures(**_lm().values(), face_px=300, scale_to=128)]),
            ValueError,
            "different scale_to",
        ),
        (
            lambda: compare_look([LookMeasures(**_lm().values(), face_px=300, scale_to=128)], TWO_REFS),
            ValueError,
            "cannot be compared",
        ),
        (lambda: measure_look(photo("obama.jpg"), (10, 10, 20, 20)), CharkitError, "needs at least 16 px"),
        (lambda: measure_look(photo("obama.jpg"), (5000, 10, 5100, 110)), CharkitError, "centred outside"),
        (lambda: measure_look(photo("obama.jpg"), (1, 2, 3)), ValueError, "must be (x0, y0, x1, y1)"),
        (lambda: measure_look(np.zeros((64, 64, 4), np.uint8), (8, 8, 56, 56)), ValueError, "expected an RGB image"),
        (lambda: measure_look(np.zeros((64, 64, 3), np.int16), (8, 8, 56, 56)), ValueError, "expected uint8"),
        (lambda: measure_look(np.full((64, 64, 3), 2.0), (8, 8, 56, 56)), ValueError, "in [0, 1]"),
        (lambda: measure_look(np.zeros((64, 64, 3), np.uint8), (8, 8, 56, 56), scale_to=8), ValueError, "scale_to"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_input_fails_loudly(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


# -- serialisation -------------------------------------------------------------------------------


def test_to_dict_is_the_report_shape_and_round_trips():
    m = measured("obama.jpg")
    d = m.to_dict()
    assert list(d) == ["look", "face_px", "scale_to"] and list(d["look"]) == list(MEASURES)
    assert all(v == round(v, 4) for v in d["look"].values())
    assert LookMeasures.from_dict(json.loads(json.dumps(d))).to_dict() == d

    baseline = reference_look([measured(r) for r in REFERENCES])
    assert LookBaseline.from_dict(json.loads(json.dumps(baseline.to_dict()))).to_dict() == baseline.to_dict()
    cmp = compare_look([measured(n) for n in PHOTOS], baseline, name="photos")
    cd = json.loads(json.dumps(cmp.to_dict()))
    assert list(cd["measures"]) == list(MEASURES) and len(cd["positions"]) == 4
    assert set(cd["measures"]["noise"]) == {"median", "p10", "p90", "relation", "above", "below", "statement"}
    back = LookComparison.from_dict(cd)
    assert back.to_dict() == cd and back.statements == cmp.statements


def test_a_face_record_is_a_face_box():
    face = Face(box=BOXES["obama.jpg"], score=1.0)
    assert measure_look(photo("obama.jpg"), face) == measured("obama.jpg")
    assert measure_look(np.asarray(photo("obama.jpg")), BOXES["obama.jpg"]) == measured("obama.jpg")


def test_boxes_are_dlib_detections(dlib_backend):
    for name, box in BOXES.items():
        faces = dlib_backend.detect(np.asarray(photo(name)))
        assert len(faces) == 1 and faces[0].box == pytest.approx(box, abs=2), name


# -- properties ----------------------------------------------------------------------------------


def _scene(seed: int, size: int) -> np.ndarray:
    """A float RGB test image in [0.05, 0.95]: smooth colour shading plus texture, from ``seed``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 0.5 + 0.3 * np.sin(6 * xx[..., None] * rng.uniform(0.5, 2, 3) + 4 * yy[..., None] * rng.uniform(0.5, 2, 3))
    return np.clip(base + rng.normal(0, 0.05, (size, size, 3)), 0.05, 0.95).astype(np.float32)


scenes = st.tuples(st.integers(0, 2**16), st.integers(48, 120), st.floats(0.25, 0.45), st.integers(16, 64))


@settings(max_examples=40, derandomize=True, deadline=None)
@given(scene=scenes, gain=st.floats(0.1, 1.0))
def test_gain_scales_tone_and_noise_and_leaves_detail_alone(scene, gain):
    seed, size, frac, scale_to = scene
    img, side = _scene(seed, size), max(16, round(frac * size * 2))
    box = ((size - side) / 2, (size - side) / 2, (size + side) / 2, (size + side) / 2)
    a, b = measure_look(img, box, scale_to=scale_to), measure_look(img * np.float32(gain), box, scale_to=scale_to)
    for k in ("brightness", "contrast", "noise"):
        assert getattr(b, k) == pytest.approx(gain * getattr(a, k), rel=1e-3, abs=1e-6), k
    for k in ("smoothness", "sharpness"):
        assert getattr(b, k) == pytest.approx(getattr(a, k), rel=1e-3, abs=1e-6), k


@settings(max_examples=30, derandomize=True, deadline=None)
@given(scene=scenes, as_uint8=st.booleans())
def test_greyscale_has_zero_saturation(scene, as_uint8):
    seed, size, frac, scale_to = scene
    grey = _scene(seed, size).mean(axis=2)
    img = np.rint(grey * 255).astype(np.uint8) if as_uint8 else grey
    side = max(16, round(frac * size * 2))
    m = measure_look(img, (4, 4, 4 + side, 4 + side), scale_to=scale_to)
    assert m.saturation == pytest.approx(0.0, abs=1e-3)


@settings(max_examples=25, derandomize=True, deadline=None)
@given(seed=st.integers(0, 2**16), dx=st.integers(0, 40), dy=st.integers(0, 40))
def test_only_the_pixels_around_the_face_count(seed, dx, dy):
    # The same photo on a larger canvas (face fully inside) measures the same.
    img = (_scene(seed, 96) * 255).astype(np.uint8)
    box = (28.0, 28.0, 68.0, 68.0)  # the 2.0 crop (8..88) stays inside the 96 px image
    canvas = np.zeros((96 + 60, 96 + 60, 3), np.uint8)
    canvas[dy : dy + 96, dx : dx + 96] = img
    moved = (box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy)
    assert measure_look(canvas, moved, scale_to=64) == measure_look(img, box, scale_to=64)


@settings(max_examples=200, derandomize=True)
@given(
    lo=st.floats(-10, 10),
    width=st.floats(0, 10),
    resolution=st.floats(0.001, 1),
    values=st.lists(st.floats(-30, 30), min_size=1, max_size=12),
)
def test_position_and_relation_agree(lo, width, resolution, values):
    r = MeasureRange(min=lo, max=lo + width, mean=lo + width / 2, std=width / 2, resolution=resolution)
    assert r.position(r.lo) == pytest.approx(-1) and r.position(r.hi) == pytest.approx(1)
    assert -1 < r.position(r.min) <= r.position(r.max) < 1
    baseline = LookBaseline(references=2, scale_to=256, ranges=dict.fromkeys(MEASURES, r))
    cmp = compare_look([_lm(noise=v) for v in values], baseline)
    median_pos = r.position(cmp.measures["noise"].median)
    relation = cmp.measures["noise"].relation
    assert (relation == "above") == (median_pos > 1) and (relation == "below") == (median_pos < -1)
    pos = sorted((p["noise"], v) for p, v in zip(cmp.positions, values))
    assert [v for _, v in pos] == sorted(values)  # position is monotone in the value
    assert cmp.measures["noise"].above == sum(p["noise"] > 1 for p in cmp.positions)


@settings(max_examples=50, derandomize=True)
@given(st.lists(st.floats(0, 100, allow_nan=False), min_size=6, max_size=6), st.integers(16, 5000))
def test_measures_dict_round_trip_is_stable(values, face_px):
    m = LookMeasures(*values, face_px=face_px)
    d = m.to_dict()
    assert LookMeasures.from_dict(d).to_dict() == d


@pytest.mark.parametrize("sigma", [2.0, 8.0, 32.0])
def test_noise_reads_the_sigma_of_white_noise(sigma):
    flat = 0.5 + np.random.default_rng(1).normal(0, sigma / 255, (512, 512, 1))
    img = np.repeat(np.clip(flat, 0, 1), 3, axis=2)
    assert measure_look(img, (128, 128, 384, 384)).noise == pytest.approx(sigma, rel=0.03)  # box 256: no resampling


def test_measuring_is_deterministic():
    img, box = transformed("biden.jpg", "grain")
    assert measure_look(img, box) == measure_look(img.copy(), box)


# -- docs ----------------------------------------------------------------------------------------


def _doc_tables(text: str) -> list[dict[tuple[str, str], list[str]]]:
    """The markdown tables of photo rows in ``text``, in order: (photo, transform) -> the other cells."""
    tables, current = [], None
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells and cells[0] == "photo":
            current = {}
            tables.append(current)
        elif cells is None:
            current = None
        elif current is not None and cells[0] in BOXES:
            current[(cells[0], cells[1])] = cells[2:]
    return tables


@pytest.mark.parametrize(
    ("index", "scale_to", "transforms"), [(0, 256, None), (1, 128, ("original", "half", "double"))]
)
def test_docs_table_is_current(index, scale_to, transforms):
    """docs/look.md carries the tables benchmarks/look_table.py prints (compared at printed precision)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import look_table
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    table = _doc_tables((ROOT / "docs" / "look.md").read_text(encoding="utf-8"))[index]
    transforms = transforms or look_table.TABLE_TRANSFORMS
    assert sorted(table) == sorted((name, t) for name in BOXES for t in transforms)
    for (name, t), doc_row in table.items():
        m = measured(name, t, scale_to)  # what look_table.rows() prints, from this module's cache
        for k, cell in zip(MEASURES, doc_row):
            digits = len(cell.split(".")[1])
            assert float(cell) == pytest.approx(getattr(m, k), abs=1.01 * 10**-digits), (name, t, k)
        assert int(doc_row[-1]) == m.face_px
    if index == 1:  # the script itself still runs and prints rows in the documented format
        assert look_table.render(scale_to, ("original",)).splitlines()[2] == (
            "| obama.jpg | original | " + " | ".join(table[("obama.jpg", "original")]) + " |"
        )
