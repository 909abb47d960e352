"""Latency and throughput of forward passes, timed on the machine in use (interleaved for several models).

Median of repeats after warm-up with its spread (interquartile range), ``torch.inference_mode``, CUDA
synchronized on GPU; the thread count and the machine's load average at measurement are recorded beside the
numbers (see :func:`hf_lite.evaluation.machine_info` and :func:`hf_lite.evaluation.busy_note`). A progress bar
(:func:`hf_lite.progress.progress_bar`) counts the forward passes; it moves between timed passes, never in one.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from hf_lite.evaluation._inputs import MODEL_INPUTS, check_batch_size, model_device
from hf_lite.evaluation.machine import load_average
from hf_lite.progress import progress_bar


def quartiles(times: Sequence[float]) -> tuple[float, float]:
    """First and third quartiles of ``times`` (linear interpolation between order statistics, as
    ``numpy.percentile``'s default); a single time is both.

    >>> quartiles([1.0, 2.0, 3.0, 4.0, 5.0])
    (2.0, 4.0)
    >>> quartiles([7.0])
    (7.0, 7.0)
    """
    if not times:
        raise ValueError("times must hold at least one measured time; got an empty sequence.")
    if len(times) == 1:
        return float(times[0]), float(times[0])
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return q1, q3


def _as_row(value: Any, key: str) -> list[int]:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], (list, tuple)):
        value = value[0]  # a batch of one
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, int) for v in value):
        raise ValueError(
            f"example_inputs[{key!r}] must be one non-empty sequence of token ids (list, 1-D tensor or [1, L] "
            f"tensor); got {type(value).__name__}."
        )
    return list(value)


def measure_latency(
    model: torch.nn.Module,
    example_inputs: Mapping[str, Any],
    *,
    batch_sizes: Sequence[int] = (1, 32),
    warmup: int = 2,
    repeats: int = 10,
    seq_len: int | None = None,
) -> dict[str, Any]:
    """Time forward passes of ``model`` on the machine in use: median latency, its spread and throughput per
    batch size.

    One example is repeated ``batch_size`` times (so every model sees the same tokens); with ``seq_len``
    its token ids are repeated cyclically or cut to exactly ``seq_len`` positions, which makes models
    with different tokenizations comparable at one length. Each batch size runs ``warmup`` untimed
    passes, then ``repeats`` timed ones (``time.perf_counter``, CUDA synchronized when on GPU), with
    ``model.eval()`` (its mode is restored afterwards) under ``torch.inference_mode()``. The numbers
    depend on ``torch.get_num_threads()``, recorded in the result; fix it (``torch.set_num_threads``)
    when comparing models.

    Args:
        model: the model to time.
        example_inputs: one tokenized example, e.g. ``tokenized_dataset[0]``; ``input_ids`` is required,
            ``attention_mask``/``token_type_ids`` are used when present, other keys (labels, text) ignored.
        batch_sizes: batch sizes to time.
        warmup: untimed passes before timing each batch size.
        repeats: timed passes per batch size (the median and the quartiles are reported).
        seq_len: sequence length to time at (default: the example's own length).

    Returns:
        ``{"seq_len", "threads", "device", "warmup", "repeats", "load_average", "results": [{"batch_size",
        "median_ms", "q1_ms", "q3_ms", "iqr_ms", "min_ms", "max_ms", "samples_per_s", "tokens_per_s"}, ...]}``;
        tokens/s counts every position processed (``batch_size * seq_len / median``); ``iqr_ms = q3_ms - q1_ms``
        (interquartile range of the timed passes: how far apart two runs of the same model may land);
        ``load_average`` is the 1-minute load average read right after the timed passes (``None`` where the
        system does not report one), to judge whether other work shared the CPUs
        (:func:`hf_lite.evaluation.busy_note`).

    >>> import torch
    >>> from hf_lite.testing import build_tiny_model
    >>> model, tok = build_tiny_model("gpt2", "causal-lm")
    >>> out = measure_latency(model, {"input_ids": [5, 6, 7]}, batch_sizes=(1, 4), repeats=3, seq_len=8)
    >>> [r["batch_size"] for r in out["results"]], out["seq_len"], out["threads"] == torch.get_num_threads()
    ([1, 4], 8, True)
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    return measure_latency_side_by_side(
        {"model": model},
        example_inputs,
        batch_sizes=batch_sizes,
        warmup=warmup,
        repeats=repeats,
        seq_len=seq_len,
    )["model"]


def measure_latency_side_by_side(
    models: Mapping[str, torch.nn.Module],
    example_inputs: Mapping[str, Any],
    *,
    batch_sizes: Sequence[int] = (1, 32),
    warmup: int = 2,
    repeats: int = 10,
    seq_len: int | None = None,
) -> dict[str, dict[str, Any]]:
    """:func:`measure_latency` for several models at once, timed *interleaved*: for each batch size every
    model takes its ``warmup`` passes, then ``repeats`` rounds in which each model runs once, the order
    rotating each round. A burst of background load then lands on every model alike, so their ratios
    (speedups) are far steadier than those of models timed one after the other. All models are held in
    memory together.

    Returns ``{name: measure_latency-style dict}``, in the order of ``models``.

    >>> from hf_lite.testing import build_tiny_model
    >>> small, _ = build_tiny_model("gpt2", "causal-lm")
    >>> big, _ = build_tiny_model("gpt2", "causal-lm", num_hidden_layers=4)
    >>> out = measure_latency_side_by_side({"small": small, "big": big}, {"input_ids": [5, 6]}, batch_sizes=(2,),
    ...                                    repeats=3, seq_len=8)
    >>> list(out), out["big"]["results"][0]["batch_size"]
    (['small', 'big'], 2)
    """
    if not isinstance(models, Mapping) or not models:
        raise ValueError(f"models must be a non-empty mapping of name -> model; got {models!r}.")
    for name, model in models.items():
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"models[{name!r}] must be a torch.nn.Module; got {type(model).__name__}.")
    if not isinstance(example_inputs, Mapping):
        raise TypeError(
            f"example_inputs must be a mapping such as tokenized_dataset[0] or tokenizer(text); got "
            f"{type(example_inputs).__name__}."
        )
    if "input_ids" not in example_inputs:
        raise ValueError(
            f"example_inputs has no 'input_ids' (keys: {sorted(example_inputs)}); pass a tokenized example."
        )
    if isinstance(batch_sizes, int) or not batch_sizes:
        raise ValueError(
            f"batch_sizes={batch_sizes!r} must be a non-empty sequence of positive integers, e.g. (1, 32)."
        )
    for b in batch_sizes:
        check_batch_size(b, "batch_sizes entry")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup={warmup!r} must be an integer >= 0.")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats={repeats!r} must be an integer >= 1.")
    rows = {k: _as_row(example_inputs[k], k) for k in MODEL_INPUTS if k in example_inputs}
    if seq_len is None:
        seq_len = len(rows["input_ids"])
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(
            f"seq_len={seq_len!r} must be a positive integer (or None for the example's length)."
        )
    rows = {k: [v[i % len(v)] for i in range(seq_len)] for k, v in rows.items()}  # cyclic repeat / cut
    names = list(models)
    devices = {name: model_device(models[name]) for name in names}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    modes = {name: models[name].training for name in names}
    for model in models.values():
        model.eval()
    # forward passes: the bar moves between timed passes, never inside one
    bar = progress_bar(total=len(batch_sizes) * len(names) * (warmup + repeats), desc="latency", unit="pass")
    try:
        with torch.inference_mode():
            for b in batch_sizes:
                batches = {
                    name: {
                        k: torch.tensor([v] * b, dtype=torch.long, device=devices[name])
                        for k, v in rows.items()
                    }
                    for name in names
                }
                times: dict[str, list[float]] = {name: [] for name in names}
                for name in names:
                    for _ in range(warmup):
                        models[name](**batches[name])
                        bar.update(1)
                for r in range(repeats):
                    k = r % len(names)
                    for name in names[k:] + names[:k]:  # rotate who goes first
                        sync = torch.cuda.synchronize if devices[name].type == "cuda" else (lambda: None)
                        sync()
                        start = time.perf_counter()
                        models[name](**batches[name])
                        sync()
                        times[name].append(time.perf_counter() - start)
                        bar.update(1)
                for name in names:
                    median = statistics.median(times[name])
                    q1, q3 = quartiles(times[name])
                    results[name].append(
                        {
                            "batch_size": b,
                            "median_ms": 1000 * median,
                            "q1_ms": 1000 * q1,
                            "q3_ms": 1000 * q3,
                            "iqr_ms": 1000 * (q3 - q1),
                            "min_ms": 1000 * min(times[name]),
                            "max_ms": 1000 * max(times[name]),
                            "samples_per_s": b / median if median > 0 else math.inf,
                            "tokens_per_s": b * seq_len / median if median > 0 else math.inf,
                        }
                    )
    finally:
        bar.close()
        for name, training in modes.items():
            models[name].train(training)
    threads = torch.get_num_threads()
    load = load_average()  # the last minute: the timed passes and whatever else ran beside them
    return {
        name: {
            "seq_len": seq_len,
            "threads": threads,
            "device": str(devices[name]),
            "warmup": warmup,
            "repeats": repeats,
            "load_average": load,
            "results": results[name],
        }
        for name in names
    }
