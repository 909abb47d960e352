"""Evaluate a model: task metrics, parameters (total and nonzero), bytes, latency and throughput.

Metrics go through the ``evaluate`` library, offline. ``evaluate.load("accuracy")`` downloads the
metric's script from the Hugging Face Hub (``evaluate-metric/accuracy``). evaluate 0.4.6 ships no
metric code and ignores ``HF_HUB_OFFLINE``; its only offline mechanism is ``HF_EVALUATE_OFFLINE=1``
(or a failed download), which falls back to a script cached by an earlier online run. On a machine
that never had network, ``evaluate.load("accuracy")`` fails with a misleading "doesn't exist on the
Hugging Face Hub" ``FileNotFoundError``; the canonical classification scripts also import
scikit-learn, which hf-lite does not depend on. But an ``evaluate.EvaluationModule`` is an ordinary
class, and ``evaluate.load`` also accepts a local script. So hf-lite ships its metrics as
``evaluate.Metric`` scripts in :mod:`hf_lite.metrics` (accuracy, f1, precision, recall with
scikit-learn's definitions in numpy; ``token_perplexity``), instantiated directly by
:func:`hf_lite.metrics.load_metric` (no download, no copy into evaluate's module cache) and loadable
with ``evaluate.load(hf_lite.metrics.metric_path("f1"))`` too. The tests check them against
scikit-learn.

Perplexity is ``exp(total NLL / number of scored tokens)`` over the whole evaluation set: token NLLs
are summed per sequence (float64) and aggregated by the ``token_perplexity`` metric, so sequences with
more scored tokens weigh more (not a mean of batch means).

Size and speed are measured, never derived: :func:`count_parameters` counts nonzero weights (what
pruning removed), :func:`bytes_on_disk` sums the weight files of a saved folder, and
:func:`measure_latency` times forward passes on the machine in use (median of repeats, after warm-up,
``torch.inference_mode``, the thread count recorded beside the numbers, see :func:`machine_info`).

>>> from hf_lite.evaluation import classification_metrics
>>> classification_metrics([1, 0, 1, 1], [1, 0, 0, 1])
{'accuracy': 0.75, 'f1': 0.8, 'precision': 0.6666666666666666, 'recall': 1.0}
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import torch
    from datasets import Dataset

__all__ = [
    "EvaluationResult",
    "ParameterCount",
    "WEIGHT_PATTERNS",
    "bytes_on_disk",
    "classification_metrics",
    "count_parameters",
    "evaluate_model",
    "machine_info",
    "make_compute_metrics",
    "measure_latency",
    "measure_latency_side_by_side",
    "perplexity",
]

#: Files counted by ``bytes_on_disk(folder)`` (top level of the folder): model and adapter weights.
#: Trainer state (``optimizer.pt``, ``scheduler.pt``, ``rng_state.pth``, ``training_args.bin``) is not weights.
WEIGHT_PATTERNS = (
    "*.safetensors",
    "pytorch_model*.bin",
    "adapter_model.bin",
    "*.gguf",
    "*.onnx",
    "tf_model*.h5",
    "flax_model*.msgpack",
)
_AVERAGES = ("auto", "binary", "micro", "macro", "weighted")
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_EVAL_TASKS = ("sequence-classification", "causal-lm")


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


# ------------------------------------------------------------------------------------------------ metrics


def _as_class_ids(values: Any, name: str) -> Any:
    import numpy as np

    if hasattr(values, "detach"):  # torch tensor
        values = values.detach().cpu().numpy()
    try:
        arr = np.asarray(values)
    except ValueError as err:  # ragged nested lists
        raise ValueError(
            f"{name} must be class ids of shape (n,) or logits of shape (n, num_classes): {err}"
        ) from err
    if arr.ndim == 2:  # logits or probabilities: the predicted class is the argmax
        arr = arr.argmax(axis=-1)
    if arr.ndim != 1:
        raise ValueError(
            f"{name} must be class ids of shape (n,) or logits of shape (n, num_classes); got shape {arr.shape}."
        )
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.mod(arr, 1) == 0):
            arr = arr.astype(np.int64)  # 1.0 -> 1
        else:
            raise TypeError(
                f"{name} must hold integer class ids; got dtype {arr.dtype} (e.g. {arr[:3].tolist()}). Map string "
                "labels to ids first (load_data does it for string label columns)."
            )
    return arr


def classification_metrics(
    predictions: Any,
    references: Any,
    *,
    average: str = "auto",
    pos_label: int = 1,
    labels: Sequence[int] | None = None,
) -> dict[str, float]:
    """Accuracy, F1, precision and recall through ``evaluate`` (bundled, offline metric modules).

    Values equal scikit-learn's ``accuracy_score``, ``f1_score``, ``precision_score`` and
    ``recall_score`` with the same ``average``/``pos_label``/``labels`` and ``zero_division=0``.

    Args:
        predictions: predicted class ids, shape ``(n,)``, or logits ``(n, num_classes)`` (argmax taken);
            lists, numpy arrays or torch tensors.
        references: true class ids, shape ``(n,)``.
        average: ``"binary"`` (scores of ``pos_label``), ``"macro"``, ``"micro"``, ``"weighted"``, or
            ``"auto"``: ``"binary"`` when every id in predictions and references is 0 or 1, else ``"macro"``.
        pos_label: the positive class for ``average="binary"``.
        labels: the classes to average over (default: those present).

    Returns:
        ``{"accuracy", "f1", "precision", "recall"}`` as floats.

    >>> classification_metrics([0, 1, 2, 2], [0, 2, 2, 1])["f1"]  # 3 classes -> macro
    0.5
    """
    from hf_lite.metrics import load_metric

    if not isinstance(average, str) or average not in _AVERAGES:
        raise ValueError(f"average={average!r} must be one of {list(_AVERAGES)}.")
    preds = _as_class_ids(predictions, "predictions")
    refs = _as_class_ids(references, "references")
    if preds.shape != refs.shape:
        raise ValueError(
            f"predictions ({preds.shape[0]}) and references ({refs.shape[0]}) have different lengths; pass one "
            "prediction per reference."
        )
    if refs.size == 0:
        raise ValueError("references is empty: there is nothing to score.")
    if average == "auto":
        average = "binary" if set(preds.tolist()) | set(refs.tolist()) <= {0, 1} else "macro"
    out = load_metric("accuracy").compute(predictions=preds, references=refs)
    for name in ("f1", "precision", "recall"):
        out.update(
            load_metric(name).compute(
                predictions=preds,
                references=refs,
                average=average,
                pos_label=pos_label,
                labels=labels,
                zero_division=0.0,
            )
        )
    return {k: float(v) for k, v in out.items()}


def make_compute_metrics(*, average: str = "auto", pos_label: int = 1) -> Any:
    """A ``compute_metrics`` callable for ``transformers.Trainer`` on classification (logits -> metrics).

    >>> import numpy as np
    >>> from transformers import EvalPrediction
    >>> fn = make_compute_metrics()
    >>> fn(EvalPrediction(predictions=np.array([[0.1, 0.9], [2.0, 0.0]]), label_ids=np.array([1, 1])))["accuracy"]
    0.5
    """
    if not isinstance(average, str) or average not in _AVERAGES:
        raise ValueError(f"average={average!r} must be one of {list(_AVERAGES)}.")

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        logits = (
            eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        )
        return classification_metrics(logits, eval_pred.label_ids, average=average, pos_label=pos_label)

    return compute_metrics


# ------------------------------------------------------------------------------------------------ batches


def _check_dataset(dataset: Any, needed: Sequence[str], hint: str) -> Dataset:
    from datasets import Dataset, DatasetDict

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


def _check_batch_size(batch_size: Any, name: str = "batch_size") -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{name}={batch_size!r} must be a positive integer.")
    return batch_size


def _model_device(model: Any) -> torch.device:
    import torch

    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _pad_id(model: Any) -> int:
    pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    return int(pad) if isinstance(pad, int) else 0


def _batches(
    dataset: Dataset, batch_size: int, columns: Sequence[str], pad_id: int, device: Any
) -> Iterator[dict[str, Any]]:
    """Right-padded tensors of ``columns`` for consecutive slices of ``dataset`` (labels padded with -100)."""
    import torch

    pad_values = {"input_ids": pad_id, "labels": -100}
    for start in range(0, len(dataset), batch_size):
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


# ------------------------------------------------------------------------------------------------ evaluation


def _predict_classes(model: Any, dataset: Dataset, batch_size: int) -> tuple[list[int], list[int]]:
    import torch

    inputs = [c for c in _MODEL_INPUTS if c in dataset.column_names]
    preds: list[int] = []
    refs: list[int] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in _batches(
                dataset, batch_size, [*inputs, "labels"], _pad_id(model), _model_device(model)
            ):
                labels = batch.pop("labels")
                logits = model(**batch).logits  # (batch, num_labels)
                preds += logits.argmax(-1).tolist()
                refs += labels.tolist()
    finally:
        model.train(was_training)
    return preds, refs


def _token_nll(model: Any, dataset: Dataset, batch_size: int) -> dict[str, Any]:
    """Sum of token NLL and token count over ``dataset`` via the ``token_perplexity`` evaluate metric."""
    import torch
    import torch.nn.functional as F

    from hf_lite.metrics import load_metric

    inputs = [c for c in _MODEL_INPUTS if c in dataset.column_names]
    has_labels = "labels" in dataset.column_names
    metric = load_metric("token_perplexity")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            columns = [*inputs, "labels"] if has_labels else inputs
            for batch in _batches(dataset, batch_size, columns, _pad_id(model), _model_device(model)):
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
    dataset = _check_dataset(dataset, ["input_ids"], "tokenize the data first (hf_lite.data.tokenize_data).")
    return _token_nll(model, dataset, _check_batch_size(batch_size))["perplexity"]


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
    from hf_lite.tasks import normalize_task
    from hf_lite.summary import model_summary

    task = normalize_task(task)
    if task not in _EVAL_TASKS:
        raise ValueError(f"task={task!r} cannot be evaluated yet; choose one of {list(_EVAL_TASKS)}.")
    if not isinstance(average, str) or average not in _AVERAGES:
        raise ValueError(f"average={average!r} must be one of {list(_AVERAGES)}.")
    batch_size = _check_batch_size(batch_size)
    details: dict[str, Any] = {"num_examples": len(dataset) if hasattr(dataset, "__len__") else None}
    if task == "sequence-classification":
        dataset = _check_dataset(
            dataset,
            ["input_ids", "labels"],
            "tokenize labelled data with hf_lite.data.tokenize_data(task=...).",
        )
        preds, refs = _predict_classes(model, dataset, batch_size)
        if average == "auto":
            num_labels = getattr(getattr(model, "config", None), "num_labels", None)
            average = "binary" if num_labels == 2 else "macro"
        metrics = classification_metrics(preds, refs, average=average)
        details["average"] = average
    else:
        dataset = _check_dataset(
            dataset, ["input_ids"], "tokenize the data first (hf_lite.data.tokenize_data)."
        )
        out = _token_nll(model, dataset, batch_size)
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
            model, dataset[0], batch_sizes=batch_sizes, warmup=warmup, repeats=repeats, seq_len=seq_len
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


# ------------------------------------------------------------------------------------------------ size


class ParameterCount(NamedTuple):
    """Total and nonzero parameter counts.

    >>> ParameterCount(total=100, nonzero=25).sparsity
    0.75
    """

    total: int
    nonzero: int

    @property
    def sparsity(self) -> float:
        """Fraction of parameters that are exactly zero."""
        return 1.0 - self.nonzero / self.total if self.total else 0.0


def _nonzero(param: torch.Tensor) -> int:
    """Nonzero weights of one parameter; bitsandbytes 4-bit weights are dequantized first (zeros stay 0)."""
    quant_state = getattr(param, "quant_state", None)
    if quant_state is not None and getattr(quant_state, "shape", None) is not None:
        import bitsandbytes.functional as bnbf

        return int(bnbf.dequantize_4bit(param.data, quant_state).count_nonzero())
    # int8 (LLM.int8) weights are scaled per row: a stored 0 is a 0 weight, so counting them directly is exact.
    return int(param.data.count_nonzero())


def count_parameters(model: torch.nn.Module) -> ParameterCount:
    """Count parameters and nonzero parameters (pruned weights are exact zeros).

    Shared (tied) parameters count once; a bitsandbytes 4-bit weight counts its logical size (like
    :func:`hf_lite.model_summary`) and is dequantized to count its zeros. For a quantized model the count
    is of the weights the model computes with, so weights that quantization rounds to 0 count as zeros
    too (NF4 and int8 both have an exact 0). Buffers are not parameters.

    >>> import torch
    >>> m = torch.nn.Linear(4, 2)
    >>> with torch.no_grad():
    ...     _ = m.weight[0].zero_()
    >>> count_parameters(m)
    ParameterCount(total=10, nonzero=6)
    """
    import torch

    from hf_lite.summary import logical_numel

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    total = nonzero = 0
    with torch.no_grad():
        for param in model.parameters():  # yields each shared Parameter once
            total += logical_numel(param)
            nonzero += _nonzero(param)
    return ParameterCount(total=total, nonzero=nonzero)


def bytes_on_disk(folder: str | os.PathLike, *, include: str = "weights") -> int:
    """Bytes a saved model takes on disk.

    Args:
        folder: a folder written by ``save_pretrained`` (or a single weight file).
        include: ``"weights"`` sums the weight files at the top level of the folder (:data:`WEIGHT_PATTERNS`:
            ``*.safetensors``, ``pytorch_model*.bin``, ``adapter_model.bin``, ``*.gguf``, ...; config,
            tokenizer and Trainer state excluded), which is what compression changes; ``"all"`` sums every
            file in the folder tree (symlinks followed, as in a Hub cache snapshot).

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "model.safetensors").write_bytes(b"x" * 100); _ = (d / "config.json").write_text("{}")
    >>> bytes_on_disk(d), bytes_on_disk(d, include="all")
    (100, 102)
    """
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"folder must be a path (str or os.PathLike); got {type(folder).__name__}.")
    if include not in ("weights", "all"):
        raise ValueError(f"include={include!r} must be 'weights' (weight files only) or 'all' (every file).")
    path = Path(folder)
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        raise ValueError(f"folder={str(folder)!r} does not exist; pass the folder the model was saved to.")
    if include == "all":
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    files = {p for pattern in WEIGHT_PATTERNS for p in path.glob(pattern) if p.is_file()}
    if not files:
        raise ValueError(
            f"folder={path.name!r} has no weight files ({', '.join(WEIGHT_PATTERNS)}); pass the folder written "
            "by save_pretrained, or include='all' to count every file."
        )
    return sum(p.stat().st_size for p in files)


# ------------------------------------------------------------------------------------------------ speed


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
    """Time forward passes of ``model`` on the machine in use: median latency and throughput per batch size.

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
        repeats: timed passes per batch size (the median is reported).
        seq_len: sequence length to time at (default: the example's own length).

    Returns:
        ``{"seq_len", "threads", "device", "warmup", "repeats", "results": [{"batch_size", "median_ms",
        "min_ms", "max_ms", "samples_per_s", "tokens_per_s"}, ...]}``; tokens/s counts every position
        processed (``batch_size * seq_len / median``).

    >>> import torch
    >>> from hf_lite.testing import build_tiny_model
    >>> model, tok = build_tiny_model("gpt2", "causal-lm")
    >>> out = measure_latency(model, {"input_ids": [5, 6, 7]}, batch_sizes=(1, 4), repeats=3, seq_len=8)
    >>> [r["batch_size"] for r in out["results"]], out["seq_len"], out["threads"] == torch.get_num_threads()
    ([1, 4], 8, True)
    """
    import torch

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    return measure_latency_side_by_side(
        {"model": model}, example_inputs, batch_sizes=batch_sizes, warmup=warmup, repeats=repeats, seq_len=seq_len
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
    import torch

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
        _check_batch_size(b, "batch_sizes entry")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup={warmup!r} must be an integer >= 0.")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats={repeats!r} must be an integer >= 1.")
    rows = {k: _as_row(example_inputs[k], k) for k in _MODEL_INPUTS if k in example_inputs}
    if seq_len is None:
        seq_len = len(rows["input_ids"])
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(
            f"seq_len={seq_len!r} must be a positive integer (or None for the example's length)."
        )
    rows = {k: [v[i % len(v)] for i in range(seq_len)] for k, v in rows.items()}  # cyclic repeat / cut
    names = list(models)
    devices = {name: _model_device(models[name]) for name in names}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    modes = {name: models[name].training for name in names}
    for model in models.values():
        model.eval()
    try:
        with torch.inference_mode():
            for b in batch_sizes:
                batches = {
                    name: {k: torch.tensor([v] * b, dtype=torch.long, device=devices[name]) for k, v in rows.items()}
                    for name in names
                }
                times: dict[str, list[float]] = {name: [] for name in names}
                for name in names:
                    for _ in range(warmup):
                        models[name](**batches[name])
                for r in range(repeats):
                    k = r % len(names)
                    for name in names[k:] + names[:k]:  # rotate who goes first
                        sync = torch.cuda.synchronize if devices[name].type == "cuda" else (lambda: None)
                        sync()
                        start = time.perf_counter()
                        models[name](**batches[name])
                        sync()
                        times[name].append(time.perf_counter() - start)
                for name in names:
                    median = statistics.median(times[name])
                    results[name].append(
                        {
                            "batch_size": b,
                            "median_ms": 1000 * median,
                            "min_ms": 1000 * min(times[name]),
                            "max_ms": 1000 * max(times[name]),
                            "samples_per_s": b / median if median > 0 else math.inf,
                            "tokens_per_s": b * seq_len / median if median > 0 else math.inf,
                        }
                    )
    finally:
        for name, training in modes.items():
            models[name].train(training)
    threads = torch.get_num_threads()
    return {
        name: {
            "seq_len": seq_len,
            "threads": threads,
            "device": str(devices[name]),
            "warmup": warmup,
            "repeats": repeats,
            "results": results[name],
        }
        for name in names
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> dict[str, Any]:
    """Where measurements were taken: CPU model, cores, torch threads, library versions and GPU (if any).

    No host name, user name or path is included, so the result can go into a published report.

    >>> info = machine_info()
    >>> sorted(info)  # doctest: +NORMALIZE_WHITESPACE
    ['cpu', 'cpu_count', 'gpu', 'platform', 'python', 'torch', 'torch_threads', 'transformers', 'usable_cpus']
    """
    import torch
    import transformers

    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
    }
