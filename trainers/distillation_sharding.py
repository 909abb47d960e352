"""The teacher of a distillation run under a sharding engine: sharded for inference, frozen, never trained or saved.

``accelerator.prepare_model(teacher, evaluation_mode=True)`` only moves a model to the device under FSDP2 and
DeepSpeed (accelerate 1.16 shards models in ``accelerator.prepare(model, optimizer)``), so every process would
hold the whole teacher: the case sharding is for (a 7B teacher, a 1B student) runs out of memory. Here:

- **FSDP2** (``fsdp_version: 2``): the teacher is sharded with accelerate's own ``fsdp2_prepare_model`` (the
  config's wrap policy, mixed precision, offload, ``cpu_ram_efficient_loading``), its parameters frozen and in
  ``eval()``. The plugin's wrap policy is restored afterwards: accelerate resolves it from the first model it
  sees, and a teacher of another family (Qwen teacher, Llama student) would otherwise leave the student's
  blocks unwrapped.
- **DeepSpeed ZeRO-3**: the teacher becomes an inference-only DeepSpeed engine of the run's ZeRO-3 config
  (no optimizer, no scheduler); ZeRO stage 1/2 do not shard parameters, so the teacher is only moved.
- anything else: ``prepare_model(teacher, evaluation_mode=True)`` as before.

The teacher is not the Trainer's model, so it is neither given to the optimizer nor written by ``save_model``
(which saves ``trainer.model`` only; under FSDP2 ``fsdp_state_dict_type: FULL_STATE_DICT`` makes that a plain
checkpoint). :func:`sharding_engine` names the engine for error messages.

>>> from types import SimpleNamespace
>>> sharding_engine(SimpleNamespace(is_fsdp2=False, state=SimpleNamespace(deepspeed_plugin=None)))
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = [
    "sharding_engine",
    "unsharded_class",
    "prepare_teacher",
    "shard_teacher_fsdp2",
    "deepspeed_teacher",
]


def sharding_engine(accelerator: Any) -> str | None:
    """``"FSDP2"``, ``"FSDP"`` (version 1), ``"DeepSpeed ZeRO-3"`` or ``None`` (parameters not sharded)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if getattr(accelerator, "is_fsdp2", False):
        return "FSDP2"
    if getattr(accelerator.state, "fsdp_plugin", None) is not None:
        return "FSDP"
    if plugin is not None and getattr(plugin, "zero_stage", None) == 3:
        return "DeepSpeed ZeRO-3"
    return None


def unsharded_class(model: nn.Module) -> type:
    """The model's class before ``fully_shard``, which swaps it in place for ``FSDP<Name>(FSDPModule, <Name>)``
    (so ``type(model) is LlamaForCausalLM`` stops holding); any other model's own class.

    >>> unsharded_class(nn.Linear(2, 2)).__name__
    'Linear'
    """
    cls = type(model)
    if torch.distributed.is_available():
        from torch.distributed.fsdp import FSDPModule

        if issubclass(cls, FSDPModule) and len(cls.__bases__) == 2 and cls.__bases__[0] is FSDPModule:
            return cls.__bases__[1]
    return cls


def _freeze(model: nn.Module) -> nn.Module:
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval()


def shard_teacher_fsdp2(accelerator: Any, teacher: nn.Module) -> nn.Module:
    """``teacher`` sharded by accelerate's ``fsdp2_prepare_model`` with the run's FSDP2 plugin, frozen, in eval.

    A collective: every process calls it with its copy of the teacher (with ``cpu_ram_efficient_loading`` the
    main process's weights are broadcast). The plugin's wrap policy is left as it was found.
    """
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    plugin = accelerator.state.fsdp_plugin
    saved = (plugin.auto_wrap_policy, plugin.transformer_cls_names_to_wrap)
    try:
        teacher = fsdp2_prepare_model(accelerator, _freeze(teacher))
    finally:
        plugin.auto_wrap_policy, plugin.transformer_cls_names_to_wrap = saved
    return _freeze(teacher)


def deepspeed_teacher(accelerator: Any, teacher: nn.Module) -> Any:
    """``teacher`` as an inference-only DeepSpeed engine of the run's ZeRO-3 config (its parameters partitioned
    over the processes, gathered layer by layer in forward). Needs ``pip install deepspeed``."""
    try:
        import deepspeed
    except ImportError as error:
        raise ImportError(
            "A distillation teacher under DeepSpeed ZeRO-3 is sharded by DeepSpeed: pip install deepspeed."
        ) from error
    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    for key in ("optimizer", "scheduler", "train_batch_size"):  # nothing to train; the batch size is derived
        config.pop(key, None)
    hidden = getattr(getattr(teacher, "config", None), "hidden_size", None) or 1024
    zero = dict(config.get("zero_optimization", {}), stage=3)
    # Sized to the teacher as accelerate sizes them for the student (which fills "auto" for it only).
    sizes = {
        "reduce_bucket_size": hidden * hidden,
        "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
        "stage3_param_persistence_threshold": 10 * hidden,
    }
    zero.update({key: value for key, value in sizes.items() if zero.get(key, "auto") == "auto"})
    config["zero_optimization"] = zero
    mixed = getattr(accelerator, "mixed_precision", "no")
    for key in ("fp16", "bf16"):
        if isinstance(config.get(key), dict) and config[key].get("enabled") == "auto":
            config[key]["enabled"] = mixed == key
    config = _drop_auto(config)  # any other "auto" (clipping, accumulation): DeepSpeed's default
    config.setdefault("train_micro_batch_size_per_gpu", 1)
    engine, *_ = deepspeed.initialize(model=_freeze(teacher), config=config)
    engine.module.eval()
    return engine


def _drop_auto(config: dict) -> dict:
    return {
        key: _drop_auto(value) if isinstance(value, dict) else value
        for key, value in config.items()
        if value != "auto"
    }


def prepare_teacher(accelerator: Any, teacher: nn.Module) -> nn.Module:
    """The teacher prepared for the run's engine in evaluation mode (see the module docstring).

    >>> from types import SimpleNamespace
    >>> accelerator = SimpleNamespace(is_fsdp2=False, state=SimpleNamespace(deepspeed_plugin=None),
    ...                               prepare_model=lambda model, evaluation_mode: model)
    >>> teacher = prepare_teacher(accelerator, nn.Linear(2, 2))
    >>> teacher.training, teacher.weight.requires_grad
    (False, False)
    """
    engine = sharding_engine(accelerator)
    if engine == "FSDP2":
        return shard_teacher_fsdp2(accelerator, teacher)
    if engine == "DeepSpeed ZeRO-3":
        return deepspeed_teacher(accelerator, teacher)
    return _freeze(accelerator.prepare_model(_freeze(teacher), evaluation_mode=True))
