"""A fake insightface pack in the real file format: a TEST FIXTURE, NOT A FACE MODEL.

Real insightface packs (buffalo_l, antelopev2, AuraFace) cannot be downloaded in CI and
carry licences we may not redistribute. This module writes two small ONNX graphs with
:mod:`onnx.helper` whose *signatures* are those of a real pack, so that insightface's own
``FaceAnalysis`` routes and runs them with its real ``SCRFD`` and ``ArcFaceONNX`` classes
(pre-processing, anchor decoding, NMS, 5-point alignment, embedding) exactly as it runs
buffalo_l:

``det_fake.onnx`` (SCRFD signature)
    input ``1x3xHxW`` (dynamic H, W); nine outputs: scores ``(N, 1)``, box distances
    ``(N, 4)`` and 5-point offsets ``(N, 10)`` for strides 8, 16 and 32 with two anchors
    per cell (``N = H/s * W/s * 2``), in that order, in stride units: what
    ``insightface.model_zoo.scrfd.SCRFD.forward`` decodes.

    It "detects" **face markers**: solid, saturated-colour squares (24-192 px in the
    detector's 640x640 input) on a neutral (grey, black or white) background. A pixel
    belongs to a marker when its chroma (max - min channel) is high. Per stride the
    marker mask is average-pooled to the anchor grid; a fixed 9x9-cell convolution takes
    its moments (mass, centroid, spread), from which each anchor gets the marker's box
    (centroid +- half the side; area from the mass, aspect from the spread), five
    landmarks placed like ArcFace's template inside that box, and a score that is high
    only when the centroid sits on the anchor
    and its 9x9-cell window holds one whole solid rectangle of a size that stride handles
    (3-6 cells). Keep markers apart by at least their side (a second marker inside the
    window cancels the score).

``rec_fake.onnx`` (ArcFace signature)
    input ``Nx3x112x112``, output ``Nx512``. A 1x1 convolution with six "colour detector"
    channels (red, green, blue, yellow, magenta, cyan: ``relu(colour . pixel - 2)``, one
    for a pure colour, zero for anything else), a 4x4 average pool over the aligned crop,
    and a fixed projection with orthonormal rows to 512-d. Cosine similarity is
    therefore the overlap of the two crops' colour layouts: the same marker identity
    gives ~1, markers with no colour at the same place give ~0.

:data:`PATTERNS` are six marker identities (2x2 colour quadrants) that pairwise share no
quadrant colour, so their embeddings are orthogonal; :func:`draw_marker_image` paints
them. The pack also holds a ``LICENSE.txt`` saying what it is.

>>> pack = write_fake_pack(tmp_path / "models")  # doctest: +SKIP
>>> img = draw_marker_image(512, [(150, 200, 96, 0), (380, 300, 80, 3)])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..paths import atomic_write_bytes, atomic_write_text

#: Saturated colours the recogniser tells apart (RGB). Each is +-1 per channel after
#: ArcFace's (x - 127.5) / 127.5 normalisation, so "same colour" is a dot product of 3.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
}
_ORDER = tuple(COLOURS)

#: Marker identities: colours of the (top-left, top-right, bottom-left, bottom-right)
#: quadrants. Pattern i uses colours i, i+1, i+2, i+3 (mod 6), so two different patterns
#: never share a colour in the same quadrant: their fake embeddings are orthogonal.
PATTERNS: dict[int, tuple[str, str, str, str]] = {
    i: tuple(_ORDER[(i + q) % len(_ORDER)] for q in range(4)) for i in range(len(_ORDER))
}

#: insightface's ArcFace 112x112 landmark template (face_align.arcface_dst): eyes, nose, mouth corners.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)

DET_FILE = "det_fake.onnx"
REC_FILE = "rec_fake.onnx"
STRIDES = (8, 16, 32)
EMBEDDING_DIM = 512
#: moment window of the detector, in cells of each stride (odd)
WINDOW = 9
_OPSET = 17
_IR_VERSION = 8  # readable by onnxruntime >= 1.10, the oldest insightface supports

BACKGROUND = (128, 128, 128)


def write_fake_pack(out_dir: str | Path, *, name: str = "fakepack", seed: int = 0) -> Path:
    """Write ``out_dir/name/{det_fake,rec_fake}.onnx`` (+ LICENSE.txt); return the pack folder.

    ``seed`` only changes the recogniser's projection (the embedding space), never its
    behaviour: two seeds give packs with different hashes and equal similarities.

    >>> pack = write_fake_pack(tmp_path, name="fakepack")  # doctest: +SKIP
    >>> sorted(p.name for p in pack.iterdir())  # doctest: +SKIP
    ['LICENSE.txt', 'det_fake.onnx', 'rec_fake.onnx']
    """
    import onnx

    pack = Path(out_dir) / name
    pack.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(pack / DET_FILE, _detector_model().SerializeToString())
    atomic_write_bytes(pack / REC_FILE, _recogniser_model(seed).SerializeToString())
    atomic_write_text(
        pack / "LICENSE.txt",
        "charkit fake insightface-format pack: a test fixture, not a face model (Apache-2.0, like charkit)\n\n"
        "Generated by charkit.testing.fake_insightface. It detects coloured square markers and embeds their\n"
        "colour layout; it knows nothing about faces.\n",
    )
    onnx.checker.check_model(str(pack / DET_FILE))
    onnx.checker.check_model(str(pack / REC_FILE))
    return pack


def marker_colours(identity: int | str | Sequence[int]) -> tuple[tuple[int, int, int], ...]:
    """The four quadrant colours (RGB) of a marker identity: a :data:`PATTERNS` id, a colour name or an RGB triple."""
    if isinstance(identity, (int, np.integer)):
        if int(identity) not in PATTERNS:
            raise ValueError(f"marker pattern {identity} does not exist; use 0..{len(PATTERNS) - 1}")
        return tuple(COLOURS[c] for c in PATTERNS[int(identity)])
    if isinstance(identity, str):
        if identity not in COLOURS:
            raise ValueError(f"marker colour {identity!r} does not exist; use one of {', '.join(COLOURS)}")
        return (COLOURS[identity],) * 4
    rgb = tuple(int(v) for v in identity)
    if len(rgb) != 3:
        raise ValueError(f"marker colour {identity!r} is not an RGB triple")
    return (rgb,) * 4


def draw_marker_image(
    size: int | tuple[int, int],
    markers: Sequence[tuple[float, float, int, int | str | Sequence[int]]] = (),
    *,
    background: tuple[int, int, int] = BACKGROUND,
):
    """An RGB ``PIL.Image`` of ``size`` (int or (width, height)) with square face markers.

    Each marker is ``(cx, cy, side, identity)``: centre and side in pixels, identity a
    :data:`PATTERNS` id, a :data:`COLOURS` name or an RGB triple (solid square). Its
    expected detector box is ``(cx - side/2, cy - side/2, cx + side/2, cy + side/2)``.

    >>> draw_marker_image(256, [(128, 128, 64, "red")]).size  # doctest: +SKIP
    (256, 256)
    """
    from PIL import Image

    w, h = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    arr = np.empty((h, w, 3), dtype=np.uint8)
    arr[:] = background
    for cx, cy, side, identity in markers:
        x0, y0 = round(cx - side / 2), round(cy - side / 2)
        x1, y1 = x0 + int(side), y0 + int(side)
        xm, ym = x0 + int(side) // 2, y0 + int(side) // 2
        quadrants = ((x0, y0, xm, ym), (xm, y0, x1, ym), (x0, ym, xm, y1), (xm, ym, x1, y1))
        for (qx0, qy0, qx1, qy1), colour in zip(quadrants, marker_colours(identity)):
            arr[max(qy0, 0) : max(qy1, 0), max(qx0, 0) : max(qx1, 0)] = colour
    return Image.fromarray(arr, "RGB")


# -- the detector graph -------------------------------------------------------------------


class _Graph:
    """A few helpers over onnx.helper so the graph reads like the maths."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.nodes: list = []
        self.inits: list = []
        self._n = 0

    def _name(self, op: str) -> str:
        self._n += 1
        return f"{self.prefix}_{op.lower()}_{self._n}"

    def const(self, value, dtype=np.float32) -> str:
        from onnx import numpy_helper

        name = self._name("const")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, n_out: int = 1, **attrs):
        from onnx import helper

        base = self._name(op_type)
        outs = [f"{base}_out{i}" for i in range(n_out)]
        # Node names never start with "Sub"/"Mul": ArcFaceONNX reads those as an mxnet
        # graph with built-in normalisation and would skip (x - 127.5) / 127.5.
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=base, **attrs))
        return outs[0] if n_out == 1 else outs

    def add(self, a, b):
        return self.op("Add", a, b)

    def sub(self, a, b):
        return self.op("Sub", a, b)

    def mul(self, a, b):
        return self.op("Mul", a, b)

    def div(self, a, b):
        return self.op("Div", a, b)

    def clip01(self, a):
        return self.op("Clip", a, self.const(0.0), self.const(1.0))

    def scalar(self, v: float) -> str:
        return self.const(np.float32(v))


def _moment_kernel() -> np.ndarray:
    r = WINDOW // 2
    d = np.arange(-r, r + 1, dtype=np.float32)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    ring = ((np.abs(dx) == r) | (np.abs(dy) == r)).astype(np.float32)
    k = np.stack([np.ones_like(dx), dx, dy, dx * dx, dy * dy, ring])  # mass, moments, mass on the border
    return k[:, None, :, :].astype(np.float32)  # (6, 1, k, k)


def _detector_model():
    from onnx import TensorProto, helper

    g = _Graph("det")
    x = "input.1"
    # Marker mask: chroma (max - min channel) of the normalised pixel, ~2 for a saturated
    # colour, 0 for grey, black (SCRFD's padding) and white.
    chroma = g.sub(g.op("ReduceMax", x, axes=[1], keepdims=1), g.op("ReduceMin", x, axes=[1], keepdims=1))
    mask = g.clip01(g.sub(g.mul(chroma, g.scalar(4.0)), g.scalar(1.0)))

    kernel = g.const(_moment_kernel())
    r = WINDOW // 2
    eps = g.scalar(1e-6)
    half, one, two, twelve = g.scalar(0.5), g.scalar(1.0), g.scalar(2.0), g.scalar(12.0)
    top_edge = g.scalar(WINDOW - 1)
    # 5-point layout inside a box (ArcFace template scaled to the box): kps = c + a * half_size
    ax = np.zeros((1, 10, 1, 1), np.float32)
    ay = np.zeros((1, 10, 1, 1), np.float32)
    sel_x = np.zeros((1, 10, 1, 1), np.float32)
    sel_y = np.zeros((1, 10, 1, 1), np.float32)
    for i, (tx, ty) in enumerate(ARCFACE_TEMPLATE):
        ax[0, 2 * i], ay[0, 2 * i + 1] = tx / 56.0 - 1.0, ty / 56.0 - 1.0
        sel_x[0, 2 * i], sel_y[0, 2 * i + 1] = 1.0, 1.0
    ax, ay, sel_x, sel_y = (g.const(v) for v in (ax, ay, sel_x, sel_y))

    scores, boxes, kpss = [], [], []
    grid = mask
    consts = (eps, half, one, two, twelve, top_edge, ax, ay, sel_x, sel_y)
    for i, stride in enumerate(STRIDES):
        # Marker coverage of each anchor cell (cascade: 8 -> 16 -> 32 halves the grid exactly).
        k = stride if i == 0 else 2
        grid = g.op("AveragePool", grid, kernel_shape=[k, k], strides=[k, k])
        score, box, kps = _anchor_heads(g, g.op("Conv", grid, kernel, pads=[r, r, r, r]), consts)
        scores.append(_per_anchor(g, score, 1))
        boxes.append(_per_anchor(g, box, 4))
        kpss.append(_per_anchor(g, kps, 10))

    outputs = []
    for kind, names, width in (("score", scores, 1), ("bbox", boxes, 4), ("kps", kpss, 10)):
        for stride, name in zip(STRIDES, names):
            out = f"{kind}_{stride}"
            g.nodes.append(helper.make_node("Identity", [name], [out], name=f"det_out_{out}"))
            outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, [f"anchors_{stride}", width]))
    graph = helper.make_graph(
        g.nodes,
        "charkit_fake_scrfd",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 3, "height", "width"])],
        outputs,
        initializer=g.inits,
    )
    return _model(graph)


def _anchor_heads(g: _Graph, mom: str, consts) -> tuple[str, str, str]:
    """Score, box and keypoints of every anchor cell of one stride, from the window moments ``mom``."""
    eps, half, one, two, twelve, top_edge, ax, ay, sel_x, sel_y = consts
    m0, m1x, m1y, m2x, m2y, ring = g.op("Split", mom, g.const([1] * 6, np.int64), axis=1, n_out=6)
    mass = g.add(m0, eps)
    mx, my = g.div(m1x, mass), g.div(m1y, mass)  # centroid offset from this cell's centre, in cells
    vx = g.op("Relu", g.sub(g.div(m2x, mass), g.mul(mx, mx)))
    vy = g.op("Relu", g.sub(g.div(m2y, mass), g.mul(my, my)))
    # A solid L-cell square has cell-centre variance (L^2 - 1) / 12, hence L = sqrt(12 v + 1).
    w = g.op("Sqrt", g.add(g.mul(vx, twelve), one))
    h = g.op("Sqrt", g.add(g.mul(vy, twelve), one))
    # Box size: the mass is the exact area (coverage sums partial cells correctly); the
    # variances, biased up by partial edge cells, only give the aspect ratio.
    aspect = g.div(w, h)
    hw = g.mul(g.op("Sqrt", g.mul(mass, aspect)), half)
    hh = g.mul(g.op("Sqrt", g.div(mass, aspect)), half)
    # SCRFD's anchor point is the cell's top-left corner: centre = anchor + (0.5 + offset) cells.
    cx, cy = g.add(mx, half), g.add(my, half)
    box = g.op("Concat", g.sub(hw, cx), g.sub(hh, cy), g.add(hw, cx), g.add(hh, cy), axis=1)
    kps = g.add(
        g.add(g.mul(sel_x, cx), g.mul(sel_y, cy)),
        g.add(g.mul(ax, hw), g.mul(ay, hh)),
    )
    # Score: centroid on this cell x one solid rectangle (area == w * h) x wholly inside the
    # window (nothing on its border ring, so no truncated view) x a size this stride handles.
    centred = g.op("Exp", g.mul(g.add(g.mul(mx, mx), g.mul(my, my)), g.scalar(-0.25)))
    fill_err = g.div(g.sub(g.div(g.mul(w, h), mass), one), g.scalar(0.4))
    solid = g.op("Exp", g.op("Neg", g.mul(fill_err, fill_err)))
    size_ok = g.mul(
        g.mul(g.clip01(g.sub(w, two)), g.clip01(g.sub(top_edge, w))),
        g.mul(g.clip01(g.sub(h, two)), g.clip01(g.sub(top_edge, h))),
    )
    whole = g.clip01(g.sub(one, g.mul(ring, two)))
    return g.mul(g.mul(centred, solid), g.mul(size_ok, whole)), box, kps


def _per_anchor(g: _Graph, t: str, width: int) -> str:
    """(1, C, h, w) -> (h * w * 2, C): row-major cells, two identical anchors each (SCRFD's order)."""
    rows = g.op("Reshape", g.op("Transpose", t, perm=[0, 2, 3, 1]), g.const([-1, width], np.int64))
    return g.op("Reshape", g.op("Concat", rows, rows, axis=1), g.const([-1, width], np.int64))


# -- the recogniser graph -----------------------------------------------------------------


def _recogniser_model(seed: int):
    from onnx import TensorProto, helper

    g = _Graph("rec")
    x = "input.1"
    colours = np.array([[1.0 if v > 127 else -1.0 for v in COLOURS[c]] for c in _ORDER], np.float32)
    detect_w = g.const(colours[:, :, None, None])  # (6, 3, 1, 1)
    detect_b = g.const(np.full(len(_ORDER), -2.0, np.float32))
    hits = g.op("Relu", g.op("Conv", x, detect_w, detect_b))  # (N, 6, 112, 112): 1 where the pixel is that colour
    pooled = g.op("AveragePool", hits, kernel_shape=[28, 28], strides=[28, 28])  # (N, 6, 4, 4): colour layout
    flat = g.op("Flatten", pooled, axis=1)  # (N, 96)
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((EMBEDDING_DIM, flat_dim := len(_ORDER) * 16)))
    # (96, 512) with orthonormal rows, so cosines between colour layouts are kept; stored as
    # float16 to halve the file (cosines move by ~1e-3)
    proj = g.op("Cast", g.const(q[:, :flat_dim].T.copy(), np.float16), to=TensorProto.FLOAT)
    emb = g.op("MatMul", flat, proj)
    g.nodes.append(helper.make_node("Identity", [emb], ["fc1"], name="rec_out"))
    graph = helper.make_graph(
        g.nodes,
        "charkit_fake_arcface",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["N", EMBEDDING_DIM])],
        initializer=g.inits,
    )
    return _model(graph)


def _model(graph):
    from onnx import helper

    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="charkit.testing.fake_insightface"
    )
    model.ir_version = _IR_VERSION
    return model
