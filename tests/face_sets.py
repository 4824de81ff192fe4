"""Genuine and impostor faces for calibrating the offline backends, built at run time (never committed).

Genuine (one person, Barack Obama, public-domain portraits in tests/data/faces): the references
obama.jpg and obama2.jpg, the held-out obama3.jpg and five degraded copies of it (:data:`VARIANTS`).

Impostors (other people): biden.jpg; the six faces of insightface's ``data/images/t1.jpg`` and its
``Tom_Hanks_54745.png`` (no licence stated: read from the *installed* insightface package, never
copied into the repository); scikit-image's ``skimage.data.astronaut()`` (NASA, public domain).

Used by tests/test_sface_backend.py and benchmarks/calibrate_sface.py, so that the documented
numbers (docs/identity.md) and the tests come from the same images.
"""

from __future__ import annotations

import io
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

FACES_DIR = Path(__file__).parent / "data" / "faces"
REFERENCES = ("obama.jpg", "obama2.jpg")
HELD_OUT = "obama3.jpg"
#: t1.jpg is 1280x886; a point inside each of its six faces (inside both YuNet's and dlib's boxes)
T1_SIZE = (1280, 886)
T1_FACES = ((515, 350), (950, 130), (115, 335), (320, 215), (790, 415), (1170, 335))


def _jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _scaled(im: Image.Image, factor: float) -> Image.Image:
    arr = np.asarray(im, dtype=np.float32) * factor
    return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8))


#: degraded copies of the held-out photo (a genuine image must survive each of them)
VARIANTS: dict[str, Callable[[Image.Image], Image.Image]] = {
    # a quarter of each side (1/16 of the pixels): the face box is ~65 px, the sface recogniser's limit
    "quarter": lambda im: im.resize((im.width // 4, im.height // 4), Image.Resampling.LANCZOS),
    # Pillow's radius is the Gaussian's standard deviation
    "blur4": lambda im: im.filter(ImageFilter.GaussianBlur(radius=4)),
    "jpeg10": lambda im: _jpeg(im, 10),
    "rot20": lambda im: im.rotate(20, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(128, 128, 128)),
    "dark035": lambda im: _scaled(im, 0.35),
}


#: harder copies, past what the calibration asks for: the tests record which backend misses which
HARD_VARIANTS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "eighth": lambda im: im.resize((im.width // 8, im.height // 8), Image.Resampling.LANCZOS),  # ~34 px face
    "blur12": lambda im: im.filter(ImageFilter.GaussianBlur(radius=12)),
    "rot45": lambda im: im.rotate(45, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(128, 128, 128)),
    "jpeg3": lambda im: _jpeg(im, 3),
}


@dataclass(frozen=True)
class Probe:
    """One face to compare: the image holding it, whose face it is and which photo it comes from."""

    name: str
    image: np.ndarray  # RGB uint8
    person: str
    photo: str  # variants of one photo share it: pairs within a photo are not "different photos"
    at: tuple[float, float] | None = None  # a point inside the face meant; None: the largest face

    def pick(self, faces):
        """The face this probe means among a backend's ``faces`` (largest first), or None if it was missed."""
        if self.at is None:
            return faces[0] if faces else None
        x, y = self.at
        inside = [f for f in faces if f.box[0] <= x <= f.box[2] and f.box[1] <= y <= f.box[3]]
        centre = lambda f: ((f.box[0] + f.box[2]) / 2 - x) ** 2 + ((f.box[1] + f.box[3]) / 2 - y) ** 2
        return min(inside, key=centre) if inside else None


def _rgb(path: Path | str) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def reference_probes() -> list[Probe]:
    return [Probe(n, np.asarray(_rgb(FACES_DIR / n)), "obama", n) for n in REFERENCES]


def genuine_probes() -> list[Probe]:
    """The held-out photo and its degraded copies (the references are not among them)."""
    src = _rgb(FACES_DIR / HELD_OUT)
    out = [Probe(HELD_OUT, np.asarray(src), "obama", HELD_OUT)]
    out += [Probe(f"{HELD_OUT}:{v}", np.asarray(fn(src)), "obama", HELD_OUT) for v, fn in VARIANTS.items()]
    return out


def hard_probes() -> list[Probe]:
    """Copies of the held-out photo degraded past the calibration set (:data:`HARD_VARIANTS`)."""
    src = _rgb(FACES_DIR / HELD_OUT)
    return [Probe(f"{HELD_OUT}:{v}", np.asarray(fn(src)), "obama", HELD_OUT) for v, fn in HARD_VARIANTS.items()]


def insightface_images() -> Path:
    """insightface's bundled sample images, in the installed package."""
    import insightface

    return Path(os.path.dirname(insightface.__file__)) / "data" / "images"


def impostor_probes() -> list[Probe]:
    """Nine other people: Joe Biden, six faces of t1.jpg, Tom Hanks, the astronaut Eileen Collins."""
    import skimage.data

    images = insightface_images()
    t1 = _rgb(images / "t1.jpg")
    if t1.size != T1_SIZE:
        raise RuntimeError(f"{images / 't1.jpg'} is {t1.size}, not {T1_SIZE}: update T1_FACES for this insightface")
    t1 = np.asarray(t1)
    return [
        Probe("biden.jpg", np.asarray(_rgb(FACES_DIR / "biden.jpg")), "biden", "biden.jpg"),
        *(Probe(f"t1.jpg:{i}", t1, f"t1-{i}", f"t1.jpg:{i}", at=p) for i, p in enumerate(T1_FACES)),
        Probe("Tom_Hanks_54745.png", np.asarray(_rgb(images / "Tom_Hanks_54745.png")), "hanks", "hanks"),
        Probe("astronaut", np.ascontiguousarray(skimage.data.astronaut()[..., :3]), "collins", "astronaut"),
    ]


def pairs(probes: list[Probe]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(genuine, impostor) name pairs: one person in two different photos / two different people."""
    genuine, impostor = [], []
    for a, b in itertools.combinations(probes, 2):
        if a.person == b.person and a.photo != b.photo:
            genuine.append((a.name, b.name))
        elif a.person != b.person:
            impostor.append((a.name, b.name))
    return genuine, impostor


def small_face_image(side: int = 40) -> np.ndarray:
    """obama3.jpg scaled so that its face box is about ``side`` px: below the sface recogniser's 64 px."""
    src = _rgb(FACES_DIR / HELD_OUT)
    factor = side / 259  # YuNet's box on the original is ~259 px wide
    return np.asarray(src.resize((round(src.width * factor), round(src.height * factor)), Image.Resampling.LANCZOS))
