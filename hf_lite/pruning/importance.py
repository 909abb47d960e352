"""Importance scores for structural pruning: FFN neurons, attention head groups and whole blocks.

Where :mod:`hf_lite.pruning.masks` scores single weights, this module scores the *structures* that
:mod:`hf_lite.pruning.structural` removes: an FFN neuron (a row of the up/gate projections and the matching
column of the down projection), a query head, a grouped-query-attention *group* (one key/value head and
the query heads that read it), and a whole transformer block. Higher scores are kept.

Methods (``importance=``):

- ``"magnitude"``: L2 norm of all the weights that belong to the structure (no data needed).
- ``"activation"``: mean ``|activation|`` of the structure on calibration data, over real (non-padded)
  tokens: the input of the down projection for FFN neurons, the input of ``o_proj`` for heads. Collected
  with forward pre-hooks, so memory stays that of a forward pass.
- ``"taylor"``: first-order Taylor importance (Molchanov et al. 2019), ``|sum over the structure's weights
  of w * dL/dw|``, the first-order change of the loss when the structure is removed, with ``L`` the mean
  loss over calibration batches that carry ``labels``.

Block influence (ShortGPT, Men et al. 2024) scores whole blocks: ``BI_i = 1 - E[cos(x_i, y_i)]`` with
``x_i``/``y_i`` the hidden states entering and leaving block ``i``; a block that barely changes its input
can be dropped first.

Scores are computed on the base weights; with a LoRA adapter attached they ignore the adapter's update
(merge it first when the adapter has moved the weights far).

>>> from hf_lite.testing import build_tiny_model
>>> model, tok = build_tiny_model("llama")
>>> scores = ffn_neuron_scores(model)
>>> len(scores), scores[0].shape
(2, torch.Size([128]))
>>> block_influence(model, [tok(["the cat sees a dog"], return_tensors="pt")]).shape
torch.Size([2])
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from hf_lite.pruning.calibration import (
    check_calibration,
    forward_kwargs,
    mean_abs_inputs,
    real_tokens,
    to_device,
    token_mask,
)
from hf_lite.pruning.sites import (
    AttentionSite,
    FfnSite,
    base_layer,
    find_attention_sites,
    find_ffn_sites,
    find_layer_list,
    head_layout,
)

__all__ = [
    "IMPORTANCE_METHODS",
    "HeadScores",
    "ffn_neuron_scores",
    "attention_head_scores",
    "block_influence",
    "check_count",
    "check_importance",
    "ffn_reduce",
    "heads_reduce",
    "taylor_products",
]

#: Accepted values of ``importance=``.
IMPORTANCE_METHODS = ("magnitude", "activation", "taylor")


# ----------------------------------------------------------------------------------------------------------
# argument checks


def check_importance(importance: str) -> str:
    """Return ``importance`` after checking it is one of :data:`IMPORTANCE_METHODS`.

    >>> check_importance("taylor")
    'taylor'
    """
    if not isinstance(importance, str) or importance not in IMPORTANCE_METHODS:
        raise ValueError(
            f"importance={importance!r} is not a known method. Use 'magnitude' (weight norms, no data), "
            "'activation' (mean |activation| on calibration_batches) or 'taylor' (|w * grad| from a backward "
            "pass on calibration_batches with labels)."
        )
    return importance


# ----------------------------------------------------------------------------------------------------------
# Taylor sums


def _taylor_sums(
    model: nn.Module,
    sites: Sequence[Any],
    modules_of: Callable[[Any], Sequence[nn.Module]],
    reduce: Callable[[Any, Mapping[nn.Module, torch.Tensor]], tuple[torch.Tensor, ...]],
    batches: list[Mapping[str, torch.Tensor]],
) -> dict[int, tuple[torch.Tensor, ...]]:
    """Signed first-order Taylor sums ``sum w * dL/dw`` of each site's structures, ``L`` the mean loss over
    ``batches``; every ``.grad`` is left untouched.

    ``w * dL/dw`` is linear in the gradient, so each batch's products are reduced to per-structure sums right
    away (one site at a time) and the sums added up: memory stays one gradient of the scored weights, never
    an accumulated copy of them.
    """
    device = next(model.parameters()).device
    params = list({id(_weight(m)): _weight(m) for s in sites for m in modules_of(s)}.values())
    was_training = model.training
    flags = [p.requires_grad for p in params]
    totals: dict[int, tuple[torch.Tensor, ...]] = {}
    model.eval()  # no dropout: the score of a structure should not depend on a random mask
    try:
        for p in params:
            p.requires_grad_(True)
        for i, batch in enumerate(batches):
            out = model(**to_device(batch, device), **forward_kwargs(model))
            loss = getattr(out, "loss", None)
            if loss is None:
                raise ValueError(
                    f"calibration batch {i}: {type(model).__name__} returned no loss although the batch has "
                    "'labels'; importance='taylor' needs a model with a task head that computes a loss "
                    "(e.g. AutoModelForCausalLM, AutoModelForSequenceClassification)."
                )
            grads = torch.autograd.grad(loss / len(batches), params, allow_unused=True)
            grad_of = {id(p): g for p, g in zip(params, grads, strict=True)}
            del grads, out, loss
            for site in sites:
                products = taylor_products(modules_of(site), lambda w, grads=grad_of: grads[id(w)])
                partial = reduce(site, products)
                old = totals.get(site.layer)
                totals[site.layer] = (
                    partial if old is None else tuple(a + b for a, b in zip(old, partial, strict=True))
                )
            del grad_of
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    return totals


# ----------------------------------------------------------------------------------------------------------
# per-structure reductions


def _out_in(module: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """A weight-shaped tensor of ``module`` laid out ``(out, in)`` (transposes a Conv1D's ``(in, out)``)."""
    return tensor.t() if isinstance(base_layer(module), Conv1D) else tensor


def _weight(module: nn.Module) -> torch.Tensor:
    return base_layer(module).weight


def _per_output(module: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` (weight-shaped) over each output feature's inputs: ``(out,)``."""
    return _out_in(module, tensor).float().sum(dim=1)


def _per_input(module: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` (weight-shaped) over each input feature's outputs: ``(in,)``."""
    return _out_in(module, tensor).float().sum(dim=0)


def taylor_products(
    modules: Iterable[nn.Module], grad_of: Callable[[torch.Tensor], torch.Tensor | None]
) -> dict[nn.Module, torch.Tensor]:
    """The first-order Taylor terms ``w * dL/dw`` of each module's weight, float32, weight-shaped (a missing
    gradient counts as zero); :func:`ffn_reduce` and :func:`heads_reduce` sum them per structure.

    Args:
        modules: Linear/Conv1D layers (or PEFT layers around them).
        grad_of: the gradient of a weight (e.g. ``lambda w: w.grad``), or ``None``.

    >>> import torch
    >>> layer = torch.nn.Linear(2, 1, bias=False)
    >>> layer.weight.grad = torch.ones(1, 2)
    >>> torch.equal(taylor_products([layer], lambda w: w.grad)[layer], layer.weight.detach())
    True
    """
    out = {}
    for m in modules:
        w = _weight(m)
        g = grad_of(w)
        out[m] = w.detach().float() * (g.float() if g is not None else torch.zeros_like(w).float())
    return out


def ffn_reduce(site: FfnSite, values: Mapping[nn.Module, torch.Tensor]) -> torch.Tensor:
    """Sum a weight-shaped quantity over each neuron's weights (expand rows + project columns): ``(width,)``.
    A fused expanding layer (``site.fused`` chunks) contributes one row per chunk to each neuron."""
    total = _per_input(site.project, values[site.project])
    for layer in site.expand:  # a fused layer (gate_up_proj, Wi): each neuron owns one row in every chunk
        rows = _per_output(layer, values[layer]).view(site.fused, -1).sum(0)
        total = total + rows.to(total.device)
    return total


def heads_reduce(
    site: AttentionSite, values: Mapping[nn.Module, torch.Tensor], heads: int, kv_heads: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum a weight-shaped quantity over each query head (q rows, o columns) and each group (its query
    heads plus its k and v rows): ``(heads,)``, ``(kv_heads,)``. A fused ``qkv_proj`` (Phi3) holds the q, k
    and v rows one after the other."""
    if site.fused_qkv:  # rows [queries | keys | values]
        rows = _per_output(site.q, values[site.q])
        q_rows, k_rows, v_rows = rows.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim])
    else:
        q_rows, k_rows, v_rows = (_per_output(p, values[p]) for p in (site.q, site.k, site.v))
    query = q_rows.view(heads, head_dim).sum(1)
    query = query + _per_input(site.o, values[site.o]).view(heads, head_dim).sum(1).to(query.device)
    kv = sum(r.view(kv_heads, head_dim).sum(1).to(query.device) for r in (k_rows, v_rows))
    group = query.view(kv_heads, heads // kv_heads).sum(1) + kv
    return query, group


def ffn_neuron_scores(
    model: nn.Module,
    importance: str = "magnitude",
    calibration_batches: Iterable[Mapping[str, torch.Tensor]] | None = None,
) -> dict[int, torch.Tensor]:
    """Importance of every FFN neuron of every block (higher = keep).

    A neuron ``j`` owns row ``j`` of the expanding layers (gate/up, ``c_fc``, ``intermediate.dense``) and
    column ``j`` of the projecting one (``down_proj``, ``c_proj``, ``output.dense``). ``"magnitude"`` is the
    L2 norm of those weights; ``"activation"`` the mean ``|a_j|`` of the projecting layer's input over real
    calibration tokens; ``"taylor"`` is ``|sum of w * dL/dw|`` over those weights.

    Args:
        model: a transformers model (or a PEFT model around one).
        importance: ``"magnitude"``, ``"activation"`` or ``"taylor"``.
        calibration_batches: batches of tokenized text (with ``labels`` for ``"taylor"``); unused for
            ``"magnitude"``.

    Returns:
        ``{block index: float32 tensor (width,)}``.

    >>> from hf_lite.testing import build_tiny_model
    >>> model, tok = build_tiny_model("bert", "sequence-classification")
    >>> batch = {**tok(["the cat"], return_tensors="pt"), "labels": torch.tensor([1])}
    >>> ffn_neuron_scores(model, "taylor", [batch])[1].shape
    torch.Size([128])
    """
    importance = check_importance(importance)
    sites = find_ffn_sites(model)
    if importance == "magnitude":
        return {
            s.layer: ffn_reduce(
                s, {m: _weight(m).detach().float() ** 2 for m in (*s.expand, s.project)}
            ).sqrt()
            for s in sites
        }
    if importance == "activation":
        batches = check_calibration(calibration_batches, "importance='activation'")
        return mean_abs_inputs(model, {s.layer: s.project for s in sites}, batches)
    batches = check_calibration(calibration_batches, "importance='taylor'", labels=True)
    sums = _taylor_sums(
        model, sites, lambda s: (*s.expand, s.project), lambda s, prod: (ffn_reduce(s, prod),), batches
    )
    return {layer: total[0].abs() for layer, total in sums.items()}


class HeadScores(NamedTuple):
    """Importance of one block's attention heads.

    Args:
        query: ``(num_attention_heads,)`` score of each query head.
        group: ``(num_key_value_heads,)`` score of each key/value group (its key/value head and the
            ``num_attention_heads // num_key_value_heads`` query heads that read it).

    >>> import torch
    >>> HeadScores(torch.ones(4), torch.ones(2)).group.shape
    torch.Size([2])
    """

    query: torch.Tensor
    group: torch.Tensor


def attention_head_scores(
    model: nn.Module,
    importance: str = "magnitude",
    calibration_batches: Iterable[Mapping[str, torch.Tensor]] | None = None,
) -> dict[int, HeadScores]:
    """Importance of every query head and key/value group of every block (higher = keep).

    Query head ``h`` owns rows ``h*d:(h+1)*d`` of ``q_proj`` and the same columns of ``o_proj``; group
    ``g`` owns its query heads and rows ``g*d:(g+1)*d`` of ``k_proj`` and ``v_proj`` (``d = head_dim``).
    ``"magnitude"``: L2 norm of those weights. ``"activation"``: mean ``|x|`` of the head's slice of the
    ``o_proj`` input (the attention output) over real tokens; a group scores the mean of its query heads.
    ``"taylor"``: ``|sum of w * dL/dw|`` over those weights.

    Args:
        model: a decoder whose attention takes its head size from ``config.head_dim`` (Llama family, Qwen2,
            Phi3; see :func:`~hf_lite.pruning.sites.head_layout`), or a PEFT model around one.
        importance: ``"magnitude"``, ``"activation"`` or ``"taylor"``.
        calibration_batches: batches of tokenized text (with ``labels`` for ``"taylor"``).

    Returns:
        ``{block index: HeadScores}``.

    >>> from hf_lite.testing import build_tiny_model
    >>> scores = attention_head_scores(build_tiny_model("llama")[0])
    >>> scores[0].query.shape, scores[0].group.shape
    (torch.Size([4]), torch.Size([2]))
    """
    importance = check_importance(importance)
    heads, kv_heads, head_dim = head_layout(model)
    sites = find_attention_sites(model)
    if importance == "magnitude":
        out = {}
        for s in sites:
            query, group = heads_reduce(
                s,
                {p: _weight(p).detach().float() ** 2 for p in (s.q, s.k, s.v, s.o)},
                heads,
                kv_heads,
                head_dim,
            )
            out[s.layer] = HeadScores(query.sqrt(), group.sqrt())
        return out
    if importance == "activation":
        batches = check_calibration(calibration_batches, "importance='activation'")
        means = mean_abs_inputs(model, {s.layer: s.o for s in sites}, batches)
        out = {}
        for layer, mean in means.items():
            query = mean.view(heads, head_dim).mean(1)
            out[layer] = HeadScores(query, query.view(kv_heads, heads // kv_heads).mean(1))
        return out
    batches = check_calibration(calibration_batches, "importance='taylor'", labels=True)
    sums = _taylor_sums(
        model,
        sites,
        lambda s: (s.q, s.k, s.v, s.o),
        lambda s, prod: heads_reduce(s, prod, heads, kv_heads, head_dim),
        batches,
    )
    return {layer: HeadScores(query.abs(), group.abs()) for layer, (query, group) in sums.items()}


@torch.no_grad()
def block_influence(
    model: nn.Module, calibration_batches: Iterable[Mapping[str, torch.Tensor]] | None
) -> torch.Tensor:
    """Block influence of every transformer block (ShortGPT, Men et al. 2024).

    ``BI_i = 1 - mean over real tokens of cos(x_i, y_i)``, where ``x_i`` is the hidden state entering
    block ``i`` and ``y_i`` the one leaving it, both taken with forward hooks on the block (so a final norm
    is never mixed in). A block whose output equals its input has ``BI = 0``; drop the lowest first.

    Args:
        model: a transformers model (or a PEFT model around one).
        calibration_batches: batches of tokenized text (``input_ids``, ``attention_mask``).

    Returns:
        A float32 tensor ``(num_hidden_layers,)``.

    >>> from hf_lite.testing import build_tiny_model
    >>> model, tok = build_tiny_model("gpt2")
    >>> bi = block_influence(model, [tok(["the cat sees a dog"], return_tensors="pt")])
    >>> bool(((bi >= 0) & (bi <= 2)).all())
    True
    """
    batches = check_calibration(calibration_batches, "block influence")
    blocks = find_layer_list(model)
    sums = torch.zeros(len(blocks), dtype=torch.float64)
    counts = torch.zeros(len(blocks), dtype=torch.float64)
    state: dict[str, Any] = {"mask": None}

    def make_hook(i: int):
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            x = args[0] if args else kwargs["hidden_states"]  # (batch, seq, hidden)
            y = output[0] if isinstance(output, (tuple, list)) else output  # (batch, seq, hidden)
            cos = nn.functional.cosine_similarity(x.float(), y.float(), dim=-1)  # (batch, seq)
            cos = real_tokens(cos.unsqueeze(-1), state["mask"]).reshape(-1)  # (tokens,)
            sums[i] += cos.double().sum().cpu()
            counts[i] += cos.numel()

        return hook

    handles = [b.register_forward_hook(make_hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            inputs = to_device(batch, device)
            state["mask"] = token_mask(inputs)
            model(**inputs, **forward_kwargs(model))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if (counts == 0).any():
        raise ValueError(
            "calibration_batches reached no block with a real token; check their attention_mask."
        )
    return (1.0 - sums / counts).float()


def check_count(value: object, name: str) -> int:
    """Return ``value`` as an ``int`` after checking it is one (not a bool).

    >>> check_count(3, "num_hidden_layers")
    3
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {type(value).__name__} {value!r}.")
    return int(value)
