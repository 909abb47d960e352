"""Count sparsity: zeros per pruned layer, over the pruned layers, and over the whole model; and, given the
parameter count before pruning, the parameters that structural pruning removed.

Figures are counted from the weights (and from masks when given), never derived from a requested
sparsity. Unstructured and N:M sparsity keep every tensor's shape, so they neither shrink a dense
checkpoint nor speed up dense CPU kernels; only structural pruning (fewer heads, neurons or layers) does,
and it leaves no zeros behind: its effect shows as removed parameters, not as sparsity. In MoE models the
experts' 3-D weights are targeted like layers; the routers stay dense and the report names them.

>>> from hf_lite.testing import build_tiny_model
>>> from hf_lite.pruning import magnitude_prune_
>>> model, _ = build_tiny_model("llama")
>>> masks = magnitude_prune_(model, 0.5)
>>> report = sparsity_report(model, masks)
>>> report.targeted_sparsity
0.5
>>> print(report.to_markdown().splitlines()[0])
## Sparsity report
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from hf_lite.pruning.experts import find_expert_weights, find_moe_routers
from hf_lite.pruning.sites import output_embeddings
from hf_lite.pruning.targets import DEFAULT_EXCLUDE, HEAD_PATTERNS, abbreviate_names, find_prunable_targets

if TYPE_CHECKING:
    from torch import nn

__all__ = ["LayerSparsity", "SparsityReport", "sparsity_report", "SPEED_NOTE"]

#: Stated in every Markdown report, because sparsity figures are easily read as speedups.
SPEED_NOTE = (
    "Unstructured and N:M (semi-structured) sparsity do not speed up dense CPU kernels and do not shrink a "
    "dense checkpoint: every weight tensor keeps its shape and the zeros are still multiplied. Only "
    "structural pruning (removing heads, neurons or layers) makes dense CPU inference faster; 2:4 sparsity "
    "runs faster only on GPUs with sparse tensor cores and dedicated kernels."
)


def _ratio(zeros: int, total: int) -> float:
    return zeros / total if total else 0.0


@dataclass
class LayerSparsity:
    """Zeros in one pruned layer's weight (biases are not counted).

    Args:
        shape: the weight's shape.
        zeros: number of weight entries equal to zero.
        total: number of weight entries.
        masked: number of entries the mask prunes (``False``), or ``None`` without a mask.

    >>> LayerSparsity(shape=(4, 4), zeros=8, total=16).sparsity
    0.5
    """

    shape: tuple[int, ...]
    zeros: int
    total: int
    masked: int | None = None

    @property
    def sparsity(self) -> float:
        """``zeros / total``."""
        return _ratio(self.zeros, self.total)


@dataclass
class SparsityReport:
    """Counted sparsity of a model. Build it with :func:`sparsity_report`.

    Args:
        layers: ``{layer name: LayerSparsity}`` for the targeted layers (their weights).
        targeted_zeros / targeted_total: zeros and entries over the targeted layers' weights.
        model_zeros / model_total: over all parameters of the model (biases, norms, embeddings, heads
            included; tied parameters counted once).
        body_zeros / body_total: over all parameters except embeddings and output heads.
        original_total: the model's parameter count before pruning (tied parameters once), or ``None`` when
            not given; then :attr:`removed_parameters` says how much structural pruning removed.
        dense_routers: ``{router name: parameters}`` of the MoE routers, which one-shot pruning keeps dense
            (MoE expert weights are targeted, keyed by parameter name, and counted in the targeted totals).

    >>> r = SparsityReport(layers={}, targeted_zeros=5, targeted_total=10, model_zeros=5, model_total=20,
    ...                    body_zeros=5, body_total=15, original_total=40)
    >>> r.targeted_sparsity, r.model_sparsity, r.removed_parameters, r.removed_fraction
    (0.5, 0.25, 20, 0.5)
    """

    layers: dict[str, LayerSparsity] = field(default_factory=dict)
    targeted_zeros: int = 0
    targeted_total: int = 0
    model_zeros: int = 0
    model_total: int = 0
    body_zeros: int = 0
    body_total: int = 0
    original_total: int | None = None
    dense_routers: dict[str, int] = field(default_factory=dict)

    @property
    def removed_parameters(self) -> int | None:
        """Parameters removed (``original_total - model_total``): what structural pruning took out of the model;
        ``None`` when ``original_total`` is not known."""
        return None if self.original_total is None else self.original_total - self.model_total

    @property
    def removed_fraction(self) -> float | None:
        """:attr:`removed_parameters` as a fraction of ``original_total`` (``None`` when not known)."""
        removed = self.removed_parameters
        return None if removed is None else _ratio(removed, self.original_total or 0)

    @property
    def targeted_sparsity(self) -> float:
        """Fraction of zeros over the targeted layers' weights."""
        return _ratio(self.targeted_zeros, self.targeted_total)

    @property
    def model_sparsity(self) -> float:
        """Fraction of zeros over all parameters."""
        return _ratio(self.model_zeros, self.model_total)

    @property
    def body_sparsity(self) -> float:
        """Fraction of zeros over all parameters except embeddings and output heads."""
        return _ratio(self.body_zeros, self.body_total)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable dict (counts, the three sparsity ratios, removed parameters and fraction).

        >>> SparsityReport().to_dict()["targeted_sparsity"]
        0.0
        """
        out = asdict(self)
        out["layers"] = {
            n: {**asdict(s), "shape": list(s.shape), "sparsity": s.sparsity} for n, s in self.layers.items()
        }
        out.update(
            targeted_sparsity=self.targeted_sparsity,
            model_sparsity=self.model_sparsity,
            body_sparsity=self.body_sparsity,
            removed_parameters=self.removed_parameters,
            removed_fraction=self.removed_fraction,
        )
        return out

    def to_markdown(self) -> str:
        """A Markdown summary: totals, the parameters removed (when the count before pruning is known), a
        per-layer table, and the note on what sparsity does not speed up.

        >>> print(SparsityReport().to_markdown().splitlines()[0])
        ## Sparsity report
        """
        with_mask = any(s.masked is not None for s in self.layers.values())
        lines = [
            "## Sparsity report",
            "",
            "| scope | zeros | parameters | sparsity |",
            "|---|---:|---:|---:|",
            f"| pruned layers ({len(self.layers)}) | {self.targeted_zeros:,} | {self.targeted_total:,} "
            f"| {self.targeted_sparsity:.2%} |",
            f"| model without embeddings and heads | {self.body_zeros:,} | {self.body_total:,} "
            f"| {self.body_sparsity:.2%} |",
            f"| whole model | {self.model_zeros:,} | {self.model_total:,} | {self.model_sparsity:.2%} |",
            "",
        ]
        removed = self.removed_parameters
        if removed is not None:
            lines += [
                f"Parameters before pruning: {self.original_total:,}; now: {self.model_total:,}; removed: "
                f"{removed:,} ({self.removed_fraction:.2%}).",
                "",
            ]
            if removed > 0:
                lines += [
                    "> The model shrank: structural pruning removed those parameters (heads, neurons or layers) "
                    "outright, so they are not counted as zeros; the sparsity above is over the parameters "
                    "that remain.",
                    "",
                ]
        if self.dense_routers:
            lines += [
                f"MoE routers kept dense ({len(self.dense_routers)}, {sum(self.dense_routers.values()):,} "
                f"parameters): {abbreviate_names(self.dense_routers)}. They choose the experts "
                "of every token; the experts' weights are pruned and counted in the pruned layers above.",
                "",
            ]
        lines += [
            f"> {SPEED_NOTE}",
            "",
            "| layer | shape | zeros | weights | sparsity |" + (" masked |" if with_mask else ""),
            "|---|---|---:|---:|---:|" + ("---:|" if with_mask else ""),
        ]
        for name, s in self.layers.items():
            row = (
                f"| `{name}` | {'x'.join(map(str, s.shape))} | {s.zeros:,} | {s.total:,} | {s.sparsity:.2%} |"
            )
            if with_mask:
                row += f" {'' if s.masked is None else f'{s.masked:,}'} |"
            lines.append(row)
        return "\n".join(lines) + "\n"


def _embedding_or_head_params(model: nn.Module) -> set[int]:
    """ids of parameters that belong to embeddings or output heads."""
    modules: list[nn.Module] = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Embedding) or (
            name and any(re.search(p, name) for p in HEAD_PATTERNS)
        ):
            modules.append(module)
    for getter in ("get_input_embeddings",):
        fn = getattr(model, getter, None)
        try:
            found = fn() if fn is not None else None
        except (AttributeError, NotImplementedError):
            found = None
        if found is not None:
            modules.append(found)
    head = output_embeddings(model)
    if head is not None:
        modules.append(head)
    return {id(p) for module in modules for p in module.parameters()}


@torch.no_grad()
def sparsity_report(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor] | None = None,
    *,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = DEFAULT_EXCLUDE,
    original_parameters: int | nn.Module | None = None,
) -> SparsityReport:
    """Count the zeros of a (pruned) model, and the parameters structural pruning removed from it.

    Args:
        model: the model.
        masks: ``{layer name: bool mask}`` as returned by the pruning functions (MoE expert weights keyed
            by parameter name). When given, its layers are the targeted ones and each layer also reports
            how many entries its mask prunes.
        include: without ``masks``, regexes of the targeted layers and MoE expert weights (see
            :func:`~hf_lite.pruning.targets.find_prunable_targets`).
        exclude: without ``masks``, regexes of layers not targeted; defaults to heads, embeddings, norms.
        original_parameters: the parameter count before pruning (tied parameters once, as
            ``sum(p.numel() for p in model.parameters())`` counts them), or the unpruned model itself; then
            the report states the parameters removed (structural pruning shrinks the model without leaving
            zeros, so its sparsity alone reads 0%).

    Returns:
        A :class:`SparsityReport`.

    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False))
    >>> _ = torch.nn.init.zeros_(model[0].weight[:2])
    >>> sparsity_report(model).targeted_sparsity
    0.5
    >>> sparsity_report(model, original_parameters=32).removed_parameters
    16
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    if isinstance(original_parameters, torch.nn.Module):
        original_parameters = sum(p.numel() for p in original_parameters.parameters())
    if original_parameters is not None and (
        isinstance(original_parameters, bool) or not isinstance(original_parameters, int)
    ):
        raise TypeError(
            "original_parameters must be the parameter count before pruning (an int) or the unpruned model; "
            f"got {type(original_parameters).__name__} {original_parameters!r}."
        )
    if masks is not None:
        if not isinstance(masks, Mapping):
            raise TypeError(
                f"masks must be a dict of {{layer name: bool tensor}}; got {type(masks).__name__}."
            )
        named = dict(model.named_modules())
        experts = find_expert_weights(model)
        missing = [
            n for n in masks if n not in experts and (n not in named or not hasattr(named[n], "weight"))
        ]
        if missing:
            raise ValueError(
                f"masks name layers that {type(model).__name__} does not have: {', '.join(missing[:5])}. "
                "Pass the masks returned for this very model."
            )
        targets = {n: experts[n] if n in experts else named[n] for n in masks}
    else:
        layers, experts = find_prunable_targets(model, include=include, exclude=exclude)
        targets = {**layers, **experts}

    report = SparsityReport()
    report.dense_routers = {
        name: sum(p.numel() for p in router.parameters())
        for name, router in find_moe_routers(model).items()
        if name not in targets
    }
    for name, module in targets.items():
        weight = module.weight  # an nn.Linear/Conv1D weight, or a 3-D MoE expert weight
        masked = None
        if masks is not None:
            mask = masks[name]
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
                raise TypeError(
                    f"masks[{name!r}] must be a torch.bool tensor; got {getattr(mask, 'dtype', type(mask))}."
                )
            if mask.shape != weight.shape:
                raise ValueError(
                    f"masks[{name!r}] has shape {tuple(mask.shape)} but the layer's weight has shape "
                    f"{tuple(weight.shape)}; pass the masks returned for this very model."
                )
            masked = int(mask.numel() - mask.sum())
        zeros = int((weight == 0).sum())
        report.layers[name] = LayerSparsity(tuple(weight.shape), zeros, weight.numel(), masked)
        report.targeted_zeros += zeros
        report.targeted_total += weight.numel()

    outer = _embedding_or_head_params(model)
    for param in model.parameters():  # deduplicated: tied weights count once
        zeros, total = int((param == 0).sum()), param.numel()
        report.model_zeros += zeros
        report.model_total += total
        if id(param) not in outer:
            report.body_zeros += zeros
            report.body_total += total
    if original_parameters is not None and original_parameters < report.model_total:
        raise ValueError(
            f"original_parameters={original_parameters} is smaller than the {report.model_total} parameters "
            f"{type(model).__name__} has now; pass the count taken before pruning (or the unpruned model)."
        )
    report.original_total = original_parameters
    return report
