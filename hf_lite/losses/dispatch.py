r"""The one entry point for logit distillation: it picks the fused, chunked or top-k-cache path.

A trainer calls :func:`logit_distillation_loss` once per step with what it has (the teacher's logits or its
cached top-k log-probabilities, the labels, ``alpha``, ``chunk_size``) and gets the training loss and its
parts back; which specialised function computes them is decided here, so a new loss type or path is a change
inside :mod:`hf_lite.losses` only. :func:`mix_teacher_logits` turns several teachers into one.

>>> import torch
>>> from hf_lite.losses import shift_labels
>>> student, teacher = torch.randn(2, 6, 50), torch.randn(2, 6, 50)
>>> labels = shift_labels(torch.randint(0, 50, (2, 6)))
>>> out = logit_distillation_loss(student, teacher, labels=labels, alpha=0.5, temperature=2.0)
>>> out.loss.ndim, out.ce is not None
(0, True)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hf_lite.losses._checks import LossType, NumItems, check_alpha, check_loss_type
from hf_lite.losses.chunked import chunked_distillation_loss
from hf_lite.losses.logits import combine_losses, cross_entropy_loss, distillation_loss
from hf_lite.losses.mixed import DistillationLosses, distillation_and_ce_loss, topk_distillation_and_ce_loss
from hf_lite.losses.topk import topk_distillation_loss

__all__ = ["logit_distillation_loss", "mix_teacher_logits"]

#: Loss types a cached top-k teacher supports (:func:`hf_lite.losses.topk_distillation_loss`).
TOPK_LOSS_TYPES: tuple[str, ...] = ("forward_kl",)


def logit_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    *,
    teacher_topk_logprobs: torch.Tensor | None = None,
    teacher_topk_indices: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    alpha: float = 1.0,
    loss_type: LossType | str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    chunk_size: int | None = None,
    num_items_in_batch: NumItems = None,
    compiled: bool = False,
) -> DistillationLosses:
    r"""The distillation loss on logits, mixed with hard-label cross-entropy: :math:`\alpha\,\mathcal{L}_{KD} +
    (1-\alpha)\,\mathcal{L}_{CE}`, computed by the cheapest exact path for the inputs given.

    With :math:`p_s = \mathrm{softmax}(z_s / T)`, :math:`p_t` the teacher's distribution at the same ``T`` and
    :math:`N` = ``num_items_in_batch`` (or the number of valid positions):

    .. math::
        \mathcal{L}_{KD} = \frac{T^2}{N} \sum_{i\ \mathrm{valid}} D(p_t^{(i)}, p_s^{(i)}), \qquad
        \mathcal{L}_{CE} = -\frac1N \sum_{i\ \mathrm{valid}} \log \mathrm{softmax}(z_s^{(i)})_{y_i}

    with ``D`` chosen by ``loss_type`` as in :func:`hf_lite.losses.distillation_loss`. The path:

    ==================  =============  =====================================================================
    teacher given as    ``alpha``      computed by
    ==================  =============  =====================================================================
    logits              ``1``          :func:`distillation_loss`, or :func:`chunked_distillation_loss` with
                                       ``chunk_size``
    logits              ``< 1``        :func:`distillation_and_ce_loss` (one pass for both terms); with
                                       ``chunk_size`` or ``mask``, the chunked/plain loss and
                                       :func:`cross_entropy_loss` separately
    top-k cache         ``1``          :func:`topk_distillation_loss`
    top-k cache         ``< 1``        :func:`topk_distillation_and_ce_loss`; with ``mask``, the two
                                       separately
    ==================  =============  =====================================================================

    Every path gives the same value and gradient as combining the separate losses with
    :func:`combine_losses`.

    Args:
        student_logits: ``(..., vocab)``; for a causal LM unshifted, with :func:`shift_labels` labels.
        teacher_logits: same shape, or ``None`` when the teacher comes as a top-k cache.
        teacher_topk_logprobs: ``(..., k)`` cached teacher log-probabilities at temperature ``T``
            (:func:`teacher_topk`), instead of ``teacher_logits``.
        teacher_topk_indices: ``(..., k)`` their token ids.
        labels: ``(...)`` class ids, ``-100`` = left out of both terms. Required when ``alpha < 1``.
        mask: ``(...)`` bool/0-1, ``0`` = left out of the distillation term (e.g. an attention mask when there
            are no labels).
        alpha: weight of the distillation term in ``[0, 1]``; ``1`` computes no cross-entropy.
        loss_type: one of :data:`LOSS_TYPES`; a top-k cache supports ``"forward_kl"`` only.
        temperature: ``T > 0``; the distillation term is multiplied by ``T**2``.
        beta: JSD interpolation in ``[0, 1]`` (``loss_type="jsd"``).
        chunk_size: compute the distillation term this many tokens at a time (full teacher logits only).
        num_items_in_batch: valid positions in the whole accumulated batch (default: in this one); both
            terms are divided by it.
        compiled: run the divergence through ``torch.compile`` (see :func:`distillation_loss`).

    Returns:
        :class:`DistillationLosses` ``(loss, kd, ce)``: ``loss`` is the differentiable 0-dim training loss;
        ``kd`` (with its ``T**2``) and ``ce`` are detached, for logging; ``ce`` is ``None`` when ``alpha == 1``.

    Example:

    >>> import torch
    >>> from hf_lite.losses import shift_labels, teacher_topk, topk_distillation_loss
    >>> student, teacher = torch.randn(2, 6, 50, requires_grad=True), torch.randn(2, 6, 50)
    >>> labels = shift_labels(torch.randint(0, 50, (2, 6)))
    >>> out = logit_distillation_loss(student, teacher, labels=labels, loss_type="jsd", chunk_size=4)
    >>> torch.allclose(out.loss, distillation_loss(student, teacher, loss_type="jsd", labels=labels)), out.ce
    (True, None)
    >>> out.loss.backward()
    >>> logprobs, indices = teacher_topk(teacher, k=8)
    >>> cached = logit_distillation_loss(student, teacher_topk_logprobs=logprobs, teacher_topk_indices=indices,
    ...                                  labels=labels)
    >>> torch.allclose(cached.loss, topk_distillation_loss(student, logprobs, indices, labels=labels))
    True
    """
    check_alpha(alpha)
    loss_type = check_loss_type(loss_type)
    cached = _check_teacher(teacher_logits, teacher_topk_logprobs, teacher_topk_indices)
    if cached and loss_type not in TOPK_LOSS_TYPES:
        raise ValueError(
            f"loss_type={loss_type!r} needs the teacher's full distribution, but the teacher comes as a top-k "
            f"cache, which supports {', '.join(TOPK_LOSS_TYPES)} only: use loss_type='forward_kl', or pass "
            "teacher_logits."
        )
    if cached and chunk_size is not None:
        raise ValueError(
            f"chunk_size={chunk_size} chunks full teacher logits; a top-k cache is already small, (..., k): "
            "pass chunk_size=None."
        )
    if alpha < 1.0 and labels is None:
        raise ValueError(
            f"alpha={alpha} mixes in cross-entropy on the labels, but labels=None. Pass the labels, or alpha=1.0 "
            "for pure distillation."
        )
    common = dict(temperature=temperature, num_items_in_batch=num_items_in_batch, compiled=compiled)
    if alpha < 1.0 and chunk_size is None and mask is None:
        # Both terms from one pass over the logits (they share the student's softmax and one gradient buffer).
        if cached:
            return topk_distillation_and_ce_loss(
                student_logits, teacher_topk_logprobs, teacher_topk_indices, labels, alpha=alpha, **common
            )
        return distillation_and_ce_loss(
            student_logits, teacher_logits, labels, alpha=alpha, loss_type=loss_type, beta=beta, **common
        )
    if cached:
        kd = topk_distillation_loss(
            student_logits, teacher_topk_logprobs, teacher_topk_indices, labels=labels, mask=mask, **common
        )
    elif chunk_size is not None:
        kd = chunked_distillation_loss(
            student_logits,
            teacher_logits,
            chunk_size=chunk_size,
            loss_type=loss_type,
            beta=beta,
            labels=labels,
            mask=mask,
            **common,
        )
    else:
        kd = distillation_loss(
            student_logits, teacher_logits, loss_type=loss_type, beta=beta, labels=labels, mask=mask, **common
        )
    ce = None
    if alpha < 1.0:
        ce = cross_entropy_loss(student_logits, labels, num_items_in_batch=num_items_in_batch)
    loss = combine_losses(kd, ce if ce is not None else 0.0, alpha)
    return DistillationLosses(loss, kd.detach(), None if ce is None else ce.detach())


def mix_teacher_logits(
    teacher_logits: Sequence[torch.Tensor],
    weights: Sequence[float],
    *,
    loss_type: LossType | str = "forward_kl",
    temperature: float = 1.0,
) -> torch.Tensor:
    r"""One teacher out of several: logits whose distribution at temperature ``T`` is the weighted mixture.

    For the probability divergences the tempered distributions are mixed, :math:`p = \sum_j w_j
    \mathrm{softmax}(z_j / T)`, and returned as logits at the same temperature, :math:`T \log p` (so
    :math:`\mathrm{softmax}(T \log p / T) = p`). For ``"mse"``, a loss on the logits themselves, the logits are
    averaged: :math:`\sum_j w_j z_j`. A single teacher's logits are returned as they are.

    Args:
        teacher_logits: one ``(..., vocab)`` tensor per teacher, all of the same shape and on one device.
        weights: one weight per teacher (summing to 1).
        loss_type: the loss the mixture feeds (one of :data:`LOSS_TYPES`).
        temperature: ``T > 0`` of that loss.

    Returns:
        ``(..., vocab)`` fp32 logits (the input tensor itself for one teacher).

    Example:

    >>> import torch
    >>> a, b = torch.tensor([[9.0, 0.0]]), torch.tensor([[0.0, 9.0]])
    >>> torch.softmax(mix_teacher_logits([a, b], [0.5, 0.5], temperature=2.0) / 2.0, -1)
    tensor([[0.5000, 0.5000]])
    """
    loss_type = check_loss_type(loss_type)
    logits = list(teacher_logits)
    if len(logits) != len(weights):
        raise ValueError(
            f"mix_teacher_logits got {len(logits)} teacher logits and {len(weights)} weights: give one weight each."
        )
    if len(logits) == 1:
        return logits[0]
    if loss_type == "mse":  # a weighted average of logits for a loss on logits
        return sum(w * z.float() for w, z in zip(weights, logits, strict=True))
    # Mix the tempered distributions, then express the mixture as logits at the same temperature:
    # softmax(T * log p / T) = p.
    log_mix = torch.logsumexp(
        torch.stack(
            [
                torch.log_softmax(z.float() / temperature, -1) + torch.log(torch.tensor(w))
                for w, z in zip(weights, logits, strict=True)
            ]
        ),
        dim=0,
    )
    return temperature * log_mix


def _check_teacher(
    teacher_logits: torch.Tensor | None,
    teacher_topk_logprobs: torch.Tensor | None,
    teacher_topk_indices: torch.Tensor | None,
) -> bool:
    """Whether the teacher comes as a top-k cache, after checking that exactly one form was given."""
    topk = (teacher_topk_logprobs is not None, teacher_topk_indices is not None)
    if any(topk) and not all(topk):
        raise ValueError(
            "teacher_topk_logprobs and teacher_topk_indices go together (the two outputs of teacher_topk): "
            "pass both, or neither with teacher_logits."
        )
    if (teacher_logits is not None) == all(topk):
        given = "both teacher_logits and a top-k cache" if all(topk) else "neither"
        raise ValueError(
            f"Pass the teacher either as teacher_logits (..., vocab) or as a top-k cache "
            f"(teacher_topk_logprobs, teacher_topk_indices); got {given}."
        )
    return all(topk)
