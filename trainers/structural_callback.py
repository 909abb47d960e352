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
Trainer is created. The callback then reads the stages done and running Taylor sums back from that folder
(its state methods: :mod:`trainers._structural_state`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import TrainerCallback

from hf_lite._utils import unwrap_model, world
from hf_lite.pruning.calibration import check_calibration
from hf_lite.pruning.importance import (
    attention_head_scores,
    block_influence,
    ffn_neuron_scores,
    ffn_reduce,
    heads_reduce,
    taylor_products,
)
from hf_lite.pruning.optimizer_state import base_optimizer
from hf_lite.pruning.sites import find_attention_sites, find_ffn_sites, head_layout
from hf_lite.pruning.structural import ParamSlice, StructuralPlan, slice_optimizer_state_, top_indices
from trainers._structural_checks import check_model_fits, check_training_args
from trainers._structural_ddp import (
    DdpWatch,
    average_over_processes,
    broadcast_from_main,
    calibration_from_dataloader,
    count_tokens,
    shard_batches,
    sharded_parameter,
)
from trainers._structural_shrink import (
    STRUCTURAL_STATE,
    STRUCTURAL_STATE_JSON,
    STRUCTURAL_STATE_TENSORS,
    model_sizes,
    shrink_ffn,
    shrink_groups,
    shrink_layers,
    shrink_like_checkpoint,
)
from trainers._structural_state import StructuralStateMixin
from trainers.structural_config import StageTarget, StructuralPruningConfig

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


# ----------------------------------------------------------------------------------------------------------
# the internals under their former names (the test suite reaches them through this module)

_Edit = ParamSlice
_calibration_from_dataloader = calibration_from_dataloader
_shrink_ffn = shrink_ffn
_shrink_layers = shrink_layers


def _edit_optimizer(
    optimizer: Any,
    root: nn.Module,
    edits: Mapping[int, tuple[nn.Parameter, ParamSlice]],
    dropped: Mapping[int, nn.Parameter],
    before: Mapping[int, nn.Parameter],
) -> int:
    """:func:`hf_lite.pruning.structural.slice_optimizer_state_` of a plan given by its parts."""
    plan = StructuralPlan(slices=dict(edits), dropped=dict(dropped), params=dict(before))
    return slice_optimizer_state_(base_optimizer(optimizer), root, plan)


# ----------------------------------------------------------------------------------------------------------
# the callback


class StructuralPruningCallback(StructuralStateMixin, TrainerCallback):
    """Shrink a model at scheduled steps while a ``Trainer`` trains it, and keep training the smaller model.

    Lifecycle (events of ``transformers.TrainerCallback``; "step" is ``TrainerState.global_step``):

    - ``on_init_end`` (inside ``Trainer.__init__``): refuses what cannot work before any training:
      DeepSpeed/FSDP (see below), ``load_best_model_at_end`` (checkpoints of different stages
      have different shapes), a DistillationTrainer whose hidden-state or attention matching would index
      removed blocks or heads, Taylor scores on frozen weights (PEFT), counts the config cannot express. With
      ``args.resume_from_checkpoint`` set to a folder of this run, the model is shrunk to it here
      (:func:`shrink_like_checkpoint`), before the Trainer loads its weights.
    - ``on_train_begin``: refuses FSDP/ZeRO-3-sharded parameters; records the original sizes and the stage plan
      (:meth:`StructuralPruningConfig.plan`); when resuming (``global_step > 0``), reads the sizes, the
      stages done and running Taylor sums back from the checkpoint's :data:`STRUCTURAL_STATE_JSON` (looked
      up in ``args.resume_from_checkpoint``, the folder :func:`shrink_like_checkpoint` shrank the model to, the
      folder the model was loaded from, then ``output_dir/checkpoint-<global_step>``; the one whose step is
      ``global_step``) and checks that the model already has the checkpoint's shapes.
    - ``on_pre_optimizer_step`` (``importance="taylor"``, during the ``taylor_steps`` steps before a stage):
      adds ``w * dL/dw`` of the step's gradient (accumulated, clipped), summed per neuron and per group.
    - ``on_optimizer_step``, at a stage's step (after that optimizer step, before the LR scheduler step and
      ``zero_grad``): ranks neurons/groups, removes them as :func:`hf_lite.pruning.prune_ffn_`,
      :func:`~hf_lite.pruning.prune_attention_heads_` and :func:`~hf_lite.pruning.prune_layers_` do (block
      influence picks the blocks), in that order, and edits the optimizer in place after each with the same
      :class:`~hf_lite.pruning.StructuralPlan` (``apply_plan_``, then ``slice_optimizer_state_``): every sliced
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

    **Several processes (DDP)**: the processes shrink in lockstep. Each scores its share of the calibration
    rows (drawn for the global batch) and the activation / block-influence means are all-reduced, weighted by
    tokens (Taylor scores read gradients DDP has already averaged); rank 0's kept indices are broadcast; after
    the stage the DDP wrapper's reducer is rebuilt around the new parameters (found by a forward hook, see
    :mod:`trainers._structural_ddp`). The result is the one-process run's with the same global batch.
    **FSDP and DeepSpeed are refused** (``ValueError``): they shard parameters, which cannot be sliced in place.

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
        self._ddp: DdpWatch | None = None  # several processes: finds the DDP wrapper to rebuild after a stage
        self._ddp_rebuilds = 0

    # -- scores -----------------------------------------------------------------------------------------

    def _calibration(
        self, args: TrainingArguments, dataloader: Any, step: int
    ) -> list[dict[str, torch.Tensor]]:
        rank, processes = world()  # each process scores its share (see _structural_ddp)
        if self.calibration_batches is not None:
            return shard_batches(self.calibration_batches, rank, processes)
        return _calibration_from_dataloader(
            dataloader,
            args.per_device_train_batch_size,
            self.config.num_calibration_batches,
            args.seed + step,
            rank,
            processes,
        )

    def _next_stage(self) -> StageTarget | None:
        done = len(self.stages)
        return self._plan[done] if done < len(self._plan) else None

    @torch.no_grad()
    def _accumulate_taylor(self, stage: StageTarget) -> None:
        root = self._root

        def products(modules: Iterable[nn.Module]) -> dict[nn.Module, torch.Tensor]:
            return taylor_products(modules, lambda w: w.grad)  # this step's gradient, accumulated and clipped

        if stage.ffn is not None:
            acc = self._taylor.setdefault("ffn", {})
            for site in find_ffn_sites(root):
                partial = ffn_reduce(site, products((*site.expand, site.project)))  # (width,)
                acc[site.layer] = acc[site.layer] + partial if site.layer in acc else partial
        if stage.kv_groups is not None:
            heads, kv_heads, head_dim = head_layout(root)
            acc = self._taylor.setdefault("kv_groups", {})
            for site in find_attention_sites(root):
                _, group = heads_reduce(
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
            scores = ffn_neuron_scores(root, importance, batches)
        else:
            scores = {layer: s.group for layer, s in attention_head_scores(root, importance, batches).items()}
        # activation means of this process's share -> the mean over every process's real tokens
        return average_over_processes(scores, count_tokens(batches)) if importance == "activation" else scores

    # -- a stage ----------------------------------------------------------------------------------------

    def _run_stage(
        self, stage: StageTarget, args: TrainingArguments, optimizer: Any, dataloader: Any
    ) -> None:
        root = self._root
        batches = self._calibration(args, dataloader, stage.step) if self.config.needs_calibration else None
        record: dict[str, Any] = {"step": stage.step, "ffn": None, "kv_groups": None, "drop": None}
        if stage.ffn is not None:
            scores = self._scores("ffn", batches)
            keep = broadcast_from_main({layer: top_indices(s, stage.ffn) for layer, s in scores.items()})
            shrink_ffn(root, keep, optimizer)
            record["ffn"] = [keep[i].tolist() for i in range(len(keep))]
        if stage.kv_groups is not None:
            scores = self._scores("kv_groups", batches)
            keep = broadcast_from_main(
                {layer: top_indices(s, stage.kv_groups) for layer, s in scores.items()}
            )
            shrink_groups(root, keep, optimizer)
            record["kv_groups"] = [keep[i].tolist() for i in range(len(keep))]
        if stage.layers is not None:
            influence = average_over_processes(block_influence(root, batches), count_tokens(batches))
            order = torch.sort(influence, stable=True).indices  # lowest influence first
            drop = broadcast_from_main(sorted(order[: len(influence) - stage.layers].tolist()))
            shrink_layers(root, drop, optimizer)
            record["drop"] = drop
        if self._ddp is not None and self._ddp.rebuild():  # DDP averages the new parameters' gradients
            self._ddp_rebuilds += 1
        record["sizes"] = model_sizes(root, self.config.kinds)
        record["num_parameters"] = sum(p.numel() for p in root.parameters())
        self.stages.append(record)
        self._taylor, self._taylor_count = {}, 0
        logger.info(
            "[rank %d] step %d: structural pruning stage %d/%d -> %s, %d parameters",
            world()[0],
            stage.step,
            len(self.stages),
            len(self._plan),
            record["sizes"],
            record["num_parameters"],
        )

    # -- Trainer events ---------------------------------------------------------------------------------

    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        check_training_args(self.config, args)
        model = kwargs.get("model")
        if model is None:
            return
        root = unwrap_model(model)
        resume = getattr(args, "resume_from_checkpoint", None)
        if isinstance(resume, str) and os.path.isfile(os.path.join(resume, STRUCTURAL_STATE_JSON)):
            shrink_like_checkpoint(root, resume)
            self.config.plan(
                STRUCTURAL_STATE.read(resume)["original"]
            )  # the targets fit the run's original sizes
        else:
            check_model_fits(self.config, root)

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        check_training_args(self.config, args)
        model = kwargs.get("model")
        if model is None:
            raise ValueError(
                "StructuralPruningCallback.on_train_begin got no model; it needs the Trainer's model."
            )
        self._root = unwrap_model(model)
        sharded = sharded_parameter(self._root)
        if sharded is not None:
            raise ValueError(
                f"parameter {sharded[0]!r} is sharded by {sharded[1]}: StructuralPruningCallback slices whole "
                "parameters in place, which cannot be done safely on shards that the engine and its optimizer "
                "hold in the original shapes. Train with DDP (each process a full copy) or one process, or "
                "shrink one-shot (hf_lite.pruning.prune_ffn_ & co.) before the sharded run."
            )
        self._taylor, self._taylor_count = {}, 0
        self._close_ddp_watch()
        if world()[1] > 1:
            self._ddp = DdpWatch(self._root)
        if state.global_step > 0:
            folder = self._resume_folder(args, state)
            self._load_state(folder, self._root)
            logger.info(
                "structural pruning state restored from %s (step %d, %d stages done)",
                folder,
                state.global_step,
                len(self.stages),
            )
        else:
            self.original_sizes = model_sizes(self._root, self.config.kinds)
            self.stages = []
            check_model_fits(self.config, self._root)
        self._plan = self.config.plan(self.original_sizes)
        done_steps = [s["step"] for s in self.stages]
        if done_steps != [t.step for t in self._plan[: len(done_steps)]]:
            logger.warning(
                "the stages done %s differ from this config's plan %s; continuing with the plan",
                done_steps,
                [t.step for t in self._plan],
            )
        if state.max_steps and state.max_steps < self.config.end_step:
            logger.warning(
                "end_step=%d is beyond max_steps=%d: training ends before the last stages, short of the targets.",
                self.config.end_step,
                state.max_steps,
            )

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
        if self._root is None:
            return
        folder = STRUCTURAL_STATE.folder_to_save(args, state)
        if folder is None:
            return
        self.save_state(folder, state.global_step)

    def _close_ddp_watch(self) -> None:
        if self._ddp is not None:
            self._ddp.close()
            self._ddp = None

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self._close_ddp_watch()
        left = len(self._plan) - len(self.stages)
        if left > 0:
            logger.warning(
                "training ended with %d structural pruning stage(s) not run (next at step %d); the model has "
                "sizes %s, not the targets.",
                left,
                self._plan[len(self.stages)].step,
                model_sizes(self._root, self.config.kinds) if self._root is not None else {},
            )
