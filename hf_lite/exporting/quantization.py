"""bitsandbytes layers at export: restore the standard 4-bit layout, dequantize, drop the quantization config.

On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights for its CPU kernel at the first inference
forward, and any later ``state_dict()`` undoes that lossily or wrongly: :func:`unpack_bnb_cpu_weights_`
restores the standard layout exactly, and :func:`bnb_layout_kept` undoes the repacking a forward does.
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
import importlib.util
from collections.abc import Iterator
from typing import Any

import torch

from hf_lite._utils import has_bnb_layers

__all__ = ["unpack_bnb_cpu_weights_", "dequantize_bnb_", "strip_quantization_", "bnb_layout_kept"]


def unpack_bnb_cpu_weights_(model: torch.nn.Module) -> int:
    """Put bitsandbytes 4-bit weights repacked for the CPU kernel back into the standard layout, exactly.

    On CPUs with AVX512-BF16, bitsandbytes (0.49+) repacks a ``Linear4bit`` weight at its first inference
    forward (eval mode, no grad): the 4-bit codes are re-ordered and the absmax scales become bfloat16
    (double quantization is undone). Its ``state_dict`` hook reverses that lossily (the bf16 absmax is
    quantized again) and, without double quantization, wrongly (the absmax is saved transposed, which
    scrambles every layer whose input is wider than one block). ``dequantize_4bit`` and transformers'
    ``model.dequantize()`` read the packed layout as if it were the standard one.

    This function restores the standard layout with the absmax kept exactly as the kernel uses it (the
    bf16 values, stored in float32, without double quantization), so saving, reloading and dequantizing
    all give the model's current outputs. Layers never repacked are left alone. Safe to call on any model.

    Args:
        model: any module; only ``bitsandbytes.nn.Linear4bit`` layers in the packed CPU layout change.

    Returns:
        The number of layers restored.

    >>> import torch
    >>> unpack_bnb_cpu_weights_(torch.nn.Linear(2, 2))
    0
    """
    if importlib.util.find_spec("bitsandbytes") is None:
        return 0
    import bitsandbytes as bnb

    restored = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        weight = module.weight
        state = getattr(weight, "quant_state", None)
        if state is None or not getattr(state, "packing_format_for_cpu", False):
            continue
        inverse = getattr(bnb.functional, "_convert_weight_packed_for_cpu_inverse", None)
        if inverse is None:  # pragma: no cover - a bitsandbytes with the flag but without its inverse
            raise RuntimeError(
                f"bitsandbytes {bnb.__version__} packed a 4-bit layer for the CPU kernel but has no inverse "
                "conversion; save the model before running it in eval mode, or use bitsandbytes 0.49-0.50."
            )
        # Keep the dequantized bf16 absmax as is: bitsandbytes would re-quantize it (double quantization).
        state.original_nested = False
        data, state = inverse(weight.data, state)
        # The packed absmax is (in_features / blocksize, out_features), transposed; back to row-major blocks.
        state.absmax = state.absmax.T.reshape(-1).to(torch.float32).contiguous()
        state.nested = False
        state.offset = None
        state.state2 = None
        weight.data = data
        weight.quant_state = state
        if getattr(module, "quant_state", None) is not None:
            module.quant_state = state
        restored += 1
    return restored


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
