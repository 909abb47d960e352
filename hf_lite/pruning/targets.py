"""Which layers of a transformers model to prune, chosen by name (regexes) among its Linear/Conv1D layers.

Prunable layers are ``torch.nn.Linear`` and transformers' ``Conv1D`` (GPT-2 family). Embeddings, norms
and output heads are left dense by default: they hold few of the parameters but much of the accuracy,
and an output head is often tied to the input embeddings, so pruning it would prune the vocabulary too.

``Conv1D`` stores its weight as ``(in_features, out_features)``, the transpose of ``nn.Linear``; use
:func:`in_features_dim` wherever the input dimension matters (N:M groups, Wanda's per-output comparison).

>>> from hf_lite.testing import build_tiny_model
>>> model, _ = build_tiny_model("llama")
>>> list(find_prunable_modules(model, include=r"layers\\.0\\.mlp"))
['model.layers.0.mlp.gate_proj', 'model.layers.0.mlp.up_proj', 'model.layers.0.mlp.down_proj']
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

from hf_lite.heads import HEAD_PATTERNS
from hf_lite.pruning.experts import ExpertWeight, find_expert_weights, find_moe_routers
from hf_lite.pruning.masks import check_patterns
from hf_lite.pruning.sites import in_features_dim, is_prunable, output_embeddings
from hf_lite.summary import fold_layer_names

if TYPE_CHECKING:
    from torch import nn

# in_features_dim and is_prunable live in hf_lite.pruning.sites, HEAD_PATTERNS in hf_lite.heads;
# importable from here as before.
__all__ = [
    "DEFAULT_EXCLUDE",
    "HEAD_PATTERNS",
    "abbreviate_names",
    "find_prunable_modules",
    "find_prunable_targets",
    "in_features_dim",
    "is_prunable",
]

# HEAD_PATTERNS (regexes of output heads and their transforms: LM heads, classifiers, poolers, DistilBERT's
# pre_classifier, BERT's cls.*, ModernBERT's head.*, ...) has one home, hf_lite.heads, shared with
# quantization and LoRA; importable from here as before.
#: Modules left dense unless the caller says otherwise: heads, embeddings, norms, and PEFT adapter
#: matrices (LoRA's A/B are trained separately and merged later; prune the ``base_layer`` they wrap).
DEFAULT_EXCLUDE: tuple[str, ...] = (
    *HEAD_PATTERNS,
    r"embed",
    r"norm",
    r"(^|\.)lora_(A|B|embedding_A|embedding_B)(\.|$)",
)

_MAX_LISTED = 30


def abbreviate_names(names: Iterable[str], limit: int = _MAX_LISTED) -> str:
    """Module names with layer indices folded to ``*``, deduplicated, at most ``limit`` of them.

    >>> abbreviate_names(["model.layers.0.q_proj", "model.layers.1.q_proj", "lm_head"])
    'model.layers.*.q_proj, lm_head'
    """
    folded = fold_layer_names(names)
    shown = ", ".join(folded[:limit])
    return shown + (f", ... ({len(folded) - limit} more)" if len(folded) > limit else "")


def find_prunable_modules(
    model: nn.Module,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = DEFAULT_EXCLUDE,
) -> dict[str, nn.Module]:
    """The layers of ``model`` to prune: ``nn.Linear`` and ``Conv1D`` modules chosen by name.

    A layer is kept when its name matches one of ``include`` (all layers if ``None``) and none of
    ``exclude``; patterns are regular expressions searched anywhere in the dotted module name
    (``"q_proj"`` matches ``model.layers.0.self_attn.q_proj``; anchor with ``^``/``$`` for more control).
    The model's output embeddings (``get_output_embeddings()``) and the routers of MoE blocks
    (:func:`~hf_lite.pruning.experts.find_moe_routers`, e.g. Qwen2-MoE's ``shared_expert_gate``) are never
    chosen unless an ``include`` pattern names them. Layers of bitsandbytes-quantized models are refused:
    prune before quantizing. The 3-D expert weights of MoE blocks are not modules; see
    :func:`find_prunable_targets`.

    Args:
        model: a transformers model (or any ``nn.Module``).
        include: regex or list of regexes of layers to prune; ``None`` = every Linear/Conv1D layer.
        exclude: regex or list of regexes of layers to leave dense; defaults to :data:`DEFAULT_EXCLUDE`
            (heads, embeddings, norms, LoRA matrices). Pass ``[*DEFAULT_EXCLUDE, "more"]`` to add to it,
            or ``None`` to exclude nothing.

    Returns:
        ``{name: module}`` in the model's module order.

    Raises:
        ValueError: a pattern (of ``include``, or of ``exclude`` beyond the defaults) matches no
            Linear/Conv1D layer, nothing is left to prune, or a chosen layer is quantized.

    >>> from hf_lite.testing import build_tiny_model
    >>> model, _ = build_tiny_model("gpt2")
    >>> no_attention = find_prunable_modules(model, exclude=[*DEFAULT_EXCLUDE, "attn"])
    >>> len(find_prunable_modules(model)), len(no_attention)
    (8, 4)
    """
    return _choose(model, include, exclude, with_experts=False)[0]


def find_prunable_targets(
    model: nn.Module,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = DEFAULT_EXCLUDE,
) -> tuple[dict[str, nn.Module], dict[str, ExpertWeight]]:
    """The layers (as :func:`find_prunable_modules`) and the 3-D MoE expert weights of ``model`` to prune.

    Expert weights are chosen by their parameter name (``model.layers.0.mlp.experts.gate_up_proj``) with
    the same ``include``/``exclude`` patterns; patterns are checked against layer and expert names together.

    Returns:
        ``({layer name: module}, {expert parameter name: ExpertWeight})``; the second is empty for dense models.

    >>> from hf_lite.testing import build_tiny_model
    >>> layers, experts = find_prunable_targets(build_tiny_model("llama")[0])
    >>> len(layers), experts
    (14, {})
    """
    return _choose(model, include, exclude, with_experts=True)


def _choose(
    model: nn.Module,
    include: str | Iterable[str] | None,
    exclude: str | Iterable[str] | None,
    *,
    with_experts: bool,
) -> tuple[dict[str, nn.Module], dict[str, ExpertWeight]]:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    includes = check_patterns(include, "include") or []
    excludes = check_patterns(exclude, "exclude") or []
    candidates = {name: module for name, module in model.named_modules() if name and is_prunable(module)}
    experts = find_expert_weights(model) if with_experts else {}
    what = "Linear/Conv1D layer or MoE expert weight" if experts else "Linear/Conv1D layer"
    if not candidates and not experts:
        raise ValueError(f"{type(model).__name__} has no nn.Linear or Conv1D layer to prune.")
    names = [*candidates, *experts]
    for kind, patterns in (
        ("include", includes),
        ("exclude", [p for p in excludes if p not in DEFAULT_EXCLUDE]),
    ):
        for pattern in patterns:
            if not any(re.search(pattern, name) for name in names):
                raise ValueError(
                    f"{kind} pattern {pattern!r} matches no {what} of {type(model).__name__}. "
                    f"Layers it has: {abbreviate_names(names)}. "
                    "Patterns are regexes searched in these names."
                )

    def wanted(name: str) -> bool:
        if includes and not any(re.search(p, name) for p in includes):
            return False
        return not any(re.search(p, name) for p in excludes)

    head = output_embeddings(model)
    routers = find_moe_routers(model)
    chosen: dict[str, nn.Module] = {}
    for name, module in candidates.items():
        named = any(re.search(p, name) for p in includes)
        if not wanted(name) or ((module is head or name in routers) and not named):
            continue
        chosen[name] = module
    chosen_experts = {name: e for name, e in experts.items() if wanted(name)}
    if not chosen and not chosen_experts:
        shown = (
            "DEFAULT_EXCLUDE (heads, embeddings, norms, LoRA)"
            if exclude == DEFAULT_EXCLUDE
            else repr(exclude)
        )
        raise ValueError(
            f"include={include!r} and exclude={shown} leave no layer of {type(model).__name__} to prune. "
            f"Layers it has: {abbreviate_names(names)}."
        )
    quantized = [n for n, m in chosen.items() if type(m).__module__.startswith("bitsandbytes")]
    if quantized:
        raise ValueError(
            f"layers {abbreviate_names(quantized, 5)} are bitsandbytes-quantized; their packed weights "
            "cannot be pruned in place. Prune the full-precision model first, then quantize it "
            "(or exclude them)."
        )
    return chosen, chosen_experts
