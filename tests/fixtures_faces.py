"""Real-photo fixtures for identity tests: characters built from public-domain portraits."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from charkit.character import CharacterSpec, save_spec

FACES_DIR = Path(__file__).parent / "data" / "faces"


def make_character(root: Path, name: str, refs: list[str], *, trigger=("ohwx",), class_word="man") -> Path:
    """characters/<name>/ with character.toml and copies of the given photos from tests/data/faces."""
    d = root / name
    (d / "refs").mkdir(parents=True, exist_ok=True)
    for r in refs:
        shutil.copy(FACES_DIR / r, d / "refs" / r)
    save_spec(d, CharacterSpec(name=name, trigger=list(trigger), class_word=class_word))
    return d


def no_face_photo(path: Path) -> Path:
    """A real photo with no face in it: the chandelier-and-curtains corner of obama3.jpg."""
    with Image.open(FACES_DIR / "obama3.jpg") as im:
        im.crop((0, 0, 620, 900)).save(path, quality=92)
    return path


def side_by_side(left: str, right: str, path: Path, height: int = 700) -> Path:
    """Two real portraits pasted into one image (a two-character scene)."""
    ims = []
    for name in (left, right):
        with Image.open(FACES_DIR / name) as im:
            im = im.convert("RGB")
            ims.append(im.resize((round(im.width * height / im.height), height)))
    out = Image.new("RGB", (sum(i.width for i in ims), height), (128, 128, 128))
    x = 0
    for im in ims:
        out.paste(im, (x, 0))
        x += im.width
    out.save(path, quality=92)
    return path


@pytest.fixture(scope="session")
def dlib_backend():
    from charkit.identity.dlib_backend import DlibBackend

    return DlibBackend()


@pytest.fixture(scope="session")
def sface_backend():
    from charkit.identity.sface_backend import SFaceBackend

    return SFaceBackend()


@pytest.fixture(scope="session")
def face_cache(tmp_path_factory):
    from charkit.identity import FaceCache

    return FaceCache(tmp_path_factory.mktemp("face-cache"))


@pytest.fixture(scope="session")
def characters_root(tmp_path_factory) -> Path:
    """obama (refs: obama.jpg, obama2.jpg) and biden (refs: biden.jpg)."""
    root = tmp_path_factory.mktemp("characters")
    make_character(root, "obama", ["obama.jpg", "obama2.jpg"])
    make_character(root, "biden", ["biden.jpg"])
    return root
