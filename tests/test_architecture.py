"""The shape of the package: stages over engines over shared pieces; engines import no stage and no report;
the library never imports the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import charkit

ROOT = Path(charkit.__file__).parent
STAGES = {"dataset", "train", "render", "verify", "repair", "studio"}
ENGINES = {"families", "identity", "look"}
CLI_MODULES = {"cli", "cli_options", "character_cli", "clidoc", "configdoc", "demo"}


def _imports(path: Path) -> set[str]:
    """Absolute names of every charkit module ``path`` imports (relative imports resolved)."""
    package = path.relative_to(ROOT.parent).with_suffix("").parts
    package = package[:-1] if package[-1] != "__init__" else package[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m == "charkit" or m.startswith("charkit.")}


def _top(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def _files(folder: str):
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_engines_import_no_stage_and_no_report(engine):
    bad = []
    for f in _files(engine):
        for m in _imports(f):
            if _top(m) in STAGES | {"report"} or _top(m) in CLI_MODULES:
                bad.append(f"{f.relative_to(ROOT)} imports {m}")
    assert bad == []


def test_the_library_never_imports_the_cli():
    bad = []
    for f in sorted(ROOT.rglob("*.py")):
        rel = f.relative_to(ROOT)
        if rel.stem in CLI_MODULES | {"__main__"} or rel.name == "cli.py" or rel.parts[0] == "testing":
            continue
        for m in _imports(f):
            if _top(m) in CLI_MODULES - {"demo"} or m.endswith(".cli"):
                bad.append(f"{rel} imports {m}")
    assert bad == []


def test_shared_pieces_import_no_stage():
    shared = [f for f in ROOT.glob("*.py") if f.stem not in CLI_MODULES and f.stem != "__main__"]
    shared += _files("report")
    bad = [f"{f.relative_to(ROOT)} imports {m}" for f in shared for m in _imports(f) if _top(m) in STAGES]
    assert bad == []
