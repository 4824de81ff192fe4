"""Model families: one folder per family with the same few files, and one registry.

    charkit/families/<family>/
        __init__.py    exports SPEC (a FamilySpec) and loads the rest lazily
        defaults.py    SPEC: every fact about the family (defaults, capabilities, structure, file conventions)
        pipeline.py    pipeline construction (text-to-image and ControlNet variants), IP-Adapters, generate
        tiny.py        a tiny random-weight pipeline of this family, saved like a real one
        lora.py        text conditioning and the training loss of this family

``registry.py`` holds the one list of families. Family-agnostic helpers live once beside it
(``sources.py``, ``loading.py``, ``ip_adapter.py``, ``detect.py``); family code that is alike on
purpose is copied with a ``# Copied from`` marker that ``tests/test_copies.py`` checks
(``make fix-copies`` rewrites the copies).
"""

from __future__ import annotations

from .detect import detect_family  # cheap: reads file headers / model_index.json only
from .registry import FAMILIES, FamilyName, check_family, families_that, family_part, get_family, get_spec, specs
from .spec import CONTROLS, FEATURES, FamilySpec, set_scheduler


def resolve_family(source, family: str | None = None, *, allow_pickle_weights: bool = False) -> str:
    """``family`` when given (validated), else the family detected from ``source`` (file keys / model_index.json).

    >>> resolve_family("models/tiny-sd15")  # doctest: +SKIP
    'sd15'
    """
    if family is not None:
        return check_family(family)
    return detect_family(source, allow_pickle_weights=allow_pickle_weights)


def load_tiny(folder):
    """The TinyModel that ``charkit tiny-model`` wrote to ``folder``."""
    from ..testing.tinyparts import load_tiny as _load_tiny

    return _load_tiny(folder)


__all__ = [
    "CONTROLS",
    "FAMILIES",
    "FEATURES",
    "FamilyName",
    "FamilySpec",
    "check_family",
    "detect_family",
    "families_that",
    "family_part",
    "get_family",
    "get_spec",
    "load_tiny",
    "resolve_family",
    "set_scheduler",
    "specs",
]
