"""Classification metrics (accuracy, F1, precision, recall) through the bundled ``evaluate`` modules.

>>> classification_metrics([1, 0, 1, 1], [1, 0, 0, 1])
{'accuracy': 0.75, 'f1': 0.8, 'precision': 0.6666666666666666, 'recall': 1.0}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from hf_lite.evaluation._inputs import MODEL_INPUTS, batches, model_device, pad_id
from hf_lite.metrics import load_metric

#: Values of ``average``: ``"auto"`` is ``"binary"`` for two classes, else ``"macro"``.
AVERAGES = ("auto", "binary", "micro", "macro", "weighted")


def check_average(average: Any) -> str:
    """``average`` when it is one of :data:`AVERAGES`.

    >>> check_average("macro")
    'macro'
    """
    if not isinstance(average, str) or average not in AVERAGES:
        raise ValueError(f"average={average!r} must be one of {list(AVERAGES)}.")
    return average


def _as_class_ids(values: Any, name: str) -> np.ndarray:
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
    check_average(average)
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
    check_average(average)

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        logits = (
            eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        )
        return classification_metrics(logits, eval_pred.label_ids, average=average, pos_label=pos_label)

    return compute_metrics


def predict_classes(model: Any, dataset: Dataset, batch_size: int) -> tuple[list[int], list[int]]:
    """Predicted class ids (argmax of the logits) and the ``labels`` of every row of ``dataset``."""
    inputs = [c for c in MODEL_INPUTS if c in dataset.column_names]
    preds: list[int] = []
    refs: list[int] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in batches(
                dataset, batch_size, [*inputs, "labels"], pad_id(model), model_device(model), "evaluate"
            ):
                labels = batch.pop("labels")
                logits = model(**batch).logits  # (batch, num_labels)
                preds += logits.argmax(-1).tolist()
                refs += labels.tolist()
    finally:
        model.train(was_training)
    return preds, refs
