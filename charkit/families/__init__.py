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
