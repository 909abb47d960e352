"""Precision, recall and F1 from per-label counts, with scikit-learn's definitions (numpy only).

Shared by the ``f1``, ``precision`` and ``recall`` metric scripts of this folder. It is imported
relatively (``from ._prf import ...``) so that ``evaluate.load`` copies it next to a script it loads.

>>> precision_recall_f1([1, 0, 1, 1], [1, 1, 0, 1], average="binary")
(0.6666666666666666, 0.6666666666666666, 0.6666666666666666)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

AVERAGES = ("binary", "micro", "macro", "weighted", None)


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
