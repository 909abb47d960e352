r"""Fast per-row divergences for distillation: value and closed-form gradient in one pass, block by block.

Distillation only differentiates the student: the teacher's logits are constants. Autograd through the
textbook formula (two ``log_softmax``, ``exp``, a masked log-ratio, a product, a sum) keeps several
``(tokens, vocab)`` tensors for backward and replays every op backwards. Each divergence here has a
closed-form gradient with respect to the student's logits, so the forward pass computes it directly into
one buffer shaped like the logits; backward scales that buffer. With :math:`z = z_s / T`, :math:`p_s =
\mathrm{softmax}(z)` and :math:`p_t = \mathrm{softmax}(z_t / T)`, per row:

- forward KL, :math:`\mathrm{KL}(p_t\|p_s)`: :math:`\partial/\partial z = p_s - p_t`.
- reverse KL, :math:`\mathrm{KL}(p_s\|p_t)`: :math:`\partial/\partial z = p_s\,(\log\frac{p_s}{p_t} - \mathrm{KL}(p_s\|p_t))`.
- generalized JSD, :math:`\beta\,\mathrm{KL}(p_t\|m) + (1-\beta)\,\mathrm{KL}(p_s\|m)` with
  :math:`m = \beta p_t + (1-\beta) p_s`: :math:`\partial/\partial z = (1-\beta)\,p_s\,(\log\frac{p_s}{m} -
  \mathrm{KL}(p_s\|m))` (the terms through :math:`m` cancel).
- bucketed top-k forward KL (:func:`hf_lite.losses.topk_distillation_loss`; cached tokens :math:`S`, tail
  masses :math:`\tau`): :math:`\partial/\partial z_j = p_s(j) - p_t(j)` for :math:`j \in S` and
  :math:`p_s(j)\,(1 - \tau_t/\tau_s)` elsewhere.

and :math:`\partial/\partial z_s = \frac1T \partial/\partial z`. Hard-label cross-entropy on the same logits,
:math:`-\log \mathrm{softmax}(z_s)_y` with gradient :math:`\mathrm{softmax}(z_s) - \mathrm{onehot}(y)`, can
be mixed in (``labels`` and ``ce_share``): at ``T = 1`` it reuses the student's softmax, so distillation
plus cross-entropy costs little more than cross-entropy alone.

**Why blocks.** On CPU every fresh ``(tokens, vocab)`` temporary is new memory: the allocator hands big
blocks back to the system when they are freed, so the next step page-faults them in again (measured: 16k
page faults, a third of a training step's loss time, in the tinyshakespeare benchmark). Rows are therefore
processed in blocks of about :data:`BLOCK_ELEMENTS` values whose temporaries stay small, cached and reused;
only the gradient buffer has the logits' size, as in cross-entropy. On accelerators (a caching allocator,
wide kernels) all rows form one block.

With ``compiled=True`` each block runs through ``torch.compile`` (``dynamic=True``: one compilation per
loss kind, a few seconds); if compilation is unavailable (no C++ compiler, unsupported platform) it warns
once and runs eagerly. These functions are private helpers of :mod:`hf_lite.losses`, which checks
arguments and normalizes; they are exact (tests compare them with autograd through the textbook formulas)
and used only when the teacher needs no gradient.

Example:

>>> import torch
>>> student, teacher = torch.randn(4, 10, requires_grad=True), torch.randn(4, 10)
>>> rows = kl_rows(student, teacher, "forward_kl", 1.0, 0.5)
>>> rows.total.shape
torch.Size([4])
>>> rows.total.sum().backward()
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

#: Loss types with a closed-form student gradient here.
FUSED_LOSS_TYPES = ("forward_kl", "reverse_kl", "jsd")

#: Values per block of rows on CPU (4 MiB in fp32): the fastest of 2**16..2**22 here, also when the loss runs
#: in a worker thread (fewer, larger ops: each op wakes the intra-op thread team).
BLOCK_ELEMENTS = 2**20


class Rows(NamedTuple):
    """Per-row results ``(...)``: ``total = (1 - ce_share) * kd + ce_share * ce`` (differentiable with respect
    to the student); ``kd`` and ``ce`` (``None`` without labels) are detached, for logging."""

    total: torch.Tensor
    kd: torch.Tensor
    ce: torch.Tensor | None


def kl_rows(
    student: torch.Tensor,
    teacher: torch.Tensor,
    loss_type: str,
    temperature: float,
    beta: float,
    valid: torch.Tensor | None = None,
    compiled: bool = False,
    labels: torch.Tensor | None = None,
    ce_share: float = 0.0,
) -> Rows:
    """Per-row divergence of ``(..., V)`` student and teacher logits (same float dtype), before ``T**2``.

    ``loss_type`` is one of :data:`FUSED_LOSS_TYPES`; ``teacher`` must not require grad. ``valid`` (bool,
    shape ``(...)``): rows where it is False give exactly 0 and no gradient, whatever their logits (even
    non-finite). With ``labels`` (``(...)`` int, ``-100`` allowed on rows left out), the hard-label
    cross-entropy of each row is computed too and mixed into ``total`` with weight ``ce_share``.
    """
    block = functools.partial(
        _kl_block,
        loss_type=_canonical(loss_type, beta),
        temperature=temperature,
        beta=beta,
        ce_share=ce_share,
    )
    return _fused(block, compiled, student, [teacher], valid, labels, ce_share)


def topk_kl_rows(
    student: torch.Tensor,
    logprobs_t: torch.Tensor,
    indices: torch.Tensor,
    tail_t: torch.Tensor,
    temperature: float,
    valid: torch.Tensor | None = None,
    compiled: bool = False,
    labels: torch.Tensor | None = None,
    ce_share: float = 0.0,
) -> Rows:
    """Per-row bucketed forward KL ``(...)`` against a top-k teacher, before ``T**2``.

    ``student`` is ``(..., V)``; ``logprobs_t`` ``(..., k)`` in the student's dtype; ``indices`` ``(..., k)``
    int64 in ``[0, V)`` without repeats; ``tail_t`` ``(...)`` the teacher's mass outside the cache, in
    ``[0, 1]``; ``valid``, ``labels`` and ``ce_share`` as in :func:`kl_rows`.
    """
    block = functools.partial(_topk_block, temperature=temperature, ce_share=ce_share)
    return _fused(block, compiled, student, [logprobs_t, indices, tail_t], valid, labels, ce_share)


# ------------------------------------------------------------------------------------------ the driver


def _fused(
    block_fn: Callable[..., Any],
    compiled: bool,
    student: torch.Tensor,
    rows: list[torch.Tensor],
    valid: torch.Tensor | None,
    labels: torch.Tensor | None,
    ce_share: float,
) -> Rows:
    lead_shape = student.shape[:-1]
    if torch.is_grad_enabled() and student.requires_grad:
        total, kd, ce = _FusedRows.apply(block_fn, compiled, valid, labels, ce_share, student, *rows)
    else:
        with torch.no_grad():
            total, kd, ce, _ = _run_blocks(block_fn, compiled, student, rows, valid, labels, ce_share, False)
    shape = lambda t: None if t is None else t.view(lead_shape)  # noqa: E731
    return Rows(shape(total), shape(kd), shape(ce))


def _run_blocks(
    block_fn: Callable[..., Any],
    compiled: bool,
    student: torch.Tensor,
    rows: list[torch.Tensor],
    valid: torch.Tensor | None,
    labels: torch.Tensor | None,
    ce_share: float,
    want_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(total, kd, ce, grad)`` over flattened rows: ``(N,)`` each and ``(N, V)`` (or ``None``)."""
    vocab = student.shape[-1]
    flat = student.reshape(-1, vocab)  # a view for the contiguous logits of a model
    n = flat.shape[0]
    rows = [r.reshape(n, *r.shape[student.dim() - 1 :]) for r in rows]
    valid = None if valid is None else valid.reshape(n)
    labels = None if labels is None else labels.reshape(n).long()
    kd = torch.zeros(n, dtype=student.dtype, device=student.device)
    ce = torch.zeros(n, dtype=student.dtype, device=student.device) if labels is not None else None
    grad = torch.empty_like(flat) if want_grad else None
    on_cpu = student.device.type == "cpu"
    size = max(1, BLOCK_ELEMENTS // max(1, vocab)) if on_cpu else max(1, n)
    for start in range(0, n, size):
        block = slice(start, min(start + size, n))
        ok = None if valid is None else valid[block]
        if ok is not None and on_cpu and not bool(ok.any()):  # an all-padding block: nothing to compute
            if grad is not None:
                grad[block].zero_()
            continue
        args = [r[block] for r in rows]
        y = None if labels is None else labels[block].clamp(min=0)  # -100 only on rows left out
        out = None if grad is None else grad[block]
        kd_b, ce_b, grad_b = _call(
            block_fn,
            compiled,
            flat[block],
            *args,
            labels=y,
            want_grad=out is not None,
            out=None if compiled else out,
        )
        if out is not None and grad_b is not out:
            out.copy_(grad_b)
        if ok is not None and (not on_cpu or not bool(ok.all())):
            # `where`, not a product, so that a NaN on a row left out does not leak; the same for the gradient
            kd_b = torch.where(ok, kd_b, 0.0)
            ce_b = None if ce_b is None else torch.where(ok, ce_b, 0.0)
            if out is not None:  # only the rows left out are written (a broadcast masked_fill reads them all)
                out.index_fill_(0, (~ok).nonzero().squeeze(-1), 0.0)
        kd[block] = kd_b
        if ce is not None:
            ce[block] = ce_b
    total = kd * (1.0 - ce_share) if ce is None else torch.add(kd * (1.0 - ce_share), ce, alpha=ce_share)
    return total, kd, ce, grad


class _FusedRows(torch.autograd.Function):
    """Per-row values of a block function whose precomputed student gradient backward scales by the incoming
    gradient of each row (once: the buffer is scaled in place and handed over)."""

    @staticmethod
    def forward(ctx, block_fn, compiled, valid, labels, ce_share, student, *rows):  # type: ignore[override]
        rows = [r.detach() for r in rows]
        total, kd, ce, grad = _run_blocks(
            block_fn, compiled, student.detach(), rows, valid, labels, ce_share, True
        )
        ctx.grad = grad.view(student.shape)
        ctx.num_rows = len(rows)
        ctx.mark_non_differentiable(*([kd] if ce is None else [kd, ce]))
        return total, kd, ce

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total, *_):  # type: ignore[override]
        grad = ctx.grad
        if grad is None:
            raise RuntimeError(
                "The fused distillation loss computes its gradient during the forward pass and hands it over once; "
                "a second backward through the same graph (retain_graph=True) is not supported. Compute the loss "
                "again for a second backward."
            )
        ctx.grad = None  # handed over: scaled in place, no second buffer
        grad.mul_(grad_total.reshape(*grad_total.shape, 1).view(*grad.shape[:-1], 1))
        return None, None, None, None, None, grad, *([None] * ctx.num_rows)


_COMPILED: dict[Callable[..., Any], Callable[..., Any]] = {}
_COMPILE_FAILED: list[str] = []  # the reason, once compilation has failed in this process


def _call(fn: Callable[..., Any], compiled: bool, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args)``, through ``torch.compile`` when ``compiled`` and it works here, else eagerly."""
    if not compiled or _COMPILE_FAILED:
        return fn(*args, **kwargs)
    key = fn.func if isinstance(fn, functools.partial) else fn
    key = (key, *(sorted(fn.keywords.items()) if isinstance(fn, functools.partial) else ()))
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(fn, dynamic=True)
    try:
        return _COMPILED[key](*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - any compiler failure: the eager code gives the same result
        _COMPILE_FAILED.append(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        logger.warning(
            "compile_loss: torch.compile of the distillation loss failed here (%s); computing it eagerly "
            "(same values, slower). Set compile_loss=False to silence this.",
            _COMPILE_FAILED[0],
        )
        return fn(*args, **kwargs)


# ------------------------------------------------------------------------------------------ the maths


def _may_branch(tensor: torch.Tensor) -> bool:
    """Whether a branch on a tensor's values is cheap here: eagerly on the CPU, yes; on an accelerator it would
    wait for the device, and under torch.compile it would break the graph, so the safe path runs always."""
    return tensor.device.type == "cpu" and not torch.compiler.is_compiling()


def _canonical(loss_type: str, beta: float) -> str:
    """JSD at its ends is exactly forward (beta = 0) or reverse (beta = 1) KL."""
    if loss_type == "jsd" and beta == 0.0:
        return "forward_kl"
    if loss_type == "jsd" and beta == 1.0:
        return "reverse_kl"
    return loss_type


def _softmax_lse(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(softmax(z), logsumexp(z), max(z), max probability)`` with one exponential pass: the largest
    probability is ``exp(max - lse)``, so ``lse = max - log(max probability)`` (that probability is at least
    ``1/V``)."""
    p = torch.softmax(z, dim=-1)
    z_max, p_max = z.amax(-1), p.amax(-1)
    return p, z_max - p_max.log(), z_max, p_max


def _ce_part(
    student: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
    p_s: torch.Tensor,
    lse_s: torch.Tensor,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(ce rows, softmax of the untempered student)``: ``lse(z_s) - z_s[y]``, reusing ``p_s`` at ``T = 1``."""
    if labels is None:
        return None, None
    if temperature != 1.0:
        p_s, lse_s, _, _ = _softmax_lse(student)
    return lse_s - student.gather(-1, labels.unsqueeze(-1)).squeeze(-1), p_s


def _add_ce_grad(out: torch.Tensor, p_ce: torch.Tensor, labels: torch.Tensor, ce_share: float) -> None:
    """``out += ce_share * (softmax - onehot(labels))``."""
    out.add_(p_ce, alpha=ce_share)
    _add_onehot(out, labels, -ce_share)


def _add_onehot(out: torch.Tensor, labels: torch.Tensor, value: float) -> None:
    """``out[i, labels[i]] += value`` for every row ``i``."""
    out.scatter_add_(-1, labels.unsqueeze(-1), out.new_full((out.shape[0], 1), value))


def _kl_block(
    student: torch.Tensor,
    teacher: torch.Tensor,
    *,
    loss_type: str,
    temperature: float,
    beta: float,
    ce_share: float,
    labels: torch.Tensor | None,
    want_grad: bool,
    out: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(kd rows, ce rows, grad)`` of one ``(r, V)`` block. With ``want_grad`` the gradient of
    ``sum((1 - ce_share) * kd + ce_share * ce)`` with respect to ``student`` is written into ``out`` (or a new
    tensor when ``out`` is None); ce rows are ``None`` without labels."""
    scale = 1.0 / temperature
    z_s = student * scale if temperature != 1.0 else student
    z_t = teacher * scale if temperature != 1.0 else teacher
    kd_weight = (1.0 - ce_share) * scale  # d/dz_s = (1/T) d/dz
    grad = None
    if loss_type == "forward_kl":
        p_s, lse_s, max_s, p_max_s = _softmax_lse(z_s)
        p_t, _, max_t, p_max_t = _softmax_lse(z_t)
        # sum_v p_t (log p_t - log p_s) with the log-ratio taken per token as (z_t - z_s) - (lse_t - lse_s)
        # (summing p_t z_t and p_t z_s apart would cancel for small divergences), and lse_t - lse_s as
        # (max_t - max_s) + log(p_max_s / p_max_t), not as a difference of two rounded logsumexps. Where the
        # teacher rules a token out (z_t = -inf, p_t = 0) the log-ratio is made finite so the product is 0.
        lse_diff = (max_t - max_s) + (p_max_s / p_max_t).log()
        log_ratio = torch.sub(z_t, z_s).sub_(lse_diff.unsqueeze(-1))
        kd = torch.linalg.vecdot(p_t, log_ratio)
        if not _may_branch(student) or not bool(torch.isfinite(kd).all()):  # on CPU eagerly: only when needed
            log_ratio.nan_to_num_(nan=0.0, posinf=math.inf, neginf=torch.finfo(z_s.dtype).min)
            kd = torch.linalg.vecdot(p_t, log_ratio)
        del log_ratio
        ce, p_ce = _ce_part(student, labels, temperature, p_s, lse_s)
        if want_grad:
            if temperature == 1.0:
                # (1 - c) (p_s - p_t) + c (p_s - onehot) = p_s - (1 - c) p_t - c onehot: one pass
                grad = (
                    torch.add(p_s, p_t, alpha=-kd_weight, out=out)
                    if out is not None
                    else p_s.sub_(p_t, alpha=kd_weight)
                )
                if ce is not None and ce_share:
                    _add_onehot(grad, labels, -ce_share)
                return kd, ce, grad
            grad = torch.sub(p_s, p_t, out=out) if out is not None else torch.sub(p_s, p_t)
            grad.mul_(kd_weight)  # (1 - c) (p_s - p_t) / T
    else:
        log_s = F.log_softmax(z_s, dim=-1)
        log_t = F.log_softmax(z_t, dim=-1)
        p_s = log_s.exp()
        if loss_type == "reverse_kl":
            log_m, weight, kd = log_t, 1.0, None
        else:  # generalized JSD
            log_m = torch.logaddexp(log_s + math.log1p(-beta), log_t + math.log(beta))  # (r, V)
            p_t = log_t.exp()
            kd = beta * torch.linalg.vecdot(p_t, _masked_log_ratio(log_t.clone(), log_m, p_t))
            del p_t
            weight = 1.0 - beta
        lse_s = z_s.amax(-1) - p_s.amax(-1).log()
        ratio = _masked_log_ratio(log_s, log_m, p_s)  # log p_s - log m (log_s is overwritten)
        kl_s = torch.linalg.vecdot(p_s, ratio)  # KL(p_s || m)
        kd = weight * kl_s if kd is None else kd + weight * kl_s
        ce, p_ce = _ce_part(student, labels, temperature, p_s, lse_s)
        if want_grad:
            # weight * p_s * (ratio - KL) / T, times (1 - c)
            diff = ratio.sub_(kl_s.unsqueeze(-1))
            grad = torch.mul(diff, p_s, out=out) if out is not None else diff.mul_(p_s)
            grad.mul_(weight * kd_weight)
    if grad is not None and ce is not None and ce_share:
        _add_ce_grad(grad, p_ce, labels, ce_share)
    return kd, ce, grad


def _topk_block(
    student: torch.Tensor,
    logprobs_t: torch.Tensor,
    indices: torch.Tensor,
    tail_t: torch.Tensor,
    *,
    temperature: float,
    ce_share: float,
    labels: torch.Tensor | None,
    want_grad: bool,
    out: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """:func:`_kl_block` for the bucketed top-k forward KL."""
    scale = 1.0 / temperature
    z_s = student * scale if temperature != 1.0 else student
    p_s, lse_s, _, _ = _softmax_lse(z_s)  # (r, V), (r,)
    # log p_s at the cached tokens from the probabilities themselves (relative precision of one rounding),
    # not z - lse (which carries the rounding of lse, ~1e-7 for every token of the row); z - lse where p
    # underflows
    p_s_k = p_s.gather(-1, indices)  # (r, k)
    log_s_k = torch.where(
        p_s_k > torch.finfo(p_s.dtype).tiny, p_s_k.log(), z_s.gather(-1, indices) - lse_s.unsqueeze(-1)
    )
    p_t_k = logprobs_t.exp()
    kd = torch.linalg.vecdot(p_t_k, torch.where(p_t_k > 0, logprobs_t - log_s_k, 0.0))  # (r,)
    vocab, k = student.shape[-1], indices.shape[-1]
    factor = None
    if k < vocab:
        # The student's tail mass summed over its own non-cached probabilities, not 1 - sum(cached), which
        # cancels when the cache holds nearly all of the student's mass.
        tail_s = p_s.scatter(-1, indices, 0.0).sum(-1)  # (r,)
        log_tail_s = tail_s.log()
        if not _may_branch(student) or bool((tail_s == 0).any()):  # underflow: the same sum in log space
            log_tail_s = torch.where(
                tail_s > 0, log_tail_s, z_s.scatter(-1, indices, -math.inf).logsumexp(-1) - lse_s
            )
        log_tail_t = torch.where(tail_t > 0, tail_t, 1.0).log()
        kd = kd + torch.where(tail_t > 0, tail_t * (log_tail_t - log_tail_s), 0.0)
        factor = torch.where(tail_t > 0, (log_tail_t - log_tail_s).exp(), 0.0)  # tau_t / tau_s
    ce, p_ce = _ce_part(student, labels, temperature, p_s, lse_s)
    grad = None
    if want_grad:
        kd_weight = (1.0 - ce_share) * scale
        # outside the cache: (1 - c) p_s (1 - tau_t / tau_s) / T + c p_ce; inside: (1 - c) (p_s - p_t) / T + c p_ce
        coef = torch.full_like(kd, kd_weight) if factor is None else (1.0 - factor) * kd_weight
        shared = ce is not None and ce_share and temperature == 1.0  # p_ce is p_s: one pass
        if shared:
            coef = coef + ce_share
        grad = torch.mul(p_s, coef.unsqueeze(-1), out=out) if out is not None else p_s * coef.unsqueeze(-1)
        inside = (p_s_k - p_t_k).mul_(kd_weight)
        if ce is not None and ce_share:
            if not shared:
                grad.add_(p_ce, alpha=ce_share)
            inside.add_(p_ce.gather(-1, indices), alpha=ce_share)
        grad.scatter_(-1, indices, inside)
        if ce is not None and ce_share:
            _add_onehot(grad, labels, -ce_share)
    return kd, ce, grad


def _masked_log_ratio(log_p: torch.Tensor, log_q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``log p - log q`` where ``p > 0``, else 0 (``0 log 0 = 0``); ``log_p`` is overwritten."""
    # torch.where, not masked_fill_: several times faster on CPU here
    return torch.where(p > 0, log_p.sub_(log_q), 0.0)
