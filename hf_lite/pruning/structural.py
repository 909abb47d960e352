"""Structural pruning: physically remove FFN neurons, attention head groups or whole blocks, and edit the
config so that stock ``AutoModel*.from_pretrained`` rebuilds the smaller model (no hf-lite, no remote code).

What the config can express decides what is supported:

- **FFN neurons** (:func:`prune_ffn_`): every block keeps the same number of neurons, so one
  ``intermediate_size`` (``n_inner`` for GPT-2) describes them. Llama-style gate/up/down, GPT-2's Conv1D
  ``c_fc``/``c_proj`` and BERT's ``intermediate.dense``/``output.dense`` are sliced with their biases.
- **Attention heads** (:func:`prune_attention_heads_`): only for decoders whose config carries ``head_dim``
  (Llama family), so the head size survives a change of ``num_attention_heads``. Whole grouped-query
  groups are removed (a key/value head and the query heads that read it), the same number in every block;
  optionally each kept group also keeps fewer query heads (the same number in every group). BERT and GPT-2
  derive the head size from ``hidden_size / num_attention_heads``: removing heads there cannot be saved
  as a config, so it is refused.
- **Blocks** (:func:`prune_layers_`): explicit indices, or the blocks with the lowest block influence
  (ShortGPT). ``num_hidden_layers`` and per-layer config lists (``layer_types``, ...) are updated and the
  kept blocks' ``layer_idx`` attributes renumbered, so generation with a KV cache keeps working.

Every function checks, before touching a weight, that the edited config round-trips through
``from_dict`` (the validation ``from_pretrained`` runs) and that a block built from it has exactly the
pruned shapes. A LoRA adapter (PEFT) is sliced with its base layer: ``lora_B`` rows of removed output
features, ``lora_A`` columns of removed input features. Other adapter types, DoRA, and bitsandbytes-quantized
layers are refused (merge or prune first). After pruning an adapter-wrapped model, save a checkpoint that
stock transformers loads with ``model.merge_and_unload().save_pretrained(folder)``: the adapter saved alone
fits only the pruned base, not the original that its ``adapter_config.json`` names. These functions leave
optimizers alone: prune before creating one, or, to prune while training, use
:class:`trainers.StructuralPruningCallback`, which slices the Trainer's optimizer state with the weights.

>>> from hf_lite.testing import build_tiny_model
>>> model, tok = build_tiny_model("llama", num_hidden_layers=3)
>>> _ = prune_ffn_(model, 0.5, multiple_of=8)
>>> _ = prune_attention_heads_(model, 0.5)
>>> prune_layers_(model, drop=[1])
[0, 2]
>>> c = model.config
>>> c.intermediate_size, c.num_attention_heads, c.num_key_value_heads, c.num_hidden_layers
(64, 2, 1, 2)
"""

from __future__ import annotations

import copy
import logging
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from hf_lite.pruning.importance import (
    AttentionSite,
    attention_head_scores,
    base_layer,
    block_influence,
    check_calibration,
    check_count,
    check_importance,
    ffn_neuron_scores,
    find_attention_sites,
    find_ffn_sites,
    find_layer_list,
    head_layout,
    in_out_features,
    model_config,
)

if TYPE_CHECKING:
    from transformers import PretrainedConfig

__all__ = ["KeptHeads", "prune_ffn_", "prune_attention_heads_", "prune_layers_"]

logger = logging.getLogger(__name__)

IndexSpec = Sequence[int] | torch.Tensor | Mapping[int, Sequence[int] | torch.Tensor]

#: Config entries with one value per block: sliced when blocks are dropped.
PER_LAYER_CONFIG_KEYS = (
    "layer_types",
    "mlp_layer_types",
    "layers_block_type",
    "layer_rope_theta",
    "no_rope_layers",
    "num_key_value_heads_per_layer",
    "num_attention_heads_per_layer",
)
#: Config entries listing block indices: renumbered when blocks are dropped.
LAYER_INDEX_CONFIG_KEYS = ("mlp_only_layers", "moe_layers", "cross_attention_layers")


class KeptHeads(NamedTuple):
    """Which heads of one block survived :func:`prune_attention_heads_` (indices in the original numbering).

    Args:
        key_value: ``(kept groups,)`` int64, the kept key/value heads, ascending.
        query: ``(kept query heads,)`` int64, the kept query heads, grouped by key/value head, ascending.

    >>> import torch
    >>> KeptHeads(torch.tensor([1]), torch.tensor([2, 3])).query.tolist()
    [2, 3]
    """

    key_value: torch.Tensor
    query: torch.Tensor


# ----------------------------------------------------------------------------------------------------------
# argument checks


def _kept_count(keep_ratio: object, total: int, what: str) -> int:
    """``round(keep_ratio * total)`` (halves up) after checking ``keep_ratio`` is a number in ``(0, 1]``."""
    if isinstance(keep_ratio, (Mapping, list, tuple, torch.Tensor)):
        raise ValueError(
            f"keep_ratio={keep_ratio!r} is non-uniform (one value per layer), but the config stores one "
            f"number of {what} for all blocks, so from_pretrained could not rebuild such a model. Pass one "
            "float for every block, or drop whole blocks with prune_layers_."
        )
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, numbers.Real):
        raise TypeError(
            f"keep_ratio must be a float in (0, 1]; got {type(keep_ratio).__name__} {keep_ratio!r}."
        )
    ratio = float(keep_ratio)
    if not 0.0 < ratio <= 1.0:  # also rejects NaN
        raise ValueError(
            f"keep_ratio={keep_ratio!r} is outside (0, 1]: it is the fraction of {what} kept, so 0.75 keeps "
            "three quarters and 1.0 keeps all. Pass a value such as 0.5 (not a percentage like 50)."
        )
    kept = math.floor(ratio * total + 0.5)
    if kept < 1:
        raise ValueError(
            f"keep_ratio={keep_ratio!r} keeps round({ratio} * {total}) = 0 {what}; at least 1 must remain. "
            f"Use keep_ratio >= {0.5 / total:.3g}."
        )
    return kept


def _exactly_one(**options: object) -> str:
    given = [name for name, value in options.items() if value is not None]
    if len(given) != 1:
        names = ", ".join(options)
        raise ValueError(
            f"pass exactly one of {names}; got {', '.join(given) or 'none'}"
            f"{' (' + ', '.join(f'{n}={options[n]!r}' for n in given) + ')' if given else ''}."
        )
    return given[0]


def _index_list(values: object, size: int, name: str) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        if values.dim() != 1 or values.is_floating_point() or values.dtype == torch.bool:
            raise TypeError(
                f"{name} must be a 1-D integer tensor or a list of ints; got {values.dtype} {values.shape}."
            )
        items = values.tolist()
    elif isinstance(values, Sequence) and not isinstance(values, str):
        items = list(values)
    else:
        raise TypeError(
            f"{name} must be a list of ints or a 1-D integer tensor; got {type(values).__name__}."
        )
    for v in items:
        check_count(v, name)
    bad = [v for v in items if not 0 <= v < size]
    if bad:
        raise ValueError(
            f"{name} has indices {bad[:5]} outside range(0, {size}); valid indices are 0..{size - 1}."
        )
    if len(set(items)) != len(items):
        raise ValueError(f"{name}={items!r} repeats indices; give each kept index once.")
    if not items:
        raise ValueError(f"{name} is empty: at least one index must be kept.")
    return torch.tensor(sorted(items), dtype=torch.long)


def _explicit_indices(
    spec: IndexSpec, layers: int, size: int, name: str, what: str
) -> dict[int, torch.Tensor]:
    """``spec`` (one list for every block, or ``{block: list}`` for all blocks) -> ``{block: sorted indices}``."""
    if isinstance(spec, Mapping):
        blocks = sorted(spec)
        if blocks != list(range(layers)):
            raise ValueError(
                f"{name} gives blocks {blocks} but the model has blocks 0..{layers - 1}; give every block "
                f"(the same number of {what} in each), or one list used for all blocks."
            )
        out = {i: _index_list(spec[i], size, f"{name}[{i}]") for i in blocks}
    else:
        kept = _index_list(spec, size, name)
        out = dict.fromkeys(range(layers), kept)
    lengths = sorted({len(v) for v in out.values()})
    if len(lengths) > 1:
        raise ValueError(
            f"{name} keeps {lengths} {what} in different blocks (non-uniform), but the config stores one number "
            f"of {what} for all blocks. Keep the same number in every block."
        )
    return out


def _top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` highest scores' indices, ascending; among equal scores the lower index wins (deterministic)."""
    order = torch.sort(scores.detach().float().cpu(), descending=True, stable=True).indices
    return order[:k].sort().values


# ----------------------------------------------------------------------------------------------------------
# what can be sliced


def _check_sliceable(modules: Iterable[nn.Module]) -> None:
    for module in modules:
        base = base_layer(module)
        if type(base).__module__.startswith("bitsandbytes"):
            raise ValueError(
                f"{type(base).__name__} layers are bitsandbytes-quantized; their packed weights cannot be sliced. "
                "Prune the full-precision model first, then quantize it."
            )
        if base is module:
            continue
        if not (hasattr(module, "lora_A") and hasattr(module, "lora_B")) or getattr(
            module, "lora_embedding_A", {}
        ):
            raise ValueError(
                f"a pruned layer is wrapped by a {type(module).__name__} adapter layer; only LoRA adapters on "
                "Linear/Conv1D layers can be sliced with their base. Merge the adapter first "
                "(model = model.merge_and_unload()) or prune before attaching it."
            )
        if getattr(module, "lora_variant", None) or any(getattr(module, "use_dora", {}).values()):
            raise ValueError(
                "a pruned layer carries a LoRA variant (DoRA or similar) whose normalization depends on the "
                "full weight, so slicing it would change the model. Merge the adapter first "
                "(model = model.merge_and_unload()) or prune before attaching it."
            )


def _set_param(owner: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(owner, name)
    setattr(owner, name, nn.Parameter(value.contiguous(), requires_grad=old.requires_grad))


@torch.no_grad()
def _slice_outputs_(module: nn.Module, index: torch.Tensor) -> None:
    """Keep the output features ``index`` of a Linear/Conv1D layer (and of its LoRA ``lora_B``)."""
    base = base_layer(module)
    idx = index.to(base.weight.device)
    if isinstance(base, Conv1D):
        _set_param(base, "weight", base.weight.index_select(1, idx))  # (in, out)
        base.nf = len(index)
    else:
        _set_param(base, "weight", base.weight.index_select(0, idx))  # (out, in)
        base.out_features = len(index)
    if base.bias is not None:
        _set_param(base, "bias", base.bias.index_select(0, idx))
    if base is not module:
        for lora_b in module.lora_B.values():  # (out, r)
            _set_param(lora_b, "weight", lora_b.weight.index_select(0, idx.to(lora_b.weight.device)))
            if lora_b.bias is not None:
                _set_param(lora_b, "bias", lora_b.bias.index_select(0, idx.to(lora_b.bias.device)))
            lora_b.out_features = len(index)
        module.out_features = len(index)


@torch.no_grad()
def _slice_inputs_(module: nn.Module, index: torch.Tensor) -> None:
    """Keep the input features ``index`` of a Linear/Conv1D layer (and of its LoRA ``lora_A``)."""
    base = base_layer(module)
    idx = index.to(base.weight.device)
    if isinstance(base, Conv1D):
        _set_param(base, "weight", base.weight.index_select(0, idx))  # (in, out)
        base.nx = len(index)
    else:
        _set_param(base, "weight", base.weight.index_select(1, idx))  # (out, in)
        base.in_features = len(index)
    if base is not module:
        for lora_a in module.lora_A.values():  # (r, in)
            _set_param(lora_a, "weight", lora_a.weight.index_select(1, idx.to(lora_a.weight.device)))
            lora_a.in_features = len(index)
        module.in_features = len(index)


# ----------------------------------------------------------------------------------------------------------
# does the edited config describe the pruned model?


def _edited_config(config: PretrainedConfig, edits: Mapping[str, Any]) -> PretrainedConfig:
    """``config`` with ``edits``, round-tripped through ``from_dict`` as ``from_pretrained`` would load it."""
    candidate = copy.deepcopy(config)
    for key, value in edits.items():
        setattr(candidate, key, value)
    return type(candidate).from_dict(candidate.to_dict())


def _config_error(config: PretrainedConfig, edits: Mapping[str, Any]) -> str | None:
    try:
        _edited_config(config, edits)
    except Exception as err:  # strict-dataclass validation raises its own error types
        message = " ".join(str(err).split()).rstrip(".")  # one line: validation errors span several
        return f"{type(err).__name__}: {message}"
    return None


def _build_block(block: nn.Module, config: PretrainedConfig) -> nn.Module | None:
    """A block of ``block``'s class built from ``config`` on the meta device, or ``None`` if that fails."""
    for args, kwargs in (((config,), {"layer_idx": 0}), ((config, 0), {}), ((config,), {})):
        try:
            with torch.device("meta"):
                return type(block)(*args, **kwargs)
        except Exception:  # noqa: BLE001 - an unknown constructor signature: skip the shape check
            continue
    return None


def _check_expressible(
    model: nn.Module,
    edits: Mapping[str, Any],
    out_sizes: Mapping[nn.Module, int],
    in_sizes: Mapping[nn.Module, int],
    why: str,
) -> None:
    """Refuse, before any weight changes, a pruning that the edited config cannot describe: the config must
    load (``from_dict`` validation), and a block built from it must have the pruned shapes."""
    config = model_config(model)
    error = _config_error(config, edits)
    if error is not None:
        raise ValueError(
            f"{why}: the edited config ({', '.join(f'{k}={v!r}' for k, v in edits.items())}) would not load "
            f"with from_pretrained: {error}"
        )
    block = find_layer_list(model)[0]
    expected: dict[str, tuple[int, ...]] = {}
    new_shape: dict[int, tuple[int, ...]] = {}
    for module in {*out_sizes, *in_sizes}:
        base = base_layer(module)
        fan_in, fan_out = in_out_features(module)
        fan_in, fan_out = in_sizes.get(module, fan_in), out_sizes.get(module, fan_out)
        new_shape[id(base.weight)] = (fan_in, fan_out) if isinstance(base, Conv1D) else (fan_out, fan_in)
        if base.bias is not None:
            new_shape[id(base.bias)] = (fan_out,)
    for name, param in block.named_parameters():
        if "lora_" in name:
            continue
        expected[name.replace(".base_layer.", ".")] = new_shape.get(id(param), tuple(param.shape))
    rebuilt = _build_block(block, _edited_config(config, edits))
    if rebuilt is None:
        logger.warning(
            "could not build a %s from the edited config to compare shapes; check that the saved model loads "
            "(from_pretrained) before publishing it",
            type(block).__name__,
        )
        return
    got = {name: tuple(p.shape) for name, p in rebuilt.named_parameters()}
    wrong = sorted(n for n in {*expected, *got} if expected.get(n) != got.get(n))
    if wrong:
        details = ", ".join(f"{n}: pruned {expected.get(n)} vs config {got.get(n)}" for n in wrong[:3])
        raise ValueError(
            f"{why}: {type(config).__name__} with {dict(edits)} does not describe the pruned shapes ({details}), "
            "so from_pretrained could not load the result. This architecture cannot express this pruning in "
            "its config; prune FFN neurons (prune_ffn_) or whole layers (prune_layers_) instead."
        )


# ----------------------------------------------------------------------------------------------------------
# FFN neurons


def prune_ffn_(
    model: nn.Module,
    keep_ratio: float | None = None,
    *,
    intermediate_size: int | None = None,
    keep_indices: IndexSpec | None = None,
    importance: str = "magnitude",
    calibration_batches: Iterable[Mapping[str, torch.Tensor]] | None = None,
    multiple_of: int = 1,
) -> dict[int, torch.Tensor]:
    """Remove FFN neurons from every block, in place, and set the config's FFN width.

    Every block keeps the same number of neurons (the config has one ``intermediate_size``, ``n_inner``
    for GPT-2): those with the highest importance in that block (see
    :func:`hf_lite.pruning.importance.ffn_neuron_scores`). The expanding layers lose the rows (Conv1D:
    columns) of removed neurons, weights and biases; the projecting layer loses the matching input columns.

    Args:
        model: a decoder (Llama family, GPT-2) or encoder (BERT family), or a PEFT model with LoRA around one.
        keep_ratio: fraction of neurons to keep, in ``(0, 1]``; the count is ``round(keep_ratio * width)``,
            then rounded up to a multiple of ``multiple_of`` (never above the current width).
        intermediate_size: the new width, instead of ``keep_ratio``.
        keep_indices: the neurons to keep, instead of scores: one list for every block, or
            ``{block: list}`` for every block, each of the same length.
        importance: ``"magnitude"`` (no data), ``"activation"`` or ``"taylor"`` (need ``calibration_batches``;
            Taylor needs ``labels``).
        calibration_batches: list of tokenized batches (dicts with ``input_ids``, ``attention_mask``).
        multiple_of: round the kept width up to a multiple of this; 8 or 64 keeps GPU matmul kernels on their
            fast paths (tensor cores want multiples of 8 in fp16/bf16, 64 helps tiling). Default 1.

    Returns:
        ``{block index: kept neuron indices}`` (int64, ascending, original numbering).

    Raises:
        ValueError: not exactly one of ``keep_ratio``/``intermediate_size``/``keep_indices``, a ratio outside
            ``(0, 1]`` or keeping no neuron, a width above the current one, indices out of range or of
            unequal lengths, missing calibration data, an architecture or adapter that cannot be sliced.

    >>> from hf_lite.testing import build_tiny_model
    >>> model, _ = build_tiny_model("gpt2")
    >>> kept = prune_ffn_(model, 0.3, multiple_of=8)   # round(0.3 * 128) = 38 -> 40
    >>> len(kept[0]), model.config.n_inner, tuple(model.transformer.h[0].mlp.c_fc.weight.shape)
    (40, 40, (64, 40))
    """
    importance = check_importance(importance)
    which = _exactly_one(
        keep_ratio=keep_ratio, intermediate_size=intermediate_size, keep_indices=keep_indices
    )
    multiple = check_count(multiple_of, "multiple_of")
    if multiple < 1:
        raise ValueError(
            f"multiple_of={multiple_of!r} must be >= 1 (1 = no rounding; 8 or 64 suit GPU kernels)."
        )
    sites = find_ffn_sites(model)
    widths = sorted({s.width for s in sites})
    if len(widths) != 1:
        raise ValueError(
            f"the blocks have different FFN widths {widths}, which their config cannot describe; this model was "
            "not saved by stock transformers. Load it from a checkpoint with uniform widths."
        )
    width = widths[0]
    explicit = None
    if which == "keep_ratio":
        kept = _kept_count(keep_ratio, width, "FFN neurons")
        kept = min(width, -(-kept // multiple) * multiple)
    elif which == "intermediate_size":
        if isinstance(intermediate_size, (Mapping, list, tuple)):
            raise ValueError(
                f"intermediate_size={intermediate_size!r} is non-uniform (one width per layer), but the config "
                "stores one intermediate_size for all blocks. Pass one int."
            )
        kept = check_count(intermediate_size, "intermediate_size")
        if not 1 <= kept <= width:
            raise ValueError(
                f"intermediate_size={intermediate_size!r} is outside 1..{width} (the current width): pruning "
                "removes neurons, it cannot add any. Pass a smaller width or use keep_ratio."
            )
        if kept % multiple:
            raise ValueError(
                f"intermediate_size={kept} is not a multiple of multiple_of={multiple}; pass a multiple of it "
                "(or leave multiple_of=1)."
            )
    else:
        explicit = _explicit_indices(keep_indices, len(sites), width, "keep_indices", "FFN neurons")  # type: ignore[arg-type]
        kept = len(explicit[0])

    modules = [m for s in sites for m in (*s.expand, s.project)]
    _check_sliceable(modules)
    config_key = sites[0].config_key
    current = getattr(model_config(model), config_key)
    if current is not None and (isinstance(current, bool) or not isinstance(current, int)):
        raise ValueError(
            f"config.{config_key}={current!r} is not one width for all blocks, which this FFN pruning writes "
            "(uniform widths). Prune whole layers (prune_layers_) instead."
        )
    _check_expressible(
        model,
        {config_key: kept},
        {m: kept for s in sites for m in s.expand},
        {s.project: kept for s in sites},
        f"pruning the FFN to {kept} neurons",
    )
    if explicit is None:
        scores = ffn_neuron_scores(model, importance, calibration_batches)
        explicit = {s.layer: _top_indices(scores[s.layer], kept) for s in sites}

    for site in sites:
        index = explicit[site.layer]
        for layer in site.expand:
            _slice_outputs_(layer, index)
        _slice_inputs_(site.project, index)
        if isinstance(getattr(site.parent, "intermediate_size", None), int):
            site.parent.intermediate_size = kept
    setattr(model_config(model), config_key, kept)
    logger.info("pruned FFN neurons %d -> %d in %d blocks (importance=%s)", width, kept, len(sites),
                importance if which != "keep_indices" else "explicit")  # fmt: skip
    return explicit


# ----------------------------------------------------------------------------------------------------------
# attention heads


def _update_attention_attrs(site: AttentionSite, heads: int, kv_heads: int) -> None:
    module = site.module
    for name, value in (
        ("num_heads", heads),
        ("num_attention_heads", heads),
        ("num_key_value_heads", kv_heads),
        ("num_key_value_groups", heads // kv_heads),
    ):
        if isinstance(getattr(module, name, None), int):
            setattr(module, name, value)


def prune_attention_heads_(
    model: nn.Module,
    keep_ratio: float | None = None,
    *,
    num_key_value_heads: int | None = None,
    keep_groups: IndexSpec | None = None,
    query_heads_per_group: int | None = None,
    importance: str = "magnitude",
    calibration_batches: Iterable[Mapping[str, torch.Tensor]] | None = None,
) -> dict[int, KeptHeads]:
    """Remove grouped-query attention groups (and optionally query heads within groups), in place.

    With ``H`` query heads and ``G`` key/value heads, key/value head ``g`` serves the ``H/G`` query heads
    ``g*H/G .. (g+1)*H/G - 1``. A *group* is that key/value head with its query heads; whole groups are
    removed, the same number in every block, so grouped-query attention stays valid. With
    ``query_heads_per_group`` each kept group also keeps only its best query heads, the same number in
    every group, so ``num_attention_heads = kept groups * query_heads_per_group`` stays divisible by
    ``num_key_value_heads``. ``head_dim`` is unchanged. ``q_proj``/``k_proj``/``v_proj`` lose rows (and
    biases), ``o_proj`` loses columns; ``num_attention_heads``/``num_key_value_heads`` are updated.

    Only configs that carry ``head_dim`` can express fewer heads (Llama, Mistral, Qwen2, ...). BERT and
    GPT-2 imply ``head_dim = hidden_size / num_attention_heads``; they are refused (prune FFN neurons or
    layers instead). Some configs also require ``hidden_size`` divisible by ``num_attention_heads``
    (Llama's validation does): a head count violating that is refused with the counts that load.

    Args:
        model: a decoder of the Llama family, or a PEFT model with LoRA around one.
        keep_ratio: fraction of key/value groups to keep, in ``(0, 1]`` (``round(keep_ratio * G)``).
        num_key_value_heads: number of groups to keep, instead of ``keep_ratio``.
        keep_groups: the groups (key/value heads) to keep, instead of scores: one list for every block or
            ``{block: list}`` for every block, each of the same length.
        query_heads_per_group: query heads kept in each kept group (``1 .. H/G``); ``None`` keeps them all.
            Alone (no ratio, count or groups), only query heads are pruned and every group is kept.
        importance: ``"magnitude"``, ``"activation"`` or ``"taylor"`` (see
            :func:`hf_lite.pruning.importance.attention_head_scores`).
        calibration_batches: tokenized batches, for ``"activation"`` and ``"taylor"`` (with ``labels``).

    Returns:
        ``{block index: KeptHeads(key_value, query)}`` in the original head numbering.

    >>> from hf_lite.testing import build_tiny_model
    >>> model, _ = build_tiny_model("llama")   # 4 query heads, 2 key/value heads, head_dim 16
    >>> kept = prune_attention_heads_(model, num_key_value_heads=1, query_heads_per_group=1)
    >>> model.config.num_attention_heads, model.config.num_key_value_heads, len(kept[0].query)
    (1, 1, 1)
    >>> tuple(model.model.layers[0].self_attn.o_proj.weight.shape)
    (64, 16)
    """
    importance = check_importance(importance)
    heads, kv_heads, head_dim = head_layout(model)
    per_group = heads // kv_heads
    if keep_ratio is None and num_key_value_heads is None and keep_groups is None:
        if query_heads_per_group is None:
            raise ValueError(
                "pass one of keep_ratio, num_key_value_heads or keep_groups (groups to keep), and/or "
                "query_heads_per_group (query heads kept per group); got none of them."
            )
        which = "all"
    else:
        which = _exactly_one(
            keep_ratio=keep_ratio, num_key_value_heads=num_key_value_heads, keep_groups=keep_groups
        )
    sites = find_attention_sites(model)
    explicit = None
    if which == "keep_ratio":
        groups = _kept_count(keep_ratio, kv_heads, "key/value head groups")
    elif which == "num_key_value_heads":
        if isinstance(num_key_value_heads, (Mapping, list, tuple)):
            raise ValueError(
                f"num_key_value_heads={num_key_value_heads!r} is non-uniform (one count per layer), but the "
                "config stores one num_key_value_heads for all blocks. Pass one int."
            )
        groups = check_count(num_key_value_heads, "num_key_value_heads")
        if not 1 <= groups <= kv_heads:
            raise ValueError(
                f"num_key_value_heads={num_key_value_heads!r} is outside 1..{kv_heads} (the current count): "
                "pruning removes groups, it cannot add any."
            )
    elif which == "keep_groups":
        explicit = _explicit_indices(keep_groups, len(sites), kv_heads, "keep_groups", "key/value groups")  # type: ignore[arg-type]
        groups = len(explicit[0])
    else:
        groups = kv_heads
    if query_heads_per_group is None:
        queries = per_group
    else:
        queries = check_count(query_heads_per_group, "query_heads_per_group")
        if not 1 <= queries <= per_group:
            raise ValueError(
                f"query_heads_per_group={query_heads_per_group!r} is outside 1..{per_group}: each key/value head "
                f"serves {heads} / {kv_heads} = {per_group} query heads now, and the same number must remain in "
                "every group."
            )
    new_heads = groups * queries
    projections = [p for s in sites for p in (s.q, s.k, s.v, s.o)]
    _check_sliceable(projections)
    edits = {"num_attention_heads": new_heads, "num_key_value_heads": groups}
    config = model_config(model)
    if _config_error(config, edits) is not None:
        valid = [
            g for g in range(1, kv_heads + 1)
            if _config_error(config, {"num_attention_heads": g * queries, "num_key_value_heads": g}) is None
        ]  # fmt: skip
        raise ValueError(
            f"keeping {groups} key/value groups of {queries} query heads gives num_attention_heads={new_heads}, "
            f"which {type(config).__name__} refuses to load: {_config_error(config, edits)}. Counts of "
            f"key/value groups that load with query_heads_per_group={queries}: {valid or 'none'}."
        )
    _check_expressible(
        model,
        edits,
        {
            **{s.q: new_heads * head_dim for s in sites},
            **{p: groups * head_dim for s in sites for p in (s.k, s.v)},
        },
        {s.o: new_heads * head_dim for s in sites},
        f"pruning attention to {groups} key/value heads and {new_heads} query heads",
    )
    scores = None
    if explicit is None or queries < per_group:
        scores = attention_head_scores(model, importance, calibration_batches)

    result: dict[int, KeptHeads] = {}
    for site in sites:
        kv_kept = (
            explicit[site.layer] if explicit is not None else _top_indices(scores[site.layer].group, groups)
        )
        query_kept = []
        for g in kv_kept.tolist():
            members = torch.arange(g * per_group, (g + 1) * per_group)
            if queries < per_group:
                members = members[_top_indices(scores[site.layer].query[members], queries)]
            query_kept.append(members)
        q_index = torch.cat(query_kept)
        q_rows = (q_index[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)  # (new_heads * head_dim,)
        kv_rows = (kv_kept[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)  # (groups * head_dim,)
        _slice_outputs_(site.q, q_rows)
        _slice_outputs_(site.k, kv_rows)
        _slice_outputs_(site.v, kv_rows)
        _slice_inputs_(site.o, q_rows)
        _update_attention_attrs(site, new_heads, groups)
        result[site.layer] = KeptHeads(kv_kept, q_index)
    config.num_attention_heads = new_heads
    config.num_key_value_heads = groups
    logger.info("pruned attention to %d query / %d key-value heads (from %d / %d) in %d blocks", new_heads, groups,
                heads, kv_heads, len(sites))  # fmt: skip
    return result


# ----------------------------------------------------------------------------------------------------------
# blocks


def _layer_config_edits(config: PretrainedConfig, kept: list[int], total: int) -> dict[str, Any]:
    edits: dict[str, Any] = {"num_hidden_layers": len(kept)}
    new_index = {old: new for new, old in enumerate(kept)}
    for key, value in config.to_dict().items():
        if "layer" not in key or not isinstance(value, (list, tuple)):
            continue
        if key in PER_LAYER_CONFIG_KEYS and len(value) == total:
            edits[key] = type(value)(value[i] for i in kept)
        elif key in LAYER_INDEX_CONFIG_KEYS and all(isinstance(v, int) for v in value):
            edits[key] = type(value)(new_index[v] for v in value if v in new_index)
        elif len(value) == total or key in PER_LAYER_CONFIG_KEYS:
            raise ValueError(
                f"config.{key}={value!r} looks like a per-layer setting that hf-lite does not know how to update "
                f"when blocks are dropped (it knows {', '.join(PER_LAYER_CONFIG_KEYS + LAYER_INDEX_CONFIG_KEYS)}). "
                "Prune FFN neurons or attention heads instead, or edit that config entry yourself."
            )
    return edits


def _check_peft_layers(model: nn.Module) -> None:
    for name, cfg in (getattr(model, "peft_config", None) or {}).items():
        if (
            getattr(cfg, "layers_to_transform", None) is not None
            or getattr(cfg, "rank_pattern", None)
            or getattr(cfg, "alpha_pattern", None)
        ):
            raise ValueError(
                f"adapter {name!r} refers to blocks by index (layers_to_transform, rank_pattern or alpha_pattern), "
                "which dropping blocks would renumber. Merge the adapter first (model.merge_and_unload()) or "
                "drop layers before attaching it."
            )


def prune_layers_(
    model: nn.Module,
    drop: Sequence[int] | None = None,
    *,
    keep_ratio: float | None = None,
    num_hidden_layers: int | None = None,
    calibration_batches: Iterable[Mapping[str, torch.Tensor]] | None = None,
) -> list[int]:
    """Drop whole transformer blocks, in place, and update the config.

    Blocks are given explicitly (``drop``) or chosen by block influence (ShortGPT, Men et al. 2024; see
    :func:`hf_lite.pruning.importance.block_influence`): the blocks whose output is most similar to their
    input are dropped. ``num_hidden_layers`` (``n_layer``) and per-layer config lists such as
    ``layer_types`` are updated, block-index lists (``mlp_only_layers``, ...) renumbered, and the
    ``layer_idx`` of every module in the kept blocks renumbered so a KV cache indexes the right layer.

    GPT-2 with ``scale_attn_by_inverse_layer_idx=True`` scales attention by ``1 / (layer_idx + 1)``: dropping
    a block before another would change the later block's computation, so that is refused.

    Args:
        model: a decoder or encoder transformers model, or a PEFT model with LoRA around one.
        drop: indices of the blocks to drop (``0 .. num_hidden_layers - 1``).
        keep_ratio: fraction of blocks to keep, in ``(0, 1]``, chosen by block influence.
        num_hidden_layers: number of blocks to keep, chosen by block influence.
        calibration_batches: tokenized batches for block influence (not needed with ``drop``).

    Returns:
        The original indices of the kept blocks, ascending.

    >>> from hf_lite.testing import build_tiny_model
    >>> model, tok = build_tiny_model("bert", "sequence-classification", num_hidden_layers=3)
    >>> prune_layers_(model, drop=[1])
    [0, 2]
    >>> model.config.num_hidden_layers, [b.attention.self.layer_idx for b in model.bert.encoder.layer]
    (2, [0, 1])
    """
    which = _exactly_one(drop=drop, keep_ratio=keep_ratio, num_hidden_layers=num_hidden_layers)
    blocks = find_layer_list(model)
    total = len(blocks)
    if which == "drop":
        if isinstance(drop, (str, bytes)) or not isinstance(drop, (Sequence, torch.Tensor)):
            raise TypeError(f"drop must be a list of block indices; got {type(drop).__name__} {drop!r}.")
        items = drop.tolist() if isinstance(drop, torch.Tensor) else list(drop)
        for v in items:
            check_count(v, "drop")
        bad = [v for v in items if not 0 <= v < total]
        if bad:
            raise ValueError(
                f"drop={items!r} has indices {bad} outside range(0, {total}); the model has blocks 0..{total - 1}."
            )
        if len(set(items)) != len(items):
            raise ValueError(f"drop={items!r} repeats indices; give each block to drop once.")
        if len(set(items)) >= total:
            raise ValueError(f"drop={items!r} drops all {total} blocks; at least 1 block must remain.")
        dropped = set(items)
    else:
        if which == "keep_ratio":
            n_keep = _kept_count(keep_ratio, total, "blocks")
        else:
            n_keep = check_count(num_hidden_layers, "num_hidden_layers")
            if not 1 <= n_keep <= total:
                raise ValueError(
                    f"num_hidden_layers={num_hidden_layers!r} is outside 1..{total} (the current depth): at least "
                    "1 block must remain and dropping blocks cannot add any."
                )
        check_calibration(
            calibration_batches, "choosing blocks by block influence (pass drop=[...] to choose them)"
        )
        dropped = set()
        if n_keep < total:
            influence = block_influence(model, calibration_batches)
            order = torch.sort(influence, stable=True).indices  # lowest influence first
            dropped = set(order[: total - n_keep].tolist())
            logger.info(
                "block influence %s: dropping %s", [round(v, 4) for v in influence.tolist()], sorted(dropped)
            )
    kept = [i for i in range(total) if i not in dropped]

    config = model_config(model)
    if getattr(config, "scale_attn_by_inverse_layer_idx", False) and kept != list(range(len(kept))):
        raise ValueError(
            f"config.scale_attn_by_inverse_layer_idx=True scales block i's attention by 1/(i+1), so dropping "
            f"blocks {sorted(dropped)} would renumber and change blocks {[i for n, i in enumerate(kept) if n != i]}. "
            "Drop only the last blocks (drop=[...] of the highest indices), or prune FFN neurons instead."
        )
    _check_peft_layers(model)
    edits = _layer_config_edits(config, kept, total)
    error = _config_error(config, edits)
    if error is not None:
        raise ValueError(f"dropping blocks {sorted(dropped)}: the edited config would not load: {error}")

    for i in sorted(dropped, reverse=True):
        del blocks[i]
    for new, block in enumerate(blocks):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new
    for key, value in edits.items():
        setattr(config, key, value)
    logger.info("dropped blocks %s of %d; kept %s", sorted(dropped), total, kept)
    return kept
