"""Every `>>>` example in hf_lite.pruning runs and prints what its docstring says."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["__init__", "masks", "schedule", "targets", "oneshot", "report", "importance", "structural", "peft_merge"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module("hf_lite.pruning" if name == "__init__" else f"hf_lite.pruning.{name}")
    result = doctest.testmod(
        module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS, verbose=False
    )
    assert result.attempted > 0, f"{module.__name__} has no examples"
    assert result.failed == 0


def test_public_names_have_examples():
    import hf_lite.pruning as pruning

    missing = [
        n for n in pruning.__all__
        if callable(getattr(pruning, n)) and ">>>" not in (getattr(pruning, n).__doc__ or "")
    ]  # fmt: skip
    assert missing == []
