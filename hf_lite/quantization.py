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
from transformers.pytorch_utils import Conv1D
from transformers.quantizers.base import get_keys_to_not_convert
from transformers.quantizers.quantizers_utils import should_convert_module

from hf_lite._utils import did_you_mean, has_bnb_layers
from hf_lite.heads import HEAD_NAMES, head_module_names

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


CLASSIFICATION_TASKS = ("sequence-classification", "token-classification")
#: bitsandbytes' CPU kernel (AVX512-BF16) packs 4-bit weights in tiles of 32 output rows, with one scale per
#: 64 inputs of a row (``_convert_weight_packed_for_cpu``): a layer outside that grid cannot be repacked.
CPU_PACK_ROWS = 32
CPU_PACK_BLOCK = 64


def quantizable_layers(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """``{name: (in_features, out_features)}`` of the layers transformers hands to bitsandbytes.

    Those are exactly ``nn.Linear`` (not subclasses) and transformers' ``Conv1D``.

    >>> quantizable_layers(torch.nn.Sequential(torch.nn.Linear(4, 1), torch.nn.ReLU()))
    {'0': (4, 1)}
    """
    found = {}
    for name, module in model.named_modules():
        if type(module) is torch.nn.Linear:
            found[name] = (module.in_features, module.out_features)
        elif isinstance(module, Conv1D):
            found[name] = (module.nx, module.nf)
    return found


def cpu_unpackable_layers(model: torch.nn.Module) -> list[str]:
    """Layers whose 4-bit weights bitsandbytes cannot repack for its CPU kernel (so evaluation would crash).

    >>> cpu_unpackable_layers(torch.nn.ModuleDict({"up": torch.nn.Linear(64, 64), "gate": torch.nn.Linear(64, 1)}))
    ['gate']
    """
    return [
        name
        for name, (fan_in, fan_out) in quantizable_layers(model).items()
        if fan_out % CPU_PACK_ROWS or fan_in % CPU_PACK_BLOCK
    ]


def bnb_repacks_on_cpu() -> bool:
    """Whether bitsandbytes repacks 4-bit weights for its CPU kernel on this machine (AVX512-BF16)."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return False
    from bitsandbytes.functional import has_avx512bf16

    return bool(has_avx512bf16())


def plan_unquantized_modules(
    bnb_config: Any, task: str, skeleton: torch.nn.Module | None, *, on_cpu: bool
) -> tuple[Any, list[str]]:
    """``bnb_config`` with ``llm_int8_skip_modules`` saying what stays in full precision, and the layers left
    out because bitsandbytes cannot pack them here.

    - Classification tasks: every head of :mod:`hf_lite.heads` (classifier, ``pre_classifier``, pooler,
      ModernBERT's ``head``, ...), since PEFT trains classifier heads fully and a 4/8-bit layer takes no
      gradient; plus transformers' own defaults (output embeddings, tied and last modules).
    - 4-bit on a CPU whose bitsandbytes repacks weights (AVX512-BF16): layers off the kernel's grid
      (:func:`cpu_unpackable_layers`, e.g. Qwen2-MoE's one-output ``shared_expert_gate``), which would make
      the first evaluation or export fail.

    A skip list the user gave is kept as it is, with the unpackable layers added. ``skeleton`` is the
    model built on the meta device (names and shapes only); without it only the head names are used.
    """
    user_skips = list(bnb_config.llm_int8_skip_modules or [])
    classify = task in CLASSIFICATION_TASKS and not user_skips
    if user_skips:
        skips = user_skips
    elif skeleton is None:
        skips = list(HEAD_NAMES) if classify else []
    else:
        skips = sorted({k.removesuffix(".bias") for k in get_keys_to_not_convert(skeleton)})
        if classify:
            skips += [h for h in head_module_names(skeleton) if h not in skips]
    unpackable: list[str] = []
    if skeleton is not None and bnb_config.load_in_4bit and on_cpu and bnb_repacks_on_cpu():
        unpackable = [n for n in cpu_unpackable_layers(skeleton) if should_convert_module(n, skips)]
    if not (classify or unpackable):
        return bnb_config, []
    bnb_config = copy.deepcopy(bnb_config)
    bnb_config.llm_int8_skip_modules = skips + unpackable
    return bnb_config, unpackable


def unquantized_bnb_layers(model: torch.nn.Module) -> list[str]:
    """Names of bitsandbytes 4/8-bit layers whose weight bitsandbytes never quantized.

    transformers quantizes a layer's weight while reading it from the checkpoint; a layer the checkpoint
    lacks (a head newly initialised for the task, e.g. ``cls.predictions.transform.dense`` of an encoder
    loaded as a causal LM) keeps a plain ``Parameter`` inside a ``Linear4bit``/``Linear8bitLt``, which
    fails later inside PEFT or bitsandbytes (``compress_statistics``, ``CB``).

    >>> unquantized_bnb_layers(torch.nn.Linear(2, 2))
    []
    """
    if importlib.util.find_spec("bitsandbytes") is None:
        return []
    import bitsandbytes as bnb

    bad = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, bnb.nn.Linear4bit):
            ok = isinstance(weight, bnb.nn.Params4bit) and weight.quant_state is not None
        elif isinstance(module, bnb.nn.Linear8bitLt):
            ok = isinstance(weight, bnb.nn.Int8Params) and getattr(weight, "CB", None) is not None
        else:
            continue
        if not ok:
            bad.append(name)
    return bad


def check_quantized(
    model: torch.nn.Module, bnb_config: Any, *, source: str | None = None, task: str | None = None
) -> None:
    """Refuse a "quantized" model in which bitsandbytes replaced no layer, or left layers unquantized because
    the checkpoint (``source``, loaded for ``task``) has no weights for them, saying why and what to do."""
    bits = "4bit" if bnb_config.load_in_4bit else "8bit"
    if has_bnb_layers(model):
        missing = unquantized_bnb_layers(model)
        if not missing:
            return
        try:  # a skip list replaces transformers' defaults (output embeddings...): the fix must keep them
            kept = list(bnb_config.llm_int8_skip_modules or []) or [
                k.removesuffix(".bias") for k in get_keys_to_not_convert(model)
            ]
        except Exception:  # noqa: BLE001 - only makes the suggested fix more complete
            kept = list(bnb_config.llm_int8_skip_modules or [])
        skips = sorted(set(kept) | set(missing))
        skips = [n for n in skips if not any(n.startswith(f"{other}.") for other in skips)]  # parents cover
        where = f"name_or_path={source!r}" if source else "the checkpoint"
        as_task = f" for task={task!r}" if task else ""
        raise ValueError(
            f"quantization={bits!r}: {where} has no weights for {len(missing)} layer(s) that "
            f"{type(model).__name__} needs{as_task} ({', '.join(missing[:6])}{', ...' if len(missing) > 6 else ''}): "
            "they were newly initialised, and bitsandbytes only quantizes weights read from the checkpoint. "
            "Use a checkpoint trained for this task (a causal LM for 'causal-lm'), load without quantization "
            f"(quantization=None), or keep those layers in full precision: quantization={{'load_in_{bits[0]}bit': "
            f"True, 'llm_int8_skip_modules': {skips!r}}}."
        )
    subclasses = sorted(
        {
            type(m).__name__
            for m in model.modules()
            if isinstance(m, torch.nn.Linear) and type(m) is not torch.nn.Linear and not isinstance(m, Conv1D)
        }
    )
    if subclasses:
        why = (
            f"its linear layers are {', '.join(subclasses)}, subclasses of torch.nn.Linear, and transformers' "
            "bitsandbytes integration only replaces exact torch.nn.Linear (and Conv1D) layers"
        )
        fix = "Load it without quantization (in a lower-precision dtype such as dtype='bf16' to save memory)."
    else:
        why = (
            "it only wraps torch.nn.Linear (and transformers Conv1D) layers, and this model has none outside the "
            f"skipped modules ({bnb_config.llm_int8_skip_modules or 'none given'})"
        )
        fix = "Load it without quantization, or skip fewer modules."
    raise ValueError(
        f"quantization={bits!r}: bitsandbytes quantized no layer of {type(model).__name__}: {why}. {fix}"
    )


# --------------------------------------------------------------------------------------------------
# bitsandbytes' CPU repacking of 4-bit weights, and getting the trainable layout back


#: Attribute of a ``Linear4bit`` holding its quantization state as it was before bitsandbytes repacked it.
_STASH = "hf_lite_unpacked_quant_state"
#: Attribute marking a ``Linear4bit`` that carries :func:`bnb_training_layout_hook`.
_HOOKED = "hf_lite_training_layout_hook"


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
        setattr(module, _STASH, None)  # the state copied before the repacking no longer matches
        restored += 1
    return restored


def bnb_repacks(module: Any, x: torch.Tensor) -> bool:
    """Whether bitsandbytes' ``Linear4bit.forward`` repacks its weight for this input (its own condition)."""
    return (
        x.device.type == "cpu"
        and bool(getattr(module, "support_avx512bf16_for_cpu", False))
        and not module.training
        and not x.requires_grad
    )


def bnb_training_layout_hook(module: Any, args: tuple[Any, ...]) -> None:
    """Forward pre-hook of a ``Linear4bit``: keep it trainable across bitsandbytes' CPU inference repacking.

    Before a forward that repacks (eval mode, input without grad, AVX512-BF16 CPU), the layer's
    quantization state is copied aside (a few small tensors; the 4-bit codes need no copy, their
    re-ordering is a permutation). Before any other forward on a repacked layer (training mode, or an
    input that requires grad), the standard layout comes back exactly: codes re-ordered, the copied
    state put back. Without that, bitsandbytes runs its inference kernel, which has no backward (wrong
    LoRA gradients) and adds the bias in place (an autograd error). Costs an attribute check otherwise.
    """
    state = getattr(module.weight, "quant_state", None)
    if state is None or not args or not isinstance(args[0], torch.Tensor):
        return
    packed = getattr(state, "packing_format_for_cpu", False)
    repacks = bnb_repacks(module, args[0])
    if repacks and not packed:
        setattr(module, _STASH, copy.deepcopy(state))
    elif packed and not repacks:
        stash = getattr(module, _STASH, None)
        if stash is None:  # repacked before the hook was there: the kernel's own scales, exactly
            unpack_bnb_cpu_weights_(module)
            return
        import bitsandbytes as bnb

        # The codes only: with original_nested off, bitsandbytes does not re-quantize the scales.
        view = copy.copy(state)
        view.original_nested = False
        data, _ = bnb.functional._convert_weight_packed_for_cpu_inverse(module.weight.data, view)
        module.weight.data = data
        module.weight.quant_state = stash
        if getattr(module, "quant_state", None) is not None:
            module.quant_state = stash
        setattr(module, _STASH, None)


def keep_bnb_layout_trainable_(model: torch.nn.Module) -> int:
    """Make every bitsandbytes ``Linear4bit`` of ``model`` restore its trainable layout before a training forward.

    On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights for a bf16 inference kernel at the first
    eval-mode forward without grad (a Trainer's evaluation), and later training forwards run that kernel:
    LoRA gradients come out wrong, and layers with a bias fail with an in-place autograd error. This
    registers :func:`bnb_training_layout_hook` on each such layer (once; calling again adds nothing), so
    that training after evaluation computes exactly what it computes without evaluation. ``load_model``
    calls it on every 4-bit model. Safe to call on any model.

    Args:
        model: any module; only ``bitsandbytes.nn.Linear4bit`` layers get the hook.

    Returns:
        The number of layers that got the hook now.

    >>> import torch
    >>> keep_bnb_layout_trainable_(torch.nn.Linear(2, 2))
    0
    """
    if importlib.util.find_spec("bitsandbytes") is None:
        return 0
    import bitsandbytes as bnb

    added = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and not getattr(module, _HOOKED, False):
            module.register_forward_pre_hook(bnb_training_layout_hook)
            setattr(module, _HOOKED, True)
            added += 1
    return added
