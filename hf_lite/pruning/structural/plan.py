"""The slicing plan of a structural pruning: computed once, applied to the weights and to the optimizer state.

A :class:`StructuralPlan` lists what one pruning does: for each parameter the dimension and the kept indices
(:class:`ParamSlice`), the module attributes and config entries to set, and the blocks to drop. The rule of
which parameter loses which dimension lives in :func:`output_slices` and :func:`input_slices` only (an
``nn.Linear`` weight is ``(out, in)``, a ``Conv1D`` weight ``(in, out)``; a LoRA ``lora_B`` follows its base's
outputs, ``lora_A`` its inputs). :func:`apply_plan_` edits the model with it and :func:`slice_optimizer_state_`
edits an optimizer with the same plan, so the two never disagree.

>>> import torch
>>> layer = torch.nn.Linear(4, 3)
>>> apply_plan_(torch.nn.Sequential(layer), output_slices(layer, torch.tensor([0, 2])))
>>> tuple(layer.weight.shape), tuple(layer.bias.shape), layer.out_features
((2, 4), (2,), 2)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from hf_lite.pruning.sites import base_layer, find_layer_list, model_config

if TYPE_CHECKING:
    from torch.optim import Optimizer

__all__ = [
    "ParamSlice",
    "StructuralPlan",
    "apply_plan_",
    "input_slices",
    "output_slices",
    "parameters_by_id",
    "slice_optimizer_state_",
    "take",
]

logger = logging.getLogger(__name__)


class ParamSlice(NamedTuple):
    """Keep ``index`` along ``dim`` of the parameter ``owner.<attr>``.

    ``index`` is ``(kept,)``: the same indices for the whole tensor; or ``(n, kept)`` with ``dim >= 1``: row
    ``i`` of ``index`` for entry ``i`` of dimension 0 (each expert of a 3-D experts tensor keeps its own FFN
    neurons, the same number in every expert); see :func:`take`.

    >>> import torch
    >>> ParamSlice(torch.nn.Linear(2, 3), "weight", 0, torch.tensor([1])).dim
    0
    """

    owner: nn.Module
    attr: str
    dim: int
    index: torch.Tensor

    def shape(self, old: torch.Size | tuple[int, ...]) -> tuple[int, ...]:
        """The shape of a tensor of shape ``old`` after this slice."""
        new = list(old)
        new[self.dim] = self.index.shape[-1]
        return tuple(new)


@dataclass
class StructuralPlan:
    """What one structural pruning does, computed before anything changes.

    Args:
        slices: ``{id(parameter): (parameter, ParamSlice)}``, the parameters to slice (taken before slicing).
        attributes: ``(module, attribute, value)`` to set (``out_features``, ``nf``, ``num_heads``, ``layer_idx``...).
        config: config entries to set (``intermediate_size``, ``num_attention_heads``, ``num_hidden_layers``...).
        drop: indices of the transformer blocks to remove.
        dropped: ``{id(parameter): parameter}`` of the parameters of those blocks.
        params: ``{id(parameter): parameter}`` of every parameter of the model when the plan was made.
        kept: what the pruning function returns (kept indices), in the original numbering.
        message: logged when the plan is applied.

    >>> import torch
    >>> plan = input_slices(torch.nn.Linear(4, 3), torch.tensor([1]))
    >>> [tuple(shape) for shape in plan.new_shapes().values()]
    [(3, 1)]
    """

    slices: dict[int, tuple[nn.Parameter, ParamSlice]] = field(default_factory=dict)
    attributes: list[tuple[nn.Module, str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    drop: list[int] = field(default_factory=list)
    dropped: dict[int, nn.Parameter] = field(default_factory=dict)
    params: dict[int, nn.Parameter] = field(default_factory=dict)
    kept: Any = None
    message: str = ""

    def extend(self, other: StructuralPlan) -> StructuralPlan:
        """Add ``other``'s slices, attributes and config entries to this plan; returns this plan."""
        self.slices.update(other.slices)
        self.attributes.extend(other.attributes)
        self.config.update(other.config)
        return self

    def new_shapes(self) -> dict[int, tuple[int, ...]]:
        """``{id(parameter): shape after slicing}`` of the sliced parameters."""
        return {key: edit.shape(param.shape) for key, (param, edit) in self.slices.items()}


def parameters_by_id(model: nn.Module) -> dict[int, nn.Parameter]:
    """``{id(parameter): parameter}`` of every parameter of ``model`` (a plan's ``params``).

    >>> import torch
    >>> len(parameters_by_id(torch.nn.Linear(2, 2)))
    2
    """
    return {id(p): p for p in model.parameters()}


def take(tensor: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """``tensor`` keeping ``index`` along ``dim``: ``index_select`` for a ``(kept,)`` index; for an ``(n, kept)``
    index (``n = tensor.shape[0]``, ``dim >= 1``) entry ``i`` of dimension 0 keeps ``index[i]``.

    >>> import torch
    >>> x = torch.arange(12).reshape(2, 3, 2)   # (experts, neurons, hidden)
    >>> take(x, 1, torch.tensor([[0, 2], [1, 2]])).tolist()
    [[[0, 1], [4, 5]], [[8, 9], [10, 11]]]
    """
    index = index.to(tensor.device)
    if index.dim() == 1:
        return tensor.index_select(dim, index)
    view = [1] * tensor.dim()
    view[0], view[dim] = index.shape
    shape = list(tensor.shape)
    shape[dim] = index.shape[1]
    return tensor.gather(dim, index.reshape(view).expand(shape))


def _slice(param: nn.Parameter, owner: nn.Module, attr: str, dim: int, index: torch.Tensor):
    return id(param), (param, ParamSlice(owner, attr, dim, index))


def output_slices(module: nn.Module, index: torch.Tensor) -> StructuralPlan:
    """Keep the output features ``index`` of a Linear/Conv1D layer: its weight, bias and LoRA ``lora_B``.

    Args:
        module: an ``nn.Linear``/``Conv1D``, or a PEFT LoRA layer around one.
        index: ``(kept,)`` int64 output features to keep.

    Returns:
        A :class:`StructuralPlan` of these slices and of the layers' size attributes.

    >>> import torch
    >>> [(e.attr, e.dim) for _, e in output_slices(torch.nn.Linear(4, 3), torch.tensor([0])).slices.values()]
    [('weight', 0), ('bias', 0)]
    """
    base = base_layer(module)
    size = len(index)
    plan = StructuralPlan()
    if isinstance(base, Conv1D):
        plan.slices.update([_slice(base.weight, base, "weight", 1, index)])  # (in, out)
        plan.attributes.append((base, "nf", size))
    else:
        plan.slices.update([_slice(base.weight, base, "weight", 0, index)])  # (out, in)
        plan.attributes.append((base, "out_features", size))
    if base.bias is not None:
        plan.slices.update([_slice(base.bias, base, "bias", 0, index)])
    if base is not module:
        for lora_b in module.lora_B.values():  # (out, r)
            plan.slices.update([_slice(lora_b.weight, lora_b, "weight", 0, index)])
            if lora_b.bias is not None:
                plan.slices.update([_slice(lora_b.bias, lora_b, "bias", 0, index)])
            plan.attributes.append((lora_b, "out_features", size))
        plan.attributes.append((module, "out_features", size))
    return plan


def input_slices(module: nn.Module, index: torch.Tensor) -> StructuralPlan:
    """Keep the input features ``index`` of a Linear/Conv1D layer: its weight and LoRA ``lora_A`` (not its bias).

    Args:
        module: an ``nn.Linear``/``Conv1D``, or a PEFT LoRA layer around one.
        index: ``(kept,)`` int64 input features to keep.

    Returns:
        A :class:`StructuralPlan` of these slices and of the layers' size attributes.

    >>> import torch
    >>> [(e.attr, e.dim) for _, e in input_slices(torch.nn.Linear(4, 3), torch.tensor([0])).slices.values()]
    [('weight', 1)]
    """
    base = base_layer(module)
    size = len(index)
    plan = StructuralPlan()
    if isinstance(base, Conv1D):
        plan.slices.update([_slice(base.weight, base, "weight", 0, index)])  # (in, out)
        plan.attributes.append((base, "nx", size))
    else:
        plan.slices.update([_slice(base.weight, base, "weight", 1, index)])  # (out, in)
        plan.attributes.append((base, "in_features", size))
    if base is not module:
        for lora_a in module.lora_A.values():  # (r, in)
            plan.slices.update([_slice(lora_a.weight, lora_a, "weight", 1, index)])
            plan.attributes.append((lora_a, "in_features", size))
        plan.attributes.append((module, "in_features", size))
    return plan


@torch.no_grad()
def apply_plan_(model: nn.Module, plan: StructuralPlan) -> None:
    """Edit ``model`` in place as ``plan`` says: slice the parameters, drop the blocks, set the module
    attributes and the config entries. Each sliced parameter is replaced by a new ``nn.Parameter``
    (same ``requires_grad``); :func:`slice_optimizer_state_` then points an optimizer at the new ones.

    Args:
        model: the model the plan was made for (or a PEFT model around it).
        plan: a :class:`StructuralPlan` of this model.

    >>> import torch
    >>> layer = torch.nn.Linear(4, 3, bias=False)
    >>> apply_plan_(torch.nn.Sequential(layer), input_slices(layer, torch.tensor([3])))
    >>> tuple(layer.weight.shape), layer.in_features
    ((3, 1), 1)
    """
    for param, edit in plan.slices.values():
        value = take(param, edit.dim, edit.index)
        setattr(edit.owner, edit.attr, nn.Parameter(value.contiguous(), requires_grad=param.requires_grad))
    if plan.drop:
        blocks = find_layer_list(model)
        for i in sorted(plan.drop, reverse=True):
            del blocks[i]
    for owner, name, value in plan.attributes:
        setattr(owner, name, value)
    if plan.config:
        config = model_config(model)
        for key, value in plan.config.items():
            setattr(config, key, value)
    if plan.message:
        logger.info("%s", plan.message)


def _slice_state(key: str, value: Any, old: torch.Tensor, edit: ParamSlice) -> Any:
    if not isinstance(value, torch.Tensor) or value.dim() == 0 or (value.numel() == 1 and old.numel() > 1):
        return value  # a step count, a scalar
    if value.shape != old.shape:
        raise ValueError(
            f"optimizer state {key!r} has shape {tuple(value.shape)} for a parameter of shape {tuple(old.shape)}; "
            "it cannot be sliced with the parameter (quantized 8-bit or factored optimizer states). Use a torch "
            "optimizer such as optim='adamw_torch' with StructuralPruningCallback."
        )
    return take(value, edit.dim, edit.index).contiguous()


@torch.no_grad()
def slice_optimizer_state_(optimizer: Optimizer | None, model: nn.Module, plan: StructuralPlan) -> int:
    """Point a torch optimizer at the parameters :func:`apply_plan_` made, in place, with the same plan.

    The same param groups are kept (so an LR scheduler, an accelerate wrapper and per-group settings stay
    valid); each sliced parameter is replaced by its successor at the same position, its state (Adam's
    ``exp_avg``/``exp_avg_sq``, momentum) sliced along the same dimension with the same indices and its step
    count kept; parameters of dropped blocks leave with their state.

    Args:
        optimizer: a torch optimizer (unwrap accelerate's ``AcceleratedOptimizer`` first), or ``None``.
        model: the model, after :func:`apply_plan_`.
        plan: the plan that was applied (its ``slices``, ``dropped`` and ``params``).

    Returns:
        The number of parameters replaced in the optimizer.

    Raises:
        ValueError: a state tensor has another shape than its parameter (8-bit or factored states).
        RuntimeError: the model does not hold what the plan says (an internal error).

    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> plan = input_slices(model[0], torch.tensor([0, 1]))
    >>> plan.params = {id(p): p for p in model.parameters()}
    >>> apply_plan_(model, plan)
    >>> slice_optimizer_state_(optimizer, model, plan)
    1
    >>> optimizer.param_groups[0]["params"][0] is model[0].weight
    True
    """
    if optimizer is None:
        return 0
    slices, dropped, before = plan.slices, plan.dropped, plan.params
    state = optimizer.state
    alive = {id(p) for p in model.parameters()}
    names = {id(p): n for n, p in model.named_parameters()}
    count = 0
    for group in optimizer.param_groups:
        params, group_names = [], []
        old_names = group.get("param_names")
        for i, param in enumerate(group["params"]):
            key = id(param)
            if key in slices:
                old, edit = slices[key]
                new = getattr(edit.owner, edit.attr)
                expected = edit.shape(old.shape)
                if new is old or tuple(new.shape) != expected or id(new) not in alive:
                    raise RuntimeError(
                        f"structural pruning left parameter {names.get(id(new), '?')} with shape "
                        f"{tuple(new.shape)}, expected {expected}: the slicing plan applied to the model and "
                        "the one applied to the optimizer disagree (please report this)."
                    )
                old_state = state.pop(old, None)
                if old_state:
                    state[new] = {k: _slice_state(k, v, old, edit) for k, v in old_state.items()}
                params.append(new)
                count += 1
            elif key in dropped:
                state.pop(param, None)
                continue
            else:
                if key in before and key not in alive:
                    raise RuntimeError(
                        "structural pruning removed a parameter that was neither sliced nor in a dropped block "
                        "(please report this)."
                    )
                params.append(param)
            if old_names is not None:
                group_names.append(names.get(id(params[-1]), old_names[i]))
        group["params"] = params
        if old_names is not None:
            group["param_names"] = group_names
    return count
