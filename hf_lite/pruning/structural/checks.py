"""Argument checks of structural pruning, and the check that an edited config describes the pruned model.

>>> import torch
>>> top_indices(torch.tensor([0.5, 2.0, 1.0, 2.0]), 2)
tensor([1, 3])
>>> keep_count(0.3, 128, multiple_of=8)
40
"""

from __future__ import annotations

import copy
import logging
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hf_lite._utils import unwrap_model
from hf_lite.pruning.importance import check_count
from hf_lite.pruning.sites import base_layer, build_block, find_layer_list, model_config
from hf_lite.pruning.structural.plan import StructuralPlan
from hf_lite.pruning.structural.reload import family_name, reload_mismatches

if TYPE_CHECKING:
    from transformers import PretrainedConfig

__all__ = [
    "IndexSpec",
    "build_block",
    "check_expressible",
    "check_reloads_as_is",
    "check_sliceable",
    "checked_keep_count",
    "config_error",
    "edited_config",
    "exactly_one",
    "explicit_indices",
    "index_list",
    "keep_count",
    "round_up",
    "top_indices",
]

logger = logging.getLogger(__name__)

IndexSpec = Sequence[int] | torch.Tensor | Mapping[int, Sequence[int] | torch.Tensor]


def keep_count(ratio: float, total: int, multiple_of: int = 1) -> int:
    """``round(ratio * total)`` (halves up), rounded up to a multiple of ``multiple_of``, at most ``total``.

    >>> keep_count(0.5, 5), keep_count(0.25, 10, multiple_of=4)
    (3, 4)
    """
    return round_up(math.floor(ratio * total + 0.5), multiple_of, total)


def round_up(count: int, multiple_of: int, limit: int) -> int:
    """``count`` rounded up to a multiple of ``multiple_of``, at most ``limit``.

    >>> round_up(38, 8, 128), round_up(126, 8, 128)
    (40, 128)
    """
    return min(limit, -(-count // multiple_of) * multiple_of)


def checked_keep_count(keep_ratio: object, total: int, what: str) -> int:
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
    kept = keep_count(ratio, total)
    if kept < 1:
        raise ValueError(
            f"keep_ratio={keep_ratio!r} keeps round({ratio} * {total}) = 0 {what}; at least 1 must remain. "
            f"Use keep_ratio >= {0.5 / total:.3g}."
        )
    return kept


def target_count(value: object, name: str, current: int, what: str, hint: str) -> int:
    """A new uniform size ``value`` (argument ``name``) within ``1..current``; ``what`` names the current size in
    the message and ``hint`` ends it. A list or dict (one size per layer) is refused: the config has one.

    >>> target_count(32, "intermediate_size", 128, "the current width", "Pass a smaller width.")
    32
    """
    if isinstance(value, (Mapping, list, tuple)):
        raise ValueError(
            f"{name}={value!r} is non-uniform (one per layer), but the config stores one {name} for all "
            "blocks. Pass one int."
        )
    count = check_count(value, name)
    if not 1 <= count <= current:
        raise ValueError(f"{name}={value!r} is outside 1..{current} ({what}): {hint}")
    return count


def exactly_one(**options: object) -> str:
    given = [name for name, value in options.items() if value is not None]
    if len(given) != 1:
        names = ", ".join(options)
        raise ValueError(
            f"pass exactly one of {names}; got {', '.join(given) or 'none'}"
            f"{' (' + ', '.join(f'{n}={options[n]!r}' for n in given) + ')' if given else ''}."
        )
    return given[0]


def index_list(values: object, size: int, name: str) -> torch.Tensor:
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


def explicit_indices(
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
        out = {i: index_list(spec[i], size, f"{name}[{i}]") for i in blocks}
    else:
        kept = index_list(spec, size, name)
        out = dict.fromkeys(range(layers), kept)
    lengths = sorted({len(v) for v in out.values()})
    if len(lengths) > 1:
        raise ValueError(
            f"{name} keeps {lengths} {what} in different blocks (non-uniform), but the config stores one number "
            f"of {what} for all blocks. Keep the same number in every block."
        )
    return out


def top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` highest scores' indices, ascending; among equal scores the lower index wins (deterministic)."""
    order = torch.sort(scores.detach().float().cpu(), descending=True, stable=True).indices
    return order[:k].sort().values


def check_sliceable(modules: Iterable[nn.Module]) -> None:
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


def edited_config(config: PretrainedConfig, edits: Mapping[str, Any]) -> PretrainedConfig:
    """``config`` with ``edits``, round-tripped through ``from_dict`` as ``from_pretrained`` would load it."""
    candidate = copy.deepcopy(config)
    for key, value in edits.items():
        setattr(candidate, key, value)
    return type(candidate).from_dict(candidate.to_dict())


def config_error(config: PretrainedConfig, edits: Mapping[str, Any]) -> str | None:
    try:
        edited_config(config, edits)
    except Exception as err:  # strict-dataclass validation raises its own error types
        message = " ".join(str(err).split()).rstrip(".")  # one line: validation errors span several
        return f"{type(err).__name__}: {message}"
    return None


def check_expressible(model: nn.Module, plan: StructuralPlan, why: str, hint: str | None = None) -> None:
    """Refuse, before any weight changes, a pruning whose checkpoint would not reload into the same model: the
    edited config must load (``from_dict`` validation), and the model stock ``from_pretrained`` builds from it
    must have exactly the tensor names and shapes the pruned model saves, and the same module types in its
    blocks (see :func:`~hf_lite.pruning.structural.reload.reload_mismatches`). If the stock class cannot be
    built, a block built from the edited config is compared instead, with a warning.

    Args:
        model: the model to prune.
        plan: the :class:`StructuralPlan` (its indices may be placeholders: only the sizes are compared).
        why: what is being pruned, for the message.
        hint: what the user can do instead, ending the message (default: prune FFN neurons or whole layers).

    >>> import torch
    >>> from hf_lite.testing import build_tiny_model
    >>> model, _ = build_tiny_model("llama")
    >>> plan = StructuralPlan(config={"intermediate_size": 7})
    >>> check_expressible(model, plan, "demo")
    Traceback (most recent call last):
    ...
    ValueError: demo: LlamaConfig with {'intermediate_size': 7} does not describe the pruned shapes ...
    """
    edits = plan.config
    config = model_config(model)
    error = config_error(config, edits)
    if error is not None:
        raise ValueError(
            f"{why}: the edited config ({', '.join(f'{k}={v!r}' for k, v in edits.items())}) would not load "
            f"with from_pretrained: {error}"
        )
    hint = hint or (
        "This architecture cannot express this pruning in its config; prune FFN neurons (prune_ffn_) or whole "
        "layers (prune_layers_) instead."
    )
    edited = edited_config(config, edits)
    wrong = reload_mismatches(model, plan, edited)
    if wrong is None:
        wrong = _block_mismatches(model, plan, edited)
    if wrong:
        check_reloads_as_is(model, why)
        details = "; ".join(wrong[:4]) + (f"; and {len(wrong) - 4} more" if len(wrong) > 4 else "")
        raise ValueError(
            f"{why}: {type(config).__name__} with {dict(edits)} does not describe the pruned shapes ({details}), "
            f"so stock from_pretrained would reload the saved checkpoint as a different {family_name(config)} "
            f"model (tensors it has no place for are discarded, places no tensor fills newly initialized). {hint}"
        )


def check_reloads_as_is(model: nn.Module, why: str) -> None:
    """Refuse a pruning of a model that, even unedited, would not reload into the same model (tensors renamed
    by ``torch.nn.utils.prune`` or parametrizations, modules replaced or settings changed after loading): its
    differences are not the pruning's, and the pruning's check cannot tell them apart.

    >>> from hf_lite.testing import build_tiny_model
    >>> check_reloads_as_is(build_tiny_model("gpt2")[0], "demo")
    """
    wrong = reload_mismatches(model, StructuralPlan(), model_config(model))
    if wrong:
        details = "; ".join(wrong[:4]) + (f"; and {len(wrong) - 4} more" if len(wrong) > 4 else "")
        raise ValueError(
            f"{why}: the model as it is already differs from what stock from_pretrained builds from its own "
            f"config ({details}), so its checkpoint would not reload into the same model even before pruning. "
            "Make re-parametrizations permanent (torch.nn.utils.prune.remove, "
            "torch.nn.utils.parametrize.remove_parametrizations) and undo modules or settings changed after "
            "loading, then prune."
        )


def _block_mismatches(model: nn.Module, plan: StructuralPlan, config: PretrainedConfig) -> list[str]:
    """Shapes of one block built from ``config`` against the pruned first kept block (the fallback check)."""
    blocks = find_layer_list(model)
    block = blocks[next(i for i in range(len(blocks)) if i not in set(plan.drop))]
    new_shape = plan.new_shapes()
    expected: dict[str, tuple[int, ...]] = {}
    for name, param in block.named_parameters():
        if "lora_" in name:
            continue
        expected[name.replace(".base_layer.", ".")] = new_shape.get(id(param), tuple(param.shape))
    rebuilt = build_block(block, config)
    if rebuilt is None:
        logger.warning(
            "could not build a %s from the edited config to compare shapes; check that the saved model loads "
            "(from_pretrained) before publishing it",
            type(block).__name__,
        )
        return []
    logger.warning(
        "could not build %s from the edited config; compared one %s only: check that the saved model reloads "
        "with the same outputs before publishing it",
        type(unwrap_model(model, peft_base=True)).__name__,
        type(block).__name__,
    )
    got = {name: tuple(p.shape) for name, p in rebuilt.named_parameters()}
    return [
        f"{n}: pruned {expected.get(n)} vs config {got.get(n)}"
        for n in sorted(n for n in {*expected, *got} if expected.get(n) != got.get(n))
    ]
