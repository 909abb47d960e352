"""Merge a PEFT adapter into a sparse base model without losing the base's zeros (masked merge).

A LoRA update ``scale * B @ A`` is dense: merging it into a pruned weight (``merge_and_unload``) fills every
pruned position, so the checkpoint is no longer sparse. :func:`merge_adapter_keep_sparsity` merges, then
sets back to zero every position that was pruned before the merge::

    W_merged = (W + scale * B @ A) * mask          # mask: True where the base weight was kept

The result equals the adapter model with the adapter's contribution masked to the kept weights (the part of
``B @ A`` that falls on pruned positions is dropped), and has exactly the zeros of the base. The masks are
the base weights' own zeros, or those a pruning run recorded (``PruningCallback.masks``,
``magnitude_prune_``'s return value), named as in the base model with or without PEFT's ``.base_layer``.

>>> import torch
>>> from peft import LoraConfig, get_peft_model
>>> from hf_lite.pruning import magnitude_prune_
>>> from hf_lite.testing import build_tiny_model
>>> model, _ = build_tiny_model("llama")
>>> masks = magnitude_prune_(model, 0.5)
>>> peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "up_proj"]))
>>> for name, p in peft_model.named_parameters():
...     if "lora_B" in name:
...         _ = torch.nn.init.normal_(p)   # stands for a trained adapter (lora_B starts at zero)
>>> merged, report = merge_adapter_keep_sparsity(peft_model, return_report=True)
>>> weight = merged.model.layers[0].mlp.up_proj.weight
>>> bool(((weight == 0) == ~masks["model.layers.0.mlp.up_proj"]).all()), report.redensified
(True, 12288)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["SparseMergeReport", "merge_adapter_keep_sparsity"]

logger = logging.getLogger(__name__)

_PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class SparseMergeReport:
    """What a masked merge did.

    Args:
        redensified: weights at pruned positions that the plain merge made non-zero (set back to zero).
        kept_zeros: pruned positions, all zero after the masked merge.
        layers: ``{layer name: redensified weights}`` for every masked layer (names of the merged model).

    >>> SparseMergeReport(redensified=3, kept_zeros=8, layers={"fc": 3}).to_dict()["redensified"]
    3
    """

    redensified: int
    kept_zeros: int
    layers: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-serializable dict.

        >>> SparseMergeReport(0, 0).to_dict()
        {'redensified': 0, 'kept_zeros': 0, 'layers': {}}
        """
        return {"redensified": self.redensified, "kept_zeros": self.kept_zeros, "layers": dict(self.layers)}


def _normalize(name: str) -> str:
    """A layer name as in the merged model: PEFT's ``base_model.model.`` prefix, ``.base_layer`` and
    ``.weight`` suffixes removed."""
    if name.startswith(_PEFT_PREFIX):
        name = name[len(_PEFT_PREFIX) :]
    for suffix in (".weight", ".base_layer"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _is_tuner_layer(module: nn.Module) -> bool:
    get_base = getattr(module, "get_base_layer", None)
    return callable(get_base) and hasattr(module, "base_layer") and get_base() is not module


def _check_tuner_layer(name: str, module: nn.Module) -> None:
    base = module.get_base_layer()
    if type(base).__module__.startswith("bitsandbytes"):
        raise ValueError(
            f"layer {name!r} has a bitsandbytes-quantized base ({type(base).__name__}): merging requantizes the "
            "weights, whose zeros are not zeros of the quantized code. Dequantize first (hf_lite.exporting.writer with "
            "merge_adapter=True and a dtype), or merge into the full-precision sparse base."
        )
    if any(bool(v) for v in (getattr(module, "use_dora", None) or {}).values()):
        raise ValueError(
            f"layer {name!r} carries a DoRA adapter, whose merge rescales each column by the norm of the full "
            "merged weight, so masking afterwards does not give the adapter model with a masked update. "
            "Use a plain LoRA adapter (use_dora=False), or merge with merge_and_unload() and prune again."
        )
    if getattr(module, "merged", False):
        raise ValueError(
            f"layer {name!r} already has its adapter merged into the base weight, so the base's zeros are gone. "
            "Call peft_model.unmerge_adapter() first, then merge_adapter_keep_sparsity(peft_model)."
        )


def _check_masks(masks: object) -> dict[str, torch.Tensor]:
    if not isinstance(masks, Mapping):
        raise TypeError(
            f"masks must be a dict {{layer name: bool tensor}} (e.g. PruningCallback.masks) or None; got "
            f"{type(masks).__name__}."
        )
    out: dict[str, torch.Tensor] = {}
    for name, mask in masks.items():
        if not isinstance(name, str):
            raise TypeError(f"masks keys must be layer names (str); got {type(name).__name__} {name!r}.")
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            what = f"{mask.dtype} tensor" if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise TypeError(
                f"masks[{name!r}] is a {what}; a mask is a torch.bool tensor of the weight's shape (True = kept). "
                "Convert a 0/1 tensor with mask.bool()."
            )
        key = _normalize(name)
        if key in out:
            raise ValueError(
                f"masks has two entries for layer {key!r} (e.g. with and without '.base_layer'); give one."
            )
        out[key] = mask
    return out


def merge_adapter_keep_sparsity(
    peft_model: nn.Module,
    masks: Mapping[str, torch.Tensor] | None = None,
    *,
    return_report: bool = False,
) -> PreTrainedModel | tuple[PreTrainedModel, SparseMergeReport]:
    """Merge a PEFT adapter into its sparse base weights and keep the base's zeros.

    Runs ``peft_model.merge_and_unload()``, then zeroes, in every masked layer, the positions that were
    pruned before the merge: ``W_merged = (W + scale * B @ A) * mask``. The adapter's update is dropped
    exactly where the base weight was pruned, so the merged model has the base's sparsity and zeros, and
    equals the adapter model with the adapter's contribution masked. The merge happens in place: the
    ``peft_model`` is consumed, as with ``merge_and_unload``.

    Args:
        peft_model: a ``peft.PeftModel`` whose adapters are not merged yet (any adapter type whose merge is
            additive, such as LoRA, LoHa, LoKr, IA3; DoRA is refused).
        masks: ``{layer name: bool tensor}`` of each layer's weight shape (``True`` = kept), e.g.
            ``PruningCallback.masks`` or the dict ``magnitude_prune_`` returns. Names are those of the base
            model, with or without PEFT's ``.base_layer`` suffix (and ``base_model.model.`` prefix); layers
            without an adapter may be listed too (their zeros are kept anyway). ``None``: the zeros of the base
            weight of every layer an adapter wraps, taken before merging.
        return_report: also return a :class:`SparseMergeReport` (how many weights the plain merge would have
            made non-zero at pruned positions).

    Returns:
        The merged ``PreTrainedModel`` (no adapter layers left; ``save_pretrained`` writes an ordinary
        checkpoint), or ``(model, report)`` with ``return_report=True``.

    Raises:
        TypeError: ``peft_model`` is not a PEFT model, or ``masks`` is not a dict of bool tensors.
        ValueError: a mask names no layer of the model or has the wrong shape; an adapter is already merged;
            a DoRA adapter; a bitsandbytes-quantized base layer.

    >>> from peft import LoraConfig, get_peft_model
    >>> from hf_lite.testing import build_tiny_model
    >>> model, _ = build_tiny_model("gpt2")
    >>> layer = model.transformer.h[0].mlp.c_fc
    >>> with torch.no_grad():
    ...     layer.weight[:, :8] = 0.0               # 8 pruned output features of 128
    >>> peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["c_fc"], fan_in_fan_out=True))
    >>> _ = torch.nn.init.ones_(peft_model.base_model.model.transformer.h[0].mlp.c_fc.lora_B["default"].weight)
    >>> merged = merge_adapter_keep_sparsity(peft_model)
    >>> int((merged.transformer.h[0].mlp.c_fc.weight == 0).sum())   # 64 inputs x 8 outputs
    512
    """
    if not (callable(getattr(peft_model, "merge_and_unload", None)) and hasattr(peft_model, "peft_config")):
        raise TypeError(
            f"peft_model must be a peft.PeftModel (with an adapter to merge); got {type(peft_model).__name__}. "
            "A model without an adapter has nothing to merge: save it as it is."
        )
    root = (
        peft_model.get_base_model() if callable(getattr(peft_model, "get_base_model", None)) else peft_model
    )
    tuner_layers = {name: m for name, m in root.named_modules() if _is_tuner_layer(m)}
    for name, module in tuner_layers.items():
        _check_tuner_layer(name, module)

    if masks is None:
        # The zeros of every adapter-wrapped base weight, taken before the merge fills them.
        keep = {}
        for name, module in tuner_layers.items():
            weight = getattr(module.get_base_layer(), "weight", None)
            if isinstance(weight, torch.Tensor):
                mask = weight.detach() != 0  # (weight shape)
                if not bool(mask.all()):
                    keep[name] = mask
    else:
        keep = _check_masks(masks)
        unknown, wrong = [], []
        for name, mask in keep.items():
            try:
                module = root.get_submodule(name)
            except AttributeError:
                unknown.append(name)
                continue
            target = module.get_base_layer() if _is_tuner_layer(module) else module
            weight = getattr(target, "weight", None)
            if not isinstance(weight, torch.Tensor):
                unknown.append(name)
            elif tuple(weight.shape) != tuple(mask.shape):
                wrong.append(f"{name}: mask {tuple(mask.shape)}, weight {tuple(weight.shape)}")
        if unknown:
            raise ValueError(
                f"masks name layers the model does not have (or that hold no weight): {unknown[:5]}. Use the "
                f"layer names of the base model, e.g. {list(tuner_layers)[:2]} (a '.base_layer' suffix is "
                "accepted), as PruningCallback.masks and magnitude_prune_ return them."
            )
        if wrong:
            raise ValueError(
                f"masks do not match the weights' shapes ({'; '.join(wrong[:3])}); they come from another "
                "model, or the model was structurally pruned after they were recorded."
            )

    merged = peft_model.merge_and_unload()
    layers: dict[str, int] = {}
    kept_zeros = 0
    with torch.no_grad():
        for name, mask in keep.items():
            weight = merged.get_submodule(name).weight  # (weight shape)
            pruned = ~mask.to(weight.device)
            layers[name] = int((weight[pruned] != 0).sum())
            weight.masked_fill_(pruned, 0.0)
            kept_zeros += int(pruned.sum())
    report = SparseMergeReport(redensified=sum(layers.values()), kept_zeros=kept_zeros, layers=layers)
    logger.info(
        "masked merge: %d weights at pruned positions of %d layers would have become non-zero; kept %d zeros",
        report.redensified,
        len(layers),
        kept_zeros,
    )
    return (merged, report) if return_report else merged
