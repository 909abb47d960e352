"""Every ``>>>`` example in ``hf_lite``, ``trainers`` and ``benchmarks`` runs and prints what its docstring says.

One mechanism for the whole code base: each module is imported and its examples are run by ``doctest``
(``ELLIPSIS`` and ``NORMALIZE_WHITESPACE`` on). Public classes and functions of the toolkit's packages
carry an example (house style: a short ``>>>`` example on each public class).
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
# Packages whose every public callable (in ``__all__``) must carry a ``>>>`` example.
DOCUMENTED_PACKAGES = ("hf_lite.pruning", "hf_lite.evaluation", "hf_lite.report", "hf_lite.data")


def module_names() -> list[str]:
    names = []
    for package in ("hf_lite", "trainers", "benchmarks"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name == "__main__.py":
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            names.append(".".join(parts))
    return names


@pytest.mark.parametrize("name", module_names())
def test_docstring_examples(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in finder.find(module, name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (see the output above)"


@pytest.mark.parametrize("package", DOCUMENTED_PACKAGES)
def test_public_names_have_examples(package):
    module = importlib.import_module(package)
    missing = [
        n
        for n in module.__all__
        if callable(getattr(module, n)) and ">>>" not in (getattr(module, n).__doc__ or "")
    ]
    assert missing == []
