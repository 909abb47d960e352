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

import inspect
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from hf_lite.pruning.oneshot import _check_calibration

if TYPE_CHECKING:
    from transformers import PretrainedConfig

__all__ = [
    "IMPORTANCE_METHODS",
    "HeadScores",
    "ffn_neuron_scores",
    "attention_head_scores",
    "block_influence",
]

#: Accepted values of ``importance=``.
IMPORTANCE_METHODS = ("magnitude", "activation", "taylor")

# FFN layouts: (layers whose output features are the neurons, layer whose input features are the neurons,
# config keys that may hold the width, first present wins). Names are relative to one module of a block.
_FFN_LAYOUTS: tuple[tuple[tuple[str, ...], str, tuple[str, ...]], ...] = (
    (("gate_proj", "up_proj"), "down_proj", ("intermediate_size",)),  # Llama, Mistral, Qwen2, Gemma ...
    (("up_proj",), "down_proj", ("intermediate_size",)),  # non-gated variants (e.g. Nemotron)
    (("c_fc",), "c_proj", ("n_inner",)),  # GPT-2 (Conv1D, weight (in, out))
    (("intermediate.dense",), "output.dense", ("intermediate_size",)),  # BERT, RoBERTa, ...
    (("fc1",), "fc2", ("intermediate_size", "ffn_dim")),  # Phi, OPT
)
_ATTN_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


# ----------------------------------------------------------------------------------------------------------
# where things are in a model


def unwrap_model(model: nn.Module) -> nn.Module:
    """The transformers model inside ``model`` (a ``peft.PeftModel`` is unwrapped; anything else is returned).

    >>> import torch
    >>> m = torch.nn.Linear(2, 2)
    >>> unwrap_model(m) is m
    True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module (a transformers model); got {type(model).__name__}."
        )
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base) and type(model).__module__.startswith("peft"):
        return get_base()
    return model


def model_config(model: nn.Module) -> PretrainedConfig:
    """The ``config`` of a transformers model (or of the model inside a PEFT wrapper); ``TypeError`` if none.

    >>> from hf_lite.testing import build_tiny_model
    >>> model_config(build_tiny_model("gpt2")[0]).n_layer
    2
    """
    config = getattr(unwrap_model(model), "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise TypeError(
            f"model ({type(model).__name__}) has no transformers config; structural pruning edits the config "
            "so that from_pretrained can rebuild the smaller model. Pass a transformers PreTrainedModel."
        )
    return config


def base_layer(module: nn.Module) -> nn.Module:
    """The layer holding the weight: ``module`` itself, or the ``base_layer`` a PEFT adapter wraps.

    >>> import torch
    >>> layer = torch.nn.Linear(2, 2)
    >>> base_layer(layer) is layer
    True
    """
    get_base = getattr(module, "get_base_layer", None)
    return get_base() if callable(get_base) else module


def _is_weight_layer(module: nn.Module | None) -> bool:
    if module is None:
        return False
    base = base_layer(module)
    if isinstance(base, (nn.Linear, Conv1D)):
        return True
    return type(base).__module__.startswith("bitsandbytes")  # refused later with a clear message


def _get(module: nn.Module, dotted: str) -> nn.Module | None:
    try:
        return module.get_submodule(dotted)
    except AttributeError:
        return None


def find_layer_list(model: nn.Module) -> nn.ModuleList:
    """The ``nn.ModuleList`` of transformer blocks (``config.num_hidden_layers`` of them).

    >>> from hf_lite.testing import build_tiny_model
    >>> type(find_layer_list(build_tiny_model("bert")[0])[0]).__name__
    'BertLayer'
    """
    config = model_config(model)
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            f"model is an encoder-decoder ({type(unwrap_model(model)).__name__}); structural pruning supports "
            "decoder-only (Llama, GPT-2, ...) and encoder-only (BERT, ...) models, whose config has one "
            "num_hidden_layers and one FFN width. Use unstructured pruning (magnitude_prune_, wanda_prune_) "
            "for encoder-decoder models."
        )
    num_layers = getattr(config, "num_hidden_layers", None)
    if not isinstance(num_layers, int):
        raise ValueError(
            f"config of {type(config).__name__} has no integer num_hidden_layers (got {num_layers!r}), so "
            "hf-lite cannot tell which modules are the transformer blocks. Structural pruning supports "
            "text models whose config has num_hidden_layers (for a multimodal model, prune its text model)."
        )
    lists = [
        m
        for m in unwrap_model(model).modules()
        if isinstance(m, nn.ModuleList) and len(m) == num_layers and len({type(b) for b in m}) == 1
    ]
    if len(lists) != 1:
        raise ValueError(
            f"found {len(lists)} lists of {num_layers} identical blocks in {type(unwrap_model(model)).__name__} "
            "(config.num_hidden_layers), expected exactly one; structural pruning supports models with one "
            "stack of transformer blocks."
        )
    return lists[0]


@dataclass(frozen=True)
class FfnSite:
    """The FFN of one block: ``expand`` layers produce the neurons, ``project`` consumes them.

    Args:
        layer: block index.
        parent: the module holding the FFN layers (``mlp`` for Llama/GPT-2, the block itself for BERT).
        expand: layers whose *output* features are the neurons (gate/up, ``c_fc``, ``intermediate.dense``).
        project: layer whose *input* features are the neurons (``down_proj``, ``c_proj``, ``output.dense``).
        config_key: the config attribute holding the width (``intermediate_size``, ``n_inner``, ...).

    >>> from hf_lite.testing import build_tiny_model
    >>> site = find_ffn_sites(build_tiny_model("bert")[0])[0]
    >>> site.width, site.config_key, type(site.parent).__name__
    (128, 'intermediate_size', 'BertLayer')
    """

    layer: int
    parent: nn.Module
    expand: tuple[nn.Module, ...]
    project: nn.Module
    config_key: str

    @property
    def width(self) -> int:
        """Current number of neurons."""
        return in_out_features(self.project)[0]


@dataclass(frozen=True)
class AttentionSite:
    """The self-attention of one block with separate ``q_proj``/``k_proj``/``v_proj``/``o_proj`` layers.

    Args:
        layer: block index.
        module: the attention module.
        q, k, v, o: its projections (possibly wrapped by a PEFT adapter).

    >>> from hf_lite.testing import build_tiny_model
    >>> site = find_attention_sites(build_tiny_model("llama")[0])[1]
    >>> site.layer, type(site.module).__name__, tuple(site.o.weight.shape)
    (1, 'LlamaAttention', (64, 64))
    """

    layer: int
    module: nn.Module
    q: nn.Module
    k: nn.Module
    v: nn.Module
    o: nn.Module


def in_out_features(module: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of a Linear or Conv1D layer (or of the layer a PEFT adapter wraps).

    >>> import torch
    >>> in_out_features(torch.nn.Linear(3, 5))
    (3, 5)
    """
    base = base_layer(module)
    if isinstance(base, Conv1D):
        return base.weight.shape[0], base.weight.shape[1]
    return base.weight.shape[1], base.weight.shape[0]


def find_ffn_sites(model: nn.Module) -> list[FfnSite]:
    """The FFN of every block, in block order; ``ValueError`` when a block has none or several.

    >>> from hf_lite.testing import build_tiny_model
    >>> [site.config_key for site in find_ffn_sites(build_tiny_model("gpt2")[0])]
    ['n_inner', 'n_inner']
    """
    config = model_config(model)
    sites = []
    for i, block in enumerate(find_layer_list(model)):
        found = []
        for _, parent in block.named_modules():
            for expand_names, project_name, keys in _FFN_LAYOUTS:
                expand = [_get(parent, n) for n in expand_names]
                project = _get(parent, project_name)
                if all(_is_weight_layer(m) for m in [*expand, project]):
                    key = next((k for k in keys if hasattr(config, k)), None)
                    if key is not None:
                        found.append(FfnSite(i, parent, tuple(expand), project, key))  # type: ignore[arg-type]
                    break  # the first matching layout of a module wins (gate+up before up alone)
        if len(found) != 1:
            what = "no FFN it recognizes" if not found else f"{len(found)} FFNs (a mixture of experts?)"
            raise ValueError(
                f"block {i} ({type(block).__name__}) has {what}. FFN pruning supports one dense FFN per block "
                "laid out as gate_proj/up_proj/down_proj (Llama family), c_fc/c_proj (GPT-2), "
                "intermediate.dense/output.dense (BERT family) or fc1/fc2, with its width in the config."
            )
        sites.append(found[0])
    return sites


def find_attention_sites(model: nn.Module) -> list[AttentionSite]:
    """The self-attention of every block, for architectures with separate q/k/v/o projections.

    >>> from hf_lite.testing import build_tiny_model
    >>> site = find_attention_sites(build_tiny_model("llama")[0])[0]
    >>> tuple(site.k.weight.shape)   # 2 key/value heads of 16
    (32, 64)
    """
    sites = []
    for i, block in enumerate(find_layer_list(model)):
        found = []
        for _, module in block.named_modules():
            projections = [_get(module, n) for n in _ATTN_PROJECTIONS]
            if all(_is_weight_layer(p) for p in projections):
                found.append(AttentionSite(i, module, *projections))  # type: ignore[arg-type]
        if len(found) != 1:
            raise ValueError(
                f"block {i} ({type(block).__name__}) has {len(found)} attention modules with separate "
                "q_proj/k_proj/v_proj/o_proj layers; head pruning supports exactly one (self-attention of a "
                "decoder of the Llama family)."
            )
        sites.append(found[0])
    return sites


def head_layout(model: nn.Module) -> tuple[int, int, int]:
    """``(num_attention_heads, num_key_value_heads, head_dim)`` from the config; ``ValueError`` when the
    config cannot express head pruning.

    >>> from hf_lite.testing import build_tiny_model
    >>> head_layout(build_tiny_model("llama")[0])
    (4, 2, 16)
    """
    config = model_config(model)
    heads = getattr(config, "num_attention_heads", None)
    head_dim = getattr(config, "head_dim", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if not isinstance(head_dim, int) or not isinstance(heads, int):
        raise ValueError(
            f"head pruning is not possible for model_type={getattr(config, 'model_type', None)!r}: its config "
            "has no head_dim, so the head size is implied as hidden_size / num_attention_heads and a model with "
            "fewer heads cannot be described by the config (from_pretrained would rebuild the original "
            "shapes). Prune FFN neurons (prune_ffn_) or whole layers (prune_layers_) instead."
        )
    if heads % kv_heads:
        raise ValueError(
            f"config has num_attention_heads={heads} not divisible by num_key_value_heads={kv_heads}; "
            "this is not a valid grouped-query attention layout."
        )
    return heads, kv_heads, head_dim


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


def check_calibration(
    calibration_batches: Iterable[Mapping[str, Any]] | None, why: str, *, labels: bool = False
) -> list[Mapping[str, Any]]:
    """Materialize and check calibration batches (dicts of tensors with ``input_ids``).

    Args:
        calibration_batches: iterable of dicts passed as ``model(**batch)``.
        why: what needs the data, for the error message (e.g. ``"importance='activation'"``).
        labels: whether every batch must carry ``labels`` (for a loss).

    Returns:
        The batches as a list.

    >>> import torch
    >>> len(check_calibration([{"input_ids": torch.ones(1, 3, dtype=torch.long)}], "block influence"))
    1
    """
    if isinstance(calibration_batches, Iterable) and not isinstance(
        calibration_batches, (Mapping, str, bytes)
    ):
        calibration_batches = list(calibration_batches)  # also materializes generators, once
    if calibration_batches is None or (isinstance(calibration_batches, list) and not calibration_batches):
        raise ValueError(
            f"calibration_batches={calibration_batches!r}: {why} needs calibration data. Pass a list of "
            "tokenized batches, e.g. [tokenizer(texts, return_tensors='pt', padding=True)]"
            + (" with 'labels'" if labels else "")
            + ", or use importance='magnitude', which needs no data."
        )
    batches = _check_calibration(calibration_batches)
    if labels:
        missing = [i for i, b in enumerate(batches) if "labels" not in b]
        if missing:
            raise ValueError(
                f"calibration batches {missing[:5]} have no 'labels': {why} takes the gradient of the loss, "
                "which needs labels. Add them (for a causal LM: batch['labels'] = input_ids with padding set "
                "to -100; for classification: the class ids), or use importance='activation'."
            )
    return batches


# ----------------------------------------------------------------------------------------------------------
# calibration passes


def _token_mask(batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    mask = batch.get("attention_mask")
    return None if mask is None else mask.bool()


def _real_tokens(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``x`` of shape ``(batch, seq, ...)`` -> ``(tokens, ...)``, padded positions dropped when the mask fits."""
    if mask is not None and x.dim() >= 3 and tuple(x.shape[:2]) == tuple(mask.shape):
        return x[mask.to(x.device)]
    return x.reshape(-1, *x.shape[2:]) if x.dim() >= 3 else x


def _forward_kwargs(model: nn.Module) -> dict[str, Any]:
    return {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}


def _to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


class _InputAbsMean:
    """Forward pre-hooks accumulating the mean ``|input|`` per input feature of each layer, real tokens only."""

    def __init__(self, layers: Mapping[Any, nn.Module]):
        self.layers = layers
        self.sums: dict[Any, torch.Tensor] = {}
        self.counts = dict.fromkeys(layers, 0)
        self.mask: torch.Tensor | None = None
        self._handles: list[Any] = []

    def __enter__(self) -> _InputAbsMean:
        for key, layer in self.layers.items():
            self._handles.append(layer.register_forward_pre_hook(self._hook(key), with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()

    def _hook(self, key: Any):
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            x = (args[0] if args else next(iter(kwargs.values()))).detach()  # (batch, seq, in)
            x = _real_tokens(x, self.mask).reshape(-1, x.shape[-1]).float().abs()  # (tokens, in)
            total = x.sum(dim=0)
            self.sums[key] = self.sums[key] + total if key in self.sums else total
            self.counts[key] += x.shape[0]

        return hook

    def means(self) -> dict[Any, torch.Tensor]:
        silent = [k for k, c in self.counts.items() if c == 0]
        if silent:
            raise ValueError(
                f"layers of blocks {silent[:5]} saw no real token during the calibration passes; check that "
                "calibration_batches hold input_ids and an attention_mask with some ones."
            )
        return {k: self.sums[k] / self.counts[k] for k in self.layers}


@torch.no_grad()
def _mean_abs_inputs(
    model: nn.Module, layers: Mapping[Any, nn.Module], batches: list[Mapping[str, torch.Tensor]]
) -> dict[Any, torch.Tensor]:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with _InputAbsMean(layers) as collector:
            for batch in batches:
                inputs = _to_device(batch, device)
                collector.mask = _token_mask(inputs)
                model(**inputs, **_forward_kwargs(model))
    finally:
        model.train(was_training)
    return collector.means()


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
            out = model(**_to_device(batch, device), **_forward_kwargs(model))
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
                products = {}
                for m in modules_of(site):
                    w = _weight(m)
                    g = grad_of[id(w)]
                    products[m] = w.detach().float() * (
                        g.float() if g is not None else torch.zeros_like(w).float()
                    )
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


def _ffn_reduce(site: FfnSite, values: Mapping[nn.Module, torch.Tensor]) -> torch.Tensor:
    """Sum a weight-shaped quantity over each neuron's weights (expand rows + project columns): ``(width,)``."""
    total = _per_input(site.project, values[site.project])
    for layer in site.expand:
        total = total + _per_output(layer, values[layer]).to(total.device)
    return total


def _heads_reduce(
    site: AttentionSite, values: Mapping[nn.Module, torch.Tensor], heads: int, kv_heads: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum a weight-shaped quantity over each query head (q rows, o columns) and each group (its query
    heads plus its k and v rows): ``(heads,)``, ``(kv_heads,)``."""
    query = _per_output(site.q, values[site.q]).view(heads, head_dim).sum(1)
    query = query + _per_input(site.o, values[site.o]).view(heads, head_dim).sum(1).to(query.device)
    kv = sum(
        _per_output(p, values[p]).view(kv_heads, head_dim).sum(1).to(query.device) for p in (site.k, site.v)
    )
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
            s.layer: _ffn_reduce(
                s, {m: _weight(m).detach().float() ** 2 for m in (*s.expand, s.project)}
            ).sqrt()
            for s in sites
        }
    if importance == "activation":
        batches = check_calibration(calibration_batches, "importance='activation'")
        return _mean_abs_inputs(model, {s.layer: s.project for s in sites}, batches)
    batches = check_calibration(calibration_batches, "importance='taylor'", labels=True)
    sums = _taylor_sums(
        model, sites, lambda s: (*s.expand, s.project), lambda s, prod: (_ffn_reduce(s, prod),), batches
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
        model: a decoder whose config carries ``head_dim`` (Llama family), or a PEFT model around one.
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
            query, group = _heads_reduce(
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
        means = _mean_abs_inputs(model, {s.layer: s.o for s in sites}, batches)
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
        lambda s, prod: _heads_reduce(s, prod, heads, kv_heads, head_dim),
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
            cos = _real_tokens(cos.unsqueeze(-1), state["mask"]).reshape(-1)  # (tokens,)
            sums[i] += cos.double().sum().cpu()
            counts[i] += cos.numel()

        return hook

    handles = [b.register_forward_hook(make_hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            inputs = _to_device(batch, device)
            state["mask"] = _token_mask(inputs)
            model(**inputs, **_forward_kwargs(model))
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
