"""Shared fixtures. Everything runs offline: tiny checkpoints are built here and saved under a temp
folder, then loaded through the same `from_pretrained` path as a Hub repo id."""

from __future__ import annotations

import os

# Set before transformers/huggingface_hub are imported anywhere in the test session.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402

# Local Hugging Face Hub for upload/download tests (fixture `hub_server`, see tests/hub_fixtures.py).
pytest_plugins = ["tests.hub_fixtures"]

# (family, task) of the session's tiny checkpoints: a Llama-style decoder with grouped-query attention,
# GPT-2 (Conv1D layers), a BERT-style encoder and T5 (encoder-decoder).
TINY = {
    "llama": ("llama", "causal-lm"),
    "gpt2": ("gpt2", "causal-lm"),
    "bert": ("bert", "sequence-classification"),
    "t5": ("t5", "seq2seq-lm"),
}


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, str]:
    """Folder of each tiny checkpoint, keyed by family. Built once per test session."""
    from hf_lite.testing import save_tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny-checkpoints")
    return {
        name: str(save_tiny_checkpoint(root / name, family, task)) for name, (family, task) in TINY.items()
    }
