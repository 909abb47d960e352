"""F1 as an ``evaluate`` metric that needs no download (scikit-learn's ``f1_score`` definition, numpy only).

Same name, inputs, keyword arguments and output as the Hub's ``evaluate-metric/f1``. Load it with
:func:`hf_lite.metrics.load_metric` or ``evaluate.load(<path of this file>)``.

>>> from hf_lite.metrics import load_metric
>>> load_metric("f1").compute(predictions=[1, 0, 1, 1], references=[1, 1, 0, 1])
{'f1': 0.6666666666666666}
>>> F1(keep_in_memory=True).compute(predictions=[0, 1, 2, 2], references=[0, 2, 2, 1], average="macro")
{'f1': 0.5}
"""

from __future__ import annotations

from ._prf import prf_metric

F1 = prf_metric(
    "F1", __name__, "f1", "F1: harmonic mean of precision and recall, 2 TP / (2 TP + FP + FN) per label."
)
