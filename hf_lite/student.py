"""Initialise a student from its teacher (DistilBERT): keep a subset of the teacher's layers.

The student is a deep copy of the teacher with the other transformer blocks removed and the config
edited (:func:`hf_lite.pruning.prune_layers_`), so it is an ordinary, smaller checkpoint of the same
architecture that stock ``from_pretrained`` loads. DistilBERT kept every other layer of BERT-base and
found this initialisation worth several points over a random one.

>>> from hf_lite import load_model
>>> from hf_lite.student import init_student_from_teacher
>>> teacher = load_model("sentence-transformers/all-MiniLM-L6-v2", "sequence-classification")  # doctest: +SKIP
>>> student = init_student_from_teacher(teacher, layers="every_other")  # layers 0, 2, 4  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_lite.pruning import prune_layers_

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def _num_hidden_layers(config: Any) -> int:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    raise ValueError(
        f"{type(config).__name__} has no num_hidden_layers/n_layer: cannot select layers of this model."
    )


def select_layers(spec: str | int | Sequence[int], num_layers: int) -> list[int]:
    """Teacher layer indices to keep: ``"every_other"`` (0, 2, 4, ...), a count ``n`` (spread evenly, first
    and last included), or explicit indices.

    >>> select_layers("every_other", 6), select_layers(3, 12), select_layers([0, 5], 6)
    ([0, 2, 4], [0, 6, 11], [0, 5])
    """
    if isinstance(spec, str):
        if spec != "every_other":
            raise ValueError(
                f"layers={spec!r} is not understood: use 'every_other', a number of layers, or indices."
            )
        return list(range(0, num_layers, 2))
    if isinstance(spec, bool) or not isinstance(spec, (int, Sequence)):
        raise TypeError(f"layers must be 'every_other', an int or a list of ints; got {type(spec).__name__}.")
    if isinstance(spec, int):
        if not 1 <= spec <= num_layers:
            raise ValueError(f"layers={spec} must be between 1 and the teacher's {num_layers} layers.")
        if spec == 1:
            return [num_layers - 1]
        return sorted({round(i * (num_layers - 1) / (spec - 1)) for i in range(spec)})
    keep = [int(i) for i in spec]
    if not keep:
        raise ValueError("layers=[] keeps no layer: give at least one teacher layer index.")
    bad = [i for i in keep if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"layers {bad} are out of range: the teacher has layers 0..{num_layers - 1}.")
    if len(set(keep)) != len(keep):
        raise ValueError(f"layers={keep} repeats an index: each teacher layer can be kept once.")
    return sorted(keep)


def init_student_from_teacher(
    teacher: PreTrainedModel,
    layers: str | int | Sequence[int] = "every_other",
    *,
    output_dir: str | os.PathLike | None = None,
    tokenizer: Any = None,
) -> PreTrainedModel:
    """A new model made of ``layers`` of ``teacher`` (which is left untouched), optionally saved.

    Args:
        teacher: a transformers model (not a PEFT wrapper: merge adapters first).
        layers: ``"every_other"``, a number of layers, or the teacher's layer indices to keep.
        output_dir: if given, the student (and ``tokenizer``) is saved there with ``save_pretrained``.
        tokenizer: saved beside the student when ``output_dir`` is given.

    Returns:
        The student, in training mode, with ``config.num_hidden_layers`` (``n_layer``) edited.

    >>> from hf_lite.testing import build_tiny_model
    >>> teacher, _ = build_tiny_model("bert", "sequence-classification", num_hidden_layers=4)
    >>> student = init_student_from_teacher(teacher, layers=[0, 3])
    >>> student.config.num_hidden_layers, teacher.config.num_hidden_layers
    (2, 4)
    """
    if hasattr(teacher, "peft_config"):
        raise ValueError(
            "init_student_from_teacher got a PEFT model: merge the adapter first (model.merge_and_unload()) so the "
            "student copies the adapted weights."
        )
    n = _num_hidden_layers(teacher.config)
    keep = select_layers(layers, n)
    student = copy.deepcopy(teacher)
    student.requires_grad_(True)
    drop = [i for i in range(n) if i not in keep]
    if drop:
        prune_layers_(student, drop=drop)
    student.train()
    if output_dir is not None:
        out = Path(output_dir)
        student.save_pretrained(out)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
    return student
