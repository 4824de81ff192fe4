"""The insightface backend, run through insightface's real FaceAnalysis / SCRFD / ArcFaceONNX
classes over a generated pack in the real ONNX format (charkit.testing.fake_insightface): marker
squares stand in for faces, their colour layout for identity."""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pytest

from charkit.errors import CharkitError, MissingModelError
from charkit.hashing import files_sha256
from charkit.identity.insightface_backend import (
    AURAFACE_LICENCE,
    DEFAULT_THRESHOLD,
    ENV_VAR,
    NONCOMMERCIAL_LICENCE,
    InsightFaceBackend,
    default_providers,
    locate_pack,
    pack_licence,
)
from charkit.testing.fake_insightface import DET_FILE, PATTERNS, REC_FILE, draw_marker_image, write_fake_pack


def iou(a, b) -> float:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def expected_box(marker):
    cx, cy, side, _ = marker
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def rgb(size, markers) -> np.ndarray:
    return np.asarray(draw_marker_image(size, markers))


def load(pack, **kw) -> InsightFaceBackend:
    return InsightFaceBackend(pack, providers=["CPUExecutionProvider"], **kw)


# -- the pack runs in insightface's own classes ---------------------------------------------------


def test_real_insightface_classes_route_and_load_the_pack(fake_face_backend, fake_face_pack):
    from insightface.app import FaceAnalysis
    from insightface.model_zoo import SCRFD, ArcFaceONNX

    b = fake_face_backend
    assert isinstance(b.app, FaceAnalysis)
    assert isinstance(b.detector, SCRFD) and b.detector.use_kps and b.detector.fmc == 3
    assert b.detector._feat_stride_fpn == [8, 16, 32] and b.detector._num_anchors == 2
    assert isinstance(b.recogniser, ArcFaceONNX) and b.recogniser.input_size == (112, 112)
    assert (b.recogniser.input_mean, b.recogniser.input_std) == (127.5, 127.5)  # not mistaken for an mxnet graph
    assert b.detector.session.get_providers() == ["CPUExecutionProvider"]
    info = b.info
    assert (info.name, info.model, info.dim, info.metric, info.threshold) == (
        "insightface",
        "fakepack",
        512,
        "cosine",
        0.30,
    )
    assert info.model_hash == files_sha256([fake_face_pack / DET_FILE, fake_face_pack / REC_FILE])
    assert info.licence.startswith("fakepack: charkit fake insightface-format pack: a test fixture, not a face model")


def test_pixels_reach_the_recogniser_as_rgb(fake_face_backend, fake_face_pack):
    # charkit hands RGB, insightface wants BGR and swaps back: a red marker must reach the
    # recogniser as red (its embedding equals the raw graph's on a pure red crop), not blue.
    import onnxruntime

    raw = onnxruntime.InferenceSession(str(fake_face_pack / REC_FILE), providers=["CPUExecutionProvider"])

    def raw_embedding(colour):
        crop = np.broadcast_to((np.asarray(colour, np.float32) - 127.5) / 127.5, (112, 112, 3))
        return raw.run(None, {"input.1": crop.transpose(2, 0, 1)[None].copy()})[0][0]

    face = fake_face_backend.analyze(rgb(400, [(200, 200, 120, "red")]))[0]
    assert fake_face_backend.similarity(face.embedding, raw_embedding((255, 0, 0))) > 0.95
    assert fake_face_backend.similarity(face.embedding, raw_embedding((0, 0, 255))) < 0.05


def test_fake_pack_is_small_fast_and_deterministic(tmp_path):
    t0 = time.perf_counter()
    a = write_fake_pack(tmp_path / "a", seed=0)
    elapsed = time.perf_counter() - t0
    b = write_fake_pack(tmp_path / "b", seed=0)
    c = write_fake_pack(tmp_path / "c", seed=1)
    size = sum(p.stat().st_size for p in a.glob("*.onnx"))
    assert 50_000 < size < 200_000 and elapsed < 1.0
    for f in (DET_FILE, REC_FILE):
        assert (a / f).read_bytes() == (b / f).read_bytes()
    assert (a / DET_FILE).read_bytes() == (c / DET_FILE).read_bytes()
    assert (a / REC_FILE).read_bytes() != (c / REC_FILE).read_bytes()  # another embedding space


# -- detection ----------------------------------------------------------------------------------

DETECTION_CASES = [
    # (image size, markers (cx, cy, side, identity)) -- sizes and aspect ratios make SCRFD rescale
    (512, [(256, 256, 128, 0)]),
    (
        640,
        [
            (110, 160, 64, 0),
            (320, 160, 64, 1),
            (530, 160, 64, 2),
            (110, 480, 64, 3),
            (320, 480, 64, 4),
            (530, 480, 64, 5),
        ],
    ),
    ((960, 640), [(120, 120, 48, 1), (420, 160, 120, 2), (780, 420, 200, 3), (200, 480, 80, "cyan")]),
    ((1600, 1200), [(400, 400, 300, 4), (1200, 800, 100, 5)]),
    ((480, 800), [(240, 200, 150, 0), (240, 600, 90, 2)]),
    ((333, 517), [(101.5, 150, 45, 1), (230, 400, 77, 3)]),
    (512, [(40, 40, 64, 0), (470, 470, 64, "red")]),  # touching the image border
]


@pytest.mark.parametrize("size,markers", DETECTION_CASES, ids=lambda v: str(v)[:24])
def test_detect_finds_each_marker_with_its_box(fake_face_backend, size, markers):
    faces = fake_face_backend.detect(rgb(size, markers))
    assert len(faces) == len(markers)
    assert [f.area for f in faces] == sorted((f.area for f in faces), reverse=True)  # largest first
    for m in markers:
        box = expected_box(m)
        best = max(faces, key=lambda f: iou(f.box, box))
        assert iou(best.box, box) > 0.9, (m, best.box)
        assert best.score > 0.5
        x0, y0, x1, y1 = best.box
        (lex, ley), (rex, rey), (nx, ny), (lmx, lmy), (rmx, rmy) = best.landmarks
        assert all(x0 <= x <= x1 and y0 <= y <= y1 for x, y in best.landmarks)
        assert lex < rex and lmx < rmx and max(ley, rey) < ny < min(lmy, rmy)  # eyes, nose, mouth in face order


def test_no_marker_no_face(fake_face_backend):
    plain = np.full((300, 400, 3), 128, np.uint8)
    assert fake_face_backend.detect(plain) == [] and fake_face_backend.analyze(plain) == []
    # black, white and grey shapes are not markers (no chroma), only colour is
    shapes = plain.copy()
    shapes[50:150, 50:150] = 0
    shapes[50:150, 250:350] = 255
    assert fake_face_backend.analyze(shapes) == []


# -- identity -------------------------------------------------------------------------------------


def test_same_marker_identity_passes_different_identity_drifts(fake_face_backend):
    b = fake_face_backend
    grid = [(110, 160), (320, 160), (530, 160), (110, 480), (320, 480), (530, 480)]
    first = [(x, y, 64, i) for (x, y), i in zip(grid, sorted(PATTERNS))]
    # the same identities again, shuffled, at other sizes, in a non-square image that SCRFD rescales
    second = [(150 + 350 * (k % 3), 180 + 340 * (k // 3), 100 + 10 * k, i) for k, i in enumerate([3, 5, 0, 4, 1, 2])]

    def faces_by_identity(size, markers):
        faces = b.analyze(rgb(size, markers))
        assert len(faces) == len(markers)
        return {m[3]: max(faces, key=lambda f: iou(f.box, expected_box(m))) for m in markers}

    one, two = faces_by_identity(640, first), faces_by_identity((1000, 700), second)
    for a, fa in one.items():
        for z, fz in two.items():
            s = b.similarity(fa.embedding, fz.embedding)
            if a == z:
                assert s > 0.9 and s >= DEFAULT_THRESHOLD, (a, s)
            else:
                assert s < 0.1 and s < DEFAULT_THRESHOLD, (a, z, s)


def test_analyze_equals_detect_then_embed(fake_face_backend):
    b = fake_face_backend
    img = rgb((700, 500), [(200, 250, 140, 2), (520, 200, 90, 4)])
    together = b.analyze(img)
    apart = b.detect(img)
    assert [f.box for f in together] == [f.box for f in apart]
    for f, g in zip(together, apart):
        e = b.embed(img, g)
        assert e.dtype == np.float32 and e.shape == (512,) and abs(np.linalg.norm(e) - 1) < 1e-5
        assert b.similarity(f.embedding, e) > 0.9999


def test_input_variants_give_the_same_faces(fake_face_backend):
    b = fake_face_backend
    img = rgb(400, [(200, 200, 120, 1)])
    ref = b.analyze(img)[0]
    rgba = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
    got = b.analyze(rgba)[0]
    assert got.box == ref.box and b.similarity(got.embedding, ref.embedding) > 0.9999
    with pytest.raises(ValueError, match="5 landmarks"):
        b.embed(img, type(ref)(box=ref.box, score=ref.score, landmarks=ref.landmarks[:2]))


def test_cosine_similarity_distance_centroid(fake_face_backend):
    b = fake_face_backend
    rng = np.random.default_rng(0)
    v = rng.standard_normal((5, 512)).astype(np.float32)
    for x, y in [(v[0], v[1]), (v[2], v[2] * 7.0), (v[3], -v[3])]:
        s = b.similarity(x, y)
        assert s == pytest.approx(float(np.dot(x, y) / np.linalg.norm(x) / np.linalg.norm(y)), abs=1e-6)
        assert b.distance(x, y) == pytest.approx(1.0 - s)
    assert b.similarity(v[2], v[2] * 7.0) == pytest.approx(1.0)
    assert np.allclose(b.similarities(v, v[0]), [b.similarity(x, v[0]) for x in v])
    c = b.centroid(v)
    assert c.dtype == np.float32 and np.linalg.norm(c) == pytest.approx(1.0, abs=1e-6)
    # a mean of *normalised* vectors: scaling one reference must not pull the centroid
    scaled = v.copy()
    scaled[0] *= 100
    assert np.allclose(b.centroid(scaled), c, atol=1e-6)
    assert np.allclose(b.centroid(v[:1] * 3), v[0] / np.linalg.norm(v[0]), atol=1e-6)


# -- where the pack comes from ------------------------------------------------------------------


def test_bare_pack_folder_and_root_layouts_load(fake_face_pack, tmp_path, network_blocked, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    bare = shutil.copytree(fake_face_pack, tmp_path / "somewhere" / "my-pack")
    img = rgb(400, [(200, 200, 120, 5)])
    expected = load(fake_face_pack).analyze(img)
    for where, found in [
        (bare, bare),  # a pack folder (the way AuraFace is usually unpacked)
        (fake_face_pack.parent.parent, fake_face_pack),  # <root>/models/<name>/
        (fake_face_pack.parent, fake_face_pack),  # <root>/<name>/ (e.g. ~/.insightface/models)
    ]:
        b = load(where)
        assert b.pack.path == found.resolve() and b.pack.source == "--face-models"
        faces = b.analyze(img)
        assert len(faces) == 1 and faces[0].box == expected[0].box
        assert b.similarity(faces[0].embedding, expected[0].embedding) > 0.9999
    assert network_blocked == []


def test_pack_discovery_order_env_then_default(fake_face_pack, tmp_path, empty_home, network_blocked, monkeypatch):
    default_root = empty_home / ".insightface" / "models"
    shutil.copytree(fake_face_pack, default_root / "buffalo_l")
    assert locate_pack().path == (default_root / "buffalo_l").resolve()  # ~/.insightface/models
    assert locate_pack().source == "~/.insightface/models"

    env_pack = shutil.copytree(fake_face_pack, tmp_path / "env-packs" / "auraface")
    monkeypatch.setenv(ENV_VAR, str(env_pack.parent))
    b = load(None)  # CHARKIT_FACE_MODELS wins over the default
    assert b.pack.path == env_pack.resolve() and b.pack.source == ENV_VAR
    assert b.info.model == "auraface" and len(b.analyze(rgb(300, [(150, 150, 60, 2)]))) == 1
    assert locate_pack(fake_face_pack).path == fake_face_pack.resolve()  # an explicit path wins over both
    assert network_blocked == []


def test_pack_name_picks_among_several(fake_face_pack, tmp_path):
    root = tmp_path / "root"
    for n in ("zeta", "buffalo_l", "antelopev2"):
        shutil.copytree(fake_face_pack, root / "models" / n)
    assert locate_pack(root).name == "buffalo_l"  # buffalo_l first, then antelopev2
    assert locate_pack(root, name="zeta").name == "zeta"
    shutil.rmtree(root / "models" / "buffalo_l")
    assert locate_pack(root).name == "antelopev2"
    shutil.rmtree(root / "models" / "antelopev2")
    shutil.copytree(fake_face_pack, root / "models" / "other")
    with pytest.raises(CharkitError, match=r"several face-model packs \(models/other, models/zeta\)"):
        locate_pack(root)
    with pytest.raises(CharkitError, match="not a safe file name"):
        locate_pack(root, name="../zeta")


MISSING_CASES = [
    ("nonexistent", lambda tmp: tmp / "nope", "does not exist"),
    ("empty folder", lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "holds no .onnx files"),
    ("a file", lambda tmp: (tmp / "f.onnx").write_bytes(b"x") and tmp / "f.onnx", "is not a folder"),
]


@pytest.mark.parametrize("how", ["--face-models", ENV_VAR, "default"])
@pytest.mark.parametrize("case,make,reason", MISSING_CASES, ids=[c[0] for c in MISSING_CASES])
def test_missing_pack_is_one_line_and_never_downloads(
    how, case, make, reason, tmp_path, empty_home, network_blocked, monkeypatch
):
    where = make(tmp_path)
    if how == ENV_VAR:
        monkeypatch.setenv(ENV_VAR, str(where))
    elif how == "default":
        if case == "nonexistent":
            where = empty_home / ".insightface" / "models"
        else:
            (empty_home / ".insightface").mkdir()
            shutil.move(str(where), empty_home / ".insightface" / "models")
    with pytest.raises(MissingModelError) as err:
        load(where if how == "--face-models" else None)
    msg = str(err.value)
    assert "\n" not in msg and reason in msg
    looked = {
        "--face-models": f"--face-models {where}",
        ENV_VAR: f"{ENV_VAR}={where}",
        "default": f"{empty_home}/.insightface/models (the default: no --face-models given, {ENV_VAR} unset)",
    }[how]
    assert f"no insightface face-model pack: {looked} {reason}" in msg
    for hint in ("--face-models DIR", ENV_VAR, "buffalo_l", "non-commercial", "AuraFace", "Apache-2.0"):
        assert hint in msg
    assert network_blocked == []


def test_network_guard_would_catch_an_insightface_download(tmp_path, network_blocked):
    # What charkit avoids (and proof that the guard above is not vacuous): a plain
    # FaceAnalysis asked for a pack it cannot find goes for the network.
    from insightface.app import FaceAnalysis

    with pytest.raises(Exception):  # noqa: B017 (whatever insightface raises once the download is blocked)
        FaceAnalysis(name="buffalo_l", root=str(tmp_path), providers=["CPUExecutionProvider"])
    assert network_blocked


def test_pack_without_detector_or_recogniser(fake_face_pack, tmp_path, network_blocked):
    for keep, missing in ((DET_FILE, "recognition"), (REC_FILE, "detection")):
        pack = tmp_path / f"only-{keep[:3]}"
        pack.mkdir()
        shutil.copy(fake_face_pack / keep, pack / keep)
        with pytest.raises(MissingModelError, match=f"has no {missing} .onnx model") as err:
            load(pack)
        assert "\n" not in str(err.value)
    corrupt = shutil.copytree(fake_face_pack, tmp_path / "corrupt")
    (corrupt / REC_FILE).write_bytes(b"not an onnx file" * 10)
    with pytest.raises(CharkitError, match="cannot load the face-model pack") as err:
        load(corrupt)
    assert "\n" not in str(err.value)
    assert network_blocked == []


# -- model hash, licence, providers -----------------------------------------------------------


def test_model_hash_follows_the_files(fake_face_pack, tmp_path):
    pack = shutil.copytree(fake_face_pack, tmp_path / "pack")
    first = load(pack).info
    assert load(pack).info.model_hash == first.model_hash  # same files, same hash
    # a second recogniser sorting after the first is ignored by FaceAnalysis: no effect on scores or hash
    shutil.copy(write_fake_pack(tmp_path / "extra", seed=3) / REC_FILE, pack / "zz_extra.onnx")
    assert load(pack).info.model_hash == first.model_hash
    write_fake_pack(tmp_path, name="pack", seed=7)  # same names, other recogniser weights
    second = load(pack).info
    assert second.model_hash != first.model_hash and second.dim == 512


def test_licence_comes_from_the_pack(tmp_path):
    plain = tmp_path / "buffalo_l"
    plain.mkdir()
    assert pack_licence(plain) == NONCOMMERCIAL_LICENCE
    aura = tmp_path / "AuraFace-v1"
    aura.mkdir()
    assert pack_licence(aura) == AURAFACE_LICENCE
    (aura / "LICENSE").write_text("\n  Apache License\n  Version 2.0, January 2004\n")
    assert pack_licence(aura) == "AuraFace-v1: Apache License (from LICENSE)"


def test_providers(fake_face_pack):
    import onnxruntime

    available = onnxruntime.get_available_providers()
    chosen = default_providers()
    assert chosen[-1] == "CPUExecutionProvider"
    assert (chosen[0] == "CUDAExecutionProvider") == ("CUDAExecutionProvider" in available)
    if "CUDAExecutionProvider" not in available:
        with pytest.raises(CharkitError, match=r"CUDAExecutionProvider is not available .*charkit\[gpu\]") as err:
            InsightFaceBackend(fake_face_pack, providers=["CUDAExecutionProvider"])
        assert "\n" not in str(err.value)


# -- multi-face assignment through the identity engine ----------------------------------------------


@pytest.fixture(scope="module")
def marker_profiles(fake_face_backend, marker_characters, tmp_path_factory):
    from charkit.identity import FaceCache, build_profile

    cache = FaceCache(tmp_path_factory.mktemp("insightface-cache"))
    out = {}
    for name in ("alice", "bob"):
        refs = sorted((marker_characters / name / "refs").glob("*.png"))
        out[name] = build_profile(name, refs, fake_face_backend, cache=cache)
    return out


def test_profiles_from_marker_references(marker_profiles, fake_face_backend):
    for p in marker_profiles.values():
        # the fake recogniser embeds a marker's colour layout, so one identity's references are copies
        # in embedding space (cosine ~1): the profile keeps the first and skips the rest as duplicates
        assert len(p.used) == 1 and p.outliers == [] and p.baseline_mean is None
        assert [r.reason.split(" of ")[0] for r in p.rejected] == ["near_duplicate", "near_duplicate"]
        assert p.backend == fake_face_backend.info
    alice, bob = marker_profiles["alice"], marker_profiles["bob"]
    assert fake_face_backend.similarity(alice.centroid, bob.centroid) < 0.1


@pytest.mark.parametrize("left_to_right", [False, True])
@pytest.mark.parametrize("alice_left", [True, False], ids=["declared-order", "positions-swapped"])
def test_two_characters_each_get_their_own_face(marker_profiles, fake_face_backend, alice_left, left_to_right):
    from charkit.identity import score_image

    alice_at, bob_at = ((180, 260), (520, 240)) if alice_left else ((520, 240), (180, 260))
    img = draw_marker_image((720, 480), [(*alice_at, 110, 0), (*bob_at, 150, 3)])
    s = score_image(
        img, [marker_profiles["alice"], marker_profiles["bob"]], fake_face_backend, left_to_right=left_to_right
    )
    assert [m.character for m in s.matches] == ["alice", "bob"] and s.missing == []
    for m, (cx, cy), side in zip(s.matches, (alice_at, bob_at), (110, 150)):
        assert m.status == "pass" and m.similarity > 0.9
        assert iou(s.faces[m.face].box, expected_box((cx, cy, side, None))) > 0.9
    # identity-wise nothing is swapped; position-wise only when the scene declares left-to-right order
    flagged = left_to_right and not alice_left
    assert s.swapped == ([["alice", "bob"]] if flagged else [])
    assert s.status == ("drift" if flagged else "pass")


def test_missing_and_wrong_character(marker_profiles, fake_face_backend):
    from charkit.identity import score_image

    profiles = [marker_profiles["alice"], marker_profiles["bob"]]
    only_alice = score_image(draw_marker_image(500, [(250, 250, 120, 0)]), profiles, fake_face_backend)
    assert only_alice.status == "drift" and only_alice.missing == ["bob"]
    assert [(m.character, m.status) for m in only_alice.matches] == [("alice", "pass"), ("bob", "missing")]
    # a stranger (pattern 5) where bob should be: bob is assigned the stranger's face and drifts
    stranger = score_image(
        draw_marker_image((720, 480), [(180, 240, 120, 0), (520, 240, 120, 5)]), profiles, fake_face_backend
    )
    assert stranger.status == "drift" and stranger.missing == []
    alice, bob = stranger.matches
    assert alice.status == "pass" and bob.status == "drift" and bob.similarity < DEFAULT_THRESHOLD
    assert stranger.faces[bob.face].box[0] > 400  # the stranger on the right


def test_verify_cli_with_face_models(marker_characters, fake_face_pack, tmp_path, network_blocked):
    from click.testing import CliRunner

    from charkit.cli import cli

    scene = tmp_path / "scenes"
    scene.mkdir()
    draw_marker_image((720, 480), [(180, 260, 110, 0), (520, 240, 150, 3)]).save(scene / "s01.png")
    draw_marker_image((720, 480), [(180, 260, 110, 0), (520, 240, 150, 5)]).save(scene / "s02.png")
    chars = [str(marker_characters / n) for n in ("alice", "bob")]
    args = [
        "verify",
        str(scene),
        "-c",
        chars[0],
        "-c",
        chars[1],
        "--backend",
        "insightface",
        "--face-models",
        str(fake_face_pack),
        "--out",
        str(tmp_path / "out"),
        "--json",
    ]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["backend"]["name"] == "insightface" and report["backend"]["model"] == "fakepack"
    assert report["threshold"] == DEFAULT_THRESHOLD
    assert [(os.path.basename(i["path"]), i["status"]) for i in report["images"]] == [
        ("s01.png", "pass"),
        ("s02.png", "drift"),
    ]
    missing = CliRunner().invoke(cli, [*args[:6], "--backend", "insightface", "--face-models", str(tmp_path / "none")])
    assert missing.exit_code == 2
    assert missing.output.startswith("Error: no insightface face-model pack") and missing.output.count("\n") == 1
    assert network_blocked == []
