"""Mixture-of-experts layouts for one-shot pruning: the experts' 3-D weights and the routers left dense.

transformers 5 stores the experts of a MoE block (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek, GPT-OSS,
...) as 3-D parameters of one ``experts`` module, not as ``nn.Linear`` layers: ``gate_up_proj``
``(num_experts, 2 * ffn, hidden)`` and ``down_proj`` ``(num_experts, hidden, ffn)``; families decorated
with ``is_transposed=True`` store each expert's matrix as ``(in, out)`` instead. Each slice
``weight[e]`` is one expert's linear map, pruned like an ``nn.Linear``: per expert (scope ``"layer"``),
per output row (``"row"``, Wanda) or in N:M groups along the input dimension. A pruning mask of an
expert tensor has the whole 3-D shape and is keyed by the parameter's name
(``model.layers.0.mlp.experts.gate_up_proj``).

A router picks the experts of each token (``mlp.gate``, Qwen2-MoE's ``shared_expert_gate``, Llama 4's
``router``): a few parameters that decide where all the others are used, so one-shot pruning leaves
routers dense and the sparsity report names them.

Wanda on experts scores ``|W[e]_ij| * ||X_e,j||_2`` where ``X_e`` are the inputs of expert ``e`` only:
the hidden states of the tokens routed to it (for ``gate_up_proj``), and the gated activations it
computes from them (for ``down_proj``), collected by a forward pre-hook on the experts module.

>>> import torch
>>> from transformers import MixtralConfig, MixtralForCausalLM
>>> config = MixtralConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
...                        num_attention_heads=2, num_key_value_heads=1, num_local_experts=4)
>>> model = MixtralForCausalLM(config)
>>> {n: (e.num_experts, e.in_dim) for n, e in find_expert_weights(model).items()}
{'model.layers.0.mlp.experts.gate_up_proj': (4, 2), 'model.layers.0.mlp.experts.down_proj': (4, 2)}
>>> list(find_moe_routers(model))
['model.layers.0.mlp.gate']
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "ExpertWeight",
    "find_expert_weights",
    "find_moe_routers",
    "expert_wanda_scores",
    "expert_down_input",
    "routed_tokens",
    "ExpertInputNormCollector",
]

logger = logging.getLogger(__name__)

#: Names of the 3-D expert weights in transformers' fused experts modules.
EXPERT_WEIGHT_NAMES: tuple[str, ...] = ("gate_up_proj", "up_proj", "down_proj")

_ROUTER_RE = re.compile(r"(^|_)(gate|router)$")


@dataclass
class ExpertWeight:
    """One 3-D expert weight: ``module.<attr>`` of shape ``(num_experts, ., .)``.

    Args:
        module: the experts module holding it.
        attr: the parameter's attribute name (``gate_up_proj``, ``up_proj``, ``down_proj``).
        in_dim: the input-feature dimension of the 3-D tensor: ``2`` for ``(E, out, in)``, ``1`` when the
            family stores it transposed, ``(E, in, out)``.

    >>> import torch
    >>> holder = torch.nn.Module()
    >>> holder.down_proj = torch.nn.Parameter(torch.zeros(4, 8, 16))
    >>> ExpertWeight(holder, "down_proj", in_dim=2).num_experts
    4
    """

    module: nn.Module
    attr: str
    in_dim: int

    @property
    def weight(self) -> torch.nn.Parameter:
        """The 3-D parameter."""
        return getattr(self.module, self.attr)

    @property
    def num_experts(self) -> int:
        """Number of experts (the tensor's first dimension)."""
        return self.weight.shape[0]


def _expert_attrs(module: nn.Module) -> list[str]:
    params = dict(module.named_parameters(recurse=False))
    return [a for a in EXPERT_WEIGHT_NAMES if a in params and params[a].dim() == 3]


def find_expert_weights(model: nn.Module) -> dict[str, ExpertWeight]:
    """The 3-D expert weights of ``model``, keyed by parameter name, in module order (empty for dense models).

    >>> import torch
    >>> find_expert_weights(torch.nn.Linear(2, 2))
    {}
    """
    found: dict[str, ExpertWeight] = {}
    for name, module in model.named_modules():
        transposed = bool(getattr(module, "is_transposed", False))
        for attr in _expert_attrs(module):
            found[f"{name}.{attr}" if name else attr] = ExpertWeight(module, attr, 1 if transposed else 2)
    return found


def find_moe_routers(model: nn.Module) -> dict[str, nn.Module]:
    """The routers of ``model``'s MoE blocks: children named ``gate``/``router``/``*_gate`` (with a 2-D
    weight) of every module that holds an experts module, keyed by module name.

    >>> import torch
    >>> find_moe_routers(torch.nn.Linear(2, 2))
    {}
    """
    routers: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        children = dict(module.named_children())
        if not any(_expert_attrs(child) for child in children.values()):
            continue
        for child_name, child in children.items():
            weight = getattr(child, "weight", None)
            if _ROUTER_RE.search(child_name) and isinstance(weight, torch.Tensor) and weight.dim() == 2:
                routers[f"{name}.{child_name}" if name else child_name] = child
    return routers


def expert_wanda_scores(weight: torch.Tensor, input_norms: torch.Tensor, in_dim: int) -> torch.Tensor:
    """Wanda scores of a 3-D expert weight: ``|W[e]_ij| * ||X_e,j||_2`` for every expert ``e``, in float32.

    Args:
        weight: ``(E, out, in)`` (``in_dim=2``) or ``(E, in, out)`` (``in_dim=1``).
        input_norms: ``(E, in)``, each expert's input-feature norms over the tokens routed to it.
        in_dim: the input-feature dimension of ``weight``, ``1`` or ``2``.

    >>> import torch
    >>> expert_wanda_scores(torch.tensor([[[1.0, -1.0]], [[2.0, 2.0]]]), torch.tensor([[10.0, 0.1], [1.0, 0.0]]), 2)
    tensor([[[10.0000,  0.1000]],
    <BLANKLINE>
            [[ 2.0000,  0.0000]]])
    """
    if weight.dim() != 3 or in_dim not in (1, 2):
        raise ValueError(
            f"weight must be a 3-D expert weight with in_dim 1 or 2; got shape {tuple(weight.shape)} and "
            f"in_dim={in_dim!r}. Take both from find_expert_weights (ExpertWeight.weight, ExpertWeight.in_dim)."
        )
    expected = (weight.shape[0], weight.shape[in_dim])
    if tuple(input_norms.shape) != expected:
        raise ValueError(
            f"input_norms has shape {tuple(input_norms.shape)} but weight of shape {tuple(weight.shape)} needs "
            f"{expected}: one norm per expert and input feature (dim {in_dim})."
        )
    norms = input_norms.detach().float().to(weight.device).unsqueeze(3 - in_dim)  # broadcast over outputs
    return weight.detach().abs().float() * norms


def routed_tokens(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], fix: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens (T, hidden), expert indices (T, k))`` of a call ``experts(hidden_states, top_k_index, ...)``
    seen by a forward pre-hook (transformers' fused experts modules; ``router_indices`` in some families),
    detached. A module called otherwise cannot say which tokens reach which expert: ``ValueError`` ending in
    ``fix``.

    >>> import torch
    >>> x, idx = routed_tokens(None, (torch.ones(2, 3, 4), torch.zeros(6, 2, dtype=torch.long)), {}, "")
    >>> tuple(x.shape), tuple(idx.shape)
    ((6, 4), (6, 2))
    """
    hidden = args[0] if args else kwargs.get("hidden_states")
    index = args[1] if len(args) > 1 else kwargs.get("top_k_index", kwargs.get("router_indices"))
    if not isinstance(hidden, torch.Tensor) or not isinstance(index, torch.Tensor):
        raise ValueError(
            f"{type(module).__name__} is not called as experts(hidden_states, top_k_index, ...), so the tokens "
            f"each expert receives are unknown: {fix}"
        )
    x = hidden.detach().reshape(-1, hidden.shape[-1])  # (T, hidden)
    return x, index.detach().reshape(x.shape[0], -1)  # (T, k)


def expert_down_input(module: nn.Module, expert: int, x: torch.Tensor) -> torch.Tensor:
    """The input of expert ``expert``'s ``down_proj`` for its tokens ``x`` ``(tokens, hidden)``, in float32.

    ``module._apply_gate(x @ gate_up_proj[e]^T + gate_up_proj_bias[e])`` (transformers' gating of the
    family: ``act_fn(gate) * up`` by default, GPT-OSS's clamped interleaved SwiGLU), or
    ``act_fn(x @ up_proj[e]^T (+ bias))`` for experts without a gate; ``(E, in, out)`` storage when the
    family is transposed.

    >>> import torch
    >>> from transformers import MixtralConfig
    >>> from transformers.models.mixtral.modeling_mixtral import MixtralExperts
    >>> experts = MixtralExperts(MixtralConfig(hidden_size=8, intermediate_size=16, num_local_experts=4))
    >>> expert_down_input(experts, 0, torch.zeros(3, 8)).shape   # (tokens, ffn)
    torch.Size([3, 16])
    """
    first = "gate_up_proj" if "gate_up_proj" in _expert_attrs(module) else "up_proj"
    weight = getattr(module, first)[expert].detach().float()  # (out, in), or (in, out) when transposed
    x = x.float()
    out = x @ weight if getattr(module, "is_transposed", False) else x @ weight.T  # (tokens, 2*ffn or ffn)
    bias = getattr(module, f"{first}_bias", None)
    if isinstance(bias, torch.Tensor):
        out = out + bias[expert].detach().float()
    if first == "up_proj":
        return module.act_fn(out).float()  # (tokens, ffn)
    gate = getattr(module, "_apply_gate", None)
    if gate is None:
        g, u = out.chunk(2, dim=-1)
        return (module.act_fn(g) * u).float()  # (tokens, ffn)
    return gate(out).float()  # (tokens, ffn)


class ExpertInputNormCollector:
    """Forward pre-hooks on experts modules that accumulate, per expert, the squared inputs of each expert
    weight over the real tokens routed to that expert: ``(num_experts, in_features)`` per weight.

    The experts module is called as ``experts(hidden_states (T, hidden), top_k_index (T, k), ...)`` in
    every transformers 5 MoE family; ``gate_up_proj``'s input is ``hidden_states[routed]`` and
    ``down_proj``'s is ``experts._apply_gate(hidden @ gate_up_proj[e]^T (+ bias))`` (``act_fn(up)`` without a
    gate), recomputed here from the current weights.

    Args:
        experts: ``{parameter name: ExpertWeight}`` to collect for.

    >>> import torch
    >>> from transformers import MixtralConfig, MixtralForCausalLM
    >>> config = MixtralConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
    ...                        num_attention_heads=2, num_key_value_heads=1, num_local_experts=4)
    >>> model = MixtralForCausalLM(config)
    >>> with ExpertInputNormCollector(find_expert_weights(model)) as collector, torch.no_grad():
    ...     _ = model(torch.tensor([[1, 2, 3]]))
    >>> norms, unrouted = collector.norms()
    >>> norms["model.layers.0.mlp.experts.down_proj"].shape   # (num_experts, ffn)
    torch.Size([4, 16])
    """

    def __init__(self, experts: Mapping[str, ExpertWeight]):
        self.experts = dict(experts)
        self.sq_sums = {
            n: torch.zeros(
                e.num_experts, e.weight.shape[e.in_dim], dtype=torch.float32, device=e.weight.device
            )
            for n, e in self.experts.items()
        }
        self.calls = dict.fromkeys(self.experts, 0)
        self.token_masks: list[torch.Tensor] = []  # candidate (batch, seq) masks of the current batch
        self._handles: list[Any] = []

    def __enter__(self) -> ExpertInputNormCollector:
        modules: dict[int, tuple[nn.Module, dict[str, str]]] = {}
        for name, e in self.experts.items():
            modules.setdefault(id(e.module), (e.module, {}))[1][e.attr] = name
        for module, names in modules.values():
            self._handles.append(module.register_forward_pre_hook(self._hook(names), with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, names: dict[str, str]):
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            x, index = routed_tokens(
                module, args, kwargs,
                "Wanda needs them. Use magnitude_prune_ for this model, or exclude the experts from Wanda "
                "(exclude=[*DEFAULT_EXCLUDE, 'experts']).",
            )  # fmt: skip
            real = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)  # (T,)
            for token_mask in self.token_masks:
                if token_mask.numel() == x.shape[0]:
                    real = token_mask.reshape(-1).to(x.device)
                    break
            first = "gate_up_proj" if "gate_up_proj" in _expert_attrs(module) else "up_proj"
            for e in range(self.experts[next(iter(names.values()))].num_experts):
                routed = real & (index == e).any(dim=-1)  # (T,)
                if not bool(routed.any()):
                    continue
                xe = x[routed].float()  # (tokens_e, hidden)
                if first in names:
                    self._add(names[first], e, xe)
                if "down_proj" in names:
                    self._add(names["down_proj"], e, expert_down_input(module, e, xe))
            for name in names.values():
                self.calls[name] += 1

        return hook

    def _add(self, name: str, e: int, x: torch.Tensor) -> None:
        self.sq_sums[name][e] += (x * x).sum(dim=0).to(self.sq_sums[name].device)

    def norms(self) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
        """``({name: (num_experts, in) input norms}, {name: experts no calibration token reached})``."""
        silent = [n for n, c in self.calls.items() if c == 0]
        if silent:
            raise ValueError(
                f"expert weights {', '.join(silent[:5])} received no input during the calibration forward "
                "passes, so Wanda has no activations to score them with. Exclude them "
                "(exclude=[*DEFAULT_EXCLUDE, 'experts']) or use magnitude_prune_."
            )
        norms = {n: s.sqrt() for n, s in self.sq_sums.items()}  # ||X_e,j||_2 over the expert's tokens
        unrouted = {
            n: [e for e in range(s.shape[0]) if not bool(s[e].any())] for n, s in self.sq_sums.items()
        }
        return norms, {n: u for n, u in unrouted.items() if u}
