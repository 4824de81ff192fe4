"""Real photos and the image transforms the look tests (and benchmarks/look_table.py) measure.

Face boxes are dlib's HOG detections on the photos in tests/data/faces, measured once
(test_look.py::test_boxes_are_dlib_detections re-checks them) so most tests need no detector.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

FACES_DIR = Path(__file__).parent / "data" / "faces"

#: dlib HOG boxes (x0, y0, x1, y1) of the one face in each photo
BOXES = {
    "obama.jpg": (366, 136, 624, 394),
    "obama2.jpg": (164, 302, 474, 611),
    "obama3.jpg": (656, 293, 930, 567),
    "biden.jpg": (437, 231, 746, 539),
}
#: the character's references; obama3.jpg is the held-out photo of the same person
REFERENCES = ("obama.jpg", "obama2.jpg")

Box = tuple[float, float, float, float]
Transform = Callable[[Image.Image, Box], tuple[Image.Image, Box]]
_LUMA = np.asarray([0.2126, 0.7152, 0.0722])


@functools.cache
def photo(name: str) -> Image.Image:
    """A test photo as 8-bit RGB (cached: treat it as read-only)."""
    with Image.open(FACES_DIR / name) as im:
        return im.convert("RGB")


def _u8(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "RGB")


def _jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")


def _resize(im: Image.Image, box: Box, f: float) -> tuple[Image.Image, Box]:
    size = (round(im.width * f), round(im.height * f))
    return im.resize(size, Image.Resampling.LANCZOS), tuple(v * f for v in box)


def _desaturate(im: Image.Image, box: Box) -> tuple[Image.Image, Box]:
    a = np.asarray(im, dtype=np.float64)
    grey = (a @ _LUMA)[..., None]  # towards Rec. 709 luma, so brightness stays put
    return _u8(grey + 0.3 * (a - grey)), box


def _grain(im: Image.Image, box: Box) -> tuple[Image.Image, Box]:
    a = np.asarray(im, dtype=np.float64)
    noise = np.random.default_rng(0).normal(0.0, 8.0, a.shape[:2])[..., None]  # monochrome, sigma 8/255
    return _u8(a + noise), box


#: name -> (what it does, transform)
TRANSFORMS: dict[str, tuple[str, Transform]] = {
    "original": ("the photo as it is", lambda im, box: (im, box)),
    "blur": ("Gaussian blur, radius 2 px", lambda im, box: (im.filter(ImageFilter.GaussianBlur(2)), box)),
    "dark": ("pixel values x 0.5", lambda im, box: (_u8(np.asarray(im, dtype=np.float64) * 0.5), box)),
    "desaturate": ("chroma x 0.3 towards Rec. 709 luma", _desaturate),
    "grain": ("monochrome Gaussian grain, sigma 8/255", _grain),
    "jpeg10": ("re-saved as JPEG quality 10", lambda im, box: (_jpeg(im, 10), box)),
    "jpeg90": ("re-saved as JPEG quality 90", lambda im, box: (_jpeg(im, 90), box)),
    "shift3": ("face box moved 3 px right and down", lambda im, box: (im, tuple(v + 3 for v in box))),
    "mirror": (
        "mirrored left-right",
        lambda im, box: (
            im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
            (im.width - box[2], box[1], im.width - box[0], box[3]),
        ),
    ),
    "half": ("resized x 0.5 (Lanczos)", lambda im, box: _resize(im, box, 0.5)),
    "double": ("resized x 2 (Lanczos)", lambda im, box: _resize(im, box, 2.0)),
}


def transformed(name: str, transform: str) -> tuple[Image.Image, Box]:
    """``photo(name)`` through ``TRANSFORMS[transform]``, with the face box moved along."""
    return TRANSFORMS[transform][1](photo(name), BOXES[name])
