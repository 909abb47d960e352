"""Batches of prompt/completion rows: right-padded for training, prompts left-padded for generation.

:class:`CompletionCollator` takes the rows of :func:`hf_lite.data.tokenize_data` (or
:func:`~hf_lite.data.chat.tokenize_chat`): ``input_ids``, optional ``attention_mask``, ``labels`` and
``prompt_length``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["CompletionCollator"]

_KNOWN = ("input_ids", "attention_mask", "labels", "prompt_length")


class CompletionCollator:
    """Pad tokenized causal-LM rows into a batch; with ``prompt_length``, add the prompts left-padded.

    Returns ``input_ids`` (right-padded with the pad token, else the EOS token), ``attention_mask`` (0 on
    padding; all ones when the rows have none) and, when the rows have them, ``labels`` (``-100`` on padding).
    When the rows have ``prompt_length``, also ``prompt_input_ids`` = ``input_ids[:prompt_length]`` of each row
    and ``prompt_attention_mask``, both **left**-padded, so the prompts end together where generation starts
    (``model.generate(prompt_input_ids, attention_mask=prompt_attention_mask)``); ``prompt_length`` itself is not
    in the batch (it is ``prompt_attention_mask.sum(-1)``). The tokenizer's ``padding_side`` is not used.

    Args:
        tokenizer: the model's tokenizer (its pad token id, or its EOS token id without one).
        pad_to_multiple_of: round both padded lengths up to a multiple of this (e.g. 8 for tensor cores).

    Raises:
        ValueError: a tokenizer with neither a pad nor an EOS token; rows with columns other than
            input_ids/attention_mask/labels/prompt_length, or with labels on some rows only.

    >>> from hf_lite.testing import build_tokenizer
    >>> tok = build_tokenizer(["a b c"])  # GPT-style: no pad token, EOS id 1 pads
    >>> batch = CompletionCollator(tok)([
    ...     {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "prompt_length": 1},
    ...     {"input_ids": [5, 6], "labels": [-100, -100], "prompt_length": 2}])
    >>> batch["input_ids"].tolist(), batch["labels"].tolist()
    ([[5, 6, 7], [5, 6, 1]], [[-100, 6, 7], [-100, -100, -100]])
    >>> batch["prompt_input_ids"].tolist(), batch["prompt_attention_mask"].tolist()
    ([[1, 5], [5, 6]], [[0, 1], [1, 1]])
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None = None) -> None:
        if pad_to_multiple_of is not None and (
            isinstance(pad_to_multiple_of, bool)
            or not isinstance(pad_to_multiple_of, int)
            or pad_to_multiple_of < 1
        ):
            raise ValueError(
                f"pad_to_multiple_of={pad_to_multiple_of!r} must be a positive integer (e.g. 8) or None."
            )
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "eos_token_id", None)
        if pad is None:
            raise ValueError(
                "the tokenizer has neither a pad token nor an eos token to pad input_ids with; set "
                "tokenizer.pad_token (hf_lite.load_tokenizer does) before collating."
            )
        self.tokenizer = tokenizer
        self.pad_token_id = int(pad)
        self.pad_to_multiple_of = pad_to_multiple_of

    def _width(self, lengths: Sequence[int]) -> int:
        width = max(lengths)
        m = self.pad_to_multiple_of
        return -(-width // m) * m if m else width

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("CompletionCollator got no rows; the batch must hold at least one.")
        unknown = sorted({k for f in features for k in f} - set(_KNOWN))
        if unknown:
            raise ValueError(
                f"CompletionCollator got columns {unknown} it does not pad; it takes {list(_KNOWN)}. Remove the "
                "other columns (dataset.remove_columns) or use the Trainer's remove_unused_columns."
            )
        ids = [list(f["input_ids"]) for f in features]
        masks = [list(f.get("attention_mask") or [1] * len(i)) for f, i in zip(features, ids, strict=True)]
        width = self._width([len(i) for i in ids])
        batch = {
            "input_ids": _pad(ids, width, self.pad_token_id, left=False),  # (batch, width)
            "attention_mask": _pad(masks, width, 0, left=False),
        }
        with_labels = ["labels" in f for f in features]
        if any(with_labels):
            if not all(with_labels):
                raise ValueError("some rows have labels and others not; tokenize all rows of a batch alike.")
            batch["labels"] = _pad([list(f["labels"]) for f in features], width, -100, left=False)
        if any("prompt_length" in f for f in features):
            lengths = [int(f.get("prompt_length", len(i))) for f, i in zip(features, ids, strict=True)]
            p_width = self._width(lengths)
            prompts = [i[:n] for i, n in zip(ids, lengths, strict=True)]
            p_masks = [m[:n] for m, n in zip(masks, lengths, strict=True)]
            batch["prompt_input_ids"] = _pad(
                prompts, p_width, self.pad_token_id, left=True
            )  # (batch, p_width)
            batch["prompt_attention_mask"] = _pad(p_masks, p_width, 0, left=True)
        return batch


def _pad(rows: list[list[int]], width: int, value: int, *, left: bool) -> torch.Tensor:
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for r, row in enumerate(rows):
        if row:
            if left:
                out[r, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            else:
                out[r, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out
