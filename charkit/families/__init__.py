"""Model families: one folder per family with the same few files, and one registry.

    charkit/families/<family>/
        __init__.py    exports SPEC (a FamilySpec)
        defaults.py    resolution, steps, guidance, scheduler, supported adapters
        pipeline.py    pipeline construction (text-to-image and ControlNet variants) from a model source
        tiny.py        a tiny random-weight pipeline of this family, saved like a real one
        lora.py        LoRA target modules and the training loss for this family

Family-specific code is duplicated on purpose (like diffusers' ``# Copied from``) rather than
hidden behind one base class full of flags.
"""

from __future__ import annotations

import importlib

FAMILIES = ("sd15", "sdxl", "sd3", "flux")


def get_family(name: str):
    """The family module ``charkit.families.<name>`` (its ``SPEC`` describes it)."""
    from ..errors import CharkitError

    if name not in FAMILIES:
        raise CharkitError(f"unknown model family {name!r}: choose one of {', '.join(FAMILIES)}")
    return importlib.import_module(f"{__name__}.{name}")


from .detect import detect_family  # noqa: E402  (cheap: reads file headers / model_index.json only)
from .spec import CONTROLS, FEATURES, FamilySpec, set_scheduler  # noqa: E402


def get_spec(name: str) -> FamilySpec:
    """The :class:`FamilySpec` of family ``name`` (reads only ``defaults.py``: no torch, no diffusers)."""
    if name not in FAMILIES:
        get_family(name)  # raises the one-line error
    return importlib.import_module(f"{__name__}.{name}.defaults").SPEC


def resolve_family(source, family: str | None = None, *, allow_pickle_weights: bool = False) -> str:
    """``family`` when given (validated), else the family detected from ``source`` (file keys / model_index.json).

    >>> resolve_family("models/tiny-sd15")  # doctest: +SKIP
    'sd15'
    """
    if family is not None:
        get_family(family)
        return family
    return detect_family(source, allow_pickle_weights=allow_pickle_weights)


def load_tiny(folder):
    """The TinyModel that ``charkit tiny-model`` wrote to ``folder``."""
    from .tinyparts import load_tiny as _load_tiny

    return _load_tiny(folder)


__all__ = [
    "CONTROLS",
    "FAMILIES",
    "FEATURES",
    "FamilySpec",
    "detect_family",
    "get_family",
    "get_spec",
    "load_tiny",
    "resolve_family",
    "set_scheduler",
]
