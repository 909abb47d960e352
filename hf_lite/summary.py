"""What a loaded model is made of: parameters (total, trainable), bytes in memory, quantization, adapter.

>>> import torch
>>> s = model_summary(torch.nn.Linear(4, 2))
>>> s.total_params, s.trainable_params, s.bytes_in_memory
(10, 10, 40)
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from hf_lite.heads import is_head

if TYPE_CHECKING:
    import torch

#: Attribute a loader sets on a model whose weights came from elsewhere than its own checkpoint format, read by
#: :func:`model_summary`: :func:`hf_lite.load_model` writes e.g. ``"weights from a GGUF Q4_1 quantization (llama),
#: dequantized to float32"`` there. An attribute of the object only: never saved with the model.
SOURCE_ATTRIBUTE = "hf_lite_source"


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    """Counts for one model. ``total_params`` counts logical weights (a 4-bit matrix of 64×64 counts
    4096, although it is stored in 2048 bytes); ``bytes_in_memory`` counts what the tensors occupy,
    quantization constants included.

    >>> print(ModelSummary("Linear", 10, 10, 40, "float32", None, None))
    Linear: 10 parameters (10 trainable, 100.00%), 40 B in memory, float32, full precision, no adapter
    """

    model_class: str
    total_params: int
    trainable_params: int
    bytes_in_memory: int
    dtype: str
    quantization: str | None
    adapter: str | None
    #: Body layers a quantized model keeps in full precision (heads and output embeddings aside), with layer
    #: indices folded to ``*``: layers bitsandbytes could not pack here, or that the skip list named.
    unquantized: tuple[str, ...] = ()
    #: Where the weights came from, when a loader said (:data:`SOURCE_ATTRIBUTE`), e.g. a dequantized GGUF file.
    source: str | None = None

    @property
    def trainable_fraction(self) -> float:
        return self.trainable_params / self.total_params if self.total_params else 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return (
            f"{self.model_class}: {self.total_params:,} parameters ({self.trainable_params:,} trainable, "
            f"{100 * self.trainable_fraction:.2f}%), {format_bytes(self.bytes_in_memory)} in memory, "
            f"{self.dtype}, {self.quantization or 'full precision'}, {self.adapter or 'no adapter'}"
            + (f", kept in full precision: {', '.join(self.unquantized)}" if self.unquantized else "")
            + (f", {self.source}" if self.source else "")
        )


def format_bytes(n: int) -> str:
    """Human-readable byte count with binary prefixes.

    >>> format_bytes(512), format_bytes(3 * 1024**2)
    ('512 B', '3.00 MiB')
    """
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def logical_numel(param: torch.Tensor) -> int:
    """Number of weights ``param`` stands for: a bitsandbytes 4-bit weight counts its unpacked shape.

    >>> import torch
    >>> logical_numel(torch.nn.Parameter(torch.zeros(4, 3)))
    12
    """
    quant_state = getattr(param, "quant_state", None)  # bnb Params4bit pack two weights per byte
    if quant_state is not None and getattr(quant_state, "shape", None) is not None:
        return math.prod(quant_state.shape)
    return param.numel()


def _quant_state_tensors(param: torch.Tensor) -> list[torch.Tensor]:
    """Tensors that bitsandbytes keeps beside a quantized weight (absmax scales, code book, SCB)."""
    out = []
    state = getattr(param, "quant_state", None)
    while state is not None:
        for attr in ("absmax", "code", "offset"):
            t = getattr(state, attr, None)
            if t is not None and hasattr(t, "untyped_storage"):
                out.append(t)
        state = getattr(state, "state2", None)  # double quantization nests a second state
    scb = getattr(param, "SCB", None)  # LLM.int8 row scales
    if scb is not None:
        out.append(scb)
    return out


def describe_quantization(model: torch.nn.Module) -> str | None:
    """``'bnb-4bit (nf4, double quant)'``, ``'bnb-8bit (LLM.int8)'`` or ``None`` for a full-precision model."""
    config = getattr(model, "config", None)
    qc = getattr(config, "quantization_config", None)
    if qc is None:
        return None
    if not isinstance(qc, dict):
        qc = qc.to_dict()
    if qc.get("load_in_4bit"):
        kind = qc.get("bnb_4bit_quant_type", "fp4")
        return f"bnb-4bit ({kind}{', double quant' if qc.get('bnb_4bit_use_double_quant') else ''})"
    if qc.get("load_in_8bit"):
        return "bnb-8bit (LLM.int8)"
    return str(qc.get("quant_method", "quantized"))


def fold_layer_names(names: Iterable[str]) -> list[str]:
    """Module names with layer indices folded to ``*``, deduplicated, in first-seen order.

    >>> fold_layer_names(["model.layers.0.mlp.gate", "model.layers.1.mlp.gate", "lm_head"])
    ['model.layers.*.mlp.gate', 'lm_head']
    """
    return list(dict.fromkeys(re.sub(r"\.\d+(?=\.|$)", ".*", n) for n in names))


def unquantized_layers(model: torch.nn.Module) -> tuple[str, ...]:
    """Body layers that a bitsandbytes-quantized ``model`` keeps as plain ``nn.Linear``/``Conv1D`` (folded names).

    Heads (:mod:`hf_lite.heads`), the output embeddings and PEFT's own layers (LoRA matrices, fully trained
    copies) are left out; ``()`` for a model without bitsandbytes layers.

    >>> import torch
    >>> unquantized_layers(torch.nn.Linear(2, 2))
    ()
    """
    from hf_lite._utils import has_bnb_layers  # imports bitsandbytes (and torch) only when installed

    if not has_bnb_layers(model):
        return ()
    import torch
    from transformers.pytorch_utils import Conv1D

    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    getter = getattr(base, "get_output_embeddings", None)
    output = getter() if callable(getter) else None
    names = []
    for name, module in base.named_modules():
        if not (type(module) is torch.nn.Linear or isinstance(module, Conv1D)) or module is output:
            continue
        parts = name.split(".")
        if any(p.startswith("lora_") or p in ("modules_to_save", "original_module") for p in parts):
            continue
        name = name.removesuffix(".base_layer")
        if not is_head(name):
            names.append(name)
    return tuple(fold_layer_names(names))


def describe_adapter(model: torch.nn.Module) -> str | None:
    """E.g. ``'LORA r=16 on q_proj, v_proj'`` for a ``PeftModel`` (the layers really adapted, after
    PEFT's own matching and exclusions); ``None`` when there is no adapter."""
    configs = getattr(model, "peft_config", None)
    if not configs:
        return None
    parts = []
    for name, cfg in configs.items():
        desc = f"{getattr(cfg.peft_type, 'value', cfg.peft_type)}"
        if getattr(cfg, "r", None) is not None:
            desc += f" r={cfg.r}"
        # A tuner layer holds one sub-dict per adapter name (lora_A["default"], ...).
        adapted = sorted(
            {
                n.rsplit(".", 1)[-1]
                for n, m in model.named_modules()
                if any(
                    isinstance(getattr(m, a, None), torch_module_dict()) and name in getattr(m, a)
                    for a in ("lora_A", "lora_E", "ia3_l", "hada_w1_a", "lokr_w1", "oft_R", "boft_R")
                )
            }
        )
        if adapted:
            desc += f" on {', '.join(adapted)}"
        parts.append(desc if name == "default" else f"{name}: {desc}")
    return "; ".join(parts)


def torch_module_dict() -> tuple[type, ...]:
    """The container types a PEFT tuner layer keeps its per-adapter modules in."""
    import torch  # lazy: keeps `import hf_lite.summary` (format_bytes, used by report and plan) free of torch

    return (torch.nn.ModuleDict, torch.nn.ParameterDict)


def model_summary(model: torch.nn.Module) -> ModelSummary:
    """Count parameters and bytes of ``model`` (shared tensors counted once).

    >>> import torch
    >>> m = torch.nn.Linear(3, 1); m.bias.requires_grad_(False)  # doctest: +ELLIPSIS
    Parameter...
    >>> model_summary(m).trainable_params
    3
    """
    seen: set[tuple[int, int]] = set()
    total = trainable = nbytes = 0
    dtypes: dict[str, int] = {}

    def count_bytes(t: torch.Tensor) -> int:
        key = (
            (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            if t.device.type != "meta"
            else (id(t), 0)
        )
        if key in seen:
            return 0
        seen.add(key)
        return t.numel() * t.element_size()

    for param in model.parameters():
        n = logical_numel(param)
        total += n
        if param.requires_grad:
            trainable += n
        nbytes += count_bytes(param)
        for extra in _quant_state_tensors(param):
            nbytes += count_bytes(extra)
        if param.is_floating_point():
            kind = str(param.dtype).removeprefix("torch.")
            dtypes[kind] = dtypes.get(kind, 0) + n
    for buf in model.buffers():
        nbytes += count_bytes(buf)
    dtype = max(dtypes, key=dtypes.get) if dtypes else "none"
    base = getattr(model, "get_base_model", None)
    inner = base() if callable(base) else model
    return ModelSummary(
        model_class=type(inner).__name__,
        total_params=total,
        trainable_params=trainable,
        bytes_in_memory=nbytes,
        dtype=dtype,
        quantization=describe_quantization(inner),
        adapter=describe_adapter(model),
        unquantized=unquantized_layers(model),
        source=getattr(inner, SOURCE_ATTRIBUTE, None),
    )
