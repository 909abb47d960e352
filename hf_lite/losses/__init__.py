"""Distillation losses as pure functions: tensors in, a scalar out, no Trainer inside.

Every loss here follows the same contract, so a trainer can swap one for another:

- **fp32 maths.** Inputs in bf16/fp16 are upcast inside (fp64 stays fp64); the result is fp32 (or fp64).
- **Masking.** Positions with ``labels == -100`` (the transformers convention) or ``mask == 0`` (e.g. an
  ``attention_mask``) are left out *before* any computation, so padding that holds ``inf`` or ``nan`` cannot
  leak into the loss or its gradient. When both are given a position must pass both.
- **Normalization.** ``loss = sum over valid positions / num_items_in_batch`` when ``num_items_in_batch`` is
  given (what ``transformers.Trainer`` passes to ``compute_loss``: the valid-token count of the whole
  accumulated batch), else ``/ number of valid positions in this batch``. With ``num_items_in_batch`` the
  sum of the micro-batch losses equals the loss of the full batch, so gradient accumulation is exact.
- **Empty batches.** An all-masked batch gives exactly ``0.`` (not NaN) and an all-zero gradient.
- **Temperature.** Probability divergences use ``softmax(logits / T)`` and are multiplied by ``T**2`` so the
  gradient keeps its size as ``T`` changes (Hinton et al., 2015).

Token-level divergences between student and teacher logits of shape ``(..., vocab)``:
:func:`forward_kl_loss`, :func:`reverse_kl_loss`, :func:`generalized_jsd_loss`, :func:`total_variation_loss`,
:func:`mse_logits_loss`, and the dispatcher :func:`distillation_loss`. For large vocabularies,
:func:`chunked_distillation_loss` (and :func:`chunked_distillation_loss_from_hidden`, which never builds the
full logits) give the same value and gradient with memory bounded by ``chunk_size`` tokens. A cached
teacher stored as its top-k log-probabilities is handled by :func:`teacher_topk` and
:func:`topk_distillation_loss`. Intermediate layers: :func:`hidden_state_loss`, :func:`attention_loss`.

>>> import torch
>>> from hf_lite.losses import distillation_loss, shift_labels
>>> student, teacher = torch.randn(2, 5, 11), torch.randn(2, 5, 11)  # a causal LM's (batch, seq, vocab)
>>> labels = torch.tensor([[-100, 3, 4, 5, -100], [-100, -100, 1, 2, 3]])
>>> loss = distillation_loss(student, teacher, loss_type="jsd", temperature=2.0, labels=shift_labels(labels))
>>> loss.dtype, loss.ndim
(torch.float32, 0)
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

from hf_lite.losses import _fused as divergences

__all__ = [
    "ATTENTION_LOSS_KINDS",
    "HIDDEN_LOSS_KINDS",
    "IGNORE_INDEX",
    "LOSS_TYPES",
    "attention_loss",
    "chunked_distillation_loss",
    "chunked_distillation_loss_from_hidden",
    "combine_losses",
    "DistillationLosses",
    "cross_entropy_loss",
    "distillation_and_ce_loss",
    "distillation_loss",
    "forward_kl_loss",
    "generalized_jsd_loss",
    "hidden_state_loss",
    "mse_logits_loss",
    "reverse_kl_loss",
    "shift_for_causal_lm",
    "shift_labels",
    "teacher_topk",
    "topk_distillation_and_ce_loss",
    "topk_distillation_loss",
    "total_variation_loss",
]

IGNORE_INDEX = -100
#: Token-level divergences understood by :func:`distillation_loss`.
LOSS_TYPES: tuple[str, ...] = ("forward_kl", "reverse_kl", "jsd", "tv", "mse")
LossType = Literal["forward_kl", "reverse_kl", "jsd", "tv", "mse"]
HIDDEN_LOSS_KINDS: tuple[str, ...] = ("mse", "cosine")
ATTENTION_LOSS_KINDS: tuple[str, ...] = ("kl", "mse")

# Names people type for the loss types, used only to suggest the right spelling (never accepted silently,
# so that a config file names one loss in one way).
_LOSS_TYPE_HINTS = {
    "kl": "forward_kl", "kld": "forward_kl", "fkl": "forward_kl", "kl_div": "forward_kl",
    "forward": "forward_kl", "rkl": "reverse_kl", "reverse": "reverse_kl", "js": "jsd",
    "generalized_jsd": "jsd", "gkd": "jsd", "total_variation": "tv", "l2": "mse",
}  # fmt: skip

NumItems = int | float | torch.Tensor | None

_VOCAB_FIX = (
    "Token-level distillation needs one vocabulary for both models. If both use the same tokenizer and one "
    "embedding matrix is only padded (resized to a multiple of 64, say), slice both logits to the tokenizer "
    "size: `logits[..., :len(tokenizer)]`. If the tokenizers differ, these losses do not apply: use a "
    "cross-tokenizer method (e.g. ULD or GOLD) or match hidden states with hidden_state_loss."
)


# --------------------------------------------------------------------------------------------------
# token-level divergences


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
    loss_type = _check_loss_type(loss_type)
    _check_temperature(temperature)
    _check_beta(beta)
    _check_pair(student_logits, teacher_logits, "student_logits", "teacher_logits")
    lead_shape = student_logits.shape[:-1]
    valid = _valid_mask(lead_shape, mask, labels, student_logits.device)
    total = _divergence_sum(student_logits, teacher_logits, valid, loss_type, temperature, beta, compiled)
    count = valid.sum() if valid is not None else math.prod(lead_shape)
    return _normalize(total, count, num_items_in_batch) * _t2(loss_type, temperature)


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
        student_logits, teacher_logits, loss_type="forward_kl", temperature=temperature, mask=mask,
        labels=labels, num_items_in_batch=num_items_in_batch,
    )  # fmt: skip


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
        student_logits, teacher_logits, loss_type="reverse_kl", temperature=temperature, mask=mask,
        labels=labels, num_items_in_batch=num_items_in_batch,
    )  # fmt: skip


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
        student_logits, teacher_logits, loss_type="jsd", beta=beta, temperature=temperature, mask=mask,
        labels=labels, num_items_in_batch=num_items_in_batch,
    )  # fmt: skip


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
        student_logits, teacher_logits, loss_type="tv", temperature=temperature, mask=mask,
        labels=labels, num_items_in_batch=num_items_in_batch,
    )  # fmt: skip


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
        student_logits, teacher_logits, loss_type="mse", mask=mask, labels=labels,
        num_items_in_batch=num_items_in_batch,
    )  # fmt: skip


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
    _check_alpha(alpha)
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
    _check_tensor("logits", logits)
    valid = _valid_mask(logits.shape[:-1], None, labels, logits.device)
    dtype = _compute_dtype(logits.dtype)
    # ignore_index skips the -100 positions inside the kernel: no copy of the valid rows, no scatter in backward
    total = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).to(dtype),  # (N, C)
        labels.reshape(-1).to(logits.device).long(),  # (N,)
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return _normalize(total, valid.sum(), num_items_in_batch)


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
    _check_tensor("labels", labels, floating=False)
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
    _check_tensor("logits", logits)
    _check_tensor("labels", labels, floating=False)
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


# --------------------------------------------------------------------------------------------------
# chunked losses for large vocabularies


def chunked_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    loss_type: LossType | str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    num_items_in_batch: NumItems = None,
    chunk_size: int = 128,
    compiled: bool = False,
) -> torch.Tensor:
    r""":func:`distillation_loss` computed ``chunk_size`` tokens at a time: same value, same gradient, less memory.

    The plain loss builds several fp32 ``(tokens, vocab)`` tensors for both models (upcast logits,
    log-probabilities, probabilities) and keeps them for backward; for 8k tokens and a 150k vocabulary that is
    about 5 GB each. Here the loss *and its gradient* are computed chunk by chunk during the forward pass (a
    custom ``torch.autograd.Function``), so the fp32 temporaries never exceed ``chunk_size x vocab`` and
    nothing of that size is kept for backward: what remains is one gradient buffer shaped and typed like the
    input logits, which backward hands over (scaled by the incoming gradient). The teacher's gradient is
    computed too if ``teacher_logits`` requires grad.

    The formula, arguments and masking rules are those of :func:`distillation_loss`.

    Args:
        student_logits: ``(..., vocab)``, any float dtype; views such as ``logits[:, :-1]`` are not copied.
        teacher_logits: same shape as ``student_logits``.
        loss_type: one of ``"forward_kl"``, ``"reverse_kl"``, ``"jsd"``, ``"tv"``, ``"mse"``.
        temperature: ``T > 0``; the result is multiplied by ``T**2`` (except for ``"mse"``).
        beta: JSD interpolation in ``[0, 1]``.
        mask: ``(...)`` bool/0-1, ``0`` = left out.
        labels: ``(...)``, ``-100`` = left out.
        num_items_in_batch: valid positions in the whole accumulated batch (default: in this one).
        chunk_size: tokens per chunk (``>= 1``). Larger is faster, smaller uses less memory.
        compiled: compute the divergence through ``torch.compile`` (a few seconds of compilation on first use;
            eager fallback with a warning where it cannot compile). On the CPU the eager blocked path is as fast
            (benchmarks/RESULTS.md); it can pay off on accelerators, where the eager path is one block.

    Returns:
        A 0-dim fp32 tensor equal to ``distillation_loss(...)``. Its backward can run once (it hands over a
        precomputed gradient; ``retain_graph`` for a second backward is refused) and is not differentiable again.

    Example:

    >>> import torch
    >>> student = torch.randn(2, 6, 50, requires_grad=True)
    >>> teacher = torch.randn(2, 6, 50)
    >>> loss = chunked_distillation_loss(student, teacher, loss_type="reverse_kl", chunk_size=4)
    >>> torch.allclose(loss, distillation_loss(student, teacher, loss_type="reverse_kl"))
    True
    >>> loss.backward()
    """
    loss_type = _check_loss_type(loss_type)
    _check_temperature(temperature)
    _check_beta(beta)
    _check_chunk_size(chunk_size)
    _check_pair(student_logits, teacher_logits, "student_logits", "teacher_logits")
    lead_shape = student_logits.shape[:-1]
    valid = _valid_mask(lead_shape, mask, labels, student_logits.device)
    count = valid.sum() if valid is not None else math.prod(lead_shape)
    scale = _scale(count, num_items_in_batch, _t2(loss_type, temperature), student_logits)

    def chunk_sum(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        return _divergence_sum(student, teacher, valid, loss_type, temperature, beta, compiled)

    return _chunked(
        chunk_sum, [student_logits, teacher_logits, valid], [], len(lead_shape), scale, chunk_size
    )


def chunked_distillation_loss_from_hidden(
    student_hidden: torch.Tensor,
    student_lm_head_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_lm_head_weight: torch.Tensor,
    *,
    student_lm_head_bias: torch.Tensor | None = None,
    teacher_lm_head_bias: torch.Tensor | None = None,
    loss_type: LossType | str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    num_items_in_batch: NumItems = None,
    chunk_size: int = 128,
    compiled: bool = False,
) -> torch.Tensor:
    r"""Distillation loss from final hidden states and LM-head weights, never building all the logits.

    Equal (value and gradients) to ``distillation_loss(F.linear(student_hidden, W_s, b_s),
    F.linear(teacher_hidden, W_t, b_t), ...)``, but the ``(tokens, vocab)`` logits of either model exist only
    ``chunk_size`` tokens at a time, in the forward pass and for the gradient alike: the memory that remains is
    the gradient of the hidden states ``(tokens, hidden)`` and of the head ``(vocab, hidden)``. This is the large
    win for big vocabularies (the logits of one 8k-token batch at 150k vocabulary are 2.4 GB in bf16).

    Get the inputs with ``model.model(...)`` / ``output_hidden_states=True`` (last hidden state, after the
    final norm) and ``model.get_output_embeddings().weight``; with tied embeddings the gradient reaches the
    embedding matrix as usual. An LM head wrapped by an adapter (LoRA on ``lm_head``) is not just a weight:
    compute the logits and use :func:`chunked_distillation_loss` then. For a causal LM pass
    ``hidden[:, :-1]`` and ``labels[:, 1:]`` (see :func:`shift_for_causal_lm`, which also works on hidden states).

    Args:
        student_hidden: ``(..., hidden_s)``, e.g. ``(batch, seq, hidden_s)``.
        student_lm_head_weight: ``(vocab, hidden_s)``.
        teacher_hidden: ``(..., hidden_t)``, same leading shape as ``student_hidden``.
        teacher_lm_head_weight: ``(vocab, hidden_t)``, same vocabulary as the student's.
        student_lm_head_bias: ``(vocab,)`` or ``None``.
        teacher_lm_head_bias: ``(vocab,)`` or ``None``.
        loss_type: one of ``"forward_kl"``, ``"reverse_kl"``, ``"jsd"``, ``"tv"``, ``"mse"``.
        temperature: ``T > 0``; the result is multiplied by ``T**2`` (except for ``"mse"``).
        beta: JSD interpolation in ``[0, 1]``.
        mask: ``(...)`` bool/0-1, ``0`` = left out.
        labels: ``(...)``, ``-100`` = left out.
        num_items_in_batch: valid positions in the whole accumulated batch (default: in this one).
        chunk_size: tokens per chunk (``>= 1``).
        compiled: compute the divergence through ``torch.compile`` (see :func:`distillation_loss`).

    Returns:
        A 0-dim fp32 tensor. Gradients reach the hidden states and head weights/biases that require grad (the
        head's gradient is accumulated over chunks in fp32). One backward, first order only.

    Example:

    >>> import torch
    >>> hidden_s, head_s = torch.randn(2, 5, 8, requires_grad=True), torch.randn(30, 8, requires_grad=True)
    >>> hidden_t, head_t = torch.randn(2, 5, 16), torch.randn(30, 16)
    >>> loss = chunked_distillation_loss_from_hidden(hidden_s, head_s, hidden_t, head_t, chunk_size=3)
    >>> torch.allclose(loss, distillation_loss(hidden_s @ head_s.T, hidden_t @ head_t.T))
    True
    >>> loss.backward()
    """
    loss_type = _check_loss_type(loss_type)
    _check_temperature(temperature)
    _check_beta(beta)
    _check_chunk_size(chunk_size)
    for name, tensor in (
        ("student_hidden", student_hidden), ("student_lm_head_weight", student_lm_head_weight),
        ("teacher_hidden", teacher_hidden), ("teacher_lm_head_weight", teacher_lm_head_weight),
    ):  # fmt: skip
        _check_tensor(name, tensor)
    if student_hidden.shape[:-1] != teacher_hidden.shape[:-1]:
        raise ValueError(
            f"student_hidden.shape={tuple(student_hidden.shape)} and teacher_hidden.shape="
            f"{tuple(teacher_hidden.shape)} differ before the hidden size: both must come from the same batch "
            "(same input_ids, same padding, both shifted or neither)."
        )
    vocab = None
    for who, hidden, weight, bias in (
        ("student", student_hidden, student_lm_head_weight, student_lm_head_bias),
        ("teacher", teacher_hidden, teacher_lm_head_weight, teacher_lm_head_bias),
    ):
        if weight.ndim != 2 or weight.shape[1] != hidden.shape[-1]:
            raise ValueError(
                f"{who}_lm_head_weight.shape={tuple(weight.shape)} does not fit {who}_hidden of size "
                f"{hidden.shape[-1]}: the head weight is (vocab, hidden), as in `model.get_output_embeddings().weight` "
                "(a transposed (hidden, vocab) matrix needs `.T`)."
            )
        if bias is not None:
            _check_tensor(f"{who}_lm_head_bias", bias)
            if tuple(bias.shape) != (weight.shape[0],):
                raise ValueError(
                    f"{who}_lm_head_bias.shape={tuple(bias.shape)} does not match the head's vocabulary "
                    f"({weight.shape[0]}): pass the bias of the same head, shape (vocab,), or None."
                )
        vocab = weight.shape[0] if vocab is None else vocab
    if student_lm_head_weight.shape[0] != teacher_lm_head_weight.shape[0]:
        raise ValueError(
            f"student_lm_head_weight has vocab={student_lm_head_weight.shape[0]} rows and teacher_lm_head_weight "
            f"vocab={teacher_lm_head_weight.shape[0]}. {_VOCAB_FIX} Here: slice both weights (and biases) with "
            "`weight[:len(tokenizer)]`."
        )
    lead_shape = student_hidden.shape[:-1]
    valid = _valid_mask(lead_shape, mask, labels, student_hidden.device)
    count = valid.sum() if valid is not None else math.prod(lead_shape)
    scale = _scale(count, num_items_in_batch, _t2(loss_type, temperature), student_hidden)

    def chunk_sum(
        hidden_s: torch.Tensor, hidden_t: torch.Tensor, valid: torch.Tensor | None,
        weight_s: torch.Tensor, weight_t: torch.Tensor, bias_s: torch.Tensor | None, bias_t: torch.Tensor | None,
    ) -> torch.Tensor:  # fmt: skip
        hidden_s = hidden_s.reshape(-1, hidden_s.shape[-1])  # (n, H_s)
        hidden_t = hidden_t.reshape(-1, hidden_t.shape[-1])  # (n, H_t)
        if valid is not None:
            flat = valid.reshape(-1)
            hidden_s, hidden_t = hidden_s[flat], hidden_t[flat]  # only valid rows become logits
        student = F.linear(hidden_s, weight_s, bias_s)  # (n, V), in the model's dtype, as lm_head would give
        teacher = F.linear(hidden_t, weight_t, bias_t)  # (n, V)
        return _divergence_sum(student, teacher, None, loss_type, temperature, beta, compiled)

    return _chunked(
        chunk_sum,
        [student_hidden, teacher_hidden, valid],
        [student_lm_head_weight, teacher_lm_head_weight, student_lm_head_bias, teacher_lm_head_bias],
        len(lead_shape),
        scale,
        chunk_size,
    )


# --------------------------------------------------------------------------------------------------
# cached (top-k) teacher


class DistillationLosses(NamedTuple):
    """What :func:`distillation_and_ce_loss` returns: ``loss`` (differentiable) and its two parts (detached,
    for logging)."""

    loss: torch.Tensor
    kd: torch.Tensor
    ce: torch.Tensor


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
    r"""Distillation and hard-label cross-entropy in one pass over the logits: :math:`lpha\,\mathcal{L}_{KD} +
    (1-lpha)\,\mathcal{L}_{CE}`.

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
    >>> student, teacher = torch.randn(2, 6, 50, requires_grad=True), torch.randn(2, 6, 50)
    >>> labels = shift_labels(torch.randint(0, 50, (2, 6)))
    >>> out = distillation_and_ce_loss(student, teacher, labels, alpha=0.5)
    >>> kd = distillation_loss(student, teacher, labels=labels)
    >>> torch.allclose(out.loss, 0.5 * kd + 0.5 * cross_entropy_loss(student, labels))
    True
    >>> out.loss.backward()
    """
    _check_alpha(alpha)
    loss_type = _check_loss_type(loss_type)
    _check_temperature(temperature)
    _check_beta(beta)
    _check_pair(student_logits, teacher_logits, "student_logits", "teacher_logits")
    valid = _check_labels_in_range(student_logits, labels)
    if loss_type not in divergences.FUSED_LOSS_TYPES or teacher_logits.requires_grad:
        kd = distillation_loss(student_logits, teacher_logits, loss_type=loss_type, temperature=temperature,
                               beta=beta, labels=labels, num_items_in_batch=num_items_in_batch, compiled=compiled)  # fmt: skip
        ce = cross_entropy_loss(student_logits, labels, num_items_in_batch=num_items_in_batch)
        return DistillationLosses(combine_losses(kd, ce, alpha), kd.detach(), ce.detach())
    dtype = _compute_dtype(student_logits.dtype)
    weight, share = _mix(alpha, temperature)
    rows = divergences.kl_rows(student_logits.to(dtype), teacher_logits.to(dtype), loss_type, temperature, beta,
                               valid, compiled, labels=labels.to(valid.device), ce_share=share)  # fmt: skip
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
    r""":func:`topk_distillation_loss` and hard-label cross-entropy in one pass: :math:`lpha\,\mathcal{L}_{KD}
    + (1-lpha)\,\mathcal{L}_{CE}`, the same value and gradient as combining the two functions' results.

    Arguments as in :func:`topk_distillation_loss` and :func:`distillation_and_ce_loss`.

    Example:

    >>> import torch
    >>> student = torch.randn(2, 6, 50, requires_grad=True)
    >>> logprobs, indices = teacher_topk(torch.randn(2, 6, 50), k=8)
    >>> labels = shift_labels(torch.randint(0, 50, (2, 6)))
    >>> out = topk_distillation_and_ce_loss(student, logprobs, indices, labels, alpha=0.25)
    >>> kd = topk_distillation_loss(student, logprobs, indices, labels=labels)
    >>> torch.allclose(out.loss, 0.25 * kd + 0.75 * cross_entropy_loss(student, labels))
    True
    """
    _check_alpha(alpha)
    _check_temperature(temperature)
    _check_labels_in_range(student_logits, labels)
    logprobs_t, indices, tail_t, valid = _prepare_topk(
        student_logits, teacher_topk_logprobs, teacher_topk_indices, None, labels
    )
    weight, share = _mix(alpha, temperature)
    rows = divergences.topk_kl_rows(student_logits.to(logprobs_t.dtype), logprobs_t, indices, tail_t, temperature,
                                    valid, compiled, labels=labels.to(valid.device), ce_share=share)  # fmt: skip
    return _mixed(rows, valid.sum(), num_items_in_batch, weight, temperature)


def _mix(alpha: float, temperature: float) -> tuple[float, float]:
    """``alpha T^2 kd + (1 - alpha) ce = weight ((1 - share) kd + share ce)``: ``(weight, share)``."""
    weight = alpha * temperature**2 + (1.0 - alpha)  # > 0 for T > 0
    return weight, (1.0 - alpha) / weight


def _mixed(
    rows: divergences.Rows, count: torch.Tensor, num_items_in_batch: NumItems, weight: float, temperature: float
) -> DistillationLosses:
    denom = _denominator(count, num_items_in_batch)
    if isinstance(denom, torch.Tensor):
        denom = denom.to(device=rows.total.device, dtype=rows.total.dtype)
    return DistillationLosses(
        rows.total.sum() / denom * weight, rows.kd.sum() / denom * temperature**2, rows.ce.sum() / denom
    )


def _check_labels_in_range(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The valid-position mask of ``labels`` after checking that every valid label is a class of ``logits``."""
    _check_tensor("logits", logits)
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor of class ids; got {type(labels).__name__}.")
    valid = _valid_mask(logits.shape[:-1], None, labels, logits.device)
    kept = labels.to(logits.device)[valid]
    classes = logits.shape[-1]
    if kept.numel() and (int(kept.min()) < 0 or int(kept.max()) >= classes):
        raise ValueError(
            f"labels hold ids in [{int(kept.min())}, {int(kept.max())}] but the logits have {classes} classes: "
            "labels must be class ids in [0, num_classes) or -100 for positions left out."
        )
    return valid


def teacher_topk(
    teacher_logits: torch.Tensor, k: int, *, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The teacher's ``k`` most likely tokens and their log-probabilities at temperature ``T``, for caching.

    :math:`\log p_t = \mathrm{log\_softmax}(z_t / T)` in fp32, then the ``k`` largest, sorted in decreasing
    order. The rest of the distribution is kept implicitly as the tail mass :math:`1 - \sum_k p_t`, which
    :func:`topk_distillation_loss` uses as one more bucket. Store ``(logprobs, indices)`` (e.g. as safetensors,
    the indices as int32) instead of ``(tokens, vocab)`` logits. Compute them at the temperature the loss
    will use. Keep the log-probabilities in fp32 (or fp16): the tail mass is ``1 - sum`` of them, and in bf16
    it is only known to about ``1e-2``.

    Args:
        teacher_logits: ``(..., vocab)``.
        k: number of entries to keep, ``1 <= k <= vocab``.
        temperature: ``T > 0``, the temperature of the distillation run.

    Returns:
        ``(logprobs, indices)``, both ``(..., k)``: fp32 log-probabilities and int64 token ids.

    Example:

    >>> import torch
    >>> logprobs, indices = teacher_topk(torch.tensor([[0.0, 2.0, 1.0]]), k=2)
    >>> indices.tolist(), logprobs.exp().sum().item() < 1.0
    ([[1, 2]], True)
    """
    _check_tensor("teacher_logits", teacher_logits)
    _check_temperature(temperature)
    vocab = teacher_logits.shape[-1] if teacher_logits.ndim else 0
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int; got {type(k).__name__} {k!r}.")
    if not 1 <= k <= vocab:
        raise ValueError(
            f"k={k} must be between 1 and the vocabulary size {vocab}. Typical caches keep k=20..100 entries."
        )
    with torch.no_grad():
        logits = teacher_logits.to(_compute_dtype(teacher_logits.dtype))
        logprobs = F.log_softmax(logits / temperature, dim=-1)  # (..., V)
        values, indices = logprobs.topk(k, dim=-1)  # (..., k) each, sorted by decreasing probability
    return values, indices


def topk_distillation_loss(
    student_logits: torch.Tensor,
    teacher_topk_logprobs: torch.Tensor,
    teacher_topk_indices: torch.Tensor,
    *,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    num_items_in_batch: NumItems = None,
    compiled: bool = False,
) -> torch.Tensor:
    r"""Forward KL against a cached teacher stored as its top-k log-probabilities (see :func:`teacher_topk`).

    Both distributions are collapsed to ``k + 1`` buckets: the ``k`` cached tokens and one "tail" bucket
    holding the rest. With :math:`S` the cached indices, :math:`p_s = \mathrm{softmax}(z_s / T)`,
    :math:`\tau_t = 1 - \sum_{v \in S} p_t(v)` and :math:`\tau_s = 1 - \sum_{v \in S} p_s(v)`:

    .. math::
        \mathcal{L} = \frac{T^2}{N} \sum_{i\ \mathrm{valid}} \Big[\sum_{v \in S} p_t(v) \log\frac{p_t(v)}{p_s(v)}
        + \tau_t \log\frac{\tau_t}{\tau_s}\Big]

    This is the KL between the two bucketed distributions, so it is ``<=`` the full forward KL (merging outcomes
    cannot increase a divergence) and equals it when ``k = vocab``. :math:`\log \tau_s` is computed as a
    ``logsumexp`` over the student's non-cached tokens, so it stays exact when :math:`\tau_s` is tiny.

    Args:
        student_logits: ``(..., vocab)``.
        teacher_topk_logprobs: ``(..., k)`` teacher log-probabilities at temperature ``T`` (any float dtype).
        teacher_topk_indices: ``(..., k)`` integer token ids in ``[0, vocab)``, no repeats.
        temperature: ``T > 0``, the one the cache was computed with; the result is multiplied by ``T**2``.
        mask: ``(...)`` bool/0-1, ``0`` = left out.
        labels: ``(...)``, ``-100`` = left out.
        num_items_in_batch: valid positions in the whole accumulated batch (default: in this one).
        compiled: compute the divergence through ``torch.compile`` (a few seconds of compilation on first use;
            eager fallback with a warning where it cannot compile). On the CPU the eager blocked path is as fast
            (benchmarks/RESULTS.md); it can pay off on accelerators, where the eager path is one block.

    Returns:
        A 0-dim fp32 tensor, ``>= 0``.

    Example:

    >>> import torch
    >>> teacher, student = torch.randn(3, 40), torch.randn(3, 40)
    >>> logprobs, indices = teacher_topk(teacher, k=40)
    >>> torch.allclose(topk_distillation_loss(student, logprobs, indices), forward_kl_loss(student, teacher))
    True
    """
    _check_temperature(temperature)
    logprobs_t, indices, tail_t, valid = _prepare_topk(
        student_logits, teacher_topk_logprobs, teacher_topk_indices, mask, labels
    )
    # value and closed-form gradient in one pass (hf_lite.losses._fused; the formula above), on every row in place
    rows = divergences.topk_kl_rows(
        student_logits.to(logprobs_t.dtype), logprobs_t, indices, tail_t, temperature, valid, compiled
    )
    count = valid.sum() if valid is not None else math.prod(student_logits.shape[:-1])
    return _normalize(rows.total.sum(), count, num_items_in_batch) * (temperature * temperature)


def _prepare_topk(
    student_logits: torch.Tensor,
    teacher_topk_logprobs: torch.Tensor,
    teacher_topk_indices: torch.Tensor,
    mask: torch.Tensor | None,
    labels: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Checked ``(logprobs (..., k) in the compute dtype, indices (..., k) int64, tail mass (...), valid)``;
    rows left out get harmless indices."""
    _check_tensor("student_logits", student_logits)
    _check_tensor("teacher_topk_logprobs", teacher_topk_logprobs)
    _check_tensor("teacher_topk_indices", teacher_topk_indices, floating=False)
    if teacher_topk_logprobs.shape != teacher_topk_indices.shape:
        raise ValueError(
            f"teacher_topk_logprobs.shape={tuple(teacher_topk_logprobs.shape)} and teacher_topk_indices.shape="
            f"{tuple(teacher_topk_indices.shape)} differ: they are the two outputs of one teacher_topk call."
        )
    if student_logits.ndim == 0 or teacher_topk_indices.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(
            f"teacher_topk_indices.shape={tuple(teacher_topk_indices.shape)} does not match "
            f"student_logits.shape={tuple(student_logits.shape)} before the last dimension: the cache must hold "
            "one entry per student position (same examples, same padding, in the same order)."
        )
    vocab, k = student_logits.shape[-1], teacher_topk_indices.shape[-1]
    if not 1 <= k <= vocab:
        raise ValueError(
            f"the cache holds k={k} entries per position but the student vocabulary has {vocab}."
        )
    valid = _valid_mask(student_logits.shape[:-1], mask, labels, student_logits.device)
    indices = teacher_topk_indices.long()  # (..., k)
    checked = indices if valid is None else indices[valid]  # the checks look at valid rows only
    if checked.numel() and (int(checked.min()) < 0 or int(checked.max()) >= vocab):
        raise ValueError(
            f"teacher_topk_indices hold ids in [{int(checked.min())}, {int(checked.max())}] but the student "
            f"vocabulary has {vocab} entries. {_VOCAB_FIX} A cache built with another tokenizer must be rebuilt."
        )
    if valid is not None:  # rows left out may hold anything (padding): give them harmless ids 0..k-1
        indices = torch.where(valid.unsqueeze(-1), indices, torch.arange(k, device=indices.device))
    dtype = _compute_dtype(student_logits.dtype)
    logprobs_t = teacher_topk_logprobs.to(dtype)  # (..., k)
    # Mass outside the cache, summed in fp64 to limit cancellation when the teacher is confident.
    tail_t = 1.0 - logprobs_t.double().exp().sum(-1)  # (...)
    tail_checked = tail_t if valid is None else tail_t[valid]
    # A cache stored in bf16 overshoots 1 by up to ~1e-2 through rounding alone; logits overshoot by far more.
    if tail_checked.numel() and float(tail_checked.min()) < -0.05:
        raise ValueError(
            f"teacher_topk_logprobs sum to {1 - float(tail_checked.min()):.4f} > 1 in probability: they look like "
            "logits, not log-probabilities. Build the cache with teacher_topk(teacher_logits, k, temperature=T)."
        )
    return logprobs_t, indices, tail_t.clamp(0.0, 1.0).to(dtype), valid


# --------------------------------------------------------------------------------------------------
# intermediate layers


def hidden_state_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    *,
    kind: Literal["mse", "cosine"] | str = "mse",
    mask: torch.Tensor | None = None,
    num_items_in_batch: NumItems = None,
) -> torch.Tensor:
    r"""Match one layer's hidden states, token by token (TinyBERT, DistilBERT's cosine loss).

    .. math::
        \mathcal{L}_{mse} = \frac1N \sum_{i\ \mathrm{valid}} \frac1D \|h_s^{(i)} - h_t^{(i)}\|^2, \qquad
        \mathcal{L}_{cosine} = \frac1N \sum_{i\ \mathrm{valid}} \big(1 - \cos(h_s^{(i)}, h_t^{(i)})\big)

    Without a mask, ``"mse"`` equals ``F.mse_loss(student_hidden, teacher_hidden)``. When the hidden sizes
    differ, project the student first (a trainable ``torch.nn.Linear(d_student, d_teacher)``, TinyBERT's
    :math:`W_h`) and pass its output.

    Args:
        student_hidden: ``(batch, seq, dim)`` (any ``(..., dim)``).
        teacher_hidden: same shape.
        kind: ``"mse"`` or ``"cosine"``.
        mask: ``(batch, seq)`` attention mask (1 = token, 0 = padding), bool or integer.
        num_items_in_batch: valid tokens in the whole accumulated batch (default: in this one).

    Returns:
        A 0-dim fp32 tensor.

    Example:

    >>> import torch
    >>> h = torch.randn(2, 3, 8)
    >>> hidden_state_loss(h, 2 * h, kind="cosine").abs().item() < 1e-6
    True
    """
    kind = _check_kind(kind, HIDDEN_LOSS_KINDS)
    _check_tensor("student_hidden", student_hidden)
    _check_tensor("teacher_hidden", teacher_hidden)
    if student_hidden.ndim == 0 or teacher_hidden.ndim == 0:
        raise ValueError(
            "student_hidden and teacher_hidden must have a feature dimension: (batch, seq, dim)."
        )
    if student_hidden.shape != teacher_hidden.shape:
        if student_hidden.shape[:-1] == teacher_hidden.shape[:-1]:
            raise ValueError(
                f"student_hidden has dim={student_hidden.shape[-1]} and teacher_hidden dim="
                f"{teacher_hidden.shape[-1]}. Project the student first with a trainable "
                f"torch.nn.Linear({student_hidden.shape[-1]}, {teacher_hidden.shape[-1]}) (TinyBERT's W_h) and "
                "pass its output as student_hidden."
            )
        raise ValueError(
            f"student_hidden.shape={tuple(student_hidden.shape)} and teacher_hidden.shape="
            f"{tuple(teacher_hidden.shape)} differ: both must come from the same batch (same padding)."
        )
    lead_shape = student_hidden.shape[:-1]
    valid = _valid_mask(lead_shape, mask, None, student_hidden.device)
    dim = student_hidden.shape[-1]
    student, teacher = student_hidden.reshape(-1, dim), teacher_hidden.reshape(-1, dim)  # (N, D)
    if valid is not None:
        flat = valid.reshape(-1)
        student, teacher = student[flat], teacher[flat]
    dtype = _compute_dtype(student.dtype)
    student, teacher = student.to(dtype), teacher.to(dtype)
    if kind == "mse":
        per_token = (student - teacher).pow(2).mean(-1)  # (n,)
    else:
        per_token = 1.0 - F.cosine_similarity(student, teacher, dim=-1, eps=1e-8)  # (n,)
    count = valid.sum() if valid is not None else math.prod(lead_shape)
    return _normalize(per_token.sum(), count, num_items_in_batch)


def attention_loss(
    student_attn: torch.Tensor,
    teacher_attn: torch.Tensor,
    *,
    kind: Literal["kl", "mse"] | str = "kl",
    mask: torch.Tensor | None = None,
    num_items_in_batch: NumItems = None,
) -> torch.Tensor:
    r"""Match attention probabilities (``output_attentions=True``), averaged over heads (TinyBERT, MiniLM).

    For a valid query position :math:`q` with valid keys :math:`K_b` and :math:`H` heads:

    .. math::
        \ell_{kl}(q) = \frac1H \sum_h \sum_{k \in K_b} a_t^{h,q,k} \log\frac{a_t^{h,q,k}}{a_s^{h,q,k}}, \qquad
        \ell_{mse}(q) = \frac1H \sum_h \frac{1}{|K_b|} \sum_{k \in K_b} (a_s^{h,q,k} - a_t^{h,q,k})^2

    and :math:`\mathcal{L} = \frac1N \sum_{q\ \mathrm{valid}} \ell(q)`. Padded query rows and padded key columns
    are left out; entries where the teacher's probability is 0 (a causal mask) contribute 0 to the KL, and a
    student probability of exactly 0 is clamped to the smallest fp32 normal number. Without a mask, ``"mse"``
    equals ``F.mse_loss(student_attn, teacher_attn)``.

    Args:
        student_attn: ``(batch, heads, query, key)`` attention probabilities (rows sum to 1).
        teacher_attn: same shape. With a different number of heads, average the teacher's heads in groups
            (``teacher_attn.view(b, h_s, h_t // h_s, q, k).mean(2)``) or pick the heads to match first.
        kind: ``"kl"`` (KL(teacher || student) per query row) or ``"mse"``.
        mask: ``(batch, seq)`` attention mask (1 = token, 0 = padding) for self-attention (``query == key == seq``);
            it masks both the query rows and the key columns.
        num_items_in_batch: valid query tokens in the whole accumulated batch (default: in this one).

    Returns:
        A 0-dim fp32 tensor.

    Example:

    >>> import torch
    >>> attn = torch.softmax(torch.randn(2, 4, 5, 5), dim=-1)
    >>> attention_loss(attn, attn, mask=torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])).item()
    0.0
    """
    kind = _check_kind(kind, ATTENTION_LOSS_KINDS)
    _check_tensor("student_attn", student_attn)
    _check_tensor("teacher_attn", teacher_attn)
    if student_attn.ndim != 4 or teacher_attn.ndim != 4:
        raise ValueError(
            f"attention_loss expects (batch, heads, query, key) tensors, the shape of each entry of "
            f"`outputs.attentions`; got {tuple(student_attn.shape)} and {tuple(teacher_attn.shape)}."
        )
    if student_attn.shape != teacher_attn.shape:
        b, h_s, h_t = student_attn.shape[0], student_attn.shape[1], teacher_attn.shape[1]
        same_otherwise = (
            student_attn.shape[0] == teacher_attn.shape[0]
            and student_attn.shape[2:] == teacher_attn.shape[2:]
        )
        if h_s != h_t and same_otherwise:
            fix = (
                f"average the teacher's heads in groups: teacher_attn.view({b}, {h_s}, {h_t // h_s}, q, k).mean(2)"
                if h_t % h_s == 0
                else "map the heads explicitly (pick or average teacher heads so both have the same count)"
            )
            raise ValueError(
                f"student_attn has heads={h_s} and teacher_attn heads={h_t}: attention maps are compared head by "
                f"head. To compare them, {fix}; or average both over heads (.mean(1, keepdim=True))."
            )
        raise ValueError(
            f"student_attn.shape={tuple(student_attn.shape)} and teacher_attn.shape={tuple(teacher_attn.shape)} "
            "differ: both must come from the same batch (same input_ids and padding)."
        )
    batch, heads, queries, keys = student_attn.shape
    student = student_attn.transpose(1, 2)  # (B, Q, H, K)
    teacher = teacher_attn.transpose(1, 2)  # (B, Q, H, K)
    key_valid = None
    if mask is not None:
        if queries != keys:
            raise ValueError(
                f"mask applies to self-attention (query length == key length) but the attention maps are "
                f"{queries} x {keys}. Pass mask=None for cross-attention maps."
            )
        if isinstance(mask, torch.Tensor) and tuple(mask.shape) != (batch, keys):
            raise ValueError(
                f"mask.shape={tuple(mask.shape)} must be (batch, seq)=({batch}, {keys}): the attention_mask of the "
                "batch the attention maps come from."
            )
        valid = _valid_mask((batch, queries), mask, None, student_attn.device)  # (B, Q)
        key_valid = valid[:, None, None, :].expand(batch, queries, 1, keys)[valid]  # (n, 1, K)
        student, teacher = (
            student[valid],
            teacher[valid],
        )  # (n, H, K): padded query rows never enter the maths
        count: torch.Tensor | int = valid.sum()
    else:
        student, teacher = student.reshape(-1, heads, keys), teacher.reshape(-1, heads, keys)  # (n, H, K)
        count = batch * queries
    dtype = _compute_dtype(student.dtype)
    student, teacher = student.to(dtype), teacher.to(dtype)
    if kind == "kl":
        log_s = student.clamp_min(torch.finfo(torch.float32).tiny).log()
        log_t = teacher.clamp_min(torch.finfo(torch.float32).tiny).log()
        terms = _kl_terms(log_t, log_s, probs=teacher)  # (n, H, K)
        if key_valid is not None:
            terms = torch.where(key_valid, terms, 0.0)
        per_row = terms.sum(-1)  # (n, H)
    else:
        squares = (student - teacher).pow(2)  # (n, H, K)
        if key_valid is not None:
            squares = torch.where(key_valid, squares, 0.0)
            per_row = squares.sum(-1) / key_valid.sum(-1).clamp_min(1)  # (n, H)
        else:
            per_row = squares.mean(-1)  # (n, H)
    per_token = per_row.mean(-1)  # (n,) mean over heads
    return _normalize(per_token.sum(), count, num_items_in_batch)


# --------------------------------------------------------------------------------------------------
# maths


def _kl_terms(log_p: torch.Tensor, log_q: torch.Tensor, probs: torch.Tensor | None = None) -> torch.Tensor:
    """Elementwise ``p * (log p - log q)`` with ``0 log 0 = 0`` (no NaN where ``p == 0``, in values or grads)."""
    p = log_p.exp() if probs is None else probs
    # Replace the log-ratio where p == 0 *before* multiplying, so that neither the value nor the gradient of
    # the product sees (-inf) - (-inf).
    return p * torch.where(p > 0, log_p - log_q, 0.0)


def _divergence_sum(
    student: torch.Tensor,
    teacher: torch.Tensor,
    valid: torch.Tensor | None,
    loss_type: str,
    temperature: float,
    beta: float,
    compiled: bool = False,
) -> torch.Tensor:
    """Sum over the ``valid`` positions of the divergence of ``(..., V)`` logits, before ``T**2`` and the
    normalisation."""
    dtype = _compute_dtype(student.dtype)
    if loss_type in divergences.FUSED_LOSS_TYPES and not teacher.requires_grad:
        # The usual case (a frozen teacher): value and closed-form gradient in one pass, on the logits as
        # they are (no copy of the valid rows, no index/scatter in backward): several times faster and lighter
        # than autograd through the formula, which stays below for a teacher that needs gradients.
        rows = divergences.kl_rows(
            student.to(dtype), teacher.to(dtype), loss_type, temperature, beta, valid, compiled
        )
        return rows.total.sum()
    vocab = student.shape[-1]
    student, teacher = student.reshape(-1, vocab), teacher.reshape(-1, vocab)  # (N, V)
    if valid is not None:
        flat = valid.reshape(-1)
        student, teacher = student[flat], teacher[flat]  # (n_valid, V): masked rows never enter the maths
    return _token_divergence(student.to(dtype), teacher.to(dtype), loss_type, temperature, beta).sum()


def _token_divergence(
    student: torch.Tensor, teacher: torch.Tensor, loss_type: str, temperature: float, beta: float
) -> torch.Tensor:
    """Per-row divergence of ``(n, V)`` logits, before the ``T**2`` factor and the reduction; returns ``(n,)``."""
    if loss_type == "mse":
        return (student - teacher).pow(2).mean(-1)
    if temperature != 1.0:
        student, teacher = student / temperature, teacher / temperature
    log_s = F.log_softmax(student, dim=-1)  # (n, V)
    log_t = F.log_softmax(teacher, dim=-1)  # (n, V)
    if loss_type == "tv":
        return 0.5 * (log_s.exp() - log_t.exp()).abs().sum(-1)
    if loss_type == "forward_kl" or (loss_type == "jsd" and beta == 0.0):
        return _kl_terms(log_t, log_s).sum(-1)
    if loss_type == "reverse_kl" or (loss_type == "jsd" and beta == 1.0):
        return _kl_terms(log_s, log_t).sum(-1)
    # log m = log((1 - beta) p_s + beta p_t), by logsumexp over the two terms
    log_m = torch.logaddexp(log_s + math.log1p(-beta), log_t + math.log(beta))  # (n, V)
    return beta * _kl_terms(log_t, log_m).sum(-1) + (1.0 - beta) * _kl_terms(log_s, log_m).sum(-1)


def _t2(loss_type: str, temperature: float) -> float:
    return 1.0 if loss_type == "mse" else float(temperature) ** 2


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half-precision inputs; fp64 stays fp64."""
    return torch.promote_types(dtype, torch.float32)


def _denominator(count: torch.Tensor | int, num_items_in_batch: NumItems) -> torch.Tensor | float:
    denom: torch.Tensor | int | float = (
        count if num_items_in_batch is None else _check_num_items(num_items_in_batch)
    )
    if isinstance(denom, torch.Tensor):
        # No `.item()`: a count on the GPU stays there (no sync). An empty batch divides 0 by 1.
        denom = denom.reshape(())
        return torch.where(denom > 0, denom, torch.ones_like(denom))
    return denom if denom > 0 else 1


def _normalize(total: torch.Tensor, count: torch.Tensor | int, num_items_in_batch: NumItems) -> torch.Tensor:
    """``total / num_items_in_batch`` (or ``/ count``); 0 valid items gives exactly 0."""
    denom = _denominator(count, num_items_in_batch)
    if isinstance(denom, torch.Tensor):
        denom = denom.to(device=total.device, dtype=total.dtype)
    return total / denom


def _scale(
    count: torch.Tensor | int, num_items_in_batch: NumItems, factor: float, like: torch.Tensor
) -> torch.Tensor:
    dtype = _compute_dtype(like.dtype)
    denom = _denominator(count, num_items_in_batch)
    denom = torch.as_tensor(denom, device=like.device).to(dtype)
    return factor / denom


# --------------------------------------------------------------------------------------------------
# chunking


class _ChunkedSum(torch.autograd.Function):
    """``scale * sum over chunks of fn(row chunks..., shared...)``, whose gradient is computed chunk by chunk
    during the forward pass so that no chunk's intermediate tensors outlive it.

    Row tensors are ``(A, S, ...)`` and are cut along their first two dimensions; shared tensors (head
    weights) are passed whole to every chunk and their gradients are summed over chunks in fp32.
    """

    @staticmethod
    def forward(ctx, fn, chunks, scale, num_rows, *tensors):  # type: ignore[override]
        needs = ctx.needs_input_grad[4:]
        grads: list[torch.Tensor | None] = []
        for i, (tensor, need) in enumerate(zip(tensors, needs, strict=True)):
            if not need:
                grads.append(None)
            elif i < num_rows:
                grads.append(torch.empty(tensor.shape, dtype=tensor.dtype, device=tensor.device))
            else:
                grads.append(torch.zeros(tensor.shape, dtype=torch.float32, device=tensor.device))
        total = torch.zeros((), dtype=scale.dtype, device=scale.device)
        for index in chunks:
            args = _chunk_args(tensors, num_rows, index)
            if not any(needs):
                total += fn(*args)
                continue
            args = [a.detach().requires_grad_() if need else a for a, need in zip(args, needs, strict=True)]
            with torch.enable_grad():
                value = fn(*args)
                wrt = [a for a, need in zip(args, needs, strict=True) if need]
                chunk_grads = torch.autograd.grad(
                    value * scale, wrt, allow_unused=True, materialize_grads=True
                )
            total += value.detach()
            chunk_grads_iter = iter(chunk_grads)
            for i, need in enumerate(needs):
                if not need:
                    continue
                grad = next(chunk_grads_iter)
                if i < num_rows:
                    grads[i][index] = grad
                else:
                    grads[i] += grad
        for i in range(num_rows, len(tensors)):
            if grads[i] is not None:
                grads[i] = grads[i].to(tensors[i].dtype)
        ctx.grads = grads
        return total * scale

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):  # type: ignore[override]
        grads = ctx.grads
        if grads is None:
            raise RuntimeError(
                "The chunked distillation loss computes its gradient during the forward pass and hands it over "
                "once; a second backward through the same graph (retain_graph=True) is not supported. Compute the "
                "loss again, or use distillation_loss."
            )
        ctx.grads = None  # free the buffers with this backward
        for grad in grads:
            if grad is not None:
                grad.mul_(grad_output)
        return (None, None, None, None, *grads)


def _chunked(
    fn: Callable[..., torch.Tensor],
    rows: Sequence[torch.Tensor | None],
    shared: Sequence[torch.Tensor | None],
    lead_ndim: int,
    scale: torch.Tensor,
    chunk_size: int,
) -> torch.Tensor:
    """Lay the row tensors out as ``(A, S, ...)`` views (copying only if no common view exists) and run
    :class:`_ChunkedSum` over chunks of at most ``chunk_size`` positions."""
    present = [t for t in rows if t is not None]
    lead_shape = present[0].shape[:lead_ndim]
    n = math.prod(lead_shape)
    layouts = [(1, n)]
    if lead_ndim >= 2 and lead_shape[-1] > 0:
        # e.g. logits[:, :-1] of a contiguous (B, S, V) tensor: (B, S-1) rows are a view, B*(S-1) rows are not
        layouts.append((n // lead_shape[-1], lead_shape[-1]))
    a, s = next(
        (layout for layout in layouts if all(_viewable(t, lead_ndim, layout) for t in present)), layouts[-1]
    )
    rows = [None if t is None else t.reshape(a, s, *t.shape[lead_ndim:]) for t in rows]
    if n == 0:
        chunks: list[tuple[slice, ...]] = []
    elif s <= chunk_size:
        step = max(1, chunk_size // s)
        chunks = [(slice(i, min(i + step, a)),) for i in range(0, a, step)]
    else:
        chunks = [
            (slice(i, i + 1), slice(j, min(j + chunk_size, s)))
            for i in range(a)
            for j in range(0, s, chunk_size)
        ]
    if not torch.is_grad_enabled():
        # Evaluation under no_grad: the head weights still require grad, but no gradient is wanted.
        total = torch.zeros((), dtype=scale.dtype, device=scale.device)
        for index in chunks:
            total += fn(*_chunk_args(rows, len(rows), index), *shared)
        return total * scale
    return _ChunkedSum.apply(fn, chunks, scale, len(rows), *rows, *shared)


def _chunk_args(tensors: Sequence[torch.Tensor | None], num_rows: int, index: tuple[slice, ...]) -> list:
    """The first ``num_rows`` tensors cut to the chunk ``index``, the others (shared) as they are."""
    return [t[index] if i < num_rows and t is not None else t for i, t in enumerate(tensors)]


def _viewable(tensor: torch.Tensor, lead_ndim: int, layout: tuple[int, int]) -> bool:
    try:
        tensor.view(*layout, *tensor.shape[lead_ndim:])
    except RuntimeError:
        return False
    return True


# --------------------------------------------------------------------------------------------------
# checks


def _did_you_mean(value: str, choices: Sequence[str], hints: dict[str, str] | None = None) -> str:
    key = value.strip().lower().replace("-", "_")
    if hints and key in hints:
        return f" (did you mean {hints[key]!r}?)"
    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_loss_type(loss_type: str) -> str:
    if not isinstance(loss_type, str):
        raise TypeError(
            f"loss_type must be a string, one of {list(LOSS_TYPES)}; got {type(loss_type).__name__}."
        )
    if loss_type not in LOSS_TYPES:
        raise ValueError(
            f"loss_type={loss_type!r} is not a known distillation loss"
            f"{_did_you_mean(loss_type, LOSS_TYPES, _LOSS_TYPE_HINTS)}. Use one of: {', '.join(LOSS_TYPES)}."
        )
    return loss_type


def _check_kind(kind: str, choices: tuple[str, ...]) -> str:
    if not isinstance(kind, str):
        raise TypeError(f"kind must be a string, one of {list(choices)}; got {type(kind).__name__}.")
    if kind not in choices:
        raise ValueError(
            f"kind={kind!r} is not known{_did_you_mean(kind, choices)}. Use one of: {', '.join(choices)}."
        )
    return kind


def _check_alpha(alpha: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a number in [0, 1]; got {type(alpha).__name__} {alpha!r}.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(
            f"alpha={alpha!r} is outside [0, 1]: it weighs the distillation loss against the hard-label loss "
            "(alpha*kd + (1-alpha)*ce). Use 1.0 for pure distillation, 0.5 for an even mix."
        )


def _check_temperature(temperature: float) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(
            f"temperature must be a positive number; got {type(temperature).__name__} {temperature!r}."
        )
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(
            f"temperature={temperature!r} must be a finite number > 0: logits are divided by it. Use 1.0 for the "
            "models' own distributions, or 2.0-4.0 to soften them as in Hinton et al."
        )


def _check_beta(beta: float) -> None:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise TypeError(f"beta must be a number in [0, 1]; got {type(beta).__name__} {beta!r}.")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(
            f"beta={beta!r} is outside [0, 1]: 0 gives forward KL(teacher||student), 1 reverse KL(student||teacher), "
            "values between the generalized JSD. Use e.g. beta=0.5."
        )


def _check_chunk_size(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size must be an int; got {type(chunk_size).__name__} {chunk_size!r}.")
    if chunk_size < 1:
        raise ValueError(
            f"chunk_size={chunk_size} must be >= 1 (tokens per chunk). Use e.g. 128 (the default); lower it if memory is short."
        )


def _check_num_items(num_items_in_batch: NumItems) -> torch.Tensor | int | float:
    if isinstance(num_items_in_batch, torch.Tensor):
        if num_items_in_batch.numel() != 1:
            raise ValueError(
                f"num_items_in_batch must be a number or a one-element tensor; got a tensor of shape "
                f"{tuple(num_items_in_batch.shape)}. Pass the total count of valid tokens, e.g. (labels != -100).sum()."
            )
        return num_items_in_batch
    if isinstance(num_items_in_batch, bool) or not isinstance(num_items_in_batch, (int, float)):
        raise TypeError(
            f"num_items_in_batch must be an int, a float or a one-element tensor; got "
            f"{type(num_items_in_batch).__name__}."
        )
    if not (math.isfinite(num_items_in_batch) and num_items_in_batch >= 0):
        raise ValueError(
            f"num_items_in_batch={num_items_in_batch!r} must be a count >= 0: the number of valid tokens in the whole "
            "accumulated batch (what transformers.Trainer passes to compute_loss), or None for this batch's count."
        )
    return num_items_in_batch


def _check_tensor(name: str, tensor: torch.Tensor, *, floating: bool = True) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(tensor).__name__}.")
    if floating and not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor; got dtype {tensor.dtype}.")
    if not floating and (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer tensor; got dtype {tensor.dtype}.")


def _check_pair(student: torch.Tensor, teacher: torch.Tensor, s_name: str, t_name: str) -> None:
    _check_tensor(s_name, student)
    _check_tensor(t_name, teacher)
    if student.ndim == 0 or teacher.ndim == 0:
        raise ValueError(f"{s_name} and {t_name} must have a vocabulary dimension: (..., vocab).")
    if student.shape == teacher.shape:
        return
    if student.shape[:-1] == teacher.shape[:-1]:
        raise ValueError(
            f"{s_name} has vocab={student.shape[-1]} and {t_name} vocab={teacher.shape[-1]}. {_VOCAB_FIX}"
        )
    raise ValueError(
        f"{s_name}.shape={tuple(student.shape)} and {t_name}.shape={tuple(teacher.shape)} differ: both must come "
        "from the same batch (same input_ids and padding, both shifted with shift_for_causal_lm or neither)."
    )


def _valid_mask(
    lead_shape: torch.Size | tuple[int, ...],
    mask: torch.Tensor | None,
    labels: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor | None:
    """Boolean ``lead_shape`` tensor of the positions that count, or ``None`` when all do."""
    valid = None
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor (bool or 0/1 integers); got {type(mask).__name__}.")
        if mask.is_floating_point() or mask.is_complex():
            raise TypeError(
                f"mask must be bool or 0/1 integers (an attention_mask); got dtype {mask.dtype}. Use mask.bool()."
            )
        if mask.shape != lead_shape:
            raise ValueError(
                f"mask.shape={tuple(mask.shape)} must be {tuple(lead_shape)}, the inputs' shape without the last "
                "dimension. For a causal LM shift the mask like the labels: mask[:, 1:]."
            )
        valid = mask.to(device=device, dtype=torch.bool)
    if labels is not None:
        _check_tensor("labels", labels, floating=False)
        if labels.shape != lead_shape:
            raise ValueError(
                f"labels.shape={tuple(labels.shape)} must be {tuple(lead_shape)}, the inputs' shape without the last "
                "dimension. For a causal LM align the labels with shift_labels(labels) (or slice both models' logits "
                "with shift_for_causal_lm)."
            )
        from_labels = labels.to(device) != IGNORE_INDEX
        valid = from_labels if valid is None else valid & from_labels
    return valid
