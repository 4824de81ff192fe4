"""SDXL family: SPEC (every family fact), pipeline loading/generation and the tiny test model."""

from ..registry import lazy_family_api
from .defaults import SPEC as SPEC

__getattr__, __all__ = lazy_family_api(__name__, {"faceid_embeds": "pipeline"})
