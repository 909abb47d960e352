"""Pruning maths: importance scores, masks, structural shrinking, sparsity schedules, layer selection, one-shot methods, reports.

Pure functions on tensors and modules, no ``Trainer`` inside: a pruning ``TrainerCallback`` builds on
them (scores -> masks on the schedule -> ``apply_mask_`` after each optimizer step). This subpackage
imports torch and transformers when imported; ``import hf_lite`` alone does not.

>>> import torch
>>> from hf_lite.pruning import magnitude_scores, nm_mask, unstructured_mask, CubicSchedule
>>> w = torch.randn(8, 16)
>>> int((~unstructured_mask(magnitude_scores(w), 0.25)).sum())
32
>>> CubicSchedule(final_sparsity=0.5, end_step=100).sparsity_at(100)
0.5
"""

from __future__ import annotations

from hf_lite.pruning.importance import (
    IMPORTANCE_METHODS,
    HeadScores,
    attention_head_scores,
    block_influence,
    ffn_neuron_scores,
)
from hf_lite.pruning.masks import (
    apply_mask_,
    global_unstructured_masks,
    magnitude_scores,
    mask_sparsity,
    movement_scores,
    nm_mask,
    pruned_count,
    unstructured_mask,
    wanda_scores,
)
from hf_lite.pruning.oneshot import magnitude_prune_, parse_pattern, wanda_prune_
from hf_lite.pruning.peft_merge import SparseMergeReport, merge_adapter_keep_sparsity
from hf_lite.pruning.report import SPEED_NOTE, LayerSparsity, SparsityReport, sparsity_report
from hf_lite.pruning.schedule import CubicSchedule
from hf_lite.pruning.structural import KeptHeads, prune_attention_heads_, prune_ffn_, prune_layers_
from hf_lite.pruning.targets import (
    DEFAULT_EXCLUDE,
    HEAD_PATTERNS,
    find_prunable_modules,
    in_features_dim,
    is_prunable,
)

__all__ = [
    "magnitude_scores",
    "movement_scores",
    "wanda_scores",
    "pruned_count",
    "unstructured_mask",
    "global_unstructured_masks",
    "nm_mask",
    "apply_mask_",
    "mask_sparsity",
    "CubicSchedule",
    "DEFAULT_EXCLUDE",
    "HEAD_PATTERNS",
    "find_prunable_modules",
    "in_features_dim",
    "is_prunable",
    "parse_pattern",
    "magnitude_prune_",
    "wanda_prune_",
    "LayerSparsity",
    "SparsityReport",
    "sparsity_report",
    "SPEED_NOTE",
    "prune_ffn_",
    "prune_attention_heads_",
    "prune_layers_",
    "KeptHeads",
    "ffn_neuron_scores",
    "attention_head_scores",
    "block_influence",
    "HeadScores",
    "IMPORTANCE_METHODS",
    "merge_adapter_keep_sparsity",
    "SparseMergeReport",
]
