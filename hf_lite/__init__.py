"""hf-lite: make Hugging Face Hub checkpoints lighter to fine-tune and to serve.

Distillation, pruning, bitsandbytes 4/8-bit quantization and PEFT adapters on top of the ordinary
transformers ``Trainer``; compressed models stay ordinary checkpoints that load with stock
``from_pretrained``.

Submodules are imported on first use, so ``import hf_lite`` does not import torch or transformers.

>>> import hf_lite
>>> model = hf_lite.load_model("Qwen/Qwen2.5-0.5B", quantization="4bit", peft="lora")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily by __getattr__)
_LAZY: dict[str, str] = {
    "TASKS": "hf_lite.tasks",
    "load_model": "hf_lite.loading",
    "load_tokenizer": "hf_lite.loading",
    "load_teacher": "hf_lite.loading",
    "freeze": "hf_lite.loading",
    "linear_module_names": "hf_lite.adapters",
    "resolve_quantization": "hf_lite.quantization",
    "resolve_peft_config": "hf_lite.adapters",
    "ModelSummary": "hf_lite.summary",
    "model_summary": "hf_lite.summary",
    "init_student_from_teacher": "hf_lite.student",
    "export": "hf_lite.exporting",
    "ExportReport": "hf_lite.exporting",
    "unpack_bnb_cpu_weights_": "hf_lite.exporting",
    "push_to_hub": "hf_lite.hub",
    "PushResult": "hf_lite.hub",
    "build_model_card": "hf_lite.card",
    "CompressionSummary": "hf_lite.card",
    "load_data": "hf_lite.data",
    "tokenize_data": "hf_lite.data",
    "augment_data": "hf_lite.data",
    "evaluate_model": "hf_lite.evaluation",
    "EvaluationResult": "hf_lite.evaluation",
    "classification_metrics": "hf_lite.evaluation",
    "perplexity": "hf_lite.evaluation",
    "count_parameters": "hf_lite.evaluation",
    "measure_latency": "hf_lite.evaluation",
    "measure_latency_side_by_side": "hf_lite.evaluation",
    "machine_info": "hf_lite.evaluation",
    "CompressionReport": "hf_lite.report",
    "ReportRow": "hf_lite.report",
    "Recipe": "hf_lite.app.recipe",
    "run_recipe": "hf_lite.app.runner",
    "precompute_teacher_cache": "hf_lite.teacher_cache",
    "load_teacher_cache": "hf_lite.teacher_cache",
    "generate_teacher_completions": "hf_lite.teacher_cache",
}

# subpackages/modules reachable as attributes (``hf_lite.losses.forward_kl_loss``), imported on first use
_SUBMODULES = (
    "adapters", "app", "card", "data", "evaluation", "exporting", "gguf", "hub", "loading", "losses", "metrics", "pruning",
    "quantization", "report", "student", "summary", "tasks", "teacher_cache", "testing",
)  # fmt: skip

# names that moved: old top-level name -> module that defines it now (a FutureWarning says where)
_MOVED: dict[str, str] = {
    "save_tiny_checkpoint": "hf_lite.testing",
    "build_tiny_model": "hf_lite.testing",
    "build_tokenizer": "hf_lite.testing",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:
    from hf_lite.adapters import linear_module_names, resolve_peft_config
    from hf_lite.app.recipe import Recipe
    from hf_lite.app.runner import run_recipe
    from hf_lite.card import CompressionSummary, build_model_card
    from hf_lite.data import augment_data, load_data, tokenize_data
    from hf_lite.evaluation import (
        EvaluationResult,
        classification_metrics,
        count_parameters,
        evaluate_model,
        machine_info,
        measure_latency,
        measure_latency_side_by_side,
        perplexity,
    )
    from hf_lite.exporting import ExportReport, export, unpack_bnb_cpu_weights_
    from hf_lite.hub import PushResult, push_to_hub
    from hf_lite.loading import freeze, load_model, load_teacher, load_tokenizer
    from hf_lite.quantization import resolve_quantization
    from hf_lite.report import CompressionReport, ReportRow
    from hf_lite.student import init_student_from_teacher
    from hf_lite.summary import ModelSummary, model_summary
    from hf_lite.tasks import TASKS
    from hf_lite.teacher_cache import load_teacher_cache, precompute_teacher_cache


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"hf_lite.{name}")
    if name in _MOVED:
        import warnings

        warnings.warn(
            f"hf_lite.{name} moved to {_MOVED[name]}.{name}; import it from there.",
            FutureWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(_MOVED[name]), name)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_lite' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: the next access is a plain attribute lookup
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, *_SUBMODULES])
