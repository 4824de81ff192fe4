"""Fixtures for rendering tests: trained-looking tiny LoRAs, character folders and storyboards in tmp."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml


def _save_tiny_lora(family: str, tiny, out_file: Path, *, seed: int = 0) -> Path:
    """A LoRA for ``tiny``'s denoiser whose lora_B is random (a fresh LoRA is an exact no-op)."""
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from charkit.families import get_family, get_spec

    pipe = get_family(family).load_pipeline(tiny.root)
    targets = get_spec(family).lora_targets
    unet = getattr(pipe, "unet", None)
    den = unet if unet is not None else pipe.transformer
    den.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=list(targets), init_lora_weights=True))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in den.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    layers = get_peft_model_state_dict(den)
    kw = {"unet_lora_layers": layers} if unet is not None else {"transformer_lora_layers": layers}
    out_file.parent.mkdir(parents=True, exist_ok=True)
    type(pipe).save_lora_weights(str(out_file.parent), weight_name=out_file.name, safe_serialization=True, **kw)
    return out_file


@pytest.fixture(scope="session")
def tiny_loras(tiny_models, tmp_path_factory):
    """``get(family) -> Path``: a LoRA .safetensors for that family's tiny model (changes pixels), built once."""
    root = tmp_path_factory.mktemp("tiny-loras")
    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            cache[family] = _save_tiny_lora(family, tiny_models(family), root / family / "alice.safetensors")
        return cache[family]

    return get


class RenderEnv:
    """Builds character folders and storyboards under one tmp folder.

    >>> env.character("alice", lora={"sd15": lora_file})  # doctest: +SKIP
    >>> env.storyboard({"project": "t", "characters": {...}, "scenes": [...]})  # doctest: +SKIP
    """

    def __init__(self, root: Path, faces_dir: Path):
        self.root = root
        self.faces_dir = faces_dir

    def character(
        self,
        name: str,
        *,
        refs: tuple[str, ...] = ("obama.jpg", "obama2.jpg", "obama3.jpg"),
        lora: dict[str, Path] | None = None,
        markers: int | None = None,
        negative_prompt: str = "",
        trigger: str = "ohwx",
    ) -> Path:
        """``characters/<name>/`` with character.toml and refs copied from tests/data/faces (or fake-pack markers)."""
        import tomli_w

        d = self.root / "characters" / name
        (d / "refs").mkdir(parents=True, exist_ok=True)
        if markers is not None:
            from charkit.testing.fake_insightface import draw_marker_image

            for i, (cx, cy) in enumerate([(256, 256), (240, 270), (270, 240)]):
                draw_marker_image(512, [(cx, cy, 160, markers)]).save(d / "refs" / f"m{i}.png")
        else:
            for r in refs:
                shutil.copy(self.faces_dir / r, d / "refs" / r)
        spec = {
            "name": name,
            "trigger": [trigger],
            "class_word": "man",
            "description": f"{name}, test character",
            "refs": "refs",
            "negative_prompt": negative_prompt,
        }
        if lora:
            spec["lora"] = {}
            for family, src in lora.items():
                dest = d / "loras" / family / "best.safetensors"
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, dest)
                spec["lora"][family] = f"loras/{family}/best.safetensors"
        (d / "character.toml").write_text(tomli_w.dumps(spec), encoding="utf-8")
        return d

    def storyboard(self, data: dict | str, name: str = "episode.yaml") -> Path:
        p = self.root / name
        p.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return p


def model_entry(family: str, tiny, *, label: str | None = None, adapters: bool = True) -> dict:
    """Storyboard `model:` mapping for a tiny model, with its ControlNet / IP-Adapter files when it has them."""
    m: dict = {"family": family, "source": str(tiny.root)}
    if label:
        m["label"] = label
    if adapters:
        if tiny.controlnet:
            m["controlnet"] = {"canny": str(tiny.controlnet)}
        if tiny.ip_adapter:
            m["ip_adapter"] = str(tiny.ip_adapter)
            m["image_encoder"] = str(tiny.image_encoder)
        if tiny.faceid:
            m["faceid"] = str(tiny.faceid)
    return m


@pytest.fixture
def render_env(tmp_path, faces_dir) -> RenderEnv:
    return RenderEnv(tmp_path, faces_dir)


def render_on_tiny_override(env, tiny, *, steps: int = 2) -> tuple[Path, Path]:
    """What the README tour does: a storyboard whose own models are not installed (a hub id and its ControlNet
    that are not cached), with a ControlNet scene, rendered with ``--model <tiny>``: (storyboard, render folder).
    The character ``obama`` must exist in ``env``."""
    from charkit.render.cli import command_line_model
    from charkit.render.lifecycle import render_storyboard
    from charkit.render.storyboard import ModelSpec, load_storyboard

    layout = str(Path(__file__).resolve().parents[1] / "examples" / "layouts" / "window.jpg")
    scene = {"id": "s1", "prompt": "photo of {obama} man", "seed": 3, "control": {"type": "canny", "image": layout}}
    model = {"source": "org/not-installed", "family": "sd15", "controlnet": {"canny": "org/no-cn"}}
    path = env.storyboard(
        {
            "project": "tour",
            "output": "out",
            "characters": {"obama": "characters/obama"},
            "defaults": {"model": model, "size": "64x64", "steps": steps},
            "scenes": [scene],
        }
    )
    board = load_storyboard(path, model_given=True)
    result = render_storyboard(board, models=[command_line_model(ModelSpec(source=str(tiny.root)), None, board)])
    return path, result.out_dir
