"""Losses on intermediate layers: hidden states (TinyBERT, DistilBERT's cosine) and attention maps (MiniLM).

>>> import torch
>>> h = torch.randn(2, 3, 8)
>>> hidden_state_loss(h, h).item()
0.0
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hf_lite.losses._checks import (
    ATTENTION_LOSS_KINDS,
    HIDDEN_LOSS_KINDS,
    AttentionLossKind,
    HiddenLossKind,
    NumItems,
    check_kind,
    check_tensor,
    valid_mask,
)
from hf_lite.losses._maths import compute_dtype, kl_terms, normalize

__all__ = ["attention_loss", "hidden_state_loss"]


def hidden_state_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    *,
    kind: HiddenLossKind | str = "mse",
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
    kind = check_kind(kind, HIDDEN_LOSS_KINDS)
    check_tensor("student_hidden", student_hidden)
    check_tensor("teacher_hidden", teacher_hidden)
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
    valid = valid_mask(lead_shape, mask, None, student_hidden.device)
    dim = student_hidden.shape[-1]
    student, teacher = student_hidden.reshape(-1, dim), teacher_hidden.reshape(-1, dim)  # (N, D)
    if valid is not None:
        flat = valid.reshape(-1)
        student, teacher = student[flat], teacher[flat]
    dtype = compute_dtype(student.dtype)
    student, teacher = student.to(dtype), teacher.to(dtype)
    if kind == "mse":
        per_token = (student - teacher).pow(2).mean(-1)  # (n,)
    else:
        per_token = 1.0 - F.cosine_similarity(student, teacher, dim=-1, eps=1e-8)  # (n,)
    count = valid.sum() if valid is not None else math.prod(lead_shape)
    return normalize(per_token.sum(), count, num_items_in_batch)


def attention_loss(
    student_attn: torch.Tensor,
    teacher_attn: torch.Tensor,
    *,
    kind: AttentionLossKind | str = "kl",
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
    kind = check_kind(kind, ATTENTION_LOSS_KINDS)
    check_tensor("student_attn", student_attn)
    check_tensor("teacher_attn", teacher_attn)
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
        valid = valid_mask((batch, queries), mask, None, student_attn.device)  # (B, Q)
        key_valid = valid[:, None, None, :].expand(batch, queries, 1, keys)[valid]  # (n, 1, K)
        student, teacher = (
            student[valid],
            teacher[valid],
        )  # (n, H, K): padded query rows never enter the maths
        count: torch.Tensor | int = valid.sum()
    else:
        student, teacher = student.reshape(-1, heads, keys), teacher.reshape(-1, heads, keys)  # (n, H, K)
        count = batch * queries
    dtype = compute_dtype(student.dtype)
    student, teacher = student.to(dtype), teacher.to(dtype)
    if kind == "kl":
        log_s = student.clamp_min(torch.finfo(torch.float32).tiny).log()
        log_t = teacher.clamp_min(torch.finfo(torch.float32).tiny).log()
        terms = kl_terms(log_t, log_s, probs=teacher)  # (n, H, K)
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
    return normalize(per_token.sum(), count, num_items_in_batch)
