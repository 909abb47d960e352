r"""Distillation between models that do not share a vocabulary: ULD and a GOLD-style hybrid, on aligned spans.

The two sequences are compared span by span, where the tokenizations agree on a boundary
(:func:`hf_lite.data.align_offsets`; :func:`hf_lite.data.alignment_tensors` gives the index tensors read here,
the ``alignment`` argument). For each counted span ``k``:

- **First-token distribution.** The logits at the position before the span's first token (they predict how the
  span starts): :math:`p(v) = \mathrm{softmax}(z / T)_v`, on each side with its own vocabulary.
- **Chain rule over the span.** The span's later tokens are multiplied in: with :math:`c = \prod_{j > 1}
  p(x_j \mid x_{<j})` (the probabilities of the span's actual later tokens), the span's vector is
  :math:`q(v) = p(v)\,c`; at the actual first token :math:`q` is the probability of the span's text as that
  model tokenizes it. A one-token span has :math:`c = 1` (TRL GOLD's "observed" merge).

:func:`uld_loss` (Universal Logit Distillation, Boizard et al. 2024): the L1 distance between the two vectors
sorted in decreasing order, the shorter padded with zeros: :math:`\sum_r |\mathrm{sort}(q_s)_r -
\mathrm{sort}(q_t)_r|`. It needs no correspondence between the vocabularies.

:func:`hybrid_uld_loss` (TRL's GOLD): tokens with the same text in both vocabularies
(:func:`hf_lite.data.shared_vocabulary`, ``M`` pairs) are compared one to one, the rest by ULD:

.. math::
    \mathcal{L}_k = w_m\, D\big([q_s(\mathrm{shared}), \tau_s] \,\|\, [q_t(\mathrm{shared}), \tau_t]\big)
      + w_u \sum_r |\mathrm{sort}(q_s(\mathrm{rest}))_r - \mathrm{sort}(q_t(\mathrm{rest}))_r|

where :math:`\tau = 1 - \sum_{\mathrm{shared}} q = (1 - c) + c \sum_{\mathrm{rest}} p` is the mass outside the
shared tokens (one extra bucket, so that both sides are distributions over ``M + 1`` outcomes) and ``D`` is
``loss_type`` (forward/reverse KL, generalized JSD, TV; the formulas of :func:`hf_lite.losses.distillation_loss`).
With two identical tokenizers every token is shared, every span is one token and :math:`\tau = 0`: the hybrid
loss *is* the ordinary token-level loss at the same positions.

Conventions of :mod:`hf_lite.losses`: fp32 maths; only counted spans (``alignment["span_mask"]`` and ``mask``)
enter the computation; ``loss = T**2 * sum over counted spans / num_items_in_batch`` (default: the number of
counted spans here), so pass the number of counted spans of the whole accumulated batch (the sum of
``span_mask`` over its micro-batches) for exact gradient accumulation; no counted span gives exactly 0.

>>> import torch
>>> alignment = {"student_index": torch.tensor([[0, 1]]), "teacher_index": torch.tensor([[0, 2]]),
...              "span_mask": torch.tensor([[True, True]]), "student_span": torch.tensor([[-1, -1, -1]]),
...              "teacher_span": torch.tensor([[-1, 1, -1, -1]]), "student_next_ids": torch.tensor([[1, 2, 0]]),
...              "teacher_next_ids": torch.tensor([[3, 4, 5, 0]])}
>>> loss = uld_loss(torch.randn(1, 3, 11), torch.randn(1, 4, 17), alignment)
>>> loss.ndim, bool(loss >= 0)
(0, True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from hf_lite.losses._checks import (
    LossType,
    NumItems,
    check_beta,
    check_loss_type,
    check_temperature,
    check_tensor,
)
from hf_lite.losses._maths import compute_dtype, normalize, token_divergence

__all__ = ["ALIGNMENT_KEYS", "HYBRID_LOSS_TYPES", "hybrid_uld_loss", "uld_loss"]

#: The tensors an ``alignment`` mapping holds (what :func:`hf_lite.data.alignment_tensors` returns).
ALIGNMENT_KEYS = (
    "student_index",
    "teacher_index",
    "span_mask",
    "student_span",
    "teacher_span",
    "student_next_ids",
    "teacher_next_ids",
)
#: ``loss_type`` values of :func:`hybrid_uld_loss`'s shared-vocabulary part (MSE compares logits, not
#: probabilities, so it has no meaning on merged span probabilities).
HYBRID_LOSS_TYPES = ("forward_kl", "reverse_kl", "jsd", "tv")


def _check_alignment(
    alignment: Mapping[str, torch.Tensor],
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """Check the alignment mapping against both logits; return the ``(batch, K)`` counted-span mask."""
    if not isinstance(alignment, Mapping):
        raise TypeError(
            f"alignment must be a mapping of tensors (hf_lite.data.alignment_tensors); got {type(alignment).__name__}."
        )
    missing = [key for key in ALIGNMENT_KEYS if key not in alignment]
    if missing:
        raise ValueError(
            f"alignment lacks {missing}: build it with hf_lite.data.alignment_tensors(...) (keys {list(ALIGNMENT_KEYS)})."
        )
    for key in ALIGNMENT_KEYS:
        if key != "span_mask":
            check_tensor(f"alignment[{key!r}]", alignment[key], floating=False)
    if not isinstance(alignment["span_mask"], torch.Tensor) or alignment["span_mask"].is_floating_point():
        raise TypeError(
            "alignment['span_mask'] must be a bool tensor (batch, spans), as alignment_tensors builds it."
        )
    for name, logits in (("student_logits", student), ("teacher_logits", teacher)):
        check_tensor(name, logits)
        if logits.ndim != 3:
            raise ValueError(f"{name} must be (batch, seq, vocab); got shape {tuple(logits.shape)}.")
    span_mask = alignment["span_mask"]
    shape = tuple(span_mask.shape)
    for side, logits in (("student", student), ("teacher", teacher)):
        if tuple(alignment[f"{side}_index"].shape) != shape or shape[0] != logits.shape[0]:
            raise ValueError(
                f"alignment[{side + '_index'!r}].shape={tuple(alignment[side + '_index'].shape)}, span_mask.shape="
                f"{shape} and {side}_logits.shape={tuple(logits.shape)} disagree: the alignment must be built from "
                "this batch (one row per example, the same padding)."
            )
        for key in (f"{side}_span", f"{side}_next_ids"):
            if tuple(alignment[key].shape) != tuple(logits.shape[:2]):
                raise ValueError(
                    f"alignment[{key!r}].shape={tuple(alignment[key].shape)} must be {tuple(logits.shape[:2])}, "
                    f"{side}_logits.shape without the vocabulary: build the alignment from the padded batch."
                )
    counted = span_mask.to(device=student.device, dtype=torch.bool)
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.is_floating_point() or tuple(mask.shape) != shape:
            raise ValueError(
                f"mask must be a bool or 0/1 integer tensor of shape {shape} (batch, spans), like "
                "alignment['span_mask']; False leaves a span out."
            )
        counted = counted & mask.to(device=student.device, dtype=torch.bool)
    return counted


def _span_vectors(
    logits: torch.Tensor,
    alignment: Mapping[str, torch.Tensor],
    side: str,
    counted: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p of the first token (n, V), log c (n,))`` for the ``n`` counted spans, in row-major span order."""
    batch, seq, vocab = logits.shape
    dtype = compute_dtype(logits.dtype)
    device = logits.device
    counted = counted.to(device)  # a teacher may sit on another device than the student
    rows, ks = counted.nonzero(as_tuple=True)  # (n,), (n,)
    index = alignment[f"{side}_index"].to(device)
    positions = index[rows, ks]  # (n,)
    if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= seq):
        raise ValueError(
            f"alignment[{side + '_index'!r}] points at positions outside [0, {seq}): build it from this batch."
        )
    log_first = F.log_softmax(logits[rows, positions].to(dtype) / temperature, dim=-1)  # (n, V)
    # chain rule: the log-probability of each later token of each counted span, summed per span
    span = alignment[f"{side}_span"].to(device)
    span = torch.where(span >= 0, span, -1)
    span_ok = (span >= 0) & counted.gather(1, span.clamp(min=0, max=counted.shape[1] - 1))
    b, j = span_ok.nonzero(as_tuple=True)  # (m,)
    targets = alignment[f"{side}_next_ids"].to(device)[b, j].long()  # (m,)
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= vocab):
        raise ValueError(
            f"alignment[{side + '_next_ids'!r}] holds ids outside [0, {vocab}), the {side}'s vocabulary: the "
            f"alignment was built from another tokenizer's input_ids."
        )
    z = logits[b, j].to(dtype) / temperature  # (m, V)
    log_p = z.gather(-1, targets[:, None]).squeeze(-1) - z.logsumexp(-1)  # (m,)
    log_c = torch.zeros(batch, counted.shape[1], dtype=dtype, device=device)
    log_c = log_c.index_put((b, span[b, j]), log_p, accumulate=True)  # (batch, K)
    return log_first, log_c[rows, ks]


def _sorted_l1(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-row L1 distance of two ``(n, *)`` probability vectors sorted in decreasing order, zero-padded."""
    width = max(student.shape[-1], teacher.shape[-1])
    s = F.pad(student.sort(dim=-1, descending=True).values, (0, width - student.shape[-1]))  # (n, width)
    t = F.pad(teacher.sort(dim=-1, descending=True).values, (0, width - teacher.shape[-1]))  # (n, width)
    return (s - t).abs().sum(-1)  # (n,)


def uld_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    alignment: Mapping[str, torch.Tensor],
    *,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    num_items_in_batch: NumItems = None,
) -> torch.Tensor:
    r"""Universal Logit Distillation: L1 distance between sorted span probability vectors (module doc).

    :math:`\mathcal{L} = \frac{T^2}{N} \sum_{k\ \mathrm{counted}} \sum_r |\mathrm{sort}(q_s^{(k)})_r -
    \mathrm{sort}(q_t^{(k)})_r|`, each term in :math:`[0, 2]`.

    Args:
        student_logits: ``(batch, seq_s, vocab_s)``, the student's logits over its own tokens.
        teacher_logits: ``(batch, seq_t, vocab_t)``, the teacher's over its tokens (another vocabulary).
        alignment: the mapping of :func:`hf_lite.data.alignment_tensors` for this batch (keys
            :data:`ALIGNMENT_KEYS`).
        temperature: ``T > 0``, dividing both models' logits; the result is multiplied by ``T**2``.
        mask: ``(batch, K)`` bool/0-1, ``0`` leaves a span out (on top of ``alignment["span_mask"]``).
        num_items_in_batch: counted spans in the whole accumulated batch (default: those here).

    Returns:
        A 0-dim fp32 tensor; exactly ``0.`` when no span counts.

    Example:

    >>> import torch
    >>> one = {"student_index": torch.tensor([[0]]), "teacher_index": torch.tensor([[0]]),
    ...        "span_mask": torch.tensor([[True]]), "student_span": torch.tensor([[-1, -1]]),
    ...        "teacher_span": torch.tensor([[-1, -1]]), "student_next_ids": torch.tensor([[1, 0]]),
    ...        "teacher_next_ids": torch.tensor([[2, 0]])}
    >>> student = torch.tensor([[[0.0, 2.0, 1.0], [0.0, 0.0, 0.0]]])
    >>> teacher = torch.tensor([[[1.0, 0.0, 2.0, float("-inf")], [0.0, 0.0, 0.0, 0.0]]])
    >>> round(uld_loss(student, teacher, one).item(), 6)  # the same probabilities, in another order
    0.0
    """
    check_temperature(temperature)
    counted = _check_alignment(alignment, student_logits, teacher_logits, mask)
    log_first_s, log_c_s = _span_vectors(student_logits, alignment, "student", counted, temperature)
    log_first_t, log_c_t = _span_vectors(teacher_logits, alignment, "teacher", counted, temperature)
    q_s = (log_first_s + log_c_s[:, None]).exp()  # (n, V_s)
    q_t = (log_first_t + log_c_t[:, None]).exp()  # (n, V_t)
    total = _sorted_l1(q_s, q_t.to(q_s.device)).sum()
    return normalize(total, counted.sum(), num_items_in_batch) * float(temperature) ** 2


def _shared_ids(
    shared: Sequence[torch.Tensor], student_vocab: int, teacher_vocab: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(shared, Sequence) or len(shared) != 2:
        raise TypeError(
            "shared must be (student_ids, teacher_ids), e.g. hf_lite.data.shared_vocabulary(student_tokenizer, "
            f"teacher_tokenizer); got {type(shared).__name__}."
        )
    ids = []
    for name, tensor, vocab in (
        ("student_ids", shared[0], student_vocab),
        ("teacher_ids", shared[1], teacher_vocab),
    ):
        check_tensor(f"shared.{name}", tensor, floating=False)
        if tensor.ndim != 1 or (tensor.numel() and (int(tensor.min()) < 0 or int(tensor.max()) >= vocab)):
            raise ValueError(
                f"shared.{name} must be a 1-d tensor of ids in [0, {vocab}), the logits' vocabulary: build it with "
                "shared_vocabulary(student_tokenizer, teacher_tokenizer) from the two models' own tokenizers."
            )
        if tensor.unique().numel() != tensor.numel():
            raise ValueError(f"shared.{name} holds an id twice: each token may be paired once.")
        ids.append(tensor.to(device=device, dtype=torch.long))
    if ids[0].shape != ids[1].shape:
        raise ValueError(
            f"shared.student_ids has {ids[0].numel()} ids and shared.teacher_ids {ids[1].numel()}: they are pairs."
        )
    return ids[0], ids[1]


def _split(
    log_first: torch.Tensor, log_c: torch.Tensor, ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(log q on the shared ids (n, M + 1) with the rest's mass last, q on the rest (n, V - M))``."""
    rest = torch.ones(log_first.shape[-1], dtype=torch.bool, device=log_first.device)
    rest[ids] = False
    p_rest = log_first[:, rest].exp()  # (n, V - M)
    c = log_c.exp()  # (n,)
    # mass outside the shared tokens: the rest's share plus what the span's later tokens take (exactly 0 for a
    # one-token span with nothing outside); clamped so that log() stays finite for the gradient
    tail = -torch.expm1(log_c) + c * p_rest.sum(-1)  # (n,)
    log_tail = tail.clamp_min(torch.finfo(tail.dtype).tiny).log()
    shared = torch.cat([log_first[:, ids] + log_c[:, None], log_tail[:, None]], dim=-1)  # (n, M + 1)
    return shared, p_rest * c[:, None], tail


def hybrid_uld_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    alignment: Mapping[str, torch.Tensor],
    shared: Sequence[torch.Tensor],
    *,
    loss_type: LossType | str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    matched_weight: float = 1.0,
    unmatched_weight: float = 1.0,
    mask: torch.Tensor | None = None,
    num_items_in_batch: NumItems = None,
) -> torch.Tensor:
    r"""GOLD-style hybrid: ``loss_type`` on the shared vocabulary (plus the rest's mass), ULD on the rest.

    :math:`\mathcal{L} = \frac{T^2}{N} \sum_{k\ \mathrm{counted}} \mathcal{L}_k` with :math:`\mathcal{L}_k` as in
    the module doc. With identical tokenizers it equals :func:`hf_lite.losses.distillation_loss` at the same
    positions; with a permuted copy of a vocabulary too (the shared map undoes the permutation).

    Args:
        student_logits: ``(batch, seq_s, vocab_s)``.
        teacher_logits: ``(batch, seq_t, vocab_t)``.
        alignment: the mapping of :func:`hf_lite.data.alignment_tensors` for this batch.
        shared: ``(student_ids, teacher_ids)`` 1-d int tensors of one length, the token pairs with the same text
            (:func:`hf_lite.data.shared_vocabulary`); ids beyond a tokenizer (padded heads) are part of the rest.
        loss_type: the shared part's divergence, one of :data:`HYBRID_LOSS_TYPES`.
        beta: JSD interpolation in ``[0, 1]`` (``loss_type="jsd"``).
        temperature: ``T > 0``; the result is multiplied by ``T**2``.
        matched_weight: ``w_m >= 0``, weight of the shared part.
        unmatched_weight: ``w_u >= 0``, weight of the ULD part on the rest.
        mask: ``(batch, K)`` bool/0-1, ``0`` leaves a span out.
        num_items_in_batch: counted spans in the whole accumulated batch (default: those here).

    Returns:
        A 0-dim fp32 tensor, ``>= 0``; exactly ``0.`` when no span counts.

    Example:

    >>> import torch
    >>> one = {"student_index": torch.tensor([[0]]), "teacher_index": torch.tensor([[0]]),
    ...        "span_mask": torch.tensor([[True]]), "student_span": torch.tensor([[-1, -1]]),
    ...        "teacher_span": torch.tensor([[-1, -1]]), "student_next_ids": torch.tensor([[1, 0]]),
    ...        "teacher_next_ids": torch.tensor([[0, 0]])}
    >>> student, teacher = torch.randn(1, 2, 3), torch.randn(1, 2, 3)
    >>> reversed_ids = (torch.tensor([0, 1, 2]), torch.tensor([2, 1, 0]))  # the teacher's ids in reverse order
    >>> hybrid = hybrid_uld_loss(student, teacher.flip(-1), one, reversed_ids)
    >>> from hf_lite.losses import forward_kl_loss
    >>> torch.allclose(hybrid, forward_kl_loss(student[:, 0], teacher[:, 0]), atol=1e-6)
    True
    """
    loss_type = check_loss_type(loss_type)
    if loss_type not in HYBRID_LOSS_TYPES:
        raise ValueError(
            f"loss_type={loss_type!r} cannot compare span probabilities (it compares logits); use one of "
            f"{', '.join(HYBRID_LOSS_TYPES)}."
        )
    check_beta(beta)
    check_temperature(temperature)
    for name, weight in (("matched_weight", matched_weight), ("unmatched_weight", unmatched_weight)):
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ValueError(f"{name}={weight!r} must be a number >= 0 (1.0 by default; 0 drops that part).")
    counted = _check_alignment(alignment, student_logits, teacher_logits, mask)
    s_ids, t_ids = _shared_ids(
        shared, student_logits.shape[-1], teacher_logits.shape[-1], student_logits.device
    )
    log_first_s, log_c_s = _span_vectors(student_logits, alignment, "student", counted, temperature)
    log_first_t, log_c_t = _span_vectors(teacher_logits, alignment, "teacher", counted, temperature)
    shared_s, rest_s, _ = _split(log_first_s, log_c_s, s_ids)
    shared_t, rest_t, _ = _split(log_first_t, log_c_t, t_ids.to(teacher_logits.device))
    total = log_first_s.new_zeros(())
    if matched_weight:
        shared_t = shared_t.to(shared_s.device)
        total = total + matched_weight * token_divergence(shared_s, shared_t, loss_type, 1.0, beta).sum()
    if unmatched_weight and (rest_s.shape[-1] or rest_t.shape[-1]):
        total = total + unmatched_weight * _sorted_l1(rest_s, rest_t.to(rest_s.device)).sum()
    return normalize(total, counted.sum(), num_items_in_batch) * float(temperature) ** 2
