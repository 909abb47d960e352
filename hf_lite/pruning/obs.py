"""The maths of SparseGPT on one weight matrix (Frantar & Alistarh 2023, "Massive Language Models Can Be
Accurately Pruned in One-Shot"): optimal brain surgeon (OBS) pruning with weight reconstruction.

A linear layer is pruned to minimize its reconstruction error on calibration inputs ``X`` ``(in, tokens)``:
``||W X - W' X||^2`` over sparse ``W'``. With ``H = 2 X X^T`` (the Hessian of that error), removing weight
``q`` of a row ``w`` costs ``w_q^2 / [H^-1]_qq`` when the row's other weights absorb it by the OBS update
``delta = -(w_q / [H^-1]_qq) * H^-1[:, q]``. SparseGPT walks the input columns left to right, pruning and
compensating column by column; the inverse Hessians of the shrinking sets of remaining columns are the rows
of the upper Cholesky factor of ``H^-1``, so one factorization serves the whole layer. Updates to later
columns are applied lazily per block of ``block_size`` columns. :func:`hf_lite.pruning.sparsegpt_prune_`
runs this over a model.

>>> import torch
>>> x = torch.randn(32, 512)                     # calibration inputs (in, tokens)
>>> w = torch.randn(8, 32)
>>> new_w, keep = sparsegpt_update(w, 2 * x @ x.T, nm=(2, 4), block_size=16)
>>> bool((keep.reshape(8, 8, 4).sum(-1) == 2).all())   # 2 kept in every group of 4 inputs
True
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from hf_lite.pruning.masks import check_nm, pruned_count
from hf_lite.pruning.oneshot import parse_pattern, resolve_sparsity

__all__ = ["check_sparsegpt_options", "sparsegpt_update", "reconstruction_error"]

# ----------------------------------------------------------------------------------------------------------
# argument checks


def _check_block_size(block_size: object) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral):
        raise TypeError(
            f"block_size must be an int (columns updated together, typical: 128); got "
            f"{type(block_size).__name__} {block_size!r}."
        )
    if block_size < 1:
        raise ValueError(
            f"block_size={block_size!r} must be >= 1: it is the number of input columns pruned and updated "
            "together (lazy batch updates). Use the paper's 128."
        )
    return int(block_size)


def _check_dampening(dampening: object) -> float:
    if isinstance(dampening, bool) or not isinstance(dampening, numbers.Real):
        raise TypeError(
            f"dampening must be a float (fraction of the mean Hessian diagonal added to it, typical: 0.01); "
            f"got {type(dampening).__name__} {dampening!r}."
        )
    if not (math.isfinite(dampening) and dampening >= 0):
        raise ValueError(
            f"dampening={dampening!r} must be a finite number >= 0: lambda = dampening * mean(diag H) is added "
            "to the Hessian's diagonal to keep it invertible. Use the paper's 0.01 (0.1 for few tokens)."
        )
    return float(dampening)


def _check_nm_block(block_size: int, nm: tuple[int, int] | None) -> None:
    if nm is not None and block_size % nm[1]:
        raise ValueError(
            f"block_size={block_size} is not a multiple of m={nm[1]} of pattern '{nm[0]}:{nm[1]}': each N:M "
            f"group must lie inside one block of columns. Use block_size={max(nm[1], 128 // nm[1] * nm[1])}."
        )


def check_sparsegpt_options(
    sparsity: float | None = None,
    *,
    pattern: str = "unstructured",
    block_size: int = 128,
    dampening: float = 0.01,
) -> tuple[float, tuple[int, int] | None, int, float]:
    """Check SparseGPT's options before any work and resolve them: ``(sparsity, nm, block_size, dampening)``.

    ``sparsity`` is required with ``"unstructured"`` and implied by ``"n:m"`` (``1 - n/m``); ``block_size``
    an int ``>= 1`` (a multiple of ``m`` for N:M); ``dampening`` a finite number ``>= 0``. A recipe can check
    its prune stage with it when the recipe is read.

    >>> check_sparsegpt_options(pattern="2:4", block_size=64)
    (0.5, (2, 4), 64, 0.01)
    """
    nm = parse_pattern(pattern)
    sparsity = resolve_sparsity(sparsity, nm)
    block_size = _check_block_size(block_size)
    _check_nm_block(block_size, nm)
    return sparsity, nm, block_size, _check_dampening(dampening)


# ----------------------------------------------------------------------------------------------------------
# the maths on one matrix


@contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run CPU work on one intra-op thread, then restore the thread count. SparseGPT's column loop is two
    small kernels per input column, bound by launches: with 2 threads on 2 busy cores a 1536 x 576 layer took
    4.3 s against 0.1 s on one thread (OpenMP wake-ups cost more than the work); GPUs are unaffected."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _inverse_cholesky(hessian: torch.Tensor, dampening: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, dead)``: ``U`` upper triangular with ``U^T U = (H + lambda I)^-1`` (float64), ``dead`` the inputs
    with ``H_jj = 0`` (given ``H_jj = 1``, as in the paper: their weights cost nothing to prune)."""
    h = hessian.detach().to(torch.float64).clone()  # (in, in)
    if not bool(torch.isfinite(h).all()):
        raise ValueError(
            "hessian contains NaN or inf: the calibration activations overflowed (an fp16 model?). Run the "
            "calibration in float32 or bfloat16."
        )
    dead = torch.diagonal(h) == 0  # (in,) inputs that were zero on every calibration token
    h[dead, dead] = 1.0
    damp = dampening * torch.diagonal(h).mean()
    h.diagonal().add_(damp)
    chol, info = torch.linalg.cholesky_ex(h)
    if int(info) == 0:
        h = torch.cholesky_inverse(chol)  # (in, in) = H^-1
        chol, info = torch.linalg.cholesky_ex(h, upper=True)
    if int(info) != 0:
        raise ValueError(
            f"the calibration Hessian is not positive definite with dampening={dampening:g} (its inputs are "
            "linearly dependent on the calibration tokens). Raise dampening (e.g. 0.1) or calibrate on more "
            "tokens."
        )
    return chol, dead


@torch.no_grad()
def sparsegpt_update(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float | None = None,
    *,
    nm: tuple[int, int] | None = None,
    block_size: int = 128,
    dampening: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune one weight matrix by SparseGPT and update its remaining weights: ``(new_weight, mask)``.

    With ``U`` the upper Cholesky factor of ``(H + lambda I)^-1`` (``lambda = dampening * mean(diag H)``),
    columns are processed left to right in blocks of ``block_size``. At the start of each block the weights
    of that block are scored ``W_ij^2 / U_jj^2`` (``U_jj^2`` is ``[H^-1]_jj`` of the columns not processed
    yet: the OBS cost of pruning ``W_ij``) and each row prunes its lowest scores: ``round(sparsity * i2) -
    round(sparsity * i1)`` of columns ``i1:i2``, so every row ends with exactly ``round(sparsity * in)``
    zeros. With ``nm=(n, m)`` each group of ``m`` columns is scored when the walk reaches it and each row
    keeps its ``n`` best. Then column ``j``: the pruned weights' error ``e = W_:j / U_jj`` (zero for kept
    weights) updates the later columns of the block at once, ``W_:,j: -= e U_j,j:``, and the later blocks
    once per block, ``W_:,i2: -= E U_i1:i2,i2:`` (lazy batch updates). Inputs with ``H_jj = 0`` (zero on
    every calibration token) get ``H_jj = 1`` and are pruned first.

    Args:
        weight: ``(out, in)`` weight (``nn.Linear`` layout; transpose a ``Conv1D`` weight first).
        hessian: ``(in, in)``, ``2 X X^T`` over calibration inputs ``X`` ``(in, tokens)`` (any positive scale).
        sparsity: fraction of each row to zero, in ``[0, 1)``; implied by (or equal to ``1 - n/m`` with) ``nm``.
        nm: ``(n, m)`` to keep ``n`` of every ``m`` consecutive inputs, or ``None`` for unstructured.
        block_size: columns per lazy-update block (the paper's 128); a multiple of ``m`` with ``nm``.
        dampening: fraction of the mean Hessian diagonal added to the diagonal (the paper's 0.01).

    Returns:
        ``(new_weight, mask)``: the pruned and updated weight (``weight``'s dtype and device) and the
        ``torch.bool`` mask of the kept weights (``True`` = keep); ``new_weight`` is zero where ``mask`` is not.

    >>> import torch
    >>> x = torch.randn(16, 256)                           # (in, tokens)
    >>> w = torch.randn(4, 16)
    >>> new_w, mask = sparsegpt_update(w, 2 * x @ x.T, 0.5)
    >>> mask.sum(dim=1).tolist()                           # 8 of 16 kept in every row
    [8, 8, 8, 8]
    >>> bool(reconstruction_error(w, new_w, x) < reconstruction_error(w, w * mask, x))
    True
    """
    if not isinstance(weight, torch.Tensor) or not isinstance(hessian, torch.Tensor):
        raise TypeError(
            f"weight and hessian must be torch.Tensors; got {type(weight).__name__} and {type(hessian).__name__}."
        )
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(
            f"weight must be a 2-D float tensor (out, in); got shape {tuple(weight.shape)}, dtype {weight.dtype}. "
            "Transpose a transformers Conv1D weight (in, out) first."
        )
    rows, cols = weight.shape
    if tuple(hessian.shape) != (cols, cols):
        raise ValueError(
            f"hessian has shape {tuple(hessian.shape)} but weight {tuple(weight.shape)} has {cols} input "
            f"features: pass the ({cols}, {cols}) matrix 2 X X^T of this layer's inputs."
        )
    if nm is not None:
        nm = check_nm(*nm)
        if cols % nm[1]:
            raise ValueError(
                f"nm={nm} needs a number of input features divisible by {nm[1]}; weight has {cols}. "
                "Use nm=None (unstructured) for this layer."
            )
    sparsity = resolve_sparsity(sparsity, nm)
    block_size = _check_block_size(block_size)
    _check_nm_block(block_size, nm)
    dampening = _check_dampening(dampening)

    with _one_cpu_thread(weight.device):
        return _update(weight, hessian, sparsity, nm, block_size, dampening)


def _update(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None,
    block_size: int,
    dampening: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = weight.shape
    u64, dead = _inverse_cholesky(hessian, dampening)
    u = u64.to(device=weight.device, dtype=torch.float32)  # (in, in) upper
    dead = dead.to(weight.device)
    w = weight.detach().to(torch.float32).clone()  # (out, in)
    keep = torch.ones(rows, cols, dtype=torch.bool, device=weight.device)  # (out, in)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        # The block transposed, (B, out): column j of the weight is a contiguous row, so the loop below is two
        # small kernels per column (it runs in_features times: launches, not flops, set its cost).
        w1 = w[:, i1:i2].T.contiguous()  # (B, out) updated column by column
        u1 = u[i1:i2, i1:i2]  # (B, B)
        d1 = torch.diagonal(u1)  # (B,) sqrt([H^-1]_jj) of the remaining columns
        err = torch.zeros_like(w1)  # (B, out) e_j = pruned part of column j / U_jj
        if nm is None:
            k = pruned_count(i2, sparsity) - pruned_count(i1, sparsity)  # zeros of each row in this block
            if k:
                scores = w1.pow(2) / d1.pow(2).unsqueeze(1)  # (B, out) OBS cost of each weight
                scores[dead[i1:i2]] = -1.0  # dead inputs first
                order = scores.sort(dim=0, stable=True).indices[:k]  # stable: ties prune lower index first
                keep[:, i1:i2].T.scatter_(0, order, False)
            scale = (~keep[:, i1:i2]).T / d1.unsqueeze(1)  # (B, out): 1 / U_jj where pruned, else 0
        else:
            scale = torch.zeros_like(w1)
        for j in range(i2 - i1):
            if nm is not None and j % nm[1] == 0:
                group = slice(j, j + nm[1])
                scores = w1[group].pow(2) / d1[group].pow(2).unsqueeze(1)  # (m, out)
                scores[dead[i1:i2][group]] = -1.0
                order = scores.sort(dim=0, stable=True).indices[: nm[1] - nm[0]]
                keep[:, i1 + j : i1 + j + nm[1]].T.scatter_(0, order, False)
                scale[group] = (~keep[:, i1 + j : i1 + j + nm[1]]).T / d1[group].unsqueeze(1)
            torch.mul(w1[j], scale[j], out=err[j])  # (out,)
            w1[j:].addr_(u1[j, j:], err[j], alpha=-1.0)  # OBS update of this block's later columns
        w[:, i1:i2] = w1.T.masked_fill(~keep[:, i1:i2], 0.0)
        w[:, i2:] -= err.T @ u[i1:i2, i2:]  # lazy update of the later blocks
    return w.to(weight.dtype), keep


def reconstruction_error(weight: torch.Tensor, new_weight: torch.Tensor, inputs: torch.Tensor) -> float:
    """``||(W - W') X||_F^2``, the error SparseGPT minimizes: ``weight``/``new_weight`` ``(out, in)``,
    ``inputs`` ``X`` ``(in, tokens)``; computed in float64.

    >>> import torch
    >>> reconstruction_error(torch.ones(1, 2), torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0], [3.0]]))
    9.0
    """
    delta = (weight.detach().double() - new_weight.detach().double()) @ inputs.detach().double()  # (out, tok)
    return float(delta.pow(2).sum())
