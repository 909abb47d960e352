"""The settings of gradual pruning during training: :class:`PruningConfig`, checked when it is made.

:class:`trainers.pruning_callback.PruningCallback` takes one (or its fields as keyword arguments); it parses
from the command line or a YAML/dict with ``transformers.HfArgumentParser`` like any ``TrainingArguments``.

>>> config = PruningConfig(target_sparsity=0.5, end_step=100, frequency=10)
>>> config.schedule().sparsity_at(100), config.nm
(0.5, None)
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from hf_lite.pruning.masks import check_patterns, check_sparsity
from hf_lite.pruning.oneshot import parse_pattern
from hf_lite.pruning.schedule import CubicSchedule, check_ramp
from hf_lite.pruning.targets import DEFAULT_EXCLUDE

__all__ = ["PruningConfig"]

logger = logging.getLogger(__name__)


@dataclass
class PruningConfig:
    """What to prune, how, and on which schedule (see :class:`PruningCallback`).

    Steps are optimizer steps (``TrainerState.global_step``), so gradient accumulation is already folded in.
    Sparsity rises from ``initial_sparsity`` at ``start_step`` to ``target_sparsity`` at ``end_step`` along
    :class:`hf_lite.pruning.CubicSchedule`, with masks recomputed every ``frequency`` steps.

    Args:
        method: importance score: ``"magnitude"`` (``|W|``) or ``"movement"`` (Sanh et al. 2020,
            ``-sum_t W * dL/dW`` accumulated every optimizer step; needs trainable weights, not PEFT, and
            holds one float32 copy of the targeted weights until ``end_step``).
        pattern: ``"unstructured"`` or ``"N:M"`` such as ``"2:4"`` (keep N of every M consecutive weights
            along the input dimension; implies ``target_sparsity = 1 - N/M``).
        scope: ``"layer"`` (each layer pruned to the scheduled sparsity) or ``"global"`` (one threshold over
            all targeted layers; unstructured only).
        target_sparsity: final fraction of zeros in the targeted layers, in ``[0, 1)``; required for
            ``"unstructured"``, implied by an N:M pattern.
        initial_sparsity: sparsity applied at ``start_step``.
        start_step: optimizer step of the first mask update.
        end_step: optimizer step at which ``target_sparsity`` is reached (required, ``> start_step``).
        frequency: recompute masks every this many optimizer steps (and once more at ``end_step``).
        include: regexes of layer names to prune (``None``: every ``nn.Linear``/``Conv1D``).
        exclude: regexes of layer names to leave dense; default :data:`hf_lite.pruning.DEFAULT_EXCLUDE`
            (heads, embeddings, norms, LoRA matrices). A value replaces the default: extend it with
            ``[*DEFAULT_EXCLUDE, "more"]``.

    >>> config = PruningConfig(pattern="2:4", end_step=100, frequency=10)
    >>> config.target_sparsity, config.nm
    (0.5, (2, 4))
    """

    method: Literal["magnitude", "movement"] = field(
        default="magnitude",
        metadata={"help": "Importance score: 'magnitude' (|W|) or 'movement' (-sum W*grad over steps)."},
    )
    pattern: str = field(
        default="unstructured",
        metadata={"help": "'unstructured', or 'N:M' such as '2:4' (keep N of every M consecutive weights)."},
    )
    scope: Literal["layer", "global"] = field(
        default="layer",
        metadata={"help": "'layer': every layer at the scheduled sparsity; 'global': one threshold for all."},
    )
    target_sparsity: float | None = field(
        default=None,
        metadata={
            "help": "Final fraction of zeros in [0, 1). Required for 'unstructured'; N:M implies 1-N/M."
        },
    )
    initial_sparsity: float = field(default=0.0, metadata={"help": "Sparsity applied at start_step."})
    start_step: int = field(default=0, metadata={"help": "Optimizer step of the first mask update."})
    end_step: int | None = field(
        default=None,
        metadata={"help": "Optimizer step at which target_sparsity is reached (required, > start_step)."},
    )
    frequency: int = field(
        default=100, metadata={"help": "Recompute masks every this many optimizer steps (and at end_step)."}
    )
    include: list[str] | None = field(
        default=None, metadata={"help": "Regexes of layer names to prune (default: every Linear/Conv1D)."}
    )
    exclude: list[str] | None = field(
        default_factory=lambda: list(DEFAULT_EXCLUDE),
        metadata={"help": "Regexes of layer names left dense (default: heads, embeddings, norms, LoRA)."},
    )

    def __post_init__(self) -> None:
        if self.method not in ("magnitude", "movement"):
            raise ValueError(
                f"method={self.method!r} is not a pruning method. Use 'magnitude' (|W|, no data needed) or "
                "'movement' (weights moving toward zero during fine-tuning are pruned)."
            )
        if self.scope not in ("layer", "global"):
            raise ValueError(
                f"scope={self.scope!r} is not a pruning scope. Use 'layer' (every layer at the same sparsity) "
                "or 'global' (one threshold over all targeted layers)."
            )
        try:
            nm = parse_pattern(self.pattern)
        except (TypeError, ValueError) as err:
            raise type(err)(f"pattern={self.pattern!r}: {err}") from err
        if nm is None:
            if self.target_sparsity is None:
                raise ValueError(
                    "target_sparsity=None: pattern='unstructured' needs the final fraction of zeros. "
                    "Pass e.g. target_sparsity=0.5, or an N:M pattern such as pattern='2:4'."
                )
            self.target_sparsity = check_sparsity(self.target_sparsity, "target_sparsity")
        else:
            implied = 1.0 - nm[0] / nm[1]
            if self.target_sparsity is not None and not math.isclose(
                check_sparsity(self.target_sparsity, "target_sparsity"), implied, abs_tol=1e-9
            ):
                raise ValueError(
                    f"target_sparsity={self.target_sparsity!r} contradicts pattern={self.pattern!r}, which "
                    f"always ends at sparsity {implied:g}. Leave target_sparsity=None with an N:M pattern."
                )
            self.target_sparsity = implied
            if self.scope == "global":
                raise ValueError(
                    f"scope='global' cannot apply to pattern={self.pattern!r}: N:M sparsity is decided inside "
                    "each group of M weights, so there is no global threshold. Use scope='layer'."
                )
        if self.end_step is None:
            raise ValueError(
                "end_step=None: give the optimizer step at which target_sparsity is reached, e.g. 2/3 of "
                "max_steps, so that the last third of training recovers from the pruning."
            )
        self.include = check_patterns(self.include, "include")
        self.exclude = check_patterns(self.exclude, "exclude")
        check_sparsity(self.initial_sparsity, "initial_sparsity")
        check_ramp(self.initial_sparsity, self.target_sparsity, "target_sparsity")
        self.schedule()  # checks the steps and frequency, naming the offending field
        if self.method == "movement" and self.start_step == 0 and self.initial_sparsity > 0:
            raise ValueError(
                f"initial_sparsity={self.initial_sparsity!r} with method='movement' and start_step=0 would "
                "prune before any gradient is seen (all movement scores are 0). Use start_step >= 1 or "
                "initial_sparsity=0.0."
            )
        if self.frequency > self.end_step - self.start_step:
            logger.warning(
                "frequency=%d is larger than end_step - start_step = %d: masks are updated only at "
                "start_step=%d and end_step=%d, so sparsity jumps instead of ramping up.",
                self.frequency,
                self.end_step - self.start_step,
                self.start_step,
                self.end_step,
            )

    @property
    def nm(self) -> tuple[int, int] | None:
        """``(N, M)`` for an N:M pattern, ``None`` for unstructured."""
        return parse_pattern(self.pattern)

    def schedule(self) -> CubicSchedule:
        """The :class:`~hf_lite.pruning.CubicSchedule` this config describes.

        >>> PruningConfig(target_sparsity=0.5, end_step=10, frequency=5).schedule().sparsity_at(5)
        0.4375
        """
        return CubicSchedule(
            final_sparsity=self.target_sparsity,
            end_step=self.end_step,
            start_step=self.start_step,
            initial_sparsity=self.initial_sparsity,
            frequency=self.frequency,
        )

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-serializable dict (``PruningConfig(**d)`` rebuilds it).

        >>> PruningConfig(target_sparsity=0.3, end_step=10).to_dict()["target_sparsity"]
        0.3
        """
        return dataclasses.asdict(self)
