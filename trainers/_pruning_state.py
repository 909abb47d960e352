"""The checkpoint state of :class:`~trainers.pruning_callback.PruningCallback`: written into, found in and
read back from checkpoint folders.

:data:`PRUNING_STATE_NAME` holds the masks (full tensors, gathered from the shards under FSDP2) and the
movement scores, :data:`PRUNING_STATE_JSON` the step, the sparsity in force, the config and the layer names;
:data:`PRUNING_STATE` names them for :class:`~trainers._callback_state.CallbackState`.
:class:`PruningStateMixin` gives the callback ``save_state`` and the methods that build, check and restore
that state (cutting the full masks back to this process's shards under FSDP2).

>>> PRUNING_STATE_NAME, PRUNING_STATE_JSON
('pruning_state.safetensors', 'pruning_state.json')
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from hf_lite.pruning.masks import mask_sparsity
from hf_lite.pruning.sharded import gather_full, shard_like
from trainers._callback_state import CallbackState, config_changes, resume_candidates

if TYPE_CHECKING:
    from torch import nn
    from transformers import TrainerState, TrainingArguments

    from trainers.pruning_config import PruningConfig

__all__ = ["PRUNING_STATE_NAME", "PRUNING_STATE_JSON", "PRUNING_STATE", "PruningStateMixin"]

logger = logging.getLogger(__name__)

#: File written into every checkpoint folder: masks (``masks.<layer>``, bool) and movement scores
#: (``scores.<layer>``, float32).
PRUNING_STATE_NAME = "pruning_state.safetensors"
#: Its companion: step, sparsity in force, the config and the layer names (plain JSON).
PRUNING_STATE_JSON = "pruning_state.json"

#: How the state is written into, found in and read from checkpoints (see :mod:`trainers._callback_state`).
PRUNING_STATE = CallbackState(
    PRUNING_STATE_JSON, PRUNING_STATE_NAME, owner="PruningCallback", what="pruning state"
)


class PruningStateMixin:
    """The state methods of :class:`~trainers.pruning_callback.PruningCallback`: ``save_state`` (public),
    ``_state_dict``, ``_load_state``, ``_resume_folder`` and ``_full`` (the full tensor of a local shard)."""

    config: PruningConfig
    masks: dict[str, torch.Tensor]
    current_sparsity: float
    _modules: dict[str, nn.Module]
    _scores: dict[str, torch.Tensor] | None
    _last_update_step: int | None
    _sharded: bool
    _set_masks: Callable[[Mapping[str, torch.Tensor]], None]

    def _full(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """The full tensor of a layer's local mask or scores (gathered under FSDP2: a collective)."""
        full = gather_full(tensor, self._modules[name].weight) if self._sharded else tensor
        return full.detach().contiguous().cpu()

    def _state_dict(self, global_step: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        masks = {n: self._full(n, m) for n, m in self.masks.items()}
        tensors = {f"masks.{n}": m for n, m in masks.items()}
        if self._scores is not None:
            tensors.update({f"scores.{n}": self._full(n, s) for n, s in self._scores.items()})
        meta = {
            "global_step": int(global_step),
            "last_update_step": self._last_update_step,
            "current_sparsity": self.current_sparsity,
            "counted_sparsity": mask_sparsity(masks),
            "has_scores": self._scores is not None,
            "layers": list(self.masks),
            "config": self.config.to_dict(),
        }
        return tensors, meta

    def save_state(self, folder: str | os.PathLike, global_step: int) -> None:
        """Write masks, movement scores and schedule position into ``folder`` (atomically; no pickle).

        Called by ``on_save`` on the main process; call it yourself only to checkpoint outside a Trainer.
        Under FSDP2 the masks are gathered first, a collective: call it on every process (each writes).

        Args:
            folder: an existing checkpoint folder.
            global_step: the optimizer step the state belongs to.

        >>> callback.save_state("out/checkpoint-100", 100)  # doctest: +SKIP
        """
        tensors, meta = self._state_dict(global_step)
        PRUNING_STATE.save(folder, meta, tensors, indent=2)

    def _load_state(self, folder: str, global_step: int | None) -> dict[str, Any]:
        meta = PRUNING_STATE.read(folder)
        if global_step is not None and meta.get("global_step") != global_step:
            raise ValueError(
                f"{folder}/{PRUNING_STATE_JSON} holds the pruning state of step {meta.get('global_step')}, but "
                f"the Trainer resumes at step {global_step}; resume from the checkpoint folder it came from."
            )
        layers = meta.get("layers", [])
        if layers != list(self._modules):
            missing = sorted(set(self._modules) - set(layers))
            extra = sorted(set(layers) - set(self._modules))
            raise ValueError(
                f"the pruning state in {folder} is for other layers than this run targets (missing: "
                f"{missing[:3]}, extra: {extra[:3]}). Resume with the include/exclude of the run that saved it."
            )
        saved = meta.get("config", {})
        changed = config_changes(saved, self.config.to_dict())
        if changed:
            logger.warning(
                "resuming pruning with a changed config %s (saved, now): the result will differ from an "
                "uninterrupted run.",
                changed,
            )
        tensors = PRUNING_STATE.load_tensors(folder)
        masks = {}
        for name in self._modules:
            mask = tensors[f"masks.{name}"]
            weight = self._modules[name].weight
            if mask.dtype != torch.bool or mask.shape != weight.shape:
                raise ValueError(
                    f"{folder}/{PRUNING_STATE_NAME}: the mask of {name} has dtype {mask.dtype} and shape "
                    f"{tuple(mask.shape)}, the layer's weight {tuple(weight.shape)}; it is not this model's."
                )
            masks[name] = shard_like(mask, weight) if self._sharded else mask
        self._set_masks(masks)
        if meta.get("has_scores"):
            self._scores = {
                n: (shard_like(tensors[f"scores.{n}"], m.weight) if self._sharded else tensors[f"scores.{n}"])
                for n, m in self._modules.items()
            }
            self._scores = {n: s.to(self._modules[n].weight.device) for n, s in self._scores.items()}
        self._last_update_step = meta.get("last_update_step")
        self.current_sparsity = float(meta.get("current_sparsity", 0.0))
        return meta

    def _resume_folder(self, args: TrainingArguments, state: TrainerState) -> str:
        candidates = resume_candidates(args, state)
        folder = PRUNING_STATE.find(candidates, state.global_step)
        if folder is not None:
            return folder
        raise ValueError(
            f"the Trainer resumes at step {state.global_step}, but no pruning state of that step "
            f"({PRUNING_STATE_NAME} and {PRUNING_STATE_JSON}) was found in {candidates}. PruningCallback "
            "writes it into every checkpoint it sees saved; set TrainingArguments(resume_from_checkpoint=<the "
            "checkpoint folder>) when it lies outside output_dir, or start pruning afresh without resuming."
        )
