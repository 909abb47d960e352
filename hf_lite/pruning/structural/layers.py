"""Whole blocks: drop transformer blocks, renumber the kept ones and edit the config's per-layer entries.

>>> from hf_lite.testing import build_tiny_model
>>> model, _ = build_tiny_model("gpt2")
>>> prune_layers_(model, drop=[1]), model.config.n_layer
([0], 1)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hf_lite._utils import unwrap_model
from hf_lite.pruning.calibration import check_calibration
from hf_lite.pruning.importance import block_influence, check_count
from hf_lite.pruning.sites import find_layer_list, model_config
from hf_lite.pruning.structural.checks import (
    check_expressible,
    check_reloads_as_is,
    checked_keep_count,
    config_error,
    edited_config,
    exactly_one,
    target_count,
)
from hf_lite.pruning.structural.plan import StructuralPlan, apply_plan_, parameters_by_id
from hf_lite.pruning.structural.reload import family_name, reload_mismatches

if TYPE_CHECKING:
    from transformers import PretrainedConfig

__all__ = [
    "LAYER_INDEX_CONFIG_KEYS",
    "PER_LAYER_CONFIG_KEYS",
    "layer_config_edits",
    "plan_layers",
    "prune_layers_",
]

logger = logging.getLogger(__name__)

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


def layer_config_edits(config: PretrainedConfig, kept: list[int], total: int) -> dict[str, Any]:
    """The config entries to set when only blocks ``kept`` of ``total`` remain: ``num_hidden_layers``, the
    per-layer lists sliced, the block-index lists renumbered; ``ValueError`` for an unknown per-layer entry.

    >>> from hf_lite.testing import build_tiny_model
    >>> layer_config_edits(build_tiny_model("llama", num_hidden_layers=3)[0].config, [0, 2], 3)
    {'num_hidden_layers': 2}
    """
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


def plan_layers(
    model: nn.Module,
    drop: Sequence[int] | None = None,
    *,
    keep_ratio: float | None = None,
    num_hidden_layers: int | None = None,
    calibration_batches: Iterable[Mapping[str, torch.Tensor]] | None = None,
) -> StructuralPlan:
    """The :class:`~hf_lite.pruning.structural.plan.StructuralPlan` of :func:`prune_layers_` (same arguments and
    checks), without changing the model: apply it with ``apply_plan_``.

    >>> from hf_lite.testing import build_tiny_model
    >>> model, _ = build_tiny_model("llama", num_hidden_layers=3)
    >>> plan = plan_layers(model, drop=[0])
    >>> plan.kept, plan.config, len(model.model.layers)
    ([1, 2], {'num_hidden_layers': 2}, 3)
    """
    which = exactly_one(drop=drop, keep_ratio=keep_ratio, num_hidden_layers=num_hidden_layers)
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
            n_keep = checked_keep_count(keep_ratio, total, "blocks")
        else:
            n_keep = target_count(
                num_hidden_layers,
                "num_hidden_layers",
                total,
                "the current depth",
                "at least 1 block must remain and dropping blocks cannot add any.",
            )
        check_calibration(
            calibration_batches, "choosing blocks by block influence (pass drop=[...] to choose them)"
        )
        dropped = set()
        if n_keep < total:
            influence = block_influence(model, calibration_batches)
            order = torch.sort(influence, stable=True).indices.tolist()  # lowest influence first
            dropped = set(order[: total - n_keep])
            if not _reloads(model, dropped):
                check_reloads_as_is(model, f"keeping {n_keep} of {total} blocks")
                dropped = set(_reloadable_drops(model, order, total - n_keep))
                if len(dropped) < total - n_keep:
                    raise ValueError(
                        f"keeping {n_keep} of {total} blocks: {family_name(model_config(model))} builds blocks "
                        f"differently by position, and only dropping blocks {sorted(dropped) or 'none'} reloads "
                        "as the same model. Keep more blocks, or prune FFN neurons instead."
                    )
                logger.info("skipped blocks whose removal the config cannot express (see prune_layers_)")
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
    edits = layer_config_edits(config, kept, total)
    error = config_error(config, edits)
    if error is not None:
        raise ValueError(f"dropping blocks {sorted(dropped)}: the edited config would not load: {error}")

    why = f"dropping blocks {sorted(dropped)} of {total}"
    if not _reloads(model, dropped):
        check_reloads_as_is(model, why)
        possible = _reloadable_drops(model, sorted(dropped), len(dropped))
        keep = sorted(dropped - set(possible))
        instead = f" (drop={possible} reloads as the same model)" if possible else ""
        alone = [i for i in range(total) if _reloads(model, [i])]
        check_expressible(
            model,
            _drop_plan(model, dropped),
            why,
            f"{family_name(config)} builds blocks differently by position: keep blocks {keep}{instead}, "
            f"or drop other blocks (each of {alone} can be dropped alone), or prune FFN neurons (prune_ffn_) "
            "instead.",
        )
    dropped_params = {id(p): p for i in dropped for p in blocks[i].parameters()}
    plan = _drop_plan(model, dropped)
    plan.dropped, plan.params, plan.kept = dropped_params, parameters_by_id(model), kept
    plan.message = f"dropped blocks {sorted(dropped)} of {total}; kept {kept}"
    return plan


def _drop_plan(model: nn.Module, dropped: Iterable[int]) -> StructuralPlan:
    """The plan of dropping blocks ``dropped``: config entries, the blocks, the kept blocks' ``layer_idx``
    renumbered (without the parameter bookkeeping ``plan_layers`` adds)."""
    blocks = find_layer_list(model)
    total = len(blocks)
    kept = [i for i in range(total) if i not in set(dropped)]
    plan = StructuralPlan(config=layer_config_edits(model_config(model), kept, total), drop=sorted(dropped))
    for new, old in enumerate(kept):
        for module in blocks[old].modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                plan.attributes.append((module, "layer_idx", new))
    return plan


def _reloads(model: nn.Module, dropped: Iterable[int]) -> bool:
    """Whether the model without blocks ``dropped`` reloads as the same model (True if it cannot be built)."""
    plan = _drop_plan(model, dropped)
    if not plan.drop or config_error(model_config(model), plan.config) is not None:
        return True  # nothing dropped, or a config that does not load: refused with its own message
    wrong = reload_mismatches(model, plan, edited_config(model_config(model), plan.config))
    if wrong is None:
        logger.warning(
            "could not build %s from the edited config, so nothing checks that the model without blocks %s "
            "reloads as the same model: compare the reloaded outputs before publishing it",
            type(unwrap_model(model, peft_base=True)).__name__,
            plan.drop,
        )
    return not wrong


def _reloadable_drops(model: nn.Module, candidates: Sequence[int], count: int) -> list[int]:
    """Up to ``count`` of ``candidates``, taken in order, whose removal together still reloads as the same
    model: a block whose removal would change how another block is built is skipped."""
    chosen: list[int] = []
    skipped: list[int] = []
    for i in candidates:
        if len(chosen) == count:
            break
        if _reloads(model, [*chosen, i]):
            chosen.append(i)
            continue
        # a pair may shift later blocks back into place (MoE every other block): try i with one skipped block
        partner = next(
            (j for j in skipped if len(chosen) + 2 <= count and _reloads(model, [*chosen, j, i])), None
        )
        if partner is None:
            skipped.append(i)
        else:
            skipped.remove(partner)
            chosen += [partner, i]
    return sorted(chosen)


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
    a block before another would change the later block's computation, so that is refused. Families that
    build blocks differently by position (ModernBERT's block 0 without ``attn_norm``, Qwen2-MoE's alternating
    expert blocks) refuse a drop that would move a block to a position built differently, naming the blocks
    that can be dropped; blocks chosen by block influence skip such blocks (trying pairs, which keep an
    alternating pattern). Nothing changes before these checks pass.

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
    plan = plan_layers(
        model,
        drop,
        keep_ratio=keep_ratio,
        num_hidden_layers=num_hidden_layers,
        calibration_batches=calibration_batches,
    )
    apply_plan_(model, plan)
    return plan.kept
