"""Every docstring example in charkit runs as a doctest, or is marked ``# doctest: +SKIP`` (needs a model, a GPU
or files a test cannot have). A wrong example fails here instead of misleading a reader."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import charkit

SKIP_MODULES = {"charkit.__main__"}  # runs the CLI on import


def _modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(charkit.__path__, "charkit.") if m.name not in SKIP_MODULES]
    return sorted(["charkit", *names])


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name, globs=vars(module).copy()):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples in {name} fail"
