"""Load Hub checkpoints the lightweight way: bitsandbytes 4/8-bit, PEFT adapters, frozen teachers.

Every function here goes through the stock ``from_pretrained`` code path, so a Hub repo id and a
local folder saved with ``save_pretrained`` behave the same. Problems that ``from_pretrained``
reports late or obscurely (unknown task, a typo in a path, an uncached repo while offline, remote
code, quantization or adapter settings that cannot apply) are checked first and reported with the
argument, the value, the reason and the fix (the checks of the source and its config:
:mod:`hf_lite.source_checks`).

>>> from hf_lite import load_model, load_tokenizer
>>> model = load_model("Qwen/Qwen2.5-0.5B", task="causal-lm", quantization="4bit", peft="lora")  # doctest: +SKIP
>>> tokenizer = load_tokenizer("Qwen/Qwen2.5-0.5B")  # doctest: +SKIP
"""

from __future__ import annotations

# First: transformers (training classes) and peft import bitsandbytes, which logs at import.
from hf_lite.logs import install_log_filters

# isort: split
import copy
import logging
import os
import tempfile
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import transformers
from transformers import AutoTokenizer

from hf_lite._utils import did_you_mean
from hf_lite.adapters import (  # noqa: F401 (resolve_peft_config, linear_module_names re-exported)
    attach_adapter,
    check_target_modules,
    enable_checkpointing,
    linear_module_names,
    resolve_peft_config,
)
from hf_lite.gguf import (
    gguf_from_pretrained_kwargs,
    read_gguf_info,
    require_gguf,
    split_gguf_source,
)
from hf_lite.quantization import (  # noqa: F401 (resolve_quantization re-exported)
    check_quantized,
    default_quantized_device_map,
    keep_bnb_layout_trainable_,
    plan_unquantized_modules,
    resolve_quantization,
)
from hf_lite.source_checks import (  # noqa: F401 (check_task, load_checked_config re-exported)
    check_source,
    check_task,
    load_checked_config,
)
from hf_lite.summary import SOURCE_ATTRIBUTE, model_summary
from hf_lite.tasks import TASKS, normalize_task

if TYPE_CHECKING:  # annotations only
    from peft import PeftConfig
    from transformers import BitsAndBytesConfig, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

# Keyword arguments of `from_pretrained` that also decide where the config file comes from.
_HUB_KWARGS = ("cache_dir", "token", "local_files_only", "force_download", "subfolder", "proxies")


def resolve_dtype(dtype: Any) -> Any:
    """Map ``dtype`` (``"auto"``, ``None``, a name such as ``"bf16"``/``"float32"``, or a ``torch.dtype``)
    to what ``from_pretrained(dtype=...)`` accepts.

    >>> import torch; resolve_dtype("bf16") is torch.bfloat16
    True
    """

    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    names = {
        "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
        "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
        "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    }  # fmt: skip
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key in names:
            return names[key]
        raise ValueError(
            f"dtype={dtype!r} is not a floating point dtype{did_you_mean(key, list(names))}. "
            "Use 'auto', 'float32', 'bfloat16', 'float16' or a torch.dtype."
        )
    raise TypeError(f"dtype must be a string, a torch.dtype or None; got {type(dtype).__name__} {dtype!r}.")


def load_model(
    name_or_path: str | os.PathLike,
    task: str = "causal-lm",
    *,
    quantization: str | Mapping[str, Any] | BitsAndBytesConfig | None = None,
    peft: str | Mapping[str, Any] | PeftConfig | None = None,
    dtype: str | torch.dtype | None = "auto",
    device_map: str | Mapping[str, Any] | int | None = None,
    gradient_checkpointing: bool = False,
    trust_remote_code: bool = False,
    revision: str | None = None,
    **from_pretrained_kwargs: Any,
) -> PreTrainedModel:
    """Load a Hub checkpoint (repo id or local folder) for ``task``, optionally 4/8-bit and with an adapter.

    Args:
        name_or_path: Hub repo id (``"org/name"``), a folder written by ``save_pretrained``, or a GGUF file
            (``"model.Q4_K_M.gguf"``, or its folder with ``gguf_file=``): transformers dequantizes it (to
            float32 with ``dtype="auto"``; needs ``pip install "hf-lite[gguf]"``), and the summary says so. With
            ``quantization``, the dequantized weights pass through a temporary safetensors folder first.
        task: One of ``causal-lm``, ``sequence-classification``, ``token-classification``,
            ``seq2seq-lm``, ``base``.
        quantization: ``None``, ``"4bit"`` (NF4 + double quantization), ``"fp4"``, ``"8bit"``, a dict of
            ``BitsAndBytesConfig`` arguments, or a ``BitsAndBytesConfig``.
        peft: ``None``, ``"lora"`` (default LoRA on all linear layers), a dict of ``LoraConfig`` arguments,
            or any ``peft.PeftConfig``. With ``quantization`` too, the base is prepared for k-bit
            training first (QLoRA: norms and head in fp32, input gradients enabled).
        dtype: ``"auto"`` (the checkpoint's dtype), a name such as ``"bf16"``, or a ``torch.dtype``.
        device_map: passed to ``from_pretrained``. For a quantized model on GPUs, ``None`` places the whole
            model on this process's GPU (what DDP under ``accelerate launch`` needs).
        gradient_checkpointing: trade compute for memory (non-reentrant checkpointing).
        trust_remote_code: run model code shipped in the repo. Off unless you have read that code.
        revision: branch, tag or commit of the Hub repo.
        **from_pretrained_kwargs: anything else ``from_pretrained`` takes (``num_labels``, ``token``,
            ``cache_dir``, ``attn_implementation``, ``gguf_file``, ...). Only safetensors (or GGUF) weights are
            loaded unless ``use_safetensors`` says otherwise.

    Returns:
        A ``PreTrainedModel``, or a ``peft.PeftModel`` wrapping one when ``peft`` is given (only the
        adapter, and the heads PEFT keeps for the task, are trainable).

    Example:

    >>> from peft import LoraConfig
    >>> model = load_model("meta-llama/Llama-3.2-1B", quantization="4bit",
    ...                    peft=LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))  # doctest: +SKIP
    >>> print(model_summary(model))  # doctest: +SKIP
    """

    install_log_filters()  # before bitsandbytes is imported: its import and 8-bit matmuls log floods
    task = normalize_task(task)
    if not isinstance(gradient_checkpointing, bool):
        raise TypeError(f"gradient_checkpointing must be True or False; got {gradient_checkpointing!r}.")
    torch_dtype = resolve_dtype(dtype)
    bnb_config = resolve_quantization(quantization, torch_dtype)
    peft_config = resolve_peft_config(peft, task)
    hub_kwargs = {k: from_pretrained_kwargs[k] for k in _HUB_KWARGS if k in from_pretrained_kwargs}
    gguf_source = split_gguf_source(name_or_path, from_pretrained_kwargs.pop("gguf_file", None))
    source, gguf_path = gguf_source or (name_or_path, None)
    if gguf_path is not None and bnb_config is not None:  # bnb cannot quantize while transformers reads GGUF:
        dense = load_model(gguf_path, task, dtype=dtype, **from_pretrained_kwargs)  # dequantize, save, load
        with tempfile.TemporaryDirectory(prefix="hf-lite-gguf-", ignore_cleanup_errors=True) as folder:
            dense.save_pretrained(folder)
            source_note, dense = getattr(dense, SOURCE_ATTRIBUTE), None
            model = load_model(folder, task, quantization=quantization, peft=peft, dtype=dtype, device_map=device_map,
                               gradient_checkpointing=gradient_checkpointing, **from_pretrained_kwargs)  # fmt: skip
        setattr(model.get_base_model() if peft_config is not None else model, SOURCE_ATTRIBUTE, source_note)
        return model
    config = load_checked_config(source, task, trust_remote_code, revision, hub_kwargs, gguf_file=gguf_path)
    from_pretrained_kwargs.update(decoder_overrides(config, task, from_pretrained_kwargs))

    # A GGUF file is parsed by transformers' GGUF reader, never unpickled: the safetensors-only rule is moot.
    weights = gguf_from_pretrained_kwargs(gguf_path) if gguf_path else {"use_safetensors": True}
    kwargs: dict[str, Any] = {**weights, **from_pretrained_kwargs}
    if revision is not None:
        kwargs["revision"] = revision
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    auto_cls = getattr(transformers, TASKS[task])
    if bnb_config is not None:
        if device_map is None:
            device_map = default_quantized_device_map()
        skeleton = build_skeleton(auto_cls, config, from_pretrained_kwargs, trust_remote_code)
        bnb_config, unpackable = plan_unquantized_modules(
            bnb_config, task, skeleton, on_cpu=device_map is None or "cpu" in str(device_map)
        )
        if unpackable:
            logger.warning(
                "4-bit: %d layer(s) stay in full precision because bitsandbytes cannot repack them for its "
                "CPU kernel (out_features not a multiple of 32 or in_features of 64): %s",
                len(unpackable),
                ", ".join(unpackable),
            )
        kwargs["quantization_config"] = bnb_config
    if device_map is not None:
        kwargs["device_map"] = device_map

    model = auto_cls.from_pretrained(str(source), trust_remote_code=trust_remote_code, **kwargs)
    logger.debug("loaded %s (%s) for task %s", type(model).__name__, config.model_type, task)
    if gguf_path is not None:  # for the summary: which quantization the weights were dequantized from
        setattr(model, SOURCE_ATTRIBUTE, read_gguf_info(gguf_path).describe(model.dtype))

    if bnb_config is not None:
        check_quantized(model, bnb_config, source=os.fspath(name_or_path), task=task)
        keep_bnb_layout_trainable_(model)  # bnb's CPU evaluation repacking would break later training
    if peft_config is not None:
        model = attach_adapter(
            model,
            peft_config,
            quantized=bnb_config is not None,
            gradient_checkpointing=gradient_checkpointing,
            default=isinstance(peft, str),
        )
    elif gradient_checkpointing:
        enable_checkpointing(model)

    logger.info("%s", model_summary(model))
    return model


def decoder_overrides(config: Any, task: str, from_pretrained_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``{"is_decoder": True}`` when ``task`` is ``causal-lm`` and ``config`` has an ``is_decoder`` switch that is off.

    BERT-family models (``BertLMHeadModel``, ``RobertaForCausalLM``, ELECTRA, ...) only mask future tokens
    when ``config.is_decoder`` is set; loaded from an encoder checkpoint without it they attend in both
    directions, so a language model trained that way reads the tokens it should predict. An explicit
    ``is_decoder=False`` with ``causal-lm`` is refused.

    >>> from transformers import BertConfig, LlamaConfig
    >>> decoder_overrides(BertConfig(), "causal-lm", {}), decoder_overrides(LlamaConfig(), "causal-lm", {})
    ({'is_decoder': True}, {})
    """
    if task != "causal-lm" or not hasattr(config, "is_decoder"):
        return {}
    if "is_decoder" in from_pretrained_kwargs:
        if from_pretrained_kwargs["is_decoder"] is not True:
            raise ValueError(
                f"is_decoder={from_pretrained_kwargs['is_decoder']!r} with task='causal-lm': a "
                f"{type(config).__name__} model then attends to later tokens, so a causal LM would see the "
                "tokens it predicts. Drop is_decoder (hf-lite sets it to True), or load with task='base' or "
                "'sequence-classification' for a bidirectional encoder."
            )
        return {}
    if config.is_decoder:
        return {}
    logger.info("%s loaded as causal-lm: setting is_decoder=True (causal attention)", config.model_type)
    return {"is_decoder": True}


def build_skeleton(
    auto_cls: Any, config: Any, from_pretrained_kwargs: Mapping[str, Any], trust_remote_code: bool
) -> torch.nn.Module | None:
    """The model ``auto_cls`` builds from ``config`` on the meta device (layer names and shapes, no memory),
    with the config overrides ``from_pretrained`` would apply (``num_labels=...``); ``None`` if it cannot be
    built that way (some remote code)."""
    config = copy.deepcopy(config)
    known = set(config.to_dict()) | {"num_labels"}
    for key, value in from_pretrained_kwargs.items():
        if key in known:
            setattr(config, key, value)
    try:
        with torch.device("meta"):
            return auto_cls.from_config(config, trust_remote_code=trust_remote_code)
    except Exception as err:  # noqa: BLE001 - only an aid to planning; from_pretrained reports real problems
        logger.debug("could not build %s on the meta device: %s", type(config).__name__, err)
        return None


def load_tokenizer(
    name_or_path: str | os.PathLike,
    *,
    padding_side: str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    **from_pretrained_kwargs: Any,
) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a checkpoint, with a pad token guaranteed so batches can be padded.

    When the tokenizer has no pad token, its EOS token is used (the usual choice for decoders: padded
    positions are masked by the attention mask and by ``-100`` labels). A tokenizer with neither gets a
    new ``<pad>`` token; resize the model's embeddings then (``model.resize_token_embeddings(len(tok))``),
    which is logged as a warning. A GGUF source (``"model.gguf"``, or a folder with ``gguf_file=``) gives the
    tokenizer transformers rebuilds from the file's metadata, chat template included.

    >>> tok = load_tokenizer("gpt2")  # doctest: +SKIP
    >>> tok.pad_token == tok.eos_token  # doctest: +SKIP
    True
    """

    if padding_side not in (None, "left", "right"):
        raise ValueError(
            f"padding_side={padding_side!r} must be 'left', 'right' or None (keep the tokenizer's)."
        )
    hub_kwargs = {k: from_pretrained_kwargs[k] for k in _HUB_KWARGS if k in from_pretrained_kwargs}
    gguf_source = split_gguf_source(name_or_path, from_pretrained_kwargs.pop("gguf_file", None))
    if gguf_source is None:
        check_source(name_or_path, revision, hub_kwargs)
    else:  # rebuilt by transformers from the file's metadata (vocabulary, merges, special ids, chat template)
        require_gguf()
        from_pretrained_kwargs["gguf_file"] = gguf_source[1]
    if revision is not None:
        from_pretrained_kwargs["revision"] = revision
    source = gguf_source[0] if gguf_source else str(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(
        source, trust_remote_code=trust_remote_code, **from_pretrained_kwargs
    )
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
            logger.warning(
                "Tokenizer of %s had no pad or eos token; added '<pad>' (vocabulary now %d): call "
                "model.resize_token_embeddings(len(tokenizer)) before training.",
                name_or_path,
                len(tokenizer),
            )
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    return tokenizer


def load_teacher(
    model_or_name: str | os.PathLike | PreTrainedModel,
    task: str = "causal-lm",
    *,
    quantization: str | Mapping[str, Any] | BitsAndBytesConfig | None = None,
    dtype: str | torch.dtype | None = "auto",
    device_map: str | Mapping[str, Any] | int | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    **from_pretrained_kwargs: Any,
) -> PreTrainedModel:
    """Load (or take) a teacher for distillation: evaluation mode, every parameter frozen, dropout off.

    A model object is frozen in place and returned. Dropout probabilities are set to 0 as well as the
    model being put in eval mode, so a stray ``.train()`` (a Trainer switching modes, a user's loop)
    cannot make the teacher's targets noisy. Sources are those of :func:`load_model` (a ``.gguf`` file too).

    >>> teacher = load_teacher("bert-base-uncased", task="sequence-classification", quantization="8bit")  # doctest: +SKIP
    >>> any(p.requires_grad for p in teacher.parameters())  # doctest: +SKIP
    False
    """

    if isinstance(model_or_name, torch.nn.Module):
        ignored = {"quantization": quantization, "revision": revision, **from_pretrained_kwargs}
        ignored = {k: v for k, v in ignored.items() if v is not None}
        if ignored:
            raise ValueError(
                f"load_teacher got a model object and loading options {sorted(ignored)}; those only apply when "
                "loading from a repo id or folder. Pass the id instead, or drop the options."
            )
        model = model_or_name
    else:
        model = load_model(
            model_or_name,
            task,
            quantization=quantization,
            dtype=dtype,
            device_map=device_map,
            trust_remote_code=trust_remote_code,
            revision=revision,
            **from_pretrained_kwargs,
        )
    return freeze(model)


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Put ``model`` in eval mode, stop gradients to every parameter and zero every dropout probability.

    >>> import torch
    >>> m = freeze(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)))
    >>> m.training, m[1].p, m[0].weight.requires_grad
    (False, 0.0, False)
    """

    model.eval()
    model.requires_grad_(False)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
    config = getattr(model, "config", None)
    if config is not None:
        # Attention dropout in transformers reads the config (`self.attention_dropout` copied at init, or the
        # config at call time in some models): zero the config fields too.
        for key in (
            "attention_dropout",
            "attention_probs_dropout_prob",
            "hidden_dropout_prob",
            "dropout",
            "hidden_dropout",
            "resid_pdrop",
            "attn_pdrop",
            "embd_pdrop",
            "classifier_dropout",
        ):
            if isinstance(getattr(config, key, None), float):
                setattr(config, key, 0.0)
        for module in model.modules():
            if isinstance(getattr(module, "attention_dropout", None), float):
                module.attention_dropout = 0.0
    return model
