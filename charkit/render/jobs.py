"""One scene on one model becomes a :class:`~charkit.render.plan.SceneJob`: the steps of ``plan_job``.

Each step resolves one part of the scene (characters, size, LoRAs, control, IP-Adapter, prompts)
and raises a one-line :class:`~charkit.errors.CharkitError` naming the scene and the field; ``plan_job``
runs them all and collects their problems, so a storyboard's every mistake is reported in one run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from ..character import Character, load_character
from ..errors import CharkitError, MissingModelError, Problems
from .conditioning import check_annotators
from .plan import ControlPlan, HiresPlan, IPPlan, ModelPlan, RenderOptions, SceneJob
from .storyboard import Scene, Storyboard, expand_prompt, placeholders

FieldError = Callable[[str, str], CharkitError]


def load_characters(board: Storyboard, problems: Problems | None = None) -> dict[str, Character]:
    """The storyboard's characters by name (each folder's character.toml must carry that name)."""
    problems = problems or Problems()
    chars = {}
    for name, folder in board.characters.items():
        with problems.check():
            try:
                ch = load_character(board.resolve(folder))
            except CharkitError as e:
                raise CharkitError(f"{board.label}: characters.{name}: {e}") from None
            if ch.name != name:
                raise CharkitError(
                    f"{board.label}: characters.{name}: folder {folder} holds character {ch.name!r}; "
                    f"use the name from its character.toml ({ch.name}: {folder})"
                )
            chars[name] = ch
    return chars


def default_seed(base: int, scene_id: str) -> int:
    """A scene's seed when it sets none: stable under inserting or reordering scenes.

    >>> default_seed(0, "s01") == default_seed(0, "s01")
    True
    """
    return (base + int(hashlib.sha256(scene_id.encode()).hexdigest()[:8], 16)) % (2**63)


def scene_characters(scene: Scene, declared: dict[str, Character], err: FieldError, *, known: set[str]) -> list[str]:
    """Characters in the shot, left to right: ``characters:`` or the prompt's placeholders in order."""
    named = placeholders(scene.prompt)
    if scene.characters is None:
        chars = named
    else:
        chars = list(scene.characters)
        if len(set(chars)) != len(chars):
            raise err("characters", "a character is listed twice; list each once, left to right")
        stray = [n for n in named if n not in chars]
        if stray:
            raise err("prompt", f"{{{stray[0]}}} is not in this scene's characters {chars}; add it to characters")
    for n in named + chars:
        if n not in known:
            raise err(
                "prompt" if n in named else "characters",
                f"unknown character {n!r}; declare it under characters: (known: {', '.join(sorted(known)) or 'none'})",
            )
    return [n for n in chars if n in declared]  # a declared character whose folder failed is reported once, above


def scene_size(scene: Scene, board: Storyboard, model: ModelPlan, err: FieldError) -> tuple[int, int]:
    size = scene.size or board.defaults.size
    width, height = (size.width, size.height) if size else (model.spec.width, model.spec.height)
    try:
        model.spec.check_size(width, height)
    except CharkitError as e:
        raise err("size", str(e)) from None
    return width, height


def plan_lora(
    scene: Scene,
    board: Storyboard,
    model: ModelPlan,
    chars: list[str],
    characters: dict[str, Character],
    options: RenderOptions,
    err: FieldError,
) -> dict[str, float]:
    """Every character with a LoRA for this family, at its scene scale (default ``defaults.lora_scale``)."""
    from ..families.sources import check_weights_file

    for name in scene.lora:
        if name not in chars:
            raise err(
                f"lora.{name}", f"{name!r} is not in this scene's characters {chars}; remove it or add the character"
            )
    lora: dict[str, float] = {}
    for name in chars:
        explicit = scene.lora.get(name)
        path = characters[name].lora_path(model.family)
        if path is None:
            if explicit not in (None, 0):
                raise MissingModelError(  # not trained yet: an `optional: true` scene is skipped instead
                    str(
                        err(
                            f"lora.{name}",
                            f"{name} has no {model.family} LoRA ([lora] {model.family} in its character.toml); train "
                            f"one with `charkit train` or remove lora.{name}",
                        )
                    )
                )
            continue
        if not path.is_file():
            raise MissingModelError(
                str(
                    err(
                        f"lora.{name}",
                        f"LoRA file {path} (from {characters[name].dir}/character.toml) does not exist; retrain or "
                        "fix the path",
                    )
                )
            )
        scale = board.defaults.lora_scale if explicit is None else explicit
        try:
            check_weights_file(path, what=f"LoRA of {name}", allow_pickle_weights=options.allow_pickle_weights)
            if scale != 0:
                model.spec.require("lora")
        except CharkitError as e:
            raise err(f"lora.{name}", str(e)) from None
        lora[name] = float(scale)
    return lora


def plan_control(
    scene: Scene, board: Storyboard, model: ModelPlan, options: RenderOptions, err: FieldError
) -> ControlPlan | None:
    c = scene.control
    if c is None:
        return None
    try:
        model.spec.require_control(c.type)
    except CharkitError as e:
        raise err("control.type", str(e)) from None
    if c.type not in model.controlnet:
        raise err(
            "control.type",
            f"model {model.label!r} has no {c.type} ControlNet; add controlnet: {{{c.type}: <hub id or folder>}} to the model",
        )
    img = board.resolve(c.image)
    if not img.is_file():
        raise err("control.image", f"{c.image}: no such file (paths are relative to the storyboard)")
    if c.preprocess:
        check_annotators(
            c.type,
            options.annotators,
            allow_pickle_weights=options.allow_pickle_weights,
            where=f"{board.label}: scene {scene.id!r}: field 'control.type'",
        )
    if c.start >= c.end:
        raise err("control.end", f"end {c.end} must be after start {c.start} (fractions of the steps, 0 to 1)")
    return ControlPlan(c.type, img, c.image, c.scale, c.preprocess, c.low_threshold, c.high_threshold, c.start, c.end)


def plan_ip(
    scene: Scene,
    board: Storyboard,
    model: ModelPlan,
    chars: list[str],
    characters: dict[str, Character],
    err: FieldError,
) -> IPPlan | None:
    ipspec = scene.ip_adapter or board.defaults.ip_adapter
    if ipspec.mode == "off":
        return None
    key = "faceid" if ipspec.mode == "face" else "ip_adapter"
    try:
        model.spec.require(key)
    except CharkitError as e:
        raise err("ip_adapter.mode", str(e)) from None
    if getattr(model, key) is None:
        raise err(
            "ip_adapter.mode", f"model {model.label!r} has no {key} weights; add {key}: <file.safetensors> to the model"
        )
    who = ipspec.character or (chars[0] if chars else None)
    if who is None:
        raise err(
            "ip_adapter.character",
            f"mode {ipspec.mode} needs a character whose references condition the scene; add one",
        )
    if who not in characters:
        raise err("ip_adapter.character", f"unknown character {who!r}; declare it under characters:")
    image: Path | None = None
    if ipspec.mode == "image" and ipspec.image is not None:
        image = board.resolve(ipspec.image)
        if not image.is_file():
            raise err("ip_adapter.image", f"{ipspec.image}: no such file (paths are relative to the storyboard)")
    elif ipspec.mode == "image":
        image = characters[who].ref_paths()[0]
    else:
        characters[who].ref_paths()  # raises when the character has no references
    return IPPlan(ipspec.mode, ipspec.scale, who, image)


def scene_scheduler(scene: Scene, board: Storyboard, model: ModelPlan, err: FieldError):
    """The scene's sampler (A1111 / ComfyUI / diffusers name) resolved for its model's kind (flow or not)."""
    from ..families.schedulers import resolve_scheduler

    name = scene.scheduler or board.defaults.scheduler or model.spec.scheduler
    schedule = scene.schedule if scene.schedule is not None else board.defaults.schedule
    try:
        return resolve_scheduler(name, schedule=schedule, flow=model.spec.is_flow)
    except CharkitError as e:
        raise err("scheduler", str(e)) from None


def _pick(scene_value, default_value):
    return scene_value if scene_value is not None else default_value


def scene_text(scene: Scene, board: Storyboard, model: ModelPlan, err: FieldError) -> tuple[int, float | None]:
    """``(clip_skip, true_cfg)`` of the scene, each checked against what the family can do."""
    clip_skip = _pick(scene.clip_skip, board.defaults.clip_skip) or 1
    true_cfg = _pick(scene.true_cfg, board.defaults.true_cfg)
    for fld, value, feature, off in (
        ("clip_skip", clip_skip, "clip_skip", 1),
        ("true_cfg", true_cfg, "true_cfg", None),
    ):
        if value != off:
            try:
                model.spec.require(feature)
            except CharkitError as e:
                raise err(fld, str(e)) from None
    return clip_skip, true_cfg


def scene_hires(scene: Scene, board: Storyboard, model: ModelPlan, size: tuple[int, int], steps: int, err: FieldError):
    """The hires pass (None when off): the target size rounded to the family's size step."""
    from .storyboard import HiresSpec

    spec = _pick(scene.hires, board.defaults.hires)
    if spec is None or spec is False:
        return None
    spec = HiresSpec() if spec is True else spec
    try:
        model.spec.require("hires")
        if scene.control is not None and model.spec.controlnet_img2img_pipeline_class is None:
            raise CharkitError(
                f"model family {model.family!r} has no ControlNet img2img pipeline for the hires pass; drop hires or "
                "control for this scene"
            )
    except CharkitError as e:
        raise err("hires", str(e)) from None
    m = model.spec.size_multiple
    width, height = (max(m, round(v * spec.scale / m) * m) for v in size)
    return HiresPlan(spec.scale, spec.strength, spec.steps or steps, spec.upscaler, width, height)


def negative_prompt(scene: Scene, board: Storyboard, chars: list[str], characters: dict[str, Character]) -> str:
    """The scene's negative prompt plus each character's, as comma-separated terms, each once, in order."""
    negatives = [scene.negative_prompt if scene.negative_prompt is not None else board.defaults.negative_prompt]
    negatives += [characters[n].spec.negative_prompt for n in chars]
    # characters often share "blurry, deformed": keep the first of each term
    return ", ".join(dict.fromkeys(t.strip() for n in negatives if n for t in n.split(",") if t.strip()))


def plan_job(
    board: Storyboard,
    scene: Scene,
    model: ModelPlan,
    characters: dict[str, Character],
    options: RenderOptions,
    *,
    matrix: bool,
    problems: Problems | None = None,
    warnings: list[str] | None = None,
) -> SceneJob | None:
    """Resolve one scene on one model (values, support checks, files), without the inputs hash.

    Every problem goes to ``problems`` (None: the first one raises) and the job is then None.
    """
    own = Problems()

    def err(fld: str, msg: str) -> CharkitError:
        return CharkitError(f"{board.label}: scene {scene.id!r}: field '{fld}': {msg}")

    d = board.defaults
    if any(n in board.characters and n not in characters for n in placeholders(scene.prompt)):
        return None  # a declared character that failed to load: its own problem is already reported
    chars: list[str] = []
    with own.check():
        chars = scene_characters(scene, characters, err, known=set(board.characters))
    width = height = 0
    with own.check():
        width, height = scene_size(scene, board, model, err)
    candidates = scene.candidates or d.candidates
    if candidates > 1 and not chars and not own.items:
        own.items.append(
            str(
                err(
                    "candidates",
                    "best-of-N scores candidates by identity, but the scene has no characters; add characters or set "
                    "candidates: 1",
                )
            )
        )
    parts = plan_parts(scene, board, model, chars, characters, options, err, own, (width, height))
    if own.items:
        if problems is None:
            own.raise_any()
        problems.extend(own)  # with their types: an optional scene skips only what is missing
        return None
    negative = negative_prompt(scene, board, chars, characters)
    if model.spec.can("true_cfg") and (parts["true_cfg"] or 1.0) <= 1.0 and negative and warnings is not None:
        warnings.append(
            f"{board.label}: scene {scene.id!r}: {model.family} applies a negative prompt only with true_cfg > 1; "
            f"rendering without it (set true_cfg, e.g. 4, to apply {_short(negative)!r})"
        )
    if model.spec.can("true_cfg") and (parts["true_cfg"] or 1.0) <= 1.0:
        negative = ""  # what the model applies is what the manifest and PNG record
    return SceneJob(
        scene=scene,
        model=model,
        file=f"{scene.id}__{model.label}.png" if matrix else f"{scene.id}.png",
        prompt=expand_prompt(scene.prompt, {n: characters[n].trigger_text for n in characters}),
        negative_prompt=negative,
        characters=chars,
        seed=scene.seed if scene.seed is not None else default_seed(d.seed, scene.id),
        width=width,
        height=height,
        preset=scene.preset or d.preset,
        candidates=candidates,
        **parts,
    )


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def plan_parts(
    scene: Scene,
    board: Storyboard,
    model: ModelPlan,
    chars: list[str],
    characters: dict[str, Character],
    options: RenderOptions,
    err: FieldError,
    own: Problems,
    size: tuple[int, int],
) -> dict:
    """Every SceneJob field a step resolves (LoRA, control, IP-Adapter, sampler, text options, hires), each step's
    problem collected in ``own``."""
    d = board.defaults
    steps = scene.steps or d.steps or model.spec.steps
    parts: dict = {"lora": {}, "control": None, "ip": None, "scheduler": None, "clip_skip": 1, "true_cfg": None}
    parts.update(
        steps=steps, guidance=next(g for g in (scene.guidance, d.guidance, model.spec.guidance) if g is not None)
    )
    parts["hires"] = None
    with own.check():
        parts["lora"] = plan_lora(scene, board, model, chars, characters, options, err)
    with own.check():
        parts["control"] = plan_control(scene, board, model, options, err)
    with own.check():
        parts["ip"] = plan_ip(scene, board, model, chars, characters, err)
    with own.check():
        parts["scheduler"] = scene_scheduler(scene, board, model, err)
    with own.check():
        parts["clip_skip"], parts["true_cfg"] = scene_text(scene, board, model, err)
    with own.check():
        parts["hires"] = scene_hires(scene, board, model, size, steps, err)
    return parts
