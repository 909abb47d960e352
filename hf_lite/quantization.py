"""bitsandbytes 4/8-bit settings: what a ``quantization=`` value means, and checks on the quantized model.

>>> resolve_quantization(None) is None
True
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
from collections.abc import Mapping
from typing import Any

import torch
from accelerate import PartialState
from transformers import BitsAndBytesConfig

from hf_lite._utils import did_you_mean, has_bnb_layers

_QUANT_ALIASES = {
    "4bit": "nf4",
    "int4": "nf4",
    "nf4": "nf4",
    "fp4": "fp4",
    "8bit": "int8",
    "int8": "int8",
    "llm.int8": "int8",
}


BNB_INSTALL = "pip install 'bitsandbytes>=0.46'"


def resolve_quantization(
    quantization: str | Mapping[str, Any] | BitsAndBytesConfig | None,
    dtype: Any = None,
) -> BitsAndBytesConfig | None:
    """Turn ``quantization`` into a ``BitsAndBytesConfig`` (or ``None`` for full precision).

    ``"4bit"``/``"nf4"`` is QLoRA's recipe: NF4 with double quantization; ``"fp4"`` uses FP4 instead;
    ``"8bit"``/``"int8"`` is LLM.int8(). The 4-bit compute dtype is ``dtype`` when it names a float
    type, else bfloat16 on a GPU that supports it and float32 elsewhere (bf16 matmuls are slow on CPU).
    A dict is passed to ``BitsAndBytesConfig(**dict)``; a ``BitsAndBytesConfig`` is used as given.

    >>> resolve_quantization("8bit").load_in_8bit
    True
    """
    if quantization is None or quantization is False:
        return None

    require_bitsandbytes(quantization)
    if isinstance(quantization, BitsAndBytesConfig):
        return quantization
    if isinstance(quantization, Mapping):
        # BitsAndBytesConfig swallows unknown keyword arguments: refuse typos here instead.
        known = set(inspect.signature(BitsAndBytesConfig.__init__).parameters) - {"self", "kwargs"}
        unknown = sorted(set(quantization) - known)
        if unknown:
            raise ValueError(
                f"quantization={dict(quantization)!r} is not a valid BitsAndBytesConfig: unknown key(s) {unknown}"
                f"{did_you_mean(unknown[0], sorted(known))}. Use '4bit', '8bit' or the keyword arguments of "
                "transformers.BitsAndBytesConfig."
            )
        try:
            return BitsAndBytesConfig(**dict(quantization))
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"quantization={dict(quantization)!r} is not a valid BitsAndBytesConfig: {err}. "
                "Use '4bit', '8bit' or the keyword arguments of transformers.BitsAndBytesConfig."
            ) from err
    if not isinstance(quantization, str):
        raise TypeError(
            f"quantization must be None, '4bit', '8bit', 'nf4', 'fp4', a dict or a transformers.BitsAndBytesConfig; "
            f"got {type(quantization).__name__} {quantization!r}."
        )
    key = quantization.strip().lower().replace("-", "").replace("_", "")
    kind = _QUANT_ALIASES.get(key)
    if kind is None:
        raise ValueError(
            f"quantization={quantization!r} is not understood{did_you_mean(key, list(_QUANT_ALIASES))}. "
            "Use '4bit' (NF4, as in QLoRA), 'fp4', '8bit' (LLM.int8), None for full precision, "
            "or pass a transformers.BitsAndBytesConfig."
        )
    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=kind,
        bnb_4bit_use_double_quant=kind == "nf4",
        bnb_4bit_compute_dtype=compute_dtype(dtype),
    )


def require_bitsandbytes(quantization: Any) -> None:
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(
            f"quantization={quantization!r} needs bitsandbytes, which is not installed: {BNB_INSTALL}"
        )


def compute_dtype(dtype: Any) -> Any:

    if isinstance(dtype, torch.dtype):
        return dtype
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def default_quantized_device_map() -> Any:
    """bitsandbytes models cannot be moved after loading: put the whole model on this process's device."""

    if torch.cuda.is_available():
        return {"": PartialState().local_process_index}
    return None  # CPU: from_pretrained places everything on the CPU already


# Task heads that stay in full precision: PEFT trains them (modules_to_save), and an 8/4-bit head
# cannot take gradients. transformers' default skip list misses them (it strips ".weight" from the last
# parameter name, which is "classifier.bias" for BERT-style classifiers).
HEAD_MODULES = ["lm_head", "classifier", "score", "qa_outputs"]


def keep_heads_unquantized(bnb_config: Any, task: str) -> Any:
    if task not in ("sequence-classification", "token-classification") or bnb_config.llm_int8_skip_modules:
        return bnb_config
    bnb_config = copy.deepcopy(bnb_config)
    bnb_config.llm_int8_skip_modules = list(HEAD_MODULES)
    return bnb_config


def check_quantized(model: torch.nn.Module, bnb_config: Any) -> None:
    if not has_bnb_layers(model):
        bits = "4bit" if bnb_config.load_in_4bit else "8bit"
        raise ValueError(
            f"quantization={bits!r}: bitsandbytes quantized no layer of {type(model).__name__}. It only wraps "
            "torch.nn.Linear (and transformers Conv1D) layers, and this model has none outside the skipped "
            f"modules ({bnb_config.llm_int8_skip_modules or 'none given'}). Load it without quantization, "
            "or skip fewer modules."
        )
