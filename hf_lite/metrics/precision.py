"""Precision as an ``evaluate`` metric that needs no download (scikit-learn's ``precision_score`` definition, numpy only).

Same name, inputs, keyword arguments and output as the Hub's ``evaluate-metric/precision``. Load it with
:func:`hf_lite.metrics.load_metric` or ``evaluate.load(<path of this file>)``.

>>> from hf_lite.metrics import load_metric
>>> load_metric("precision").compute(predictions=[1, 0, 1, 1], references=[1, 1, 0, 1])
{'precision': 0.6666666666666666}
>>> Precision(keep_in_memory=True).compute(predictions=[0, 1, 2, 2], references=[0, 2, 2, 1], average="macro")
{'precision': 0.5}
"""

from __future__ import annotations

from ._prf import prf_metric

Precision = prf_metric("Precision", __name__, "precision", "Precision: TP / (TP + FP) per label.")
