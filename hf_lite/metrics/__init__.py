"""Metrics for hf-lite as ``evaluate`` modules that work offline.

``evaluate.load("accuracy")`` fetches the metric's script from the Hugging Face Hub
(``evaluate-metric/accuracy``), so it fails on a machine without network unless an earlier online run
cached that script (``HF_EVALUATE_OFFLINE=1`` only selects that cache; evaluate ignores
``HF_HUB_OFFLINE``); the canonical scripts also import scikit-learn, which hf-lite does not depend on.
hf-lite therefore ships its own metric scripts in this folder: ordinary ``evaluate.Metric``
subclasses with the canonical names, inputs, keyword arguments and outputs, computed with numpy
and checked against scikit-learn in the tests. They can be used in two ways:

* :func:`load_metric` (what hf-lite uses): instantiates the class directly. Nothing is downloaded
  or copied, no module cache is written, and the object is an ordinary ``evaluate.EvaluationModule``
  (``add_batch``, ``compute``, ``evaluate.combine``, ``num_process``/``process_id`` for distributed
  evaluation).
* ``evaluate.load(metric_path("f1"))``: evaluate's own local-script path, for code that expects
  ``evaluate.load``. evaluate copies the script (and ``_prf.py``, which it imports) into its dynamic
  module cache (``HF_MODULES_CACHE``) and loads it from there; the results are the same.

``token_perplexity`` is not the Hub's ``perplexity`` (which downloads a model by id and scores raw
text): it aggregates per-sequence NLL sums, so it is exact over a whole set and across processes.

>>> from hf_lite.metrics import load_metric
>>> load_metric("f1").compute(predictions=[0, 1, 1], references=[0, 1, 0])
{'f1': 0.6666666666666666}
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_lite._utils import did_you_mean

if TYPE_CHECKING:
    import evaluate

#: Name of each bundled metric -> its class in the module of the same name.
METRICS: dict[str, str] = {
    "accuracy": "Accuracy",
    "f1": "F1",
    "precision": "Precision",
    "recall": "Recall",
    "token_perplexity": "TokenPerplexity",
}

__all__ = ["METRICS", "load_metric", "metric_path"]


def _check_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(
            f"name must be a string, one of {sorted(METRICS)}; got {type(name).__name__} {name!r}."
        )
    if name not in METRICS:
        raise ValueError(
            f"name={name!r} is not a bundled metric{did_you_mean(name, METRICS)}; choose one of "
            f"{sorted(METRICS)}, or call evaluate.load() yourself for other metrics (needs the Hub or a cached "
            "script)."
        )
    return name


def metric_path(name: str) -> str:
    """Path of the bundled script of metric ``name``, for ``evaluate.load(metric_path(name))``.

    >>> Path(metric_path("accuracy")).name
    'accuracy.py'
    """
    return str(Path(__file__).with_name(f"{_check_name(name)}.py"))


def load_metric(name: str, **kwargs: Any) -> evaluate.EvaluationModule:
    """A bundled metric as an ``evaluate.EvaluationModule``, built without any download.

    Args:
        name: one of :data:`METRICS` (``"accuracy"``, ``"f1"``, ``"precision"``, ``"recall"``,
            ``"token_perplexity"``).
        **kwargs: passed to ``evaluate.EvaluationModule`` (``num_process``, ``process_id``,
            ``experiment_id``, ``cache_dir``...). ``keep_in_memory`` defaults to ``True`` for a
            single process, so no Arrow cache file is written.

    >>> load_metric("recall").compute(predictions=[1, 1, 0], references=[1, 0, 0])
    {'recall': 1.0}
    """
    cls = getattr(importlib.import_module(f"hf_lite.metrics.{_check_name(name)}"), METRICS[name])
    kwargs.setdefault("keep_in_memory", kwargs.get("num_process", 1) == 1)
    return cls(**kwargs)
