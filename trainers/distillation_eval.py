"""The parts of a distillation evaluation's loss: ``eval_loss_ce`` and ``eval_loss_kd`` beside ``eval_loss``.

In evaluation :class:`~trainers.distillation_trainer.DistillationTrainer` keeps transformers' meaning of
``eval_loss``: the loss the trainer minimises (``compute_loss`` on the evaluation set: the mixed
``alpha * KD + (1 - alpha) * CE`` plus any hidden/attention terms), so that ``metric_for_best_model="loss"``,
``load_best_model_at_end`` and ``EarlyStoppingCallback`` compare it with the training ``loss`` as they do for every
Trainer (TRL's distillation trainers report their objective the same way). That number depends on ``alpha`` and
the temperature, so it is no yardstick between runs; beside it come

* ``eval_loss_ce``: the student's plain cross-entropy on the labels (computed also when ``alpha == 1``), each
  batch a mean over its labelled tokens, averaged over batches weighted by their rows as transformers averages
  ``eval_loss``: the number a fine-tuned model's ``eval_loss`` gives, so a distilled and a fine-tuned model
  compare directly;
* ``eval_loss_kd``: the distillation term alone (with its ``T**2``).

Under several processes every batch is gathered as transformers gathers ``eval_loss`` (so the same rows count).

>>> import torch
>>> parts = EvalLossParts()
>>> parts.add({"loss_ce": torch.tensor(1.0), "loss_kd": torch.tensor(0.5)}, rows=3)
>>> parts.add({"loss_ce": torch.tensor(2.0), "loss_kd": torch.tensor(0.5)}, rows=1)
>>> parts.metrics("eval")
{'eval_loss_ce': 1.25, 'eval_loss_kd': 0.5}
"""

from __future__ import annotations

from typing import Any

import torch

from hf_lite.losses import cross_entropy_loss


class EvalLossParts:
    """Row-weighted sums of per-batch loss parts over one evaluation, turned into ``{prefix}_{name}`` metrics."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.rows = 0

    def add(self, parts: dict[str, torch.Tensor], rows: int, gather: Any = None) -> None:
        """One evaluation batch of ``rows`` examples, each part that batch's mean. ``gather`` (the Trainer's
        ``gather_function``, ``accelerator.gather_for_metrics``) collects every process's batch as transformers
        does for ``eval_loss``: the rows repeated to even out the processes' last batches are dropped."""
        names = sorted(parts)
        values = torch.stack([parts[n].detach().float().reshape(()) for n in names])  # (P,)
        per_row = values.repeat(rows, 1)  # (rows, P)
        if gather is not None:
            per_row = gather(per_row)  # (rows of every process, P)
        totals = per_row.double().sum(0).tolist()
        for name, total in zip(names, totals, strict=True):
            self.sums[name] = self.sums.get(name, 0.0) + total
        self.rows += per_row.shape[0]

    def add_batch(
        self, logit: Any, student_logits: torch.Tensor, labels: torch.Tensor, rows: int, gather: Any = None
    ) -> None:
        """One batch from the trainer: ``logit`` (:class:`hf_lite.losses.DistillationLosses`) and, when it has no
        CE part (``alpha == 1``), the CE of ``student_logits`` on ``labels`` (already aligned, ``-100`` left out)."""
        ce = logit.ce if logit.ce is not None else cross_entropy_loss(student_logits.detach(), labels)
        self.add({"loss_ce": ce, "loss_kd": logit.kd}, rows, gather)

    def metrics(self, prefix: str) -> dict[str, float]:
        """``{f"{prefix}_{name}": row-weighted mean}`` (``{}`` when no batch was added)."""
        if not self.rows:
            return {}
        return {f"{prefix}_{name}": total / self.rows for name, total in sorted(self.sums.items())}


class EvalLossMixin:
    """Puts ``{prefix}_loss_ce`` and ``{prefix}_loss_kd`` into a ``Trainer``'s evaluation metrics, from the
    batches its ``compute_loss`` adds to :attr:`eval_parts` (a fresh :class:`EvalLossParts` per evaluation)."""

    eval_parts: EvalLossParts = EvalLossParts()  # replaced at each evaluation_loop

    def evaluation_loop(self, *args: Any, metric_key_prefix: str = "eval", **kwargs: Any) -> Any:
        self.eval_parts = EvalLossParts()
        output = super().evaluation_loop(*args, metric_key_prefix=metric_key_prefix, **kwargs)  # type: ignore[misc]
        output.metrics.update(self.eval_parts.metrics(metric_key_prefix))
        return output
