"""Whole experts of mixture-of-experts blocks: router load on calibration data, and dropping the least-loaded.

transformers 5 keeps the experts of a MoE block (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, GPT-OSS, ...) in one
``experts`` module of 3-D parameters, ``gate_up_proj`` ``(E, 2 * ffn, hidden)`` and ``down_proj``
``(E, hidden, ffn)`` (``(E, in, out)`` when the family is transposed, with ``(E, .)`` biases for GPT-OSS), and
routes each token with a router (``mlp.gate``, GPT-OSS ``mlp.router``) whose weight ``(E, hidden)`` gives one
logit per expert. A :class:`MoeSite` is one such block.

:func:`expert_load` measures how much each expert is used on calibration data (real tokens only);
:func:`prune_experts_` keeps the ``keep`` most-loaded experts of every MoE block (the config stores one
number of experts, so every block keeps the same count): the router's rows (and bias) and every per-expert
tensor are sliced along dimension 0, the modules' ``num_experts`` and the config's ``num_local_experts``
(Mixtral, GPT-OSS) or ``num_experts`` (Qwen2-MoE, Qwen3-MoE, OLMoE) are set. Dense blocks between MoE blocks
(Qwen2-MoE's ``decoder_sparse_step``, ``mlp_only_layers``) and Qwen2-MoE's shared expert are left as they are.

Dropping experts is exactly masking their router logits to ``-inf`` in the original model: the routers
take a softmax over the logits (or the top-k logits) and then the top-k, so the kept experts' probabilities
are the same up to one factor per token; top-k weights renormalized to 1 (Mixtral, Qwen2-MoE with
``norm_topk_prob=True``, GPT-OSS) are then unchanged, so a token none of whose chosen experts is dropped
gets the same output. Qwen2-MoE with ``norm_topk_prob=False`` weights its experts by the full softmax,
which now runs over fewer experts: every token's expert weights grow slightly.

The MoE blocks are found by :mod:`~hf_lite.pruning.structural.moe_sites`. The plan goes through
:class:`~hf_lite.pruning.structural.plan.StructuralPlan` (``plan_experts``), so ``slice_optimizer_state_``
slices an optimizer's state with the weights, and is checked before anything changes to reload with the
stock class as the same model (``check_expressible``). Group-limited routing (DeepSeek-V3's ``n_group > 1``)
and routers with per-expert buffers (``e_score_correction_bias``) are refused.

>>> import torch
>>> from transformers import MixtralConfig, MixtralForCausalLM
>>> config = MixtralConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
...                        num_attention_heads=2, num_key_value_heads=1, num_local_experts=4)
>>> model = MixtralForCausalLM(config).eval()
>>> batch = {"input_ids": torch.tensor([[1, 2, 3, 4]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
>>> load = expert_load(model, [batch])   # {block: (E,) fraction of routed token-slots}
>>> sorted(load), [round(float(v.sum()), 4) for v in load.values()]
([0, 1], [1.0, 1.0])
>>> kept = prune_experts_(model, keep=2, scores=load)
>>> model.config.num_local_experts, tuple(model.model.layers[0].mlp.experts.gate_up_proj.shape)
(2, (2, 32, 8))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from hf_lite._utils import unwrap_model
from hf_lite.pruning.calibration import check_calibration, forward_kwargs, to_device, token_mask
from hf_lite.pruning.importance import check_count
from hf_lite.pruning.sites import model_config
from hf_lite.pruning.structural.checks import (
    check_expressible,
    checked_keep_count,
    top_indices,
)
from hf_lite.pruning.structural.moe_sites import (
    EXPERT_COUNT_KEYS,
    MoeSite,
    config_key,
    moe_block_indices,
    moe_sites_or_refuse,
)
from hf_lite.pruning.structural.plan import ParamSlice, StructuralPlan, apply_plan_, parameters_by_id
from hf_lite.pruning.structural.reload import family_name

__all__ = ["LOAD_MEASURES", "expert_load", "plan_experts", "prune_experts_"]

#: What :func:`expert_load` measures.
LOAD_MEASURES = ("tokens", "probability")


def _router_output(output: Any, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits (T, E), indices (T, k))`` from a transformers 5 router's ``(logits, scores, indices)``."""
    if isinstance(output, (tuple, list)) and len(output) >= 3:
        logits, indices = output[0], output[-1]
        if (
            isinstance(logits, torch.Tensor)
            and isinstance(indices, torch.Tensor)
            and logits.shape[-1] == num_experts
            and not indices.is_floating_point()
        ):
            return logits.detach().reshape(-1, num_experts), indices.detach().reshape(
                logits.numel() // num_experts, -1
            )
    raise ValueError(
        f"a router returned {type(output).__name__}, not (router_logits, router_scores, router_indices) as "
        "transformers 5 routers do, so expert load cannot be read from it. Pass scores= (one value per expert "
        "and block) or keep_indices= instead of calibration_batches."
    )


@torch.no_grad()
def expert_load(
    model: nn.Module,
    calibration_batches: Iterable[Mapping[str, torch.Tensor]] | None,
    *,
    measure: str = "tokens",
) -> dict[int, torch.Tensor]:
    """How much each expert of every MoE block is used on ``calibration_batches``, real tokens only.

    ``measure="tokens"``: the fraction of routed token-slots each expert receives, ``count_e / (k * T)`` for
    ``T`` real tokens each routed to ``k = num_experts_per_tok`` experts (what the experts compute; an expert
    no token picks scores 0). ``measure="probability"``: the mean router probability ``softmax(logits)_e``
    over the real tokens (softer: it also ranks experts that are never in the top-k). Each sums to 1 per
    block. Padded positions (``attention_mask == 0``) are left out. The model runs in eval mode (no router
    jitter), without gradients.

    Args:
        model: a transformers MoE model (or a PEFT model around one).
        calibration_batches: tokenized batches (dicts with ``input_ids``, ``attention_mask``).
        measure: ``"tokens"`` or ``"probability"``.

    Returns:
        ``{block index: float32 tensor (num_experts,)}`` for every MoE block.

    Raises:
        ValueError: an unknown ``measure``, no calibration data, a model without MoE blocks, or a router that
            does not return ``(logits, scores, indices)``.

    >>> import torch
    >>> from transformers import MixtralConfig, MixtralForCausalLM
    >>> model = MixtralForCausalLM(MixtralConfig(vocab_size=32, hidden_size=8, intermediate_size=16,
    ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, num_local_experts=4,
    ...     num_experts_per_tok=1))
    >>> load = expert_load(model, [{"input_ids": torch.tensor([[5, 6]])}])[0]
    >>> sorted(set((load * 2).tolist()) - {0.0, 1.0, 2.0})   # 2 tokens, 1 slot each: multiples of 1/2
    []
    """
    if measure not in LOAD_MEASURES:
        raise ValueError(
            f"measure={measure!r} is not known; use 'tokens' (fraction of routed token-slots) or 'probability' "
            "(mean router probability)."
        )
    batches = check_calibration(calibration_batches, "expert load (router statistics)")
    sites = moe_sites_or_refuse(model, "expert load")
    sums = {s.layer: torch.zeros(s.num_experts, dtype=torch.float64) for s in sites}
    mask: list[torch.Tensor | None] = [None]

    def hook(site: MoeSite):
        def read(module: nn.Module, args: Any, output: Any) -> None:
            logits, indices = _router_output(output, site.num_experts)  # (T, E), (T, k)
            real = mask[0]
            if real is not None and real.numel() == logits.shape[0]:
                logits, indices = (
                    logits[real.reshape(-1).to(logits.device)],
                    indices[real.reshape(-1).to(logits.device)],
                )
            if measure == "tokens":
                counts = torch.bincount(indices.reshape(-1).long(), minlength=site.num_experts)
                sums[site.layer] += counts[: site.num_experts].double().cpu()
            else:
                sums[site.layer] += torch.softmax(logits.double(), dim=-1).sum(dim=0).cpu()

        return read

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    handles = [s.router.register_forward_hook(hook(s)) for s in sites]
    try:
        for batch in batches:
            inputs = to_device(batch, device)
            mask[0] = token_mask(inputs)
            model(**inputs, **forward_kwargs(model))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    out = {}
    for layer, total in sums.items():
        if float(total.sum()) <= 0:
            raise ValueError(
                f"the router of block {layer} saw no real token in calibration_batches; pass batches with "
                "input_ids and an attention_mask with some ones."
            )
        out[layer] = (total / total.sum()).float()
    return out


def _count_attributes(root: nn.Module, old: int, new: int) -> list[tuple[nn.Module, str, int]]:
    """``num_experts``-like attributes equal to ``old`` anywhere in the model (experts, routers, the CausalLM's
    auxiliary loss), to be set to ``new``."""
    return [
        (module, attr, new)
        for module in root.modules()
        for attr in EXPERT_COUNT_KEYS
        if isinstance(vars(module).get(attr), int) and vars(module)[attr] == old
    ]


def _expert_slices(site: MoeSite, index: torch.Tensor) -> StructuralPlan:
    """Experts ``index`` of one MoE block: every per-expert parameter of the experts module and the router."""
    plan = StructuralPlan()
    count = site.num_experts
    for module in (site.experts, site.router):
        for attr, param in module.named_parameters(recurse=False):
            if param.dim() >= 1 and param.shape[0] == count:
                plan.slices[id(param)] = (param, ParamSlice(module, attr, 0, index))
    return plan


def plan_experts(
    model: nn.Module,
    keep: int | None = None,
    *,
    keep_ratio: float | None = None,
    keep_indices: Any = None,
    scores: Mapping[int, torch.Tensor] | None = None,
    calibration_batches: Iterable[Mapping[str, torch.Tensor]] | None = None,
    measure: str = "tokens",
) -> StructuralPlan:
    """The :class:`~hf_lite.pruning.structural.plan.StructuralPlan` of :func:`prune_experts_` (same arguments and
    checks), without changing the model: apply it with ``apply_plan_`` (and ``slice_optimizer_state_``).

    >>> from transformers import MixtralConfig, MixtralForCausalLM
    >>> model = MixtralForCausalLM(MixtralConfig(vocab_size=32, hidden_size=8, intermediate_size=16,
    ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, num_local_experts=4))
    >>> plan = plan_experts(model, keep_indices=[0, 3])
    >>> plan.config, plan.kept[0].tolist(), model.config.num_local_experts
    ({'num_local_experts': 2}, [0, 3], 4)
    """
    given = {
        k: v
        for k, v in dict(keep=keep, keep_ratio=keep_ratio, keep_indices=keep_indices).items()
        if v is not None
    }
    if len(given) != 1:
        raise ValueError(
            f"pass exactly one of keep (experts kept per block), keep_ratio or keep_indices; got "
            f"{', '.join(f'{k}={v!r}' for k, v in given.items()) or 'none'}."
        )
    sites = moe_sites_or_refuse(model, "expert pruning")
    counts = sorted({s.num_experts for s in sites})
    if len(counts) != 1:
        raise ValueError(
            f"the MoE blocks have different numbers of experts {counts}, which their config cannot describe; "
            "load the model from a checkpoint saved by stock transformers."
        )
    total = counts[0]
    key = config_key(model, EXPERT_COUNT_KEYS, total, "the number of experts")
    config = model_config(model)
    groups = getattr(config, "n_group", None)
    if isinstance(groups, int) and groups > 1:
        raise ValueError(
            f"{family_name(config)} routes each token within the best topk_group of n_group={groups} groups of "
            "consecutive experts; dropping experts would regroup the others, so the pruned model would route "
            "differently. Expert pruning supports ungrouped routers (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, "
            "GPT-OSS); prune whole layers (prune_layers_) instead."
        )
    top_k = getattr(config, "num_experts_per_tok", None) or getattr(sites[0].router, "top_k", None) or 1
    layers = [s.layer for s in sites]
    explicit = None
    if keep is not None:
        kept = check_count(keep, "keep")
    elif keep_ratio is not None:
        kept = checked_keep_count(keep_ratio, total, "experts")
    else:
        explicit = moe_block_indices(keep_indices, sites, total, "keep_indices", "experts")
        kept = len(explicit[layers[0]])
    if not top_k <= kept <= total:
        raise ValueError(
            f"keeping {kept} of {total} experts is outside {top_k}..{total}: every token is routed to "
            f"num_experts_per_tok={top_k} experts, so at least that many must remain (a smaller top-k would be a "
            f"different model), and pruning cannot add experts. Keep between {top_k} and {total} experts."
        )
    root = unwrap_model(model, peft_base=True)
    placeholder = StructuralPlan(config={key: kept}, attributes=_count_attributes(root, total, kept))
    for site in sites:
        placeholder.extend(_expert_slices(site, torch.arange(kept)))
    check_expressible(
        model,
        placeholder,
        f"keeping {kept} of {total} experts",
        hint="This family cannot express fewer experts in its config; prune whole layers (prune_layers_) instead.",
    )
    how = "explicit"
    if explicit is None:
        if scores is None:
            if calibration_batches is None:
                raise ValueError(
                    "expert pruning ranks experts by their router load, so it needs calibration_batches "
                    "(tokenized text, e.g. [tokenizer(texts, return_tensors='pt', padding=True)]) or scores= "
                    "(e.g. expert_load(model, batches)), or pass keep_indices=."
                )
            scores = expert_load(model, calibration_batches, measure=measure)
            how = f"router load ({measure})"
        else:
            how = "given scores"
        if sorted(scores) != layers or any(tuple(scores[b].shape) != (total,) for b in layers):
            raise ValueError(
                f"scores must give a ({total},) tensor for each MoE block {layers}; got "
                f"{ {b: tuple(torch.as_tensor(v).shape) for b, v in scores.items()} }. Use expert_load(model, batches)."
            )
        explicit = {b: top_indices(scores[b], kept) for b in layers}
    plan = StructuralPlan(
        config={key: kept},
        attributes=_count_attributes(root, total, kept),
        params=parameters_by_id(model),
        kept=explicit,
    )
    for site in sites:
        plan.extend(_expert_slices(site, explicit[site.layer]))
    plan.message = f"pruned experts {total} -> {kept} in {len(sites)} MoE blocks (ranked by {how})"
    return plan


def prune_experts_(
    model: nn.Module,
    keep: int | None = None,
    *,
    keep_ratio: float | None = None,
    keep_indices: Any = None,
    scores: Mapping[int, torch.Tensor] | None = None,
    calibration_batches: Iterable[Mapping[str, torch.Tensor]] | None = None,
    measure: str = "tokens",
) -> dict[int, torch.Tensor]:
    """Keep the ``keep`` most-used experts of every MoE block, in place, and set the config's expert count.

    Every MoE block keeps the same number of experts (the config stores one): those with the highest router
    load on ``calibration_batches`` (:func:`expert_load`), or the highest ``scores``, in that block; among
    equal scores the lower index wins. The router's rows and every per-expert tensor are sliced; the kept
    experts keep their order. ``num_experts_per_tok`` is unchanged, so at least that many experts must remain.

    Args:
        model: a transformers MoE model (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, GPT-OSS, ...).
        keep: number of experts kept in every MoE block.
        keep_ratio: fraction of experts kept instead, in ``(0, 1]`` (``round(keep_ratio * num_experts)``).
        keep_indices: the experts to keep instead of ranking them: one list for every MoE block, or
            ``{block: list}`` for every MoE block, each of the same length.
        scores: ``{block: (num_experts,) tensor}`` to rank by instead of measuring (e.g. a saved
            :func:`expert_load`).
        calibration_batches: tokenized batches whose router load ranks the experts.
        measure: the router load measured, ``"tokens"`` or ``"probability"`` (see :func:`expert_load`).

    Returns:
        ``{block index: kept expert indices}`` (int64, ascending, original numbering) for every MoE block.

    Raises:
        ValueError: not exactly one of ``keep``/``keep_ratio``/``keep_indices``; fewer experts than
            ``num_experts_per_tok`` or more than there are; no ranking (neither ``calibration_batches`` nor
            ``scores``); a model without MoE blocks, with experts wrapped by an adapter, or whose family cannot
            express fewer experts in its config.

    >>> from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM
    >>> model = Qwen2MoeForCausalLM(Qwen2MoeConfig(vocab_size=32, hidden_size=8, intermediate_size=16,
    ...     moe_intermediate_size=4, shared_expert_intermediate_size=8, num_hidden_layers=2,
    ...     num_attention_heads=2, num_key_value_heads=1, num_experts=8, num_experts_per_tok=2))
    >>> prune_experts_(model, keep_indices={0: [0, 1, 2, 3], 1: [4, 5, 6, 7]})[1].tolist()
    [4, 5, 6, 7]
    >>> model.config.num_experts, tuple(model.model.layers[1].mlp.gate.weight.shape)
    (4, (4, 8))
    """
    plan = plan_experts(
        model,
        keep,
        keep_ratio=keep_ratio,
        keep_indices=keep_indices,
        scores=scores,
        calibration_batches=calibration_batches,
        measure=measure,
    )
    apply_plan_(model, plan)
    return plan.kept
