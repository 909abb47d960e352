"""Does a structural edit reload into the same model? Compare what the edited model would save with what stock
``from_pretrained`` builds from the edited config, before anything changes.

Stock ``from_pretrained`` builds the model class from ``config.json`` and then fills it from the saved tensors:
a saved tensor it has no place for is discarded ("unexpected key"), a place no tensor fills is newly
initialized ("missing key"), and either way the checkpoint reloads as a different model with only a log line
to say so. Some architectures build blocks differently by position (ModernBERT's block 0 has an ``Identity``
where every other block has a LayerNorm ``attn_norm``), so even a config that loads can describe another model.
:func:`reload_mismatches` predicts, from a :class:`~hf_lite.pruning.structural.plan.StructuralPlan`, the tensor
names and shapes the edited model would save (sliced shapes, dropped blocks removed, kept blocks renumbered,
LoRA and quantization bookkeeping left out), builds the stock class from the edited config on the meta device
(no memory, no weights), and lists every difference in tensor names, shapes, and module types of the blocks.

>>> from hf_lite.testing import build_tiny_model
>>> from hf_lite.pruning.structural import plan_layers
>>> from hf_lite.pruning.structural.plan import StructuralPlan
>>> model, _ = build_tiny_model("llama", num_hidden_layers=3)
>>> config = type(model.config).from_dict({**model.config.to_dict(), "num_hidden_layers": 2})
>>> careless = StructuralPlan(config={"num_hidden_layers": 2}, drop=[0])  # kept blocks' layer_idx not renumbered
>>> print(reload_mismatches(model, careless, config)[0])
model.layers.0.self_attn.layer_idx: block 1 (at position 0 after the edit) has 1, stock LlamaDecoderLayer at position 0 sets 0
>>> reload_mismatches(model, plan_layers(model, drop=[0]), config)
[]
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hf_lite._utils import unwrap_model
from hf_lite.pruning.sites import base_layer, find_layer_list
from hf_lite.pruning.structural.plan import StructuralPlan

if TYPE_CHECKING:
    from transformers import PretrainedConfig

__all__ = ["family_name", "reload_mismatches", "saved_shapes", "stock_model"]

logger = logging.getLogger(__name__)

# PEFT bookkeeping inside a wrapped model's names: the adapter's own tensors are not part of the base checkpoint
# (a merged or unloaded model has none of them); ``base_layer`` and ``modules_to_save.<adapter>`` are renamed away.
_ADAPTER_PARTS = {
    "lora_A",
    "lora_B",
    "lora_embedding_A",
    "lora_embedding_B",
    "lora_magnitude_vector",
    "original_module",
}


_PLAIN = (bool, int, float, str, type(None))
_RUNTIME_SETTINGS = {"training", "gradient_checkpointing"}


def family_name(config: PretrainedConfig) -> str:
    """The architecture family of ``config`` as users know it: ``"ModernBert"`` for ``ModernBertConfig``.

    >>> from transformers import BertConfig
    >>> family_name(BertConfig())
    'Bert'
    """
    return type(config).__name__.removesuffix("Config") or str(getattr(config, "model_type", "?"))


def _checkpoint_name(name: str) -> str | None:
    """The name a tensor of a (possibly PEFT-wrapped) base model has in a stock checkpoint, or ``None``."""
    parts = name.split(".")
    if any(p in _ADAPTER_PARTS for p in parts):
        return None
    out, skip = [], 0
    for i, part in enumerate(parts):
        if skip:
            skip -= 1
        elif part == "base_layer":
            continue
        elif part == "modules_to_save" and i + 1 < len(parts):
            skip = 1  # the adapter name after it
        else:
            out.append(part)
    return ".".join(out)


def _is_packed(module: nn.Module) -> bool:
    return type(module).__module__.startswith("bitsandbytes")  # packed weights: compare names, not shapes


def _layer_prefix(root: nn.Module, blocks: nn.ModuleList) -> str | None:
    for name, module in root.named_modules():
        if module is blocks:
            return _checkpoint_name(name)
    return None


def saved_shapes(model: nn.Module, plan: StructuralPlan | None = None) -> dict[str, tuple[int, ...] | None]:
    """``{checkpoint name: shape}`` of the tensors ``model`` would save once ``plan`` is applied (parameters and
    persistent buffers, tied ones under each name; ``None``: a packed quantized weight whose shape is not
    compared). A PEFT model is read as its base model (adapter tensors left out).

    >>> import torch
    >>> from hf_lite.pruning.structural.plan import output_slices
    >>> saved_shapes(torch.nn.Linear(4, 3), output_slices(torch.nn.Linear(4, 3), torch.tensor([0])))
    {'weight': (3, 4), 'bias': (3,)}
    """
    plan = plan if plan is not None else StructuralPlan()
    root = unwrap_model(model, peft_base=True)
    new_shapes = plan.new_shapes()
    renumber: dict[str, str | None] = {}
    if plan.drop:
        blocks = find_layer_list(model)
        prefix = _layer_prefix(root, blocks)
        kept = [i for i in range(len(blocks)) if i not in set(plan.drop)]
        renumber = {f"{prefix}.{i}.": None for i in plan.drop}
        renumber.update({f"{prefix}.{old}.": f"{prefix}.{new}." for new, old in enumerate(kept)})
    out: dict[str, tuple[int, ...] | None] = {}
    for module_name, module in root.named_modules(remove_duplicate=False):
        tensors = [(n, p) for n, p in module._parameters.items() if p is not None]
        tensors += [
            (n, b)
            for n, b in module._buffers.items()
            if b is not None and n not in module._non_persistent_buffers_set
        ]
        for attr, tensor in tensors:
            name = _checkpoint_name(f"{module_name}.{attr}" if module_name else attr)
            if name is None:
                continue
            head = next((p for p in renumber if name.startswith(p)), None)
            if head is not None:
                if renumber[head] is None:
                    continue  # a dropped block
                name = renumber[head] + name[len(head) :]
            shape = None if _is_packed(module) else new_shapes.get(id(tensor), tuple(tensor.shape))
            out[name] = shape
    return out


def stock_model(model: nn.Module, config: PretrainedConfig) -> nn.Module | None:
    """``model``'s class built from ``config`` on the meta device, as ``from_pretrained`` would build it before
    loading weights; ``None`` if that fails (an unknown constructor)."""
    cls = type(unwrap_model(model, peft_base=True))
    try:
        with torch.device("meta"):
            return cls(config)
    except Exception as err:  # noqa: BLE001 - the caller falls back to a per-block check and says so
        logger.debug("could not build %s from the edited config: %s", cls.__name__, err)
        return None


def _settings(module: nn.Module, edited: dict[tuple[int, str], Any]) -> dict[str, Any]:
    """The plain settings of ``module`` (numbers, strings, ``None``, tuples of them) that its constructor sets,
    with the plan's ``edited`` values; runtime switches (``training``, gradient checkpointing) left out."""
    out = {}
    for attr, value in vars(module).items():
        if attr.startswith("_") or attr in _RUNTIME_SETTINGS:
            continue
        value = edited.get((id(module), attr), value)
        if isinstance(value, _PLAIN) or (
            isinstance(value, tuple) and all(isinstance(v, _PLAIN) for v in value)
        ):
            out[attr] = value
    return out


def _describe(shape: tuple[int, ...] | None | str) -> str:
    return "absent" if shape == "absent" else str(shape)


def reload_mismatches(model: nn.Module, plan: StructuralPlan, config: PretrainedConfig) -> list[str] | None:
    """Every difference between ``model`` edited by ``plan`` and the stock model built from ``config`` (the
    edited config): tensor names and shapes, module types inside the blocks (a parameter-free module such as
    ``Identity`` where the edited block has a norm) and the blocks' plain module settings. ``[]``: it reloads into the same model; ``None``: the
    stock class could not be built from ``config`` (nothing compared).

    Args:
        model: the model before the edit (a PEFT model is read as its base model).
        plan: the edit; its slices' sizes, ``drop`` and ``attributes`` matter (indices may be placeholders).
        config: the edited config, as ``from_pretrained`` would load it.

    Returns:
        One readable line per difference: module types, then tensors in name order, then plain settings of
        the blocks' modules (``layer_idx``, ``sliding_window``, sizes...) after the plan's attribute edits.
    """
    stock = stock_model(model, config)
    if stock is None:
        return None
    expected = saved_shapes(model, plan)
    got = saved_shapes(stock)
    problems: list[str] = []
    blocks = find_layer_list(model)
    kept = [i for i in range(len(blocks)) if i not in set(plan.drop)]
    stock_blocks = find_layer_list(stock)
    prefix = _layer_prefix(unwrap_model(model, peft_base=True), blocks)
    moved: dict[str, int] = {}
    edited = {(id(owner), attr): value for owner, attr, value in plan.attributes}
    settings: list[str] = []  # reported last: a tensor difference usually explains them

    def where(old: int, new: int) -> str:
        return f"block {old}" + (f" (at position {new} after the edit)" if new != old else "")

    for new, old in enumerate(kept[: len(stock_blocks)]):
        if new != old:
            moved[f"{prefix}.{new}."] = old
        block = blocks[old]
        reported: list[str] = []
        for name, theirs in stock_blocks[new].named_modules():
            if any(name.startswith(f"{r}.") for r in reported):
                continue  # inside a module already reported: its children differ too
            try:
                module = base_layer(block.get_submodule(name)) if name else block
            except AttributeError:
                module = None
            if module is None or not isinstance(module, type(theirs)):
                reported.append(name)
                problems.append(
                    f"{prefix}.{new}.{name}: {where(old, new)} has "
                    f"{type(module).__name__ if module else 'no such module'}, stock "
                    f"{type(stock_blocks[new]).__name__} at position {new} builds {type(theirs).__name__}"
                )
                continue
            mine_attrs, their_attrs = _settings(module, edited), _settings(theirs, {})
            for attr in sorted(mine_attrs.keys() & their_attrs.keys()):
                if mine_attrs[attr] != their_attrs[attr]:
                    settings.append(
                        f"{prefix}.{new}.{name + '.' if name else ''}{attr}: {where(old, new)} has "
                        f"{mine_attrs[attr]!r}, stock {type(stock_blocks[new]).__name__} at position {new} sets "
                        f"{their_attrs[attr]!r}"
                    )
    for name in sorted({*expected, *got}):
        mine, theirs = expected.get(name, "absent"), got.get(name, "absent")
        if mine is None and theirs != "absent" or theirs is None and mine != "absent":
            continue  # a packed quantized weight: its name matches, its shape is not comparable
        if mine == theirs:
            continue
        origin = next((f" (block {old})" for head, old in moved.items() if name.startswith(head)), "")
        fate = (
            ", would be discarded on reload"
            if theirs == "absent"
            else ", would be newly initialized on reload"
            if mine == "absent"
            else ""
        )
        problems.append(f"{name}{origin}: pruned {_describe(mine)} vs config {_describe(theirs)}{fate}")
    return problems + settings
