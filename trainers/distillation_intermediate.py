"""The intermediate-layer terms of :class:`~trainers.distillation_trainer.DistillationTrainer`: hidden states
(through the learned projections when the widths differ) and attention maps, each averaged over the layer
pairs of ``args.layer_map`` and normalized by the attention-mask tokens of the accumulated batch.

>>> from trainers.distillation_intermediate import IntermediateLossMixin
>>> hasattr(IntermediateLossMixin, "_hidden_loss") and hasattr(IntermediateLossMixin, "_attention_loss")
True
"""

from __future__ import annotations

from typing import Any

import torch

from hf_lite import losses
from trainers.distillation_config import resolve_layer_map
from trainers.distillation_models import hidden_states, text_config

__all__ = ["IntermediateLossMixin"]


class IntermediateLossMixin:
    """``_hidden_loss`` and ``_attention_loss`` for a trainer with ``args``, ``model``, ``teachers``,
    ``layer_pairs`` and ``projections`` (the first teacher's layers are matched)."""

    args: Any
    model: Any
    teachers: list
    layer_pairs: list
    projections: Any

    def _hidden_loss(
        self, outputs: Any, teacher_out: Any, attention_mask: torch.Tensor | None, items: Any = None
    ) -> torch.Tensor:
        s_hidden, t_hidden = hidden_states(outputs), hidden_states(teacher_out)
        total = 0.0
        for s, t in self.layer_pairs:
            h = s_hidden[s]
            if self.projections is not None:
                h = self.projections[f"{s}_{t}"](h)
            total = total + losses.hidden_state_loss(
                h,
                t_hidden[t].to(h.device),
                kind=self.args.hidden_loss,
                mask=attention_mask,
                num_items_in_batch=items,
            )
        return total / len(self.layer_pairs)

    def _attention_loss(
        self, outputs: Any, teacher_out: Any, attention_mask: torch.Tensor | None, items: Any = None
    ) -> torch.Tensor:
        if outputs.attentions is None or teacher_out.attentions is None:
            raise ValueError(
                "attention_weight > 0 but the models returned no attentions; load them with attn_implementation='eager'."
            )
        s_cfg, t_cfg = text_config(self.model), text_config(self.teachers[0])
        pairs = [
            (s, t)
            for s, t in resolve_layer_map(
                self.args.layer_map, s_cfg.num_hidden_layers, t_cfg.num_hidden_layers
            )
            if s > 0 and t > 0
        ]
        total = 0.0
        for s, t in pairs:
            total = total + losses.attention_loss(
                outputs.attentions[s - 1],
                teacher_out.attentions[t - 1].to(outputs.attentions[s - 1].device),
                kind=self.args.attention_loss,
                mask=attention_mask,
                num_items_in_batch=items,
            )
        return total / max(1, len(pairs))
