"""SparseGPT one-shot pruning of a whole model (Frantar & Alistarh 2023): each layer pruned and its remaining
weights updated to reconstruct its outputs on calibration data, block after block.

The maths on one matrix is :func:`hf_lite.pruning.obs.sparsegpt_update`; :func:`sparsegpt_prune_` runs it
over a model: block by block (``model.layers.0``, ``model.layers.1``, ...), each block's Hessians
``2 X X^T`` collected with forward pre-hooks on the outputs of the already-pruned blocks before it, over
real (non-padded) calibration tokens. Memory: one ``(in, in)`` float64 matrix per layer of the current block
(per expert for MoE expert weights, each expert from the tokens routed to it).

>>> import torch
>>> from hf_lite.testing import build_tiny_model
>>> model, tok = build_tiny_model("llama")
>>> tok.pad_token = tok.eos_token
>>> batches = [tok(["the cat sees a dog", "a bird"], return_tensors="pt", padding=True)]
>>> masks = sparsegpt_prune_(model, batches, 0.5)
>>> round(mask_sparsity(masks), 2)
0.5
>>> masks = sparsegpt_prune_(model, batches, pattern="2:4", block_size=32)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from hf_lite.pruning.blockwise import block_of, calibration_passes
from hf_lite.pruning.calibration import check_calibration_batches, real_tokens
from hf_lite.pruning.experts import ExpertInputNormCollector, ExpertWeight
from hf_lite.pruning.masks import check_nm_widths, mask_sparsity
from hf_lite.pruning.obs import check_sparsegpt_options, sparsegpt_update
from hf_lite.pruning.sites import in_features_dim
from hf_lite.pruning.targets import DEFAULT_EXCLUDE, abbreviate_names, find_prunable_targets

if TYPE_CHECKING:
    from torch import nn

__all__ = ["sparsegpt_prune_"]

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------------
# a whole model


class _HessianCollector:
    """Forward pre-hooks accumulating ``X^T X`` ``(in, in)`` (float64) of each layer's inputs over real tokens."""

    def __init__(self, modules: Mapping[str, nn.Module]):
        self.modules = modules
        self.sums = {
            name: torch.zeros(
                (m.weight.shape[in_features_dim(m)],) * 2, dtype=torch.float64, device=m.weight.device
            )
            for name, m in modules.items()
        }
        self.tokens = dict.fromkeys(modules, 0)
        self.calls = dict.fromkeys(modules, 0)
        self.token_masks: list[torch.Tensor] = []  # candidate (batch, seq) masks of the current batch
        self._handles: list[Any] = []
        # (input tensor, X^T X, tokens) of the last call: q/k/v (gate/up) read the same tensor, computed once
        self._last: tuple[torch.Tensor, torch.Tensor, int] | None = None

    def __enter__(self) -> _HessianCollector:
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._hook(name), with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._last = None

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            raw = args[0] if args else next(iter(kwargs.values()))  # (..., in)
            if self._last is not None and self._last[0] is raw:
                _, product, count = self._last
            else:
                x = raw.detach()
                for mask in self.token_masks:  # drop padded positions of (batch, seq, in) inputs
                    if x.dim() >= 3 and tuple(mask.shape) == tuple(x.shape[:2]):
                        x = real_tokens(x, mask)  # (tokens, in)
                        break
                x = x.reshape(-1, x.shape[-1]).float()  # (tokens, in)
                product, count = x.T @ x, x.shape[0]  # (in, in): float32 product per batch
                self._last = (raw, product, count)
            acc = self.sums[name]
            acc += product.to(device=acc.device, dtype=torch.float64)
            self.tokens[name] += count
            self.calls[name] += 1

        return hook

    def hessians(self) -> dict[str, torch.Tensor]:
        """``{name: 2 X X^T / tokens}`` (float64) of every layer; ``ValueError`` for a layer never called."""
        silent = [n for n, c in self.calls.items() if c == 0]
        if silent:
            raise ValueError(
                f"layers {abbreviate_names(silent)} received no input during the calibration forward passes, so "
                "SparseGPT has no Hessian for them. For an encoder-decoder model, include decoder inputs (labels "
                "or decoder_input_ids) in the calibration batches; otherwise exclude these layers."
            )
        return {n: s.mul_(2.0 / max(self.tokens[n], 1)) for n, s in self.sums.items()}


class _ExpertHessianCollector(ExpertInputNormCollector):
    """Per-expert ``X_e^T X_e`` ``(E, in, in)`` (float64) of each expert weight over the real tokens routed to
    expert ``e``: the routing and the ``down_proj`` inputs of :class:`ExpertInputNormCollector`."""

    def __init__(self, experts: Mapping[str, ExpertWeight]):
        super().__init__(experts)
        self.sums = {
            n: torch.zeros(
                e.num_experts, *(e.weight.shape[e.in_dim],) * 2, dtype=torch.float64, device=e.weight.device
            )
            for n, e in self.experts.items()
        }
        self.tokens = {n: [0] * e.num_experts for n, e in self.experts.items()}

    def _add(self, name: str, e: int, x: torch.Tensor) -> None:
        super()._add(name, e, x)
        self.sums[name][e] += (x.T @ x).to(device=self.sums[name].device, dtype=torch.float64)  # (in, in)
        self.tokens[name][e] += x.shape[0]

    def hessians(self) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
        """``({name: (E, in, in) Hessians 2 X_e^T X_e / tokens_e}, {name: experts no token reached})``; an
        unreached expert gets the identity, with which SparseGPT is magnitude pruning per row."""
        silent = [n for n, c in self.calls.items() if c == 0]
        if silent:
            raise ValueError(
                f"expert weights {abbreviate_names(silent)} received no input during the calibration forward "
                "passes, so SparseGPT has no Hessian for them. Exclude them (exclude=[*DEFAULT_EXCLUDE, "
                "'experts']) or prune them with magnitude_prune_."
            )
        unrouted: dict[str, list[int]] = {}
        for name, sums in self.sums.items():
            for e, count in enumerate(self.tokens[name]):
                if count:
                    sums[e].mul_(2.0 / count)
                else:
                    sums[e] = torch.eye(sums.shape[-1], dtype=sums.dtype, device=sums.device)
                    unrouted.setdefault(name, []).append(e)
        return self.sums, unrouted


def _prune_experts_(expert: ExpertWeight, hessians: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """Prune each expert's matrix of a 3-D expert weight by :func:`sparsegpt_update`; the ``(E, ., .)`` mask."""
    weight = expert.weight
    keep = torch.empty(weight.shape, dtype=torch.bool, device=weight.device)
    transposed = expert.in_dim == 1  # (E, in, out)
    for e in range(expert.num_experts):
        new, mask = sparsegpt_update(weight[e].T if transposed else weight[e], hessians[e], **kwargs)
        weight[e].copy_(new.T if transposed else new)
        keep[e] = mask.T if transposed else mask
    return keep


@torch.no_grad()
def sparsegpt_prune_(
    model: nn.Module,
    calibration_batches: Iterable[Mapping[str, torch.Tensor]] | None,
    sparsity: float | None = None,
    *,
    pattern: str = "unstructured",
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = DEFAULT_EXCLUDE,
    block_size: int = 128,
    dampening: float = 0.01,
    sequential: bool = True,
) -> dict[str, torch.Tensor]:
    """SparseGPT one-shot pruning of the chosen layers, in place: masks chosen and remaining weights updated
    to reconstruct each layer's outputs on the calibration data (:func:`~hf_lite.pruning.obs.sparsegpt_update`).

    Layers are pruned block by block (``model.layers.0``, ``model.layers.1``, ...) with ``sequential=True``:
    forward pre-hooks on the block's layers accumulate ``X^T X`` over the real tokens of every calibration
    batch (padded positions excluded by ``attention_mask``/``decoder_attention_mask``), the hooks are
    removed, and each layer is pruned and updated from its Hessian ``H = 2 X X^T / tokens``, so block ``b``
    is calibrated on the outputs of the already-pruned blocks before it. As in
    :func:`~hf_lite.pruning.wanda_prune_`, decoder-only and encoder-only models run one block at a time on
    cached block inputs (about three forward passes in all, :mod:`hf_lite.pruning.blockwise`), other models
    one whole-model pass per block. Within a block every layer sees the block's dense inputs, as in the
    reference code; layers reading the same tensor (``q/k/v_proj``, ``gate/up_proj``) share one product.
    ``sequential=False`` computes every Hessian from one pass of the dense model (memory: one ``(in, in)``
    matrix per layer of the whole model).

    MoE experts (3-D weights, see :mod:`hf_lite.pruning.experts`): each expert's matrix is pruned like a
    Linear from its own Hessian over the real tokens the router sends to it (for ``down_proj``, the gated
    activations it computes from them); memory ``num_experts * in * in`` per expert weight. An expert no
    calibration token reaches gets ``H = I`` (magnitude pruning per row, no update), with a warning.

    Args:
        model: the model to prune (kept in eval mode during calibration, then restored).
        calibration_batches: iterable of dicts of tensors passed as ``model(**batch)``: ``input_ids``,
            ``attention_mask`` (and for encoder-decoder models ``labels`` or ``decoder_input_ids``).
        sparsity: fraction of each output feature's weights to zero, in ``[0, 1)``; required for
            ``"unstructured"``, implied by an N:M pattern.
        pattern: ``"unstructured"`` or ``"n:m"`` (``"2:4"``, ``"4:8"``): keep ``n`` of every ``m`` inputs.
        include: regexes of layer names to prune (see :func:`~hf_lite.pruning.find_prunable_modules`).
        exclude: regexes of layer names to leave dense; defaults to heads, embeddings and norms.
        block_size: input columns per lazy-update block (the paper's 128); a multiple of ``m`` for N:M.
        dampening: fraction of the mean Hessian diagonal added to it (the paper's 0.01).
        sequential: prune block by block on the pruned model's activations (``True``) or all layers from
            the dense model's activations (``False``).

    Returns:
        ``{layer name: bool mask}`` of each weight's shape (``True`` = keep), on the weight's device; a
        ``Conv1D`` mask is ``(in, out)`` like its weight; expert weights keyed by parameter name.

    >>> from hf_lite.testing import build_tiny_model
    >>> model, tok = build_tiny_model("gpt2")
    >>> tok.pad_token = tok.eos_token
    >>> batch = tok(["the cat sees the dog", "a bird sings"], return_tensors="pt", padding=True)
    >>> masks = sparsegpt_prune_(model, [batch], 0.5, block_size=16)
    >>> masks["transformer.h.0.mlp.c_fc"].shape, masks["transformer.h.0.mlp.c_fc"].sum(dim=0).unique().tolist()
    (torch.Size([64, 128]), [32])
    """
    sparsity, nm, block_size, dampening = check_sparsegpt_options(
        sparsity, pattern=pattern, block_size=block_size, dampening=dampening
    )
    if not isinstance(sequential, bool):
        raise TypeError(f"sequential must be True or False; got {sequential!r}.")
    if isinstance(calibration_batches, Iterable) and not isinstance(
        calibration_batches, (Mapping, str, bytes)
    ):
        calibration_batches = list(calibration_batches)  # also materializes generators, once
    if calibration_batches is None or calibration_batches == []:
        raise ValueError(
            f"calibration_batches={calibration_batches!r}: SparseGPT reconstructs each layer's outputs on "
            "calibration data, so it needs some. Pass a few batches of tokenized text (dicts with input_ids "
            "and attention_mask), e.g. 128 sequences; or use magnitude_prune_ for data-free pruning."
        )
    batches = check_calibration_batches(calibration_batches)
    modules, experts = find_prunable_targets(model, include=include, exclude=exclude)
    widths = {n: m.weight.shape[in_features_dim(m)] for n, m in modules.items()}
    check_nm_widths({**widths, **{n: e.weight.shape[e.in_dim] for n, e in experts.items()}}, nm)

    groups: dict[str, dict[str, nn.Module]] = {}
    expert_groups: dict[str, dict[str, ExpertWeight]] = {}
    for name, module in modules.items():
        groups.setdefault(block_of(name) if sequential else "", {})[name] = module
    for name, expert in experts.items():
        expert_groups.setdefault(block_of(name) if sequential else "", {})[name] = expert
        groups.setdefault(block_of(name) if sequential else "", {})
    options = {"sparsity": sparsity, "nm": nm, "block_size": block_size, "dampening": dampening}
    was_training = model.training
    model.eval()
    masks: dict[str, torch.Tensor] = {}
    try:
        # Block by block on cached block inputs where the blocks form one chain (about three forward passes in
        # all), else one whole-model pass per group (see hf_lite.pruning.blockwise).
        for block, calibrate in calibration_passes(model, batches, list(groups)):
            members, block_experts = groups[block], expert_groups.get(block, {})
            with _HessianCollector(members) as collector, _ExpertHessianCollector(block_experts) as routed:
                calibrate((collector, routed))
            hessians = collector.hessians()
            expert_hessians, unrouted = routed.hessians()
            for name, module in members.items():
                transposed = in_features_dim(module) == 0  # Conv1D: (in, out)
                weight = module.weight.T if transposed else module.weight  # (out, in)
                try:
                    new, keep = sparsegpt_update(weight, hessians.pop(name), **options)
                except ValueError as err:
                    raise ValueError(f"layer {name}: {err}") from err
                module.weight.copy_(new.T if transposed else new)
                masks[name] = keep.T if transposed else keep
            for name, expert in block_experts.items():
                try:
                    masks[name] = _prune_experts_(expert, expert_hessians.pop(name), **options)
                except ValueError as err:
                    raise ValueError(f"expert weight {name}: {err}") from err
            if unrouted:
                logger.warning(
                    "sparsegpt: no calibration token was routed to some experts (%s); their weights were pruned "
                    "by magnitude per row, without update. More calibration data reaches more experts.",
                    "; ".join(f"{n}: {u}" for n, u in unrouted.items()),
                )
            logger.debug(
                "sparsegpt: pruned %s (%d weights)", block or "all layers", len(members) + len(block_experts)
            )
    finally:
        model.train(was_training)
    logger.info(
        "sparsegpt-pruned %d layers (%s, block_size=%d, dampening=%g): sparsity %.4f",
        len(masks),
        pattern,
        block_size,
        dampening,
        mask_sparsity(masks),
    )
    return masks
