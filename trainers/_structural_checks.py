"""Checks of gradual structural pruning before training: the training arguments and the model.

>>> from types import SimpleNamespace
>>> config = StructuralPruningConfig(num_layers=2, end_step=4)
>>> check_training_args(config, SimpleNamespace(world_size=2))
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from torch import nn

from hf_lite.pruning.sites import base_layer, find_attention_sites, find_ffn_sites, head_layout, model_config
from hf_lite.pruning.structural import config_error, loadable_group_counts
from trainers._structural_shrink import model_sizes
from trainers.structural_config import StructuralPruningConfig

if TYPE_CHECKING:
    from transformers import TrainingArguments

__all__ = ["check_model_fits", "check_training_args"]


def check_training_args(config: StructuralPruningConfig, args: TrainingArguments) -> None:
    """Refuse training arguments that cannot work with gradual structural pruning under ``config``: DeepSpeed
    or FSDP (in the arguments, or set by ``accelerate launch``), ``load_best_model_at_end``, distillation terms
    that index removed blocks/heads. Several DDP processes are fine.

    >>> from types import SimpleNamespace
    >>> config = StructuralPruningConfig(num_layers=2, end_step=4)
    >>> check_training_args(config, SimpleNamespace(load_best_model_at_end=True))
    Traceback (most recent call last):
    ...
    ValueError: load_best_model_at_end=True with StructuralPruningCallback: ...
    """
    engine = _sharding_engine(args)
    if engine is not None:
        raise ValueError(
            f"StructuralPruningCallback cannot shrink a DeepSpeed- or FSDP-sharded model ({engine}): each "
            "process holds shards of the parameters, and the engine's flat buffers and optimizer partitions "
            "keep the original shapes, so slicing them in place cannot be done safely. Use DDP (several "
            "processes, each with a full copy: accelerate launch --multi_gpu) or one process, or shrink "
            "one-shot (hf_lite.pruning.prune_ffn_ & co.) before the sharded run."
        )
    if getattr(args, "load_best_model_at_end", False):
        raise ValueError(
            "load_best_model_at_end=True with StructuralPruningCallback: checkpoints of different stages have "
            "different shapes, so the best one may not load into the final model. Set "
            "load_best_model_at_end=False and pick a checkpoint saved after end_step yourself."
        )
    if getattr(args, "hidden_weight", 0) > 0 and config.num_layers is not None:
        raise ValueError(
            f"hidden_weight={args.hidden_weight} with num_layers={config.num_layers}: DistillationTrainer "
            "fixes its student/teacher layer pairs for hidden-state matching when it is created, and dropping "
            "student blocks would leave pairs pointing past the last block. Set hidden_weight=0, or drop the "
            "blocks one-shot (hf_lite.pruning.prune_layers_) before creating the trainer."
        )
    if getattr(args, "attention_weight", 0) > 0:
        if config.kv_groups_keep_ratio is not None:
            raise ValueError(
                f"attention_weight={args.attention_weight} with kv_groups_keep_ratio="
                f"{config.kv_groups_keep_ratio}: attention maps are matched head by head, and removing "
                "the student's heads breaks that. Set attention_weight=0 or kv_groups_keep_ratio=None."
            )
        if config.num_layers is not None and getattr(args, "layer_map", "uniform") not in (
            "uniform",
            "last",
        ):
            raise ValueError(
                f"attention_weight={args.attention_weight} with layer_map={args.layer_map!r} and "
                f"num_layers={config.num_layers}: explicit layer pairs would point past the blocks left "
                "after dropping. Use layer_map='uniform' or 'last', or attention_weight=0."
            )


def _sharding_engine(args: TrainingArguments) -> str | None:
    """The sharding engine asked for: ``args.deepspeed``/``args.fsdp``, or accelerate's launch environment."""
    if getattr(args, "deepspeed", None):
        return f"deepspeed={args.deepspeed!r}"
    if getattr(args, "fsdp", None):
        return f"fsdp={args.fsdp!r}"
    for name in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP"):
        if os.environ.get(name, "").lower() in ("1", "true", "yes"):
            return f"{name}={os.environ[name]} from accelerate launch"
    return None


def check_model_fits(config: StructuralPruningConfig, root: nn.Module) -> None:
    """Refuse a model that ``config``'s stages cannot shrink: targets beyond its sizes, group counts its config
    cannot load, Taylor scores on frozen weights.

    >>> from hf_lite.testing import build_tiny_model
    >>> check_model_fits(StructuralPruningConfig(num_layers=1, end_step=4), build_tiny_model("llama")[0])
    """
    sizes = model_sizes(root, config.kinds)
    plan = config.plan(sizes)  # also checks targets against the sizes
    if "kv_groups" in sizes:
        heads, kv_heads, _ = head_layout(root)
        per_group = heads // kv_heads
        model_config_ = model_config(root)
        for target in plan:
            g = target.kv_groups
            if g is None:
                continue
            error = config_error(
                model_config_, {"num_attention_heads": g * per_group, "num_key_value_heads": g}
            )
            if error is not None:
                valid = loadable_group_counts(model_config_, kv_heads, per_group)
                raise ValueError(
                    f"the stage at step {target.step} would keep {g} key/value groups, which "
                    f"{type(model_config_).__name__} refuses to load: {error}. Group counts that load: {valid}; "
                    "choose kv_groups_keep_ratio and num_stages so that every stage lands on one."
                )
    if config.importance == "taylor":
        weights = []
        if "ffn" in sizes:
            weights += [base_layer(m).weight for s in find_ffn_sites(root) for m in (*s.expand, s.project)]
        if "kv_groups" in sizes:
            weights += [
                base_layer(m).weight for s in find_attention_sites(root) for m in (s.q, s.k, s.v, s.o)
            ]
        if any(not w.requires_grad for w in weights):
            raise ValueError(
                "importance='taylor' scores structures by the training gradients of their weights, but some "
                "of the pruned layers' weights are frozen (a PEFT adapter freezes its base). Use "
                "importance='activation' or 'magnitude'."
            )
