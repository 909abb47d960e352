"""Batches from a teacher cache: numpy rows read in one call, and a collator that pads them with the tokens.

The collator pads the teacher tensors with the tokens, position by position, for
:func:`hf_lite.losses.topk_distillation_loss`, so the training run needs no teacher in memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import torch

from hf_lite.losses import IGNORE_INDEX
from hf_lite.teacher_cache.store import INDICES_COLUMN, LOGPROBS_COLUMN, TAIL_COLUMN

__all__ = ["TeacherCacheCollator", "TeacherCacheRows", "check_positive_int", "padding_id", "stack_padded"]


class TeacherCacheRows(torch.utils.data.Dataset):
    """A teacher cache (or any ``datasets.Dataset``) read a batch of rows at a time, as numpy arrays.

    ``datasets`` turns every value of a nested column into a Python object when a ``DataLoader`` fetches
    rows (``(seq, k)`` teacher columns: ~9 ms for 16 rows of 64 tokens at k=16 here, then as long again to
    build tensors from the lists). This view takes the rows of a batch from the Arrow table in one call and
    hands out zero-copy numpy views: list columns as ``(len,)`` arrays, list-of-``k`` columns as ``(len, k)``,
    fixed-size columns as ``(k,)``, scalars as numpy scalars, anything else (strings) as Python values. It is
    what :class:`~trainers.DistillationTrainer` trains from when its dataset is a teacher cache;
    :class:`TeacherCacheCollator` takes its rows as it takes plain ones.

    Args:
        dataset: the ``datasets.Dataset`` (any format; its Arrow table is read).

    Example:

    >>> import datasets
    >>> rows = TeacherCacheRows(datasets.Dataset.from_dict({"input_ids": [[1, 2, 3], [4]], "label": [0, 1]}))
    >>> [r["input_ids"].tolist() for r in rows.__getitems__([1, 0])]
    [[4], [1, 2, 3]]
    """

    def __init__(self, dataset: datasets.Dataset) -> None:
        if not isinstance(dataset, datasets.Dataset):
            raise TypeError(f"TeacherCacheRows reads a datasets.Dataset; got {type(dataset).__name__}.")
        self.dataset = dataset.with_format("arrow")
        self.column_names = dataset.column_names

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        table = self.dataset[list(indices)]  # a pyarrow.Table of these rows, in this order
        columns = {name: _numpy_rows(table.column(name).combine_chunks()) for name in table.column_names}
        return [{name: values[i] for name, values in columns.items()} for i in range(table.num_rows)]


def _numpy_rows(column: Any) -> Sequence[Any]:
    """One value per row of an Arrow array: numpy views for lists of numbers, Python values otherwise."""
    kind = column.type
    if column.null_count == 0 and (pa.types.is_list(kind) or pa.types.is_large_list(kind)):
        inner = column.flatten()  # the items of every row, offsets applied
        if (
            pa.types.is_fixed_size_list(inner.type)
            and _is_number(inner.type.value_type)
            and inner.null_count == 0
        ):
            flat = inner.flatten().to_numpy(zero_copy_only=False).reshape(-1, inner.type.list_size)
        elif _is_number(inner.type) and inner.null_count == 0:
            flat = inner.to_numpy(zero_copy_only=False)
        else:
            return column.to_pylist()
        bounds = (column.offsets.to_numpy() - column.offsets[0].as_py()).tolist()
        return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    if pa.types.is_fixed_size_list(kind) and _is_number(kind.value_type) and column.null_count == 0:
        return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, kind.list_size)
    if _is_number(kind) and column.null_count == 0:
        return column.to_numpy(zero_copy_only=False)
    return column.to_pylist()


def _is_number(kind: Any) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)


@dataclass
class TeacherCacheCollator:
    """Pads cache rows into a batch for training from the cache, with no teacher in memory.

    Everything is padded on the right to the longest example (or a multiple of ``pad_to_multiple_of``); the
    teacher tensors stay aligned with ``input_ids`` position by position (unshifted: shift them like the
    logits). Output, for ``B`` examples of at most ``L`` tokens and a cache of ``k`` entries:

    - ``input_ids`` ``(B, L)`` int64, padded with the tokenizer's pad id (eos, then 0, when it has none);
    - ``attention_mask`` ``(B, L)`` int64, 0 on padding (the example's own mask when it has one);
    - ``token_type_ids`` ``(B, L)`` int64 when the examples have them;
    - ``labels`` ``(B, L)`` int64 with ``-100`` on padding when the examples have ``labels`` (or ``label``;
      ``(B,)`` for sequence classification), or built from ``input_ids`` when ``labels_from_input_ids=True``;
    - ``teacher_topk_logprobs`` ``(B, L, k)`` float32, ``-inf`` on padding;
    - ``teacher_topk_indices`` ``(B, L, k)`` int64, ``0..k-1`` on padding (a legal entry, all mass in the
      tail, so an unmasked pad cannot produce NaN; mask it all the same);
    - ``teacher_tail_mass`` ``(B, L)`` float32, ``1`` on padding, only with ``return_tail_mass=True`` (the
      model's forward does not take it).

    A ``sequence-classification`` cache gives ``(B, k)`` teacher tensors. Other columns (``text``, ...) are
    dropped.

    Args:
        tokenizer: the tokenizer of the cache (for the pad id).
        pad_to_multiple_of: round ``L`` up to a multiple of this.
        label_pad_token_id: label on padded positions.
        labels_from_input_ids: when the examples have no ``labels``, use ``input_ids`` with ``-100`` where
            ``attention_mask`` is 0 (causal LM training on every token, like ``DataCollatorForLanguageModeling``).
        return_tail_mass: add ``teacher_tail_mass`` to the batch.

    Example:

    >>> import torch
    >>> from hf_lite.testing import build_tokenizer
    >>> rows = [{"input_ids": [5, 6, 7], "teacher_topk_logprobs": torch.zeros(3, 2).tolist(),
    ...          "teacher_topk_indices": [[1, 2]] * 3}, {"input_ids": [8],
    ...          "teacher_topk_logprobs": [[0.0, -1.0]], "teacher_topk_indices": [[3, 4]]}]
    >>> batch = TeacherCacheCollator(build_tokenizer(), labels_from_input_ids=True)(rows)
    >>> tuple(batch["teacher_topk_logprobs"].shape), batch["labels"].tolist()
    ((2, 3, 2), [[5, 6, 7], [8, -100, -100]])
    """

    tokenizer: Any
    pad_to_multiple_of: int | None = None
    label_pad_token_id: int = IGNORE_INDEX
    labels_from_input_ids: bool = False
    return_tail_mass: bool = False

    def __post_init__(self) -> None:
        if self.pad_to_multiple_of is not None:
            check_positive_int("pad_to_multiple_of", self.pad_to_multiple_of)

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("TeacherCacheCollator got an empty list of examples.")
        missing = [c for c in (LOGPROBS_COLUMN, INDICES_COLUMN) if c not in features[0]]
        if missing:
            raise ValueError(
                f"the examples lack {missing}: they do not come from a teacher cache. Load one with "
                "load_teacher_cache, and pass remove_unused_columns=False to the Trainer so it keeps these columns."
            )
        ids = [_as_tensor(f["input_ids"], torch.long) for f in features]
        logprobs = [_as_tensor(f[LOGPROBS_COLUMN], torch.float32) for f in features]
        indices = [_as_tensor(f[INDICES_COLUMN], torch.long) for f in features]
        per_position = logprobs[0].ndim == 2
        for i, (x, lp, ix) in enumerate(zip(ids, logprobs, indices, strict=True)):
            if lp.shape != ix.shape or (per_position and lp.shape[0] != x.shape[0]):
                raise ValueError(
                    f"example {i} has {x.shape[0]} input_ids but teacher tensors of shape {tuple(lp.shape)} and "
                    f"{tuple(ix.shape)}: the cache and the tokens are no longer aligned (truncated or re-tokenized "
                    "after caching?). Change the dataset before precompute_teacher_cache, not after."
                )
        length = max(x.shape[0] for x in ids)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {"input_ids": stack_padded(ids, length, padding_id(self.tokenizer))}
        masks = [
            _as_tensor(f["attention_mask"], torch.long) if "attention_mask" in f else torch.ones_like(x)
            for f, x in zip(features, ids, strict=True)
        ]
        batch["attention_mask"] = stack_padded(masks, length, 0)
        if "token_type_ids" in features[0]:
            token_types = [_as_tensor(f["token_type_ids"], torch.long) for f in features]
            batch["token_type_ids"] = stack_padded(token_types, length, 0)
        label_key = "labels" if "labels" in features[0] else "label" if "label" in features[0] else None
        if label_key is not None:  # "label" is the usual name in classification datasets
            labels = [_as_tensor(f[label_key], torch.long) for f in features]
            batch["labels"] = (
                stack_padded(labels, length, self.label_pad_token_id)
                if labels[0].ndim
                else torch.stack(labels)
            )
        elif self.labels_from_input_ids:
            batch["labels"] = batch["input_ids"].masked_fill(
                batch["attention_mask"] == 0, self.label_pad_token_id
            )
        if per_position:
            k = logprobs[0].shape[-1]
            batch[LOGPROBS_COLUMN] = stack_padded(logprobs, length, float("-inf"))  # (B, L, k)
            pad_ids = torch.arange(k).expand(length, k)
            batch[INDICES_COLUMN] = torch.stack(
                [torch.cat([ix, pad_ids[ix.shape[0] :]]) for ix in indices]
            )  # (B, L, k)
        else:
            batch[LOGPROBS_COLUMN] = torch.stack(logprobs)  # (B, k)
            batch[INDICES_COLUMN] = torch.stack(indices)  # (B, k)
        if self.return_tail_mass:
            tails = [_as_tensor(f[TAIL_COLUMN], torch.float32) for f in features]
            batch[TAIL_COLUMN] = stack_padded(tails, length, 1.0) if per_position else torch.stack(tails)
        return batch


def _as_tensor(value: Any, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(dtype)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.astype(np.int64 if dtype == torch.long else np.float32))
    return torch.tensor(value, dtype=dtype)


def stack_padded(rows: Sequence[torch.Tensor], length: int, value: float) -> torch.Tensor:
    """Stack ``rows`` (``(len_i, ...)`` each) into ``(B, length, ...)``, filling the rest with ``value``."""
    out = torch.full((len(rows), length, *rows[0].shape[1:]), value, dtype=rows[0].dtype)
    for i, row in enumerate(rows):
        out[i, : row.shape[0]] = row
    return out


def padding_id(tokenizer: Any) -> int:
    """The id that pads ``input_ids``: the tokenizer's pad token, else its eos token, else 0."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0  # padded positions are masked out; any id will do


def check_positive_int(name: str, value: int) -> None:
    """Raise unless argument ``name`` is an int ``>= 1``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int; got {type(value).__name__} {value!r}.")
    if value < 1:
        raise ValueError(f"{name}={value} must be >= 1.")
