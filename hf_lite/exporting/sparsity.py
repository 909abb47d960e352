"""Sparsity at export: make pruning re-parametrizations permanent and count the zeros that were saved.

``torch.nn.utils.prune`` (``weight_orig`` + ``weight_mask``) and parametrizations are not part of a stock
checkpoint: :func:`make_pruning_permanent_` replaces them by plain weights (torch's own ``weight_norm`` /
``spectral_norm`` / ``orthogonal``, which stock models register themselves, are kept).
:func:`deepcopy_model` copies a model that carries pruning hooks, :func:`counted_sparsity` counts the zeros
(invariant 5: sparsity is counted, never claimed).

>>> import torch
>>> from torch.nn.utils import prune
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 4))
>>> _ = prune.l1_unstructured(model[0], "weight", amount=0.5)
>>> has_reparametrization(model)
True
>>> make_pruning_permanent_(deepcopy_model(model))
['0.weight']
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch.nn.utils import parametrize, prune

from hf_lite.exporting.adapters import is_peft_model

__all__ = ["has_reparametrization", "deepcopy_model", "make_pruning_permanent_", "counted_sparsity"]


def has_reparametrization(model: Any) -> bool:
    """Whether ``model`` holds pruning hooks or parametrizations other than torch's built-in ones.

    >>> import torch
    >>> has_reparametrization(torch.nn.Linear(2, 2))
    False
    """
    for module in model.modules():
        if any(isinstance(h, prune.BasePruningMethod) for h in module._forward_pre_hooks.values()):
            return True
        if parametrize.is_parametrized(module) and _removable_parametrizations(module):
            return True
    return False


def _removable_parametrizations(module: Any) -> list[str]:
    """Parametrized tensor names whose parametrizations are not torch's built-in ones (weight_norm...)."""
    names = []
    for name, plist in module.parametrizations.items():
        if not all(type(p).__module__.startswith("torch.nn.utils.parametrizations") for p in plist):
            names.append(name)
    return names


def deepcopy_model(model: Any) -> Any:
    """``copy.deepcopy`` that also copes with ``torch.nn.utils.prune``.

    Pruning keeps the masked weight as a plain (non-leaf) tensor attribute, which deepcopy refuses. The hook
    recomputes it, so a detached alias will do.

    >>> import torch
    >>> deepcopy_model(torch.nn.Linear(2, 2)).weight.shape
    torch.Size([2, 2])
    """
    memo: dict[int, Any] = {}
    for module in model.modules():
        for value in vars(module).values():
            if (
                isinstance(value, torch.Tensor)
                and not isinstance(value, torch.nn.Parameter)
                and not value.is_leaf
            ):
                memo[id(value)] = value.detach()
    return copy.deepcopy(model, memo)


def make_pruning_permanent_(model: Any) -> list[str]:
    """Replace pruning re-parametrizations by plain weights in ``model``, in place.

    Call it on a copy (:func:`deepcopy_model`): the parametrized modules of a deepcopy share their class with
    the original's, so parametrizations are evaluated and detached by hand rather than through
    ``torch.nn.utils.parametrize.remove_parametrizations``.

    Returns:
        The ``"module.tensor"`` names whose re-parametrization was removed.

    >>> from torch.nn.utils import prune
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    >>> _ = prune.random_unstructured(model[0], "weight", amount=0.5)
    >>> copy = deepcopy_model(model)
    >>> make_pruning_permanent_(copy), has_reparametrization(copy), int((copy[0].weight == 0).sum())
    (['0.weight'], False, 8)
    """
    done = []
    for name, module in list(model.named_modules()):
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                tensor_name = hook._tensor_name
                prune.remove(module, tensor_name)
                done.append(f"{name}.{tensor_name}" if name else tensor_name)
        if parametrize.is_parametrized(module):
            removable = _removable_parametrizations(module)
            if not removable:
                continue
            # torch.nn.utils.parametrize.remove_parametrizations deletes the property from the module's class,
            # and a deepcopy shares that class with the original: evaluate and detach by hand instead.
            values = {t: getattr(module, t).detach().clone() for t in removable}
            keep = {t: plist for t, plist in module.parametrizations.items() if t not in removable}
            if keep:
                raise NotImplementedError(
                    f"{name} mixes pruning parametrizations with torch's built-in ones; remove the pruning "
                    "parametrizations (torch.nn.utils.parametrize.remove_parametrizations) before exporting."
                )
            del module._modules["parametrizations"]
            module.__class__ = type(module).__bases__[0]
            for t, value in values.items():
                setattr(module, t, torch.nn.Parameter(value, requires_grad=False))
                done.append(f"{name}.{t}" if name else t)
    return done


def counted_sparsity(model: Any) -> float | None:
    """Zeros in the prunable linear layers' weights, when at least 1% (a dense model reports None).

    >>> import torch
    >>> counted_sparsity(torch.nn.Sequential(torch.nn.Linear(4, 4))) is None
    True
    """
    try:
        # imported here, inside the try: the count is a nicety that must never fail (or slow down) an export
        from hf_lite.pruning.report import sparsity_report

        report = sparsity_report(model.get_base_model() if is_peft_model(model) else model)
    except Exception:  # a count is a nicety: never fail an export over it
        return None
    value = report.targeted_sparsity
    return round(value, 4) if value >= 0.01 else None
