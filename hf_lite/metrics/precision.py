"""Precision as an ``evaluate`` metric that needs no download (scikit-learn's ``precision_score`` definition, numpy only).

Same name, inputs, keyword arguments and output as the Hub's ``evaluate-metric/precision``. Load it with
:func:`hf_lite.metrics.load_metric` or ``evaluate.load(<path of this file>)``.

>>> from hf_lite.metrics import load_metric
>>> load_metric("precision").compute(predictions=[1, 0, 1, 1], references=[1, 1, 0, 1])
{'precision': 0.6666666666666666}
"""

from __future__ import annotations

from typing import Any

import datasets
import evaluate

from ._prf import precision_recall_f1

_DESCRIPTION = "Precision: TP / (TP + FP) per label."
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels.
    references (`list` of `int`): ground-truth labels.
    labels (`list` of `int`, *optional*): labels to score; default all labels present.
    pos_label (`int`, defaults to 1): the positive class for `average="binary"`.
    average (`str` or `None`, defaults to `"binary"`): "binary", "micro", "macro", "weighted" or None (one
        score per label).
    sample_weight (`list` of `float`, *optional*): weight of each example.
    zero_division (`float` or `"warn"`, defaults to 0.0): value of a score whose denominator is 0.
Returns:
    precision (`float`, or `list` of `float` for average=None).
"""
_CITATION = """@article{scikit-learn, title={Scikit-learn: Machine Learning in {P}ython},
author={Pedregosa, F. and others},
journal={Journal of Machine Learning Research}, volume={12}, pages={2825--2830}, year={2011}}"""


class Precision(evaluate.Metric):
    """Precision: TP / (TP + FP) per label. An ``evaluate.Metric``; no Hub access.

    >>> Precision(keep_in_memory=True).compute(predictions=[0, 1, 2, 2], references=[0, 2, 2, 1], average="macro")
    {'precision': 0.5}
    """

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
            reference_urls=[
                "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.precision_score.html"
            ],
        )

    def _compute(
        self,
        predictions: Any,
        references: Any,
        labels: Any = None,
        pos_label: Any = 1,
        average: str | None = "binary",
        sample_weight: Any = None,
        zero_division: Any = 0.0,
    ) -> dict[str, Any]:
        scores = precision_recall_f1(
            predictions,
            references,
            labels=labels,
            pos_label=pos_label,
            average=average,
            sample_weight=sample_weight,
            zero_division=zero_division,
        )
        return {"precision": scores[0]}
