r"""Fast per-row divergences for distillation: value and closed-form gradient in one pass.

Distillation only differentiates the student: the teacher's logits are constants. Autograd through the
textbook formula (two ``log_softmax``, ``exp``, a masked log-ratio, a product, a sum) keeps several
``(tokens, vocab)`` tensors for backward and replays every op backwards. Each divergence here has a
closed-form gradient with respect to the student's logits, so the forward pass computes it directly and
saves that single tensor; backward is one multiplication. With :math:`z = z_s / T`, :math:`p_s =
\mathrm{softmax}(z)` and :math:`p_t = \mathrm{softmax}(z_t / T)`, per row:

- forward KL, :math:`\mathrm{KL}(p_t\|p_s)`: :math:`\partial/\partial z = p_s - p_t`.
- reverse KL, :math:`\mathrm{KL}(p_s\|p_t)`: :math:`\partial/\partial z = p_s\,(\log\frac{p_s}{p_t} - \mathrm{KL}(p_s\|p_t))`.
- generalized JSD, :math:`\beta\,\mathrm{KL}(p_t\|m) + (1-\beta)\,\mathrm{KL}(p_s\|m)` with
  :math:`m = \beta p_t + (1-\beta) p_s`: :math:`\partial/\partial z = (1-\beta)\,p_s\,(\log\frac{p_s}{m} -
  \mathrm{KL}(p_s\|m))` (the terms through :math:`m` cancel).
- bucketed top-k forward KL (:func:`hf_lite.losses.topk_distillation_loss`; cached tokens :math:`S`, tail
  masses :math:`\tau`): :math:`\partial/\partial z_j = p_s(j) - p_t(j)` for :math:`j \in S` and
  :math:`p_s(j)\,(1 - \tau_t/\tau_s)` elsewhere.

and :math:`\partial/\partial z_s = \frac1T \partial/\partial z`. With ``compiled=True`` the same code runs
through ``torch.compile`` (``dynamic=True``: one compilation per loss type and rank of the inputs, a few
seconds each), which fuses its elementwise passes into a few loops: about 4x faster on CPU here (see
``benchmarks/RESULTS.md``). If compilation is unavailable (no C++ compiler, unsupported platform) it warns
once and runs eagerly. These functions are private helpers of
:mod:`hf_lite.losses`, which checks arguments, masks rows and normalizes; they are exact (tests compare
them with autograd through the textbook formulas) and used only when the teacher needs no gradient.

Example:

>>> import torch
>>> student, teacher = torch.randn(4, 10, requires_grad=True), torch.randn(4, 10)
>>> rows = kl_rows(student, teacher, "forward_kl", 1.0, 0.5)
>>> rows.shape
torch.Size([4])
>>> rows.sum().backward()
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

#: Loss types with a closed-form student gradient here.
FUSED_LOSS_TYPES = ("forward_kl", "reverse_kl", "jsd")


def kl_rows(
    student: torch.Tensor,
    teacher: torch.Tensor,
    loss_type: str,
    temperature: float,
    beta: float,
    valid: torch.Tensor | None = None,
    compiled: bool = False,
) -> torch.Tensor:
    """Per-row divergence ``(...)`` of ``(..., V)`` student and teacher logits (same float dtype), before ``T**2``.

    ``loss_type`` is one of :data:`FUSED_LOSS_TYPES`; ``teacher`` must not require grad. Differentiable once
    with respect to ``student``. ``valid`` (bool, shape ``(...)``): rows where it is False give exactly 0 and
    no gradient, whatever their logits (even non-finite); they are computed in place rather than copied out,
    which is faster than selecting the valid rows first.
    """
    if torch.is_grad_enabled() and student.requires_grad:
        return _FusedRows.apply(_kl_rows, compiled, valid, student, teacher, loss_type, temperature, beta)
    with torch.no_grad():
        rows = _run(_kl_rows, compiled, student, teacher, loss_type, temperature, beta, want_grad=False)
        return _masked(*rows, valid)[0]


def topk_kl_rows(
    student: torch.Tensor,
    logprobs_t: torch.Tensor,
    indices: torch.Tensor,
    tail_t: torch.Tensor,
    temperature: float,
    valid: torch.Tensor | None = None,
    compiled: bool = False,
) -> torch.Tensor:
    """Per-row bucketed forward KL ``(...)`` against a top-k teacher, before ``T**2``.

    ``student`` is ``(..., V)``; ``logprobs_t`` ``(..., k)`` in the student's dtype; ``indices`` ``(..., k)``
    int64 in ``[0, V)`` without repeats; ``tail_t`` ``(...)`` the teacher's mass outside the cache, in
    ``[0, 1]``; ``valid`` as in :func:`kl_rows`.
    """
    if torch.is_grad_enabled() and student.requires_grad:
        return _FusedRows.apply(_topk_rows, compiled, valid, student, logprobs_t, indices, tail_t, temperature)
    with torch.no_grad():
        rows = _run(_topk_rows, compiled, student, logprobs_t, indices, tail_t, temperature, want_grad=False)
        return _masked(*rows, valid)[0]


_COMPILED: dict[Callable[..., Any], Callable[..., Any]] = {}
_COMPILE_FAILED: list[str] = []  # the reason, once compilation has failed in this process


def _run(fn: Callable[..., Any], compiled: bool, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args)``, through ``torch.compile`` when ``compiled`` and it works here, else eagerly."""
    if not compiled or _COMPILE_FAILED:
        return fn(*args, **kwargs)
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=True)
    try:
        return _COMPILED[fn](*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - any compiler failure: the eager code gives the same result
        _COMPILE_FAILED.append(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        logger.warning(
            "compile_loss: torch.compile of the distillation loss failed here (%s); computing it eagerly "
            "(same values, slower). Set compile_loss=False to silence this.", _COMPILE_FAILED[0]
        )
        return fn(*args, **kwargs)


def _masked(
    rows: torch.Tensor, grad: torch.Tensor | None, valid: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rows outside ``valid`` set to exactly 0 (``where``, not a product, so a NaN there does not leak) and
    their gradient rows to 0."""
    if valid is None:
        return rows, grad
    rows = torch.where(valid, rows, 0.0)
    if grad is not None:
        grad.masked_fill_(~valid.unsqueeze(-1), 0.0)
    return rows, grad


def _masked_log_ratio(log_p: torch.Tensor, log_q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``log p - log q`` where ``p > 0``, else 0 (``0 log 0 = 0``); ``log_p`` is overwritten."""
    # torch.where, not masked_fill_: several times faster on CPU here
    return torch.where(p > 0, log_p.sub_(log_q), 0.0)


def _kl_rows(
    student: torch.Tensor, teacher: torch.Tensor, loss_type: str, temperature: float, beta: float, want_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(rows, grad)``: per-row values ``(...)`` and d(sum of rows)/d(student) ``(..., V)``, or ``None`` without
    ``want_grad``."""
    if loss_type == "jsd" and beta == 0.0:
        loss_type = "forward_kl"
    elif loss_type == "jsd" and beta == 1.0:
        loss_type = "reverse_kl"
    scale = 1.0 / temperature
    log_s = F.log_softmax(student * scale if temperature != 1.0 else student, dim=-1)  # (..., V)
    log_t = F.log_softmax(teacher * scale if temperature != 1.0 else teacher, dim=-1)  # (..., V)
    if loss_type == "forward_kl":
        p_t = log_t.exp()
        ratio = _masked_log_ratio(log_t, log_s, p_t)  # log p_t - log p_s
        rows = torch.linalg.vecdot(p_t, ratio)  # (...)
        del ratio, log_t
        if not want_grad:
            return rows, None
        grad = log_s.exp_().sub_(p_t)  # p_s - p_t
        return rows, grad if temperature == 1.0 else grad.mul_(scale)
    p_s = log_s.exp()
    if loss_type == "reverse_kl":
        log_m = log_t
        weight = 1.0
        rows = None
    else:  # generalized JSD
        log_m = torch.logaddexp(log_s + math.log1p(-beta), log_t + math.log(beta))  # (..., V)
        p_t = log_t.exp()
        teacher_part = torch.linalg.vecdot(p_t, _masked_log_ratio(log_t, log_m, p_t))
        del p_t
        weight = 1.0 - beta
        rows = beta * teacher_part
    ratio = _masked_log_ratio(log_s, log_m, p_s)  # log p_s - log m
    kl_s = torch.linalg.vecdot(p_s, ratio)  # KL(p_s || m), (...)
    rows = weight * kl_s if rows is None else rows + weight * kl_s
    if not want_grad:
        return rows, None
    # weight * p_s * (ratio - KL) / T
    grad = ratio.sub_(kl_s.unsqueeze(-1)).mul_(p_s).mul_(weight * scale)
    return rows, grad


def _topk_rows(
    student: torch.Tensor,
    logprobs_t: torch.Tensor,
    indices: torch.Tensor,
    tail_t: torch.Tensor,
    temperature: float,
    want_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    scale = 1.0 / temperature
    log_s = F.log_softmax(student * scale if temperature != 1.0 else student, dim=-1)  # (..., V)
    log_s_k = log_s.gather(-1, indices)  # (..., k)
    p_t_k = logprobs_t.exp()
    rows = torch.linalg.vecdot(p_t_k, torch.where(p_t_k > 0, logprobs_t - log_s_k, 0.0))  # (...)
    vocab, k = student.shape[-1], indices.shape[-1]
    p_s = log_s.exp() if want_grad else None
    factor = None
    if k < vocab:
        # log of the student's tail mass from its own logits (a logsumexp over the non-cached tokens), not
        # log(1 - sum), which cancels when the cache holds nearly all of the student's mass
        log_tail_s = log_s.scatter_(-1, indices, float("-inf")).logsumexp(-1)  # (...)
        log_tail_t = torch.where(tail_t > 0, tail_t, 1.0).log()
        rows = rows + torch.where(tail_t > 0, tail_t * (log_tail_t - log_tail_s), 0.0)
        factor = torch.where(tail_t > 0, (log_tail_t - log_tail_s).exp(), 0.0)  # tau_t / tau_s
    del log_s
    if not want_grad:
        return rows, None
    grad = p_s if factor is None else p_s.mul_((1.0 - factor).unsqueeze(-1))  # outside the cache
    grad.scatter_(-1, indices, log_s_k.exp() - p_t_k)  # inside: p_s - p_t
    return rows, grad.mul_(scale)


class _FusedRows(torch.autograd.Function):
    """Per-row values of ``fn(student, *rest, want_grad=True)``, whose precomputed student gradient backward
    scales by the incoming gradient of each row."""

    @staticmethod
    def forward(ctx, fn, compiled, valid, student, *rest):  # type: ignore[override]
        rest = [a.detach() if isinstance(a, torch.Tensor) else a for a in rest]
        rows, grad = _masked(*_run(fn, compiled, student.detach(), *rest, want_grad=True), valid)
        ctx.save_for_backward(grad)
        ctx.num_rest = len(rest)
        return rows

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_rows):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return None, None, None, grad * grad_rows.unsqueeze(-1), *([None] * ctx.num_rest)
