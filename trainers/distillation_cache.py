"""Training :class:`~trainers.distillation_trainer.DistillationTrainer` from a teacher cache (precomputed top-k
teacher outputs, :mod:`hf_lite.teacher_cache`) instead of a live teacher: which settings that supports, and
reading the cache a batch of rows at a time.

>>> cache_metadata(None) is None  # no dataset, or one without cached teacher columns
True
"""

from __future__ import annotations

from typing import Any

import datasets

from hf_lite import losses
from hf_lite.teacher_cache import TeacherCacheRows, teacher_cache_metadata
from trainers.distillation_models import model_task

__all__ = ["TeacherCacheMixin", "cache_metadata"]


def cache_metadata(dataset: Any) -> dict[str, Any] | None:
    """The teacher cache's metadata when ``dataset`` carries cached teacher outputs, else None."""
    columns = getattr(dataset, "column_names", None) or []
    if "teacher_topk_logprobs" not in columns:
        return None
    return teacher_cache_metadata(dataset)


class TeacherCacheMixin:
    """``_init_from_cache`` (the trainer's state without a teacher) and ``get_train_dataloader`` (cache rows
    read a batch at a time) for a trainer with ``cache_meta``."""

    args: Any
    cache_meta: dict[str, Any] | None
    train_dataset: Any

    def _init_from_cache(self, args: Any) -> None:
        meta = self.cache_meta
        unsupported = {
            "hidden_weight": args.hidden_weight > 0,
            "attention_weight": args.attention_weight > 0,
            "loss_type": args.loss_type not in losses.TOPK_LOSS_TYPES,
            "teacher_weights": args.teacher_weights is not None,
            "chunk_size": args.chunk_size is not None,
        }
        bad = [k for k, v in unsupported.items() if v]
        if bad:
            raise ValueError(
                f"Training from a teacher cache supports the top-k forward KL (plus cross-entropy) only; unset {bad}. "
                "Hidden states, attention maps and other divergences need the live teacher."
            )
        if abs(meta["temperature"] - args.temperature) > 1e-12:
            raise ValueError(
                f"The teacher cache was computed at temperature={meta['temperature']} but args.temperature="
                f"{args.temperature}: set temperature={meta['temperature']} or recompute the cache."
            )
        self.teachers, self.teacher_weights, self.projections = [], [1.0], None
        self.task = model_task(self.model)
        self._vocab_size = int(meta["vocab_size"])
        self.model_accepts_loss_kwargs = True
        self._component_sums = {}
        self._component_last_step = 0
        self._step_counts = None

    def get_train_dataloader(self) -> Any:
        """Training from a teacher cache reads it a batch of rows at a time
        (:class:`hf_lite.teacher_cache.TeacherCacheRows`): ``datasets`` would turn each of its ``(seq, k)``
        values into a Python object first, which costs about as much as a small student's step."""
        dataset = self.train_dataset
        strategy = getattr(self.args, "train_sampling_strategy", "random")
        if (
            self.cache_meta is None
            or strategy not in ("random", "sequential")
            or not isinstance(dataset, datasets.Dataset)
        ):
            return super().get_train_dataloader()  # length-grouped samplers read the dataset's columns
        self.train_dataset = TeacherCacheRows(dataset)
        try:
            return super().get_train_dataloader()
        finally:
            self.train_dataset = dataset
