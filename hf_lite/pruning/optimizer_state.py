"""Optimizer state that follows pruned weights: find the torch optimizer under wrappers and its moments.

A pruning callback zeroes pruned weights after every optimizer step; their moments (Adam's
``exp_avg``/``exp_avg_sq``, SGD's ``momentum_buffer``) must be zeroed too, or the next step revives the
weights. These helpers find that state behind accelerate's ``AcceleratedOptimizer`` and similar wrappers.

>>> import torch
>>> weight = torch.nn.Parameter(torch.ones(2, 2))
>>> optimizer = torch.optim.Adam([weight])
>>> weight.grad = torch.ones(2, 2)
>>> optimizer.step()
>>> keep = torch.tensor([[True, False], [True, True]])
>>> mask_moments_(param_state(optimizer, weight), weight, keep)
2
>>> optimizer.state[weight]["exp_avg"][0, 1].item()
0.0
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["base_optimizer", "param_state", "moments_like", "mask_moments_"]

# Wrappers are peeled at most this many times (accelerate wraps once; a loop guards against cycles).
_MAX_WRAPPERS = 8


def base_optimizer(optimizer: Any) -> Any:
    """The torch optimizer under accelerate's ``AcceleratedOptimizer`` (and similar ``.optimizer``) wrappers.

    Args:
        optimizer: an optimizer, wrapped or not (or ``None``).

    Returns:
        The innermost object reached through ``.optimizer`` attributes (``optimizer`` itself if unwrapped).

    >>> import torch
    >>> inner = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)
    >>> class Wrapper:
    ...     optimizer = inner
    >>> base_optimizer(Wrapper()) is inner, base_optimizer(inner) is inner
    (True, True)
    """
    for _ in range(_MAX_WRAPPERS):
        inner = getattr(optimizer, "optimizer", None)
        if inner is None:
            break
        optimizer = inner
    return optimizer


def param_state(optimizer: Any, param: torch.Tensor) -> Mapping[str, Any] | None:
    """The optimizer state of ``param`` (``None`` without an optimizer or before its first step).

    >>> import torch
    >>> p = torch.nn.Parameter(torch.ones(1))
    >>> param_state(torch.optim.Adam([p]), p) is None, param_state(None, p) is None
    (True, True)
    """
    state = getattr(base_optimizer(optimizer), "state", None) or {}
    return state.get(param) or None


def moments_like(state: Mapping[str, Any] | None, weight: torch.Tensor) -> list[torch.Tensor]:
    """The floating-point tensors of one parameter's optimizer ``state`` shaped like ``weight``.

    These are the per-weight moments (Adam's ``exp_avg``/``exp_avg_sq``, SGD momentum); step counts and
    quantized 8-bit states (whose 0 in code space is not the value 0) are left out.

    >>> import torch
    >>> w = torch.zeros(2, 3)
    >>> [t.shape for t in moments_like({"step": torch.tensor(3.0), "exp_avg": torch.ones(2, 3)}, w)]
    [torch.Size([2, 3])]
    """
    if not state:
        return []
    return [
        value
        for value in state.values()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.shape == weight.shape
    ]


def mask_moments_(state: Mapping[str, Any] | None, weight: torch.Tensor, keep: torch.Tensor) -> int:
    """Multiply the moments of ``weight`` in ``state`` by ``keep`` in place, so pruned weights stay pruned.

    Optimizer state holds no autograd history, so no ``torch.no_grad`` is needed (this runs every step).

    Args:
        state: the optimizer state of ``weight`` (:func:`param_state`), or ``None``.
        weight: the pruned weight.
        keep: its mask, ``True``/``1`` = kept; a bool mask viewed as ``torch.uint8`` is the fast form on CPU.

    Returns:
        The number of state tensors masked.

    >>> import torch
    >>> exp_avg = torch.ones(3)
    >>> mask_moments_({"exp_avg": exp_avg}, torch.zeros(3), torch.tensor([1, 0, 1], dtype=torch.uint8))
    1
    >>> exp_avg
    tensor([1., 0., 1.])
    """
    moments = moments_like(state, weight)
    for moment in moments:
        moment.mul_(keep)
    return len(moments)
