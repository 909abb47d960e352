"""Load Hub checkpoints the lightweight way: bitsandbytes 4/8-bit, PEFT adapters, frozen teachers.

Every function here goes through the stock ``from_pretrained`` code path, so a Hub repo id and a
local folder saved with ``save_pretrained`` behave the same. Problems that ``from_pretrained``
reports late or obscurely (unknown task, a typo in a path, an uncached repo while offline, remote
code, quantization or adapter settings that cannot apply) are checked first and reported with the
argument, the value, the reason and the fix.

>>> from hf_lite import load_model, load_tokenizer
>>> model = load_model("Qwen/Qwen2.5-0.5B", task="causal-lm", quantization="4bit", peft="lora")  # doctest: +SKIP
>>> tokenizer = load_tokenizer("Qwen/Qwen2.5-0.5B")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_lite._utils import did_you_mean
from hf_lite.tasks import PEFT_TASK_TYPES, TASK_ALIASES, TASKS, normalize_task  # noqa: F401 (re-exported)

if TYPE_CHECKING:  # imported lazily at call time so that `import hf_lite` stays fast
    import torch
    from peft import PeftConfig
    from transformers import BitsAndBytesConfig, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

_QUANT_ALIASES = {
    "4bit": "nf4",
    "int4": "nf4",
    "nf4": "nf4",
    "fp4": "fp4",
    "8bit": "int8",
    "int8": "int8",
    "llm.int8": "int8",
}
# Keyword arguments of `from_pretrained` that also decide where the config file comes from.
_HUB_KWARGS = ("cache_dir", "token", "local_files_only", "force_download", "subfolder", "proxies")

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
    from transformers import BitsAndBytesConfig

    _require_bitsandbytes(quantization)
    if isinstance(quantization, BitsAndBytesConfig):
        return quantization
    if isinstance(quantization, Mapping):
        import inspect

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
        bnb_4bit_compute_dtype=_compute_dtype(dtype),
    )


def resolve_dtype(dtype: Any) -> Any:
    """Map ``dtype`` (``"auto"``, ``None``, a name such as ``"bf16"``/``"float32"``, or a ``torch.dtype``)
    to what ``from_pretrained(dtype=...)`` accepts.

    >>> import torch; resolve_dtype("bf16") is torch.bfloat16
    True
    """
    import torch

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


def resolve_peft_config(peft: str | Mapping[str, Any] | PeftConfig | None, task: str) -> PeftConfig | None:
    """Turn ``peft`` into a ``peft.PeftConfig`` whose ``task_type`` matches ``task``.

    ``"lora"`` is a default LoRA: rank 16, alpha 32, dropout 0.05 on every linear layer except the output
    head (``target_modules="all-linear"``, as QLoRA found necessary to match full fine-tuning). A dict
    with a ``peft_type`` key goes to ``peft.get_peft_config``, any other dict to ``LoraConfig``.

    >>> resolve_peft_config("lora", "causal-lm").r
    16
    """
    if peft is None or peft is False:
        return None
    import peft as peft_lib

    task = normalize_task(task)
    task_type = PEFT_TASK_TYPES[task]
    if isinstance(peft, str):
        if peft.strip().lower() != "lora":
            raise ValueError(
                f"peft={peft!r} is not a known shorthand. Use 'lora' for the default LoRA, a dict of "
                "LoraConfig arguments, or a peft.PeftConfig instance."
            )
        return peft_lib.LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type=task_type
        )
    if isinstance(peft, Mapping):
        kwargs = dict(peft)
        kwargs.setdefault("task_type", task_type)
        try:
            if "peft_type" in kwargs:
                return peft_lib.get_peft_config(kwargs)
            return peft_lib.LoraConfig(**kwargs)
        except (TypeError, ValueError, KeyError) as err:
            raise ValueError(
                f"peft={dict(peft)!r} is not a valid adapter config: {err}. "
                "Use the keyword arguments of peft.LoraConfig (or add 'peft_type' for another PEFT method)."
            ) from err
    if isinstance(peft, peft_lib.PeftConfig):
        if peft.task_type is None:
            # Copy so the caller's config object is not changed behind their back.
            peft = copy.copy(peft)
            peft.task_type = task_type
        elif str(peft.task_type) != task_type:
            logger.warning(
                "peft.task_type=%s while task=%r expects %s; keeping yours.", peft.task_type, task, task_type
            )
        return peft
    raise TypeError(
        f"peft must be None, 'lora', a dict or a peft.PeftConfig; got {type(peft).__name__} {peft!r}."
    )


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
        name_or_path: Hub repo id (``"org/name"``) or a folder written by ``save_pretrained``.
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
            ``cache_dir``, ``attn_implementation``, ...). Only safetensors weights are loaded unless
            ``use_safetensors`` says otherwise.

    Returns:
        A ``PreTrainedModel``, or a ``peft.PeftModel`` wrapping one when ``peft`` is given (only the
        adapter, and the heads PEFT keeps for the task, are trainable).

    Example:

    >>> from peft import LoraConfig
    >>> model = load_model("meta-llama/Llama-3.2-1B", quantization="4bit",
    ...                    peft=LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))  # doctest: +SKIP
    >>> print(model_summary(model))  # doctest: +SKIP
    """
    import transformers

    task = normalize_task(task)
    if not isinstance(gradient_checkpointing, bool):
        raise TypeError(f"gradient_checkpointing must be True or False; got {gradient_checkpointing!r}.")
    torch_dtype = resolve_dtype(dtype)
    bnb_config = resolve_quantization(quantization, torch_dtype)
    peft_config = resolve_peft_config(peft, task)
    hub_kwargs = {k: from_pretrained_kwargs[k] for k in _HUB_KWARGS if k in from_pretrained_kwargs}
    config = load_checked_config(name_or_path, task, trust_remote_code, revision, hub_kwargs)

    kwargs: dict[str, Any] = {"use_safetensors": True, **from_pretrained_kwargs}
    if revision is not None:
        kwargs["revision"] = revision
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    if bnb_config is not None:
        bnb_config = _keep_heads_unquantized(bnb_config, task)
        kwargs["quantization_config"] = bnb_config
        if device_map is None:
            device_map = _default_quantized_device_map()
    if device_map is not None:
        kwargs["device_map"] = device_map

    auto_cls = getattr(transformers, TASKS[task])
    model = auto_cls.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code, **kwargs)
    logger.debug("loaded %s (%s) for task %s", type(model).__name__, config.model_type, task)

    if bnb_config is not None:
        _check_quantized(model, bnb_config)
    if peft_config is not None:
        model = _attach_adapter(model, peft_config, quantized=bnb_config is not None,
                                gradient_checkpointing=gradient_checkpointing)  # fmt: skip
    elif gradient_checkpointing:
        _enable_checkpointing(model)
    from hf_lite.summary import model_summary

    logger.info("%s", model_summary(model))
    return model


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
    which is logged as a warning.

    >>> tok = load_tokenizer("gpt2")  # doctest: +SKIP
    >>> tok.pad_token == tok.eos_token  # doctest: +SKIP
    True
    """
    from transformers import AutoTokenizer

    if padding_side not in (None, "left", "right"):
        raise ValueError(f"padding_side={padding_side!r} must be 'left', 'right' or None (keep the tokenizer's).")
    hub_kwargs = {k: from_pretrained_kwargs[k] for k in _HUB_KWARGS if k in from_pretrained_kwargs}
    _check_source(name_or_path, revision, hub_kwargs)
    if revision is not None:
        from_pretrained_kwargs["revision"] = revision
    tokenizer = AutoTokenizer.from_pretrained(
        str(name_or_path), trust_remote_code=trust_remote_code, **from_pretrained_kwargs
    )
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
            logger.warning(
                "Tokenizer of %s had no pad or eos token; added '<pad>' (vocabulary now %d): call "
                "model.resize_token_embeddings(len(tokenizer)) before training.", name_or_path, len(tokenizer)
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
    cannot make the teacher's targets noisy.

    >>> teacher = load_teacher("bert-base-uncased", task="sequence-classification", quantization="8bit")  # doctest: +SKIP
    >>> any(p.requires_grad for p in teacher.parameters())  # doctest: +SKIP
    False
    """
    import torch

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
            model_or_name, task, quantization=quantization, dtype=dtype, device_map=device_map,
            trust_remote_code=trust_remote_code, revision=revision, **from_pretrained_kwargs,
        )  # fmt: skip
    return freeze(model)


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Put ``model`` in eval mode, stop gradients to every parameter and zero every dropout probability.

    >>> import torch
    >>> m = freeze(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)))
    >>> m.training, m[1].p, m[0].weight.requires_grad
    (False, 0.0, False)
    """
    import torch

    model.eval()
    model.requires_grad_(False)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
    config = getattr(model, "config", None)
    if config is not None:
        # Attention dropout in transformers reads the config (`self.attention_dropout` copied at init, or the
        # config at call time in some models): zero the config fields too.
        for key in ("attention_dropout", "attention_probs_dropout_prob", "hidden_dropout_prob", "dropout",
                    "hidden_dropout", "resid_pdrop", "attn_pdrop", "embd_pdrop", "classifier_dropout"):  # fmt: skip
            if isinstance(getattr(config, key, None), float):
                setattr(config, key, 0.0)
        for module in model.modules():
            if isinstance(getattr(module, "attention_dropout", None), float):
                module.attention_dropout = 0.0
    return model


# --------------------------------------------------------------------------------------------------
# checks


def _require_bitsandbytes(quantization: Any) -> None:
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(
            f"quantization={quantization!r} needs bitsandbytes, which is not installed: {BNB_INSTALL}"
        )


def _compute_dtype(dtype: Any) -> Any:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _default_quantized_device_map() -> Any:
    """bitsandbytes models cannot be moved after loading: put the whole model on this process's device."""
    import torch

    if torch.cuda.is_available():
        from accelerate import PartialState

        return {"": PartialState().local_process_index}
    return None  # CPU: from_pretrained places everything on the CPU already


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith(("/", "./", "../", "~", ".\\"))
        or name.count("/") > 1
        or os.sep != "/" and os.sep in name
        or name in (".", "..")
    )


def _check_source(name_or_path: Any, revision: str | None, hub_kwargs: dict[str, Any]) -> str:
    """Fail early, and clearly, when ``name_or_path`` is neither a checkpoint folder nor a loadable repo id."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(
            f"name_or_path must be a Hub repo id or a folder path (str or os.PathLike); got "
            f"{type(name_or_path).__name__}. To use a model object you already have, pass it directly "
            "where that is accepted (e.g. load_teacher(model))."
        )
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "tokenizer_config.json").is_file():
            raise ValueError(
                f"name_or_path={name!r} is a folder without config.json: not a checkpoint saved with "
                "save_pretrained. Point at the folder that holds config.json and the *.safetensors files."
            )
        return name
    if path.exists():
        raise ValueError(f"name_or_path={name!r} is a file; pass the checkpoint folder that contains it.")
    if isinstance(name_or_path, Path) or _looks_like_path(name):
        raise FileNotFoundError(
            f"name_or_path={name!r} looks like a local path but does not exist (resolved to {path.absolute()}). "
            "Check the path, or pass a Hub repo id such as 'org/model'."
        )
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError as err:
        raise ValueError(
            f"name_or_path={name!r} is neither an existing folder nor a valid Hub repo id ({err}). "
            "Repo ids look like 'org/model'."
        ) from err
    return name


def load_checked_config(
    name_or_path: Any, task: str, trust_remote_code: bool, revision: str | None, hub_kwargs: dict[str, Any]
) -> Any:
    """Read config.json (no code runs), then check remote code, architecture and task support."""
    from huggingface_hub import is_offline_mode
    from transformers import AutoConfig, PretrainedConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    name = _check_source(name_or_path, revision, hub_kwargs)
    rev_kwargs = {"revision": revision} if revision is not None else {}
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(name, **rev_kwargs, **hub_kwargs)
    except OSError as err:
        if is_offline_mode() or hub_kwargs.get("local_files_only"):
            raise OSError(
                f"name_or_path={name!r} is not in the local Hugging Face cache"
                f"{f' at revision {revision!r}' if revision else ''} and the Hub is offline "
                "(HF_HUB_OFFLINE=1 or local_files_only=True). Download it while online "
                f"(`hf download {name}`), point HF_HOME at a cache that has it, or pass a local folder."
            ) from err
        raise OSError(
            f"name_or_path={name!r} could not be resolved on the Hub: {err}. Check the repo id and revision; "
            "for a private or gated repo log in (`hf auth login`) or pass token=..."
        ) from err

    model_type = config_dict.get("model_type")
    auto_map = config_dict.get("auto_map") or {}
    if model_type not in CONFIG_MAPPING:
        if auto_map and not trust_remote_code:
            raise ValueError(
                f"name_or_path={name!r} has model_type={model_type!r}, which transformers does not implement: "
                f"the repo ships its own model code (auto_map {sorted(auto_map)}). Pass trust_remote_code=True "
                "only after reading that code, since it runs on your machine with your permissions."
            )
        if not auto_map:
            import transformers

            raise ValueError(
                f"name_or_path={name!r} has model_type={model_type!r}, unknown to transformers "
                f"{transformers.__version__} and without custom code. Upgrade transformers, or check config.json."
            )
    config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code, **rev_kwargs, **hub_kwargs)
    if model_type in CONFIG_MAPPING:
        import transformers

        mapping = getattr(transformers, TASKS[task])._model_mapping
        if type(config) not in mapping:
            supported = [t for t, cls in TASKS.items() if type(config) in getattr(transformers, cls)._model_mapping]
            raise ValueError(
                f"task={task!r} is not available for model_type={model_type!r} ({name!r}): transformers has no "
                f"{TASKS[task]} class for it. Tasks this architecture supports: {', '.join(supported) or 'none'}."
            )
    return config


# Task heads that stay in full precision: PEFT trains them (modules_to_save), and an 8/4-bit head
# cannot take gradients. transformers' default skip list misses them (it strips ".weight" from the last
# parameter name, which is "classifier.bias" for BERT-style classifiers).
_HEAD_MODULES = ["lm_head", "classifier", "score", "qa_outputs"]


def _keep_heads_unquantized(bnb_config: Any, task: str) -> Any:
    if task not in ("sequence-classification", "token-classification") or bnb_config.llm_int8_skip_modules:
        return bnb_config
    bnb_config = copy.deepcopy(bnb_config)
    bnb_config.llm_int8_skip_modules = list(_HEAD_MODULES)
    return bnb_config


def _bnb_modules(model: torch.nn.Module) -> list[str]:
    import bitsandbytes as bnb

    return [n for n, m in model.named_modules() if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))]


def _check_quantized(model: torch.nn.Module, bnb_config: Any) -> None:
    if not _bnb_modules(model):
        bits = "4bit" if bnb_config.load_in_4bit else "8bit"
        raise ValueError(
            f"quantization={bits!r}: bitsandbytes quantized no layer of {type(model).__name__}. It only wraps "
            "torch.nn.Linear (and transformers Conv1D) layers, and this model has none outside the skipped "
            f"modules ({bnb_config.llm_int8_skip_modules or 'none given'}). Load it without quantization, "
            "or skip fewer modules."
        )


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Names of the layers a LoRA adapter can target (Linear, transformers Conv1D and their bnb versions).

    >>> import torch
    >>> linear_module_names(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()))
    ['0']
    """
    import torch
    from transformers.pytorch_utils import Conv1D

    classes: tuple[type, ...] = (torch.nn.Linear, Conv1D)
    if importlib.util.find_spec("bitsandbytes") is not None:
        import bitsandbytes as bnb

        classes += (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    return [n for n, m in model.named_modules() if isinstance(m, classes)]


def check_target_modules(model: torch.nn.Module, peft_config: Any) -> None:
    """Refuse adapter targets that match no layer, listing the layer names that exist."""
    from peft.tuners.tuners_utils import check_target_module_exists

    targets = getattr(peft_config, "target_modules", None)
    if targets is None or (isinstance(targets, str) and targets.lower() == "all-linear"):
        return
    names = [n for n, _ in model.named_modules() if n]
    if any(check_target_module_exists(peft_config, n) for n in names):
        return
    leaves = sorted({n.rsplit(".", 1)[-1] for n in linear_module_names(model)})
    raise ValueError(
        f"peft target_modules={sorted(targets) if not isinstance(targets, str) else targets!r} match no module "
        f"of {type(model).__name__}. Linear layers it has: {', '.join(leaves)}. Use some of those names, "
        "or target_modules='all-linear'."
    )


def _enable_checkpointing(model: Any) -> None:
    # transformers 5.23 renamed gradient checkpointing to activation checkpointing (old name deprecated).
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _attach_adapter(model: Any, peft_config: Any, *, quantized: bool, gradient_checkpointing: bool) -> Any:
    from peft import get_peft_model, prepare_model_for_kbit_training

    check_target_modules(model, peft_config)
    if quantized:
        # QLoRA: layer norms and the head in fp32, input embeddings' outputs require grad so that
        # gradients reach the adapters through frozen quantized layers (and through checkpointing).
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif gradient_checkpointing:
        _enable_checkpointing(model)
        model.enable_input_require_grads()
    # `get_peft_model` rewrites `target_modules` of the config it is given (e.g. 'all-linear' -> names).
    peft_config = copy.deepcopy(peft_config)
    targets = getattr(peft_config, "target_modules", None)
    if (
        isinstance(targets, str)
        and targets.lower() == "all-linear"
        and str(peft_config.task_type) in ("SEQ_CLS", "TOKEN_CLS")
        and not getattr(peft_config, "exclude_modules", None)
    ):
        # PEFT trains classification heads fully (modules_to_save) but its 'all-linear' only leaves the
        # head out for SEQ_CLS; a token-classification head would get both and PEFT refuses.
        peft_config.exclude_modules = [h for h in _HEAD_MODULES if hasattr(model, h)] or None
    return get_peft_model(model, peft_config)
