"""Attention heads: remove grouped-query attention groups (and query heads within groups) and edit the config.

>>> from hf_lite.testing import build_tiny_model
>>> model, _ = build_tiny_model("llama")
>>> kept = prune_attention_heads_(model, 0.5)
>>> model.config.num_attention_heads, model.config.num_key_value_heads, len(kept[0].query)
(2, 1, 2)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from hf_lite.pruning.importance import attention_head_scores, check_count, check_importance
from hf_lite.pruning.sites import (
    AttentionSite,
    find_attention_sites,
    head_layout,
    in_out_features,
    model_config,
    stored_head_dim,
)
from hf_lite.pruning.structural.checks import (
    IndexSpec,
    check_expressible,
    check_sliceable,
    checked_keep_count,
    config_error,
    exactly_one,
    explicit_indices,
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

if TYPE_CHECKING:
    from transformers import PretrainedConfig

__all__ = [
    "KeptHeads",
    "head_rows",
    "loadable_group_counts",
    "plan_attention_heads",
    "prune_attention_heads_",
]


class KeptHeads(NamedTuple):
    """Which heads of one block survived :func:`prune_attention_heads_` (indices in the original numbering).

    Args:
        key_value: ``(kept groups,)`` int64, the kept key/value heads, ascending.
        query: ``(kept query heads,)`` int64, the kept query heads, grouped by key/value head, ascending.

    >>> import torch
    >>> KeptHeads(torch.tensor([1]), torch.tensor([2, 3])).query.tolist()
    [2, 3]
    """

    key_value: torch.Tensor
    query: torch.Tensor


def head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """The projection rows (features) of the heads ``heads``: ``(len(heads) * head_dim,)``, head by head.

    >>> import torch
    >>> head_rows(torch.tensor([0, 2]), 2).tolist()
    [0, 1, 4, 5]
    """
    return (heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)


def loadable_group_counts(config: PretrainedConfig, kv_heads: int, queries_per_group: int) -> list[int]:
    """The key/value group counts ``1..kv_heads`` whose edited config loads, with ``queries_per_group`` query
    heads in each group.

    >>> from hf_lite.testing import build_tiny_model
    >>> loadable_group_counts(build_tiny_model("llama")[0].config, 2, 2)
    [1, 2]
    """
    return [
        g
        for g in range(1, kv_heads + 1)
        if config_error(config, {"num_attention_heads": g * queries_per_group, "num_key_value_heads": g})
        is None
    ]


def _head_slices(
    sites: list[AttentionSite], kv_kept: torch.Tensor, q_kept: torch.Tensor, head_dim: int
) -> StructuralPlan:
    """Keep key/value heads ``kv_kept`` and query heads ``q_kept`` of the attention ``sites``: rows of
    q/k/v, columns of o, and the modules' head counts."""
    q_rows = head_rows(q_kept, head_dim)  # (new_heads * head_dim,)
    kv_rows = head_rows(kv_kept, head_dim)  # (groups * head_dim,)
    heads, kv_heads = len(q_kept), len(kv_kept)
    plan = StructuralPlan()
    for site in sites:
        if site.fused_qkv:  # rows [queries (H*d) | keys (G*d) | values (G*d)] of the heads before pruning
            queries = in_out_features(site.o)[0]  # H * d
            kv = (in_out_features(site.q)[1] - queries) // 2  # G * d
            rows = torch.cat([q_rows, queries + kv_rows, queries + kv + kv_rows])
            plan.extend(output_slices(site.q, rows))
        else:
            plan.extend(output_slices(site.q, q_rows))
            plan.extend(output_slices(site.k, kv_rows))
            plan.extend(output_slices(site.v, kv_rows))
        plan.extend(input_slices(site.o, q_rows))
        for name, value in (
            ("num_heads", heads),
            ("num_attention_heads", heads),
            ("num_key_value_heads", kv_heads),
            ("num_key_value_groups", heads // kv_heads),
        ):
            if isinstance(getattr(site.module, name, None), int):
                plan.attributes.append((site.module, name, value))
    return plan


def plan_attention_heads(
    model: nn.Module,
    keep_ratio: float | None = None,
    *,
    num_key_value_heads: int | None = None,
    keep_groups: IndexSpec | None = None,
    query_heads_per_group: int | None = None,
    importance: str = "magnitude",
    calibration_batches: Iterable[Mapping[str, torch.Tensor]] | None = None,
) -> StructuralPlan:
    """The :class:`~hf_lite.pruning.structural.plan.StructuralPlan` of :func:`prune_attention_heads_` (same
    arguments and checks), without changing the model: apply it with ``apply_plan_``.

    >>> from hf_lite.testing import build_tiny_model
    >>> model, _ = build_tiny_model("llama")
    >>> plan = plan_attention_heads(model, keep_groups=[1])
    >>> plan.config, plan.kept[0].query.tolist()
    ({'num_attention_heads': 2, 'num_key_value_heads': 1}, [2, 3])
    """
    importance = check_importance(importance)
    heads, kv_heads, head_dim = head_layout(model)
    per_group = heads // kv_heads
    if keep_ratio is None and num_key_value_heads is None and keep_groups is None:
        if query_heads_per_group is None:
            raise ValueError(
                "pass one of keep_ratio, num_key_value_heads or keep_groups (groups to keep), and/or "
                "query_heads_per_group (query heads kept per group); got none of them."
            )
        which = "all"
    else:
        which = exactly_one(
            keep_ratio=keep_ratio, num_key_value_heads=num_key_value_heads, keep_groups=keep_groups
        )
    sites = find_attention_sites(model)
    explicit = None
    if which == "keep_ratio":
        groups = checked_keep_count(keep_ratio, kv_heads, "key/value head groups")
    elif which == "num_key_value_heads":
        groups = target_count(
            num_key_value_heads,
            "num_key_value_heads",
            kv_heads,
            "the current count",
            "pruning removes groups, it cannot add any.",
        )
    elif which == "keep_groups":
        explicit = explicit_indices(keep_groups, len(sites), kv_heads, "keep_groups", "key/value groups")  # type: ignore[arg-type]
        groups = len(explicit[0])
    else:
        groups = kv_heads
    if query_heads_per_group is None:
        queries = per_group
    else:
        queries = check_count(query_heads_per_group, "query_heads_per_group")
        if not 1 <= queries <= per_group:
            raise ValueError(
                f"query_heads_per_group={query_heads_per_group!r} is outside 1..{per_group}: each key/value head "
                f"serves {heads} / {kv_heads} = {per_group} query heads now, and the same number must remain in "
                "every group."
            )
    new_heads = groups * queries
    projections = [p for s in sites for p in (s.q, s.k, s.v, s.o)]
    check_sliceable(projections)
    edits = {"num_attention_heads": new_heads, "num_key_value_heads": groups}
    config = model_config(model)
    if stored_head_dim(config) is None:
        edits["head_dim"] = head_dim  # the attention reads it if present (Qwen2, Phi3): keep the head size
    if config_error(config, edits) is not None:
        valid = loadable_group_counts(config, kv_heads, queries)
        raise ValueError(
            f"keeping {groups} key/value groups of {queries} query heads gives num_attention_heads={new_heads}, "
            f"which {type(config).__name__} refuses to load: {config_error(config, edits)}. Counts of "
            f"key/value groups that load with query_heads_per_group={queries}: {valid or 'none'}."
        )
    placeholder = _head_slices(sites, torch.arange(groups), torch.arange(new_heads), head_dim)
    placeholder.config.update(edits)
    check_expressible(
        model,
        placeholder,
        f"pruning attention to {groups} key/value heads and {new_heads} query heads",
    )
    scores = None
    if explicit is None or queries < per_group:
        scores = attention_head_scores(model, importance, calibration_batches)

    plan = StructuralPlan(config=edits, params=parameters_by_id(model), kept={})
    for site in sites:
        kv_kept = (
            explicit[site.layer] if explicit is not None else top_indices(scores[site.layer].group, groups)
        )
        query_kept = []
        for g in kv_kept.tolist():
            members = torch.arange(g * per_group, (g + 1) * per_group)
            if queries < per_group:
                members = members[top_indices(scores[site.layer].query[members], queries)]
            query_kept.append(members)
        q_index = torch.cat(query_kept)
        plan.extend(_head_slices([site], kv_kept, q_index, head_dim))
        plan.kept[site.layer] = KeptHeads(kv_kept, q_index)
    plan.message = (
        f"pruned attention to {new_heads} query / {groups} key-value heads (from {heads} / {kv_heads}) "
        f"in {len(sites)} blocks"
    )
    return plan


def prune_attention_heads_(
    model: nn.Module,
    keep_ratio: float | None = None,
    *,
    num_key_value_heads: int | None = None,
    keep_groups: IndexSpec | None = None,
    query_heads_per_group: int | None = None,
    importance: str = "magnitude",
    calibration_batches: Iterable[Mapping[str, torch.Tensor]] | None = None,
) -> dict[int, KeptHeads]:
    """Remove grouped-query attention groups (and optionally query heads within groups), in place.

    With ``H`` query heads and ``G`` key/value heads, key/value head ``g`` serves the ``H/G`` query heads
    ``g*H/G .. (g+1)*H/G - 1``. A *group* is that key/value head with its query heads; whole groups are
    removed, the same number in every block, so grouped-query attention stays valid. With
    ``query_heads_per_group`` each kept group also keeps only its best query heads, the same number in
    every group, so ``num_attention_heads = kept groups * query_heads_per_group`` stays divisible by
    ``num_key_value_heads``. ``head_dim`` is unchanged. ``q_proj``/``k_proj``/``v_proj`` lose rows (and
    biases), ``o_proj`` loses columns; ``num_attention_heads``/``num_key_value_heads`` are updated.

    Only attention that takes its head size from ``config.head_dim`` can express fewer heads: configs that
    carry it (Llama, Mistral, Qwen3, Gemma, ...) and configs whose attention reads it when present (Qwen2,
    Phi3: ``head_dim`` is written into the config). Phi3's fused ``qkv_proj`` loses the rows of removed query,
    key and value heads. BERT, GPT-2, GPT-NeoX, Falcon, OPT, DistilBERT and ModernBERT always imply
    ``head_dim = hidden_size / num_attention_heads``; they are refused (prune FFN neurons or layers instead). Some configs also require ``hidden_size`` divisible by ``num_attention_heads``
    (Llama's validation does): a head count violating that is refused with the counts that load.

    Args:
        model: a decoder of the Llama, Qwen2 or Phi3 family, or a PEFT model with LoRA around one.
        keep_ratio: fraction of key/value groups to keep, in ``(0, 1]`` (``round(keep_ratio * G)``).
        num_key_value_heads: number of groups to keep, instead of ``keep_ratio``.
        keep_groups: the groups (key/value heads) to keep, instead of scores: one list for every block or
            ``{block: list}`` for every block, each of the same length.
        query_heads_per_group: query heads kept in each kept group (``1 .. H/G``); ``None`` keeps them all.
            Alone (no ratio, count or groups), only query heads are pruned and every group is kept.
        importance: ``"magnitude"``, ``"activation"`` or ``"taylor"`` (see
            :func:`hf_lite.pruning.importance.attention_head_scores`).
        calibration_batches: tokenized batches, for ``"activation"`` and ``"taylor"`` (with ``labels``).

    Returns:
        ``{block index: KeptHeads(key_value, query)}`` in the original head numbering.

    >>> from hf_lite.testing import build_tiny_model
    >>> model, _ = build_tiny_model("llama")   # 4 query heads, 2 key/value heads, head_dim 16
    >>> kept = prune_attention_heads_(model, num_key_value_heads=1, query_heads_per_group=1)
    >>> model.config.num_attention_heads, model.config.num_key_value_heads, len(kept[0].query)
    (1, 1, 1)
    >>> tuple(model.model.layers[0].self_attn.o_proj.weight.shape)
    (64, 16)
    """
    plan = plan_attention_heads(
        model,
        keep_ratio,
        num_key_value_heads=num_key_value_heads,
        keep_groups=keep_groups,
        query_heads_per_group=query_heads_per_group,
        importance=importance,
        calibration_batches=calibration_batches,
    )
    apply_plan_(model, plan)
    return plan.kept
