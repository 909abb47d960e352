"""Distillation losses computed a chunk of tokens at a time, for large vocabularies: same value, less memory.

:func:`chunked_distillation_loss` takes both models' logits; :func:`chunked_distillation_loss_from_hidden`
takes final hidden states and LM-head weights and never builds all the logits. Both compute the gradient
chunk by chunk during the forward pass (a custom ``torch.autograd.Function``), so nothing of size
``(tokens, vocab)`` is kept for backward.

>>> import torch
>>> from hf_lite.losses import distillation_loss
>>> student, teacher = torch.randn(2, 6, 50), torch.randn(2, 6, 50)
>>> loss = chunked_distillation_loss(student, teacher, chunk_size=4)
>>> torch.allclose(loss, distillation_loss(student, teacher))
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from hf_lite.losses._checks import (
    VOCAB_FIX,
    LossType,
    NumItems,
    check_beta,
    check_chunk_size,
    check_loss_type,
    check_pair,
    check_temperature,
    check_tensor,
    valid_mask,
)
from hf_lite.losses._maths import compute_dtype, denominator, divergence_sum, temperature_factor

__all__ = ["chunked_distillation_loss", "chunked_distillation_loss_from_hidden"]


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
    >>> from hf_lite.losses import distillation_loss
    >>> student = torch.randn(2, 6, 50, requires_grad=True)
    >>> teacher = torch.randn(2, 6, 50)
    >>> loss = chunked_distillation_loss(student, teacher, loss_type="reverse_kl", chunk_size=4)
    >>> torch.allclose(loss, distillation_loss(student, teacher, loss_type="reverse_kl"))
    True
    >>> loss.backward()
    """
    loss_type = check_loss_type(loss_type)
    check_temperature(temperature)
    check_beta(beta)
    check_chunk_size(chunk_size)
    check_pair(student_logits, teacher_logits, "student_logits", "teacher_logits")
    lead_shape = student_logits.shape[:-1]
    valid = valid_mask(lead_shape, mask, labels, student_logits.device)
    count = valid.sum() if valid is not None else math.prod(lead_shape)
    scale = _scale(count, num_items_in_batch, temperature_factor(loss_type, temperature), student_logits)

    def chunk_sum(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        return divergence_sum(student, teacher, valid, loss_type, temperature, beta, compiled)

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
    >>> from hf_lite.losses import distillation_loss
    >>> hidden_s, head_s = torch.randn(2, 5, 8, requires_grad=True), torch.randn(30, 8, requires_grad=True)
    >>> hidden_t, head_t = torch.randn(2, 5, 16), torch.randn(30, 16)
    >>> loss = chunked_distillation_loss_from_hidden(hidden_s, head_s, hidden_t, head_t, chunk_size=3)
    >>> torch.allclose(loss, distillation_loss(hidden_s @ head_s.T, hidden_t @ head_t.T))
    True
    >>> loss.backward()
    """
    loss_type = check_loss_type(loss_type)
    check_temperature(temperature)
    check_beta(beta)
    check_chunk_size(chunk_size)
    for name, tensor in (
        ("student_hidden", student_hidden),
        ("student_lm_head_weight", student_lm_head_weight),
        ("teacher_hidden", teacher_hidden),
        ("teacher_lm_head_weight", teacher_lm_head_weight),
    ):
        check_tensor(name, tensor)
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
            check_tensor(f"{who}_lm_head_bias", bias)
            if tuple(bias.shape) != (weight.shape[0],):
                raise ValueError(
                    f"{who}_lm_head_bias.shape={tuple(bias.shape)} does not match the head's vocabulary "
                    f"({weight.shape[0]}): pass the bias of the same head, shape (vocab,), or None."
                )
        vocab = weight.shape[0] if vocab is None else vocab
    if student_lm_head_weight.shape[0] != teacher_lm_head_weight.shape[0]:
        raise ValueError(
            f"student_lm_head_weight has vocab={student_lm_head_weight.shape[0]} rows and teacher_lm_head_weight "
            f"vocab={teacher_lm_head_weight.shape[0]}. {VOCAB_FIX} Here: slice both weights (and biases) with "
            "`weight[:len(tokenizer)]`."
        )
    lead_shape = student_hidden.shape[:-1]
    valid = valid_mask(lead_shape, mask, labels, student_hidden.device)
    count = valid.sum() if valid is not None else math.prod(lead_shape)
    scale = _scale(count, num_items_in_batch, temperature_factor(loss_type, temperature), student_hidden)

    def chunk_sum(
        hidden_s: torch.Tensor,
        hidden_t: torch.Tensor,
        valid: torch.Tensor | None,
        weight_s: torch.Tensor,
        weight_t: torch.Tensor,
        bias_s: torch.Tensor | None,
        bias_t: torch.Tensor | None,
    ) -> torch.Tensor:
        hidden_s = hidden_s.reshape(-1, hidden_s.shape[-1])  # (n, H_s)
        hidden_t = hidden_t.reshape(-1, hidden_t.shape[-1])  # (n, H_t)
        if valid is not None:
            flat = valid.reshape(-1)
            hidden_s, hidden_t = hidden_s[flat], hidden_t[flat]  # only valid rows become logits
        student = F.linear(hidden_s, weight_s, bias_s)  # (n, V), in the model's dtype, as lm_head would give
        teacher = F.linear(hidden_t, weight_t, bias_t)  # (n, V)
        return divergence_sum(student, teacher, None, loss_type, temperature, beta, compiled)

    return _chunked(
        chunk_sum,
        [student_hidden, teacher_hidden, valid],
        [student_lm_head_weight, teacher_lm_head_weight, student_lm_head_bias, teacher_lm_head_bias],
        len(lead_shape),
        scale,
        chunk_size,
    )


def _scale(
    count: torch.Tensor | int, num_items_in_batch: NumItems, factor: float, like: torch.Tensor
) -> torch.Tensor:
    dtype = compute_dtype(like.dtype)
    denom = denominator(count, num_items_in_batch)
    denom = torch.as_tensor(denom, device=like.device).to(dtype)
    return factor / denom


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
