"""Pruning maths: importance scores, masks, structural shrinking, sparsity schedules, layer selection, reports.

Pure functions on tensors and modules, no ``Trainer`` inside: a pruning ``TrainerCallback`` builds on
them (scores -> masks on the schedule -> ``apply_mask_`` after each optimizer step). This subpackage
imports torch and transformers when imported; ``import hf_lite`` alone does not.

Modules, bottom up: ``sites`` (where blocks, FFNs, attention projections and the config are),
``calibration`` (calibration batches and the hooks that read them), ``masks``, ``schedule``, ``targets``
(layers chosen by name), ``importance`` (scores of neurons, heads, blocks), ``oneshot`` (magnitude, Wanda),
``obs`` and ``sparsegpt`` (SparseGPT: OBS reconstruction of one matrix, then of a model), ``structural/``
(one slicing plan applied to the weights and to the optimizer state), ``report``, ``peft_merge``.

>>> import torch
>>> from hf_lite.pruning import magnitude_scores, nm_mask, unstructured_mask, CubicSchedule
>>> w = torch.randn(8, 16)
>>> int((~unstructured_mask(magnitude_scores(w), 0.25)).sum())
32
>>> CubicSchedule(final_sparsity=0.5, end_step=100).sparsity_at(100)
0.5
>>> x = torch.randn(16, 64)                       # calibration inputs (in, tokens)
>>> new_w, keep = sparsegpt_update(w[:, :16], 2 * x @ x.T, 0.5)
>>> keep.sum(dim=1).tolist()
[8, 8, 8, 8, 8, 8, 8, 8]
"""

from __future__ import annotations

from hf_lite.pruning.experts import ExpertWeight, find_expert_weights, find_moe_routers
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
from hf_lite.pruning.obs import check_sparsegpt_options, reconstruction_error, sparsegpt_update
from hf_lite.pruning.oneshot import magnitude_prune_, parse_pattern, wanda_prune_
from hf_lite.pruning.peft_merge import SparseMergeReport, merge_adapter_keep_sparsity
from hf_lite.pruning.report import SPEED_NOTE, LayerSparsity, SparsityReport, sparsity_report
from hf_lite.pruning.schedule import CubicSchedule
from hf_lite.pruning.sites import in_features_dim, is_prunable
from hf_lite.pruning.sparsegpt import sparsegpt_prune_
from hf_lite.pruning.structural import (
    KeptExpertNeurons,
    KeptHeads,
    StructuralPlan,
    apply_plan_,
    expert_load,
    plan_attention_heads,
    plan_expert_ffn,
    plan_experts,
    plan_ffn,
    plan_layers,
    prune_attention_heads_,
    prune_expert_ffn_,
    prune_experts_,
    prune_ffn_,
    prune_layers_,
    slice_optimizer_state_,
)
from hf_lite.pruning.targets import (
    DEFAULT_EXCLUDE,
    HEAD_PATTERNS,
    find_prunable_modules,
    find_prunable_targets,
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
    "find_prunable_targets",
    "find_expert_weights",
    "find_moe_routers",
    "ExpertWeight",
    "in_features_dim",
    "is_prunable",
    "parse_pattern",
    "magnitude_prune_",
    "wanda_prune_",
    "sparsegpt_prune_",
    "sparsegpt_update",
    "reconstruction_error",
    "check_sparsegpt_options",
    "LayerSparsity",
    "SparsityReport",
    "sparsity_report",
    "SPEED_NOTE",
    "prune_ffn_",
    "prune_attention_heads_",
    "prune_layers_",
    "KeptHeads",
    "prune_experts_",
    "prune_expert_ffn_",
    "expert_load",
    "plan_experts",
    "plan_expert_ffn",
    "KeptExpertNeurons",
    "plan_ffn",
    "plan_attention_heads",
    "plan_layers",
    "StructuralPlan",
    "apply_plan_",
    "slice_optimizer_state_",
    "ffn_neuron_scores",
    "attention_head_scores",
    "block_influence",
    "HeadScores",
    "IMPORTANCE_METHODS",
    "merge_adapter_keep_sparsity",
    "SparseMergeReport",
]
