"""The FFN width of every expert of mixture-of-experts blocks (and of Qwen2-MoE's shared expert).

Each routed expert is a gated FFN stored in 3-D tensors: neuron ``j`` of expert ``e`` owns rows ``j`` and
``ffn + j`` of ``gate_up_proj[e]`` (rows ``2j`` and ``2j + 1`` when the family interleaves gate and up, as
GPT-OSS; one row of ``up_proj[e]`` without a gate), their biases, and column ``j`` of ``down_proj[e]``.
:func:`prune_expert_ffn_` keeps the same number of neurons in every expert of every MoE block (the config
stores one width: ``moe_intermediate_size`` for Qwen2-MoE, Qwen3-MoE, OLMoE; ``intermediate_size`` for Mixtral
and GPT-OSS), but each expert keeps its own most important neurons: the plan slices each expert with its own
indices (an ``(num_experts, kept)`` index, see :func:`~hf_lite.pruning.structural.plan.take`). Qwen2-MoE's
shared expert, a dense gated FFN every token passes, is shrunk with ``shared_keep_ratio``
(``shared_expert_intermediate_size``). Dense blocks between MoE blocks keep their ``intermediate_size``. The
experts' width is rounded up to a multiple of 8 by default (``multiple_of``): transformers' default experts kernel
(``grouped_mm``) needs rows of a multiple of 16 bytes, or the stock model fails to run.

Removing a neuron is exactly zeroing its ``down_proj`` column: the expert's output does not depend on it.
The experts' neurons are ranked by :func:`~hf_lite.pruning.structural.expert_ffn_scores.expert_neuron_scores`
(:mod:`~hf_lite.pruning.structural.expert_ffn_scores`, still importable from here); this module plans and
applies the slices.

>>> import torch
>>> from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM
>>> model = Qwen2MoeForCausalLM(Qwen2MoeConfig(vocab_size=32, hidden_size=8, intermediate_size=16,
...     moe_intermediate_size=16, shared_expert_intermediate_size=16, num_hidden_layers=2,
...     num_attention_heads=2, num_key_value_heads=1, num_experts=4, num_experts_per_tok=2))
>>> kept = prune_expert_ffn_(model, 0.5, shared_keep_ratio=0.25)
>>> kept.experts[0].shape, kept.shared[0].shape   # (experts, kept neurons), (kept shared neurons,)
(torch.Size([4, 8]), torch.Size([4]))
>>> c = model.config
>>> c.moe_intermediate_size, c.shared_expert_intermediate_size, tuple(model.model.layers[0].mlp.experts.down_proj.shape)
(8, 4, (4, 8, 8))
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from hf_lite.pruning.calibration import check_calibration, mean_abs_inputs
from hf_lite.pruning.experts import find_expert_weights
from hf_lite.pruning.importance import check_count
from hf_lite.pruning.sites import base_layer, in_out_features
from hf_lite.pruning.structural.checks import (
    check_expressible,
    check_sliceable,
    checked_keep_count,
    index_list,
    round_up,
    target_count,
    top_indices,
)
from hf_lite.pruning.structural.expert_ffn_scores import check_expert_importance, expert_neuron_scores
from hf_lite.pruning.structural.moe_sites import MoeSite, config_key, moe_block_indices, moe_sites_or_refuse
from hf_lite.pruning.structural.plan import (
    ParamSlice,
    StructuralPlan,
    apply_plan_,
    input_slices,
    output_slices,
    parameters_by_id,
)

__all__ = [
    "EXPERT_WIDTH_KEYS",
    "KeptExpertNeurons",
    "expert_neuron_scores",
    "plan_expert_ffn",
    "prune_expert_ffn_",
]

logger = logging.getLogger(__name__)

#: Config entries that may hold the experts' FFN width, first matching one wins.
EXPERT_WIDTH_KEYS: tuple[str, ...] = ("moe_intermediate_size", "intermediate_size")
#: Why expert widths are rounded: transformers' default experts kernel on CPU and GPU.
KERNEL_NOTE = (
    "transformers runs the experts with grouped_mm by default, which needs every row of the expert weights to "
    "be a multiple of 16 bytes (8 values in bf16/fp16, 4 in fp32); other widths fail in the stock model with "
    "'strides should be multiple of 16 bytes'."
)
_WIDTH_ATTRS = ("intermediate_dim", "intermediate_size", "moe_intermediate_size", "expert_dim")
_EXPAND = ("gate_up_proj", "up_proj")


class KeptExpertNeurons(NamedTuple):
    """What :func:`prune_expert_ffn_` kept, in the original numbering (``None``: left as it was).

    Args:
        experts: ``{block: (num_experts, kept) int64}``, each expert's kept neurons, ascending.
        shared: ``{block: (kept,) int64}``, the shared expert's kept neurons (Qwen2-MoE).

    >>> import torch
    >>> KeptExpertNeurons({0: torch.tensor([[0, 2], [1, 3]])}, None).experts[0][1].tolist()
    [1, 3]
    """

    experts: dict[int, torch.Tensor] | None
    shared: dict[int, torch.Tensor] | None


def _neuron_slices(site: MoeSite, index: torch.Tensor, width: int) -> StructuralPlan:
    """Neurons ``index`` ``(E, kept)`` of every expert of ``site``: expanding rows, ``down_proj`` columns."""
    plan = StructuralPlan()
    concatenated = getattr(site.experts, "is_concatenated", True)
    for attr, ew in find_expert_weights(site.experts).items():
        if attr == "down_proj":
            plan.slices[id(ew.weight)] = (ew.weight, ParamSlice(site.experts, attr, ew.in_dim, index))
            continue
        rows = index
        if attr == "gate_up_proj":
            rows = (
                torch.cat([index, index + width], dim=1)
                if concatenated
                else torch.stack([2 * index, 2 * index + 1], dim=-1).reshape(index.shape[0], -1)
            )
        plan.slices[id(ew.weight)] = (ew.weight, ParamSlice(site.experts, attr, 3 - ew.in_dim, rows))
        bias = getattr(site.experts, f"{attr}_bias", None)
        if isinstance(bias, nn.Parameter):
            plan.slices[id(bias)] = (bias, ParamSlice(site.experts, f"{attr}_bias", 1, rows))
    kept = index.shape[1]
    plan.attributes += [
        (site.experts, a, kept) for a in _WIDTH_ATTRS if getattr(site.experts, a, None) == width
    ]
    return plan


def _shared_layers(site: MoeSite) -> tuple[list[nn.Module], nn.Module]:
    shared = site.shared
    layers = [getattr(shared, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
    if shared is None or any(not isinstance(getattr(m, "weight", None), torch.Tensor) for m in layers):
        raise ValueError(
            f"block {site.layer} has no shared expert laid out as gate_proj/up_proj/down_proj (Qwen2-MoE's "
            "shared_expert); shared_keep_ratio applies to such models only. Leave it None."
        )
    return layers[:2], layers[2]  # type: ignore[return-value]


def _shared_magnitude(expand: list[nn.Module], project: nn.Module) -> torch.Tensor:
    """``(ffn,)`` L2 norm of each shared-expert neuron's weights: gate and up rows, ``down_proj`` column."""
    rows = sum((base_layer(m).weight.detach().float() ** 2).sum(dim=1) for m in expand)  # (out, in) rows
    return (rows + (base_layer(project).weight.detach().float() ** 2).sum(dim=0)).sqrt()


def _shared_slices(site: MoeSite, index: torch.Tensor) -> StructuralPlan:
    expand, project = _shared_layers(site)
    plan = StructuralPlan()
    for layer in expand:
        plan.extend(output_slices(layer, index))
    plan.extend(input_slices(project, index))
    plan.attributes.append((site.shared, "intermediate_size", len(index)))
    return plan


def _expert_indices(spec: Any, sites: list[MoeSite], width: int) -> dict[int, torch.Tensor]:
    """``keep_indices`` (``{block: (E, kept)}`` for every MoE block, or one ``(E, kept)`` for all) checked."""
    layers = [s.layer for s in sites]
    if isinstance(spec, Mapping) and sorted(spec) != layers:
        raise ValueError(
            f"keep_indices gives blocks {sorted(spec)} but the MoE blocks are {layers}; give every MoE block, or "
            "one (num_experts, kept) index used for all of them."
        )
    out = {}
    for s in sites:
        rows = spec[s.layer] if isinstance(spec, Mapping) else spec
        rows = rows.tolist() if isinstance(rows, torch.Tensor) else list(rows)
        if len(rows) != s.num_experts:
            raise ValueError(
                f"keep_indices for block {s.layer} has {len(rows)} rows but the block has {s.num_experts} experts: "
                "give one list of kept neurons per expert."
            )
        kept = [index_list(r, width, f"keep_indices[{s.layer}][{e}]") for e, r in enumerate(rows)]
        out[s.layer] = kept
    lengths = sorted({len(k) for kept in out.values() for k in kept})
    if len(lengths) > 1:
        raise ValueError(
            f"keep_indices keeps {lengths} neurons in different experts, but the config stores one expert width: "
            "keep the same number in every expert of every MoE block."
        )
    return {layer: torch.stack(kept) for layer, kept in out.items()}


def plan_expert_ffn(
    model: nn.Module,
    keep_ratio: float | None = None,
    *,
    intermediate_size: int | None = None,
    keep_indices: Any = None,
    shared_keep_ratio: float | None = None,
    shared_keep_indices: Mapping[int, Any] | None = None,
    importance: str = "magnitude",
    calibration_batches: Iterable[Mapping[str, torch.Tensor]] | None = None,
    multiple_of: int = 8,
) -> StructuralPlan:
    """The :class:`~hf_lite.pruning.structural.plan.StructuralPlan` of :func:`prune_expert_ffn_` (same arguments
    and checks), without changing the model; its ``kept`` is a :class:`KeptExpertNeurons`.

    >>> from transformers import MixtralConfig, MixtralForCausalLM
    >>> model = MixtralForCausalLM(MixtralConfig(vocab_size=32, hidden_size=8, intermediate_size=16,
    ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, num_local_experts=4))
    >>> plan = plan_expert_ffn(model, intermediate_size=8)
    >>> plan.config, tuple(plan.kept.experts[0].shape), model.config.intermediate_size
    ({'intermediate_size': 8}, (4, 8), 16)
    """
    given = [
        n for n, v in (("keep_ratio", keep_ratio), ("intermediate_size", intermediate_size)) if v is not None
    ]
    given += ["keep_indices"] if keep_indices is not None else []
    shared_given = [
        n
        for n, v in (("shared_keep_ratio", shared_keep_ratio), ("shared_keep_indices", shared_keep_indices))
        if v is not None
    ]
    if len(given) > 1 or len(shared_given) > 1 or not given + shared_given:
        raise ValueError(
            "pass at most one of keep_ratio, intermediate_size, keep_indices (the experts' width) and at most one "
            f"of shared_keep_ratio, shared_keep_indices (the shared expert's width), at least one in all; got "
            f"{', '.join(given + shared_given) or 'none'}."
        )
    check_expert_importance(importance)
    multiple = check_count(multiple_of, "multiple_of")
    if multiple < 1:
        raise ValueError(f"multiple_of={multiple_of!r} must be >= 1 (8 suits transformers' experts kernel).")
    sites = moe_sites_or_refuse(model, "expert FFN pruning")
    config, placeholder = {}, StructuralPlan()
    if given:
        widths = sorted({s.width for s in sites})
        if len(widths) != 1:
            raise ValueError(
                f"the experts have different FFN widths {widths}, which their config cannot describe."
            )
        width = widths[0]
        key = config_key(model, EXPERT_WIDTH_KEYS, width, "the experts' FFN width")
        explicit = None
        if keep_ratio is not None:
            count = round_up(checked_keep_count(keep_ratio, width, "expert FFN neurons"), multiple, width)
        elif intermediate_size is not None:
            hint = "pruning removes neurons, it cannot add any."
            count = target_count(
                intermediate_size, "intermediate_size", width, "the experts' current width", hint
            )
        else:
            explicit = _expert_indices(keep_indices, sites, width)
            count = explicit[sites[0].layer].shape[1]
        if count % multiple and count != width:
            raise ValueError(
                f"the experts' width {count} (from {given[0]}) is not a multiple of multiple_of={multiple}: "
                f"{KERNEL_NOTE} Keep a multiple of {multiple}, or pass multiple_of=1 if you run the experts with "
                "experts_implementation='eager'."
            )
        if count % 8 and count != width:
            logger.warning("expert FFN width %d is not a multiple of 8: %s", count, KERNEL_NOTE)
        config[key] = count
        for s in sites:
            placeholder.extend(_neuron_slices(s, torch.arange(count).expand(s.num_experts, count), width))
    if shared_given:
        shared_sites = [(s, *_shared_layers(s)) for s in sites]
        shared_width = in_out_features(shared_sites[0][2])[0]
        shared_key = config_key(
            model, ("shared_expert_intermediate_size",), shared_width, "the shared expert's width"
        )
        check_sliceable([m for _, expand, project in shared_sites for m in (*expand, project)])
        shared_explicit = None
        if shared_keep_ratio is not None:
            shared_count = checked_keep_count(shared_keep_ratio, shared_width, "shared expert neurons")
        else:
            what = "shared expert neurons"
            shared_explicit = moe_block_indices(
                shared_keep_indices, sites, shared_width, "shared_keep_indices", what
            )
            shared_count = len(shared_explicit[sites[0].layer])
        config[shared_key] = shared_count
        for s in sites:
            placeholder.extend(_shared_slices(s, torch.arange(shared_count)))
    placeholder.config = config
    check_expressible(
        model,
        placeholder,
        f"pruning the experts' FFN to {config}",
        hint="This family cannot express this width in its config; drop whole experts (prune_experts_) or "
        "layers (prune_layers_) instead.",
    )
    plan = StructuralPlan(config=config, params=parameters_by_id(model))
    kept = KeptExpertNeurons(None, None)
    if given:
        if explicit is None:
            scores = expert_neuron_scores(model, importance, calibration_batches)
            explicit = {
                s.layer: torch.stack([top_indices(row, count) for row in scores[s.layer]]) for s in sites
            }
        for s in sites:
            plan.extend(_neuron_slices(s, explicit[s.layer], width))
        kept = kept._replace(experts=explicit)
    if shared_given:
        if shared_explicit is None:
            if importance == "activation":
                batches = check_calibration(calibration_batches, "importance='activation'")
                shared_scores = mean_abs_inputs(
                    model, {s.layer: project for s, _, project in shared_sites}, batches
                )
            else:
                shared_scores = {
                    s.layer: _shared_magnitude(expand, project) for s, expand, project in shared_sites
                }
            shared_explicit = {s.layer: top_indices(shared_scores[s.layer], shared_count) for s in sites}
        for s in sites:
            plan.extend(_shared_slices(s, shared_explicit[s.layer]))
        kept = kept._replace(shared=shared_explicit)
    plan.kept = kept
    plan.message = (
        f"pruned expert FFN widths to {config} in {len(sites)} MoE blocks (importance={importance})"
    )
    return plan


def prune_expert_ffn_(
    model: nn.Module,
    keep_ratio: float | None = None,
    *,
    intermediate_size: int | None = None,
    keep_indices: Any = None,
    shared_keep_ratio: float | None = None,
    shared_keep_indices: Mapping[int, Any] | None = None,
    importance: str = "magnitude",
    calibration_batches: Iterable[Mapping[str, torch.Tensor]] | None = None,
    multiple_of: int = 8,
) -> KeptExpertNeurons:
    """Shrink the FFN of every expert of every MoE block to one width, in place, and set it in the config.

    Every expert keeps the same number of neurons (the config stores one width), each expert its own most
    important ones (:func:`expert_neuron_scores`). The experts' width is ``moe_intermediate_size`` (Qwen2-MoE,
    Qwen3-MoE, OLMoE) or ``intermediate_size`` (Mixtral, GPT-OSS); Qwen2-MoE's shared expert
    (``shared_expert_intermediate_size``) is shrunk with ``shared_keep_ratio``.

    Args:
        model: a transformers MoE model.
        keep_ratio: fraction of each expert's neurons kept, in ``(0, 1]``, rounded up to a multiple of
            ``multiple_of`` (at most the current width).
        intermediate_size: the experts' new width, instead of ``keep_ratio``.
        keep_indices: the neurons to keep instead: ``{block: (num_experts, kept)}`` for every MoE block (a
            tensor or lists), or one ``(num_experts, kept)`` for all blocks.
        shared_keep_ratio: fraction of the shared expert's neurons kept (Qwen2-MoE), or ``None``.
        shared_keep_indices: ``{block: kept neurons}`` of the shared expert instead, for every MoE block.
        importance: ``"magnitude"`` (no data) or ``"activation"`` (needs ``calibration_batches``).
        calibration_batches: tokenized batches, for ``"activation"``.
        multiple_of: round the experts' kept width up to a multiple of this; ``intermediate_size`` and
            ``keep_indices`` must give one. Default 8: transformers' default experts kernel (``grouped_mm``)
            needs rows of a multiple of 16 bytes (8 bf16 values), or the stock model fails to run. Pass 1 only
            for models run with ``experts_implementation="eager"``.

    Returns:
        A :class:`KeptExpertNeurons` with the kept neurons (original numbering).

    Raises:
        ValueError: no target or two for the same width, a ratio outside ``(0, 1]``, a width above the current
            one, indices out of range or of unequal lengths, ``importance="taylor"``, missing calibration data, a
            model without MoE blocks or shared expert, adapters on the experts, or a family whose config
            cannot express the width.

    >>> from transformers import MixtralConfig, MixtralForCausalLM
    >>> model = MixtralForCausalLM(MixtralConfig(vocab_size=32, hidden_size=8, intermediate_size=16,
    ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, num_local_experts=4))
    >>> kept = prune_expert_ffn_(model, 0.3)   # round(0.3 * 16) = 5, rounded up to a multiple of 8
    >>> model.config.intermediate_size, tuple(model.model.layers[0].mlp.experts.gate_up_proj.shape)
    (8, (4, 16, 8))
    """
    plan = plan_expert_ffn(
        model,
        keep_ratio,
        intermediate_size=intermediate_size,
        keep_indices=keep_indices,
        shared_keep_ratio=shared_keep_ratio,
        shared_keep_indices=shared_keep_indices,
        importance=importance,
        calibration_batches=calibration_batches,
        multiple_of=multiple_of,
    )
    apply_plan_(model, plan)
    return plan.kept
