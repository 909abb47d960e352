"""The checkpoint state of :class:`~trainers.structural_callback.StructuralPruningCallback`: saved, found, read.

:class:`StructuralStateMixin` gives the callback ``save_state`` (the original sizes, the stages done with their
kept indices and the running Taylor sums, into the files named in :mod:`trainers._structural_shrink`) and the
methods that find the checkpoint a resumed run belongs to and read that state back, checking that the model
already has the checkpoint's shapes.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from trainers._callback_state import config_changes, resume_candidates
from trainers._structural_shrink import RESUME_ATTR, STRUCTURAL_STATE, STRUCTURAL_STATE_JSON, model_sizes

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import TrainerState, TrainingArguments

    from trainers.structural_config import StructuralPruningConfig

__all__ = ["StructuralStateMixin"]

logger = logging.getLogger(__name__)


class StructuralStateMixin:
    """The state methods of :class:`~trainers.structural_callback.StructuralPruningCallback`: ``save_state``
    (public), ``_resume_folder`` and ``_load_state``."""

    config: StructuralPruningConfig
    original_sizes: dict[str, int]
    stages: list[dict[str, Any]]
    _root: nn.Module | None
    _taylor: dict[str, dict[int, torch.Tensor]]
    _taylor_count: int

    def save_state(self, folder: str | os.PathLike, global_step: int) -> None:
        """Write the original sizes, the stages done (kept indices) and running Taylor sums into ``folder``.

        Called by ``on_save`` on the main process; :func:`shrink_like_checkpoint` reads it back.

        Args:
            folder: an existing checkpoint folder.
            global_step: the optimizer step the state belongs to.

        >>> callback.save_state("out/checkpoint-100", 100)  # doctest: +SKIP
        """
        meta = {
            "global_step": int(global_step),
            "config": self.config.to_dict(),
            "original": self.original_sizes,
            "stages": self.stages,
            "taylor_steps_gathered": self._taylor_count,
        }
        tensors = {
            f"{kind}.{layer}": t.detach().cpu().contiguous()
            for kind, d in self._taylor.items()
            for layer, t in d.items()
        }
        STRUCTURAL_STATE.save(folder, meta, tensors or None)

    def _resume_folder(self, args: TrainingArguments, state: TrainerState) -> str:
        candidates = resume_candidates(
            args,
            state,
            getattr(self._root, RESUME_ATTR, None),  # set by shrink_like_checkpoint
            getattr(self._root, "name_or_path", None),  # a model loaded from the checkpoint folder
        )
        folder = STRUCTURAL_STATE.find(candidates, state.global_step)
        if folder is not None:
            return folder
        raise ValueError(
            f"the Trainer resumes at step {state.global_step}, but no {STRUCTURAL_STATE_JSON} of that step was "
            f"found in {candidates}. StructuralPruningCallback writes it into every checkpoint; call "
            "shrink_like_checkpoint(model, <the checkpoint folder>) before creating the Trainer, or set "
            "TrainingArguments(resume_from_checkpoint=<the checkpoint folder>)."
        )

    def _load_state(self, folder: str, root: nn.Module) -> None:
        meta = STRUCTURAL_STATE.read(folder)
        saved = meta.get("config", {})
        changed = config_changes(saved, self.config.to_dict())
        if changed:
            logger.warning(
                "resuming structural pruning with a changed config %s (saved, now): the stages still to come "
                "follow the new one, so the result will differ from an uninterrupted run.",
                changed,
            )
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
        if self._taylor_count:
            device = next(root.parameters()).device
            for key, tensor in STRUCTURAL_STATE.load_tensors(folder).items():
                kind, layer = key.rsplit(".", 1)
                self._taylor.setdefault(kind, {})[int(layer)] = tensor.to(device)
