"""Where model weights come from: a hub id, a local diffusers folder or a single file.

This is the trust boundary for weights. Rules:

* ``.safetensors`` loads; pickle formats (``.ckpt``/``.pt``/``.pth``/``.bin``/``.pkl``) are refused
  *before anything opens them* unless the caller passes ``allow_pickle_weights=True``;
* folders and hub repos load with ``use_safetensors=True`` unless pickle weights are allowed;
* hub ids use ordinary ``from_pretrained`` and honour ``HF_HUB_OFFLINE`` (cache only, no download);
* ``trust_remote_code`` is never passed: custom pipeline code is not run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import CharkitError, MissingModelError

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class ModelSource:
    """A resolved model source. ``kind`` is ``"hub"``, ``"folder"`` or ``"file"``; ``ref`` is the hub id or path."""

    kind: str
    ref: str
    pickle: bool = False  # a single file in a pickle format (only with allow_pickle_weights)

    @property
    def path(self) -> Path | None:
        return None if self.kind == "hub" else Path(self.ref)


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` asks for cache-only hub access."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def check_weights_file(path: str | os.PathLike, *, what: str = "model", allow_pickle_weights: bool = False) -> Path:
    """Refuse pickle weights unless allowed, by file name only (the file is never opened here).

    >>> check_weights_file("model.ckpt")  # doctest: +SKIP
    CharkitError: model model.ckpt: pickle weights can run code when loaded; ...
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle_weights:
            raise CharkitError(
                f"{what} {p}: {suffix} is a pickle format, which can run arbitrary code when loaded; use a "
                f".safetensors file, or pass --allow-pickle-weights (allow_pickle_weights=True) if you trust its source"
            )
    elif suffix not in SAFE_SUFFIXES:
        raise CharkitError(
            f"{what} {p}: unsupported weights file type {suffix or '(none)'!r}; use a .safetensors single file, "
            "a diffusers folder or a hub id"
        )
    return p


def resolve_source(
    source: str | os.PathLike, *, what: str = "model", allow_pickle_weights: bool = False
) -> ModelSource:
    """Classify ``source`` as an existing local folder, an existing single file, or a hub id.

    >>> resolve_source("runwayml/stable-diffusion-v1-5").kind  # doctest: +SKIP
    'hub'
    """
    text = os.fspath(source)
    if not text.strip():
        raise CharkitError(f"{what}: empty model source; give a hub id, a diffusers folder or a .safetensors file")
    p = Path(text).expanduser()
    if p.is_dir():
        if not (p / "model_index.json").is_file() and not (p / "config.json").is_file():
            raise CharkitError(
                f"{what} {p}: folder has no model_index.json or config.json, so it is not a diffusers model; "
                "point to the folder that holds model_index.json (or a single .safetensors file)"
            )
        return ModelSource("folder", str(p.resolve()))
    if p.is_file():
        check_weights_file(p, what=what, allow_pickle_weights=allow_pickle_weights)
        return ModelSource("file", str(p.resolve()), pickle=p.suffix.lower() in PICKLE_SUFFIXES)
    looks_local = text.startswith((".", "/", "~", "\\")) or p.suffix.lower() in SAFE_SUFFIXES + PICKLE_SUFFIXES
    if looks_local or not _HUB_ID.match(text):
        raise CharkitError(
            f"{what} {text!r}: no such file or folder; give an existing .safetensors file, a diffusers folder "
            "or a hub id like 'org/name'"
        )
    return ModelSource("hub", text)


def pretrained_kwargs(*, allow_pickle_weights: bool = False) -> dict:
    """Keyword arguments every ``from_pretrained`` call of charkit uses (no remote code, safetensors only)."""
    kw: dict = {"use_safetensors": None if allow_pickle_weights else True}
    if hub_offline():
        kw["local_files_only"] = True
    return kw


def _load_errors() -> tuple[type[BaseException], ...]:
    # What diffusers / transformers / safetensors raise for a file that is missing, incomplete or of another
    # layout: OSError (missing files), ValueError and KeyError (configs, variants, key names), RuntimeError
    # (state-dict shape mismatches) and diffusers' SingleFileComponentError (a single file lacking a component).
    errors: list[type[BaseException]] = [OSError, ValueError, KeyError, RuntimeError]
    try:
        from diffusers.loaders.single_file_utils import SingleFileComponentError

        errors.append(SingleFileComponentError)
    except ImportError:  # pragma: no cover (diffusers always has it)
        pass
    return tuple(errors)


#: diffusers notices that are wrong for charkit's calls: 0.42 casts models with .to(dtype) in from_pipe and
#: load_ip_adapter, and ModelMixin.to then warns of "modules ... kept in float32: []" even when none is named;
#: charkit registers the IP-Adapter's image encoder itself, so "image_encoder is not loaded" is false
QUIETED_NOTICES = ("should be kept in float32: []", "image_encoder is not loaded since `image_encoder_folder=None`")


class _QuietNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in QUIETED_NOTICES)


@contextlib.contextmanager
def quiet_notices() -> Iterator[None]:
    """Within the block, diffusers' notices of :data:`QUIETED_NOTICES` are dropped (every other one still shows)."""
    loggers = [logging.getLogger(n) for n in ("diffusers.models.modeling_utils", "diffusers.loaders.ip_adapter")]
    quiet = _QuietNotices()
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)


@contextlib.contextmanager
def loading(what: str, source: ModelSource | str) -> Iterator[None]:
    """Turn the errors of a load (not found, not cached, no safetensors, wrong layout, a single file without a
    component) into one-line CharkitErrors naming ``what`` and the fix."""
    ref = source.ref if isinstance(source, ModelSource) else str(source)
    try:
        with quiet_notices():
            yield
    except CharkitError:
        raise
    except _load_errors() as e:
        first = " ".join(str(e).split())[:300] or type(e).__name__
        low = first.lower()
        if isinstance(e, OSError) and "safetensors" in low:
            fix = "convert the weights to .safetensors, or pass --allow-pickle-weights if you trust the source"
        elif "variant" in low:
            fix = "this model has no files of that variant; drop `variant:` or pick one it ships (e.g. fp16)"
        elif isinstance(e, OSError) and hub_offline():
            fix = "HF_HUB_OFFLINE is set: download it first (huggingface-cli download) or pass a local diffusers folder"
        elif isinstance(e, OSError):
            fix = "check the hub id / path, or pass a local diffusers folder"
        else:
            fix = "is it a model of this family, complete, and does its config folder belong to it?"
        raise MissingModelError(f"{what} {ref}: could not load ({type(e).__name__}: {first}); {fix}") from None
