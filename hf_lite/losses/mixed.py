r"""Distillation and hard-label cross-entropy in one pass over the logits, full or cached top-k teacher.

:math:`\alpha\,\mathcal{L}_{KD} + (1-\alpha)\,\mathcal{L}_{CE}` with one softmax of the student shared by
both terms and one gradient buffer; the same value and gradient as combining the separate losses.

>>> import torch
>>> from hf_lite.losses import shift_labels
>>> student, teacher = torch.randn(2, 6, 50), torch.randn(2, 6, 50)
>>> out = distillation_and_ce_loss(student, teacher, shift_labels(torch.randint(0, 50, (2, 6))), alpha=0.5)
>>> sorted(out._fields)
['ce', 'kd', 'loss']
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from hf_lite.losses import fused
from hf_lite.losses._checks import (
    LossType,
    NumItems,
    check_alpha,
    check_beta,
    check_labels_in_range,
    check_loss_type,
    check_pair,
    check_temperature,
)
from hf_lite.losses._maths import compute_dtype, denominator, prepare_topk
from hf_lite.losses.logits import combine_losses, cross_entropy_loss, distillation_loss

__all__ = ["DistillationLosses", "distillation_and_ce_loss", "topk_distillation_and_ce_loss"]


class DistillationLosses(NamedTuple):
    """What :func:`distillation_and_ce_loss` and :func:`hf_lite.losses.logit_distillation_loss` return:
    ``loss`` (differentiable) and its two parts (detached, for logging; ``ce`` is ``None`` when the entry point
    computes no cross-entropy, ``alpha == 1``).

    >>> import torch
    >>> from hf_lite.losses import logit_distillation_loss
    >>> out = logit_distillation_loss(torch.randn(4, 7), torch.randn(4, 7), labels=torch.arange(4), alpha=0.5)
    >>> loss, kd, ce = out
    >>> torch.allclose(loss, 0.5 * kd + 0.5 * ce)
    True
    """

    loss: torch.Tensor
    kd: torch.Tensor
    ce: torch.Tensor | None


def distillation_and_ce_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float = 0.5,
    loss_type: LossType | str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    num_items_in_batch: NumItems = None,
    compiled: bool = False,
) -> DistillationLosses:
    r"""Distillation and hard-label cross-entropy in one pass over the logits: :math:`\alpha\,\mathcal{L}_{KD} +
    (1-\alpha)\,\mathcal{L}_{CE}`.

    The same value and gradient as ``combine_losses(distillation_loss(s, t, labels=labels, ...),
    cross_entropy_loss(s, labels, ...), alpha)``, both normalized by the same count. When the teacher needs
    no gradient and the divergence has a closed-form gradient (forward KL, reverse KL, JSD), both terms come
    out of one pass that shares the student's softmax (at ``T = 1``) and writes one gradient buffer, so
    distillation plus cross-entropy costs little more than cross-entropy alone. Other cases compute the two
    losses separately.

    Args:
        student_logits: ``(..., vocab)``; for a causal LM, unshifted, with :func:`shift_labels` labels.
        teacher_logits: same shape.
        labels: ``(...)`` class ids in ``[0, vocab)``; ``-100`` positions are left out of both terms.
        alpha: weight of the distillation term in ``[0, 1]``.
        loss_type, temperature, beta, num_items_in_batch, compiled: as in :func:`distillation_loss`.

    Returns:
        :class:`DistillationLosses` ``(loss, kd, ce)``: ``loss`` is differentiable (once: its gradient is
        precomputed and handed over by backward); ``kd`` (with its ``T**2``) and ``ce`` are detached.

    Example:

    >>> import torch
    >>> from hf_lite.losses import cross_entropy_loss, distillation_loss, shift_labels
    >>> student, teacher = torch.randn(2, 6, 50, requires_grad=True), torch.randn(2, 6, 50)
    >>> labels = shift_labels(torch.randint(0, 50, (2, 6)))
    >>> out = distillation_and_ce_loss(student, teacher, labels, alpha=0.5)
    >>> kd = distillation_loss(student, teacher, labels=labels)
    >>> torch.allclose(out.loss, 0.5 * kd + 0.5 * cross_entropy_loss(student, labels))
    True
    >>> out.loss.backward()
    """
    check_alpha(alpha)
    loss_type = check_loss_type(loss_type)
    check_temperature(temperature)
    check_beta(beta)
    check_pair(student_logits, teacher_logits, "student_logits", "teacher_logits")
    valid = check_labels_in_range(student_logits, labels)
    if loss_type not in fused.FUSED_LOSS_TYPES or teacher_logits.requires_grad:
        kd = distillation_loss(
            student_logits,
            teacher_logits,
            loss_type=loss_type,
            temperature=temperature,
            beta=beta,
            labels=labels,
            num_items_in_batch=num_items_in_batch,
            compiled=compiled,
        )
        ce = cross_entropy_loss(student_logits, labels, num_items_in_batch=num_items_in_batch)
        return DistillationLosses(combine_losses(kd, ce, alpha), kd.detach(), ce.detach())
    dtype = compute_dtype(student_logits.dtype)
    weight, share = _mix(alpha, temperature)
    rows = fused.kl_rows(
        student_logits.to(dtype),
        teacher_logits.to(dtype),
        loss_type,
        temperature,
        beta,
        valid,
        compiled,
        labels=labels.to(valid.device),
        ce_share=share,
    )
    return _mixed(rows, valid.sum(), num_items_in_batch, weight, temperature)


def topk_distillation_and_ce_loss(
    student_logits: torch.Tensor,
    teacher_topk_logprobs: torch.Tensor,
    teacher_topk_indices: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float = 0.5,
    temperature: float = 1.0,
    num_items_in_batch: NumItems = None,
    compiled: bool = False,
) -> DistillationLosses:
    r""":func:`topk_distillation_loss` and hard-label cross-entropy in one pass: :math:`\alpha\,\mathcal{L}_{KD}
    + (1-\alpha)\,\mathcal{L}_{CE}`, the same value and gradient as combining the two functions' results.

    Arguments as in :func:`topk_distillation_loss` and :func:`distillation_and_ce_loss`.

    Example:

    >>> import torch
    >>> from hf_lite.losses import cross_entropy_loss, shift_labels, teacher_topk, topk_distillation_loss
    >>> student = torch.randn(2, 6, 50, requires_grad=True)
    >>> logprobs, indices = teacher_topk(torch.randn(2, 6, 50), k=8)
    >>> labels = shift_labels(torch.randint(0, 50, (2, 6)))
    >>> out = topk_distillation_and_ce_loss(student, logprobs, indices, labels, alpha=0.25)
    >>> kd = topk_distillation_loss(student, logprobs, indices, labels=labels)
    >>> torch.allclose(out.loss, 0.25 * kd + 0.75 * cross_entropy_loss(student, labels))
    True
    """
    check_alpha(alpha)
    check_temperature(temperature)
    check_labels_in_range(student_logits, labels)
    logprobs_t, indices, tail_t, valid = prepare_topk(
        student_logits, teacher_topk_logprobs, teacher_topk_indices, None, labels
    )
    weight, share = _mix(alpha, temperature)
    rows = fused.topk_kl_rows(
        student_logits.to(logprobs_t.dtype),
        logprobs_t,
        indices,
        tail_t,
        temperature,
        valid,
        compiled,
        labels=labels.to(valid.device),
        ce_share=share,
    )
    return _mixed(rows, valid.sum(), num_items_in_batch, weight, temperature)


def _mix(alpha: float, temperature: float) -> tuple[float, float]:
    """``alpha T^2 kd + (1 - alpha) ce = weight ((1 - share) kd + share ce)``: ``(weight, share)``."""
    weight = alpha * temperature**2 + (1.0 - alpha)  # > 0 for T > 0
    return weight, (1.0 - alpha) / weight


def _mixed(
    rows: fused.Rows, count: torch.Tensor, num_items_in_batch: NumItems, weight: float, temperature: float
) -> DistillationLosses:
    denom = denominator(count, num_items_in_batch)
    if isinstance(denom, torch.Tensor):
        denom = denom.to(device=rows.total.device, dtype=rows.total.dtype)
    return DistillationLosses(
        rows.total.sum() / denom * weight, rows.kd.sum() / denom * temperature**2, rows.ce.sum() / denom
    )
