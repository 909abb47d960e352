"""Arithmetic shared by the losses: compute dtype, per-row divergences, normalization by the item count.

>>> import torch
>>> normalize(torch.tensor(6.0), 3, None), normalize(torch.tensor(0.0), 0, None)
(tensor(2.), tensor(0.))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hf_lite.losses import fused
from hf_lite.losses._checks import VOCAB_FIX, NumItems, check_num_items, check_tensor, valid_mask


def kl_terms(log_p: torch.Tensor, log_q: torch.Tensor, probs: torch.Tensor | None = None) -> torch.Tensor:
    """Elementwise ``p * (log p - log q)`` with ``0 log 0 = 0`` (no NaN where ``p == 0``, in values or grads)."""
    p = log_p.exp() if probs is None else probs
    # Replace the log-ratio where p == 0 *before* multiplying, so that neither the value nor the gradient of
    # the product sees (-inf) - (-inf).
    return p * torch.where(p > 0, log_p - log_q, 0.0)


def divergence_sum(
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
    dtype = compute_dtype(student.dtype)
    if loss_type in fused.FUSED_LOSS_TYPES and not teacher.requires_grad:
        # The usual case (a frozen teacher): value and closed-form gradient in one pass, on the logits as
        # they are (no copy of the valid rows, no index/scatter in backward): several times faster and lighter
        # than autograd through the formula, which stays below for a teacher that needs gradients.
        rows = fused.kl_rows(
            student.to(dtype), teacher.to(dtype), loss_type, temperature, beta, valid, compiled
        )
        return rows.total.sum()
    vocab = student.shape[-1]
    student, teacher = student.reshape(-1, vocab), teacher.reshape(-1, vocab)  # (N, V)
    if valid is not None:
        flat = valid.reshape(-1)
        student, teacher = student[flat], teacher[flat]  # (n_valid, V): masked rows never enter the maths
    return token_divergence(student.to(dtype), teacher.to(dtype), loss_type, temperature, beta).sum()


def token_divergence(
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
        return kl_terms(log_t, log_s).sum(-1)
    if loss_type == "reverse_kl" or (loss_type == "jsd" and beta == 1.0):
        return kl_terms(log_s, log_t).sum(-1)
    # log m = log((1 - beta) p_s + beta p_t), by logsumexp over the two terms
    log_m = torch.logaddexp(log_s + math.log1p(-beta), log_t + math.log(beta))  # (n, V)
    return beta * kl_terms(log_t, log_m).sum(-1) + (1.0 - beta) * kl_terms(log_s, log_m).sum(-1)


def temperature_factor(loss_type: str, temperature: float) -> float:
    return 1.0 if loss_type == "mse" else float(temperature) ** 2


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half-precision inputs; fp64 stays fp64."""
    return torch.promote_types(dtype, torch.float32)


def denominator(count: torch.Tensor | int, num_items_in_batch: NumItems) -> torch.Tensor | float:
    denom: torch.Tensor | int | float = (
        count if num_items_in_batch is None else check_num_items(num_items_in_batch)
    )
    if isinstance(denom, torch.Tensor):
        # No `.item()`: a count on the GPU stays there (no sync). An empty batch divides 0 by 1.
        denom = denom.reshape(())
        return torch.where(denom > 0, denom, torch.ones_like(denom))
    return denom if denom > 0 else 1


def normalize(total: torch.Tensor, count: torch.Tensor | int, num_items_in_batch: NumItems) -> torch.Tensor:
    """``total / num_items_in_batch`` (or ``/ count``); 0 valid items gives exactly 0."""
    denom = denominator(count, num_items_in_batch)
    if isinstance(denom, torch.Tensor):
        denom = denom.to(device=total.device, dtype=total.dtype)
    return total / denom


def prepare_topk(
    student_logits: torch.Tensor,
    teacher_topk_logprobs: torch.Tensor,
    teacher_topk_indices: torch.Tensor,
    mask: torch.Tensor | None,
    labels: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Checked ``(logprobs (..., k) in the compute dtype, indices (..., k) int64, tail mass (...), valid)``;
    rows left out get harmless indices."""
    check_tensor("student_logits", student_logits)
    check_tensor("teacher_topk_logprobs", teacher_topk_logprobs)
    check_tensor("teacher_topk_indices", teacher_topk_indices, floating=False)
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
    valid = valid_mask(student_logits.shape[:-1], mask, labels, student_logits.device)
    indices = teacher_topk_indices.long()  # (..., k)
    checked = indices if valid is None else indices[valid]  # the checks look at valid rows only
    if checked.numel() and (int(checked.min()) < 0 or int(checked.max()) >= vocab):
        raise ValueError(
            f"teacher_topk_indices hold ids in [{int(checked.min())}, {int(checked.max())}] but the student "
            f"vocabulary has {vocab} entries. {VOCAB_FIX} A cache built with another tokenizer must be rebuilt."
        )
    if valid is not None:  # rows left out may hold anything (padding): give them harmless ids 0..k-1
        indices = torch.where(valid.unsqueeze(-1), indices, torch.arange(k, device=indices.device))
    dtype = compute_dtype(student_logits.dtype)
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
