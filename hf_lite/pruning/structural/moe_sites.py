"""Where the mixture-of-experts blocks of a model are, and which config entries describe them.

A :class:`MoeSite` is the MoE block of one transformer block: its router (``mlp.gate``, GPT-OSS ``mlp.router``,
weight ``(num_experts, hidden)``), its experts module of 3-D weights (see
:func:`hf_lite.pruning.experts.find_expert_weights`) and Qwen2-MoE's ``shared_expert``. :func:`config_key` finds
the config entry holding a size (``num_local_experts`` for Mixtral, ``num_experts`` for Qwen2-MoE, ...) or
refuses, naming the family.

>>> from transformers import MixtralConfig, MixtralForCausalLM
>>> model = MixtralForCausalLM(MixtralConfig(vocab_size=32, hidden_size=8, intermediate_size=16,
...     num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, num_local_experts=4))
>>> [(s.layer, s.num_experts, s.width) for s in find_moe_sites(model)]
[(0, 4, 16), (1, 4, 16)]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hf_lite._utils import unwrap_model
from hf_lite.pruning.experts import find_expert_weights, find_moe_routers
from hf_lite.pruning.sites import find_layer_list, model_config
from hf_lite.pruning.structural.checks import explicit_indices
from hf_lite.pruning.structural.reload import family_name

__all__ = [
    "EXPERT_COUNT_KEYS",
    "MoeSite",
    "config_key",
    "find_moe_sites",
    "moe_block_indices",
    "moe_sites_or_refuse",
]

#: Config entries (and module attributes: experts, routers, the ``*ForCausalLM`` auxiliary loss) that may hold the
#: number of routed experts per MoE block; the first config entry that matches wins.
EXPERT_COUNT_KEYS: tuple[str, ...] = ("num_local_experts", "num_experts", "n_routed_experts")


@dataclass(frozen=True)
class MoeSite:
    """The MoE block of one transformer block.

    Args:
        layer: block index.
        block: the module holding router and experts (``mlp`` for Mixtral and Qwen2-MoE).
        router: the router; its ``weight`` is ``(num_experts, hidden)``.
        experts: the experts module holding the 3-D expert weights.
        shared: Qwen2-MoE's ``shared_expert`` (a dense gated FFN every token passes), or ``None``.

    >>> from transformers import MixtralConfig, MixtralForCausalLM
    >>> model = MixtralForCausalLM(MixtralConfig(vocab_size=32, hidden_size=8, intermediate_size=16,
    ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, num_local_experts=4))
    >>> site = find_moe_sites(model)[0]
    >>> site.layer, site.num_experts, site.width, type(site.router).__name__
    (0, 4, 16, 'MixtralTopKRouter')
    """

    layer: int
    block: nn.Module
    router: nn.Module
    experts: nn.Module
    shared: nn.Module | None = None

    @property
    def num_experts(self) -> int:
        """Number of routed experts (rows of the router's weight)."""
        return int(self.router.weight.shape[0])

    @property
    def width(self) -> int:
        """Each expert's FFN width (the input features of ``down_proj``)."""
        down = find_expert_weights(self.experts)["down_proj"]
        return int(down.weight.shape[down.in_dim])


def find_moe_sites(model: nn.Module) -> list[MoeSite]:
    """The MoE block of every transformer block that has one, in block order (``[]`` for dense models).

    Raises:
        ValueError: a block holds several experts modules, an experts module whose router (a sibling
            ``gate``/``router`` with a ``(num_experts, hidden)`` weight) is not found, or adapter (LoRA) weights
            on the experts or the router.

    >>> from hf_lite.testing import build_tiny_model
    >>> find_moe_sites(build_tiny_model("llama")[0])
    []
    """
    sites = []
    for i, block in enumerate(find_layer_list(model)):
        holders = {id(e.module): e.module for e in find_expert_weights(block).values()}
        if not holders:
            continue
        found = []
        for _, parent in block.named_modules():
            children = dict(parent.named_children())
            experts = [c for c in children.values() if id(c) in holders]
            if not experts:
                continue
            adapters = [
                n for n, _ in parent.named_parameters() if "lora_" in n and not n.startswith("shared_expert.")
            ]
            if adapters:
                raise ValueError(
                    f"block {i}'s experts or router carry adapter weights ({', '.join(adapters[:2])}); expert pruning "
                    "slices plain expert weights only. Merge the adapter first (model = model.merge_and_unload()) "
                    "or prune before attaching it."
                )
            count = next(iter(find_expert_weights(experts[0]).values())).num_experts
            routers = [
                r
                for r in find_moe_routers(parent).values()
                if r in children.values() and r.weight.shape[0] == count
            ]
            if len(experts) != 1 or len(routers) != 1:
                raise ValueError(
                    f"block {i} ({type(block).__name__}) has {len(experts)} experts modules and {len(routers)} "
                    f"routers with {count} rows in {type(parent).__name__}; expert pruning supports one experts "
                    "module with one router (a child named gate or router whose weight is (num_experts, hidden)). "
                    "Prune whole layers (prune_layers_) instead."
                )
            shared = children.get("shared_expert")
            found.append(MoeSite(i, parent, routers[0], experts[0], shared))
        if len(found) != 1:
            raise ValueError(
                f"block {i} ({type(block).__name__}) has {len(found)} MoE blocks; expert pruning supports one per "
                "transformer block. Prune whole layers (prune_layers_) instead."
            )
        sites.append(found[0])
    return sites


def moe_sites_or_refuse(model: nn.Module, what: str) -> list[MoeSite]:
    """:func:`find_moe_sites`, refusing a model without MoE blocks (``what`` names the operation)."""
    sites = find_moe_sites(model)
    if not sites:
        family = family_name(model_config(model))
        raise ValueError(
            f"{what}: {family} ({type(unwrap_model(model, peft_base=True)).__name__}) has no mixture-of-experts "
            "blocks (an experts module of 3-D weights with a router). For a dense model prune FFN neurons "
            "(prune_ffn_), attention heads or whole layers instead."
        )
    return sites


def moe_block_indices(
    spec: Any, sites: list[MoeSite], size: int, name: str, what: str
) -> dict[int, torch.Tensor]:
    """``spec``, one list for every MoE block or ``{block: list}`` for every MoE block, as ``{block: sorted
    indices}`` after checking ranges, repeats and equal lengths (the config stores one count).

    >>> from transformers import MixtralConfig, MixtralForCausalLM
    >>> model = MixtralForCausalLM(MixtralConfig(vocab_size=32, hidden_size=8, intermediate_size=16,
    ...     num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, num_local_experts=4))
    >>> moe_block_indices([3, 1], find_moe_sites(model), 4, "keep_indices", "experts")[1].tolist()
    [1, 3]
    """
    layers = [s.layer for s in sites]
    if isinstance(spec, Mapping):
        if sorted(spec) != layers:
            raise ValueError(
                f"{name} gives blocks {sorted(spec)} but the MoE blocks are {layers}; give every MoE block (the same "
                f"number of {what} in each), or one list used for all of them."
            )
        spec = {layers.index(b): v for b, v in spec.items()}
    return {layers[i]: v for i, v in explicit_indices(spec, len(sites), size, name, what).items()}


def config_key(model: nn.Module, keys: Iterable[str], value: int, what: str) -> str:
    """The first of ``keys`` the model's config holds with ``value``; ``ValueError`` naming the family if none.

    >>> from transformers import MixtralConfig, MixtralForCausalLM
    >>> model = MixtralForCausalLM(MixtralConfig(vocab_size=32, hidden_size=8, intermediate_size=16,
    ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, num_local_experts=4))
    >>> config_key(model, EXPERT_COUNT_KEYS, 4, "the number of experts")
    'num_local_experts'
    """
    config = model_config(model)
    keys = tuple(keys)
    for key in keys:
        current = getattr(config, key, None)
        if isinstance(current, int) and not isinstance(current, bool) and current == value:
            return key
    present = {k: getattr(config, k) for k in keys if hasattr(config, k)}
    raise ValueError(
        f"{family_name(config)} ({type(config).__name__}) has no config entry for {what} ({value}) among "
        f"{', '.join(keys)} (found {present or 'none'}), so stock from_pretrained could not rebuild the pruned "
        "model from its config. This family cannot express this pruning; prune whole layers (prune_layers_) "
        "instead."
    )
