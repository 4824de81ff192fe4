"""Shared test set-up: offline, one torch thread, real face photos."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest

try:  # torch is heavy: only pin its threads when it is installed (it always is with charkit)
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass

# Area fixtures live in tests/fixtures_*.py (tests/ is on sys.path under pytest's rootdir import mode).
import importlib
import pkgutil

for _m in pkgutil.iter_modules([str(Path(__file__).parent)]):
    if _m.name.startswith("fixtures_"):
        globals().update({k: v for k, v in vars(importlib.import_module(_m.name)).items() if not k.startswith("_")})

FACES = Path(__file__).parent / "data" / "faces"


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    """Real public-domain photos: obama.jpg, obama2.jpg, obama3.jpg (one person), biden.jpg, 32bit.png (RGBA Obama)."""
    return FACES


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Each test session gets its own face cache and insightface root: nothing leaks into ~/.cache.
    root = tmp_path_factory.getbasetemp() / "charkit-cache"
    monkeypatch.setenv("CHARKIT_CACHE_DIR", str(root))
