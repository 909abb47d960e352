"""Importance scores and pruning masks: pure functions on tensors, no model and no Trainer inside.

A mask is a ``torch.bool`` tensor of the weight's shape: ``True`` keeps a weight, ``False`` prunes it.
Scores say how much a weight matters (higher = keep); every mask function keeps the highest scores.

Counting is exact: pruning a fraction ``sparsity`` of ``k`` weights zeroes ``pruned_count(k, sparsity)``
of them, that is ``round(sparsity * k)`` (Python's ``round``, halves to even). Ties are broken by
position, so a mask is a deterministic function of its scores: among equal scores the weight with the
lower flat index (row-major) is pruned first.

Orientation: ``torch.nn.Linear`` stores its weight as ``(out_features, in_features)`` and transformers'
``Conv1D`` (GPT-2) as ``(in_features, out_features)``. Functions that work per row or per group take a
``dim`` argument naming the *input-feature* dimension: ``-1`` (or ``1``) for ``nn.Linear``, ``0`` for
``Conv1D``; :func:`hf_lite.pruning.targets.in_features_dim` returns the right one for a module.

>>> import torch
>>> w = torch.tensor([[0.1, -2.0, 0.3, 4.0], [1.0, -0.5, 0.0, 0.2]])
>>> mask = unstructured_mask(magnitude_scores(w), sparsity=0.5)
>>> apply_mask_(w, mask)
tensor([[ 0.0000, -2.0000,  0.0000,  4.0000],
        [ 1.0000, -0.5000,  0.0000,  0.0000]])
>>> nm_mask(magnitude_scores(w), n=2, m=4).sum(dim=1)
tensor([2, 2])
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Iterable, Mapping

import torch

__all__ = [
    "magnitude_scores",
    "movement_scores",
    "wanda_scores",
    "pruned_count",
    "unstructured_mask",
    "global_unstructured_masks",
    "nm_mask",
    "apply_mask_",
    "mask_sparsity",
    "check_sparsity",
    "check_nm",
    "check_nm_widths",
    "check_patterns",
]


# ----------------------------------------------------------------------------------------------------------
# argument checks (shared with schedule.py, oneshot.py, targets.py and the pruning callbacks)


def check_sparsity(sparsity: float, name: str = "sparsity") -> float:
    """Return ``sparsity`` as a float after checking it is a real number in ``[0, 1)``.

    >>> check_sparsity(0.5)
    0.5
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(
            f"{name} must be a float in [0, 1) (the fraction of weights set to zero); "
            f"got {type(sparsity).__name__} {sparsity!r}."
        )
    value = float(sparsity)
    if not 0.0 <= value < 1.0:  # also rejects NaN
        raise ValueError(
            f"{name}={sparsity!r} is outside [0, 1): it is the fraction of weights set to zero, so 0.5 "
            "prunes half of them and 1.0 would prune all. Pass a value such as 0.5 "
            "(not a percentage like 50)."
        )
    return value


def check_nm(n: int, m: int) -> tuple[int, int]:
    """Check an N:M pattern (keep ``n`` of every ``m`` consecutive weights) and return ``(n, m)``.

    >>> check_nm(2, 4)
    (2, 4)
    """
    for name, value in (("n", n), ("m", m)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(
                f"{name} must be an int (N:M keeps n of every m weights); "
                f"got {type(value).__name__} {value!r}."
            )
    n, m = int(n), int(m)
    if n < 1 or n >= m:
        raise ValueError(
            f"N:M pattern n={n}, m={m} is invalid: it keeps n of every m consecutive weights, so it needs "
            "1 <= n < m. Use e.g. n=2, m=4 (2:4, half the weights) or n=4, m=8."
        )
    return n, m


def check_nm_widths(widths: Mapping[str, int], nm: tuple[int, int] | None, label: str | None = None) -> None:
    """Refuse an N:M pattern for layers whose input width is not a multiple of ``m``, naming all of them.

    Called before any weight is touched, so a bad layer fails the whole run early.

    Args:
        widths: ``{layer name: number of input features}`` of the targeted layers.
        nm: ``(n, m)``, or ``None`` for unstructured sparsity (nothing to check).
        label: how the message names the pattern argument (default ``"pattern 'n:m'"``), e.g.
            ``"pattern='2:4'"`` for a config field.

    >>> check_nm_widths({"fc": 8}, (2, 4))  # fits: no error; {"fc": 6} would raise a ValueError
    """
    if nm is None:
        return
    bad = [f"{name} ({width} inputs)" for name, width in widths.items() if width % nm[1]]
    if bad:
        label = label if label is not None else f"pattern '{nm[0]}:{nm[1]}'"
        raise ValueError(
            f"{label} needs a number of input features divisible by {nm[1]}, which these layers lack: "
            f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}. Exclude them "
            "(exclude=[*DEFAULT_EXCLUDE, 'name']) or use pattern='unstructured'."
        )


def check_patterns(value: str | Iterable[str] | None, name: str) -> list[str] | None:
    """Check layer-name regexes (an ``include``/``exclude`` argument) and return them as a list.

    ``value`` is one regex, an iterable of them, or ``None`` (returned as ``None``); ``name`` is the
    argument's name, for error messages.

    >>> check_patterns("q_proj", "include"), check_patterns(None, "exclude")
    (['q_proj'], None)
    """
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if isinstance(items, (bytes, Mapping)) or not isinstance(items, Iterable):
        raise TypeError(
            f"{name} must be a regex string, a list of them, or None; got {type(value).__name__}."
        )
    out = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{name} must contain regex strings; got {type(item).__name__} {item!r}.")
        try:
            re.compile(item)
        except re.error as err:
            raise ValueError(f"{name} pattern {item!r} is not a valid regular expression: {err}.") from err
        out.append(item)
    return out


def _check_tensor(value: object, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(value).__name__}.")
    return value


def _check_scores(scores: object, name: str = "scores") -> torch.Tensor:
    scores = _check_tensor(scores, name)
    if not scores.is_floating_point():
        raise TypeError(
            f"{name} must be a floating point tensor (e.g. magnitude_scores(weight)); "
            f"got dtype {scores.dtype}."
        )
    if torch.isnan(scores).any():
        raise ValueError(
            f"{name} contain NaN, so no order between weights exists. Check the weights and gradients "
            "the scores come from (a diverged step or an fp16 overflow)."
        )
    return scores


def _check_dim(scores: torch.Tensor, dim: int, name: str = "dim") -> int:
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {type(dim).__name__} {dim!r}.")
    if scores.dim() == 0 or not -scores.dim() <= dim < scores.dim():
        raise ValueError(
            f"{name}={dim} is not a dimension of scores of shape {tuple(scores.shape)}. For a weight use the "
            "input-feature dimension: -1 for nn.Linear (out, in), 0 for transformers Conv1D (in, out)."
        )
    return int(dim) % scores.dim()


def pruned_count(numel: int, sparsity: float) -> int:
    """How many of ``numel`` weights pruning to ``sparsity`` sets to zero: ``round(sparsity * numel)``.

    Args:
        numel: number of weights considered together (a tensor, a row, or all tensors for a global mask).
        sparsity: fraction to prune, in ``[0, 1)``.

    Returns:
        An ``int`` between 0 and ``numel``.

    >>> pruned_count(10, 0.3), pruned_count(4096, 0.5), pruned_count(3, 0.5)
    (3, 2048, 2)
    """
    sparsity = check_sparsity(sparsity)
    # Products like 0.3 * 10 = 3.0000000000000004 are intended as 3: round() absorbs the float error.
    return min(int(numel), int(round(sparsity * numel)))


# ----------------------------------------------------------------------------------------------------------
# scores


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """Magnitude importance ``|W|`` (Han et al. 2015; Zhu & Gupta 2017), in float32.

    Args:
        weight: a weight tensor of any shape.

    Returns:
        A float32 tensor of the same shape, detached from autograd.

    >>> import torch
    >>> magnitude_scores(torch.tensor([-3.0, 0.5]))
    tensor([3.0000, 0.5000])
    """
    weight = _check_tensor(weight, "weight")
    if not weight.is_floating_point():
        raise TypeError(f"weight must be a floating point tensor; got dtype {weight.dtype}.")
    return weight.detach().abs().float()


def movement_scores(
    weight: torch.Tensor, grad: torch.Tensor, accumulated: torch.Tensor | None = None
) -> torch.Tensor:
    """First-order movement importance of Sanh et al. 2020, accumulated over optimizer steps.

    ``S = -sum_t W_t * dL/dW_t``: one step adds ``-(weight * grad)``. Sign convention (the paper's): a
    **positive** score means the weight is moving **away from zero** (gradient descent moves ``W`` by
    ``-lr * grad``, which has the sign of ``W`` when ``W * grad < 0``), so it is kept; a negative score
    means it is shrinking toward zero, so it is pruned first. Feed the scores to any mask function
    (higher is kept), e.g. :func:`unstructured_mask` for hard movement pruning.

    Call it once per optimizer step with the gradient of that step (after gradient accumulation, before
    ``optimizer.zero_grad``), passing back the previous result as ``accumulated``.

    Args:
        weight: weight tensor, any shape.
        grad: its gradient, same shape.
        accumulated: the scores returned by the previous call, or ``None`` to start from zero.

    Returns:
        A new float32 tensor of ``weight``'s shape: ``accumulated - weight * grad``.

    >>> import torch
    >>> w, g = torch.tensor([1.0, 1.0, -1.0]), torch.tensor([-0.5, 0.5, -0.5])
    >>> s = movement_scores(w, g)   # w=1 with g<0 grows: +0.5; w=1 with g>0 shrinks: -0.5
    >>> movement_scores(w, g, accumulated=s)
    tensor([ 1., -1., -1.])
    """
    weight = _check_tensor(weight, "weight")
    grad = _check_tensor(grad, "grad")
    if grad.shape != weight.shape:
        raise ValueError(
            f"grad has shape {tuple(grad.shape)} but weight has shape {tuple(weight.shape)}; pass the "
            "gradient of this very weight (weight.grad)."
        )
    step = -(weight.detach().float() * grad.detach().float())
    if accumulated is None:
        return step
    accumulated = _check_tensor(accumulated, "accumulated")
    if accumulated.shape != weight.shape:
        raise ValueError(
            f"accumulated has shape {tuple(accumulated.shape)} but weight has shape {tuple(weight.shape)}; "
            "pass the scores returned for this weight by the previous call, or None to start."
        )
    return accumulated.float() + step


def wanda_scores(weight: torch.Tensor, input_norm: torch.Tensor, *, dim: int = -1) -> torch.Tensor:
    """Wanda importance (Sun et al. 2023): ``|W_ij| * ||X_j||_2``, in float32.

    ``||X_j||_2`` is the L2 norm of input feature ``j`` over all calibration tokens, so a small weight on
    a large-activation feature can outrank a large weight on a quiet one.

    Args:
        weight: a 2-D weight, ``(out, in)`` for ``nn.Linear`` or ``(in, out)`` for ``Conv1D``.
        input_norm: ``(in,)`` tensor of per-feature input norms.
        dim: the input-feature dimension of ``weight`` (``-1``/``1`` for ``nn.Linear``, ``0`` for ``Conv1D``).

    Returns:
        A float32 tensor of ``weight``'s shape.

    >>> import torch
    >>> wanda_scores(torch.tensor([[1.0, -1.0]]), torch.tensor([10.0, 0.1]))
    tensor([[10.0000,  0.1000]])
    """
    weight = _check_tensor(weight, "weight")
    input_norm = _check_tensor(input_norm, "input_norm")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (a Linear or Conv1D weight); got shape {tuple(weight.shape)}.")
    dim = _check_dim(weight, dim)
    if input_norm.shape != (weight.shape[dim],):
        raise ValueError(
            f"input_norm has shape {tuple(input_norm.shape)} but weight of shape {tuple(weight.shape)} has "
            f"{weight.shape[dim]} input features along dim={dim}; pass one norm per input feature "
            "(and dim=0 for a transformers Conv1D, whose weight is (in, out))."
        )
    norm = input_norm.detach().float().to(weight.device)
    norm = norm.unsqueeze(0) if dim == 1 else norm.unsqueeze(1)  # broadcast over output features
    return weight.detach().abs().float() * norm


# ----------------------------------------------------------------------------------------------------------
# masks


def _prune_smallest_flat(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask of a 1-D float tensor with its ``k`` smallest entries pruned (ties: lower index first)."""
    keep = torch.ones(flat.shape, dtype=torch.bool, device=flat.device)
    if k == 0:
        return keep
    if k >= flat.numel():
        return keep.fill_(False)
    # kthvalue is O(n) and allocates no int64 index per element, unlike a full sort.
    threshold = flat.kthvalue(k).values
    below = flat < threshold
    ties = (flat == threshold).nonzero().squeeze(1)
    keep &= ~below
    keep[ties[: k - int(below.sum())]] = False
    return keep


def unstructured_mask(scores: torch.Tensor, sparsity: float, *, dim: int | None = None) -> torch.Tensor:
    """Prune the lowest scores: keep the ``1 - sparsity`` fraction with the highest scores.

    With ``dim=None`` the tensor is ranked as a whole and exactly ``round(sparsity * scores.numel())``
    entries are pruned. With ``dim`` set, every slice along ``dim`` (a *row* of input weights of one
    output feature, when ``dim`` is the input dimension) is ranked on its own and exactly
    ``round(sparsity * scores.shape[dim])`` entries of each are pruned, as Wanda does.

    Args:
        scores: importance scores, float, any shape (higher = keep).
        sparsity: fraction of entries to prune, in ``[0, 1)``.
        dim: ``None`` for one ranking over the tensor, or the dimension along which each slice is ranked.

    Returns:
        A ``torch.bool`` mask of ``scores``' shape (``True`` = keep).

    >>> import torch
    >>> s = torch.tensor([[4.0, 3.0, 2.0, 1.0], [9.0, 8.0, 7.0, 6.0]])
    >>> unstructured_mask(s, 0.5).int()
    tensor([[0, 0, 0, 0],
            [1, 1, 1, 1]], dtype=torch.int32)
    >>> unstructured_mask(s, 0.5, dim=1).int()
    tensor([[1, 1, 0, 0],
            [1, 1, 0, 0]], dtype=torch.int32)
    """
    scores = _check_scores(scores)
    sparsity = check_sparsity(sparsity)
    if dim is None:
        k = pruned_count(scores.numel(), sparsity)
        return _prune_smallest_flat(scores.detach().reshape(-1).float(), k).reshape(scores.shape)
    dim = _check_dim(scores, dim)
    rows = scores.detach().float().movedim(dim, -1)  # (..., row_len)
    k = pruned_count(rows.shape[-1], sparsity)
    keep = torch.ones(rows.shape, dtype=torch.bool, device=rows.device)
    if k:
        order = rows.sort(dim=-1, stable=True).indices[..., :k]  # stable: ties prune the lower index first
        keep.scatter_(-1, order, False)
    return keep.movedim(-1, dim)


def global_unstructured_masks(scores: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One threshold across several tensors: prune the lowest scores of all of them taken together.

    Exactly ``round(sparsity * total)`` entries are pruned, ``total`` being the summed sizes; each tensor
    ends up with its own sparsity. Every kept score is ``>=`` every pruned score. Ties at the threshold
    are pruned in the mapping's order, then by flat index. Scores must be comparable across tensors
    (e.g. magnitudes of weights with similar scales); memory: one float32 copy of all scores.

    Args:
        scores: ``{name: scores}``, float tensors of any shapes.
        sparsity: total fraction to prune, in ``[0, 1)``.

    Returns:
        ``{name: bool mask}`` with the same keys and shapes.

    >>> import torch
    >>> masks = global_unstructured_masks({"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([3.0, 4.0])}, 0.5)
    >>> masks["a"].tolist(), masks["b"].tolist()
    ([False, False], [True, True])
    """
    if not isinstance(scores, Mapping):
        raise TypeError(f"scores must be a dict of {{name: tensor}}; got {type(scores).__name__}.")
    if not scores:
        raise ValueError("scores is empty: pass at least one {name: scores tensor} to prune.")
    checked = {name: _check_scores(s, f"scores[{name!r}]") for name, s in scores.items()}
    sparsity = check_sparsity(sparsity)
    device = next(iter(checked.values())).device
    flats = [s.detach().reshape(-1).float().to(device) for s in checked.values()]
    total = sum(f.numel() for f in flats)
    k = pruned_count(total, sparsity)
    if k == 0:
        return {name: torch.ones(s.shape, dtype=torch.bool, device=s.device) for name, s in checked.items()}
    if k >= total:  # tiny totals: round(0.6 * 1) == 1
        return {name: torch.zeros(s.shape, dtype=torch.bool, device=s.device) for name, s in checked.items()}
    threshold = torch.cat(flats).kthvalue(k).values
    budget = k - sum(int((f < threshold).sum()) for f in flats)  # ties at the threshold still to prune
    masks: dict[str, torch.Tensor] = {}
    for (name, s), flat in zip(checked.items(), flats, strict=True):
        keep = flat >= threshold
        ties = (flat == threshold).nonzero().squeeze(1)
        take = min(budget, ties.numel())
        keep[ties[:take]] = False
        budget -= take
        masks[name] = keep.reshape(s.shape).to(s.device)
    return masks


def nm_mask(scores: torch.Tensor, n: int, m: int, *, dim: int = -1) -> torch.Tensor:
    """N:M semi-structured mask: in every group of ``m`` consecutive weights along ``dim``, keep the ``n``
    highest scores (2:4 is what sparse tensor cores accelerate).

    Groups run along the **input** dimension of a weight, so each output feature reads ``n`` of every
    ``m`` consecutive inputs: ``dim=-1`` for ``nn.Linear`` (out, in), ``dim=0`` for ``Conv1D`` (in, out).
    Within a group, ties prune the lower index first.

    Args:
        scores: importance scores, float, any shape; ``scores.shape[dim]`` must be a multiple of ``m``.
        n: weights kept per group, ``1 <= n < m``.
        m: group size.
        dim: the dimension along which groups are formed (the input-feature dimension).

    Returns:
        A ``torch.bool`` mask of ``scores``' shape with exactly ``n`` ``True`` in every group.

    >>> import torch
    >>> nm_mask(torch.tensor([[1.0, 4.0, 2.0, 3.0, 8.0, 5.0, 6.0, 7.0]]), 2, 4).int()
    tensor([[0, 1, 0, 1, 1, 0, 0, 1]], dtype=torch.int32)
    """
    scores = _check_scores(scores)
    n, m = check_nm(n, m)
    dim = _check_dim(scores, dim)
    length = scores.shape[dim]
    if length % m:
        raise ValueError(
            f"N:M sparsity {n}:{m} groups {m} consecutive weights along dim={dim}, but scores of shape "
            f"{tuple(scores.shape)} have {length} there, not a multiple of {m}. Exclude this layer from N:M "
            "pruning, or use unstructured sparsity for it."
        )
    rows = scores.detach().float().movedim(dim, -1)  # (..., length)
    groups = rows.reshape(*rows.shape[:-1], length // m, m)  # (..., length/m, m)
    drop = groups.sort(dim=-1, stable=True).indices[..., : m - n]  # the m-n lowest of each group
    keep = torch.ones(groups.shape, dtype=torch.bool, device=groups.device).scatter_(-1, drop, False)
    return keep.reshape(rows.shape).movedim(-1, dim)


def apply_mask_(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero the pruned entries of ``weight`` in place (``weight[~mask] = 0``), without recording autograd.

    Args:
        weight: the tensor or ``nn.Parameter`` to prune.
        mask: ``torch.bool`` tensor of the same shape (``True`` = keep), on any device.

    Returns:
        ``weight`` itself.

    >>> import torch
    >>> apply_mask_(torch.ones(3), torch.tensor([True, False, True]))
    tensor([1., 0., 1.])
    """
    weight = _check_tensor(weight, "weight")
    mask = _check_tensor(mask, "mask")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a torch.bool tensor (True = keep); got dtype {mask.dtype}.")
    if mask.shape != weight.shape:
        raise ValueError(
            f"mask has shape {tuple(mask.shape)} but weight has shape {tuple(weight.shape)}; a mask is built "
            "from the scores of this very weight (for Conv1D, in its (in, out) layout)."
        )
    with torch.no_grad():
        # masked_fill rather than multiplication: 0 * inf or 0 * NaN would not give 0.
        weight.masked_fill_(~mask.to(weight.device), 0)
    return weight


def mask_sparsity(mask: torch.Tensor | Mapping[str, torch.Tensor]) -> float:
    """Fraction of pruned (``False``) entries of a mask, or of all masks of a dict taken together.

    Args:
        mask: a ``torch.bool`` tensor, or ``{name: bool tensor}``.

    Returns:
        A float in ``[0, 1]`` (``0.0`` for an empty mask).

    >>> import torch
    >>> mask_sparsity(torch.tensor([True, False, False, True]))
    0.5
    """
    masks = list(mask.values()) if isinstance(mask, Mapping) else [mask]
    pruned = total = 0
    for item in masks:
        item = _check_tensor(item, "mask")
        if item.dtype != torch.bool:
            raise TypeError(f"mask must be a torch.bool tensor (True = keep); got dtype {item.dtype}.")
        pruned += int(item.numel() - item.sum())
        total += item.numel()
    return pruned / total if total else 0.0
