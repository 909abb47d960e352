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

The package's modules: :mod:`~hf_lite.evaluation.evaluator` (:func:`evaluate_model`,
:class:`EvaluationResult`), :mod:`~hf_lite.evaluation.classification`, :mod:`~hf_lite.evaluation.causal_lm`,
:mod:`~hf_lite.evaluation.size`, :mod:`~hf_lite.evaluation.latency`, :mod:`~hf_lite.evaluation.machine`.
Names are imported on first use, so ``import hf_lite.evaluation`` stays light.

Size and speed are measured, never derived: :func:`count_parameters` counts nonzero weights (what
pruning removed), :func:`bytes_on_disk` sums the weight files of a saved folder, and
:func:`measure_latency` times forward passes on the machine in use (median of repeats, after warm-up,
``torch.inference_mode``, the interquartile range, thread count and load average recorded beside the
numbers, see :func:`machine_info` and :func:`busy_note`).

>>> from hf_lite.evaluation import classification_metrics
>>> classification_metrics([1, 0, 1, 1], [1, 0, 0, 1])
{'accuracy': 0.75, 'f1': 0.8, 'precision': 0.6666666666666666, 'recall': 1.0}
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hf_lite.evaluation.causal_lm import perplexity
    from hf_lite.evaluation.classification import classification_metrics, make_compute_metrics
    from hf_lite.evaluation.evaluator import EvaluationResult, evaluate_model
    from hf_lite.evaluation.latency import measure_latency, measure_latency_side_by_side
    from hf_lite.evaluation.machine import busy_note, cpu_model, load_average, machine_info
    from hf_lite.evaluation.size import WEIGHT_PATTERNS, ParameterCount, bytes_on_disk, count_parameters

__all__ = [
    "EvaluationResult",
    "ParameterCount",
    "WEIGHT_PATTERNS",
    "busy_note",
    "bytes_on_disk",
    "classification_metrics",
    "count_parameters",
    "evaluate_model",
    "load_average",
    "machine_info",
    "make_compute_metrics",
    "measure_latency",
    "measure_latency_side_by_side",
    "perplexity",
]

# public name -> the module of this package that defines it, imported on first use
_LAZY: dict[str, str] = {
    "EvaluationResult": "evaluator",
    "evaluate_model": "evaluator",
    "classification_metrics": "classification",
    "make_compute_metrics": "classification",
    "perplexity": "causal_lm",
    "ParameterCount": "size",
    "WEIGHT_PATTERNS": "size",
    "bytes_on_disk": "size",
    "count_parameters": "size",
    "measure_latency": "latency",
    "measure_latency_side_by_side": "latency",
    "cpu_model": "machine",
    "machine_info": "machine",
    "load_average": "machine",
    "busy_note": "machine",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
