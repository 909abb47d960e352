"""SST-2 for the encoder benchmark.

The rows, their tokenization, the transfer set for distillation, and the batches used to score, time
and calibrate the models.
"""

from __future__ import annotations

import csv
import random
import statistics
from pathlib import Path
from typing import Any


def read_sst2(path: Path) -> list[tuple[str, int]]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: pass --data-dir with the folder holding sst2/train.tsv and dev.tsv."
        )
    with path.open(encoding="utf-8", newline="") as f:
        return [
            (r["sentence"].strip(), int(r["label"]))
            for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        ]


def tokenized(tokenizer: Any, rows: list[tuple[str, int]], max_len: int) -> Any:
    from datasets import Dataset

    enc = tokenizer([t for t, _ in rows], truncation=True, max_length=max_len)
    return Dataset.from_dict({**enc, "labels": [y for _, y in rows]})


def transfer_rows(rows: list[tuple[str, int]], s: dict[str, Any], seed: int) -> list[tuple[str, int]]:
    """The labelled rows plus EDA copies of the longer ones (their labels kept; the teacher relabels them)."""
    if s["augment_n"] <= 0:
        return list(rows)
    from datasets import Dataset

    from hf_lite.data import augment_data

    long_rows = [(t, y) for t, y in rows if len(t.split()) >= s["augment_min_words"]]
    if not long_rows:
        return list(rows)
    ds = Dataset.from_dict({"text": [t for t, _ in long_rows], "label": [y for _, y in long_rows]})
    aug = augment_data(ds, seed=seed, n_aug=s["augment_n"], keep_original=False)
    extra = [(t, y) for t, y in zip(aug["text"], aug["label"], strict=True) if t.strip()]
    out = rows + extra
    random.Random(seed).shuffle(out)
    return out


def dev_batches(tokenizer: Any, rows: list[tuple[str, int]], s: dict[str, Any]) -> list[tuple[dict, Any]]:
    """Dev set in batches of similar length (less padding), as (inputs, labels) tensors."""
    import torch

    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    out = []
    for i in range(0, len(order), s["eval_batch_size"]):
        chunk = [rows[j] for j in order[i : i + s["eval_batch_size"]]]
        enc = tokenizer(
            [t for t, _ in chunk],
            truncation=True,
            max_length=s["max_seq_length"],
            padding=True,
            return_tensors="pt",
        )
        out.append((dict(enc), torch.tensor([y for _, y in chunk])))
    return out


def latency_inputs(tokenizer: Any, rows: list[tuple[str, int]], s: dict[str, Any]) -> tuple[dict, dict]:
    lengths = [len(tokenizer(t)["input_ids"]) for t, _ in rows]
    median = statistics.median_low(lengths)
    one = rows[lengths.index(median)][0]
    b1 = dict(tokenizer([one], truncation=True, max_length=s["max_seq_length"], return_tensors="pt"))
    texts = [t for t, _ in rows[:32]]
    texts += texts[: 32 - len(texts)] if len(texts) < 32 else []  # tiny quick-mode dev sets
    b32 = dict(
        tokenizer(
            texts[:32], truncation=True, max_length=s["max_seq_length"], padding=True, return_tensors="pt"
        )
    )
    return b1, b32


def calibration_batches(train: Any, tokenizer: Any, s: dict[str, Any], seed: int) -> list[dict]:
    import torch

    rng = random.Random(seed)
    idx = rng.sample(range(len(train)), min(len(train), s["ffn_calibration_batches"] * s["batch_size"]))
    out = []
    for i in range(0, len(idx), s["batch_size"]):
        rows = [train[j] for j in idx[i : i + s["batch_size"]]]
        enc = tokenizer.pad(
            [{k: r[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in r} for r in rows],
            return_tensors="pt",
        )
        out.append({**enc, "labels": torch.tensor([r["labels"] for r in rows])})
    return out
