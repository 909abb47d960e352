"""Export a compressed model as an ordinary checkpoint that stock ``from_pretrained`` loads.

:func:`export` writes one folder, atomically (a temporary sibling folder renamed into place): adapters
merged or kept separate, a 4/8-bit base dequantized (and the adapter merged onto it) or saved as the
bitsandbytes checkpoint it is, ``torch.nn.utils.prune`` / parametrization masks made permanent, the
tokenizer saved. Before the folder is renamed into place it is reloaded with stock transformers (and
PEFT for a separate adapter) and its outputs are compared with the in-memory model's on a few inputs;
the largest difference goes into the returned :class:`ExportReport`.

The in-memory model is not changed (the work happens on a copy when something must be transformed),
with one exception that keeps its outputs identical: on CPUs with AVX512-BF16, bitsandbytes repacks
4-bit weights for its CPU kernel at the first inference forward, and any later ``state_dict()`` (its
own ``save_pretrained``, PEFT's adapter save) undoes that lossily (absmax re-quantized) or, without double
quantization, wrongly (absmax saved transposed). :func:`unpack_bnb_cpu_weights_` restores the standard
layout exactly, and export applies it to such layers first.

>>> from hf_lite import load_model
>>> from hf_lite.exporting.writer import export
>>> model = load_model("org/model", quantization="4bit", peft="lora")  # doctest: +SKIP
>>> report = export(model, "out/merged", merge_adapter=True, dtype="bfloat16")  # doctest: +SKIP
>>> report.max_abs_diff  # doctest: +SKIP
0.0019
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_lite._utils import PICKLE_SUFFIXES, is_hub_id

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

__all__ = ["ExportReport", "export", "unpack_bnb_cpu_weights_", "default_check_inputs"]

#: Floating dtypes a checkpoint can be saved in (and a quantized base dequantized to).
_SAVE_DTYPES = ("float32", "bfloat16", "float16")
#: Files that hold pickled Python objects: never written by export, refused by push_to_hub.


@dataclasses.dataclass
class ExportReport:
    """What :func:`export` wrote and how faithful it is.

    Args:
        output_dir: the folder written (a local path: never put it in a model card).
        kind: ``"model"`` (a full checkpoint, ``config.json`` + weights) or ``"adapter"`` (PEFT files only).
        files: the files written, relative to ``output_dir``, sorted.
        bytes_on_disk: total size of the weight files (``*.safetensors``).
        parameters: logical parameter count of the saved weights (a 4-bit matrix counts all its entries).
        dtype: floating dtype of the saved weights (of the non-quantized ones for a bnb checkpoint).
        quantization: the saved checkpoint's quantization (``"bnb-4bit (nf4, double quant)"``...) or ``None``.
        dequantized_from: the in-memory model's quantization when it was dequantized for saving.
        adapter: the in-memory model's adapter (``"LORA r=8 on q_proj, v_proj"``) or ``None``.
        adapter_merged: whether the adapter was merged into the saved weights.
        base_model: Hub id of the base model (the adapter's base, or what the model was loaded from), or
            ``None`` when it is unknown or only a local folder.
        pruning_made_permanent: ``"module.tensor"`` names whose pruning re-parametrization was removed.
        sparsity: fraction of zeros in the linear layers' weights (heads and embeddings excluded), counted
            on the saved model when at least 1%; ``None`` otherwise or for quantized weights.
        max_abs_diff: largest absolute difference between the reloaded folder's outputs and the in-memory
            model's on the check inputs (``None`` when ``check=False``).
        check_output: which output was compared (``"logits"``, ``"last_hidden_state"``...).
        check_inputs_shape: shape of the check inputs' ``input_ids``.

    >>> r = ExportReport("out", "model", ["config.json", "model.safetensors"], 1024, 256, "float32")
    >>> r.to_dict()["kind"]
    'model'
    """

    output_dir: str
    kind: str
    files: list[str]
    bytes_on_disk: int
    parameters: int | None
    dtype: str | None
    quantization: str | None = None
    dequantized_from: str | None = None
    adapter: str | None = None
    adapter_merged: bool = False
    base_model: str | None = None
    pruning_made_permanent: list[str] = dataclasses.field(default_factory=list)
    sparsity: float | None = None
    max_abs_diff: float | None = None
    check_output: str | None = None
    check_inputs_shape: tuple[int, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict of the fields.

        >>> ExportReport("out", "adapter", [], 0, None, None).to_dict()["adapter_merged"]
        False
        """
        out = dataclasses.asdict(self)
        if self.check_inputs_shape is not None:
            out["check_inputs_shape"] = list(self.check_inputs_shape)
        return out


# --------------------------------------------------------------------------------------------------
# public helpers


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
    import importlib.util

    import torch

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


def default_check_inputs(
    config: Any, *, batch: int = 2, seq_len: int = 8, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Seeded random token ids (and decoder ids for encoder-decoders) for comparing two copies of a model.

    Args:
        config: the model's config (its text config's ``vocab_size`` bounds the ids).
        batch: number of sequences.
        seq_len: tokens per sequence.
        seed: generator seed (the same inputs every time).

    Returns:
        ``{"input_ids", "attention_mask"}`` and, for encoder-decoders, ``"decoder_input_ids"``.

    >>> from transformers import BertConfig
    >>> default_check_inputs(BertConfig(vocab_size=50))["input_ids"].shape
    torch.Size([2, 8])
    """
    import torch

    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    vocab = getattr(text_config, "vocab_size", None)
    if not isinstance(vocab, int) or vocab < 1:
        raise ValueError(
            f"config has no usable vocab_size ({vocab!r}) to draw check inputs from; pass check_inputs=... "
            "(the keyword arguments of one forward call) or check=False."
        )
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq_len), generator=generator)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if getattr(config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = torch.randint(
            0, vocab, (batch, max(2, seq_len // 2)), generator=generator
        )
    return inputs


# --------------------------------------------------------------------------------------------------
# export


def export(
    model: PreTrainedModel | Any,
    output_dir: str | os.PathLike,
    *,
    tokenizer: Any = None,
    merge_adapter: bool = False,
    dtype: str | torch.dtype | None = None,
    base_model: str | None = None,
    overwrite: bool = False,
    check: bool = True,
    check_inputs: Mapping[str, Any] | None = None,
    check_atol: float | None = None,
    max_shard_size: str | int = "5GB",
) -> ExportReport | None:
    """Save ``model`` (and its tokenizer) as an ordinary checkpoint folder, atomically, and check it.

    What is written:

    * a full-precision model: ``config.json`` + ``*.safetensors`` (cast to ``dtype`` if given);
    * a ``peft.PeftModel`` with ``merge_adapter=False``: the adapter only (``adapter_config.json`` +
      ``adapter_model.safetensors``), its ``base_model_name_or_path`` set to ``base_model`` when given;
    * a ``PeftModel`` with ``merge_adapter=True``: the adapter merged into the base weights, a plain
      checkpoint. On a bitsandbytes 4/8-bit base, every quantized layer is first dequantized (float32),
      the adapter is merged there (exact with respect to the dequantized weights), and the result is cast
      to ``dtype`` (default: the dtype the base checkpoint was loaded from, ``config.dtype``); the
      quantization config is dropped;
    * a bitsandbytes model without adapter: the quantized checkpoint as is (``dtype=None``) or, with a
      ``dtype``, dequantized to a plain checkpoint in that dtype;
    * pruning is made permanent: ``torch.nn.utils.prune`` (``weight_orig`` + ``weight_mask``) and
      parametrizations are replaced by plain weights (torch's own ``weight_norm``/``spectral_norm``/
      ``orthogonal`` parametrizations, which stock models register themselves, are kept). Structurally
      pruned models already have an edited config and are saved as they are.

    The files go to a temporary sibling folder (``.tmp-<name>-<random>``); with ``check=True`` that folder
    is reloaded with stock ``AutoModel*.from_pretrained`` (or ``PeftModel.from_pretrained`` onto a copy of
    the in-memory base, for a separate adapter) and the outputs compared with the in-memory model's; only
    then is it renamed to ``output_dir``. On any failure the temporary folder is removed and a previous
    ``output_dir`` is left intact. The in-memory model is not modified (a copy is transformed, so merging or
    dequantizing needs memory for the saved model once more); the one exception changes no output: 4-bit
    layers that bitsandbytes repacked for its CPU kernel are put back in the standard layout
    (:func:`unpack_bnb_cpu_weights_`), since any ``state_dict()`` would otherwise corrupt them.

    Args:
        model: a transformers ``PreTrainedModel`` or a ``peft.PeftModel``.
        output_dir: the folder to write. It must not exist or be empty, unless ``overwrite=True``.
        tokenizer: a tokenizer or processor to save alongside (anything with ``save_pretrained``).
        merge_adapter: merge the adapter into the weights (needs a ``PeftModel``).
        dtype: ``None`` (keep), or ``"float32"``/``"bfloat16"``/``"float16"`` (or a ``torch.dtype``): the dtype
            of the saved weights; for a bitsandbytes model it means "dequantize to this dtype".
        base_model: Hub id of the base model, written into a separate adapter's config (so that
            ``AutoPeftModel*.from_pretrained(repo)`` finds the base) and reported for the model card.
        overwrite: replace a non-empty ``output_dir``.
        check: reload the written folder and compare its outputs with the in-memory model's.
        check_inputs: keyword arguments of one forward call for the check; default: 2 random sequences of
            8 token ids (:func:`default_check_inputs`).
        check_atol: when given, raise ``RuntimeError`` (and write nothing) if the largest difference exceeds it.
        max_shard_size: passed to ``save_pretrained``.

    Returns:
        An :class:`ExportReport`, or ``None`` on non-main processes of a distributed run (only the main
        process writes).

    Example:

    >>> from hf_lite.testing import build_tiny_model
    >>> model, tokenizer = build_tiny_model("llama")
    >>> report = export(model, "/tmp/hf-lite-doc/export", tokenizer=tokenizer, overwrite=True)  # doctest: +SKIP
    >>> report.max_abs_diff  # doctest: +SKIP
    0.0
    """
    from hf_lite.summary import describe_adapter, describe_quantization

    # ---- arguments, all checked before anything is written
    peft_model = _is_peft_model(model)
    from transformers import PreTrainedModel

    if not peft_model and not isinstance(model, PreTrainedModel):
        raise TypeError(
            f"model must be a transformers PreTrainedModel or a peft.PeftModel; got {type(model).__name__}. "
            "Wrap custom modules in a PreTrainedModel so that from_pretrained can load them back."
        )
    if not isinstance(output_dir, (str, os.PathLike)):
        raise TypeError(f"output_dir must be a path (str or os.PathLike); got {type(output_dir).__name__}.")
    for name, value in (("merge_adapter", merge_adapter), ("overwrite", overwrite), ("check", check)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False; got {type(value).__name__} {value!r}.")
    if tokenizer is not None and not callable(getattr(tokenizer, "save_pretrained", None)):
        raise TypeError(
            f"tokenizer must be a tokenizer or processor with save_pretrained(); got {type(tokenizer).__name__}."
        )
    if check_inputs is not None and not isinstance(check_inputs, Mapping):
        raise TypeError(
            f"check_inputs must be a dict of forward() keyword arguments; got {type(check_inputs).__name__}."
        )
    if check_atol is not None and (not isinstance(check_atol, (int, float)) or check_atol < 0):
        raise ValueError(f"check_atol={check_atol!r} must be a non-negative number or None.")
    if base_model is not None and not is_hub_id(base_model):
        raise ValueError(
            f"base_model={base_model!r} is not a Hub repo id ('org/name'): local paths are not written into "
            "exported configs or model cards. Pass the id of the base model on the Hub, or None."
        )

    base = model.get_base_model() if peft_model else model
    quantization = describe_quantization(base) if _has_bnb_layers(base) else None
    adapter = describe_adapter(model) if peft_model else None
    if merge_adapter and not peft_model:
        raise ValueError(
            f"merge_adapter=True but the model ({type(model).__name__}) has no adapter to merge. Pass a "
            "peft.PeftModel, or merge_adapter=False to save the model as it is."
        )
    target_dtype = _check_dtype(dtype, quantization)
    if peft_model and not merge_adapter and target_dtype is not None:
        raise ValueError(
            f"dtype={dtype!r} with a separate adapter (merge_adapter=False): only the adapter is saved, the base "
            "weights are not, so there is nothing to cast. Pass merge_adapter=True to save a merged checkpoint "
            "in that dtype, or dtype=None."
        )
    if quantization is not None and merge_adapter and target_dtype is None:
        target_dtype = _config_dtype(base)

    out = Path(output_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise ValueError(f"output_dir={os.fspath(output_dir)!r} is a file; pass a folder path.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(
            f"output_dir={os.fspath(output_dir)!r} exists and is not empty. Pass overwrite=True to replace it "
            "(atomically: the old folder stays until the new one is complete), or choose another folder."
        )
    if not _is_main_process():
        logger.info("export: not the main process, nothing written")
        return None

    if quantization is not None:
        # Any state_dict() call (PEFT's adapter save, bitsandbytes' own save) on weights that bitsandbytes
        # repacked for its CPU kernel would silently change them: restore the standard layout first (exact).
        unpack_bnb_cpu_weights_(model)
    if base_model is None:
        source = (
            next(iter(model.peft_config.values())).base_model_name_or_path
            if peft_model
            else getattr(base, "name_or_path", None)
        )
        base_model = source if is_hub_id(source) else None

    inputs = None
    if check:
        inputs = dict(check_inputs) if check_inputs is not None else default_check_inputs(base.config)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        kind = "adapter" if peft_model and not merge_adapter else "model"
        pruned: list[str] = []
        work: Any = None
        if kind == "adapter":
            model.save_pretrained(tmp)
            _finish_adapter_folder(tmp, base_model)
        else:
            needs_copy = merge_adapter or target_dtype is not None or _has_reparametrization(base)
            if needs_copy:
                work, pruned = _transformed_copy(model, merge=merge_adapter, dtype=target_dtype,
                                                 quantized=quantization is not None)  # fmt: skip
            else:
                work = model
            work.save_pretrained(tmp, max_shard_size=max_shard_size)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _refuse_pickles(tmp)

        max_diff = check_output = None
        if check:
            max_diff, check_output = _check_folder(model, tmp, kind, inputs)
            if check_atol is not None and not max_diff <= check_atol:
                raise RuntimeError(
                    f"export check failed: the reloaded checkpoint's {check_output} differ from the in-memory "
                    f"model's by up to {max_diff:.3g} > check_atol={check_atol}. Nothing was written to "
                    f"{out.name!r}."
                )
        saved_quant = quantization if kind == "model" and work is model else None
        report = ExportReport(
            output_dir=str(out),
            kind=kind,
            files=[],
            bytes_on_disk=0,
            parameters=None,
            dtype=None,
            quantization=saved_quant,
            dequantized_from=quantization if kind == "model" and work is not model else None,
            adapter=adapter,
            adapter_merged=kind == "model" and peft_model,
            base_model=base_model,
            pruning_made_permanent=pruned,
            sparsity=_counted_sparsity(work) if kind == "model" and saved_quant is None else None,
            max_abs_diff=max_diff,
            check_output=check_output,
            check_inputs_shape=tuple(inputs["input_ids"].shape) if inputs and "input_ids" in inputs else None,
        )
        del work
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    from hf_lite.card.build import inspect_checkpoint

    info = inspect_checkpoint(out)
    report.files = info.files
    report.bytes_on_disk = info.bytes_on_disk
    report.parameters = info.parameters
    report.dtype = info.dtype if target_dtype is None else str(target_dtype).removeprefix("torch.")
    logger.info(
        "exported %s to %r: %d files, %s parameters%s", report.kind, out.name, len(report.files),
        f"{report.parameters:,}" if report.parameters is not None else "?",
        f", max |diff| {report.max_abs_diff:.3g} on reload" if report.max_abs_diff is not None else "",
    )  # fmt: skip
    return report


# --------------------------------------------------------------------------------------------------
# internals


def _is_peft_model(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def _has_bnb_layers(model: Any) -> bool:
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        return False
    import bitsandbytes as bnb

    return any(isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) for m in model.modules())


def _is_main_process() -> bool:
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return True


def _check_dtype(dtype: Any, quantization: str | None) -> torch.dtype | None:
    """``None``/``"auto"`` -> ``None``; a float name or torch dtype -> that dtype; anything else raises."""
    import torch

    from hf_lite.loading import resolve_dtype

    if dtype is None or (isinstance(dtype, str) and dtype.strip().lower() == "auto"):
        return None
    what = f"dequantizing a {quantization} model" if quantization else "saving a checkpoint"
    fix = (
        "Use 'float32', 'bfloat16' or 'float16' to dequantize, or dtype=None to save the bitsandbytes "
        "checkpoint as it is (with a separate adapter, or without adapter)."
        if quantization
        else "Use 'float32', 'bfloat16', 'float16' or None (keep the model's dtype)."
    )
    try:
        resolved = resolve_dtype(dtype)
    except ValueError as err:
        raise ValueError(f"dtype={dtype!r} is not supported for {what}. {fix}") from err
    if not isinstance(resolved, torch.dtype) or str(resolved).removeprefix("torch.") not in _SAVE_DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported for {what}. {fix}")
    return resolved


def _config_dtype(model: Any) -> torch.dtype:
    """The dtype the checkpoint was loaded in (``config.dtype``), float32 when unknown or not a float type."""
    import torch

    value = getattr(model.config, "dtype", None) or getattr(model.config, "torch_dtype", None)
    if isinstance(value, str):
        value = getattr(torch, value.removeprefix("torch."), None)
    if isinstance(value, torch.dtype) and str(value).removeprefix("torch.") in _SAVE_DTYPES:
        return value
    return torch.float32


def _has_reparametrization(model: Any) -> bool:
    from torch.nn.utils import parametrize, prune

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


def _deepcopy_model(model: Any) -> Any:
    """``copy.deepcopy`` that also copes with ``torch.nn.utils.prune``: it keeps the masked weight as a plain
    (non-leaf) tensor attribute, which deepcopy refuses. The hook recomputes it, so a detached alias will do."""
    import torch

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


def _make_pruning_permanent_(model: Any) -> list[str]:
    """Replace pruning re-parametrizations by plain weights in ``model`` (a copy: see below)."""
    import torch
    from torch.nn.utils import parametrize, prune

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


def _dequantized_weight(module: Any) -> torch.Tensor:
    """float32 weight of a bnb Linear4bit/Linear8bitLt layer (standard layout restored first)."""
    import bitsandbytes as bnb
    import torch

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
    """Replace every bnb layer of ``model`` by a float32 ``nn.Linear`` holding its dequantized weight."""
    import bitsandbytes as bnb
    import torch

    count = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)):
            continue
        weight = _dequantized_weight(module)
        linear = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                                 device="meta")  # fmt: skip
        linear.weight = torch.nn.Parameter(weight, requires_grad=False)
        if module.bias is not None:
            linear.bias = torch.nn.Parameter(
                module.bias.detach().to(torch.float32).clone(), requires_grad=False
            )
        model.set_submodule(name, linear)
        count += 1
    return count


def strip_quantization_(model: Any) -> None:
    """What transformers' ``remove_quantization_config`` does: the model saves as a plain checkpoint."""
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            delattr(model, attr)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    model.is_loaded_in_4bit = False
    model.is_loaded_in_8bit = False


def _transformed_copy(
    model: Any, *, merge: bool, dtype: torch.dtype | None, quantized: bool
) -> tuple[Any, list[str]]:
    """A copy of ``model`` with the adapter merged, bnb layers dequantized, pruning permanent, cast to dtype."""
    import torch

    if merge and quantized:
        from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict

        active = list(model.active_adapters)
        configs = {n: copy.deepcopy(model.peft_config[n]) for n in active}
        states = {n: get_peft_model_state_dict(model, adapter_name=n) for n in active}
        base = _deepcopy_model(model).unload()  # the bnb base, adapter layers removed
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
        work = wrapped.merge_and_unload()
    else:
        work = _deepcopy_model(model)
        if merge:
            work = work.merge_and_unload()
        if quantized:
            dequantize_bnb_(work)
            strip_quantization_(work)
    pruned = _make_pruning_permanent_(work)
    if dtype is not None:
        work.to(dtype)
        work.config.dtype = dtype
    return work, pruned


def _finish_adapter_folder(folder: Path, base_model: str | None) -> None:
    """Point the adapter at its Hub base and drop the template README PEFT writes (it holds local paths)."""
    readme = folder / "README.md"
    if readme.exists():
        readme.unlink()
    if base_model is None:
        return
    for config_path in folder.rglob("adapter_config.json"):
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = base_model
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _refuse_pickles(folder: Path) -> None:
    found = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix in PICKLE_SUFFIXES)
    if found:  # pragma: no cover - save_pretrained writes safetensors only
        raise RuntimeError(f"export wrote pickle files {found}; hf-lite saves safetensors only.")


def _outputs(model: Any, inputs: Mapping[str, Any]) -> tuple[torch.Tensor, str]:
    """The main output tensor of one eval-mode, no-grad forward (training mode restored afterwards)."""
    import torch

    device = next(model.parameters()).device
    moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _bnb_layout_kept(model):
            output = model(**moved)
    finally:
        model.train(was_training)
    for key in ("logits", "last_hidden_state", "start_logits"):
        value = getattr(output, key, None) if not isinstance(output, Mapping) else output.get(key)
        if isinstance(value, torch.Tensor):
            return value.detach().to("cpu", torch.float32), key
    if isinstance(output, torch.Tensor):
        return output.detach().to("cpu", torch.float32), "output"
    first = output[0] if isinstance(output, (tuple, list)) else output.to_tuple()[0]
    return first.detach().to("cpu", torch.float32), "output[0]"


@contextlib.contextmanager
def _bnb_layout_kept(model: Any) -> Iterator[None]:
    """Undo, on exit, bitsandbytes' repacking of 4-bit weights for its CPU kernel during an inference forward,
    exactly (the packed state is dropped, the original data and quantization state put back)."""
    saved = []
    if _has_bnb_layers(model):
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


def _auto_class(model: Any) -> Any:
    """The transformers Auto class that builds ``type(model)`` from its config (stock loading path)."""
    import transformers

    from hf_lite.tasks import TASKS

    for auto_name in TASKS.values():
        auto = getattr(transformers, auto_name)
        try:
            if auto._model_mapping[type(model.config)] is type(model):
                return auto
        except KeyError:
            continue
    return type(model)  # not reachable through an Auto class: its own class is the stock loader


def _check_folder(model: Any, folder: Path, kind: str, inputs: Mapping[str, Any]) -> tuple[float, str]:
    """Reload ``folder`` with stock libraries and compare one forward with the in-memory model's."""
    reference, key = _outputs(model, inputs)
    device = next(model.parameters()).device
    if kind == "adapter":
        from peft import PeftModel

        active = list(model.active_adapters)
        name = active[0]
        base = _deepcopy_model(model).unload()
        reloaded = PeftModel.from_pretrained(
            base, folder if name == "default" else folder / name, adapter_name=name
        )
    else:
        auto = _auto_class(model.get_base_model() if _is_peft_model(model) else model)
        kwargs: dict[str, Any] = {"dtype": "auto"}
        if device.type != "cpu":
            kwargs["device_map"] = {"": device}
        reloaded = auto.from_pretrained(folder, **kwargs)
    output, _ = _outputs(reloaded, inputs)
    del reloaded
    if output.shape != reference.shape:
        raise RuntimeError(
            f"export check failed: the reloaded checkpoint's {key} have shape {tuple(output.shape)}, the "
            f"in-memory model's {tuple(reference.shape)}."
        )
    return float((output - reference).abs().max()) if reference.numel() else 0.0, key


def _counted_sparsity(model: Any) -> float | None:
    """Zeros in the prunable linear layers' weights, when at least 1% (a dense model reports None)."""
    try:
        from hf_lite.pruning.report import sparsity_report

        report = sparsity_report(model.get_base_model() if _is_peft_model(model) else model)
    except Exception:  # a count is a nicety: never fail an export over it
        return None
    value = report.targeted_sparsity
    return round(value, 4) if value >= 0.01 else None


def _replace_dir(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is moved aside first and removed only afterwards."""
    old = None
    if out.exists():
        if any(out.iterdir()):
            old = out.parent / f".old-{out.name}-{secrets.token_hex(4)}"
            os.replace(out, old)
        else:
            out.rmdir()
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
