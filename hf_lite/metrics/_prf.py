"""The one implementation behind the ``precision``, ``recall`` and ``f1`` metric scripts (and ``accuracy``'s info).

:func:`precision_recall_f1` computes the three scores from per-label counts with scikit-learn's
definitions (numpy only); :func:`prf_metric` builds the ``evaluate.Metric`` class of one of them, so
each script of this folder is a few lines. The scripts import this module relatively
(``from ._prf import ...``) so that ``evaluate.load`` copies it next to a script it loads.

>>> precision_recall_f1([1, 0, 1, 1], [1, 1, 0, 1], average="binary")
(0.6666666666666666, 0.6666666666666666, 0.6666666666666666)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import datasets
import evaluate
import numpy as np

AVERAGES = ("binary", "micro", "macro", "weighted", None)
#: The scores :func:`precision_recall_f1` returns, in its order.
SCORES = ("precision", "recall", "f1")
SKLEARN_CITATION = """@article{scikit-learn, title={Scikit-learn: Machine Learning in {P}ython},
author={Pedregosa, F. and others},
journal={Journal of Machine Learning Research}, volume={12}, pages={2825--2830}, year={2011}}"""
_PRF_KWARGS_DESCRIPTION = """
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
    {score} (`float`, or `list` of `float` for average=None).
"""


def check_inputs(
    predictions: Any, references: Any, sample_weight: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validated 1-D arrays of class ids (and weights).

    >>> check_inputs([1, 0], [1, 1])[0].tolist()
    [1, 0]
    """
    preds = np.asarray(predictions)
    refs = np.asarray(references)
    if preds.ndim != 1 or refs.ndim != 1:
        raise ValueError(
            f"predictions and references must be 1-D sequences of class ids; got shapes {preds.shape} and "
            f"{refs.shape}. Take the argmax of logits first (multi-label targets are not supported)."
        )
    if preds.shape != refs.shape:
        raise ValueError(
            f"predictions ({preds.shape[0]}) and references ({refs.shape[0]}) have different lengths; pass one "
            "prediction per reference."
        )
    weights = None
    if sample_weight is not None:
        weights = np.asarray(sample_weight, dtype=np.float64)
        if weights.shape != refs.shape:
            raise ValueError(
                f"sample_weight has shape {weights.shape} but there are {refs.shape[0]} references; pass one "
                "weight per reference or None."
            )
    return preds, refs, weights


def _check_zero_division(zero_division: Any) -> float:
    if isinstance(zero_division, str) and zero_division == "warn":
        return 0.0  # scikit-learn's default: 0.0 (it also warns)
    if isinstance(zero_division, (int, float)) and (zero_division in (0, 1) or math.isnan(zero_division)):
        return float(zero_division)
    raise ValueError(f"zero_division={zero_division!r} must be 0.0, 1.0, nan or 'warn' (which gives 0.0).")


def _divide(numerator: np.ndarray, denominator: np.ndarray, zero_division: float) -> np.ndarray:
    mask = denominator == 0
    out = numerator.astype(np.float64) / np.where(mask, 1, denominator).astype(np.float64)
    out[mask] = zero_division
    return out


def _average(values: np.ndarray, weights: np.ndarray | None) -> float:
    """Mean ignoring NaN (a NaN comes from ``zero_division=nan``); all-zero weights fall back to a plain mean."""
    keep = ~np.isnan(values)
    if values.size == 0 or not keep.any():
        return float("nan")
    values = values[keep]
    if weights is not None and weights[keep].sum() > 0:
        return float(np.average(values, weights=weights[keep]))
    return float(values.mean())


def precision_recall_f1(
    predictions: Any,
    references: Any,
    *,
    labels: Sequence[Any] | None = None,
    pos_label: Any = 1,
    average: str | None = "binary",
    sample_weight: Any = None,
    zero_division: Any = 0.0,
) -> tuple[Any, Any, Any]:
    """Precision, recall and F1 exactly as ``sklearn.metrics.precision_recall_fscore_support`` computes them.

    Args:
        predictions: predicted class ids, shape ``(n,)``.
        references: true class ids, shape ``(n,)``.
        labels: the labels to score (and their order for ``average=None``); default: every label present.
        pos_label: the positive class when ``average="binary"``.
        average: ``"binary"`` (only ``pos_label``), ``"micro"`` (global counts), ``"macro"`` (unweighted mean
            over labels), ``"weighted"`` (mean weighted by support) or ``None`` (one score per label).
        sample_weight: optional weight per example.
        zero_division: value of a score whose denominator is 0 (``0.0``, ``1.0`` or ``nan``).

    Returns:
        ``(precision, recall, f1)``: floats, or lists of floats (one per label) for ``average=None``.

    >>> precision_recall_f1([0, 1, 2, 2], [0, 2, 2, 1], average="macro")
    (0.5, 0.5, 0.5)
    """
    if average not in AVERAGES:
        raise ValueError(f"average={average!r} must be one of {list(AVERAGES)}.")
    zero = _check_zero_division(zero_division)
    preds, refs, weights = check_inputs(predictions, references, sample_weight)
    present = np.unique(np.concatenate([refs, preds]))
    if average == "binary":
        if len(present) > 2:
            raise ValueError(
                f"average='binary' needs at most two classes, but predictions and references contain "
                f"{len(present)} ({present.tolist()[:10]}); choose average='macro', 'micro', 'weighted' or None."
            )
        if pos_label not in present.tolist() and len(present) == 2:
            raise ValueError(
                f"pos_label={pos_label!r} is not a valid label; it should be one of {present.tolist()}."
            )
        chosen = np.asarray([pos_label])
    else:
        chosen = present if labels is None else np.asarray(list(labels))
    w = np.ones(refs.shape[0], dtype=np.float64) if weights is None else weights
    true_hit = refs[None, :] == chosen[:, None]  # (labels, n)
    pred_hit = preds[None, :] == chosen[:, None]
    tp = (true_hit & pred_hit).astype(np.float64) @ w
    pred_sum = pred_hit.astype(np.float64) @ w
    true_sum = true_hit.astype(np.float64) @ w
    if average == "micro":
        tp, pred_sum, true_sum = (
            tp.sum(keepdims=True),
            pred_sum.sum(keepdims=True),
            true_sum.sum(keepdims=True),
        )
    precision = _divide(tp, pred_sum, zero)
    recall = _divide(tp, true_sum, zero)
    f1 = _divide(2 * tp, true_sum + pred_sum, zero)
    if average is None:
        return precision.tolist(), recall.tolist(), f1.tolist()
    weight = true_sum if average == "weighted" else None
    return _average(precision, weight), _average(recall, weight), _average(f1, weight)


# ------------------------------------------------------------------------------------------------ metric classes


def class_id_info(description: str, inputs_description: str, sklearn_function: str) -> evaluate.MetricInfo:
    """The ``evaluate.MetricInfo`` of a metric on integer class ids that follows scikit-learn's ``sklearn_function``.

    >>> class_id_info("Accuracy.", "", "accuracy_score").features["predictions"].dtype
    'int64'
    """
    return evaluate.MetricInfo(
        description=description,
        citation=SKLEARN_CITATION,
        inputs_description=inputs_description,
        features=datasets.Features(
            {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
        ),
        reference_urls=[
            f"https://scikit-learn.org/stable/modules/generated/sklearn.metrics.{sklearn_function}.html"
        ],
    )


def prf_metric(class_name: str, module: str, score: str, description: str) -> type[evaluate.Metric]:
    """The ``evaluate.Metric`` class of one of :data:`SCORES`, named ``class_name`` in module ``module``.

    Same name, inputs, keyword arguments and output as the Hub's ``evaluate-metric/<score>``: the
    keyword arguments of :func:`precision_recall_f1`, and ``{score: value}`` out. A metric script
    calls it as ``F1 = prf_metric("F1", __name__, "f1", "F1: ...")``, so ``evaluate.load`` finds the
    class in the script (a base class imported into the script would be found first).

    >>> F1 = prf_metric("F1", __name__, "f1", "F1 score.")
    >>> F1(keep_in_memory=True).compute(predictions=[0, 1, 2, 2], references=[0, 2, 2, 1], average="macro")
    {'f1': 0.5}
    """
    if score not in SCORES:
        raise ValueError(f"score={score!r} must be one of {list(SCORES)}.")
    index = SCORES.index(score)

    def _info(self: evaluate.Metric) -> evaluate.MetricInfo:
        return class_id_info(description, _PRF_KWARGS_DESCRIPTION.format(score=score), f"{score}_score")

    def _compute(
        self: evaluate.Metric,
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
        return {score: scores[index]}

    namespace = {
        "__module__": module,
        "__qualname__": class_name,
        "__doc__": f"{description} An ``evaluate.Metric``; no Hub access.",
        "_info": _info,
        "_compute": _compute,
    }
    return type(class_name, (evaluate.Metric,), namespace)
