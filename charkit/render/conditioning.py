"""Conditioning inputs of a scene: control maps and IP-Adapter references.

* ControlNet maps come from controlnet_aux detectors run on the scene's control image, or the
  image is used as is (``control.preprocess: false``, e.g. a pose skeleton drawn elsewhere).
  Canny needs no weights and works offline. OpenPose and depth (MiDaS) need the annotator
  weights of ``lllyasviel/Annotators`` in a local folder (``--annotators DIR``); those files
  are pickles (``.pth``/``.pt``), so they also need ``--allow-pickle-weights``.
* Plain IP-Adapter conditions on a reference image (default: the character's first reference).
* IP-Adapter FaceID conditions on the character's identity: the centroid of insightface
  ArcFace embeddings over all its references (unit length, as FaceID was trained on
  ``normed_embedding``). dlib's 128-d descriptors live in another space and cannot be used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import CharkitError, MissingModelError
from ..images import load_image

#: Files of lllyasviel/Annotators each detector loads from an --annotators folder.
ANNOTATOR_FILES: dict[str, tuple[str, ...]] = {
    "openpose": ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"),
    "depth": ("dpt_hybrid-midas-501f0c75.pt",),
}


def check_annotators(
    control_type: str, annotators: str | os.PathLike | None, *, allow_pickle_weights: bool, where: str
) -> None:
    """Raise a one-line error unless ``control_type`` can be preprocessed with what is on disk."""
    files = ANNOTATOR_FILES.get(control_type)
    if not files:
        return  # canny: no weights
    fix = (
        f"download lllyasviel/Annotators ({', '.join(files)}) and pass --annotators DIR, or give a precomputed "
        f"{control_type} map with control.preprocess: false"
    )
    if annotators is None:
        raise MissingModelError(f"{where}: {control_type} detection needs annotator weights; {fix}")
    missing = [f for f in files if not (Path(annotators) / f).is_file()]
    if missing:
        raise MissingModelError(f"{where}: annotator folder {annotators} lacks {', '.join(missing)}; {fix}")
    if not allow_pickle_weights:
        raise CharkitError(
            f"{where}: the {control_type} annotator weights are pickle files, which can run code when loaded; "
            "pass --allow-pickle-weights if you trust them, or use control.preprocess: false with a precomputed map"
        )


#: The recogniser of insightface's buffalo_l (and buffalo_m) pack: the ArcFace space IP-Adapter FaceID was trained on.
FACEID_RECOGNISER = "w600k_r50.onnx"


def faceid_pack_warning(backend) -> str | None:
    """A one-line warning when the insightface pack that conditions FaceID is not buffalo_l's ArcFace (None: it is).

    Every 512-d pack fits the adapter's input, but antelopev2, AuraFace & co. embed faces in another space than the
    one FaceID was trained on: the image still renders, with weak identity.
    """
    recogniser = os.path.basename(getattr(getattr(backend, "recogniser", None), "model_file", "") or "")
    if backend.info.model == "buffalo_l" or recogniser == FACEID_RECOGNISER:
        return None
    return (
        f"ip_adapter mode face: FaceID was trained on insightface buffalo_l ArcFace embeddings ({FACEID_RECOGNISER}); "
        f"pack {backend.info.model!r} ({recogniser or 'another recogniser'}) embeds faces in another space, so "
        "identity will be weak; condition FaceID with buffalo_l (--face-models), any pack can still score"
    )


def canny_map(image: Image.Image, width: int, height: int, *, low: int = 100, high: int = 200) -> Image.Image:
    """controlnet_aux's CannyDetector on ``image`` resized to the scene size; returns a ``width x height`` RGB map."""
    from controlnet_aux import CannyDetector

    src = image.convert("RGB").resize((width, height), Image.LANCZOS)
    # CannyDetector rounds sides to multiples of 64: detect at >= 64 px, then map back to the scene size.
    res = max(64, 64 * round(min(width, height) / 64))
    edges = CannyDetector()(
        src, low_threshold=low, high_threshold=high, detect_resolution=res, image_resolution=res, output_type="pil"
    )
    return (
        edges.convert("RGB").resize((width, height), Image.BILINEAR)
        if edges.size != (width, height)
        else edges.convert("RGB")
    )


@dataclass
class Conditioner:
    """Control maps, IP-Adapter images and FaceID embeddings, each computed once per run."""

    annotators: Path | None = None
    allow_pickle_weights: bool = False
    device: str = "cpu"
    _detectors: dict = field(default_factory=dict, repr=False)
    _maps: dict = field(default_factory=dict, repr=False)
    _faceid: dict = field(default_factory=dict, repr=False)
    _faces: dict = field(default_factory=dict, repr=False)

    def control_map(
        self,
        control_type: str,
        image_path: Path,
        width: int,
        height: int,
        *,
        preprocess: bool,
        low: int = 100,
        high: int = 200,
        where: str = "control",
    ) -> Image.Image:
        """The control image a ControlNet of ``control_type`` receives, at the scene size.

        >>> Conditioner().control_map("canny", Path("pose.jpg"), 512, 512, preprocess=True)  # doctest: +SKIP
        """
        key = (control_type, str(image_path), width, height, preprocess, low, high)
        if key in self._maps:
            return self._maps[key]
        try:
            src = load_image(image_path).image
        except ValueError as e:
            raise CharkitError(f"{where}: control image {image_path}: {e}; use a readable png/jpg") from None
        if not preprocess:
            out = src.resize((width, height), Image.BILINEAR) if src.size != (width, height) else src
        elif control_type == "canny":
            out = canny_map(src, width, height, low=low, high=high)
        else:
            check_annotators(control_type, self.annotators, allow_pickle_weights=self.allow_pickle_weights, where=where)
            out = self._detector(control_type)(src.resize((width, height), Image.LANCZOS), output_type="pil")
            out = out.convert("RGB").resize((width, height), Image.BILINEAR)
        self._maps[key] = out
        return out

    def _detector(self, control_type: str):
        if control_type not in self._detectors:
            if control_type == "openpose":
                from controlnet_aux import OpenposeDetector

                det = OpenposeDetector.from_pretrained(str(self.annotators))
            else:
                from controlnet_aux import MidasDetector

                det = MidasDetector.from_pretrained(str(self.annotators))
            if hasattr(det, "to"):
                det = det.to(self.device)
            self._detectors[control_type] = det
        return self._detectors[control_type]

    @staticmethod
    def ip_image(path: Path, where: str = "ip_adapter.image") -> Image.Image:
        """The plain IP-Adapter reference image (RGB)."""
        try:
            return load_image(path).image
        except ValueError as e:
            raise CharkitError(f"{where}: {path}: {e}; use a readable photo") from None

    def faceid_embedding(self, character, backend, *, cache=None) -> np.ndarray:
        """Unit-length mean ArcFace embedding of ``character``'s references (insightface backend only).

        >>> emb = Conditioner().faceid_embedding(alice, InsightFaceBackend(pack))  # doctest: +SKIP
        >>> emb.shape  # doctest: +SKIP
        (512,)
        """
        from ..identity import profile_for_character

        key = (str(character.dir), backend.info.cache_key)
        if key not in self._faceid:
            if backend.info.dim != 512:
                raise CharkitError(
                    f"ip_adapter mode face: FaceID needs 512-d insightface ArcFace embeddings, but backend "
                    f"{backend.info.name} gives {backend.info.dim}-d; pass an insightface pack (--face-models DIR)"
                )
            profile = profile_for_character(character, backend, cache=cache)
            vecs = profile.embeddings[[profile.paths.index(p) for p in profile.used]]
            vecs = vecs / np.linalg.norm(vecs, axis=1, keepdims=True).clip(1e-12)
            mean = vecs.mean(axis=0)
            self._faceid[key] = (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
        return self._faceid[key]

    def faceid_face_image(self, character, backend, size: int = 224) -> Image.Image:
        """FaceID plus: the character's face as its CLIP encoder should see it (the first reference with a face,
        aligned on its five landmarks as insightface's ``norm_crop`` does in the IP-Adapter FaceID demos)."""
        key = (str(character.dir), backend.info.cache_key, size)
        if key not in self._faces:
            self._faces[key] = _face_crop(character, backend, size)
        return self._faces[key]


def _face_crop(character, backend, size: int) -> Image.Image:
    for path in character.ref_paths():
        image = load_image(path).image
        faces = sorted(backend.detect(np.asarray(image)), key=lambda f: -f.area)
        if not faces:
            continue
        face = faces[0]
        if len(face.landmarks) == 5:
            from insightface.utils import face_align

            crop = face_align.norm_crop(
                np.asarray(image), landmark=np.asarray(face.landmarks, np.float32), image_size=size
            )
            return Image.fromarray(crop)
        x0, y0, x1, y1 = face.box
        return image.crop((int(x0), int(y0), int(x1), int(y1))).resize((size, size), Image.LANCZOS)
    raise CharkitError(
        f"ip_adapter mode face (FaceID plus): no face found in the references of {character.name}; "
        "add a clear frontal photo"
    )
