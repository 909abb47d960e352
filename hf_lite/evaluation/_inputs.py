"""Checked evaluation inputs: datasets, batch sizes and right-padded batches on the model's device.

>>> from datasets import Dataset
>>> ds = check_dataset(Dataset.from_dict({"input_ids": [[1, 2, 3], [4]]}), ["input_ids"], "tokenize first.")
>>> next(batches(ds, 2, ["input_ids"], pad_id=0, device="cpu"))["input_ids"].tolist()
[[1, 2, 3], [4, 0, 0]]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from datasets import Dataset, DatasetDict

from hf_lite.progress import progress_bar

#: Dataset columns passed to the model's forward (others, such as labels and text, are not).
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def check_dataset(dataset: Any, needed: Sequence[str], hint: str) -> Dataset:
    """``dataset`` as a plain-format ``datasets.Dataset`` with columns ``needed`` and at least one row (``hint`` says how)."""
    if isinstance(dataset, DatasetDict):
        raise TypeError(
            f"dataset must be a datasets.Dataset, got a DatasetDict with splits {list(dataset)}; pass one split, "
            "e.g. dataset['eval']."
        )
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be a datasets.Dataset; got {type(dataset).__name__}.")
    missing = [c for c in needed if c not in dataset.column_names]
    if missing:
        raise ValueError(f"dataset has no column(s) {missing} (columns: {dataset.column_names}); {hint}")
    if len(dataset) == 0:
        raise ValueError("dataset is empty: there is nothing to evaluate.")
    return dataset.with_format(None)


def check_batch_size(batch_size: Any, name: str = "batch_size") -> int:
    """``batch_size`` when it is a positive integer (``name`` is the argument named in the error)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{name}={batch_size!r} must be a positive integer.")
    return batch_size


def model_device(model: Any) -> torch.device:
    """The device of the first parameter of ``model`` (CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def pad_id(model: Any) -> int:
    """The model's ``pad_token_id`` (0 when the config has none)."""
    pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    return int(pad) if isinstance(pad, int) else 0


def batches(
    dataset: Dataset,
    batch_size: int,
    columns: Sequence[str],
    pad_id: int,
    device: Any,
    desc: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Right-padded tensors of ``columns`` for consecutive slices of ``dataset`` (labels padded with -100); with
    ``desc``, a progress bar of that name counts the batches (:func:`hf_lite.progress.progress_bar`)."""
    pad_values = {"input_ids": pad_id, "labels": -100}
    starts = range(0, len(dataset), batch_size)
    for start in progress_bar(starts, desc=desc, unit="batch", disable=True if desc is None else None):
        rows = dataset[start : start + batch_size]
        batch = {}
        for col in columns:
            values = rows[col]
            if values and isinstance(values[0], (list, tuple)):
                width = max(len(v) for v in values)
                pad = pad_values.get(col, 0)
                values = [list(v) + [pad] * (width - len(v)) for v in values]
            batch[col] = torch.tensor(values, dtype=torch.long, device=device)
        yield batch
