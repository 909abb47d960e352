"""Perplexity of a causal LM: token NLL summed per sequence (float64), aggregated over the whole set.

Sequences with more scored tokens weigh more (not a mean of batch means); the aggregation is the
bundled ``token_perplexity`` metric (:mod:`hf_lite.metrics.token_perplexity`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset

from hf_lite.evaluation._inputs import (
    MODEL_INPUTS,
    batches,
    check_batch_size,
    check_dataset,
    model_device,
    pad_id,
)
from hf_lite.metrics import load_metric


def token_nll(model: Any, dataset: Dataset, batch_size: int) -> dict[str, Any]:
    """Sum of token NLL and token count over ``dataset`` via the ``token_perplexity`` evaluate metric."""
    inputs = [c for c in MODEL_INPUTS if c in dataset.column_names]
    has_labels = "labels" in dataset.column_names
    metric = load_metric("token_perplexity")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            columns = [*inputs, "labels"] if has_labels else inputs
            for batch in batches(
                dataset, batch_size, columns, pad_id(model), model_device(model), "evaluate"
            ):
                labels = batch.pop("labels", None)
                if labels is None:  # score every attended token
                    mask = batch.get("attention_mask")
                    ids = batch["input_ids"]
                    labels = ids.masked_fill(mask == 0, -100) if mask is not None else ids.clone()
                logits = model(**batch).logits  # (batch, seq, vocab)
                shift_logits = logits[:, :-1, :].float()  # position t predicts token t + 1
                shift_labels = labels[:, 1:].to(logits.device)  # (batch, seq - 1)
                nll = F.cross_entropy(
                    shift_logits.transpose(1, 2), shift_labels, ignore_index=-100, reduction="none"
                )
                metric.add_batch(
                    nll=nll.double().sum(dim=1).tolist(),  # (batch,) summed in float64
                    num_tokens=(shift_labels != -100).sum(dim=1).tolist(),
                )
    finally:
        model.train(was_training)
    return metric.compute()


def perplexity(model: Any, dataset: Dataset, batch_size: int = 8) -> float:
    """Perplexity of a causal LM on ``dataset``: ``exp(mean NLL over every scored token of the set)``.

    Token-weighted over the whole set (not a mean of per-batch perplexities). Scored tokens are those
    whose label is not ``-100`` (labels shifted by one, as transformers' causal-LM loss does); without a
    ``labels`` column every attended token after the first of a row is scored.

    Args:
        model: a ``*ForCausalLM`` model (any object whose output has ``.logits``).
        dataset: tokenized rows with ``input_ids`` (and ``attention_mask``, ``labels``), e.g. from
            :func:`hf_lite.data.tokenize_data` with ``task="causal-lm"``.
        batch_size: rows per forward pass (does not change the result).

    >>> from hf_lite.testing import build_tiny_model
    >>> from datasets import Dataset
    >>> model, tok = build_tiny_model("gpt2", "causal-lm")
    >>> ds = Dataset.from_dict({"input_ids": [[5, 6, 7, 8]], "labels": [[5, 6, 7, 8]]})
    >>> perplexity(model, ds) > 1
    True
    """
    dataset = check_dataset(dataset, ["input_ids"], "tokenize the data first (hf_lite.data.tokenize_data).")
    return token_nll(model, dataset, check_batch_size(batch_size))["perplexity"]
