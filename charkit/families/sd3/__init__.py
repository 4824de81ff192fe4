"""SD3 family: defaults (SPEC), pipeline loading/generation and the tiny test model.

``SPEC`` is cheap; the pipeline and tiny-model functions import torch and diffusers, so they
load on first use (``charkit prep`` only needs the family's resolution).
"""

import importlib

from .defaults import SPEC

_LAZY = {
    "TinyModel": "tiny",
    "build_tiny": "tiny",
    "generate": "pipeline",
    "load_controlnet": "pipeline",
    "load_ip_adapter": "pipeline",
    "load_pipeline": "pipeline",
    "tiny_pipeline": "tiny",
    "unload_ip_adapter": "pipeline",
    "with_controlnet": "pipeline",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SPEC",
    "TinyModel",
    "build_tiny",
    "generate",
    "load_controlnet",
    "load_ip_adapter",
    "load_pipeline",
    "tiny_pipeline",
    "unload_ip_adapter",
    "with_controlnet",
]
