"""The family registry: the one list of model families and the way to reach each family's facts and code.

Adding a family is one folder (``charkit/families/<name>/`` with the same files as the others) plus
one entry in :data:`FAMILIES`; docs/families.md has the checklist. Everything else (pydantic
validation, CLI choices, detection rules, training and export tables, docs and tests) reads the
:class:`~charkit.families.spec.FamilySpec` of each family through this module.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Literal

from ..errors import CharkitError
from .spec import FamilySpec

#: The model families charkit renders and trains, in the order docs and tables list them.
FAMILIES: tuple[str, ...] = ("sd15", "sdxl", "sd3", "flux")

#: A family name as a pydantic / typing type (``Literal['sd15', 'sdxl', 'sd3', 'flux']``).
FamilyName = Literal[FAMILIES]


def check_family(name: str) -> str:
    """``name`` when it is a known family, else a one-line error listing them."""
    if name not in FAMILIES:
        raise CharkitError(f"unknown model family {name!r}: choose one of {', '.join(FAMILIES)}")
    return name


def get_family(name: str) -> ModuleType:
    """The family package ``charkit.families.<name>`` (its ``SPEC`` and lazily loaded pipeline functions)."""
    return importlib.import_module(f"charkit.families.{check_family(name)}")


def family_part(name: str, part: str) -> ModuleType:
    """One file of a family folder: ``family_part("sdxl", "lora")`` is ``charkit.families.sdxl.lora``."""
    return importlib.import_module(f"charkit.families.{check_family(name)}.{part}")


def get_spec(name: str) -> FamilySpec:
    """The :class:`FamilySpec` of ``name`` (reads only ``defaults.py``: no torch, no diffusers)."""
    return family_part(name, "defaults").SPEC


def specs() -> list[FamilySpec]:
    """Every family's spec, in :data:`FAMILIES` order.

    >>> [s.name for s in specs() if s.can("faceid")]
    ['sd15', 'sdxl']
    """
    return [get_spec(n) for n in FAMILIES]


def families_that(feature: str) -> tuple[str, ...]:
    """Names of the families that support ``feature`` (e.g. ``"text_encoder_lora"``).

    >>> families_that("text_encoder_lora")
    ('sd15', 'sdxl')
    """
    return tuple(s.name for s in specs() if s.can(feature))


#: What every family package offers (``charkit.families.<name>.<attr>``) and which of its files defines it.
FAMILY_API: dict[str, str] = {
    "load_pipeline": "pipeline",
    "with_controlnet": "pipeline",
    "load_controlnet": "pipeline",
    "load_ip_adapter": "pipeline",
    "unload_ip_adapter": "pipeline",
    "generate": "pipeline",
    "TinyModel": "tiny",
    "build_tiny": "tiny",
    "tiny_pipeline": "tiny",
}


def lazy_family_api(package: str, extra: dict[str, str] | None = None):
    """``(__getattr__, __all__)`` for a family package: ``SPEC`` is eager (cheap), the rest loads on first use.

    The pipeline and tiny-model functions import torch and diffusers; ``charkit prep`` only needs a
    family's resolution, so they stay unimported until asked for.
    """
    api = {**FAMILY_API, **(extra or {})}

    def __getattr__(name: str):
        if name in api:
            return getattr(importlib.import_module(f"{package}.{api[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, ["SPEC", *sorted(api)]
