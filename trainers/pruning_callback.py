"""Gradual pruning during fine-tuning or distillation, as a ``transformers.TrainerCallback``.

:class:`PruningCallback` raises the sparsity of a model's linear layers on the cubic schedule of Zhu & Gupta
(2017) while any ``Trainer`` trains it, keeps pruned weights at zero after every optimizer step, checkpoints
its state beside the Trainer's and makes the pruning permanent at the end, so ``save_pretrained`` writes an
ordinary checkpoint whose zeros load with stock ``from_pretrained``. The mask maths lives in
:mod:`hf_lite.pruning`; this module only arranges it around the training loop. The checkpoint state
(the files, ``save_state`` and resuming) lives in :mod:`trainers._pruning_state`.

>>> from transformers import Trainer
>>> from trainers.pruning_callback import PruningCallback
>>> callback = PruningCallback(target_sparsity=0.5, start_step=0, end_step=600, frequency=50)
>>> trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])  # doctest: +SKIP
>>> trainer.train()  # doctest: +SKIP
>>> callback.report().targeted_sparsity  # doctest: +SKIP
0.5
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from transformers import TrainerCallback

from hf_lite._utils import unwrap_model, world
from hf_lite.pruning.masks import (
    apply_mask_,
    check_nm_widths,
    global_unstructured_masks,
    magnitude_scores,
    mask_sparsity,
    movement_scores,
    nm_mask,
    unstructured_mask,
)
from hf_lite.pruning.optimizer_state import base_optimizer, mask_moments_
from hf_lite.pruning.report import sparsity_report
from hf_lite.pruning.schedule import CubicSchedule
from hf_lite.pruning.sharded import (
    check_engine,
    is_sharded,
    local_state,
    local_tensor,
    sharded_pruning_masks,
    unsharded,
)
from hf_lite.pruning.targets import find_prunable_modules, in_features_dim
from trainers._pruning_state import PRUNING_STATE, PRUNING_STATE_JSON, PRUNING_STATE_NAME, PruningStateMixin
from trainers.pruning_config import PruningConfig

if TYPE_CHECKING:
    from torch import nn
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from hf_lite.pruning.report import SparsityReport

# PruningConfig lives in trainers.pruning_config, the state file names in trainers._pruning_state; both still
# importable from here as before.
__all__ = ["PruningConfig", "PruningCallback", "PRUNING_STATE_NAME", "PRUNING_STATE_JSON"]

logger = logging.getLogger(__name__)


class PruningCallback(PruningStateMixin, TrainerCallback):
    """Gradual magnitude or movement pruning while a ``Trainer`` trains, with exact, counted sparsity.

    Lifecycle (the events of ``transformers.TrainerCallback``; "step" is ``TrainerState.global_step``):

    - ``on_init_end`` (inside ``Trainer.__init__``): the targeted layers are looked up once, so bad
      ``include``/``exclude`` patterns, N:M widths or frozen weights with ``method="movement"`` fail before
      training starts.
    - ``on_train_begin``: finds the target layers on the model (DDP/accelerate wrappers removed; for a PEFT
      model, the ``base_layer`` weights of its base model) and builds all-``True`` masks. When the Trainer
      resumes from a checkpoint (``state.global_step > 0``), masks, movement scores and the schedule position
      are read back from that checkpoint's :data:`PRUNING_STATE_NAME`/:data:`PRUNING_STATE_JSON`, looked up
      in ``args.resume_from_checkpoint`` and then in ``args.output_dir/checkpoint-<global_step>`` (where
      ``train(resume_from_checkpoint=True)`` finds it). If ``start_step == 0`` the step-0 update is made here.
    - ``on_pre_optimizer_step`` (movement only, until ``end_step``): adds ``-W * grad`` to the scores. The
      gradient is the accumulated, clipped, and under DDP already all-reduced one of this optimizer step.
    - ``on_optimizer_step``, after **every** optimizer step: at scheduled steps (``schedule.should_update``
      of the step just completed) the masks are recomputed at ``schedule.sparsity_at(step)`` from the
      scores, with pruned weights ranked lowest so masks only grow (once pruned, stays pruned); then the
      pruned weights and their floating-point optimizer state (Adam's ``exp_avg``/``exp_avg_sq``, SGD
      momentum) are set to zero so that no later step revives them. Between updates this is the only
      per-step work: two or three in-place multiplications by the mask per layer, no ranking.
    - ``on_save``: the main process writes the state into the new checkpoint folder (safetensors + JSON,
      atomically), so a resumed run ends with the same masks and weights as an uninterrupted one.
    - ``on_train_end``: the pruning is made permanent: weights zeroed in place, movement scores freed. The
      model never holds masks, hooks, parametrizations or ``weight_orig``, so ``save_pretrained`` writes an
      ordinary checkpoint. With ``load_best_model_at_end`` the masks saved with the best checkpoint are used.

    Under DDP every rank computes the same masks (same weights, gradients all-reduced before the optimizer
    step); rank 0's masks are also broadcast at each update, and :attr:`mask_disagreements` counts entries
    that differed before the broadcast (0 in a healthy run). Under FSDP2 (``DTensor`` weights) each process
    keeps the masks, scores and moments of its own shard; thresholds are computed across the shards
    (:mod:`hf_lite.pruning.sharded`), giving the single-process masks exactly, and checkpoints hold the
    gathered full masks (the same files as a single-process run). FSDP1 and DeepSpeed ZeRO-3 are refused.

    Args:
        config: a :class:`PruningConfig` (or a dict of its fields).
        **kwargs: :class:`PruningConfig` fields, instead of ``config`` or overriding its fields.

    Attributes:
        masks: ``{layer name: bool tensor}`` (``True`` = kept), names relative to the unwrapped model; under
            FSDP2 the local shard of each mask.
        current_sparsity: the scheduled sparsity in force (``0.0`` before the first update).
        mask_disagreements: mask entries where this rank disagreed with rank 0 before a broadcast.

    Example:

    >>> callback = PruningCallback(target_sparsity=0.5, start_step=10, end_step=100, frequency=10)
    >>> callback.config.method, callback.current_sparsity
    ('magnitude', 0.0)
    >>> trainer = Trainer(model, args, train_dataset=data, callbacks=[callback])  # doctest: +SKIP
    """

    def __init__(self, config: PruningConfig | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        if config is None:
            config = self._build_config(kwargs)
        elif isinstance(config, Mapping):
            config = self._build_config({**config, **kwargs})
        elif isinstance(config, PruningConfig):
            if kwargs:
                self._check_kwargs(kwargs)
                config = dataclasses.replace(config, **kwargs)
        else:
            raise TypeError(
                f"config must be a PruningConfig, a dict of its fields or None; got {type(config).__name__}."
            )
        self.config: PruningConfig = config
        self.schedule: CubicSchedule = config.schedule()
        self.masks: dict[str, torch.Tensor] = {}
        self.current_sparsity: float = 0.0
        self.mask_disagreements: int = 0
        self._model: nn.Module | None = None
        self._modules: dict[str, nn.Module] = {}
        self._scores: dict[str, torch.Tensor] | None = None
        self._last_update_step: int | None = None
        self._any_pruned = False
        self._sharded = False

    # -- configuration --------------------------------------------------------------------------------

    @staticmethod
    def _check_kwargs(kwargs: Mapping[str, Any]) -> None:
        names = [f.name for f in dataclasses.fields(PruningConfig)]
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise TypeError(
                f"PruningCallback got unknown argument(s) {unknown}; PruningConfig fields are: {', '.join(names)}."
            )

    @classmethod
    def _build_config(cls, kwargs: Mapping[str, Any]) -> PruningConfig:
        cls._check_kwargs(kwargs)
        return PruningConfig(**kwargs)

    # -- targets --------------------------------------------------------------------------------------

    def _find_targets(self, model: nn.Module) -> tuple[nn.Module, dict[str, nn.Module]]:
        # The base model of a PEFT model: LoRA's base_layer weights are pruned, the adapters stay dense.
        root = unwrap_model(model, peft_base=True)
        modules = find_prunable_modules(root, include=self.config.include, exclude=self.config.exclude)
        check_engine(model, modules)
        widths = {name: m.weight.shape[in_features_dim(m)] for name, m in modules.items()}
        check_nm_widths(widths, self.config.nm, label=f"pattern={self.config.pattern!r}")
        if self.config.method == "movement":
            frozen = [name for name, m in modules.items() if not m.weight.requires_grad]
            if frozen:
                raise ValueError(
                    f"method='movement' needs gradients of the pruned weights, but {len(frozen)} targeted "
                    f"layers are frozen (e.g. {frozen[0]}; PEFT freezes its base layers). Use "
                    "method='magnitude', or exclude the frozen layers."
                )
        return root, modules

    # -- masks ----------------------------------------------------------------------------------------

    def _set_masks(self, masks: Mapping[str, torch.Tensor]) -> None:
        self.masks = {name: masks[name].to(m.weight.device) for name, m in self._modules.items()}
        self._any_pruned = any(not bool(mask.all()) for mask in self.masks.values())

    def _scores_for_update(self) -> dict[str, torch.Tensor]:
        """Importance scores with already-pruned weights at ``-inf``, so a new mask prunes them first."""
        out = {}
        for name, module in self._modules.items():
            if self.config.method == "magnitude":
                scores = magnitude_scores(local_tensor(module.weight))
            elif self._scores is not None:
                scores = self._scores[name]
            else:
                scores = torch.zeros(self.masks[name].shape, dtype=torch.float32, device=module.weight.device)
            out[name] = scores.masked_fill(~self.masks[name], -math.inf)
        return out

    def _compute_masks(self, sparsity: float) -> dict[str, torch.Tensor]:
        scores = self._scores_for_update()
        nm = self.config.nm
        if self._sharded:  # FSDP2: thresholds across the shards, the local part of the single-process masks
            weights = {name: m.weight for name, m in self._modules.items()}
            dims = {name: in_features_dim(m) for name, m in self._modules.items()}
            masks = sharded_pruning_masks(
                scores, weights, sparsity, scope=self.config.scope, nm=nm, dims=dims
            )
        elif nm is not None:
            masks = {}
            for name, s in scores.items():
                # Gradual N:M: only the M-N lowest of each group are candidates, and the `sparsity` fraction
                # of the layer with the lowest scores among them is pruned, so the pattern is N:M exactly when
                # the schedule reaches 1 - N/M and never violated on the way.
                group_keep = nm_mask(s, *nm, dim=in_features_dim(self._modules[name]))
                masks[name] = unstructured_mask(s.masked_fill(group_keep, math.inf), sparsity)
        elif self.config.scope == "global":
            masks = global_unstructured_masks(scores, sparsity)
        else:
            masks = {name: unstructured_mask(s, sparsity) for name, s in scores.items()}
        # The -inf scores already keep every pruned weight pruned; the AND only states the invariant.
        return {name: mask & self.masks[name] for name, mask in masks.items()}

    def _sync_masks(self, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Under DDP, broadcast rank 0's masks and count where this rank's differed."""
        rank, size = world()
        if size == 1 or self._sharded:  # FSDP2: each rank holds other shards, computed together
            return masks
        names = list(masks)
        flat = torch.cat([masks[n].reshape(-1) for n in names]).to(torch.uint8)
        local = flat.clone()
        torch.distributed.broadcast(flat, src=0)
        differ = int((flat != local).sum())
        if differ:
            self.mask_disagreements += differ
            logger.warning(
                "[rank %d] %d pruning-mask entries differed from rank 0 before the broadcast (weights or "
                "gradients are not identical across ranks); using rank 0's masks.",
                rank,
                differ,
            )
        out, offset = {}, 0
        for n in names:
            numel = masks[n].numel()
            out[n] = flat[offset : offset + numel].reshape(masks[n].shape).to(torch.bool)
            offset += numel
        return out

    def _update(self, step: int, optimizer: Any) -> None:
        sparsity = self.schedule.sparsity_at(step)
        masks = self._sync_masks(self._compute_masks(sparsity))
        self._set_masks(masks)
        self._last_update_step = step
        self.current_sparsity = sparsity
        if step >= self.schedule.end_step:
            self._scores = None  # no update follows: movement scores are no longer needed
        self._apply(optimizer)
        rank, _ = world()
        logger.info(
            "[rank %d] step %d: pruning masks updated to sparsity %.4f (counted %.4f over %d layers)",
            rank,
            step,
            sparsity,
            mask_sparsity(self.masks),
            len(self.masks),
        )

    @torch.no_grad()
    def _apply(self, optimizer: Any) -> None:
        """Zero pruned weights and their floating-point optimizer state: the per-step hot path.

        A multiplication by the mask, read as uint8 without a copy: on CPU it is ~20x faster than
        ``masked_fill_`` with a bool mask (measured on 512x256 fp32: 29 us vs 520 us). A NaN stays NaN, so
        a diverged run is not hidden.
        """
        if not self._any_pruned:
            return
        state = getattr(base_optimizer(optimizer), "state", None) or {}
        for name, module in self._modules.items():
            weight, keep = (
                local_tensor(module.weight),
                self.masks[name].view(torch.uint8),
            )  # (shard shape), 0/1
            weight.mul_(keep)
            # Moments shaped like the weight (Adam exp_avg/exp_avg_sq, momentum); not quantized 8-bit states.
            moments = state.get(module.weight)
            mask_moments_(local_state(moments) if self._sharded else moments, weight, keep)

    # -- Trainer events -------------------------------------------------------------------------------

    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        model = kwargs.get("model")
        if model is not None:
            self._find_targets(model)  # fail at Trainer(...) rather than at the first step

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        model = kwargs.get("model")
        if model is None:
            raise ValueError("PruningCallback.on_train_begin got no model; it needs the Trainer's model.")
        self._model, self._modules = self._find_targets(model)
        self._sharded = any(is_sharded(m.weight) for m in self._modules.values())
        shapes = {n: local_tensor(m.weight).shape for n, m in self._modules.items()}  # the shards under FSDP2
        self._set_masks({n: torch.ones(shapes[n], dtype=torch.bool) for n in self._modules})
        self._scores = None
        self._last_update_step = None
        self.current_sparsity = 0.0
        self.mask_disagreements = 0
        optimizer = kwargs.get("optimizer")
        if self.config.method == "movement" and state.global_step < self.schedule.end_step:
            self._scores = {
                n: torch.zeros(shapes[n], dtype=torch.float32, device=m.weight.device)
                for n, m in self._modules.items()
            }
        if state.global_step > 0:
            folder = self._resume_folder(args, state)
            self._load_state(folder, state.global_step)
            self._apply(optimizer)  # a PEFT checkpoint holds no base weights: zero them again
            logger.info(
                "[rank %d] pruning state restored from %s (step %d, sparsity %.4f)",
                world()[0],
                folder,
                state.global_step,
                self.current_sparsity,
            )
        elif self.schedule.should_update(0):
            self._update(0, optimizer)
        if state.max_steps and state.max_steps < self.schedule.end_step:
            logger.warning(
                "end_step=%d is beyond max_steps=%d: training ends at sparsity %.4f, not target_sparsity=%g.",
                self.schedule.end_step,
                state.max_steps,
                self.schedule.sparsity_at(state.max_steps),
                self.config.target_sparsity,
            )

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs
    ):
        if self._scores is None:
            return
        for name, module in self._modules.items():
            grad = module.weight.grad
            if grad is not None:
                weight, grad = local_tensor(module.weight), local_tensor(grad)
                self._scores[name] = movement_scores(weight, grad, self._scores[name])

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs
    ):
        step = state.global_step + 1  # the optimizer step just taken; global_step is incremented after it
        if self.schedule.should_update(step):
            self._update(step, kwargs.get("optimizer"))
        else:
            self._apply(kwargs.get("optimizer"))

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if not self._modules:
            return
        # Under FSDP2 the masks are gathered on every process (a collective), then written by the main one.
        gathered = self._state_dict(state.global_step) if self._sharded else None
        folder = PRUNING_STATE.folder_to_save(args, state)
        if folder is not None:
            tensors, meta = gathered or self._state_dict(state.global_step)
            PRUNING_STATE.save(folder, meta, tensors, indent=2)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if not self._modules:
            return
        best = state.best_model_checkpoint if args.load_best_model_at_end else None
        if best and os.path.isfile(os.path.join(best, PRUNING_STATE_JSON)):
            # The Trainer has just loaded the best checkpoint's weights: keep the masks that belong to them.
            meta = self._load_state(best, None)
            logger.info(
                "pruning masks of the best checkpoint %s (step %s, sparsity %.4f) kept",
                best,
                meta.get("global_step"),
                self.current_sparsity,
            )
        for name, module in self._modules.items():
            apply_mask_(
                local_tensor(module.weight), self.masks[name]
            )  # the gathered state dict holds the zeros
        self._apply(kwargs.get("optimizer"))
        self._scores = None
        self._any_pruned = False

    # -- reporting ------------------------------------------------------------------------------------

    def report(self) -> SparsityReport:
        """Counted sparsity of the pruned model: ``hf_lite.pruning.sparsity_report(model, masks)``.

        Returns:
            A :class:`hf_lite.pruning.SparsityReport` (zeros counted from the weights, per layer and overall).

        >>> trainer.train(); print(callback.report().to_markdown())  # doctest: +SKIP
        """
        if self._model is None:
            raise RuntimeError("PruningCallback.report() needs a model: call it after training has started.")
        if self._sharded:  # full masks and weights: a collective under FSDP2, call it on every process
            masks = {n: self._full(n, m) for n, m in self.masks.items()}
            with unsharded(self._model) as model:
                return sparsity_report(model, masks)
        return sparsity_report(self._model, self.masks)
