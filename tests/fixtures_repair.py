"""Fixtures for repair tests: render folders whose scenes show real faces (the right or the wrong person)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FACES_DIR = Path(__file__).parent / "data" / "faces"


@functools.cache
def _face_box(name: str) -> tuple[float, float, float, float]:
    from charkit.identity.dlib_backend import DlibBackend

    with Image.open(FACES_DIR / name) as im:
        faces = DlibBackend().detect(np.asarray(im.convert("RGB")))
    return faces[0].box


def portrait(name: str, size: int = 256, *, zoom: float = 2.6, flip: bool = False) -> Image.Image:
    """A square crop of a real photo centred on its face (face about 1/zoom of the side), resized to ``size``."""
    x0, y0, x1, y1 = _face_box(name)
    side = zoom * max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    with Image.open(FACES_DIR / name) as im:
        im = im.convert("RGB")
        left = min(max(cx - side / 2, 0), im.width - side)
        top = min(max(cy - side / 2, 0), im.height - side)
        out = im.crop((round(left), round(top), round(left + side), round(top + side))).resize(
            (size, size), Image.LANCZOS
        )
    return out.transpose(Image.FLIP_LEFT_RIGHT) if flip else out


def faceless(size: int = 256) -> Image.Image:
    """A real photo without a face: the chandelier-and-curtains corner of obama3.jpg."""
    with Image.open(FACES_DIR / "obama3.jpg") as im:
        return im.convert("RGB").crop((0, 0, 600, 600)).resize((size, size), Image.LANCZOS)


def swap_scene_image(out_dir: Path, scene: str, image: Image.Image) -> None:
    """Replace a rendered scene's PNG by ``image`` (as if the model had drawn it) and update the manifest's sha256."""
    from charkit.render.outputs import encode_png, read_png_metadata, write_png

    mf = out_dir / "manifest.json"
    m = json.loads(mf.read_text())
    rec = next(i for i in m["images"] if i["scene"] == scene)
    png = out_dir / rec["file"]
    meta = read_png_metadata(png)
    rec["sha256"] = write_png(png, encode_png(image, parameters=meta["parameters"], meta=meta["charkit"]))
    mf.write_text(json.dumps(m, indent=2) + "\n")


@pytest.fixture(scope="session")
def real_portraits():
    """``get(name, size) -> Image``: cached square portraits of the test photos."""
    cache: dict = {}

    def get(name: str, size: int = 256, **kw) -> Image.Image:
        key = (name, size, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = portrait(name, size, **kw)
        return cache[key].copy()

    return get


def _inpaint_variant(family: str, tiny, out_dir: Path) -> Path:
    """A tiny model of ``family`` that differs where inpainting needs it, saved like a real diffusers folder.

    sd3: SD3's real 16 latent channels (diffusers' SD3 inpaint pipeline takes 16 or 33, the tiny SD3 has 4);
    flux: a Flux Fill transformer (latents + packed masked-image latents + packed mask in, latents out).
    """
    import torch
    from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel

    from charkit.families import get_family

    pipe = get_family(family).load_pipeline(tiny.root)
    torch.manual_seed(0)
    if family == "sd3":
        pipe.transformer = SD3Transformer2DModel.from_config(
            {**pipe.transformer.config, "in_channels": 16, "out_channels": 16}
        ).eval()
        pipe.vae = AutoencoderKL.from_config({**pipe.vae.config, "latent_channels": 16}).eval()
    elif family == "flux":
        packed = pipe.transformer.config.in_channels  # 2x2-packed latents
        factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        pipe.transformer = FluxTransformer2DModel.from_config(
            {**pipe.transformer.config, "in_channels": 2 * packed + 4 * factor * factor, "out_channels": packed}
        ).eval()
    else:
        raise ValueError(family)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


@pytest.fixture(scope="session")
def inpaint_variants(tiny_models, tmp_path_factory):
    """``get(kind) -> Path``: ``"sd3"`` a 16-channel tiny SD3, ``"flux-fill"`` a tiny Flux Fill (built once)."""
    root = tmp_path_factory.mktemp("inpaint-variants")
    cache: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            family = kind.split("-")[0]
            cache[kind] = _inpaint_variant(family, tiny_models(family), root / kind)
        return cache[kind]

    return get
