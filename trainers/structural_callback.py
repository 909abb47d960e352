"""Gradual structural pruning during training, as a ``transformers.TrainerCallback``.

:class:`StructuralPruningCallback` shrinks a model while a ``Trainer`` (plain or
:class:`~trainers.DistillationTrainer`) trains it: at scheduled optimizer steps it physically removes FFN
neurons, grouped-query attention groups and whole blocks with :mod:`hf_lite.pruning.structural`, edits the
config, and keeps training the smaller model with the **same** optimizer: the Trainer's optimizer is edited in place (the kept slices of each parameter
and of its Adam moments), so the learning-rate schedule, the step count and the moments carry on as if
the removed neurons had never been there. At the end the model is an ordinary smaller checkpoint that stock
``from_pretrained`` loads.

>>> from transformers import Trainer
>>> from trainers.structural_callback import StructuralPruningCallback
>>> callback = StructuralPruningCallback(ffn_keep_ratio=0.5, kv_groups_keep_ratio=0.5, end_step=600,
...                                      num_stages=3)
>>> callback.config.stage_steps()
[200, 400, 600]
>>> trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])  # doctest: +SKIP
>>> trainer.train()  # doctest: +SKIP
>>> trainer.model.save_pretrained("out/final")  # doctest: +SKIP

Resuming: a checkpoint holds the shrunk weights and config, so the model must have the checkpoint's shapes
before the Trainer loads it. Either load the checkpoint folder itself, or shrink the original model the same
way with :func:`shrink_like_checkpoint` (it replays the kept indices stored in the checkpoint's
:data:`STRUCTURAL_STATE_JSON`), then resume as usual:

>>> model = AutoModelForCausalLM.from_pretrained("org/base")  # doctest: +SKIP
>>> shrink_like_checkpoint(model, "out/checkpoint-300")  # doctest: +SKIP
>>> callbacks = [StructuralPruningCallback(callback.config)]  # the config of the interrupted run
>>> trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks)  # doctest: +SKIP
>>> trainer.train(resume_from_checkpoint="out/checkpoint-300")  # doctest: +SKIP

With ``TrainingArguments(resume_from_checkpoint=<folder>)`` the callback does the shrinking itself when the
Trainer is created. The callback then reads the stages done and running Taylor sums back from that folder.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import torch
from torch import nn
from transformers import TrainerCallback
from transformers.pytorch_utils import Conv1D

from hf_lite.pruning.importance import (
    _ffn_reduce,
    _heads_reduce,
    attention_head_scores,
    base_layer,
    block_influence,
    check_calibration,
    ffn_neuron_scores,
    find_attention_sites,
    find_ffn_sites,
    find_layer_list,
    head_layout,
    model_config,
)
from hf_lite.pruning.structural import _config_error, prune_attention_heads_, prune_ffn_, prune_layers_
from hf_lite._utils import atomic_write as _atomic_write
from hf_lite._utils import world as _world
from hf_lite.pruning.optimizer_state import base_optimizer as _base_optimizer

if TYPE_CHECKING:
    from transformers import TrainerControl, TrainerState, TrainingArguments

__all__ = [
    "StructuralPruningConfig",
    "StructuralPruningCallback",
    "shrink_like_checkpoint",
    "model_sizes",
    "StageTarget",
    "STRUCTURAL_STATE_JSON",
    "STRUCTURAL_STATE_TENSORS",
]

logger = logging.getLogger(__name__)

#: Written into every checkpoint folder: the original sizes, and per stage the kept indices (plain JSON).
STRUCTURAL_STATE_JSON = "structural_pruning_state.json"
#: Its companion, only while Taylor scores are being gathered: the running per-structure sums (safetensors).
STRUCTURAL_STATE_TENSORS = "structural_pruning_state.safetensors"
_FORMAT_VERSION = 1
#: Attribute set by shrink_like_checkpoint on the model: the checkpoint folder it shrank to.
_RESUME_ATTR = "_hf_lite_structural_checkpoint"
#: Sizes a stage can change, in the order a stage applies them (FFN neurons, then groups, then blocks).
_KINDS = ("ffn", "kv_groups", "layers")


# ----------------------------------------------------------------------------------------------------------
# config


def _check_ratio(value: object, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < float(value) <= 1.0:
        raise ValueError(
            f"{name}={value!r} must be a fraction in (0, 1]: the share of the original structures kept at "
            "end_step (0.5 keeps half). Pass e.g. 0.5, not a percentage."
        )
    return float(value)


def _check_int(value: object, name: str, minimum: int, why: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise ValueError(f"{name}={value!r} must be an int >= {minimum}: {why}.")
    return int(value)


def _keep_count(ratio: float, total: int, multiple_of: int = 1) -> int:
    """``round(ratio * total)`` (halves up), rounded up to a multiple of ``multiple_of``, at most ``total``."""
    kept = math.floor(ratio * total + 0.5)
    return min(total, -(-kept // multiple_of) * multiple_of)


class StageTarget(NamedTuple):
    """What one stage shrinks to: ``None`` for a size the stage leaves as it is.

    >>> StageTarget(step=10, ffn=64, kv_groups=None, layers=None).ffn
    64
    """

    step: int
    ffn: int | None
    kv_groups: int | None
    layers: int | None


@dataclass
class StructuralPruningConfig:
    """What to remove, when, and how to rank it (see :class:`StructuralPruningCallback`).

    Steps are optimizer steps (``TrainerState.global_step``). Stage ``k = 1..num_stages`` happens right after
    optimizer step ``start_step + round(k * (end_step - start_step) / num_stages)``; the last one at
    ``end_step`` reaches the targets. Between stages the fraction of the way to the targets follows
    ``schedule``: ``"linear"`` (``k / K``) or ``"cubic"`` (``1 - (1 - k / K) ** 3``, Zhu & Gupta 2017: large
    cuts first, while much is redundant, small cuts near the end).

    Args:
        ffn_keep_ratio: fraction of the original FFN neurons kept at the end (every block the same width).
        kv_groups_keep_ratio: fraction of the original key/value head groups kept at the end (a group is one
            key/value head with the query heads that read it); decoders whose config has ``head_dim`` only
            (Llama, Mistral, Qwen2, ...).
        num_layers: number of transformer blocks kept at the end, chosen by block influence (ShortGPT) on
            calibration batches.
        start_step: shrinking starts after this optimizer step (no stage at ``start_step`` itself).
        end_step: optimizer step of the last stage, at which the targets are reached (required).
        num_stages: number of shrinking steps between ``start_step`` and ``end_step``.
        schedule: ``"cubic"`` or ``"linear"`` progress to the targets over the stages.
        importance: how FFN neurons and groups are ranked: ``"magnitude"`` (weight norms, no data),
            ``"activation"`` (mean ``|activation|`` on calibration batches) or ``"taylor"``
            (``|sum w * dL/dw|`` over the training gradients of the ``taylor_steps`` optimizer steps before each
            stage, the training loss itself: the distillation loss under DistillationTrainer).
        taylor_steps: optimizer steps before each stage whose gradients the Taylor scores sum.
        num_calibration_batches: batches drawn from the training set (the train dataloader's dataset and
            collator, ``per_device_train_batch_size`` rows each, a seeded random subset) when no
            ``calibration_batches`` are given: for ``"activation"`` and for block influence.
        ffn_multiple_of: round every FFN width up to a multiple of this (8 or 64 suit GPU kernels).

    >>> config = StructuralPruningConfig(ffn_keep_ratio=0.5, end_step=90, num_stages=3, schedule="linear")
    >>> config.stage_steps(), [t.ffn for t in config.plan({"ffn": 128})]
    ([30, 60, 90], [107, 85, 64])
    """

    ffn_keep_ratio: float | None = field(
        default=None, metadata={"help": "Fraction of the FFN neurons kept at end_step, in (0, 1]."}
    )
    kv_groups_keep_ratio: float | None = field(
        default=None,
        metadata={"help": "Fraction of the key/value head groups kept at end_step (Llama-style models)."},
    )
    num_layers: int | None = field(
        default=None, metadata={"help": "Number of transformer blocks kept at end_step (block influence)."}
    )
    start_step: int = field(default=0, metadata={"help": "Shrinking starts after this optimizer step."})
    end_step: int | None = field(
        default=None, metadata={"help": "Optimizer step of the last stage, where the targets are reached."}
    )
    num_stages: int = field(default=4, metadata={"help": "Number of shrinking steps up to end_step."})
    schedule: Literal["cubic", "linear"] = field(
        default="cubic", metadata={"help": "Progress to the targets over the stages: 'cubic' or 'linear'."}
    )
    importance: Literal["magnitude", "activation", "taylor"] = field(
        default="magnitude",
        metadata={
            "help": "Ranking of neurons/groups: 'magnitude', 'activation' or 'taylor' (train gradients)."
        },
    )
    taylor_steps: int = field(
        default=8, metadata={"help": "Optimizer steps before each stage whose gradients Taylor scores sum."}
    )
    num_calibration_batches: int = field(
        default=4,
        metadata={
            "help": "Training batches used for 'activation' and block influence (no calibration_batches)."
        },
    )
    ffn_multiple_of: int = field(
        default=1, metadata={"help": "Round every FFN width up to a multiple of this (8 or 64 on GPUs)."}
    )

    def __post_init__(self) -> None:
        self.ffn_keep_ratio = _check_ratio(self.ffn_keep_ratio, "ffn_keep_ratio")
        self.kv_groups_keep_ratio = _check_ratio(self.kv_groups_keep_ratio, "kv_groups_keep_ratio")
        if self.num_layers is not None:
            self.num_layers = _check_int(self.num_layers, "num_layers", 1, "at least one block must remain")
        if self.ffn_keep_ratio is None and self.kv_groups_keep_ratio is None and self.num_layers is None:
            raise ValueError(
                "StructuralPruningConfig has no target: set at least one of ffn_keep_ratio (e.g. 0.5), "
                "kv_groups_keep_ratio (e.g. 0.5) or num_layers (blocks kept)."
            )
        if self.schedule not in ("cubic", "linear"):
            raise ValueError(f"schedule={self.schedule!r} is not a schedule; use 'cubic' or 'linear'.")
        if self.importance not in ("magnitude", "activation", "taylor"):
            raise ValueError(
                f"importance={self.importance!r} is not known. Use 'magnitude' (weight norms), 'activation' "
                "(mean |activation| on calibration batches) or 'taylor' (|w * grad| from training gradients)."
            )
        self.start_step = _check_int(self.start_step, "start_step", 0, "the first optimizer step is 1")
        if self.end_step is None:
            raise ValueError(
                "end_step=None: give the optimizer step of the last stage, e.g. 2/3 of max_steps, so that the "
                "last third of training recovers from the shrinking."
            )
        self.end_step = _check_int(self.end_step, "end_step", 1, "it is the optimizer step of the last stage")
        self.num_stages = _check_int(self.num_stages, "num_stages", 1, "one stage shrinks in one go")
        if self.end_step - self.start_step < self.num_stages:
            raise ValueError(
                f"end_step={self.end_step} - start_step={self.start_step} leaves {self.end_step - self.start_step} "
                f"optimizer steps for num_stages={self.num_stages}: each stage needs its own step. Raise end_step "
                "or lower num_stages."
            )
        self.taylor_steps = _check_int(self.taylor_steps, "taylor_steps", 1, "Taylor scores need a gradient")
        self.num_calibration_batches = _check_int(
            self.num_calibration_batches, "num_calibration_batches", 1, "scores need data"
        )
        self.ffn_multiple_of = _check_int(self.ffn_multiple_of, "ffn_multiple_of", 1, "1 means no rounding")
        if self.importance != "taylor" and self.taylor_steps != 8:
            logger.warning("taylor_steps=%d is ignored: importance=%r.", self.taylor_steps, self.importance)
        if self.ffn_keep_ratio is None and self.ffn_multiple_of != 1:
            logger.warning("ffn_multiple_of=%d is ignored: ffn_keep_ratio is not set.", self.ffn_multiple_of)

    @property
    def needs_calibration(self) -> bool:
        """Whether stages need calibration batches (``"activation"`` scores or block influence)."""
        ranks_with_data = self.importance == "activation" and (
            self.ffn_keep_ratio is not None or self.kv_groups_keep_ratio is not None
        )
        return ranks_with_data or self.num_layers is not None

    def stage_steps(self) -> list[int]:
        """The optimizer steps after which the stages run, ascending, the last one ``end_step``.

        >>> StructuralPruningConfig(num_layers=2, start_step=10, end_step=20, num_stages=3).stage_steps()
        [13, 17, 20]
        """
        span, stages = self.end_step - self.start_step, self.num_stages
        # start + round(k * span / stages) with halves up, in integers (Python's round would halve to even
        # and could give two stages the same step).
        return [self.start_step + (2 * k * span + stages) // (2 * stages) for k in range(1, stages + 1)]

    def progress(self, stage: int) -> float:
        """Fraction of the way to the targets after stage ``stage`` (1-based), by :attr:`schedule`.

        >>> StructuralPruningConfig(num_layers=2, end_step=4, num_stages=4).progress(2)
        0.875
        """
        x = stage / self.num_stages
        return x if self.schedule == "linear" else 1.0 - (1.0 - x) ** 3

    def final_sizes(self, original: Mapping[str, int]) -> dict[str, int]:
        """The sizes at ``end_step`` for the ``original`` ones (``{"ffn"|"kv_groups"|"layers": count}``).

        >>> StructuralPruningConfig(ffn_keep_ratio=0.3, ffn_multiple_of=8, end_step=4).final_sizes({"ffn": 128})
        {'ffn': 40}
        """
        out = {}
        if self.ffn_keep_ratio is not None:
            out["ffn"] = _keep_count(self.ffn_keep_ratio, original["ffn"], self.ffn_multiple_of)
        if self.kv_groups_keep_ratio is not None:
            out["kv_groups"] = _keep_count(self.kv_groups_keep_ratio, original["kv_groups"])
        if self.num_layers is not None:
            out["layers"] = self.num_layers
        for kind, value in out.items():
            name = {"ffn": "ffn_keep_ratio", "kv_groups": "kv_groups_keep_ratio", "layers": "num_layers"}[
                kind
            ]
            if value < 1:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} keeps 0 of {original[kind]} {kind}; at least 1 must remain."
                )
            if value > original[kind]:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} asks for {value} {kind} but the model has {original[kind]}: "
                    "pruning removes structures, it cannot add any."
                )
        return out

    def plan(self, original: Mapping[str, int]) -> list[StageTarget]:
        """The stages for a model of ``original`` sizes; a stage that would change nothing is left out.

        Args:
            original: ``{"ffn": width, "kv_groups": groups, "layers": blocks}`` (the targeted ones).

        Returns:
            One :class:`StageTarget` per stage that shrinks something, in step order.

        >>> config = StructuralPruningConfig(kv_groups_keep_ratio=0.25, num_layers=4, end_step=30, num_stages=3)
        >>> [(t.step, t.kv_groups, t.layers) for t in config.plan({"kv_groups": 8, "layers": 8})]
        [(10, 4, 5), (20, 2, 4)]

        (cubic: after rounding, stage 2 already reaches the targets and stage 3 has nothing left to remove.)
        """
        final = self.final_sizes(original)
        plan, current = [], {kind: original[kind] for kind in final}
        for k, step in enumerate(self.stage_steps(), start=1):
            frac = 1.0 if k == self.num_stages else self.progress(k)
            change: dict[str, int | None] = dict.fromkeys(_KINDS)
            for kind, target in final.items():
                size = original[kind] - math.floor((original[kind] - target) * frac + 0.5)
                if kind == "ffn":
                    size = min(original[kind], -(-size // self.ffn_multiple_of) * self.ffn_multiple_of)
                size = max(target, min(size, current[kind]))
                if size < current[kind]:
                    change[kind] = current[kind] = size
            if any(v is not None for v in change.values()):
                plan.append(StageTarget(step, change["ffn"], change["kv_groups"], change["layers"]))
        return plan

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-serializable dict (``StructuralPruningConfig(**d)`` rebuilds it).

        >>> StructuralPruningConfig(num_layers=3, end_step=10).to_dict()["num_layers"]
        3
        """
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------------------
# model helpers


def _root(model: nn.Module) -> nn.Module:
    """The model the structural functions edit: DDP/compile wrappers removed, a PEFT model kept whole."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model, keep_torch_compile=False)


def model_sizes(model: nn.Module, kinds: Iterable[str] = _KINDS) -> dict[str, int]:
    """Current FFN width, key/value group count and block count of ``model`` (the ``kinds`` asked for).

    >>> from hf_lite.testing import build_tiny_model
    >>> model_sizes(build_tiny_model("llama")[0])
    {'ffn': 128, 'kv_groups': 2, 'layers': 2}
    """
    out = {}
    for kind in kinds:
        if kind == "ffn":
            out[kind] = int(find_ffn_sites(model)[0].width)
        elif kind == "kv_groups":
            out[kind] = int(head_layout(model)[1])
        elif kind == "layers":
            out[kind] = len(find_layer_list(model))
        else:
            raise ValueError(f"unknown size {kind!r}; known: {', '.join(_KINDS)}.")
    return out


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` highest scores' indices, ascending; among equal scores the lower index wins."""
    order = torch.sort(scores.detach().float().cpu(), descending=True, stable=True).indices
    return order[:k].sort().values


# An edit of one parameter: the module and attribute that will hold its replacement, and the kept slice.
class _Edit(NamedTuple):
    owner: nn.Module
    attr: str
    dim: int
    index: torch.Tensor


def _output_edits(module: nn.Module, index: torch.Tensor) -> list[tuple[nn.Parameter, _Edit]]:
    """What ``structural._slice_outputs_`` does to the parameters of a Linear/Conv1D (and its LoRA ``B``)."""
    base = base_layer(module)
    edits = [(base.weight, _Edit(base, "weight", 1 if isinstance(base, Conv1D) else 0, index))]
    if base.bias is not None:
        edits.append((base.bias, _Edit(base, "bias", 0, index)))
    if base is not module:
        for lora_b in module.lora_B.values():  # (out, r)
            edits.append((lora_b.weight, _Edit(lora_b, "weight", 0, index)))
            if lora_b.bias is not None:
                edits.append((lora_b.bias, _Edit(lora_b, "bias", 0, index)))
    return edits


def _input_edits(module: nn.Module, index: torch.Tensor) -> list[tuple[nn.Parameter, _Edit]]:
    """What ``structural._slice_inputs_`` does to the parameters of a Linear/Conv1D (and its LoRA ``A``)."""
    base = base_layer(module)
    edits = [(base.weight, _Edit(base, "weight", 0 if isinstance(base, Conv1D) else 1, index))]
    if base is not module:
        for lora_a in module.lora_A.values():  # (r, in)
            edits.append((lora_a.weight, _Edit(lora_a, "weight", 1, index)))
    return edits


def _slice_state(key: str, value: Any, old: torch.Tensor, edit: _Edit) -> Any:
    if not isinstance(value, torch.Tensor) or value.dim() == 0 or (value.numel() == 1 and old.numel() > 1):
        return value  # a step count, a scalar
    if value.shape != old.shape:
        raise ValueError(
            f"optimizer state {key!r} has shape {tuple(value.shape)} for a parameter of shape {tuple(old.shape)}; "
            "it cannot be sliced with the parameter (quantized 8-bit or factored optimizer states). Use a torch "
            "optimizer such as optim='adamw_torch' with StructuralPruningCallback."
        )
    return value.index_select(edit.dim, edit.index.to(value.device)).contiguous()


@torch.no_grad()
def _edit_optimizer(
    optimizer: Any,
    root: nn.Module,
    edits: Mapping[int, tuple[nn.Parameter, _Edit]],
    dropped: Mapping[int, nn.Parameter],
    before: Mapping[int, nn.Parameter],
) -> int:
    """Point the optimizer at the shrunk parameters, in place: the same param groups (so the LR scheduler,
    the accelerate wrapper and per-group settings stay valid), each edited parameter replaced by its
    successor at the same position with its state sliced along the same dimension and indices, parameters of
    dropped blocks removed with their state. Returns the number of parameters edited in the optimizer."""
    if optimizer is None:
        return 0
    base = _base_optimizer(optimizer)
    state = base.state
    alive = {id(p) for p in root.parameters()}
    names = {id(p): n for n, p in root.named_parameters()}
    count = 0
    for group in base.param_groups:
        params, group_names = [], []
        old_names = group.get("param_names")
        for i, param in enumerate(group["params"]):
            key = id(param)
            if key in edits:
                old, edit = edits[key]
                new = getattr(edit.owner, edit.attr)
                expected = list(old.shape)
                expected[edit.dim] = len(edit.index)
                if new is old or list(new.shape) != expected or id(new) not in alive:
                    raise RuntimeError(
                        f"structural pruning left parameter {names.get(id(new), '?')} with shape "
                        f"{tuple(new.shape)}, expected {tuple(expected)}: hf_lite.pruning.structural and the "
                        "optimizer edit in trainers.structural_callback disagree (please report this)."
                    )
                old_state = state.pop(old, None)
                if old_state:
                    state[new] = {k: _slice_state(k, v, old, edit) for k, v in old_state.items()}
                params.append(new)
                count += 1
            elif key in dropped:
                state.pop(param, None)
                continue
            else:
                if key in before and key not in alive:
                    raise RuntimeError(
                        "structural pruning removed a parameter that was neither sliced nor in a dropped block "
                        "(please report this)."
                    )
                params.append(param)
            if old_names is not None:
                group_names.append(names.get(id(params[-1]), old_names[i]))
        group["params"] = params
        if old_names is not None:
            group["param_names"] = group_names
    return count


# ----------------------------------------------------------------------------------------------------------
# the stages, shared by training and by shrink_like_checkpoint


def _shrink_ffn(
    root: nn.Module, keep: Mapping[int, torch.Tensor], optimizer: Any = None
) -> dict[int, torch.Tensor]:
    before = {id(p): p for p in root.parameters()}
    edits = {}
    for site in find_ffn_sites(root):
        index = keep[site.layer]
        for layer in site.expand:
            edits.update({id(p): (p, e) for p, e in _output_edits(layer, index)})
        edits.update({id(p): (p, e) for p, e in _input_edits(site.project, index)})
    kept = prune_ffn_(root, keep_indices=dict(keep))
    _edit_optimizer(optimizer, root, edits, {}, before)
    return kept


def _shrink_groups(
    root: nn.Module, keep: Mapping[int, torch.Tensor], optimizer: Any = None
) -> dict[int, torch.Tensor]:
    heads, kv_heads, head_dim = head_layout(root)
    per_group = heads // kv_heads
    before = {id(p): p for p in root.parameters()}
    edits = {}
    for site in find_attention_sites(root):
        groups = keep[site.layer]
        q_heads = (groups[:, None] * per_group + torch.arange(per_group)).reshape(-1)  # (kept * per_group,)
        q_rows = (q_heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)  # (kept query dims,)
        kv_rows = (groups[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)  # (kept kv dims,)
        for module, index, edit_of in (
            (site.q, q_rows, _output_edits),
            (site.k, kv_rows, _output_edits),
            (site.v, kv_rows, _output_edits),
            (site.o, q_rows, _input_edits),
        ):
            edits.update({id(p): (p, e) for p, e in edit_of(module, index)})
    kept = prune_attention_heads_(root, keep_groups=dict(keep))
    _edit_optimizer(optimizer, root, edits, {}, before)
    return {layer: k.key_value for layer, k in kept.items()}


def _shrink_layers(root: nn.Module, drop: Sequence[int], optimizer: Any = None) -> list[int]:
    before = {id(p): p for p in root.parameters()}
    blocks = find_layer_list(root)
    dropped = {id(p): p for i in drop for p in blocks[i].parameters()}
    kept = prune_layers_(root, drop=list(drop))
    _edit_optimizer(optimizer, root, {}, dropped, before)
    return kept


def _replay(root: nn.Module, stage: Mapping[str, Any]) -> None:
    if stage.get("ffn") is not None:
        _shrink_ffn(root, {i: torch.tensor(k, dtype=torch.long) for i, k in enumerate(stage["ffn"])})
    if stage.get("kv_groups") is not None:
        _shrink_groups(root, {i: torch.tensor(k, dtype=torch.long) for i, k in enumerate(stage["kv_groups"])})
    if stage.get("drop") is not None:
        _shrink_layers(root, stage["drop"])


def _read_state(folder: str | os.PathLike) -> dict[str, Any]:
    path = os.path.join(os.fspath(folder), STRUCTURAL_STATE_JSON)
    if not os.path.isfile(path):
        raise ValueError(
            f"{path} does not exist: {os.fspath(folder)!r} is not a checkpoint of a run with "
            "StructuralPruningCallback (it writes that file into every checkpoint). Pass such a checkpoint folder."
        )
    with open(path, encoding="utf-8") as fh:
        meta = json.load(fh)
    if meta.get("format_version") != _FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version={meta.get('format_version')!r}; this hf-lite reads version "
            f"{_FORMAT_VERSION}. Use the hf-lite version that wrote it."
        )
    return meta


def shrink_like_checkpoint(model: nn.Module, checkpoint_dir: str | os.PathLike) -> nn.Module:
    """Shrink ``model`` in place to the shapes of a checkpoint written during gradual structural pruning.

    The checkpoint's :data:`STRUCTURAL_STATE_JSON` lists, per stage, the kept FFN neurons, the kept key/value
    groups and the dropped blocks; they are applied in the same order with the same indices, so the model
    gets exactly the checkpoint's shapes and config (its weights are then loaded by the Trainer when
    resuming, or by ``load_state_dict``). A model that already has the checkpoint's shapes (loaded from that
    folder) is left as it is; one at an earlier stage of the same run gets the remaining stages.

    Args:
        model: the model the run started from (same architecture and sizes), or a PEFT model around it.
        checkpoint_dir: a ``checkpoint-<step>`` folder of the run.

    Returns:
        ``model`` (shrunk in place).

    Raises:
        ValueError: the folder has no structural pruning state, or the model's sizes match neither the
            run's original sizes nor any of its stages.

    >>> model = AutoModelForCausalLM.from_pretrained("org/base")  # doctest: +SKIP
    >>> shrink_like_checkpoint(model, "out/checkpoint-300").config.intermediate_size  # doctest: +SKIP
    5504
    """
    meta = _read_state(checkpoint_dir)
    root = _root(model)
    kinds = list(meta["original"])
    sizes = model_sizes(root, kinds)
    prefixes = [dict(meta["original"])] + [dict(stage["sizes"]) for stage in meta["stages"]]
    done = next((i for i in range(len(prefixes) - 1, -1, -1) if prefixes[i] == sizes), None)
    if done is None:
        raise ValueError(
            f"the model has sizes {sizes}, but the run of {os.fspath(checkpoint_dir)!r} started from "
            f"{meta['original']} and went through {[p for p in prefixes[1:]]}: it is not the model that run "
            "trained. Load the same base checkpoint the run started from."
        )
    for stage in meta["stages"][done:]:
        _replay(root, stage)
    # Remembered so that the callback finds the state again when train(resume_from_checkpoint=...) resumes.
    root.__dict__[_RESUME_ATTR] = os.fspath(checkpoint_dir)
    if done < len(meta["stages"]):
        logger.info(
            "shrank the model like %s: %s -> %s (%d stages replayed)",
            os.fspath(checkpoint_dir), sizes, meta["stages"][-1]["sizes"], len(meta["stages"]) - done,
        )  # fmt: skip
    return model


# ----------------------------------------------------------------------------------------------------------
# calibration data


def _calibration_from_dataloader(
    dataloader: Any, batch_size: int, num_batches: int, seed: int
) -> list[dict[str, torch.Tensor]]:
    """``num_batches`` batches of the training set built with the dataloader's own collator: a seeded random
    subset (same rows on resume; the Trainer's data order and RNG are not touched)."""
    dataset = getattr(dataloader, "dataset", None)
    collate = getattr(dataloader, "collate_fn", None)
    if dataset is None or collate is None:
        raise ValueError(
            "calibration batches are needed (importance='activation' or num_layers) but the callback got no "
            "train dataloader with a dataset: pass calibration_batches=[...] to StructuralPruningCallback."
        )
    rows = batch_size * num_batches
    if isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__len__"):
        examples = list(itertools.islice(iter(dataset), rows))
    else:
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(dataset), generator=generator)[:rows].tolist()
        examples = [dataset[i] for i in order]
    if not examples:
        raise ValueError("the training set is empty: no calibration batches can be drawn from it.")
    return [collate(examples[i : i + batch_size]) for i in range(0, len(examples), batch_size)]


# ----------------------------------------------------------------------------------------------------------
# the callback


class StructuralPruningCallback(TrainerCallback):
    """Shrink a model at scheduled steps while a ``Trainer`` trains it, and keep training the smaller model.

    Lifecycle (events of ``transformers.TrainerCallback``; "step" is ``TrainerState.global_step``):

    - ``on_init_end`` (inside ``Trainer.__init__``): refuses what cannot work before any training: several
      processes (see DDP below), DeepSpeed/FSDP, ``load_best_model_at_end`` (checkpoints of different stages
      have different shapes), a DistillationTrainer whose hidden-state or attention matching would index
      removed blocks or heads, Taylor scores on frozen weights (PEFT), counts the config cannot express. With
      ``args.resume_from_checkpoint`` set to a folder of this run, the model is shrunk to it here
      (:func:`shrink_like_checkpoint`), before the Trainer loads its weights.
    - ``on_train_begin``: records the original sizes and the stage plan
      (:meth:`StructuralPruningConfig.plan`); when resuming (``global_step > 0``), reads the sizes, the
      stages done and running Taylor sums back from the checkpoint's :data:`STRUCTURAL_STATE_JSON` (looked
      up in ``args.resume_from_checkpoint``, the folder :func:`shrink_like_checkpoint` shrank the model to, the
      folder the model was loaded from, then ``output_dir/checkpoint-<global_step>``; the one whose step is
      ``global_step``) and checks that the model already has the checkpoint's shapes.
    - ``on_pre_optimizer_step`` (``importance="taylor"``, during the ``taylor_steps`` steps before a stage):
      adds ``w * dL/dw`` of the step's gradient (accumulated, clipped), summed per neuron and per group.
    - ``on_optimizer_step``, at a stage's step (after that optimizer step, before the LR scheduler step and
      ``zero_grad``): ranks neurons/groups, removes them with :func:`hf_lite.pruning.prune_ffn_`,
      :func:`~hf_lite.pruning.prune_attention_heads_` and :func:`~hf_lite.pruning.prune_layers_` (block
      influence picks the blocks), in that order, and edits the optimizer in place after each: every sliced
      parameter is replaced by its successor at the same position of the same param group, and its state
      (Adam's ``exp_avg``/``exp_avg_sq``, momentum) sliced with the same kept indices, the step count kept;
      parameters of dropped blocks leave the optimizer with their state. The accelerate wrapper, the param
      groups and the LR scheduler (which only sees groups) stay valid, so training goes on as if the removed
      structures had never existed. A LoRA adapter is sliced with its base layer.
    - ``on_save``: the main process writes :data:`STRUCTURAL_STATE_JSON` (original sizes, per stage its step,
      kept indices and sizes) and, while Taylor sums are running, :data:`STRUCTURAL_STATE_TENSORS` into the
      checkpoint folder (atomically, no pickle). The Trainer saves the shrunk weights, config and optimizer.
    - ``on_train_end``: nothing to undo: the model holds no masks or hooks and its config describes it, so
      ``save_pretrained`` writes an ordinary smaller checkpoint for stock ``from_pretrained``.

    **DDP is not supported** (a ``ValueError`` when ``world_size > 1``): DDP registers its gradient buckets and
    autograd hooks on the parameter tensors when the model is wrapped, and the Trainer keeps that wrapper in
    a local variable of its training loop that a callback cannot replace, so the new, smaller parameters
    would never be all-reduced and the processes would drift apart silently. Run gradual structural pruning
    in one process, or shrink one-shot (``prune_ffn_`` & co.) between multi-process runs.

    Do not combine with :class:`~trainers.pruning_callback.PruningCallback` in the same run (its masks keep the old
    shapes). ``torch_compile`` is untested with shrinking models.

    Args:
        config: a :class:`StructuralPruningConfig` (or a dict of its fields).
        calibration_batches: tokenized batches (dicts of tensors) for ``importance="activation"`` and block
            influence; default: ``num_calibration_batches`` batches drawn from the training set.
        **kwargs: :class:`StructuralPruningConfig` fields, instead of ``config`` or overriding its fields.

    Attributes:
        original_sizes: ``{"ffn" | "kv_groups" | "layers": count}`` before the first stage.
        stages: per stage done, ``{"step", "sizes", "ffn", "kv_groups", "drop", "num_parameters"}``.

    >>> callback = StructuralPruningCallback(ffn_keep_ratio=0.5, num_layers=2, end_step=40, num_stages=2)
    >>> callback.config.stage_steps(), callback.stages
    ([20, 40], [])
    """

    def __init__(
        self,
        config: StructuralPruningConfig | Mapping[str, Any] | None = None,
        *,
        calibration_batches: Iterable[Mapping[str, torch.Tensor]] | None = None,
        **kwargs: Any,
    ) -> None:
        names = [f.name for f in dataclasses.fields(StructuralPruningConfig)]
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise TypeError(
                f"StructuralPruningCallback got unknown argument(s) {unknown}; StructuralPruningConfig fields "
                f"are: {', '.join(names)}."
            )
        if config is None:
            config = StructuralPruningConfig(**kwargs)
        elif isinstance(config, Mapping):
            config = StructuralPruningConfig(**{**config, **kwargs})
        elif isinstance(config, StructuralPruningConfig):
            config = dataclasses.replace(config, **kwargs) if kwargs else config
        else:
            raise TypeError(
                f"config must be a StructuralPruningConfig, a dict of its fields or None; got {type(config).__name__}."
            )
        self.config: StructuralPruningConfig = config
        self.calibration_batches = (
            None
            if calibration_batches is None
            else check_calibration(calibration_batches, "StructuralPruningCallback(calibration_batches=...)")
        )
        self.original_sizes: dict[str, int] = {}
        self.stages: list[dict[str, Any]] = []
        self._plan: list[StageTarget] = []
        self._root: nn.Module | None = None
        self._taylor: dict[str, dict[int, torch.Tensor]] = {}
        self._taylor_count = 0

    # -- checks -----------------------------------------------------------------------------------------

    @property
    def _kinds(self) -> list[str]:
        c = self.config
        return [
            kind
            for kind, value in zip(
                _KINDS, (c.ffn_keep_ratio, c.kv_groups_keep_ratio, c.num_layers), strict=True
            )
            if value is not None
        ]

    def _check_args(self, args: TrainingArguments) -> None:
        world = max(int(getattr(args, "world_size", 1) or 1), _world()[1])
        if world > 1:
            raise ValueError(
                f"StructuralPruningCallback runs in one process, but world_size={world}: DDP keeps gradient "
                "buckets on the original parameter tensors, which shrinking replaces, so the processes would "
                "silently stop averaging gradients. Train with a single process, or shrink one-shot "
                "(hf_lite.pruning.prune_ffn_ & co.) before a multi-process run."
            )
        if getattr(args, "deepspeed", None) or getattr(args, "fsdp", None):
            raise ValueError(
                "StructuralPruningCallback cannot shrink a DeepSpeed- or FSDP-sharded model (the shards and the "
                "engine's optimizer hold the original shapes); unset deepspeed/fsdp, or shrink one-shot before."
            )
        if getattr(args, "load_best_model_at_end", False):
            raise ValueError(
                "load_best_model_at_end=True with StructuralPruningCallback: checkpoints of different stages have "
                "different shapes, so the best one may not load into the final model. Set "
                "load_best_model_at_end=False and pick a checkpoint saved after end_step yourself."
            )
        if getattr(args, "hidden_weight", 0) > 0 and self.config.num_layers is not None:
            raise ValueError(
                f"hidden_weight={args.hidden_weight} with num_layers={self.config.num_layers}: DistillationTrainer "
                "fixes its student/teacher layer pairs for hidden-state matching when it is created, and dropping "
                "student blocks would leave pairs pointing past the last block. Set hidden_weight=0, or drop the "
                "blocks one-shot (hf_lite.pruning.prune_layers_) before creating the trainer."
            )
        if getattr(args, "attention_weight", 0) > 0:
            if self.config.kv_groups_keep_ratio is not None:
                raise ValueError(
                    f"attention_weight={args.attention_weight} with kv_groups_keep_ratio="
                    f"{self.config.kv_groups_keep_ratio}: attention maps are matched head by head, and removing "
                    "the student's heads breaks that. Set attention_weight=0 or kv_groups_keep_ratio=None."
                )
            if self.config.num_layers is not None and getattr(args, "layer_map", "uniform") not in (
                "uniform",
                "last",
            ):
                raise ValueError(
                    f"attention_weight={args.attention_weight} with layer_map={args.layer_map!r} and "
                    f"num_layers={self.config.num_layers}: explicit layer pairs would point past the blocks left "
                    "after dropping. Use layer_map='uniform' or 'last', or attention_weight=0."
                )

    def _check_model(self, root: nn.Module) -> None:
        sizes = model_sizes(root, self._kinds)
        plan = self.config.plan(sizes)  # also checks targets against the sizes
        if "kv_groups" in sizes:
            heads, kv_heads, _ = head_layout(root)
            per_group = heads // kv_heads
            config = model_config(root)
            for target in plan:
                g = target.kv_groups
                if g is None:
                    continue
                error = _config_error(
                    config, {"num_attention_heads": g * per_group, "num_key_value_heads": g}
                )
                if error is not None:
                    valid = [
                        n for n in range(1, kv_heads + 1)
                        if _config_error(config, {"num_attention_heads": n * per_group, "num_key_value_heads": n})
                        is None
                    ]  # fmt: skip
                    raise ValueError(
                        f"the stage at step {target.step} would keep {g} key/value groups, which "
                        f"{type(config).__name__} refuses to load: {error}. Group counts that load: {valid}; "
                        "choose kv_groups_keep_ratio and num_stages so that every stage lands on one."
                    )
        if self.config.importance == "taylor":
            weights = []
            if "ffn" in sizes:
                weights += [
                    base_layer(m).weight for s in find_ffn_sites(root) for m in (*s.expand, s.project)
                ]
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

    # -- scores -----------------------------------------------------------------------------------------

    def _calibration(
        self, args: TrainingArguments, dataloader: Any, step: int
    ) -> list[dict[str, torch.Tensor]]:
        if self.calibration_batches is not None:
            return self.calibration_batches
        return _calibration_from_dataloader(
            dataloader,
            args.per_device_train_batch_size,
            self.config.num_calibration_batches,
            args.seed + step,
        )

    def _next_stage(self) -> StageTarget | None:
        done = len(self.stages)
        return self._plan[done] if done < len(self._plan) else None

    @torch.no_grad()
    def _accumulate_taylor(self, stage: StageTarget) -> None:
        root = self._root

        def products(modules: Iterable[nn.Module]) -> dict[nn.Module, torch.Tensor]:
            out = {}
            for m in modules:
                w = base_layer(m).weight
                g = w.grad if w.grad is not None else torch.zeros_like(w)
                out[m] = w.detach().float() * g.float()  # (weight shape)
            return out

        if stage.ffn is not None:
            acc = self._taylor.setdefault("ffn", {})
            for site in find_ffn_sites(root):
                partial = _ffn_reduce(site, products((*site.expand, site.project)))  # (width,)
                acc[site.layer] = acc[site.layer] + partial if site.layer in acc else partial
        if stage.kv_groups is not None:
            heads, kv_heads, head_dim = head_layout(root)
            acc = self._taylor.setdefault("kv_groups", {})
            for site in find_attention_sites(root):
                _, group = _heads_reduce(
                    site, products((site.q, site.k, site.v, site.o)), heads, kv_heads, head_dim
                )  # (kv_heads,)
                acc[site.layer] = acc[site.layer] + group if site.layer in acc else group
        self._taylor_count += 1

    def _scores(self, kind: str, batches: list[Mapping[str, torch.Tensor]] | None) -> dict[int, torch.Tensor]:
        importance, root = self.config.importance, self._root
        if importance == "taylor":
            sums = self._taylor.get(kind)
            if not sums:
                raise RuntimeError(
                    f"no Taylor sums were gathered for {kind} before the stage (please report this)."
                )
            return {layer: total.abs() for layer, total in sums.items()}
        if kind == "ffn":
            return ffn_neuron_scores(root, importance, batches)
        return {layer: s.group for layer, s in attention_head_scores(root, importance, batches).items()}

    # -- a stage ----------------------------------------------------------------------------------------

    def _run_stage(
        self, stage: StageTarget, args: TrainingArguments, optimizer: Any, dataloader: Any
    ) -> None:
        root = self._root
        batches = self._calibration(args, dataloader, stage.step) if self.config.needs_calibration else None
        record: dict[str, Any] = {"step": stage.step, "ffn": None, "kv_groups": None, "drop": None}
        if stage.ffn is not None:
            scores = self._scores("ffn", batches)
            keep = {layer: _top(s, stage.ffn) for layer, s in scores.items()}
            _shrink_ffn(root, keep, optimizer)
            record["ffn"] = [keep[i].tolist() for i in range(len(keep))]
        if stage.kv_groups is not None:
            scores = self._scores("kv_groups", batches)
            keep = {layer: _top(s, stage.kv_groups) for layer, s in scores.items()}
            _shrink_groups(root, keep, optimizer)
            record["kv_groups"] = [keep[i].tolist() for i in range(len(keep))]
        if stage.layers is not None:
            influence = block_influence(root, batches)
            order = torch.sort(influence, stable=True).indices  # lowest influence first
            drop = sorted(order[: len(influence) - stage.layers].tolist())
            _shrink_layers(root, drop, optimizer)
            record["drop"] = drop
        record["sizes"] = model_sizes(root, self._kinds)
        record["num_parameters"] = sum(p.numel() for p in root.parameters())
        self.stages.append(record)
        self._taylor, self._taylor_count = {}, 0
        logger.info(
            "[rank %d] step %d: structural pruning stage %d/%d -> %s, %d parameters",
            _world()[0], stage.step, len(self.stages), len(self._plan), record["sizes"], record["num_parameters"],
        )  # fmt: skip

    # -- state ------------------------------------------------------------------------------------------

    def save_state(self, folder: str | os.PathLike, global_step: int) -> None:
        """Write the original sizes, the stages done (kept indices) and running Taylor sums into ``folder``.

        Called by ``on_save`` on the main process; :func:`shrink_like_checkpoint` reads it back.

        Args:
            folder: an existing checkpoint folder.
            global_step: the optimizer step the state belongs to.

        >>> callback.save_state("out/checkpoint-100", 100)  # doctest: +SKIP
        """
        folder = os.fspath(folder)
        if not os.path.isdir(folder):
            raise ValueError(f"folder={folder!r} is not an existing folder; pass the checkpoint folder.")
        meta = {
            "format_version": _FORMAT_VERSION,
            "global_step": int(global_step),
            "config": self.config.to_dict(),
            "original": self.original_sizes,
            "stages": self.stages,
            "taylor_steps_gathered": self._taylor_count,
        }
        tensors = {f"{kind}.{layer}": t.detach().cpu().contiguous() for kind, d in self._taylor.items()
                   for layer, t in d.items()}  # fmt: skip
        tensor_path = os.path.join(folder, STRUCTURAL_STATE_TENSORS)
        if tensors:
            from safetensors.torch import save_file

            _atomic_write(tensor_path, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
        elif os.path.exists(tensor_path):
            os.remove(tensor_path)

        def write_json(path: str) -> None:
            with open(path, "w", encoding="utf-8") as fh:
                json.dump(meta, fh)

        _atomic_write(os.path.join(folder, STRUCTURAL_STATE_JSON), write_json)

    def _resume_folder(self, args: TrainingArguments, state: TrainerState) -> str:
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        candidates = [
            args.resume_from_checkpoint,
            getattr(self._root, _RESUME_ATTR, None),  # set by shrink_like_checkpoint
            getattr(self._root, "name_or_path", None),  # a model loaded from the checkpoint folder
            os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"),
        ]
        candidates = list(dict.fromkeys(c for c in candidates if isinstance(c, str) and c))
        for folder in candidates:
            path = os.path.join(folder, STRUCTURAL_STATE_JSON)
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as fh:
                    if json.load(fh).get("global_step") == state.global_step:
                        return folder
        raise ValueError(
            f"the Trainer resumes at step {state.global_step}, but no {STRUCTURAL_STATE_JSON} of that step was "
            f"found in {candidates}. StructuralPruningCallback writes it into every checkpoint; call "
            "shrink_like_checkpoint(model, <the checkpoint folder>) before creating the Trainer, or set "
            "TrainingArguments(resume_from_checkpoint=<the checkpoint folder>)."
        )

    def _load_state(self, folder: str, root: nn.Module) -> None:
        meta = _read_state(folder)
        saved = meta.get("config", {})
        changed = {k: (saved.get(k), v) for k, v in self.config.to_dict().items() if saved.get(k) != v}
        if changed:
            logger.warning(
                "resuming structural pruning with a changed config %s (saved, now): the stages still to come "
                "follow the new one, so the result will differ from an uninterrupted run.", changed,
            )  # fmt: skip
        expected = meta["stages"][-1]["sizes"] if meta["stages"] else meta["original"]
        sizes = model_sizes(root, list(expected))
        if sizes != expected:
            raise ValueError(
                f"the model has sizes {sizes} but the checkpoint {folder} has {expected}: shrink the model to the "
                "checkpoint before creating the Trainer (shrink_like_checkpoint(model, folder), or load the model "
                "from the checkpoint folder)."
            )
        self.original_sizes = dict(meta["original"])
        self.stages = list(meta["stages"])
        self._taylor, self._taylor_count = {}, int(meta.get("taylor_steps_gathered", 0))
        path = os.path.join(folder, STRUCTURAL_STATE_TENSORS)
        if self._taylor_count and os.path.isfile(path):
            from safetensors.torch import load_file

            device = next(root.parameters()).device
            for key, tensor in load_file(path).items():
                kind, layer = key.rsplit(".", 1)
                self._taylor.setdefault(kind, {})[int(layer)] = tensor.to(device)

    # -- Trainer events ---------------------------------------------------------------------------------

    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self._check_args(args)
        model = kwargs.get("model")
        if model is None:
            return
        root = _root(model)
        resume = getattr(args, "resume_from_checkpoint", None)
        if isinstance(resume, str) and os.path.isfile(os.path.join(resume, STRUCTURAL_STATE_JSON)):
            shrink_like_checkpoint(root, resume)
            self.config.plan(_read_state(resume)["original"])  # the targets fit the run's original sizes
        else:
            self._check_model(root)

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self._check_args(args)
        model = kwargs.get("model")
        if model is None:
            raise ValueError(
                "StructuralPruningCallback.on_train_begin got no model; it needs the Trainer's model."
            )
        self._root = _root(model)
        self._taylor, self._taylor_count = {}, 0
        if state.global_step > 0:
            folder = self._resume_folder(args, state)
            self._load_state(folder, self._root)
            logger.info("structural pruning state restored from %s (step %d, %d stages done)",
                        folder, state.global_step, len(self.stages))  # fmt: skip
        else:
            self.original_sizes = model_sizes(self._root, self._kinds)
            self.stages = []
            self._check_model(self._root)
        self._plan = self.config.plan(self.original_sizes)
        done_steps = [s["step"] for s in self.stages]
        if done_steps != [t.step for t in self._plan[: len(done_steps)]]:
            logger.warning("the stages done %s differ from this config's plan %s; continuing with the plan",
                           done_steps, [t.step for t in self._plan])  # fmt: skip
        if state.max_steps and state.max_steps < self.config.end_step:
            logger.warning(
                "end_step=%d is beyond max_steps=%d: training ends before the last stages, short of the targets.",
                self.config.end_step, state.max_steps,
            )  # fmt: skip

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs
    ):
        if self.config.importance != "taylor" or self._root is None:
            return
        stage = self._next_stage()
        step = state.global_step + 1  # the optimizer step about to be taken
        if stage is not None and stage.step - self.config.taylor_steps < step <= stage.step:
            self._accumulate_taylor(stage)

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs
    ):
        stage = self._next_stage()
        if stage is not None and state.global_step + 1 == stage.step:
            self._run_stage(stage, args, kwargs.get("optimizer"), kwargs.get("train_dataloader"))

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if not args.should_save or self._root is None:
            return
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if not os.path.isdir(folder):
            logger.warning(
                "checkpoint folder %s not found; structural pruning state not saved with it.", folder
            )
            return
        self.save_state(folder, state.global_step)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        left = len(self._plan) - len(self.stages)
        if left > 0:
            logger.warning(
                "training ended with %d structural pruning stage(s) not run (next at step %d); the model has "
                "sizes %s, not the targets.", left, self._plan[len(self.stages)].step,
                model_sizes(self._root, self._kinds) if self._root is not None else {},
            )  # fmt: skip
