"""The importance of every FFN neuron of every expert of mixture-of-experts blocks, for :mod:`expert_ffn`.

:func:`expert_neuron_scores` gives one ``(num_experts, ffn)`` score tensor per MoE block: ``"magnitude"`` from
the weights alone (a neuron's gate and up rows and its ``down_proj`` column), ``"activation"`` from the
``down_proj`` inputs of the calibration tokens the router sends to each expert (forward pre-hooks on the
experts modules). :func:`check_expert_importance` names the importances these scores support.

>>> check_expert_importance("magnitude")  # supported: no error
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from hf_lite.pruning.calibration import check_calibration, forward_kwargs, to_device, token_mask
from hf_lite.pruning.experts import expert_down_input, find_expert_weights, routed_tokens
from hf_lite.pruning.structural.moe_sites import MoeSite, moe_sites_or_refuse

__all__ = ["check_expert_importance", "expert_neuron_scores"]


def _fold(site: MoeSite, attr: str, rows: torch.Tensor) -> torch.Tensor:
    """``(E, rows)`` per-row values of ``attr`` -> ``(E, ffn)`` per neuron (gate and up rows added)."""
    if attr != "gate_up_proj":
        return rows
    e, width = rows.shape[0], rows.shape[1] // 2
    if getattr(site.experts, "is_concatenated", True):
        return rows.view(e, 2, width).sum(dim=1)  # rows [gate | up]
    return rows.view(e, width, 2).sum(dim=2)  # rows gate0, up0, gate1, up1, ...


def _magnitude(site: MoeSite) -> torch.Tensor:
    """``(E, ffn)`` L2 norm of each expert neuron's weights (gate and up rows, down column)."""
    total = torch.zeros(site.num_experts, site.width)
    for attr, ew in find_expert_weights(site.experts).items():
        w = ew.weight.detach().float().cpu() ** 2
        if attr == "down_proj":
            total += w.sum(dim=3 - ew.in_dim)  # over hidden: (E, ffn)
        else:
            total += _fold(site, attr, w.sum(dim=ew.in_dim))  # over hidden: (E, rows)
    return total.sqrt()


class _ExpertActivations:
    """Forward pre-hooks on experts modules: per expert, the sum of ``|down_proj input|`` over the real tokens
    routed to it, and their count."""

    def __init__(self, sites: list[MoeSite]):
        self.sums = {s.layer: torch.zeros(s.num_experts, s.width, dtype=torch.float64) for s in sites}
        self.counts = {s.layer: torch.zeros(s.num_experts, dtype=torch.long) for s in sites}
        self.mask: torch.Tensor | None = None
        self.handles = [
            s.experts.register_forward_pre_hook(self._hook(s.layer), with_kwargs=True) for s in sites
        ]

    def _hook(self, layer: int):
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            x, index = routed_tokens(module, args, kwargs, "use importance='magnitude'.")
            real = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
            if self.mask is not None and self.mask.numel() == x.shape[0]:
                real = self.mask.reshape(-1).to(x.device)
            for e in range(self.counts[layer].shape[0]):
                routed = real & (index == e).any(dim=-1)  # (T,)
                if bool(routed.any()):
                    a = expert_down_input(module, e, x[routed]).abs()  # (tokens_e, ffn)
                    self.sums[layer][e] += a.sum(dim=0).double().cpu()
                    self.counts[layer][e] += a.shape[0]

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def check_expert_importance(importance: object) -> None:
    if importance not in ("magnitude", "activation"):
        raise ValueError(
            f"importance={importance!r} is not available for expert neurons; use 'magnitude' (weight norms, no "
            "data) or 'activation' (mean |activation| over the tokens routed to each expert)."
        )


@torch.no_grad()
def expert_neuron_scores(
    model: nn.Module,
    importance: str = "magnitude",
    calibration_batches: Iterable[Mapping[str, torch.Tensor]] | None = None,
) -> dict[int, torch.Tensor]:
    """Importance of every FFN neuron of every expert of every MoE block (higher = keep).

    ``"magnitude"``: the L2 norm of the neuron's weights (its gate and up rows, its ``down_proj`` column).
    ``"activation"``: the mean ``|a_j|`` of the expert's ``down_proj`` input ``act(gate) * up`` over the real
    calibration tokens routed to that expert; an expert no calibration token reaches is scored by magnitude.

    Args:
        model: a transformers MoE model.
        importance: ``"magnitude"`` or ``"activation"``.
        calibration_batches: tokenized batches, for ``"activation"``.

    Returns:
        ``{block index: float32 tensor (num_experts, ffn)}`` for every MoE block.

    >>> from transformers import MixtralConfig, MixtralForCausalLM
    >>> model = MixtralForCausalLM(MixtralConfig(vocab_size=32, hidden_size=8, intermediate_size=16,
    ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, num_local_experts=4))
    >>> expert_neuron_scores(model)[0].shape
    torch.Size([4, 16])
    """
    check_expert_importance(importance)
    sites = moe_sites_or_refuse(model, "expert FFN scores")
    magnitude = {s.layer: _magnitude(s) for s in sites}
    if importance == "magnitude":
        return magnitude
    batches = check_calibration(calibration_batches, "importance='activation'")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    collector = _ExpertActivations(sites)
    try:
        for batch in batches:
            inputs = to_device(batch, device)
            collector.mask = token_mask(inputs)
            model(**inputs, **forward_kwargs(model))
    finally:
        collector.remove()
        model.train(was_training)
    out = {}
    for s in sites:
        counts = collector.counts[s.layer]
        means = (collector.sums[s.layer] / counts.clamp(min=1).unsqueeze(1)).float()
        out[s.layer] = torch.where((counts > 0).unsqueeze(1), means, magnitude[s.layer])
    return out
