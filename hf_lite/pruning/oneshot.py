"""One-shot pruning of a whole model: magnitude pruning and Wanda (pruning by weights and activations).

Both functions prune the chosen layers in place and return their masks (``{name: bool tensor}`` of each
layer's weight shape, ``True`` = keep), which a caller keeps to re-apply after later optimizer steps.

MoE models: the experts' 3-D weights (``mlp.experts.gate_up_proj``/``down_proj``, see
:mod:`hf_lite.pruning.experts`) are pruned too, each expert's matrix like one ``nn.Linear`` (masks keyed by
parameter name, of the 3-D shape); Wanda scores each expert on the tokens the router sends to it. Routers
(``mlp.gate``, ``shared_expert_gate``, ``router``) stay dense unless ``include`` names them.

Patterns: ``"unstructured"`` (any weights, ``sparsity`` says how many), or ``"n:m"`` such as ``"2:4"`` /
``"4:8"``: keep ``n`` of every ``m`` consecutive weights along the input dimension (sparsity ``1 - n/m``).
Note the convention: here and in NVIDIA's 2:4, ``n`` is the number **kept**; the Wanda reference code
counts pruned weights instead, which agrees for 2:4 and 4:8 only.

>>> import torch
>>> from hf_lite.testing import build_tiny_model
>>> model, tok = build_tiny_model("llama")
>>> tok.pad_token = tok.eos_token
>>> batches = [tok(["the cat sees a dog", "a bird"], return_tensors="pt", padding=True)]
>>> masks = wanda_prune_(model, batches, 0.5)
>>> round(mask_sparsity(masks), 2)
0.5
>>> masks = magnitude_prune_(model, pattern="2:4")
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from hf_lite.pruning.blockwise import block_of, calibration_passes
from hf_lite.pruning.calibration import check_calibration_batches
from hf_lite.pruning.experts import (
    ExpertInputNormCollector,
    ExpertWeight,
    expert_wanda_scores,
    find_moe_routers,
)
from hf_lite.pruning.masks import (
    apply_mask_,
    check_nm,
    check_nm_widths,
    check_sparsity,
    global_unstructured_masks,
    magnitude_scores,
    mask_sparsity,
    nm_mask,
    unstructured_mask,
    wanda_scores,
)
from hf_lite.pruning.sites import in_features_dim
from hf_lite.pruning.targets import DEFAULT_EXCLUDE, abbreviate_names, find_prunable_targets

if TYPE_CHECKING:
    from torch import nn

__all__ = ["parse_pattern", "magnitude_prune_", "wanda_prune_"]

logger = logging.getLogger(__name__)

_NM_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """Parse a sparsity pattern: ``"unstructured"`` -> ``None``, ``"n:m"`` -> ``(n, m)``.

    Args:
        pattern: ``"unstructured"`` or ``"n:m"`` with ``1 <= n < m`` (``"2:4"``, ``"4:8"``, ...).

    Returns:
        ``None`` for unstructured sparsity, else ``(n, m)``: keep ``n`` of every ``m`` weights.

    >>> parse_pattern("unstructured"), parse_pattern("2:4")
    (None, (2, 4))
    """
    if not isinstance(pattern, str):
        raise TypeError(
            f"pattern must be a string ('unstructured', '2:4', '4:8', ...); got {type(pattern).__name__}."
        )
    if pattern.strip().lower() == "unstructured":
        return None
    match = _NM_RE.match(pattern)
    if match is None:
        raise ValueError(
            f"pattern={pattern!r} is not understood. Use 'unstructured', or 'n:m' such as '2:4' "
            "(keep 2 of every 4 consecutive weights)."
        )
    return check_nm(int(match.group(1)), int(match.group(2)))


def resolve_sparsity(sparsity: float | None, nm: tuple[int, int] | None) -> float:
    """The sparsity of an unstructured (``nm=None``) or N:M pattern, refusing a contradicting ``sparsity``."""
    if nm is None:
        if sparsity is None:
            raise ValueError(
                "sparsity is required with pattern='unstructured': pass the fraction of weights to zero, "
                "e.g. sparsity=0.5."
            )
        return check_sparsity(sparsity)
    implied = 1.0 - nm[0] / nm[1]
    if sparsity is not None and abs(check_sparsity(sparsity) - implied) > 1e-9:
        raise ValueError(
            f"sparsity={sparsity!r} contradicts pattern '{nm[0]}:{nm[1]}', which always gives sparsity "
            f"{implied:g}. Leave sparsity=None with an N:M pattern, or use pattern='unstructured'."
        )
    return implied


def _mask_from_scores(
    scores: torch.Tensor, sparsity: float, nm: tuple[int, int] | None, dim: int
) -> torch.Tensor:
    if nm is not None:
        return nm_mask(scores, *nm, dim=dim)
    return unstructured_mask(scores, sparsity, dim=dim)


def magnitude_prune_(
    model: nn.Module,
    sparsity: float | None = None,
    *,
    pattern: str = "unstructured",
    scope: str = "layer",
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = DEFAULT_EXCLUDE,
) -> dict[str, torch.Tensor]:
    """Zero the smallest-magnitude weights of the chosen layers, in place (no data needed).

    Args:
        model: the model to prune.
        sparsity: fraction of weights to zero, in ``[0, 1)``; required for ``"unstructured"``, implied
            (``1 - n/m``) by an N:M pattern.
        pattern: ``"unstructured"`` or ``"n:m"`` (``"2:4"``, ``"4:8"``), groups along each layer's input dim.
        scope: where weights are ranked, for ``"unstructured"``: ``"layer"`` (each layer pruned to
            ``sparsity``), ``"row"`` (each output feature's input weights pruned to ``sparsity``), or
            ``"global"`` (one threshold over all chosen layers: exact total, uneven per layer).
        include: regexes of layer names to prune (see :func:`find_prunable_modules`).
        exclude: regexes of layer names to leave dense; defaults to heads, embeddings and norms.

    Returns:
        ``{layer name: bool mask}`` of each weight's shape, on the weight's device; MoE expert weights are
        keyed by parameter name (``model.layers.0.mlp.experts.down_proj``), each expert pruned on its own
        (scope ``"layer"``), per output row (``"row"``), or in N:M groups; ``"global"`` ranks them with the
        layers.

    >>> from hf_lite.testing import build_tiny_model
    >>> model, _ = build_tiny_model("bert", "sequence-classification")
    >>> masks = magnitude_prune_(model, 0.3, scope="global")
    >>> round(mask_sparsity(masks), 3)
    0.3
    """
    nm = parse_pattern(pattern)
    sparsity = resolve_sparsity(sparsity, nm)
    if scope not in ("layer", "row", "global"):
        raise ValueError(f"scope={scope!r} must be 'layer', 'row' or 'global'.")
    if nm is not None and scope == "global":
        raise ValueError(
            f"scope='global' cannot apply to pattern={pattern!r}: N:M sparsity is decided inside each group "
            "of weights, so it has no global threshold. Use scope='layer' (the default) with N:M patterns."
        )
    modules, experts = find_prunable_targets(model, include=include, exclude=exclude)
    _check_widths(modules, experts, nm)
    if scope == "global":
        masks = global_unstructured_masks(
            {n: magnitude_scores(m.weight) for n, m in {**modules, **experts}.items()}, sparsity
        )
    else:
        masks = {}
        for name, module in modules.items():
            scores = magnitude_scores(module.weight)
            if nm is not None:
                masks[name] = nm_mask(scores, *nm, dim=in_features_dim(module))
            else:
                masks[name] = unstructured_mask(
                    scores, sparsity, dim=in_features_dim(module) if scope == "row" else None
                )
        for name, expert in experts.items():
            masks[name] = _expert_mask(magnitude_scores(expert.weight), expert, sparsity, nm, scope)
    for name, target in {**modules, **experts}.items():
        apply_mask_(target.weight, masks[name])
    _log_moe(model, experts)
    logger.info(
        "magnitude-pruned %d layers (%s, scope=%s): sparsity %.4f",
        len(masks),
        pattern,
        scope,
        mask_sparsity(masks),
    )
    return masks


def _check_widths(modules: Mapping[str, nn.Module], experts: Mapping[str, ExpertWeight], nm) -> None:
    widths = {n: m.weight.shape[in_features_dim(m)] for n, m in modules.items()}
    widths.update({n: e.weight.shape[e.in_dim] for n, e in experts.items()})
    check_nm_widths(widths, nm)


def _expert_mask(
    scores: torch.Tensor, expert: ExpertWeight, sparsity: float, nm: tuple[int, int] | None, scope: str
) -> torch.Tensor:
    """Mask of a 3-D expert weight, each expert's matrix pruned like one Linear layer: as a whole (scope
    ``"layer"``), per output row (``"row"``), or in N:M groups along its input dimension."""
    if nm is not None:
        return nm_mask(scores, *nm, dim=expert.in_dim)
    if scope == "row":
        return unstructured_mask(scores, sparsity, dim=expert.in_dim)
    flat = scores.reshape(scores.shape[0], -1)  # (E, out * in): one ranking per expert
    return unstructured_mask(flat, sparsity, dim=1).reshape(scores.shape)


def _log_moe(model: nn.Module, experts: Mapping[str, ExpertWeight]) -> None:
    routers = find_moe_routers(model)
    if experts or routers:
        logger.info(
            "MoE: pruned %d expert weights (each expert's matrix like a Linear layer); routers kept dense: %s",
            len(experts),
            abbreviate_names(routers) or "none",
        )


# ----------------------------------------------------------------------------------------------------------
# Wanda


class _InputNormCollector:
    """Forward pre-hooks that accumulate, per layer, the sum over real tokens of squared inputs: ``(in,)``."""

    def __init__(self, modules: Mapping[str, nn.Module]):
        self.modules = modules
        self.sq_sums = {
            name: torch.zeros(m.weight.shape[in_features_dim(m)], dtype=torch.float32, device=m.weight.device)
            for name, m in modules.items()
        }
        self.calls = dict.fromkeys(modules, 0)
        self.token_masks: list[torch.Tensor] = []  # candidate (batch, seq) masks of the current batch
        self._handles: list[Any] = []

    def __enter__(self) -> _InputNormCollector:
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._hook(name), with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            # Linear.forward(input) / Conv1D.forward(x): the input may also come as a keyword.
            x = (args[0] if args else next(iter(kwargs.values()))).detach()  # (..., in)
            if x.dim() >= 3:
                for token_mask in self.token_masks:
                    # Padded positions are dropped when the layer input is laid out as (batch, seq, in);
                    # inputs laid out otherwise (e.g. already unpadded) contain real tokens only.
                    if token_mask.shape == x.shape[:2]:
                        x = x[token_mask.to(x.device)]  # (tokens, in)
                        break
            x = x.reshape(-1, x.shape[-1]).float()  # (tokens, in)
            self.sq_sums[name] += (x * x).sum(dim=0).to(self.sq_sums[name].device)
            self.calls[name] += 1

        return hook

    def norms(self) -> dict[str, torch.Tensor]:
        silent = [n for n, c in self.calls.items() if c == 0]
        if silent:
            raise ValueError(
                f"layers {', '.join(silent[:5])} received no input during the calibration forward passes, so "
                "Wanda has no activations to score them with. For an encoder-decoder model, include "
                "decoder inputs (labels or decoder_input_ids) in the calibration batches; otherwise exclude "
                "these layers."
            )
        return {name: s.sqrt() for name, s in self.sq_sums.items()}  # ||X_j||_2 over all tokens


@torch.no_grad()
def wanda_prune_(
    model: nn.Module,
    calibration_batches: Iterable[Mapping[str, torch.Tensor]] | None,
    sparsity: float | None = None,
    *,
    pattern: str = "unstructured",
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = DEFAULT_EXCLUDE,
    sequential: bool = True,
) -> dict[str, torch.Tensor]:
    """Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models"), in place.

    A weight's score is ``|W_ij| * ||X_j||_2``, where ``||X_j||_2`` is the L2 norm of input feature ``j``
    of that layer over every real (non-padded) calibration token. Scores are compared within each output
    feature (each one keeps the same number of inputs: every row of an ``nn.Linear`` weight, every column
    of a ``Conv1D`` weight, has exactly ``round(sparsity * in_features)`` zeros), or within N:M groups along
    the input dimension. No weight update, no gradient: a few forward passes over the calibration data.

    Input norms are collected with forward pre-hooks that only accumulate an ``(in_features,)`` vector per
    layer, so memory stays that of a plain forward pass. With ``sequential=True`` (as the reference code)
    blocks are pruned in order (``model.layers.0``, ``model.layers.1``, ...): the hooks of one block are
    registered, the calibration data is run through the model, the hooks are removed and the block is
    pruned, so each block is scored on the activations of the already-pruned blocks before it. This costs
    one forward pass over the calibration data per block (the reference code instead caches every
    block's inputs, which takes ``tokens * hidden`` memory). ``sequential=False`` scores every layer from
    one forward pass of the dense model.

    Padded positions are excluded using the batch's ``attention_mask`` (and ``decoder_attention_mask``) for
    layers whose input is laid out ``(batch, seq, features)`` with the mask's shape.

    MoE experts: expert ``e``'s matrix of a 3-D expert weight is scored ``|W[e]_ij| * ||X_e,j||_2`` over the
    real tokens routed to ``e`` (for ``down_proj``, the gated activations ``e`` computes from them) and
    pruned per output row like a Linear. An expert that no calibration token reaches is ranked by
    magnitude instead, with a warning. Routers stay dense.

    Args:
        model: the model to prune (kept in eval mode during calibration, then restored).
        calibration_batches: iterable of dicts of tensors passed as ``model(**batch)``: ``input_ids``,
            ``attention_mask``, and for encoder-decoder models ``labels`` or ``decoder_input_ids``.
        sparsity: fraction of each output feature's weights to zero, in ``[0, 1)``; required for
            ``"unstructured"``, implied by an N:M pattern.
        pattern: ``"unstructured"`` or ``"n:m"`` (``"2:4"``, ``"4:8"``).
        include: regexes of layer names to prune (see :func:`find_prunable_modules`).
        exclude: regexes of layer names to leave dense; defaults to heads, embeddings and norms.
        sequential: prune block by block on the pruned model's activations (``True``) or all layers from
            the dense model's activations in one pass (``False``).

    Returns:
        ``{layer name: bool mask}`` of each weight's shape, on the weight's device.

    >>> from hf_lite.testing import build_tiny_model
    >>> model, tok = build_tiny_model("gpt2")
    >>> batch = tok(["the cat sees the dog"], return_tensors="pt")
    >>> masks = wanda_prune_(model, [batch], pattern="2:4")
    >>> masks["transformer.h.0.mlp.c_fc"].shape   # Conv1D: (in, out); groups run along dim 0
    torch.Size([64, 128])
    """
    nm = parse_pattern(pattern)
    sparsity = resolve_sparsity(sparsity, nm)
    if not isinstance(sequential, bool):
        raise TypeError(f"sequential must be True or False; got {sequential!r}.")
    batches = check_calibration_batches(calibration_batches)
    modules, experts = find_prunable_targets(model, include=include, exclude=exclude)
    _check_widths(modules, experts, nm)

    groups: dict[str, dict[str, nn.Module]] = {}
    expert_groups: dict[str, dict[str, ExpertWeight]] = {}
    for name, module in modules.items():
        groups.setdefault(block_of(name) if sequential else "", {})[name] = module
    for name, expert in experts.items():
        expert_groups.setdefault(block_of(name) if sequential else "", {})[name] = expert
        groups.setdefault(block_of(name) if sequential else "", {})

    was_training = model.training
    model.eval()
    masks: dict[str, torch.Tensor] = {}
    try:
        # Block by block on cached block inputs where the blocks form one chain (about three forward passes in
        # all), else one whole-model pass per group.
        for block, calibrate in calibration_passes(model, batches, list(groups)):
            members, block_experts = groups[block], expert_groups.get(block, {})
            with _InputNormCollector(members) as collector, ExpertInputNormCollector(block_experts) as routed:
                calibrate((collector, routed))
            norms = collector.norms()
            for name, module in members.items():
                dim = in_features_dim(module)
                scores = wanda_scores(module.weight, norms[name], dim=dim)
                masks[name] = _mask_from_scores(scores, sparsity, nm, dim)
                apply_mask_(module.weight, masks[name])
            expert_norms, unrouted = routed.norms()
            for name, expert in block_experts.items():
                scores = expert_wanda_scores(expert.weight, expert_norms[name], expert.in_dim)
                for e in unrouted.get(name, []):  # no token reached expert e: rank its weights by magnitude
                    scores[e] = magnitude_scores(expert.weight[e])
                masks[name] = _mask_from_scores(scores, sparsity, nm, expert.in_dim)
                apply_mask_(expert.weight, masks[name])
            if unrouted:
                logger.warning(
                    "wanda: no calibration token was routed to some experts (%s); their weights were ranked "
                    "by magnitude. More calibration data reaches more experts.",
                    "; ".join(f"{n}: {u}" for n, u in unrouted.items()),
                )
            logger.debug(
                "wanda: pruned %s (%d layers)", block or "all layers", len(members) + len(block_experts)
            )
    finally:
        model.train(was_training)
    _log_moe(model, experts)
    logger.info("wanda-pruned %d layers (%s): sparsity %.4f", len(masks), pattern, mask_sparsity(masks))
    return masks
