"""A teacher cached as its top-k log-probabilities: building the cache entries and the loss against them.

:func:`teacher_topk` keeps the teacher's ``k`` most likely tokens per position; :func:`topk_distillation_loss`
is the forward KL between the two distributions collapsed to those ``k`` tokens plus one tail bucket.

>>> import torch
>>> teacher, student = torch.randn(3, 40), torch.randn(3, 40)
>>> logprobs, indices = teacher_topk(teacher, k=5)
>>> topk_distillation_loss(student, logprobs, indices).item() >= 0
True
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hf_lite.losses import fused
from hf_lite.losses._checks import NumItems, check_temperature, check_tensor
from hf_lite.losses._maths import compute_dtype, normalize, prepare_topk

__all__ = ["teacher_topk", "topk_distillation_loss"]


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
    check_tensor("teacher_logits", teacher_logits)
    check_temperature(temperature)
    vocab = teacher_logits.shape[-1] if teacher_logits.ndim else 0
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int; got {type(k).__name__} {k!r}.")
    if not 1 <= k <= vocab:
        raise ValueError(
            f"k={k} must be between 1 and the vocabulary size {vocab}. Typical caches keep k=20..100 entries."
        )
    with torch.no_grad():
        logits = teacher_logits.to(compute_dtype(teacher_logits.dtype))
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
    >>> from hf_lite.losses import forward_kl_loss
    >>> teacher, student = torch.randn(3, 40), torch.randn(3, 40)
    >>> logprobs, indices = teacher_topk(teacher, k=40)
    >>> torch.allclose(topk_distillation_loss(student, logprobs, indices), forward_kl_loss(student, teacher))
    True
    """
    check_temperature(temperature)
    logprobs_t, indices, tail_t, valid = prepare_topk(
        student_logits, teacher_topk_logprobs, teacher_topk_indices, mask, labels
    )
    # value and closed-form gradient in one pass (hf_lite.losses.fused; the formula above), on every row in place
    rows = fused.topk_kl_rows(
        student_logits.to(logprobs_t.dtype), logprobs_t, indices, tail_t, temperature, valid, compiled
    )
    count = valid.sum() if valid is not None else math.prod(student_logits.shape[:-1])
    return normalize(rows.total.sum(), count, num_items_in_batch) * (temperature * temperature)
