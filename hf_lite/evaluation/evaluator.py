"""Evaluate one model on a tokenized set: task metrics, parameters, bytes and latency in an :class:`EvaluationResult`.

>>> round(EvaluationResult("causal-lm", {"perplexity": 12.5}, 10, 8, 40).sparsity, 2)
0.2
"""

from __future__ import annotations

import dataclasses
import os
import statistics
from collections.abc import Sequence
from typing import Any

from datasets import Dataset

from hf_lite.evaluation._inputs import check_batch_size, check_dataset
from hf_lite.evaluation.causal_lm import token_nll
from hf_lite.evaluation.classification import check_average, classification_metrics, predict_classes
from hf_lite.evaluation.latency import measure_latency
from hf_lite.evaluation.size import bytes_on_disk, count_parameters
from hf_lite.summary import model_summary
from hf_lite.tasks import normalize_task

#: Tasks :func:`evaluate_model` can score (canonical names, see :mod:`hf_lite.tasks`).
EVAL_TASKS = ("sequence-classification", "causal-lm")


@dataclasses.dataclass
class EvaluationResult:
    """What :func:`evaluate_model` measured for one model; plain data, JSON-ready with :meth:`to_dict`.

    Attributes:
        task: canonical task name (``"sequence-classification"`` or ``"causal-lm"``).
        metrics: task metrics (``accuracy``, ``f1``, ``precision``, ``recall``, or ``perplexity``, ``loss``).
        parameters: logical parameter count (shared tensors once; a 4-bit weight counts as one parameter).
        nonzero_parameters: parameters whose value is not exactly zero.
        bytes_in_memory: bytes the parameters and buffers occupy (see :func:`hf_lite.model_summary`).
        bytes_on_disk: weight files of the saved folder, or ``None`` when no folder was given.
        latency: the dict returned by :func:`measure_latency`, or ``None``.
        quantization: e.g. ``"bnb-4bit (nf4)"``; ``None`` for full precision.
        adapter: e.g. ``"LORA r=8 on q_proj, v_proj"``; ``None`` without adapter.
        details: how the metrics were computed (``average``, ``num_examples``, ``num_tokens``).

    >>> r = EvaluationResult("causal-lm", {"perplexity": 12.5}, 10, 8, 40)
    >>> r.to_dict()["metrics"], round(r.sparsity, 2)
    ({'perplexity': 12.5}, 0.2)
    """

    task: str
    metrics: dict[str, float]
    parameters: int
    nonzero_parameters: int
    bytes_in_memory: int
    bytes_on_disk: int | None = None
    latency: dict[str, Any] | None = None
    quantization: str | None = None
    adapter: str | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def sparsity(self) -> float:
        """Fraction of parameters that are exactly zero."""
        return 1.0 - self.nonzero_parameters / self.parameters if self.parameters else 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def evaluate_model(
    model: Any,
    dataset: Dataset,
    task: str,
    *,
    batch_size: int = 32,
    average: str = "auto",
    folder: str | os.PathLike | None = None,
    measure_speed: bool = True,
    batch_sizes: Sequence[int] = (1, 32),
    seq_len: int | None = None,
    warmup: int = 2,
    repeats: int = 10,
) -> EvaluationResult:
    """Task metrics, size and (optionally) speed of ``model`` on a tokenized evaluation set.

    Args:
        model: a transformers model for ``task`` (full precision, pruned, quantized or with adapter).
        dataset: tokenized evaluation rows (:func:`hf_lite.data.tokenize_data`); classification needs
            ``labels``.
        task: ``"sequence-classification"`` (accuracy, F1, precision, recall) or ``"causal-lm"``
            (perplexity and mean token loss); aliases such as ``"text-classification"`` are accepted.
        batch_size: rows per forward pass for the metrics.
        average: F1/precision/recall average; ``"auto"`` is ``"binary"`` for a 2-label model, else ``"macro"``.
        folder: the model's saved folder, for ``bytes_on_disk`` (weight files only); ``None`` skips it.
        measure_speed: time forward passes with :func:`measure_latency`.
        batch_sizes, warmup, repeats: passed to :func:`measure_latency`.
        seq_len: sequence length for the timing; default: the median ``input_ids`` length of ``dataset``.

    >>> from hf_lite.testing import build_tiny_model
    >>> from datasets import Dataset
    >>> model, tok = build_tiny_model("bert", "sequence-classification", num_labels=2)
    >>> ds = Dataset.from_dict({"input_ids": [[2, 7, 3], [2, 9, 3]], "labels": [0, 1]})
    >>> r = evaluate_model(model, ds, "classification", measure_speed=False)
    >>> sorted(r.metrics), r.details["average"], 0 < r.nonzero_parameters < r.parameters  # zero-initialised biases
    (['accuracy', 'f1', 'precision', 'recall'], 'binary', True)
    """
    task = normalize_task(task)
    if task not in EVAL_TASKS:
        raise ValueError(f"task={task!r} cannot be evaluated yet; choose one of {list(EVAL_TASKS)}.")
    check_average(average)
    batch_size = check_batch_size(batch_size)
    details: dict[str, Any] = {"num_examples": len(dataset) if hasattr(dataset, "__len__") else None}
    if task == "sequence-classification":
        dataset = check_dataset(
            dataset,
            ["input_ids", "labels"],
            "tokenize labelled data with hf_lite.data.tokenize_data(task=...).",
        )
        preds, refs = predict_classes(model, dataset, batch_size)
        if average == "auto":
            num_labels = getattr(getattr(model, "config", None), "num_labels", None)
            average = "binary" if num_labels == 2 else "macro"
        metrics = classification_metrics(preds, refs, average=average)
        details["average"] = average
    else:
        dataset = check_dataset(
            dataset, ["input_ids"], "tokenize the data first (hf_lite.data.tokenize_data)."
        )
        out = token_nll(model, dataset, batch_size)
        metrics = {"perplexity": out["perplexity"], "loss": out["loss"]}
        details["num_tokens"] = out["num_tokens"]
    counts = count_parameters(model)
    summary = model_summary(model)
    latency = None
    if measure_speed:
        if seq_len is None:
            seq_len = max(1, int(statistics.median(len(ids) for ids in dataset["input_ids"])))
        latency = measure_latency(
            # dataset[0]: its other columns (labels, text) are ignored
            model,
            dataset[0],
            batch_sizes=batch_sizes,
            warmup=warmup,
            repeats=repeats,
            seq_len=seq_len,
        )
    return EvaluationResult(
        task=task,
        metrics=metrics,
        parameters=counts.total,
        nonzero_parameters=counts.nonzero,
        bytes_in_memory=summary.bytes_in_memory,
        bytes_on_disk=bytes_on_disk(folder) if folder is not None else None,
        latency=latency,
        quantization=summary.quantization,
        adapter=summary.adapter,
        details=details,
    )
