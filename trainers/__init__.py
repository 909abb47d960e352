"""The transformers-facing layer of hf-lite: ``Trainer`` subclasses, their config dataclasses and
``TrainerCallback``s. Imported lazily, like ``hf_lite``, so ``import trainers`` stays fast.

>>> import trainers
>>> sorted(trainers.__all__)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it (filled in as trainers land)
_LAZY: dict[str, str] = {
    "DistillationConfig": "trainers.distillation_config",
    "DistillationTrainer": "trainers.distillation_trainer",
    "FinetuneTrainer": "trainers.finetune_trainer",
    "check_distributed_launch": "trainers.finetune_trainer",
    "resolve_layer_map": "trainers.distillation_config",
    "PruningCallback": "trainers.pruning_callback",
    "PruningConfig": "trainers.pruning_config",
    "StructuralPruningCallback": "trainers.structural_callback",
    "StructuralPruningConfig": "trainers.structural_config",
    "shrink_like_checkpoint": "trainers._structural_shrink",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trainers' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
