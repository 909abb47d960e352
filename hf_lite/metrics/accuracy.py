"""Accuracy as an ``evaluate`` metric that needs no download: the fraction of predictions equal to the references.

Same name, inputs and output as the Hub's ``evaluate-metric/accuracy`` (scikit-learn's ``accuracy_score``),
computed with numpy. Load it with :func:`hf_lite.metrics.load_metric` or ``evaluate.load(<path of this file>)``.

>>> from hf_lite.metrics import load_metric
>>> load_metric("accuracy").compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0])
{'accuracy': 0.75}
"""

from __future__ import annotations

from typing import Any

import evaluate
import numpy as np

from ._prf import class_id_info

_DESCRIPTION = (
    "Accuracy: (number of correct predictions) / (number of predictions); with sample_weight, weighted."
)
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels.
    references (`list` of `int`): ground-truth labels.
    normalize (`bool`, defaults to `True`): if `False`, return the (weighted) number of correct predictions.
    sample_weight (`list` of `float`, *optional*): weight of each example.
Returns:
    accuracy (`float`): in [0, 1] when `normalize=True`.
"""


class Accuracy(evaluate.Metric):
    """Fraction of correct predictions (an ``evaluate.Metric``; no Hub access).

    >>> Accuracy(keep_in_memory=True).compute(predictions=[1, 1], references=[1, 0], normalize=False)
    {'accuracy': 1.0}
    """

    def _info(self) -> evaluate.MetricInfo:
        return class_id_info(_DESCRIPTION, _KWARGS_DESCRIPTION, "accuracy_score")

    def _compute(
        self, predictions: Any, references: Any, normalize: bool = True, sample_weight: Any = None
    ) -> dict[str, float]:
        preds, refs = np.asarray(predictions), np.asarray(references)
        if preds.shape != refs.shape:
            raise ValueError(
                f"predictions ({preds.shape[0]}) and references ({refs.shape[0]}) have different lengths."
            )
        weights = (
            np.ones(refs.shape[0]) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        )
        if weights.shape != refs.shape:
            raise ValueError(
                f"sample_weight has shape {weights.shape}; pass one weight per reference or None."
            )
        correct = float(weights[preds == refs].sum())
        if not normalize:
            return {"accuracy": correct}
        return {"accuracy": correct / float(weights.sum()) if weights.sum() else float("nan")}
