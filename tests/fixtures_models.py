"""Tiny real-architecture models for every family, built once per test session (per xdist worker)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """``get(family) -> TinyModel``: a tiny pipeline of that family (ControlNet, IP-Adapters and single file where
    the family has them), built on first use into a session temp folder and cached.

    >>> def test_x(tiny_models):  # doctest: +SKIP
    ...     tiny = tiny_models("sd15"); pipe = get_family("sd15").load_pipeline(tiny.root)
    """
    from charkit.families import get_family

    root = tmp_path_factory.mktemp("tiny-models")
    cache: dict = {}

    def get(family: str):
        if family not in cache:
            cache[family] = get_family(family).build_tiny(root / family, seed=0)
        return cache[family]

    return get
