"""Token-level divergences between student and teacher logits, hard-label cross-entropy and label shifting.

:func:`distillation_loss` computes every loss type (forward/reverse KL, generalized JSD, total variation,
MSE on logits); :func:`forward_kl_loss` ... :func:`mse_logits_loss` fix one type each. With a frozen teacher
the KL and JSD rows take the closed-form gradient of :mod:`hf_lite.losses.fused`.

>>> import torch
>>> student, teacher = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
>>> labels = shift_labels(torch.tensor([[-100, 3, 4, 5, -100], [-100, -100, 1, 2, 3]]))
>>> distillation_loss(student, teacher, loss_type="tv", labels=labels).ndim
0
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hf_lite.losses._checks import (
    IGNORE_INDEX,
    LossType,
    NumItems,
    check_alpha,
    check_beta,
    check_loss_type,
    check_pair,
    check_temperature,
    check_tensor,
    valid_mask,
)
from hf_lite.losses._maths import compute_dtype, divergence_sum, normalize, temperature_factor

__all__ = [
    "combine_losses",
    "cross_entropy_loss",
    "distillation_loss",
    "forward_kl_loss",
    "generalized_jsd_loss",
    "mse_logits_loss",
    "reverse_kl_loss",
    "shift_for_causal_lm",
    "shift_labels",
    "total_variation_loss",
]


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    loss_type: LossType | str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    num_items_in_batch: NumItems = None,
    compiled: bool = False,
) -> torch.Tensor:
    r"""Divergence between the student's and the teacher's token distributions, averaged over valid tokens.

    With :math:`p_s = \mathrm{softmax}(z_s / T)`, :math:`p_t = \mathrm{softmax}(z_t / T)` at each valid position
    :math:`i` and :math:`N` = ``num_items_in_batch`` (or the number of valid positions):

    .. math::
        \mathcal{L} = \frac{T^2}{N} \sum_{i\ \mathrm{valid}} D(p_t^{(i)}, p_s^{(i)})

    where ``D`` is, by ``loss_type``:

    - ``"forward_kl"``: :math:`\mathrm{KL}(p_t \| p_s) = \sum_v p_t \log(p_t / p_s)` (mass-covering; classic KD).
    - ``"reverse_kl"``: :math:`\mathrm{KL}(p_s \| p_t)` (mode-seeking; MiniLLM, on-policy distillation).
    - ``"jsd"``: generalized JSD as in TRL's ``generalized_jsd_loss`` (GKD, Agarwal et al. 2024):
      :math:`\beta\,\mathrm{KL}(p_t \| m) + (1-\beta)\,\mathrm{KL}(p_s \| m)` with
      :math:`m = \beta p_t + (1-\beta) p_s`; ``beta=0`` is exactly forward KL, ``beta=1`` reverse KL.
    - ``"tv"``: total variation :math:`\frac12 \sum_v |p_t - p_s|`, in :math:`[0, 1]` before the :math:`T^2`.
    - ``"mse"``: :math:`\frac1V \sum_v (z_s - z_t)^2` on the raw logits (Ba & Caruana, 2014). ``temperature``
      cancels out (:math:`T^2 (z_s/T - z_t/T)^2`) and is ignored.

    Args:
        student_logits: ``(..., vocab)``, e.g. ``(batch, seq, vocab)`` or ``(batch, num_classes)``. Any float dtype.
        teacher_logits: same shape as ``student_logits``.
        loss_type: one of ``"forward_kl"``, ``"reverse_kl"``, ``"jsd"``, ``"tv"``, ``"mse"``.
        temperature: ``T > 0``; softens both distributions. The result is multiplied by ``T**2``.
        beta: JSD interpolation in ``[0, 1]`` (checked whatever the ``loss_type``).
        mask: ``(...)`` = ``student_logits.shape[:-1]``, bool or 0/1 integers; ``0``/``False`` positions are left out.
        labels: ``(...)`` integer labels; positions equal to ``-100`` are left out.
        num_items_in_batch: number of valid positions in the whole (gradient-accumulated) batch, as an int or a
            one-element tensor. Default: the number of valid positions here.
        compiled: compute the divergence through ``torch.compile`` (a few seconds of compilation on first use;
            eager fallback with a warning where it cannot compile). On the CPU the eager blocked path is as fast
            (benchmarks/RESULTS.md); it can pay off on accelerators, where the eager path is one block.

    Returns:
        A 0-dim fp32 tensor (fp64 for fp64 inputs); exactly ``0.`` when no position is valid.

    Example:

    >>> import torch
    >>> student = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    >>> teacher = torch.tensor([[1.0, 1.0, -1.0], [0.5, 0.5, 0.0]])
    >>> round(distillation_loss(student, teacher).item(), 4)  # row 2 matches, so half of row 1's KL
    0.2056
    >>> distillation_loss(student, teacher, loss_type="reverse_kl", mask=torch.tensor([0, 1])).item()
    0.0
    """
    loss_type = check_loss_type(loss_type)
    check_temperature(temperature)
    check_beta(beta)
    check_pair(student_logits, teacher_logits, "student_logits", "teacher_logits")
    lead_shape = student_logits.shape[:-1]
    valid = valid_mask(lead_shape, mask, labels, student_logits.device)
    total = divergence_sum(student_logits, teacher_logits, valid, loss_type, temperature, beta, compiled)
    count = valid.sum() if valid is not None else math.prod(lead_shape)
    return normalize(total, count, num_items_in_batch) * temperature_factor(loss_type, temperature)


def forward_kl_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    num_items_in_batch: NumItems = None,
) -> torch.Tensor:
    r"""Forward KL, :math:`\frac{T^2}{N}\sum_i \mathrm{KL}(p_t \| p_s) = \frac{T^2}{N}\sum_i\sum_v p_t (\log p_t - \log p_s)`.

    Classic knowledge distillation (Hinton et al., 2015): the student covers every mode of the teacher.
    Teacher entries with probability 0 (``-inf`` logits) contribute 0. Same arguments and masking rules as
    :func:`distillation_loss`.

    Args:
        student_logits: ``(..., vocab)``.
        teacher_logits: ``(..., vocab)``, same shape.
        temperature: ``T > 0``; the result is multiplied by ``T**2``.
        mask: ``(...)`` bool/0-1, ``0`` = left out.
        labels: ``(...)``, ``-100`` = left out.
        num_items_in_batch: valid positions in the whole accumulated batch (default: in this one).

    Returns:
        A 0-dim fp32 tensor, ``>= 0``, ``0`` when the distributions are equal.

    Example:

    >>> import torch
    >>> logits = torch.randn(4, 10)
    >>> forward_kl_loss(logits, logits).item()
    0.0
    """
    return distillation_loss(
        student_logits,
        teacher_logits,
        loss_type="forward_kl",
        temperature=temperature,
        mask=mask,
        labels=labels,
        num_items_in_batch=num_items_in_batch,
    )


def reverse_kl_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    num_items_in_batch: NumItems = None,
) -> torch.Tensor:
    r"""Reverse KL, :math:`\frac{T^2}{N}\sum_i \mathrm{KL}(p_s \| p_t) = \frac{T^2}{N}\sum_i\sum_v p_s (\log p_s - \log p_t)`.

    Mode-seeking: the student may drop teacher modes it cannot represent (MiniLLM, on-policy distillation).
    Same arguments and masking rules as :func:`distillation_loss`.

    Args:
        student_logits: ``(..., vocab)``.
        teacher_logits: ``(..., vocab)``, same shape.
        temperature: ``T > 0``; the result is multiplied by ``T**2``.
        mask: ``(...)`` bool/0-1, ``0`` = left out.
        labels: ``(...)``, ``-100`` = left out.
        num_items_in_batch: valid positions in the whole accumulated batch (default: in this one).

    Returns:
        A 0-dim fp32 tensor, ``>= 0``.

    Example:

    >>> import torch
    >>> student, teacher = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    >>> round(reverse_kl_loss(student, teacher).item(), 4)
    2.7154
    """
    return distillation_loss(
        student_logits,
        teacher_logits,
        loss_type="reverse_kl",
        temperature=temperature,
        mask=mask,
        labels=labels,
        num_items_in_batch=num_items_in_batch,
    )


def generalized_jsd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    num_items_in_batch: NumItems = None,
) -> torch.Tensor:
    r"""Generalized Jensen-Shannon divergence (GKD, Agarwal et al. 2024), with TRL's definition of ``beta``.

    .. math::
        m = \beta p_t + (1-\beta) p_s, \qquad
        \mathrm{JSD}_\beta = \beta\,\mathrm{KL}(p_t \| m) + (1-\beta)\,\mathrm{KL}(p_s \| m)

    :math:`\log m` is computed in log space, ``logsumexp([log p_s + log(1-beta), log p_t + log(beta)])``.
    ``beta=0`` is exactly forward KL, ``beta=1`` exactly reverse KL; ``beta=0.5`` is the symmetric JSD, bounded
    by :math:`\log 2` per token. The mean over valid tokens is multiplied by ``T**2``.

    As in TRL, the ends are set by convention, not by continuity: :math:`\mathrm{JSD}_\beta` itself tends to 0
    as ``beta`` nears 0 or 1 (like :math:`\beta\,\mathrm{KL}(p_t \| p_s)` and
    :math:`(1-\beta)\,\mathrm{KL}(p_s \| p_t)`), so ``beta=0.01`` gives a loss about 100 times smaller than
    ``beta=0``. Retune the learning rate or the loss weight when moving ``beta`` towards an end.

    Args:
        student_logits: ``(..., vocab)``.
        teacher_logits: ``(..., vocab)``, same shape.
        beta: interpolation in ``[0, 1]``.
        temperature: ``T > 0``; the result is multiplied by ``T**2``.
        mask: ``(...)`` bool/0-1, ``0`` = left out.
        labels: ``(...)``, ``-100`` = left out.
        num_items_in_batch: valid positions in the whole accumulated batch (default: in this one).

    Returns:
        A 0-dim fp32 tensor, ``>= 0``.

    Example:

    >>> import torch
    >>> a, b = torch.tensor([[20.0, 0.0]]), torch.tensor([[0.0, 20.0]])
    >>> round(generalized_jsd_loss(a, b, beta=0.5).item(), 4)  # disjoint distributions: log 2
    0.6931
    """
    return distillation_loss(
        student_logits,
        teacher_logits,
        loss_type="jsd",
        beta=beta,
        temperature=temperature,
        mask=mask,
        labels=labels,
        num_items_in_batch=num_items_in_batch,
    )


def total_variation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    num_items_in_batch: NumItems = None,
) -> torch.Tensor:
    r"""Total variation distance, :math:`\frac{T^2}{N}\sum_i \frac12 \sum_v |p_t - p_s|`.

    Each token's distance is in :math:`[0, 1]`; like the other divergences the mean is multiplied by ``T**2``
    (so it lies in :math:`[0, T^2]`). Bounded, so robust to a teacher that is confidently wrong.

    Args:
        student_logits: ``(..., vocab)``.
        teacher_logits: ``(..., vocab)``, same shape.
        temperature: ``T > 0``; the result is multiplied by ``T**2``.
        mask: ``(...)`` bool/0-1, ``0`` = left out.
        labels: ``(...)``, ``-100`` = left out.
        num_items_in_batch: valid positions in the whole accumulated batch (default: in this one).

    Returns:
        A 0-dim fp32 tensor.

    Example:

    >>> import torch
    >>> student, teacher = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, float("-inf")]])
    >>> total_variation_loss(student, teacher).item()  # |0.5 - 1| / 2 + |0.5 - 0| / 2
    0.5
    """
    return distillation_loss(
        student_logits,
        teacher_logits,
        loss_type="tv",
        temperature=temperature,
        mask=mask,
        labels=labels,
        num_items_in_batch=num_items_in_batch,
    )


def mse_logits_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    num_items_in_batch: NumItems = None,
) -> torch.Tensor:
    r"""Mean squared error between raw logits, :math:`\frac1N \sum_i \frac1V \sum_v (z_s - z_t)^2`.

    Without masking this equals ``torch.nn.functional.mse_loss(student_logits, teacher_logits)``.
    Sensitive to the logits' offset (softmax is not), which is what Ba & Caruana (2014) use.

    Args:
        student_logits: ``(..., vocab)``.
        teacher_logits: ``(..., vocab)``, same shape.
        mask: ``(...)`` bool/0-1, ``0`` = left out.
        labels: ``(...)``, ``-100`` = left out.
        num_items_in_batch: valid positions in the whole accumulated batch (default: in this one).

    Returns:
        A 0-dim fp32 tensor.

    Example:

    >>> import torch
    >>> mse_logits_loss(torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 0.0]])).item()
    5.0
    """
    return distillation_loss(
        student_logits,
        teacher_logits,
        loss_type="mse",
        mask=mask,
        labels=labels,
        num_items_in_batch=num_items_in_batch,
    )


def combine_losses(
    kd_loss: torch.Tensor | float, ce_loss: torch.Tensor | float, alpha: float
) -> torch.Tensor | float:
    r"""Mix the distillation loss with the hard-label loss: :math:`\alpha\,\mathcal{L}_{KD} + (1-\alpha)\,\mathcal{L}_{CE}`.

    Args:
        kd_loss: the distillation loss (a scalar tensor or a number).
        ce_loss: the cross-entropy on the true labels, e.g. ``model(**inputs, labels=labels).loss``.
        alpha: weight of the distillation term, in ``[0, 1]`` (``1``: pure distillation, ``0``: plain fine-tuning).

    Returns:
        The weighted sum, a tensor when either loss is one.

    Example:

    >>> import torch
    >>> combine_losses(torch.tensor(2.0), torch.tensor(4.0), alpha=0.25)
    tensor(3.5000)
    """
    check_alpha(alpha)
    return alpha * kd_loss + (1.0 - alpha) * ce_loss


def cross_entropy_loss(
    logits: torch.Tensor, labels: torch.Tensor, *, num_items_in_batch: NumItems = None
) -> torch.Tensor:
    r"""Hard-label cross-entropy, summed over valid positions and divided by ``num_items_in_batch``.

    :math:`\mathcal{L} = -\frac1N \sum_{i\ \mathrm{valid}} \log \mathrm{softmax}(z^{(i)})_{y_i}` with ``N`` =
    ``num_items_in_batch`` (or the number of labels that are not ``-100``), so that, like the distillation
    losses, micro-batches of a gradient-accumulated batch add up to the full batch's loss.

    Args:
        logits: ``(..., num_classes)``; for a causal LM align the labels first (:func:`shift_labels`).
        labels: ``(...)`` integer class ids; ``-100`` positions are left out.
        num_items_in_batch: valid positions in the whole (accumulated) batch. Default: those here.

    Returns:
        A 0-dim fp32 tensor; exactly ``0.`` when every label is ``-100``.

    Example:

    >>> import torch
    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    >>> round(cross_entropy_loss(logits, torch.tensor([0, -100])).item(), 4)
    0.1269
    """
    check_tensor("logits", logits)
    valid = valid_mask(logits.shape[:-1], None, labels, logits.device)
    dtype = compute_dtype(logits.dtype)
    # ignore_index skips the -100 positions inside the kernel: no copy of the valid rows, no scatter in backward
    total = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).to(dtype),  # (N, C)
        labels.reshape(-1).to(logits.device).long(),  # (N,)
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return normalize(total, valid.sum(), num_items_in_batch)


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """A causal LM's targets aligned with its outputs *without slicing the logits*: position ``i`` predicts
    token ``i + 1``, and the last position predicts nothing.

    Returns ``labels[:, 1:]`` padded with ``-100`` on the right: the same shape as ``labels``, so that the
    ``(batch, seq, vocab)`` logits of both models go to the losses as they are. This is how transformers'
    ``ForCausalLMLoss`` aligns them too, and it is cheaper than :func:`shift_for_causal_lm`: slicing
    ``logits[:, :-1]`` makes backward allocate and zero a gradient the size of the full logits.

    Args:
        labels: ``(batch, seq)`` token ids with ``-100`` on positions that are not targets (padding included).

    Returns:
        ``(batch, seq)``: ``labels[:, 1:]`` followed by one column of ``-100``.

    Example:

    >>> import torch
    >>> shift_labels(torch.tensor([[5, 6, 1, -100], [2, 3, -100, -100]])).tolist()
    [[6, 1, -100, -100], [3, -100, -100, -100]]
    """
    check_tensor("labels", labels, floating=False)
    if labels.ndim != 2:
        raise ValueError(
            f"shift_labels expects labels (batch, seq); got shape {tuple(labels.shape)}. Classification labels "
            "(batch,) need no shift."
        )
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def shift_for_causal_lm(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align a causal LM's outputs with its targets: position ``i`` predicts token ``i + 1``.

    Returns ``logits[:, :-1]`` and ``labels[:, 1:]``, the same alignment transformers' ``ForCausalLMLoss``
    uses, so that ``labels == -100`` (padding, prompt tokens the collator masked) marks exactly the
    positions it ignores. Call it on the student's and on the teacher's logits with the same labels. It only
    slices, so it also works on hidden states ``(batch, seq, dim)`` for
    :func:`chunked_distillation_loss_from_hidden`. The results are views (no copy).

    Args:
        logits: ``(batch, seq, vocab)`` (or ``(batch, seq, hidden)``).
        labels: ``(batch, seq)`` token ids with ``-100`` on positions that are not targets (padding included).

    Returns:
        ``(logits[:, :-1], labels[:, 1:])``, shapes ``(batch, seq - 1, vocab)`` and ``(batch, seq - 1)``.

    Example:

    >>> import torch
    >>> logits, labels = torch.zeros(2, 4, 7), torch.tensor([[5, 6, 1, -100], [2, 3, -100, -100]])
    >>> shifted_logits, shifted_labels = shift_for_causal_lm(logits, labels)
    >>> tuple(shifted_logits.shape), shifted_labels.tolist()
    ((2, 3, 7), [[6, 1, -100], [3, -100, -100]])
    """
    check_tensor("logits", logits)
    check_tensor("labels", labels, floating=False)
    if logits.ndim != 3 or labels.ndim != 2:
        raise ValueError(
            f"shift_for_causal_lm expects logits (batch, seq, vocab) and labels (batch, seq); got logits "
            f"{tuple(logits.shape)} and labels {tuple(labels.shape)}. For classification logits (batch, classes) "
            "there is nothing to shift: pass them to the loss directly."
        )
    if logits.shape[:2] != labels.shape:
        raise ValueError(
            f"logits.shape[:2]={tuple(logits.shape[:2])} does not match labels.shape={tuple(labels.shape)}: "
            "they must come from the same batch (same input_ids and padding)."
        )
    return logits[:, :-1], labels[:, 1:]
