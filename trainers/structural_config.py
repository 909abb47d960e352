"""The configuration of gradual structural pruning: targets, stage steps and schedule, scoring method.

:class:`StructuralPruningConfig` says what :class:`trainers.StructuralPruningCallback` removes, when, and
how it ranks what it removes; :meth:`StructuralPruningConfig.plan` turns it into one :class:`StageTarget` per
stage for a model of given sizes.

>>> config = StructuralPruningConfig(ffn_keep_ratio=0.5, end_step=90, num_stages=3, schedule="linear")
>>> [(t.step, t.ffn) for t in config.plan({"ffn": 128})]
[(30, 107), (60, 85), (90, 64)]
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from hf_lite.pruning.schedule import cubic_progress
from hf_lite.pruning.structural import keep_count, round_up

__all__ = ["STRUCTURE_KINDS", "StageTarget", "StructuralPruningConfig"]

logger = logging.getLogger(__name__)

#: Sizes a stage can change, in the order a stage applies them (FFN neurons, then groups, then blocks).
STRUCTURE_KINDS = ("ffn", "kv_groups", "layers")


def _check_ratio(value: object, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < float(value) <= 1.0:
        raise ValueError(
            f"{name}={value!r} must be a fraction in (0, 1]: the share of the original structures kept at "
            "end_step (0.5 keeps half). Pass e.g. 0.5, not a percentage."
        )
    return float(value)


def _check_int(value: object, name: str, minimum: int, why: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise ValueError(f"{name}={value!r} must be an int >= {minimum}: {why}.")
    return int(value)


class StageTarget(NamedTuple):
    """What one stage shrinks to: ``None`` for a size the stage leaves as it is.

    >>> StageTarget(step=10, ffn=64, kv_groups=None, layers=None).ffn
    64
    """

    step: int
    ffn: int | None
    kv_groups: int | None
    layers: int | None


@dataclass
class StructuralPruningConfig:
    """What to remove, when, and how to rank it (see :class:`StructuralPruningCallback`).

    Steps are optimizer steps (``TrainerState.global_step``). Stage ``k = 1..num_stages`` happens right after
    optimizer step ``start_step + round(k * (end_step - start_step) / num_stages)``; the last one at
    ``end_step`` reaches the targets. Between stages the fraction of the way to the targets follows
    ``schedule``: ``"linear"`` (``k / K``) or ``"cubic"`` (``1 - (1 - k / K) ** 3``, Zhu & Gupta 2017: large
    cuts first, while much is redundant, small cuts near the end).

    Args:
        ffn_keep_ratio: fraction of the original FFN neurons kept at the end (every block the same width).
        kv_groups_keep_ratio: fraction of the original key/value head groups kept at the end (a group is one
            key/value head with the query heads that read it); decoders whose config has ``head_dim`` only
            (Llama, Mistral, Qwen2, ...).
        num_layers: number of transformer blocks kept at the end, chosen by block influence (ShortGPT) on
            calibration batches.
        start_step: shrinking starts after this optimizer step (no stage at ``start_step`` itself).
        end_step: optimizer step of the last stage, at which the targets are reached (required).
        num_stages: number of shrinking steps between ``start_step`` and ``end_step``.
        schedule: ``"cubic"`` or ``"linear"`` progress to the targets over the stages.
        importance: how FFN neurons and groups are ranked: ``"magnitude"`` (weight norms, no data),
            ``"activation"`` (mean ``|activation|`` on calibration batches) or ``"taylor"``
            (``|sum w * dL/dw|`` over the training gradients of the ``taylor_steps`` optimizer steps before each
            stage, the training loss itself: the distillation loss under DistillationTrainer).
        taylor_steps: optimizer steps before each stage whose gradients the Taylor scores sum.
        num_calibration_batches: batches drawn from the training set (the train dataloader's dataset and
            collator, ``per_device_train_batch_size`` x processes rows each, a seeded random subset; under DDP
            each process scores its share) when no ``calibration_batches`` are given: for ``"activation"`` and
            for block influence.
        ffn_multiple_of: round every FFN width up to a multiple of this (8 or 64 suit GPU kernels).

    >>> config = StructuralPruningConfig(ffn_keep_ratio=0.5, end_step=90, num_stages=3, schedule="linear")
    >>> config.stage_steps(), [t.ffn for t in config.plan({"ffn": 128})]
    ([30, 60, 90], [107, 85, 64])
    """

    ffn_keep_ratio: float | None = field(
        default=None, metadata={"help": "Fraction of the FFN neurons kept at end_step, in (0, 1]."}
    )
    kv_groups_keep_ratio: float | None = field(
        default=None,
        metadata={"help": "Fraction of the key/value head groups kept at end_step (Llama-style models)."},
    )
    num_layers: int | None = field(
        default=None, metadata={"help": "Number of transformer blocks kept at end_step (block influence)."}
    )
    start_step: int = field(default=0, metadata={"help": "Shrinking starts after this optimizer step."})
    end_step: int | None = field(
        default=None, metadata={"help": "Optimizer step of the last stage, where the targets are reached."}
    )
    num_stages: int = field(default=4, metadata={"help": "Number of shrinking steps up to end_step."})
    schedule: Literal["cubic", "linear"] = field(
        default="cubic", metadata={"help": "Progress to the targets over the stages: 'cubic' or 'linear'."}
    )
    importance: Literal["magnitude", "activation", "taylor"] = field(
        default="magnitude",
        metadata={
            "help": "Ranking of neurons/groups: 'magnitude', 'activation' or 'taylor' (train gradients)."
        },
    )
    taylor_steps: int = field(
        default=8, metadata={"help": "Optimizer steps before each stage whose gradients Taylor scores sum."}
    )
    num_calibration_batches: int = field(
        default=4,
        metadata={
            "help": "Training batches used for 'activation' and block influence (no calibration_batches)."
        },
    )
    ffn_multiple_of: int = field(
        default=1, metadata={"help": "Round every FFN width up to a multiple of this (8 or 64 on GPUs)."}
    )

    def __post_init__(self) -> None:
        self.ffn_keep_ratio = _check_ratio(self.ffn_keep_ratio, "ffn_keep_ratio")
        self.kv_groups_keep_ratio = _check_ratio(self.kv_groups_keep_ratio, "kv_groups_keep_ratio")
        if self.num_layers is not None:
            self.num_layers = _check_int(self.num_layers, "num_layers", 1, "at least one block must remain")
        if self.ffn_keep_ratio is None and self.kv_groups_keep_ratio is None and self.num_layers is None:
            raise ValueError(
                "StructuralPruningConfig has no target: set at least one of ffn_keep_ratio (e.g. 0.5), "
                "kv_groups_keep_ratio (e.g. 0.5) or num_layers (blocks kept)."
            )
        if self.schedule not in ("cubic", "linear"):
            raise ValueError(f"schedule={self.schedule!r} is not a schedule; use 'cubic' or 'linear'.")
        if self.importance not in ("magnitude", "activation", "taylor"):
            raise ValueError(
                f"importance={self.importance!r} is not known. Use 'magnitude' (weight norms), 'activation' "
                "(mean |activation| on calibration batches) or 'taylor' (|w * grad| from training gradients)."
            )
        self.start_step = _check_int(self.start_step, "start_step", 0, "the first optimizer step is 1")
        if self.end_step is None:
            raise ValueError(
                "end_step=None: give the optimizer step of the last stage, e.g. 2/3 of max_steps, so that the "
                "last third of training recovers from the shrinking."
            )
        self.end_step = _check_int(self.end_step, "end_step", 1, "it is the optimizer step of the last stage")
        self.num_stages = _check_int(self.num_stages, "num_stages", 1, "one stage shrinks in one go")
        if self.end_step - self.start_step < self.num_stages:
            raise ValueError(
                f"end_step={self.end_step} - start_step={self.start_step} leaves {self.end_step - self.start_step} "
                f"optimizer steps for num_stages={self.num_stages}: each stage needs its own step. Raise end_step "
                "or lower num_stages."
            )
        self.taylor_steps = _check_int(self.taylor_steps, "taylor_steps", 1, "Taylor scores need a gradient")
        self.num_calibration_batches = _check_int(
            self.num_calibration_batches, "num_calibration_batches", 1, "scores need data"
        )
        self.ffn_multiple_of = _check_int(self.ffn_multiple_of, "ffn_multiple_of", 1, "1 means no rounding")
        if self.importance != "taylor" and self.taylor_steps != 8:
            logger.warning("taylor_steps=%d is ignored: importance=%r.", self.taylor_steps, self.importance)
        if self.ffn_keep_ratio is None and self.ffn_multiple_of != 1:
            logger.warning("ffn_multiple_of=%d is ignored: ffn_keep_ratio is not set.", self.ffn_multiple_of)

    @property
    def needs_calibration(self) -> bool:
        """Whether stages need calibration batches (``"activation"`` scores or block influence)."""
        ranks_with_data = self.importance == "activation" and (
            self.ffn_keep_ratio is not None or self.kv_groups_keep_ratio is not None
        )
        return ranks_with_data or self.num_layers is not None

    def stage_steps(self) -> list[int]:
        """The optimizer steps after which the stages run, ascending, the last one ``end_step``.

        >>> StructuralPruningConfig(num_layers=2, start_step=10, end_step=20, num_stages=3).stage_steps()
        [13, 17, 20]
        """
        span, stages = self.end_step - self.start_step, self.num_stages
        # start + round(k * span / stages) with halves up, in integers (Python's round would halve to even
        # and could give two stages the same step).
        return [self.start_step + (2 * k * span + stages) // (2 * stages) for k in range(1, stages + 1)]

    def progress(self, stage: int) -> float:
        """Fraction of the way to the targets after stage ``stage`` (1-based), by :attr:`schedule` (the cubic
        curve is :func:`hf_lite.pruning.schedule.cubic_progress`, the one of ``CubicSchedule``).

        >>> StructuralPruningConfig(num_layers=2, end_step=4, num_stages=4).progress(2)
        0.875
        """
        x = stage / self.num_stages
        return x if self.schedule == "linear" else cubic_progress(x)

    def final_sizes(self, original: Mapping[str, int]) -> dict[str, int]:
        """The sizes at ``end_step`` for the ``original`` ones (``{"ffn"|"kv_groups"|"layers": count}``).

        >>> StructuralPruningConfig(ffn_keep_ratio=0.3, ffn_multiple_of=8, end_step=4).final_sizes({"ffn": 128})
        {'ffn': 40}
        """
        out = {}
        if self.ffn_keep_ratio is not None:
            out["ffn"] = keep_count(self.ffn_keep_ratio, original["ffn"], self.ffn_multiple_of)
        if self.kv_groups_keep_ratio is not None:
            out["kv_groups"] = keep_count(self.kv_groups_keep_ratio, original["kv_groups"])
        if self.num_layers is not None:
            out["layers"] = self.num_layers
        for kind, value in out.items():
            name = {"ffn": "ffn_keep_ratio", "kv_groups": "kv_groups_keep_ratio", "layers": "num_layers"}[
                kind
            ]
            if value < 1:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} keeps 0 of {original[kind]} {kind}; at least 1 must remain."
                )
            if value > original[kind]:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} asks for {value} {kind} but the model has {original[kind]}: "
                    "pruning removes structures, it cannot add any."
                )
        return out

    def plan(self, original: Mapping[str, int]) -> list[StageTarget]:
        """The stages for a model of ``original`` sizes; a stage that would change nothing is left out.

        Args:
            original: ``{"ffn": width, "kv_groups": groups, "layers": blocks}`` (the targeted ones).

        Returns:
            One :class:`StageTarget` per stage that shrinks something, in step order.

        >>> config = StructuralPruningConfig(kv_groups_keep_ratio=0.25, num_layers=4, end_step=30, num_stages=3)
        >>> [(t.step, t.kv_groups, t.layers) for t in config.plan({"kv_groups": 8, "layers": 8})]
        [(10, 4, 5), (20, 2, 4)]

        (cubic: after rounding, stage 2 already reaches the targets and stage 3 has nothing left to remove.)
        """
        final = self.final_sizes(original)
        plan, current = [], {kind: original[kind] for kind in final}
        for k, step in enumerate(self.stage_steps(), start=1):
            frac = 1.0 if k == self.num_stages else self.progress(k)
            change: dict[str, int | None] = dict.fromkeys(STRUCTURE_KINDS)
            for kind, target in final.items():
                size = original[kind] - math.floor((original[kind] - target) * frac + 0.5)
                if kind == "ffn":
                    size = round_up(size, self.ffn_multiple_of, original[kind])
                size = max(target, min(size, current[kind]))
                if size < current[kind]:
                    change[kind] = current[kind] = size
            if any(v is not None for v in change.values()):
                plan.append(StageTarget(step, change["ffn"], change["kv_groups"], change["layers"]))
        return plan

    @property
    def kinds(self) -> list[str]:
        """The sizes this config changes, in :data:`STRUCTURE_KINDS` order.

        >>> StructuralPruningConfig(num_layers=2, ffn_keep_ratio=0.5, end_step=4).kinds
        ['ffn', 'layers']
        """
        values = (self.ffn_keep_ratio, self.kv_groups_keep_ratio, self.num_layers)
        return [kind for kind, value in zip(STRUCTURE_KINDS, values, strict=True) if value is not None]

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-serializable dict (``StructuralPruningConfig(**d)`` rebuilds it).

        >>> StructuralPruningConfig(num_layers=3, end_step=10).to_dict()["num_layers"]
        3
        """
        return dataclasses.asdict(self)
