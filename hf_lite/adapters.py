"""PEFT adapters: what a ``peft=`` value means, which layers an adapter can target, attaching it.

>>> import torch
>>> linear_module_names(torch.nn.Sequential(torch.nn.Linear(2, 2)))
['0']
"""

from __future__ import annotations

import copy
import importlib.util
import logging
from collections.abc import Mapping
from typing import Any

import peft as peft_lib
import torch
from peft import PeftConfig, get_peft_model, prepare_model_for_kbit_training
from peft.tuners.tuners_utils import check_target_module_exists
from transformers.pytorch_utils import Conv1D

from hf_lite.heads import is_head
from hf_lite.tasks import PEFT_TASK_TYPES, normalize_task

logger = logging.getLogger(__name__)


#: What ``peft="lora"`` means. On models with fused MoE experts the dropout becomes 0 (see :func:`attach_adapter`).
DEFAULT_LORA: dict[str, Any] = {
    "r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "target_modules": "all-linear",
}


def resolve_peft_config(peft: str | Mapping[str, Any] | PeftConfig | None, task: str) -> PeftConfig | None:
    """Turn ``peft`` into a ``peft.PeftConfig`` whose ``task_type`` matches ``task``.

    ``"lora"`` is a default LoRA: rank 16, alpha 32, dropout 0.05 on every linear layer except the heads
    and their transforms of :mod:`hf_lite.heads` (``target_modules="all-linear"``, as QLoRA found necessary
    to match full fine-tuning). A dict
    with a ``peft_type`` key goes to ``peft.get_peft_config``, any other dict to ``LoraConfig``.

    >>> resolve_peft_config("lora", "causal-lm").r
    16
    """
    if peft is None or peft is False:
        return None

    task = normalize_task(task)
    task_type = PEFT_TASK_TYPES[task]
    if isinstance(peft, str):
        if peft.strip().lower() != "lora":
            raise ValueError(
                f"peft={peft!r} is not a known shorthand. Use 'lora' for the default LoRA, a dict of "
                "LoraConfig arguments, or a peft.PeftConfig instance."
            )
        return peft_lib.LoraConfig(**DEFAULT_LORA, task_type=task_type)
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


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Names of the layers a LoRA adapter can target (Linear, transformers Conv1D and their bnb versions).

    >>> import torch
    >>> linear_module_names(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()))
    ['0']
    """

    classes: tuple[type, ...] = (torch.nn.Linear, Conv1D)
    if importlib.util.find_spec("bitsandbytes") is not None:
        import bitsandbytes as bnb

        classes += (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    return [n for n, m in model.named_modules() if isinstance(m, classes)]


def check_target_modules(model: torch.nn.Module, peft_config: Any) -> None:
    """Refuse adapter targets that match no layer, listing the layer names that exist."""

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


def enable_checkpointing(model: Any) -> None:
    # transformers 5.23 renamed gradient checkpointing to activation checkpointing (old name deprecated).
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def adapted_parameters(model: torch.nn.Module, peft_config: Any) -> list[str]:
    """Parameters (not layers) ``peft_config`` will adapt, which PEFT does with ``lora.ParamWrapper``: its
    ``target_parameters``, plus those PEFT's transformers-5 conversion adds for fused MoE experts (``all-linear``
    or ``w1``/``w3`` on Mixtral become ``experts.gate_up_proj``, ...).

    >>> import torch, peft
    >>> adapted_parameters(torch.nn.Linear(2, 2), peft.LoraConfig(target_parameters=["weight"]))
    ['weight']
    """
    probe = copy.deepcopy(peft_config)
    try:
        from peft.utils.transformers_weight_conversion import convert_peft_config_for_transformers
    except ImportError:  # pragma: no cover - a PEFT without the transformers-5 conversion
        pass
    else:
        convert_peft_config_for_transformers(probe, model=model, conversions=None)
    return sorted(getattr(probe, "target_parameters", None) or [])


def attach_adapter(
    model: Any, peft_config: Any, *, quantized: bool, gradient_checkpointing: bool, default: bool = False
) -> Any:
    """Wrap ``model`` in ``peft_config``'s adapter (after k-bit preparation when ``quantized``).

    ``default`` says ``peft_config`` is the ``peft="lora"`` shorthand: its dropout is then set to 0 on a model
    with fused MoE experts, which PEFT adapts only without dropout; a config the user wrote is refused
    there instead, with the fix.
    """

    check_target_modules(model, peft_config)
    # `get_peft_model` rewrites `target_modules` of the config it is given (e.g. 'all-linear' -> names).
    peft_config = copy.deepcopy(peft_config)
    targets = getattr(peft_config, "target_modules", None)
    if (
        isinstance(targets, str)
        and targets.lower() == "all-linear"
        and not getattr(peft_config, "exclude_modules", None)
    ):
        # Heads and their transforms (hf_lite.heads) are not adapted: PEFT trains classifier heads fully
        # (modules_to_save, which matches by suffix: 'classifier' also takes DistilBERT's pre_classifier,
        # and a layer cannot be both), and 'all-linear' itself only leaves the output layer out.
        peft_config.exclude_modules = [n for n in linear_module_names(model) if is_head(n)] or None
    params = adapted_parameters(model, peft_config)
    if params and getattr(peft_config, "lora_dropout", 0):
        if not default:
            raise ValueError(
                f"peft lora_dropout={peft_config.lora_dropout} cannot apply to {type(model).__name__}: the adapter "
                f"reaches parameters ({', '.join(params)}; fused MoE experts), which PEFT adapts with "
                "lora.ParamWrapper, and that has no dropout. Pass lora_dropout=0, or keep those parameters out "
                "(target_modules without the experts, e.g. ['q_proj', 'k_proj', 'v_proj', 'o_proj'])."
            )
        logger.info(
            "peft='lora' on %s: lora_dropout 0 instead of %s, since PEFT adapts its parameters %s (fused MoE "
            "experts) only without dropout.",
            type(model).__name__,
            peft_config.lora_dropout,
            ", ".join(params),
        )
        peft_config.lora_dropout = 0.0
    if quantized:
        # QLoRA: layer norms and the head in fp32, input embeddings' outputs require grad so that
        # gradients reach the adapters through frozen quantized layers (and through checkpointing).
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif gradient_checkpointing:
        enable_checkpointing(model)
        model.enable_input_require_grads()
    try:
        return get_peft_model(model, peft_config)
    except ValueError as err:
        if targets or getattr(peft_config, "target_parameters", None):
            raise
        # PEFT falls back to a per-model-type list of layer names, which many families lack (Phi3, DistilBERT,
        # ModernBERT, Qwen2-MoE) or no longer match (Mixtral's fused experts); its error names neither.
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        raise ValueError(
            f"peft: a {type(peft_config).__name__} without target_modules cannot adapt {type(model).__name__} "
            f"(model_type={model_type!r}): PEFT has no default list of layers that fits it ({err}). Pass "
            "target_modules='all-linear' (what peft='lora' uses: every linear layer except the heads) or a list "
            "of layer names, e.g. {'r': 8, 'target_modules': 'all-linear'}."
        ) from err
