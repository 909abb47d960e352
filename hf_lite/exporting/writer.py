"""Export a compressed model as an ordinary checkpoint that stock ``from_pretrained`` loads.

:func:`export` writes one folder, atomically (a temporary sibling folder renamed into place): adapters
merged or kept separate (:mod:`~hf_lite.exporting.adapters`), a 4/8-bit base dequantized (and the adapter
merged onto it) or saved as the bitsandbytes checkpoint it is (:mod:`~hf_lite.exporting.quantization`),
``torch.nn.utils.prune`` / parametrization masks made permanent (:mod:`~hf_lite.exporting.sparsity`), the
tokenizer saved. Before the folder is renamed into place it is reloaded with stock transformers (and
PEFT for a separate adapter) and its outputs are compared with the in-memory model's on a few inputs
(:mod:`~hf_lite.exporting.check`); the largest difference goes into the returned :class:`ExportReport`. A
bitsandbytes model that is dequantized for saving is compared with its exact float32 reference (the
dequantized base, with the adapter unmerged) and, separately, with the in-memory quantized model, whose
kernels compute in bf16 or int8: both figures are reported, each labelled.

The in-memory model is not changed (the work happens on a copy when something must be transformed),
with one exception that keeps its outputs identical: on CPUs with AVX512-BF16, bitsandbytes repacks
4-bit weights for its CPU kernel at the first inference forward, and any later ``state_dict()`` (its
own ``save_pretrained``, PEFT's adapter save) undoes that lossily (absmax re-quantized) or, without double
quantization, wrongly (absmax saved transposed).
:func:`~hf_lite.exporting.quantization.unpack_bnb_cpu_weights_` restores the standard layout exactly, and
export applies it to such layers first.

>>> from hf_lite import load_model
>>> from hf_lite.exporting import export
>>> model = load_model("org/model", quantization="4bit", peft="lora")  # doctest: +SKIP
>>> report = export(model, "out/merged", merge_adapter=True, dtype="float32")  # doctest: +SKIP
>>> print(report.check_text())  # doctest: +SKIP
max |diff| of logits 1.79e-07 vs exact reference: dequantized base + adapter, float32; 0.00161 vs the in-memory quantized model (bitsandbytes kernels)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from hf_lite._utils import has_bnb_layers, is_hub_id, is_main_process, replace_dir
from hf_lite.card import CompressionSummary
from hf_lite.checkpoint import inspect_checkpoint
from hf_lite.exporting.adapters import (
    dequantized_adapter_model,
    is_peft_model,
    merge_adapter_,
)
from hf_lite.exporting.check import default_check_inputs, max_abs_diff, model_outputs, reload_outputs
from hf_lite.exporting.files import enable_kv_cache, finish_adapter_folder, refuse_pickles, write_card
from hf_lite.exporting.quantization import dequantize_bnb_, strip_quantization_, unpack_bnb_cpu_weights_
from hf_lite.exporting.sparsity import (
    counted_sparsity,
    deepcopy_model,
    has_reparametrization,
    make_pruning_permanent_,
)
from hf_lite.loading import resolve_dtype
from hf_lite.progress import progress_bar
from hf_lite.summary import describe_adapter, describe_quantization

logger = logging.getLogger(__name__)

__all__ = ["ExportReport", "export"]

#: Floating dtypes a checkpoint can be saved in (and a quantized base dequantized to).
_SAVE_DTYPES = ("float32", "bfloat16", "float16")

#: What ``ExportReport.max_abs_diff`` compares the reloaded folder with (``ExportReport.check_reference``).
IN_MEMORY = "in-memory model"
EXACT_MERGE = "exact reference: dequantized base + adapter, float32"
EXACT_DEQUANTIZED = "exact reference: dequantized base, float32"


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
        max_abs_diff: largest absolute difference between the reloaded folder's outputs and those of
            ``check_reference`` on the check inputs (``None`` when ``check=False``); ``check_atol`` applies to it.
        check_output: which output was compared (``"logits"``, ``"last_hidden_state"``...).
        check_inputs_shape: shape of the check inputs' ``input_ids``.
        check_reference: what ``max_abs_diff`` compares with: ``"in-memory model"``, or, when a bitsandbytes
            model was dequantized for saving, the exact reference it stands for, computed in float32 from the
            dequantized weights (``"exact reference: dequantized base + adapter, float32"``, the adapter
            unmerged; ``"exact reference: dequantized base, float32"`` without adapter). The in-memory 4/8-bit
            model is not exact: bitsandbytes' kernels compute in bf16 (4-bit on CPU) or with int8 activations.
        max_abs_diff_vs_quantized: for a dequantized export, the largest absolute difference between the
            reloaded folder's outputs and the in-memory quantized model's (its bitsandbytes kernels); ``None``
            otherwise (then ``max_abs_diff`` is that comparison).

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
    check_reference: str | None = None
    max_abs_diff_vs_quantized: float | None = None

    def check_text(self) -> str | None:
        """The check's differences, each labelled with what it compares (``None`` when nothing was checked).

        >>> r = ExportReport("out", "model", [], 0, None, None, max_abs_diff=1e-7, check_output="logits",
        ...                  check_reference=EXACT_MERGE, max_abs_diff_vs_quantized=3e-3)
        >>> print(r.check_text())
        max |diff| of logits 1e-07 vs exact reference: dequantized base + adapter, float32; 0.003 vs the in-memory quantized model (bitsandbytes kernels)
        """
        if self.max_abs_diff is None:
            return None
        text = (
            f"max |diff| of {self.check_output or 'outputs'} {self.max_abs_diff:.3g} vs "
            f"{self.check_reference or IN_MEMORY}"
        )
        if self.max_abs_diff_vs_quantized is not None:
            text += f"; {self.max_abs_diff_vs_quantized:.3g} vs the in-memory quantized model (bitsandbytes kernels)"
        return text

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict of the fields.

        >>> ExportReport("out", "adapter", [], 0, None, None).to_dict()["adapter_merged"]
        False
        """
        out = dataclasses.asdict(self)
        if self.check_inputs_shape is not None:
            out["check_inputs_shape"] = list(self.check_inputs_shape)
        return out


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
    card: bool = True,
    card_report: CompressionSummary | Mapping[str, Any] | None = None,
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

    * a model that generates has ``use_cache: true`` in its saved configs (training turns it off);
    * ``README.md``: the model card :func:`~hf_lite.hub.push_to_hub` would upload for this folder (built from
      the files, this export and ``card_report``), without the repo name it only knows when pushing.

    The files go to a temporary sibling folder (``.tmp-<name>-<random>``); with ``check=True`` that folder
    is reloaded with stock ``AutoModel*.from_pretrained`` (or ``PeftModel.from_pretrained`` onto a copy of
    the in-memory base, for a separate adapter) and the outputs compared with the in-memory model's (for a
    dequantized bitsandbytes model, also with the exact float32 reference: the report labels both); only
    then is it renamed to ``output_dir``. On any failure the temporary folder is removed and a previous
    ``output_dir`` is left intact. The in-memory model is not modified (a copy is transformed, so merging or
    dequantizing needs memory for the saved model once more); the one exception changes no output: 4-bit
    layers that bitsandbytes repacked for its CPU kernel are put back in the standard layout
    (:func:`~hf_lite.exporting.quantization.unpack_bnb_cpu_weights_`), since any ``state_dict()`` would
    otherwise corrupt them.

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
            8 token ids (:func:`~hf_lite.exporting.check.default_check_inputs`).
        check_atol: when given, raise ``RuntimeError`` (and write nothing) if the largest difference exceeds it.
        max_shard_size: passed to ``save_pretrained``.
        card: write the model card as ``README.md``.
        card_report: the compression summary the card states (a :class:`~hf_lite.card.CompressionSummary` or
            a dict with its field names, as ``push_to_hub(report=...)``); ``None``: the card states what the
            files and the export show.

    Returns:
        An :class:`ExportReport`, or ``None`` on non-main processes of a distributed run (only the main
        process writes).

    Example:

    >>> from hf_lite.testing import build_tiny_model
    >>> model, tokenizer = build_tiny_model("llama")
    >>> import pathlib, tempfile
    >>> report = export(model, pathlib.Path(tempfile.mkdtemp()) / "export", tokenizer=tokenizer)
    >>> report.kind, report.max_abs_diff, report.check_output
    ('model', 0.0, 'logits')
    """
    # ---- arguments, all checked before anything is written
    peft_model = is_peft_model(model)
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
    if not isinstance(card, bool):
        raise TypeError(f"card must be True or False; got {type(card).__name__} {card!r}.")
    if card_report is not None:
        if not card:
            raise ValueError(
                "card_report is given but card=False: the summary is only written into the model card. Pass "
                "card=True, or drop card_report."
            )
        card_report = CompressionSummary.from_dict(card_report)  # its own checks, before anything is written
    if check_atol is not None and (not isinstance(check_atol, (int, float)) or check_atol < 0):
        raise ValueError(f"check_atol={check_atol!r} must be a non-negative number or None.")
    if base_model is not None and not is_hub_id(base_model):
        raise ValueError(
            f"base_model={base_model!r} is not a Hub repo id ('org/name'): local paths are not written into "
            "exported configs or model cards. Pass the id of the base model on the Hub, or None."
        )

    base = model.get_base_model() if peft_model else model
    quantization = describe_quantization(base) if has_bnb_layers(base) else None
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
    if not is_main_process():
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
    bar = progress_bar(total=3, desc=f"export {out.name}", unit="step")  # write, reload check, card
    try:
        kind = "adapter" if peft_model and not merge_adapter else "model"
        pruned: list[str] = []
        work: Any = None
        exact = None  # outputs of the exact float32 reference of a dequantized bnb model
        if kind == "adapter":
            model.save_pretrained(tmp)
            finish_adapter_folder(tmp, base_model)
        else:
            needs_copy = merge_adapter or target_dtype is not None or has_reparametrization(base)
            if needs_copy:
                work, pruned, exact = _transformed_copy(
                    model,
                    merge=merge_adapter,
                    dtype=target_dtype,
                    quantized=quantization is not None,
                    inputs=inputs,
                )
            else:
                work = model
            work.save_pretrained(tmp, max_shard_size=max_shard_size)
            if base.can_generate():
                enable_kv_cache(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        refuse_pickles(tmp)
        bar.update(1)

        max_diff = check_output = vs_quantized = None
        reference_label = None
        if check:
            reloaded, check_output = reload_outputs(model, tmp, kind, inputs)
            in_memory = max_abs_diff(reloaded, model_outputs(model, inputs)[0], check_output)
            if exact is None:
                max_diff, reference_label = in_memory, IN_MEMORY
            else:
                max_diff, vs_quantized = max_abs_diff(reloaded, exact, check_output), in_memory
                reference_label = EXACT_MERGE if merge_adapter else EXACT_DEQUANTIZED
            if check_atol is not None and not max_diff <= check_atol:
                raise RuntimeError(
                    f"export check failed: the reloaded checkpoint's {check_output} differ from the "
                    f"{reference_label}'s by up to {max_diff:.3g} > check_atol={check_atol}. Nothing was "
                    f"written to {out.name!r}."
                )
        bar.update(1)
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
            sparsity=counted_sparsity(work) if kind == "model" and saved_quant is None else None,
            max_abs_diff=max_diff,
            check_output=check_output,
            check_inputs_shape=tuple(inputs["input_ids"].shape) if inputs and "input_ids" in inputs else None,
            check_reference=reference_label,
            max_abs_diff_vs_quantized=vs_quantized,
        )
        del work
        info = inspect_checkpoint(tmp)
        report.bytes_on_disk = info.bytes_on_disk
        report.parameters = info.parameters
        report.dtype = info.dtype if target_dtype is None else str(target_dtype).removeprefix("torch.")
        if card:
            write_card(tmp, info, report, card_report)
        report.files = inspect_checkpoint(tmp).files
        replace_dir(tmp, out)
        bar.update(1)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()

    logger.info(
        "exported %s to %r: %d files, %s parameters%s",
        report.kind,
        out.name,
        len(report.files),
        f"{report.parameters:,}" if report.parameters is not None else "?",
        f"; on reload, {report.check_text()}" if report.max_abs_diff is not None else "",
    )
    return report


# --------------------------------------------------------------------------------------------------
# internals


def _check_dtype(dtype: Any, quantization: str | None) -> torch.dtype | None:
    """``None``/``"auto"`` -> ``None``; a float name or torch dtype -> that dtype; anything else raises."""
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
    value = getattr(model.config, "dtype", None) or getattr(model.config, "torch_dtype", None)
    if isinstance(value, str):
        value = getattr(torch, value.removeprefix("torch."), None)
    if isinstance(value, torch.dtype) and str(value).removeprefix("torch.") in _SAVE_DTYPES:
        return value
    return torch.float32


def _transformed_copy(
    model: Any, *, merge: bool, dtype: torch.dtype | None, quantized: bool, inputs: Mapping[str, Any] | None
) -> tuple[Any, list[str], torch.Tensor | None]:
    """A copy of ``model`` with the adapter merged, bnb layers dequantized, pruning permanent, cast to dtype;
    and, for a quantized model and check ``inputs``, the outputs of its exact float32 reference (the base
    dequantized, the adapter not yet merged), computed on the copy before it is merged and cast."""
    work = deepcopy_model(model)
    exact = None
    if quantized:
        if merge:
            work = dequantized_adapter_model(work)
        else:
            dequantize_bnb_(work)
            strip_quantization_(work)
            work.to(torch.float32)
        if inputs is not None:
            exact = model_outputs(work, inputs)[0]
        if merge:
            work = work.merge_and_unload()
    elif merge:
        work = merge_adapter_(work)
    pruned = make_pruning_permanent_(work)
    if dtype is not None:
        work.to(dtype)
        work.config.dtype = dtype
    return work, pruned, exact
