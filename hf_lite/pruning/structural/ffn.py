"""FFN neurons: remove the same number of neurons from every block's FFN and set the config's FFN width.

>>> from hf_lite.testing import build_tiny_model
>>> model, _ = build_tiny_model("llama")
>>> _ = prune_ffn_(model, 0.5)
>>> model.config.intermediate_size, tuple(model.model.layers[0].mlp.down_proj.weight.shape)
(64, (64, 64))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from hf_lite._utils import unwrap_model
from hf_lite.pruning.experts import find_expert_weights
from hf_lite.pruning.importance import check_count, check_importance, ffn_neuron_scores
from hf_lite.pruning.sites import FfnSite, find_ffn_sites, model_config, neuron_rows
from hf_lite.pruning.structural.checks import (
    IndexSpec,
    check_expressible,
    check_sliceable,
    checked_keep_count,
    exactly_one,
    explicit_indices,
    round_up,
    target_count,
    top_indices,
)
from hf_lite.pruning.structural.plan import (
    StructuralPlan,
    apply_plan_,
    input_slices,
    output_slices,
    parameters_by_id,
)
from hf_lite.pruning.structural.reload import family_name

__all__ = ["plan_ffn", "prune_ffn_"]


def _ffn_slices(sites: list[FfnSite], index: torch.Tensor) -> StructuralPlan:
    """Neurons ``index`` of the FFNs ``sites``: rows of the expanding layers, columns of the projecting one."""
    plan = StructuralPlan()
    for site in sites:
        rows = neuron_rows(index, site.width, site.fused)  # fused gate/up: the same neurons in each chunk
        for layer in site.expand:
            plan.extend(output_slices(layer, rows))
        plan.extend(input_slices(site.project, index))
        if isinstance(getattr(site.parent, "intermediate_size", None), int):
            plan.attributes.append((site.parent, "intermediate_size", len(index)))
    return plan


def plan_ffn(
    model: nn.Module,
    keep_ratio: float | None = None,
    *,
    intermediate_size: int | None = None,
    keep_indices: IndexSpec | None = None,
    importance: str = "magnitude",
    calibration_batches: Iterable[Mapping[str, torch.Tensor]] | None = None,
    multiple_of: int = 1,
) -> StructuralPlan:
    """The :class:`~hf_lite.pruning.structural.plan.StructuralPlan` of :func:`prune_ffn_` (same arguments and
    checks), without changing the model: apply it with ``apply_plan_`` (and ``slice_optimizer_state_``).

    >>> from hf_lite.testing import build_tiny_model
    >>> model, _ = build_tiny_model("gpt2")
    >>> plan = plan_ffn(model, intermediate_size=32)
    >>> plan.config, len(plan.kept[0]), tuple(model.transformer.h[0].mlp.c_fc.weight.shape)
    ({'n_inner': 32}, 32, (64, 128))
    """
    importance = check_importance(importance)
    which = exactly_one(keep_ratio=keep_ratio, intermediate_size=intermediate_size, keep_indices=keep_indices)
    multiple = check_count(multiple_of, "multiple_of")
    if multiple < 1:
        raise ValueError(
            f"multiple_of={multiple_of!r} must be >= 1 (1 = no rounding; 8 or 64 suit GPU kernels)."
        )
    if find_expert_weights(unwrap_model(model, peft_base=True)):
        config = model_config(model)
        raise ValueError(
            f"{family_name(config)} is a mixture-of-experts model: prune_ffn_ prunes one dense FFN per block, but "
            "its FFN widths are the experts' (and a shared expert's) in their own config entries. Shrink every "
            "expert's FFN with prune_expert_ffn_ (shared expert: shared_keep_ratio=), drop whole experts with "
            "prune_experts_, or prune attention heads or whole layers."
        )
    sites = find_ffn_sites(model)
    widths = sorted({s.width for s in sites})
    if len(widths) != 1:
        raise ValueError(
            f"the blocks have different FFN widths {widths}, which their config cannot describe; this model was "
            "not saved by stock transformers. Load it from a checkpoint with uniform widths."
        )
    width = widths[0]
    explicit = None
    if which == "keep_ratio":
        kept = round_up(checked_keep_count(keep_ratio, width, "FFN neurons"), multiple, width)
    elif which == "intermediate_size":
        kept = target_count(
            intermediate_size,
            "intermediate_size",
            width,
            "the current width",
            "pruning removes neurons, it cannot add any. Pass a smaller width or use keep_ratio.",
        )
        if kept % multiple:
            raise ValueError(
                f"intermediate_size={kept} is not a multiple of multiple_of={multiple}; pass a multiple of it "
                "(or leave multiple_of=1)."
            )
    else:
        explicit = explicit_indices(keep_indices, len(sites), width, "keep_indices", "FFN neurons")  # type: ignore[arg-type]
        kept = len(explicit[0])

    modules = [m for s in sites for m in (*s.expand, s.project)]
    check_sliceable(modules)
    config_key = sites[0].config_key
    current = getattr(model_config(model), config_key)
    if current is not None and (isinstance(current, bool) or not isinstance(current, int)):
        raise ValueError(
            f"config.{config_key}={current!r} is not one width for all blocks, which this FFN pruning writes "
            "(uniform widths). Prune whole layers (prune_layers_) instead."
        )
    placeholder = _ffn_slices(sites, torch.arange(kept))
    placeholder.config[config_key] = kept
    check_expressible(model, placeholder, f"pruning the FFN to {kept} neurons")
    if explicit is None:
        scores = ffn_neuron_scores(model, importance, calibration_batches)
        explicit = {s.layer: top_indices(scores[s.layer], kept) for s in sites}

    plan = StructuralPlan(config={config_key: kept}, params=parameters_by_id(model), kept=explicit)
    for site in sites:
        plan.extend(_ffn_slices([site], explicit[site.layer]))
    plan.message = (
        f"pruned FFN neurons {width} -> {kept} in {len(sites)} blocks "
        f"(importance={importance if which != 'keep_indices' else 'explicit'})"
    )
    return plan


def prune_ffn_(
    model: nn.Module,
    keep_ratio: float | None = None,
    *,
    intermediate_size: int | None = None,
    keep_indices: IndexSpec | None = None,
    importance: str = "magnitude",
    calibration_batches: Iterable[Mapping[str, torch.Tensor]] | None = None,
    multiple_of: int = 1,
) -> dict[int, torch.Tensor]:
    """Remove FFN neurons from every block, in place, and set the config's FFN width.

    Every block keeps the same number of neurons (the config has one ``intermediate_size``, ``n_inner``
    for GPT-2): those with the highest importance in that block (see
    :func:`hf_lite.pruning.importance.ffn_neuron_scores`). The expanding layers lose the rows (Conv1D:
    columns) of removed neurons, weights and biases; the projecting layer loses the matching input columns.

    Args:
        model: a decoder (Llama family, Phi3, GPT-2, GPT-NeoX, Falcon, OPT) or encoder (BERT family,
            DistilBERT, ModernBERT), or a PEFT model with LoRA around one.
        keep_ratio: fraction of neurons to keep, in ``(0, 1]``; the count is ``round(keep_ratio * width)``,
            then rounded up to a multiple of ``multiple_of`` (never above the current width).
        intermediate_size: the new width, instead of ``keep_ratio``.
        keep_indices: the neurons to keep, instead of scores: one list for every block, or
            ``{block: list}`` for every block, each of the same length.
        importance: ``"magnitude"`` (no data), ``"activation"`` or ``"taylor"`` (need ``calibration_batches``;
            Taylor needs ``labels``).
        calibration_batches: list of tokenized batches (dicts with ``input_ids``, ``attention_mask``).
        multiple_of: round the kept width up to a multiple of this; 8 or 64 keeps GPU matmul kernels on their
            fast paths (tensor cores want multiples of 8 in fp16/bf16, 64 helps tiling). Default 1.

    Returns:
        ``{block index: kept neuron indices}`` (int64, ascending, original numbering).

    Raises:
        ValueError: not exactly one of ``keep_ratio``/``intermediate_size``/``keep_indices``, a ratio outside
            ``(0, 1]`` or keeping no neuron, a width above the current one, indices out of range or of
            unequal lengths, missing calibration data, an architecture or adapter that cannot be sliced.

    >>> from hf_lite.testing import build_tiny_model
    >>> model, _ = build_tiny_model("gpt2")
    >>> kept = prune_ffn_(model, 0.3, multiple_of=8)   # round(0.3 * 128) = 38 -> 40
    >>> len(kept[0]), model.config.n_inner, tuple(model.transformer.h[0].mlp.c_fc.weight.shape)
    (40, 40, (64, 40))
    """
    plan = plan_ffn(
        model,
        keep_ratio,
        intermediate_size=intermediate_size,
        keep_indices=keep_indices,
        importance=importance,
        calibration_batches=calibration_batches,
        multiple_of=multiple_of,
    )
    apply_plan_(model, plan)
    return plan.kept
