"""The models of a storyboard: each ``ModelSpec`` resolved to a :class:`~charkit.render.plan.ModelPlan`.

Family detection, pickle refusal, the offline cache check for hub ids, ControlNet / IP-Adapter
weights and the scheduler, all before anything loads. ``--model`` on the command line replaces the
storyboard's model(s) through :func:`override_models`.
"""

from __future__ import annotations

from ..errors import CharkitError, InputProblems, MissingModelError, Problems
from .plan import ModelPlan, RenderOptions
from .storyboard import ModelSpec, Storyboard


def _local_or_text(board: Storyboard, text: str) -> str:
    """A storyboard path that exists relative to its folder, else the text itself (a hub id)."""
    p = board.resolve(text)
    return str(p) if p.exists() else text


def model_family(spec: ModelSpec, src, *, allow_pickle_weights: bool) -> str:
    """The family the storyboard names (checked against a local model's files) or the one detected."""
    from ..families.detect import detect_family

    if spec.family is None:
        return detect_family(src.ref, allow_pickle_weights=allow_pickle_weights)
    if src.kind in ("folder", "file") and not src.pickle:
        found = detect_family(src.ref)
        if found != spec.family:
            raise CharkitError(
                f"source {spec.source} is a {found} model, but family is {spec.family}; set family: {found}"
            )
    return spec.family


def model_config(spec: ModelSpec, board: Storyboard, src, family: str) -> str | None:
    """A single file's config folder (its component configs and tokenizers; required offline)."""
    from ..families.sources import hub_offline, resolve_source

    if spec.config is not None:
        return resolve_source(_local_or_text(board, spec.config), what="config").ref
    if src.kind == "file" and hub_offline():
        raise CharkitError(
            f"source {spec.source} is a single-file checkpoint: offline it needs config: <a diffusers {family} "
            "folder or cached hub id> for the component configs and tokenizers; add it to the model (or pass "
            "--model-config DIR)"
        )
    return None


def model_controlnets(
    spec: ModelSpec, board: Storyboard, family_spec, options: RenderOptions, problems: Problems | None = None
) -> dict[str, str]:
    """Each control type's ControlNet source (a hub id must be cached offline); problems go to ``problems``."""
    from ..families.sources import resolve_source

    problems = problems if problems is not None else Problems()
    out = {}
    for ctype, cn in spec.controlnet.items():
        with problems.check():
            family_spec.require_control(ctype)
            src = resolve_source(
                _local_or_text(board, cn), what=f"controlnet.{ctype}", allow_pickle_weights=options.allow_pickle_weights
            )
            if src.kind == "hub":
                require_cached(src.ref, f"controlnet.{ctype}")
            out[ctype] = src.ref
    return out


def adapter_weights(
    spec: ModelSpec, board: Storyboard, family_spec, options: RenderOptions, problems: Problems | None = None
) -> dict[str, str | None]:
    """``{"ip_adapter": ..., "faceid": ...}``: local files (pickle refused unless allowed) or hub file paths.

    Problems go to ``problems`` (both adapters are checked); without it the first one raises.
    """
    from ..families.sources import check_weights_file

    own = problems if problems is not None else Problems()
    weights: dict[str, str | None] = {"ip_adapter": None, "faceid": None}
    for name in ("ip_adapter", "faceid"):
        text = getattr(spec, name)
        if text is None:
            continue
        with own.check():
            family_spec.require("faceid" if name == "faceid" else "ip_adapter")
            local = board.resolve(text)
            if local.exists():
                check_weights_file(local, what=name, allow_pickle_weights=options.allow_pickle_weights)
                weights[name] = str(local)
            elif text.count("/") >= 2 and not text.startswith((".", "/", "~")):
                require_cached_file(text, name)
                weights[name] = text  # org/repo/path/file.safetensors on the hub
            else:
                raise MissingModelError(
                    f"{name} {text}: no such file; give a .safetensors file (relative to the storyboard)"
                )
    if problems is None:
        own.raise_any()
    return weights


def resolve_model(
    spec: ModelSpec, board: Storyboard, options: RenderOptions, *, where: str, scheduler: str | None
) -> ModelPlan:
    """Resolve one model entry (family detection, pickle refusal, adapters) or raise naming ``where``.

    Every problem of the entry is reported together (a model not in the cache and a missing FaceID file are
    two lines of one run, not one run each).
    """
    from ..families import get_spec
    from ..families.sources import resolve_source

    problems = Problems()
    src = family = None
    with problems.check():
        src = resolve_source(
            _local_or_text(board, spec.source), what="source", allow_pickle_weights=options.allow_pickle_weights
        )
        if src.kind == "hub":
            require_cached(src.ref, "source")
    with problems.check():
        family = model_family(spec, src, allow_pickle_weights=options.allow_pickle_weights) if src else spec.family
    if family is None:  # nothing more can be checked without the family
        _raise(problems, board, where)
    fspec = get_spec(family)
    parts: dict = {"image_encoder": None, "weights": {"ip_adapter": None, "faceid": None}, "controlnet": {}}
    with problems.check():
        if spec.image_encoder is not None:
            parts["image_encoder"] = image_encoder_source(board, spec.image_encoder)
    parts["weights"] = adapter_weights(spec, board, fspec, options, problems)
    parts["controlnet"] = model_controlnets(spec, board, fspec, options, problems)
    with problems.check():
        parts["vae"] = model_vae(spec, board, options)
    with problems.check():
        if not spec.t5:
            fspec.require("without_t5")
    with problems.check():
        if spec.variant is not None and src is not None and src.kind == "file":
            raise CharkitError(f"variant {spec.variant!r}: a single file has no variants; drop variant for this model")
    config = None
    with problems.check():
        config = model_config(spec, board, src, family) if src else None
    _raise(problems, board, where)
    return ModelPlan(
        label=spec.label or family,
        family=family,
        source=spec.source,
        path=src.ref,
        config=config,
        scheduler=scheduler or fspec.scheduler,
        controlnet=parts["controlnet"],
        ip_adapter=parts["weights"]["ip_adapter"],
        image_encoder=parts["image_encoder"],
        faceid=parts["weights"]["faceid"],
        vae=parts.get("vae"),
        variant=spec.variant,
        t5=spec.t5,
    )


def model_vae(spec: ModelSpec, board: Storyboard, options: RenderOptions) -> str | None:
    """The VAE override's source (a hub id must be cached offline), None when the model's own VAE is used."""
    from ..families.sources import resolve_source

    if spec.vae is None:
        return None
    vae = resolve_source(_local_or_text(board, spec.vae), what="vae", allow_pickle_weights=options.allow_pickle_weights)
    if vae.kind == "hub":
        require_cached(vae.ref, "vae")
    return vae.ref


def image_encoder_source(board: Storyboard, text: str) -> str:
    """A CLIP image encoder: a local folder (absolute), a hub id, or ``org/repo/subfolder`` of a hub repo."""
    local = board.resolve(text)
    if local.is_dir():
        return str(local.resolve())
    parts = text.split("/")
    if text.startswith((".", "/", "~")) or len(parts) < 2 or not all(parts):
        raise CharkitError(
            f"image_encoder {text}: no such folder; give a CLIP vision folder, a hub id or org/repo/subfolder "
            "(e.g. h94/IP-Adapter/models/image_encoder)"
        )
    require_cached("/".join(parts[:2]), "image_encoder")
    return text


def _raise(problems: Problems, board: Storyboard, where: str) -> None:
    if problems.items:
        lines = [f"{board.label}: {where}: {p}" for p in problems.items]
        missing = problems.only_missing()
        raise (
            (MissingModelError(lines[0]) if missing else CharkitError(lines[0]))
            if len(lines) == 1
            else InputProblems(lines)
        )


def require_cached(repo_id: str, what: str) -> None:
    """Offline (HF_HUB_OFFLINE=1), a hub model must already be in the local cache: say so before anything loads."""
    from ..errors import MissingModelError
    from ..families.sources import hub_offline

    if not hub_offline():
        return  # from_pretrained downloads it at load time
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo_id, local_files_only=True)
    except Exception:  # huggingface_hub raises several error types for "not cached"
        raise MissingModelError(
            f"{what} {repo_id}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; download it first "
            f"(huggingface-cli download {repo_id}) or point to a local folder"
        ) from None


def require_cached_file(hub_path: str, what: str) -> None:
    """Offline, a hub file (``org/repo/path/file.safetensors``) must already be in the local cache."""
    from ..errors import MissingModelError
    from ..families.sources import hub_offline

    if not hub_offline():
        return
    from huggingface_hub import hf_hub_download

    parts = hub_path.split("/")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        hf_hub_download(repo, filename, local_files_only=True)
    except Exception:  # not cached (several error types)
        raise MissingModelError(
            f"{what} {hub_path}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; download it first "
            f"(huggingface-cli download {repo} {filename}) or give a local .safetensors file"
        ) from None


def with_tiny_parts(spec: ModelSpec, board: Storyboard) -> ModelSpec:
    """``spec`` with a tiny model's own ControlNet / IP-Adapter files (``charkit tiny-model`` writes them beside
    it) where it names none: the storyboard's real adapters never fit a tiny model. Any other model: as it is."""
    from ..families.tiny_limits import tiny_parts

    parts = tiny_parts(spec.source)
    if not parts:
        return spec
    update: dict = {}
    if "controlnet" in parts and not spec.controlnet:  # a tiny model's ControlNet fits every control type
        used = sorted({s.control.type for s in board.scenes if s.control is not None})
        update["controlnet"] = {t: str(parts["controlnet"]) for t in used}
    for name in ("ip_adapter", "image_encoder", "faceid"):
        if name in parts and getattr(spec, name) is None:
            update[name] = str(parts[name])
    return spec.model_copy(update=update)


def recorded_models(records: list, board: Storyboard) -> list[ModelSpec] | None:
    """The models a folder was rendered on (its manifest's ``models``), as ``--model`` overrides, where they are
    not the storyboard's own (``charkit render --model``): a tiny model with its own adapters. None otherwise.

    ``records``: the manifest's model entries (``label``, ``family``, ``source``).
    """
    declared = [m for m in (board.defaults.model, *(board.models or []), *(s.model for s in board.scenes)) if m]

    def own(rec) -> bool:
        return any(m.source == rec.source and (m.label or m.family) in (None, rec.label) for m in declared)

    if not records or all(own(r) for r in records):
        return None
    return [with_tiny_parts(ModelSpec(source=r.source, label=r.label, family=r.family), board) for r in records]


def override_models(board: Storyboard, models: list[ModelSpec]) -> Storyboard:
    """The storyboard rendered on ``models`` instead of its own (``--model``): one model, or a matrix of several.

    ControlNet / IP-Adapter weights of the storyboard's model of the same family carry over.
    """
    specs = [m if isinstance(m, ModelSpec) else ModelSpec(source=str(m)) for m in models]
    originals = [
        m
        for m in ([board.defaults.model] + list(board.models or []) + [s.model for s in board.scenes])
        if m is not None
    ]
    merged = []
    for spec in specs:
        same = [o for o in originals if spec.family is None or o.family in (None, spec.family)]
        base = same[0] if same else None
        extra = {}
        if base is not None:
            for name in ("controlnet", "ip_adapter", "image_encoder", "faceid", "vae"):
                if getattr(spec, name) in (None, {}) and getattr(base, name) not in (None, {}):
                    extra[name] = getattr(base, name)
        merged.append(spec.model_copy(update=extra))
    scenes = [s.model_copy(update={"model": None}) for s in board.scenes]
    if len(merged) == 1:
        update = {"defaults": board.defaults.model_copy(update={"model": merged[0]}), "models": None, "scenes": scenes}
    else:
        update = {"models": merged, "scenes": scenes}
    new = board.model_copy(update=update)
    new._path, new._sha256 = board.path, board.sha256
    return new
