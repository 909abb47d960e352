"""PEFT adapters at export: recognise a ``PeftModel`` and merge its adapters into plain weights.

:func:`merge_adapter_` merges with PEFT's own code; on a bitsandbytes 4/8-bit base it dequantizes every
quantized layer to float32 first and merges there (exact with respect to the dequantized weights), so that
the result is an ordinary checkpoint whatever the adapter type. peft is imported when a model is handled.

>>> import torch
>>> is_peft_model(torch.nn.Linear(2, 2))
False
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch

from hf_lite.exporting.quantization import dequantize_bnb_, strip_quantization_

__all__ = ["is_peft_model", "merge_adapter_", "dequantized_adapter_model", "set_adapter_base"]


def is_peft_model(model: Any) -> bool:
    """Whether ``model`` is a ``peft.PeftModel`` (``False`` when peft is not installed).

    >>> is_peft_model(object())
    False
    """
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def merge_adapter_(model: Any, *, dequantize: bool = False) -> Any:
    """Merge the active adapters of a ``PeftModel`` into its base weights and return the plain model.

    The PEFT wrapper is consumed (its base layers are edited in place): pass a copy to keep the original
    (:func:`~hf_lite.exporting.sparsity.deepcopy_model`).

    Args:
        model: a ``peft.PeftModel``.
        dequantize: the base holds bitsandbytes 4/8-bit layers. They are dequantized to float32 and the
            quantization config dropped (:func:`~hf_lite.exporting.quantization.dequantize_bnb_`), the whole
            base cast to float32, and the adapters merged there with PEFT's plain (non-bnb) code. Cast the
            result to the dtype you want to save.

    Returns:
        The base model with the adapters merged, no PEFT wrapper.

    Raises:
        TypeError: ``model`` is not a ``PeftModel``.

    >>> from peft import LoraConfig, get_peft_model
    >>> from hf_lite.testing import build_tiny_model
    >>> model, _ = build_tiny_model("llama")
    >>> peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    >>> type(merge_adapter_(peft_model)).__name__
    'LlamaForCausalLM'
    """
    if not is_peft_model(model):
        raise TypeError(
            f"model must be a peft.PeftModel (with an adapter to merge); got {type(model).__name__}."
        )
    if not dequantize:
        return model.merge_and_unload()
    return dequantized_adapter_model(model).merge_and_unload()


def dequantized_adapter_model(model: Any) -> Any:
    """The exact float32 reference of a ``PeftModel`` on a bitsandbytes base: the base dequantized, the adapters
    unmerged on top of it.

    The PEFT wrapper is consumed (its base layers are edited in place): pass a copy to keep the original. Every
    bnb layer is dequantized to float32 (:func:`~hf_lite.exporting.quantization.dequantize_bnb_`), the
    quantization config dropped, the whole base cast to float32, and the active adapters (configs and weights)
    put back on it as ordinary PEFT layers. Its outputs are what a merge in float32 reproduces up to rounding;
    ``merge_and_unload()`` on it gives the merged plain model (:func:`merge_adapter_` with ``dequantize=True``).

    Args:
        model: a ``peft.PeftModel`` whose base holds bitsandbytes 4/8-bit layers.

    Returns:
        A ``peft.PeftModel`` on a float32 base without bnb layers, with the same active adapters.

    Raises:
        TypeError: ``model`` is not a ``PeftModel``.

    >>> from peft import LoraConfig, get_peft_model
    >>> from hf_lite.testing import build_tiny_model
    >>> model, _ = build_tiny_model("llama")
    >>> ref = dequantized_adapter_model(get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])))
    >>> is_peft_model(ref), next(ref.parameters()).dtype
    (True, torch.float32)
    """
    if not is_peft_model(model):
        raise TypeError(
            f"model must be a peft.PeftModel (with an adapter to put back on the dequantized base); got "
            f"{type(model).__name__}."
        )
    from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict

    active = list(model.active_adapters)
    configs = {n: copy.deepcopy(model.peft_config[n]) for n in active}
    states = {n: get_peft_model_state_dict(model, adapter_name=n) for n in active}
    base = model.unload()  # the bnb base, adapter layers removed
    dequantize_bnb_(base)
    strip_quantization_(base)
    base.to(torch.float32)  # merge in float32 (exact up to fp32 rounding), cast afterwards
    # Wrapping the plain base again lets PEFT merge with its own (non-bnb) code, for any adapter type.
    wrapped = PeftModel(base, configs[active[0]], adapter_name=active[0])
    for n in active[1:]:
        wrapped.add_adapter(n, configs[n])
    for n in active:
        set_peft_model_state_dict(wrapped, states[n], adapter_name=n)
    if len(active) > 1:
        wrapped.base_model.set_adapter(active)
    return wrapped


def set_adapter_base(
    config_path: str | os.PathLike, base_model: str, *, dest: str | os.PathLike | None = None
) -> Path:
    """Point a saved adapter at its base model on the Hub: ``base_model_name_or_path`` in its config.

    So that ``AutoPeftModel*.from_pretrained(repo)`` finds the base (a local path there would not load
    anywhere else).

    Args:
        config_path: an ``adapter_config.json``.
        base_model: the base model's Hub id.
        dest: where to write the edited config; default: ``config_path`` itself.

    Returns:
        The path written.

    >>> import json, pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "adapter_config.json"
    >>> _ = path.write_text(json.dumps({"base_model_name_or_path": "/home/me/base", "r": 8}))
    >>> json.loads(set_adapter_base(path, "org/base").read_text())["base_model_name_or_path"]
    'org/base'
    """
    config = json.loads(Path(config_path).read_text())
    config["base_model_name_or_path"] = base_model
    path = Path(config_path if dest is None else dest)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path
