"""Police the deliberate copies between family folders (in the spirit of diffusers' ``utils/check_copies.py``).

A function or class that is alike in several families on purpose is written once and copied, with a
marker on the line above the copy::

    # Copied from charkit.families.sd15.pipeline.generate
    # Copied from charkit.families.flux.pipeline.load_pipeline with Flux->SD3, flux->sd3

The copy must equal its source after the ``with`` replacements (``A->B`` pairs, applied in order).
``python -m charkit.testing.check_copies`` lists the copies that drifted (exit 1), ``--fix`` rewrites
them from their sources (``make fix-copies``); ``tests/test_copies.py`` runs the check in CI.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import io
import re
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path

MARKER = re.compile(r"^(?P<indent>[ \t]*)# Copied from (?P<target>[A-Za-z_][\w.]*)(?: with (?P<repl>.+))?\s*$")
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the charkit package folder


@dataclass
class Copy:
    """One marked copy: where it is, what it copies, and how its text should read."""

    file: Path
    line: int  # 1-based line of the marker
    start: int  # 0-based index of the copy's first line (after the marker)
    end: int  # 0-based index one past its last line
    target: str
    expected: list[str]  # lines the copy should have
    actual: list[str]

    @property
    def drifted(self) -> bool:
        return self.expected != self.actual

    def diff(self) -> str:
        name = f"{self.file}:{self.line}"
        return "".join(difflib.unified_diff(self.expected, self.actual, f"{self.target} (expected)", name))


def _node_span(node: ast.AST) -> tuple[int, int]:
    """0-based (first line including decorators, one past the last line) of a def/class node."""
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return first - 1, node.end_lineno


def _find(tree: ast.Module, qualname: str) -> ast.AST | None:
    body, found = tree.body, None
    for part in qualname.split("."):
        found = next(
            (
                n
                for n in body
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == part
            ),
            None,
        )
        if found is None:
            return None
        body = getattr(found, "body", [])
    return found


def _source_of(target: str, package_root: Path) -> list[str]:
    """The lines of ``target`` (``charkit.pkg.module.qualname``) with their original indentation removed."""
    parts = target.split(".")
    if parts[0] != package_root.name:
        raise ValueError(f"copy target {target!r} is not inside {package_root.name}")
    for cut in range(len(parts) - 1, 0, -1):  # the longest module path that exists
        module = package_root.joinpath(*parts[1:cut]).with_suffix(".py")
        if module.is_file():
            break
    else:
        raise ValueError(f"copy target {target!r}: no such module")
    text = module.read_text(encoding="utf-8")
    node = _find(ast.parse(text), ".".join(parts[cut:]))
    if node is None:
        raise ValueError(f"copy target {target!r}: {'.'.join(parts[cut:])} not found in {module}")
    start, end = _node_span(node)
    lines = text.splitlines(keepends=True)[start:end]
    indent = len(lines[0]) - len(lines[0].lstrip())
    return [ln[indent:] if ln.strip() else ln for ln in lines]


def _replacements(spec: str | None) -> list[tuple[str, str]]:
    if not spec:
        return []
    pairs = []
    for item in spec.split(","):
        a, sep, b = item.strip().partition("->")
        if not sep or not a:
            raise ValueError(f"bad replacement {item.strip()!r} in a Copied from marker: write A->B")
        pairs.append((a, b))
    return pairs


def copies_in(file: Path, package_root: Path = PACKAGE_ROOT) -> list[Copy]:
    """Every marked copy in ``file`` with the text it should have."""
    text = file.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    tree = ast.parse(text)
    nodes = {
        _node_span(n)[0]: n
        for n in ast.walk(tree)
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    }
    comments = {
        tok.start[0] - 1 for tok in tokenize.generate_tokens(io.StringIO(text).readline) if tok.type == tokenize.COMMENT
    }
    found = []
    for i, line in enumerate(lines):
        m = MARKER.match(line) if i in comments else None  # real comments only, not examples in docstrings
        if not m:
            continue
        node = nodes.get(i + 1)
        if node is None:
            raise ValueError(f"{file}:{i + 1}: a Copied from marker must sit on the line above a def or class")
        start, end = _node_span(node)
        expected = _source_of(m["target"], package_root)
        for a, b in _replacements(m["repl"]):
            expected = [ln.replace(a, b) for ln in expected]
        expected = [m["indent"] + ln if ln.strip() else ln for ln in expected]
        found.append(Copy(file, i + 1, start, end, m["target"], expected, lines[start:end]))
    return found


def check(package_root: Path = PACKAGE_ROOT, *, fix: bool = False) -> list[Copy]:
    """The drifted copies under ``package_root`` (rewritten from their sources when ``fix``)."""
    drifted = []
    for file in sorted(package_root.rglob("*.py")):
        copies = [c for c in copies_in(file, package_root) if c.drifted]
        drifted += copies
        if fix and copies:
            lines = file.read_text(encoding="utf-8").splitlines(keepends=True)
            for c in sorted(copies, key=lambda c: -c.start):  # bottom up: earlier spans keep their indices
                lines[c.start : c.end] = c.expected
            file.write_text("".join(lines), encoding="utf-8")
    return drifted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fix", action="store_true", help="rewrite drifted copies from their sources")
    args = parser.parse_args(argv)
    drifted = check(fix=args.fix)
    for c in drifted:
        print(("fixed " if args.fix else "") + f"{c.file}:{c.line}: copy of {c.target} drifted")
        if not args.fix:
            print(c.diff())
    return 0 if args.fix or not drifted else 1


if __name__ == "__main__":
    sys.exit(main())
