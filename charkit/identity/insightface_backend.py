"""insightface backend: ``FaceAnalysis`` over any insightface-format pack, never downloaded.

A *pack* is a folder of ONNX files (buffalo_l, antelopev2, or a permissive pack such as
AuraFace). insightface routes each file by its signature: an SCRFD-style detector (boxes,
five landmarks, scores) and an ArcFace-style recogniser (aligned 112x112 crop -> 512-d
vector). charkit loads only those two (``allowed_modules=["detection", "recognition"]``).

Where the pack comes from, first one given wins:

1. ``pack=`` (CLI ``--face-models DIR``),
2. the ``CHARKIT_FACE_MODELS`` environment variable,
3. ``~/.insightface/models`` (where insightface itself keeps packs).

A location may be the pack folder itself (it holds ``*.onnx``) or a root holding
``models/<name>/`` or ``<name>/`` (``name=``, else buffalo_l, then antelopev2, then the
only pack there is). A missing pack is a :class:`~charkit.errors.MissingModelError`
saying where we looked and how to get one: ``FaceAnalysis`` would otherwise try to
download buffalo_l, so it only ever sees a folder we have checked (by absolute path).

Similarity is the cosine of the embeddings; the default threshold 0.30 is the value
commonly used with buffalo_l-style ArcFace recognisers, not one measured by charkit:
calibrate it on your own references (docs/face-models.md).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CharkitError, MissingModelError
from ..hashing import files_sha256
from ..paths import check_name
from .base import BackendInfo, CosineBackend, Face, bgr, check_threshold, unit

#: environment variable naming a pack folder or a root of packs
ENV_VAR = "CHARKIT_FACE_MODELS"
#: insightface's own model folder
DEFAULT_ROOT = "~/.insightface/models"
#: packs tried, in order, when a root holds several and no name is given
DEFAULT_PACK_NAMES = ("buffalo_l", "antelopev2")
#: cosine threshold commonly used with buffalo_l-style ArcFace (not measured by charkit)
DEFAULT_THRESHOLD = 0.30
#: detector input size (insightface's classic single-scale behaviour)
DEFAULT_DET_SIZE = (640, 640)
#: plain-text licence files read from a pack (first non-empty line)
LICENCE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE", "LICENCE.txt", "license.txt", "licence.txt")
NONCOMMERCIAL_LICENCE = "insightface pretrained packs (buffalo_l, antelopev2): non-commercial research only"
AURAFACE_LICENCE = "AuraFace: Apache-2.0"
_HOW_TO_GET = (
    "get one: buffalo_l (insightface pretrained pack, non-commercial research only) unpacked to "
    "~/.insightface/models/buffalo_l, or AuraFace (Apache-2.0, commercial use allowed, same format); "
    f"then pass --face-models DIR or set {ENV_VAR}=DIR (or use --backend dlib)"
)


@dataclass(frozen=True)
class FacePack:
    """A located pack folder (it holds the ``.onnx`` files) and how it was found."""

    path: Path
    source: str  # "--face-models", "CHARKIT_FACE_MODELS" or "~/.insightface/models"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def onnx_files(self) -> list[Path]:
        return sorted(self.path.glob("*.onnx"), key=lambda p: p.name)

    @property
    def licence(self) -> str:
        return pack_licence(self.path)


def _has_onnx(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("*.onnx"))


def _pack_in(folder: Path, name: str | None) -> Path | None:
    """The pack folder at ``folder`` (itself, ``models/<name>`` or ``<name>``), else None."""
    if _has_onnx(folder):
        return folder
    for n in (name,) if name else DEFAULT_PACK_NAMES:
        for cand in (folder / "models" / n, folder / n):
            if _has_onnx(cand):
                return cand
    if name:
        return None
    found = sorted(
        {p for base in (folder / "models", folder) if base.is_dir() for p in base.iterdir() if _has_onnx(p)},
        key=lambda p: str(p),
    )
    if len(found) > 1:
        names = ", ".join(str(p.relative_to(folder)) for p in found)
        raise CharkitError(
            f"{folder}: holds several face-model packs ({names}); point --face-models (or {ENV_VAR}) at one of them"
        )
    return found[0] if found else None


def locate_pack(pack: str | os.PathLike | None = None, *, name: str | None = None) -> FacePack:
    """Find the pack to use (explicit path, then ``$CHARKIT_FACE_MODELS``, then ``~/.insightface/models``).

    Raises :class:`MissingModelError` (one line: where we looked, how to get a pack);
    never downloads.

    >>> locate_pack("~/models/auraface").name  # doctest: +SKIP
    'auraface'
    """
    if name is not None:
        check_name(name, "face-model pack name")
    if pack is not None and str(pack) != "":
        where, source = Path(pack).expanduser(), "--face-models"
        looked = f"--face-models {where}"
    elif os.environ.get(ENV_VAR):
        where, source = Path(os.environ[ENV_VAR]).expanduser(), ENV_VAR
        looked = f"{ENV_VAR}={where}"
    else:
        where, source = Path(DEFAULT_ROOT).expanduser(), DEFAULT_ROOT
        looked = f"{where} (the default: no --face-models given, {ENV_VAR} unset)"
    what = f"insightface face-model pack {name!r}" if name else "insightface face-model pack"
    if not where.exists():
        raise MissingModelError(f"no {what}: {looked} does not exist; {_HOW_TO_GET}")
    if not where.is_dir():
        raise MissingModelError(f"no {what}: {looked} is not a folder; {_HOW_TO_GET}")
    found = _pack_in(where, name)
    if found is None:
        inside = f"models/{name}/ or {name}/" if name else "models/<pack>/ or <pack>/ folders"
        raise MissingModelError(f"no {what}: {looked} holds no .onnx files nor {inside}; {_HOW_TO_GET}")
    return FacePack(path=found.resolve(), source=source)


def find_pack(pack: str | os.PathLike | None = None, *, name: str | None = None) -> FacePack | None:
    """Like :func:`locate_pack` but ``None`` when there is no pack (for ``--backend auto``)."""
    try:
        return locate_pack(pack, name=name)
    except MissingModelError:
        return None


def pack_licence(folder: str | os.PathLike) -> str:
    """The pack's licence: its own LICENSE file, else AuraFace's, else insightface's non-commercial terms."""
    folder = Path(folder)
    for fname in LICENCE_FILES:
        f = folder / fname
        if f.is_file():
            with open(f, encoding="utf-8", errors="replace") as fh:
                first = next((line.strip() for line in fh if line.strip()), "")
            if first:
                return f"{folder.name}: {first[:200]} (from {fname})"
    if (folder / "MODEL.LICENSE").is_file():  # insightface >= 2.1 signed licences
        with contextlib.suppress(Exception):
            from insightface.model_zoo.model_license import inspect_model_package_license

            found = inspect_model_package_license(folder)
            if found.verified:
                return f"{folder.name}: insightface signed MODEL.LICENSE, {found.grant} use"
    if "aura" in folder.name.lower():
        return AURAFACE_LICENCE
    return NONCOMMERCIAL_LICENCE


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime has it (``charkit[gpu]`` installs onnxruntime-gpu), else CPU."""
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _provider_name(p) -> str:
    return str(p[0] if isinstance(p, (list, tuple)) else p)


def _check_providers(providers: list) -> list:
    import onnxruntime

    available = onnxruntime.get_available_providers()
    for p in providers:
        if _provider_name(p) not in available:
            raise CharkitError(
                f"providers: {_provider_name(p)} is not available in this onnxruntime (available: "
                f"{', '.join(available)}); for CUDA install charkit[gpu] (onnxruntime-gpu instead of onnxruntime)"
            )
    return list(providers)


def _session_options():
    # ORT sizes its thread pool to every core by default; honour an OMP_NUM_THREADS cap
    # (tests and shared CI boxes set it).
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    return opts


class InsightFaceBackend(CosineBackend):
    """SCRFD detector + ArcFace recogniser from an insightface-format pack (cosine metric).

    >>> backend = InsightFaceBackend("~/models/auraface")  # doctest: +SKIP
    >>> faces = backend.analyze(np.asarray(load_image("me.jpg").image))  # doctest: +SKIP
    >>> backend.similarity(faces[0].embedding, centroid) >= backend.info.threshold  # doctest: +SKIP
    """

    name = "insightface"

    def __init__(
        self,
        pack: str | Path | None = None,
        *,
        name: str | None = None,
        providers: list[str] | None = None,
        det_size: tuple[int, int] = DEFAULT_DET_SIZE,
        threshold: float | None = None,
    ):
        self.pack = locate_pack(pack, name=name)
        self.providers = default_providers() if providers is None else _check_providers(providers)
        self.det_size = (int(det_size[0]), int(det_size[1]))
        self._threshold = (
            DEFAULT_THRESHOLD
            if threshold is None
            else check_threshold(threshold, self.name, calibrated=DEFAULT_THRESHOLD)
        )
        self.app = self._load()
        self.detector = self.app.models["detection"]
        self.recogniser = self.app.models["recognition"]

    # -- load: FaceAnalysis over the checked folder ----------------------------------------
    def _load(self):
        from insightface.app import FaceAnalysis

        folder = str(self.pack.path)
        try:
            # An absolute existing folder as ``name`` is used as is (insightface 2.x checks
            # it directly; 0.7's os.path.join(root, "models", name) yields it too), so
            # FaceAnalysis never reaches its download branch. 0.7 prints; keep stdout clean
            # for ``charkit verify --json``.
            with contextlib.redirect_stdout(io.StringIO()):
                app = FaceAnalysis(
                    name=folder,
                    root=str(self.pack.path.parent),
                    providers=self.providers,
                    allowed_modules=["detection", "recognition"],
                    sess_options=_session_options(),
                )
        except AssertionError:  # FaceAnalysis asserts that a detector was found
            app = None
        except Exception as e:  # a corrupt or foreign .onnx file is bad user input
            detail = " ".join(str(e).split())[:300]
            raise CharkitError(
                f"{folder}: cannot load the face-model pack ({type(e).__name__}: {detail}); "
                "replace the pack with a complete copy"
            ) from None
        for task, kind in (
            ("detection", "SCRFD-style, 5+ outputs"),
            ("recognition", "ArcFace-style, square input >= 112"),
        ):
            if app is None or task not in app.models:
                raise MissingModelError(
                    f"{folder}: the face-model pack has no {task} .onnx model ({kind}); {_HOW_TO_GET}"
                )
        cpu_only = all(_provider_name(p) == "CPUExecutionProvider" for p in self.providers)
        with contextlib.redirect_stdout(io.StringIO()):
            app.prepare(ctx_id=-1 if cpu_only else 0, det_size=self.det_size)
        return app

    @functools.cached_property
    def info(self) -> BackendInfo:
        # Hash the two files actually in use (memoised per path, size and mtime): a pack's
        # unused extras (genderage, 3-D landmarks) do not change the scores.
        used = sorted({self.detector.model_file, self.recogniser.model_file}, key=lambda p: os.path.basename(p))
        return BackendInfo(
            name=self.name,
            model=self.pack.name,
            model_hash=files_sha256(used),
            dim=self._dim(),
            metric="cosine",
            threshold=self._threshold,
            licence=self.pack.licence,
        )

    def _dim(self) -> int:
        last = self.recogniser.output_shape[-1]
        if isinstance(last, (int, np.integer)) and last > 0:
            return int(last)
        size = self.recogniser.input_size
        probe = np.zeros((size[1], size[0], 3), dtype=np.uint8)
        return int(np.asarray(self.recogniser.get_feat(probe)).size)

    # -- detect / embed ------------------------------------------------------------------
    def detect(self, image: np.ndarray) -> list[Face]:
        bboxes, kpss = self.detector.detect(bgr(image), max_num=0, metric="default")
        faces = [
            Face(
                box=tuple(float(v) for v in bboxes[i, :4]),
                score=float(bboxes[i, 4]),
                landmarks=[] if kpss is None else [(float(x), float(y)) for x, y in kpss[i]],
            )
            for i in range(bboxes.shape[0])
        ]
        return _largest_first(faces)

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        if len(face.landmarks) != 5:
            raise ValueError(
                f"insightface embeds aligned crops and needs the detector's 5 landmarks, got {len(face.landmarks)}: "
                "embed faces found by this backend's detect()"
            )
        from insightface.app.common import Face as IFace

        iface = IFace(bbox=np.asarray(face.box, np.float32), kps=np.asarray(face.landmarks, np.float32))
        return unit(self.recogniser.get(bgr(image), iface)).astype(np.float32)

    def analyze(self, image: np.ndarray) -> list[Face]:
        # One FaceAnalysis.get: detection, alignment and recognition in a single pass.
        faces = []
        for f in self.app.get(bgr(image)):
            faces.append(
                Face(
                    box=tuple(float(v) for v in f.bbox[:4]),
                    score=float(f.det_score),
                    landmarks=[] if f.kps is None else [(float(x), float(y)) for x, y in f.kps],
                    embedding=unit(f.embedding).astype(np.float32),
                )
            )
        return _largest_first(faces)


def _largest_first(faces: list[Face]) -> list[Face]:
    return sorted(faces, key=lambda f: (-f.area, -f.score))
