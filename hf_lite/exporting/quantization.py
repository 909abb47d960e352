"""bitsandbytes layers at export: restore the standard 4-bit layout, dequantize, drop the quantization config.

On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights for its CPU kernel at the first inference
forward, and any later ``state_dict()`` undoes that lossily or wrongly: :func:`unpack_bnb_cpu_weights_`
(from :mod:`hf_lite.quantization`, re-exported here) restores the standard layout exactly, and
:func:`bnb_layout_kept` undoes the repacking a forward does.
:func:`dequantize_bnb_` swaps every bnb layer for a float32 ``nn.Linear``, :func:`strip_quantization_`
makes the model save as a plain checkpoint. bitsandbytes is imported only when a model holds its layers.

>>> import torch
>>> model = torch.nn.Sequential(torch.nn.Linear(2, 2))
>>> unpack_bnb_cpu_weights_(model)
0
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch

from hf_lite._utils import has_bnb_layers
from hf_lite.quantization import unpack_bnb_cpu_weights_

__all__ = ["unpack_bnb_cpu_weights_", "dequantize_bnb_", "strip_quantization_", "bnb_layout_kept"]


def _dequantized_weight(module: Any) -> torch.Tensor:
    """float32 weight of a bnb Linear4bit/Linear8bitLt layer (standard layout restored first)."""
    import bitsandbytes as bnb

    weight = module.weight
    if isinstance(module, bnb.nn.Linear4bit):
        unpack_bnb_cpu_weights_(module)
        state = copy.copy(weight.quant_state)
        state.dtype = torch.float32  # dequantize straight to float32: no rounding through the compute dtype
        return bnb.functional.dequantize_4bit(weight.data, state).to(torch.float32)
    scb = getattr(weight, "SCB", None)
    if scb is None:
        scb = module.state.SCB  # after a forward, bitsandbytes keeps the row scales in module.state
    return (weight.data.to(torch.float32) * scb.to(torch.float32).view(-1, 1)) / 127.0


def dequantize_bnb_(model: Any) -> int:
    """Replace every bnb layer of ``model`` by a float32 ``nn.Linear`` holding its dequantized weight.

    Args:
        model: a module holding bitsandbytes ``Linear4bit`` / ``Linear8bitLt`` layers (needs bitsandbytes).

    Returns:
        The number of layers replaced.

    >>> import bitsandbytes as bnb
    >>> model = torch.nn.Sequential(bnb.nn.Linear4bit(64, 8)).to("cpu")  # quantized when moved to a device
    >>> dequantize_bnb_(model), type(model[0]).__name__, model[0].weight.dtype
    (1, 'Linear', torch.float32)
    """
    import bitsandbytes as bnb

    count = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)):
            continue
        weight = _dequantized_weight(module)
        linear = torch.nn.Linear(
            module.in_features, module.out_features, bias=module.bias is not None, device="meta"
        )
        linear.weight = torch.nn.Parameter(weight, requires_grad=False)
        if module.bias is not None:
            linear.bias = torch.nn.Parameter(
                module.bias.detach().to(torch.float32).clone(), requires_grad=False
            )
        model.set_submodule(name, linear)
        count += 1
    return count


def strip_quantization_(model: Any) -> None:
    """What transformers' ``remove_quantization_config`` does: the model saves as a plain checkpoint.

    >>> from types import SimpleNamespace
    >>> model = SimpleNamespace(config=SimpleNamespace(quantization_config={"load_in_4bit": True}))
    >>> strip_quantization_(model)
    >>> hasattr(model.config, "quantization_config"), model.is_loaded_in_4bit
    (False, False)
    """
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            delattr(model, attr)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    model.is_loaded_in_4bit = False
    model.is_loaded_in_8bit = False


@contextlib.contextmanager
def bnb_layout_kept(model: Any) -> Iterator[None]:
    """Undo, on exit, bitsandbytes' repacking of 4-bit weights for its CPU kernel during an inference forward.

    Exactly: the packed state is dropped, the original data and quantization state put back. A model
    without bnb layers is left alone.

    >>> import torch
    >>> with bnb_layout_kept(torch.nn.Linear(2, 2)):
    ...     pass
    """
    saved = []
    if has_bnb_layers(model):
        import bitsandbytes as bnb

        for module in model.modules():
            state = getattr(getattr(module, "weight", None), "quant_state", None)
            if isinstance(module, bnb.nn.Linear4bit) and state is not None:
                if not getattr(state, "packing_format_for_cpu", False):
                    # The repacking replaces weight.data (the old tensor is untouched) and edits the state in place.
                    saved.append((module, module.weight.data, copy.deepcopy(state)))
    try:
        yield
    finally:
        for module, data, state in saved:
            if getattr(module.weight.quant_state, "packing_format_for_cpu", False):
                module.weight.data = data
                module.weight.quant_state = state
                if getattr(module, "quant_state", None) is not None:
                    module.quant_state = state
