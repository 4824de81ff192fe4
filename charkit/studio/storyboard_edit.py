"""Edit one scene of a storyboard YAML in place, keeping its comments and layout.

The studio writes what a re-roll or an edit changes (``seed``, ``candidates``, ``prompt``, a LoRA
scale) back into the storyboard, so the file stays the one source of truth: ``charkit render``
renders exactly what the studio showed. ruamel.yaml's round-trip mode keeps comments, key order,
quoting and flow/block style; indentation is taken from the file. The edited text is validated the
way ``charkit render`` reads it (strict ``yaml.safe_load`` + the typed storyboard) before it atomically
replaces the file; an edit that would make the storyboard invalid is refused with one line.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

from filelock import FileLock

from ..configfiles import parse_yaml
from ..errors import CharkitError
from ..paths import atomic_write_text
from ..render.storyboard import Storyboard, parse_storyboard

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _guess_indent(text: str) -> tuple[int, int, int]:
    """(mapping indent, sequence indent, sequence dash offset) of a block-style YAML text."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    mapping, seq, offset = None, None, None
    for prev, line in zip(lines, lines[1:]):
        if not prev.rstrip().endswith(":") or prev.lstrip().startswith("- "):
            continue
        base = len(prev) - len(prev.lstrip())
        ind = len(line) - len(line.lstrip()) - base
        if ind <= 0 and not line.lstrip().startswith("- "):
            continue
        if line.lstrip().startswith("- "):
            if offset is None:
                offset = max(ind, 0)
                rest = line.lstrip()[2:]
                seq = offset + 2 + (len(rest) - len(rest.lstrip()))
        elif mapping is None:
            mapping = ind
    mapping = mapping or 2
    offset = offset if offset is not None else 0
    return mapping, max(seq or offset + 2, offset + 2), offset


def _yaml(text: str):
    from ruamel.yaml import YAML

    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 4096  # never re-wrap a long prompt
    mapping, seq, offset = _guess_indent(text)
    y.indent(mapping=mapping, sequence=seq, offset=offset)
    return y


def storyboard_lock(path: str | os.PathLike) -> FileLock:
    """The lock the studio holds while it rewrites a storyboard (``.episode.yaml.lock`` beside it)."""
    p = Path(path)
    return FileLock(p.with_name(f".{p.name}.lock"), timeout=60)


def check_text(value: str, what: str) -> str:
    """A prompt as the user typed it, refused when it holds control characters (tabs and newlines are fine)."""
    if _CONTROL.search(value):
        raise CharkitError(f"{what}: contains control characters; type plain text")
    return value


def edit_scene(
    path: str | os.PathLike,
    scene_id: str,
    *,
    seed: int | None = None,
    candidates: int | None = None,
    prompt: str | None = None,
    lora: dict[str, float] | None = None,
) -> Storyboard:
    """Set fields of scene ``scene_id`` in the storyboard file; returns the storyboard as render will read it.

    >>> edit_scene("episode.yaml", "s02-cafe", seed=1235)  # doctest: +SKIP
    """
    from ruamel.yaml.error import YAMLError
    from ruamel.yaml.scalarstring import LiteralScalarString

    p = Path(path)
    with storyboard_lock(p):
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise CharkitError(f"{p}: cannot read storyboard ({getattr(e, 'strerror', None) or e})") from None
        y = _yaml(text)
        try:
            doc = y.load(text)
        except YAMLError as e:
            raise CharkitError(f"{p}: invalid YAML ({str(e).splitlines()[0]}); fix the syntax") from None
        scenes = doc.get("scenes") if hasattr(doc, "get") else None
        scene = next((s for s in scenes or [] if hasattr(s, "get") and s.get("id") == scene_id), None)
        if scene is None:
            raise CharkitError(f"{p}: no scene {scene_id!r}")
        if seed is not None:
            scene["seed"] = int(seed)
        if candidates is not None:
            scene["candidates"] = int(candidates)
        if prompt is not None:
            check_text(prompt, f"scene {scene_id!r}: prompt")
            multiline = "\n" in prompt or isinstance(scene.get("prompt"), LiteralScalarString)
            scene["prompt"] = LiteralScalarString(prompt) if multiline and prompt else prompt
        if lora:
            if scene.get("lora") is None:
                scene["lora"] = {}
            for name, scale in lora.items():
                scene["lora"][name] = float(scale)
        out = io.StringIO()
        y.dump(doc, out)
        new_text = out.getvalue()
        board = parse_storyboard(
            parse_yaml(new_text, str(p)),
            source=str(p),
            path=p.resolve(),
            sha256=hashlib.sha256(new_text.encode("utf-8")).hexdigest(),
        )
        if new_text != text:
            atomic_write_text(p, new_text)
    return board
