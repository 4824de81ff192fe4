"""PNG files that carry how they were made.

Each render is a PNG with two text chunks:

* ``parameters``: the AUTOMATIC1111 text block (prompt, ``Negative prompt:``, then
  ``Steps: .., Sampler: .., CFG scale: .., Seed: .., Size: .., Model hash: ..``), which A1111,
  ComfyUI, Civitai and most image browsers read;
* ``charkit``: a JSON object with the scene, model, seed, identity score and every
  candidate's score (the manifest record of the image, minus its own sha256).

Encoding is deterministic (fixed chunk order, no time chunk, fixed zlib level), so the same
pixels and metadata give the same bytes; files are written atomically.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from ..paths import atomic_write_bytes, sha256_bytes

PARAMETERS_KEY = "parameters"
CHARKIT_KEY = "charkit"

#: diffusers scheduler class -> the sampler name A1111 writes (what viewers and Civitai show).
SAMPLER_NAMES = {
    "DPMSolverMultistepScheduler": "DPM++ 2M",
    "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a",
    "DDIMScheduler": "DDIM",
    "PNDMScheduler": "PLMS",
    "UniPCMultistepScheduler": "UniPC",
    "FlowMatchEulerDiscreteScheduler": "Euler",
}


def _quote(value: Any) -> str:
    # A1111's own rule: quote a value that would break the "key: value, key: value" line.
    text = str(value)
    if any(c in text for c in ',:\n"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def a1111_parameters(
    *,
    prompt: str,
    negative_prompt: str,
    steps: int,
    scheduler: str,
    guidance: float,
    seed: int,
    width: int,
    height: int,
    model: str,
    model_hash: str | None = None,
    loras: dict[str, tuple[str, float]] | None = None,
    control: dict | None = None,
    extra: dict[str, Any] | None = None,
    schedule_type: str | None = None,
    distilled_guidance: float | None = None,
    clip_skip: int = 1,
    hires: dict | None = None,
    vae: tuple[str, str] | None = None,
) -> str:
    """The ``parameters`` text A1111 writes, with A1111's own field names so its PNG Info and Civitai read it.

    ``scheduler``: the A1111 sampler label (``choice.sampler``) or a diffusers class name (mapped to its label);
    ``schedule_type``: A1111's "Schedule type"; ``distilled_guidance``: Flux's guidance, which Forge writes as
    "Distilled CFG Scale" next to "CFG scale" (the true CFG scale, 1 when off); ``clip_skip`` is written when 2 or
    more (A1111 omits the default); ``hires``: ``{scale, steps, upscaler, strength}`` ("Hires upscale",
    "Hires steps", "Hires upscaler", "Denoising strength"); ``vae``: (file name, sha256); ``loras`` maps adapter
    name -> (file sha256, scale); ``model_hash`` is a sha256 (A1111 shows its first 10 hex digits, "AutoV2").

    >>> print(a1111_parameters(prompt="a cat", negative_prompt="", steps=20, scheduler="EulerDiscreteScheduler",
    ...       guidance=7.0, seed=1, width=512, height=512, model="sd15"))
    a cat
    Steps: 20, Sampler: Euler, CFG scale: 7.0, Seed: 1, Size: 512x512, Model: sd15
    """
    fields: list[tuple[str, Any]] = [("Steps", steps), ("Sampler", SAMPLER_NAMES.get(scheduler, scheduler))]
    if schedule_type:
        fields.append(("Schedule type", schedule_type))
    fields.append(("CFG scale", guidance))
    if distilled_guidance is not None:
        fields.append(("Distilled CFG Scale", distilled_guidance))
    fields += [("Seed", seed), ("Size", f"{width}x{height}")]
    if model_hash:
        fields.append(("Model hash", model_hash[:10]))
    fields.append(("Model", model))
    if vae:
        fields += [("VAE hash", vae[1][:10]), ("VAE", vae[0])]
    if hires:
        fields.append(("Denoising strength", hires["strength"]))
    if clip_skip >= 2:
        fields.append(("Clip skip", clip_skip))
    if hires:
        fields += [
            ("Hires upscale", hires["scale"]),
            ("Hires steps", hires["steps"]),
            ("Hires upscaler", hires["upscaler"]),
        ]
    if control:
        text = f"Module: {control['type']}, Model: {control.get('model', '')}, Weight: {control['scale']}"
        if "start" in control:  # sd-webui-controlnet's names for the step window
            text += f", Guidance Start: {control['start']}, Guidance End: {control['end']}"
        fields.append(("ControlNet 0", text))
    if loras:
        fields.append(("Lora hashes", ", ".join(f"{name}: {sha[:12]}" for name, (sha, _) in loras.items())))
        fields.append(("Lora weights", ", ".join(f"{name}: {scale:g}" for name, (_, scale) in loras.items())))
    for k, v in (extra or {}).items():
        fields.append((k, v))
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in fields))
    return "\n".join(lines)


def encode_png(image: Image.Image, *, parameters: str, meta: dict) -> bytes:
    """PNG bytes of ``image`` with the ``parameters`` and ``charkit`` text chunks (deterministic).

    >>> data = encode_png(img, parameters="a cat", meta={"scene": "s01"})  # doctest: +SKIP
    """
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, parameters)  # tEXt, or iTXt when the text is not latin-1
    info.add_text(CHARKIT_KEY, json.dumps(meta, sort_keys=True, ensure_ascii=True, allow_nan=False))
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG", pnginfo=info, compress_level=6, optimize=False)
    return buf.getvalue()


def write_png(path: str | os.PathLike, data: bytes) -> str:
    """Write PNG bytes atomically (temp + fsync + rename); return their sha256."""
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def read_png_metadata(path: str | os.PathLike) -> dict:
    """``{"parameters": str | None, "charkit": dict | None}`` read back from a PNG.

    >>> read_png_metadata("renders/ep1/s01.png")["charkit"]["seed"]  # doctest: +SKIP
    1234
    """
    with Image.open(Path(path)) as im:
        text = dict(getattr(im, "text", {}) or {})
    raw = text.get(CHARKIT_KEY)
    return {"parameters": text.get(PARAMETERS_KEY), "charkit": json.loads(raw) if raw else None}


def parse_a1111_parameters(text: str) -> dict:
    """Split A1111 ``parameters`` text back into prompt, negative prompt and the key/value fields.

    >>> parse_a1111_parameters("a cat\\nSteps: 20, Seed: 1")["Seed"]
    '1'
    """
    lines = text.split("\n")
    out: dict[str, Any] = {"prompt": lines[0], "negative_prompt": ""}
    rest = lines[1:]
    if rest and rest[0].startswith("Negative prompt: "):
        out["negative_prompt"] = rest[0].removeprefix("Negative prompt: ")
        rest = rest[1:]
    line = "\n".join(rest)
    i = 0
    while i < len(line):
        colon = line.find(": ", i)
        if colon < 0:
            break
        key = line[i:colon].strip()
        j = colon + 2
        if j < len(line) and line[j] == '"':
            value, end = json.JSONDecoder().raw_decode(line, j)
        else:
            end = line.find(", ", j)
            end = len(line) if end < 0 else end
            value = line[j:end]
        out[key] = value
        i = end + 2 if line.startswith(", ", end) else end
    return out
