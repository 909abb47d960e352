"""The model card of a distillation run: what the trainer did (teacher, losses, pruning, adapter), as
:func:`hf_lite.push_to_hub` states it, written instead of the Trainer's draft card.

>>> from trainers.distillation_card import DistillationCardMixin
>>> sorted(n for n in vars(DistillationCardMixin) if not n.startswith("_"))
['compression_summary', 'create_model_card']
"""

from __future__ import annotations

import os
from typing import Any

from hf_lite._utils import is_hub_id, unwrap_model
from hf_lite.card import CompressionSummary, build_model_card
from hf_lite.summary import describe_adapter, describe_quantization


class DistillationCardMixin:
    """``DistillationTrainer``'s model card: :meth:`compression_summary` and ``Trainer.create_model_card``
    overridden to write the hf-lite card (used with ``push_to_hub=True``)."""

    def compression_summary(self) -> Any:
        """What this run did, for the model card: teacher, distillation settings, pruning, adapter."""
        args = self.args
        teacher = None
        if self.teachers:
            names = [getattr(getattr(t, "config", None), "_name_or_path", "") for t in self.teachers]
            teacher = ", ".join(n for n in names if is_hub_id(n)) or None
        divergence = f"{args.loss_type} (beta={args.beta})" if args.loss_type == "jsd" else args.loss_type
        parts = [f"{divergence} on logits, T={args.temperature}, alpha={args.alpha}"]
        cross = getattr(self, "cross", None)
        if cross is not None and not cross.token_level:
            parts.append(f"across tokenizers ({args.cross_tokenizer_loss} over aligned spans)")
        if args.lmbda > 0:
            sampling = (
                f"sampled at temperature {args.generation_temperature}, top_p={args.top_p}"
                if args.generation_temperature > 0
                else "greedy"
            )
            parts.append(
                f"on-policy: the student's own completions with probability lmbda={args.lmbda} ({sampling}, at "
                f"most {args.max_new_tokens} new tokens)"
            )
        if self.cache_meta is not None:
            parts.append(f"from cached top-{self.cache_meta['k']} teacher log-probs")
        if args.hidden_weight > 0:
            parts.append(
                f"hidden states ({args.hidden_loss}, weight {args.hidden_weight}, layers {args.layer_map})"
            )
        if args.attention_weight > 0:
            parts.append(f"attention maps ({args.attention_loss}, weight {args.attention_weight})")
        if len(self.teachers) > 1:
            parts.append(f"{len(self.teachers)} teachers, weights {self.teacher_weights}")
        pruning, sparsity = None, None
        for callback in self.callback_handler.callbacks:
            if type(callback).__name__ == "PruningCallback":
                cfg = callback.config
                pruning = f"gradual {cfg.method} ({cfg.pattern}, {cfg.scope}), cubic schedule"
                sparsity = float(callback.current_sparsity)
        model = self.accelerator.unwrap_model(self.model)
        return CompressionSummary(
            teacher=teacher,
            distillation="; ".join(parts),
            pruning=pruning,
            sparsity=sparsity,
            quantization=describe_quantization(unwrap_model(model, peft_base=True)),
            adapter=describe_adapter(model),
        )

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: Any = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: Any = None,
        dataset_tags: Any = None,
        dataset: Any = None,
        dataset_args: Any = None,
    ) -> None:
        """The hf-lite model card (the one :func:`hf_lite.push_to_hub` writes) instead of the Trainer's draft."""
        if not self.is_world_process_zero():
            return
        card = build_model_card(
            self.compression_summary(),
            repo_id=self.hub_model_id,
            checkpoint=self.args.output_dir,
            license=license,
            language=language,
            datasets=dataset,
            tags=[tags] if isinstance(tags, str) else tags,
        )
        card.save(os.path.join(self.args.output_dir, "README.md"))
