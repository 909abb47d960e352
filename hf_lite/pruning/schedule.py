"""Gradual pruning schedules: how sparse the model should be at a given optimizer step.

Steps are **optimizer steps** (what ``TrainerState.global_step`` counts, so gradient accumulation is
already folded in), never micro-batches.

>>> schedule = CubicSchedule(final_sparsity=0.9, start_step=0, end_step=100, frequency=10)
>>> [round(schedule.sparsity_at(t), 3) for t in (0, 50, 100, 200)]
[0.0, 0.787, 0.9, 0.9]
>>> schedule.should_update(10), schedule.should_update(15)
(True, False)
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

from hf_lite.pruning.masks import check_sparsity

__all__ = ["CubicSchedule", "cubic_progress", "check_ramp"]


def _check_step(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int (an optimizer step); got {type(value).__name__} {value!r}.")
    return int(value)


def cubic_progress(fraction: float) -> float:
    """How far the cubic schedule has gone toward its target when ``fraction`` of its span has passed:
    ``1 - (1 - fraction) ** 3`` (fast at first, slow at the end).

    The one coding of the curve: :meth:`CubicSchedule.progress_at` uses it for steps, a staged schedule
    (structural pruning) for ``stage / num_stages``.

    >>> cubic_progress(0.0), cubic_progress(0.5), cubic_progress(1.0)
    (0.0, 0.875, 1.0)
    """
    return 1.0 - (1.0 - fraction) ** 3


def check_ramp(initial: float, final: float, final_name: str = "final_sparsity") -> None:
    """Refuse an ``initial_sparsity`` above the final one: the cubic schedule only increases sparsity.

    Args:
        initial: the checked ``initial_sparsity``.
        final: the checked final sparsity.
        final_name: the name of the final-sparsity argument the caller took (``"target_sparsity"`` in
            ``PruningConfig``), so the message names what the user passed.

    >>> check_ramp(0.4, 0.2, "target_sparsity")
    Traceback (most recent call last):
    ...
    ValueError: initial_sparsity=0.4 is above target_sparsity=0.2: the cubic schedule only increases sparsity. Lower initial_sparsity (0.0 is the usual choice).
    """
    if initial > final:
        raise ValueError(
            f"initial_sparsity={initial!r} is above {final_name}={final!r}: the cubic schedule only increases "
            "sparsity. Lower initial_sparsity (0.0 is the usual choice)."
        )


@dataclass(frozen=True)
class CubicSchedule:
    """The cubic sparsity schedule of Zhu & Gupta 2017 ("To prune, or not to prune").

    Sparsity rises from ``initial_sparsity`` at ``start_step`` to ``final_sparsity`` at ``end_step``,
    fast at first (while there are many redundant weights) and slowly at the end:

        s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3,    t0 <= t <= t0 + n * dt

    with ``t0 = start_step`` and ``n * dt = end_step - start_step``. Masks are recomputed every
    ``frequency`` optimizer steps (``dt``) from ``start_step``, and once more at ``end_step`` so the final
    sparsity is reached even when ``end_step - start_step`` is not a multiple of ``frequency``. Before
    ``start_step`` the model is dense (sparsity 0); after ``end_step`` the sparsity stays at
    ``final_sparsity`` (masks are still re-applied after each step by the caller, but not recomputed).

    Args:
        final_sparsity: sparsity reached at ``end_step``, in ``[0, 1)``.
        end_step: optimizer step at which ``final_sparsity`` is reached (``> start_step``).
        start_step: optimizer step of the first pruning update (``>= 0``).
        initial_sparsity: sparsity applied at ``start_step``, in ``[0, final_sparsity]``.
        frequency: recompute masks every ``frequency`` optimizer steps (``>= 1``).

    Example:

    >>> s = CubicSchedule(final_sparsity=0.8, start_step=100, end_step=1100, frequency=100)
    >>> s.sparsity_at(50), s.sparsity_at(100), round(s.sparsity_at(600), 4), s.sparsity_at(1100)
    (0.0, 0.0, 0.7, 0.8)
    >>> s.last_update_step(650)
    600
    """

    final_sparsity: float = field(metadata={"help": "Sparsity reached at end_step, in [0, 1)."})
    end_step: int = field(metadata={"help": "Optimizer step at which final_sparsity is reached."})
    start_step: int = field(default=0, metadata={"help": "Optimizer step of the first pruning update."})
    initial_sparsity: float = field(default=0.0, metadata={"help": "Sparsity applied at start_step."})
    frequency: int = field(default=1, metadata={"help": "Recompute masks every this many optimizer steps."})

    def __post_init__(self) -> None:
        final = check_sparsity(self.final_sparsity, "final_sparsity")
        initial = check_sparsity(self.initial_sparsity, "initial_sparsity")
        start = _check_step(self.start_step, "start_step")
        end = _check_step(self.end_step, "end_step")
        frequency = _check_step(self.frequency, "frequency")
        check_ramp(self.initial_sparsity, self.final_sparsity)
        if start < 0:
            raise ValueError(f"start_step={start} is negative; pass an optimizer step >= 0.")
        if end <= start:
            raise ValueError(
                f"end_step={end} must be greater than start_step={start}: sparsity ramps up between them. "
                "Set end_step to a later optimizer step (e.g. 75% of the training steps)."
            )
        if frequency < 1:
            raise ValueError(
                f"frequency={frequency} must be >= 1 (masks are recomputed every `frequency` steps)."
            )
        # Store normalized values (plain float/int) on the frozen instance.
        normalized = {
            "final_sparsity": final,
            "initial_sparsity": initial,
            "start_step": start,
            "end_step": end,
            "frequency": frequency,
        }
        for name, value in normalized.items():
            object.__setattr__(self, name, value)

    def sparsity_at(self, step: int) -> float:
        """Target sparsity at optimizer step ``step``, from the formula (0 before ``start_step``,
        ``final_sparsity`` from ``end_step`` on).

        Args:
            step: optimizer step (``TrainerState.global_step``).

        Returns:
            A float in ``[0, final_sparsity]``.

        >>> CubicSchedule(final_sparsity=0.5, end_step=10).sparsity_at(10)
        0.5
        """
        step = _check_step(step, "step")
        if step < self.start_step:
            return 0.0
        if step >= self.end_step:
            return self.final_sparsity
        progress = (step - self.start_step) / (self.end_step - self.start_step)
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (1.0 - progress) ** 3

    def progress_at(self, step: int) -> float:
        """Fraction of the way from ``initial_sparsity`` to ``final_sparsity`` at optimizer step ``step``:
        :func:`cubic_progress` of the elapsed part of ``[start_step, end_step]`` (0 before, 1 from the end).

        Args:
            step: optimizer step.

        Returns:
            A float in ``[0, 1]``.

        >>> CubicSchedule(final_sparsity=0.5, end_step=4).progress_at(2)
        0.875
        """
        step = _check_step(step, "step")
        if step < self.start_step:
            return 0.0
        if step >= self.end_step:
            return 1.0
        return cubic_progress((step - self.start_step) / (self.end_step - self.start_step))

    def should_update(self, step: int) -> bool:
        """Whether masks are recomputed at optimizer step ``step``: ``start_step``, every ``frequency``
        steps after it, and ``end_step``.

        Args:
            step: optimizer step.

        Returns:
            ``True`` on an update step.

        >>> s = CubicSchedule(final_sparsity=0.5, start_step=2, end_step=9, frequency=3)
        >>> [t for t in range(12) if s.should_update(t)]
        [2, 5, 8, 9]
        """
        step = _check_step(step, "step")
        if not self.start_step <= step <= self.end_step:
            return False
        return (step - self.start_step) % self.frequency == 0 or step == self.end_step

    def last_update_step(self, step: int) -> int | None:
        """The latest update step ``<= step`` (``None`` before ``start_step``): the step whose sparsity is
        in force at ``step``. A callback resuming from a checkpoint at ``step`` rebuilds its masks at
        ``sparsity_at(last_update_step(step))``.

        Args:
            step: optimizer step.

        Returns:
            An update step, or ``None`` if pruning has not started.

        >>> CubicSchedule(final_sparsity=0.5, start_step=2, end_step=9, frequency=3).last_update_step(7)
        5
        """
        step = _check_step(step, "step")
        if step < self.start_step:
            return None
        if step >= self.end_step:
            return self.end_step
        return step - (step - self.start_step) % self.frequency
