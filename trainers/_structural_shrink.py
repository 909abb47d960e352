"""Shrinking a model during gradual structural pruning: its sizes, one stage, a checkpoint's stages replayed.

:func:`shrink_ffn`, :func:`shrink_groups` and :func:`shrink_layers` run one stage on the weights and the
optimizer; :func:`shrink_like_checkpoint` replays the stages recorded in a checkpoint.

Every stage goes through one :class:`hf_lite.pruning.structural.StructuralPlan`, applied to the model
(``apply_plan_``) and then to the Trainer's optimizer (``slice_optimizer_state_``), so the optimizer state is
sliced with exactly the indices the weights were.

>>> from hf_lite.testing import build_tiny_model
>>> model, _ = build_tiny_model("llama", num_hidden_layers=3)
>>> _ = shrink_layers(model, [0])
>>> model_sizes(model)
{'ffn': 128, 'kv_groups': 2, 'layers': 2}
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from hf_lite._utils import unwrap_model
from hf_lite.pruning.optimizer_state import base_optimizer
from hf_lite.pruning.sites import find_ffn_sites, find_layer_list, head_layout
from hf_lite.pruning.structural import (
    StructuralPlan,
    apply_plan_,
    plan_attention_heads,
    plan_ffn,
    plan_layers,
    slice_optimizer_state_,
)
from trainers._callback_state import CallbackState
from trainers.structural_config import STRUCTURE_KINDS

__all__ = [
    "RESUME_ATTR",
    "STRUCTURAL_STATE",
    "STRUCTURAL_STATE_JSON",
    "STRUCTURAL_STATE_TENSORS",
    "model_sizes",
    "replay_stage",
    "shrink_ffn",
    "shrink_groups",
    "shrink_layers",
    "shrink_like_checkpoint",
    "shrink_with_plan",
]

logger = logging.getLogger(__name__)

#: Written into every checkpoint folder: the original sizes, and per stage the kept indices (plain JSON).
STRUCTURAL_STATE_JSON = "structural_pruning_state.json"
#: Its companion, only while Taylor scores are being gathered: the running per-structure sums (safetensors).
STRUCTURAL_STATE_TENSORS = "structural_pruning_state.safetensors"
#: How the callback's state is saved into, found in and read from checkpoint folders.
STRUCTURAL_STATE = CallbackState(
    STRUCTURAL_STATE_JSON,
    STRUCTURAL_STATE_TENSORS,
    owner="StructuralPruningCallback",
    what="structural pruning state",
    tensors_optional=True,
)
#: Attribute set by shrink_like_checkpoint on the model: the checkpoint folder it shrank to.
RESUME_ATTR = "_hf_lite_structural_checkpoint"


def model_sizes(model: nn.Module, kinds: Iterable[str] = STRUCTURE_KINDS) -> dict[str, int]:
    """Current FFN width, key/value group count and block count of ``model`` (the ``kinds`` asked for).

    >>> from hf_lite.testing import build_tiny_model
    >>> model_sizes(build_tiny_model("llama")[0])
    {'ffn': 128, 'kv_groups': 2, 'layers': 2}
    """
    out = {}
    for kind in kinds:
        if kind == "ffn":
            out[kind] = int(find_ffn_sites(model)[0].width)
        elif kind == "kv_groups":
            out[kind] = int(head_layout(model)[1])
        elif kind == "layers":
            out[kind] = len(find_layer_list(model))
        else:
            raise ValueError(f"unknown size {kind!r}; known: {', '.join(STRUCTURE_KINDS)}.")
    return out


def shrink_with_plan(root: nn.Module, plan: StructuralPlan, optimizer: Any = None) -> Any:
    """Apply ``plan`` to ``root`` and then to ``optimizer`` (accelerate wrapper or torch optimizer, or
    ``None``); returns ``plan.kept``.

    >>> import torch
    >>> from hf_lite.pruning.structural import input_slices
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    >>> shrink_with_plan(model, input_slices(model[0], torch.tensor([0]))) is None, model[0].in_features
    (True, 1)
    """
    apply_plan_(root, plan)
    slice_optimizer_state_(base_optimizer(optimizer), root, plan)
    return plan.kept


def shrink_ffn(
    root: nn.Module, keep: Mapping[int, torch.Tensor], optimizer: Any = None
) -> dict[int, torch.Tensor]:
    """Keep FFN neurons ``keep`` (``{block: indices}``) of the model and of the optimizer state.

    >>> import torch
    >>> from hf_lite.testing import build_tiny_model
    >>> model, _ = build_tiny_model("llama")
    >>> _ = shrink_ffn(model, {0: torch.arange(8), 1: torch.arange(8)})
    >>> model.config.intermediate_size
    8
    """
    return shrink_with_plan(root, plan_ffn(root, keep_indices=dict(keep)), optimizer)


def shrink_groups(
    root: nn.Module, keep: Mapping[int, torch.Tensor], optimizer: Any = None
) -> dict[int, torch.Tensor]:
    """Keep key/value groups ``keep`` (``{block: group indices}``, all their query heads) of the model and of
    the optimizer state; returns the kept groups.

    >>> import torch
    >>> from hf_lite.testing import build_tiny_model
    >>> model, _ = build_tiny_model("llama")
    >>> shrink_groups(model, {0: torch.tensor([1]), 1: torch.tensor([0])})[1].tolist()
    [0]
    """
    kept = shrink_with_plan(root, plan_attention_heads(root, keep_groups=dict(keep)), optimizer)
    return {layer: k.key_value for layer, k in kept.items()}


def shrink_layers(root: nn.Module, drop: Sequence[int], optimizer: Any = None) -> list[int]:
    """Drop blocks ``drop`` of the model, and their parameters from the optimizer; returns the kept blocks.

    >>> from hf_lite.testing import build_tiny_model
    >>> shrink_layers(build_tiny_model("llama")[0], [1])
    [0]
    """
    return shrink_with_plan(root, plan_layers(root, drop=list(drop)), optimizer)


def replay_stage(root: nn.Module, stage: Mapping[str, Any]) -> None:
    """Apply one stage record of :data:`STRUCTURAL_STATE_JSON` (its kept neurons, kept groups, dropped blocks).

    >>> from hf_lite.testing import build_tiny_model
    >>> model, _ = build_tiny_model("llama")
    >>> replay_stage(model, {"ffn": None, "kv_groups": [[0], [1]], "drop": [0]})
    >>> model_sizes(model)
    {'ffn': 128, 'kv_groups': 1, 'layers': 1}
    """
    if stage.get("ffn") is not None:
        shrink_ffn(root, {i: torch.tensor(k, dtype=torch.long) for i, k in enumerate(stage["ffn"])})
    if stage.get("kv_groups") is not None:
        shrink_groups(root, {i: torch.tensor(k, dtype=torch.long) for i, k in enumerate(stage["kv_groups"])})
    if stage.get("drop") is not None:
        shrink_layers(root, stage["drop"])


def shrink_like_checkpoint(model: nn.Module, checkpoint_dir: str | os.PathLike) -> nn.Module:
    """Shrink ``model`` in place to the shapes of a checkpoint written during gradual structural pruning.

    The checkpoint's :data:`STRUCTURAL_STATE_JSON` lists, per stage, the kept FFN neurons, the kept key/value
    groups and the dropped blocks; they are applied in the same order with the same indices, so the model
    gets exactly the checkpoint's shapes and config (its weights are then loaded by the Trainer when
    resuming, or by ``load_state_dict``). A model that already has the checkpoint's shapes (loaded from that
    folder) is left as it is; one at an earlier stage of the same run gets the remaining stages.

    Args:
        model: the model the run started from (same architecture and sizes), or a PEFT model around it.
        checkpoint_dir: a ``checkpoint-<step>`` folder of the run.

    Returns:
        ``model`` (shrunk in place).

    Raises:
        ValueError: the folder has no structural pruning state, or the model's sizes match neither the
            run's original sizes nor any of its stages.

    >>> model = AutoModelForCausalLM.from_pretrained("org/base")  # doctest: +SKIP
    >>> shrink_like_checkpoint(model, "out/checkpoint-300").config.intermediate_size  # doctest: +SKIP
    5504
    """
    meta = STRUCTURAL_STATE.read(checkpoint_dir)
    root = unwrap_model(model)
    kinds = list(meta["original"])
    sizes = model_sizes(root, kinds)
    prefixes = [dict(meta["original"])] + [dict(stage["sizes"]) for stage in meta["stages"]]
    done = next((i for i in range(len(prefixes) - 1, -1, -1) if prefixes[i] == sizes), None)
    if done is None:
        raise ValueError(
            f"the model has sizes {sizes}, but the run of {os.fspath(checkpoint_dir)!r} started from "
            f"{meta['original']} and went through {[p for p in prefixes[1:]]}: it is not the model that run "
            "trained. Load the same base checkpoint the run started from."
        )
    for stage in meta["stages"][done:]:
        replay_stage(root, stage)
    # Remembered so that the callback finds the state again when train(resume_from_checkpoint=...) resumes.
    root.__dict__[RESUME_ATTR] = os.fspath(checkpoint_dir)
    if done < len(meta["stages"]):
        logger.info(
            "shrank the model like %s: %s -> %s (%d stages replayed)",
            os.fspath(checkpoint_dir),
            sizes,
            meta["stages"][-1]["sizes"],
            len(meta["stages"]) - done,
        )
    return model
