"""Knowledge distillation as a ``transformers.Trainer`` subclass: a frozen teacher teaches a student.

The student is any model the Trainer can train (full fine-tune, PEFT adapter, 4/8-bit base + adapter);
the teacher is a model object or a Hub id/folder loaded with :func:`hf_lite.load_teacher`. Losses are
the pure functions of :mod:`hf_lite.losses`; this module only arranges the steps:

    teachers forward (eval, no_grad) -> student forward -> one call into hf_lite.losses for the logits
    -> hidden-state and attention terms -> logs

(the configuration, :class:`~trainers.distillation_config.DistillationConfig`, lives beside it)

and keeps the bookkeeping right: exact under gradient accumulation (losses divided by the number of
label tokens of the whole accumulated batch), the teacher placed through the accelerator in evaluation
mode and never saved in checkpoints, hidden-state projections trained with the student but saved beside
it (``distillation_projections.safetensors``) so the student stays a plain checkpoint, and each loss
logged on its own (``loss_kd``, ``loss_ce``, ``loss_hidden``, ``loss_attention``; in evaluation
``eval_loss`` stays the mixed loss, ``eval_loss_ce``/``eval_loss_kd`` beside it: :mod:`trainers.distillation_eval`).

On-policy distillation (``lmbda > 0``, :mod:`trainers.distillation_onpolicy`): before each optimizer step's
counts, the drawn micro-batches become the student's completions of their prompts; the teachers score
them and the logit loss covers the completion tokens only, without cross-entropy.

Across tokenizers (``teacher_tokenizer=``, :mod:`trainers.distillation_cross_tokenizer`): text rows are tokenized
for both models and aligned by characters; the teacher reads its own ids and the hybrid ULD (or ULD) loss
compares the two over the aligned spans, normalized by the counted spans of the accumulated batch.

>>> from trainers import DistillationConfig, DistillationTrainer
>>> args = DistillationConfig("out", temperature=2.0, alpha=0.5, hidden_weight=1.0)
>>> trainer = DistillationTrainer(model=student, teacher_model="org/teacher", args=args,
...                               train_dataset=data)  # doctest: +SKIP
>>> trainer.train()  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import logging
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, Trainer

from hf_lite import losses
from hf_lite._utils import unwrap_model
from hf_lite.data.collate import CROSS_TOKENIZER_KEYS
from hf_lite.loading import freeze, load_teacher
from hf_lite.quantization import keep_bnb_layout_trainable_
from hf_lite.teacher_cache import TEACHER_COLUMNS
from trainers.distillation_cache import TeacherCacheMixin, cache_metadata
from trainers.distillation_card import DistillationCardMixin
from trainers.distillation_config import DistillationConfig
from trainers.distillation_cross_tokenizer import (
    CrossTokenizerDistillation,
    CrossTokenizerLossMixin,
    check_cache_tokenizer,
    cross_tokenizer_setup,
)
from trainers.distillation_eval import EvalLossMixin
from trainers.distillation_intermediate import IntermediateLossMixin
from trainers.distillation_models import common_vocabulary, model_task, use_eager_attention
from trainers.distillation_onpolicy import (
    GENERATED_KEY,
    NOT_MODEL_INPUTS,
    OnPolicyBatches,
    check_on_policy,
    end_of_sequence,
)
from trainers.distillation_projections import (
    ProjectionSync,
    build_projections,
    load_projections,
    save_projections,
)
from trainers.distillation_sharding import prepare_teacher

logger = logging.getLogger(__name__)


class DistillationTrainer(
    CrossTokenizerLossMixin,
    IntermediateLossMixin,
    TeacherCacheMixin,
    EvalLossMixin,
    DistillationCardMixin,
    Trainer,
):
    """A ``Trainer`` whose loss distils one or several frozen teachers into the student.

    Args:
        model: the student (any model ``Trainer`` accepts, including PEFT and 4/8-bit + adapter models).
        teacher_model: a model, a Hub id / folder (loaded with :func:`hf_lite.load_teacher`, in
            ``args.teacher_quantization`` if set), or a list of those for multi-teacher distillation.
        args: a :class:`DistillationConfig`.
        teacher_tokenizer: the teacher's tokenizer (or its Hub id / folder; default ``args.teacher_tokenizer``)
            when it differs from the student's (``processing_class``): distillation across tokenizers on text
            rows (``text``, ``prompt`` + ``completion``, or chat), batched by
            :class:`hf_lite.data.collate.CrossTokenizerCollator` unless ``data_collator`` is given. A list gives
            one tokenizer per teacher (several teachers with tokenizers of their own).
        **kwargs: everything else ``transformers.Trainer`` takes.

    Vocabulary preflight (:func:`hf_lite.data.compare_vocabularies` when ``teacher_tokenizer`` is given):
    identical tokenizers, heads padded beyond the tokenizer's length and one tokenizer extending the other
    take the token-level path (logits cut to the common size); different tokenizers take the span path. Without
    ``teacher_tokenizer``, a teacher folder whose own tokenizer differs from the student's takes the span path
    with that tokenizer (``args.cross_tokenizer=False``: an error instead), and heads that differ otherwise are
    an error before training that names ``teacher_tokenizer`` as the fix. Classification heads
    must have the same number of labels.

    >>> trainer = DistillationTrainer(model=student, teacher_model=teacher, args=DistillationConfig("out"),
    ...                               train_dataset=train)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: PreTrainedModel | nn.Module | None = None,
        teacher_model: Any = None,
        args: DistillationConfig | None = None,
        *,
        teacher_tokenizer: Any = None,
        **kwargs: Any,
    ) -> None:
        if args is None:
            args = DistillationConfig(output_dir="tmp_trainer")
        if not isinstance(args, DistillationConfig):
            raise TypeError(
                f"args must be a DistillationConfig (TrainingArguments plus the distillation fields); got "
                f"{type(args).__name__}. Build it with DistillationConfig(output_dir, ...)."
            )
        self.cache_meta = cache_metadata(kwargs.get("train_dataset"))
        if teacher_model is None and self.cache_meta is None:
            raise ValueError(
                "teacher_model is required: pass a model, a Hub id or a folder (or a list of those), or train from a "
                "teacher cache (hf_lite.teacher_cache.precompute_teacher_cache) with teacher_model=None."
            )
        if teacher_model is not None and self.cache_meta is not None:
            raise ValueError(
                "Both teacher_model and a train_dataset with cached teacher outputs were given: pass teacher_model=None "
                "to train from the cache (no teacher in memory), or a dataset without the teacher_topk_* columns."
            )
        if args.lmbda > 0 and self.cache_meta is not None:
            check_on_policy(args, None, cached=True)
        teacher_tokenizer = teacher_tokenizer if teacher_tokenizer is not None else args.teacher_tokenizer
        if self.cache_meta is not None:
            check_cache_tokenizer(self.cache_meta, teacher_tokenizer, kwargs.get("processing_class"))
        self.cross: CrossTokenizerDistillation | None = None
        super().__init__(model=model, args=args, **kwargs)
        # A 4-bit student loaded elsewhere than load_model: keep evaluation (and on-policy generation, also in
        # eval mode) from breaking its training (CPU).
        keep_bnb_layout_trainable_(self.model)
        self.on_policy: OnPolicyBatches | None = None
        if self.cache_meta is not None:
            self._init_from_cache(args)
            return
        teachers = list(teacher_model) if isinstance(teacher_model, (list, tuple)) else [teacher_model]
        if args.teacher_weights is not None and len(args.teacher_weights) != len(teachers):
            raise ValueError(
                f"teacher_weights has {len(args.teacher_weights)} entries for {len(teachers)} teacher(s): give one each."
            )
        self.teacher_weights = args.teacher_weights or [1.0 / len(teachers)] * len(teachers)
        self.task = model_task(self.model)
        self.teachers = [self._prepare_teacher(t) for t in teachers]
        self.cross = cross_tokenizer_setup(
            args, teacher_tokenizer, self.processing_class, self.task, teachers, self.model, self.teachers
        )
        if self.cross is not None and kwargs.get("data_collator") is None:
            self.data_collator = self.cross.collator  # text rows, tokenized for both models
            with args.main_process_first(desc="tokenizing and aligning for student and teacher"):
                self.train_dataset = self.cross.encode_dataset(self.train_dataset)  # once per example
        spans = self.cross is not None and not self.cross.token_level  # no common vocabulary to cut logits to
        self._vocab_size = None if spans else self._preflight_vocabulary()
        if args.attention_weight > 0:
            for m in (self.model, *self.teachers):
                use_eager_attention(m)
        self.projections = self._build_projections()
        if self.projections is not None:
            self.add_callback(ProjectionSync(self))
        # Count label tokens of the accumulated batch for every model, so losses are exact under accumulation.
        self.model_accepts_loss_kwargs = True
        self._component_sums: dict[str, torch.Tensor] = {}
        self._component_last_step = 0
        self._step_counts: dict[str, torch.Tensor] | None = None
        if args.lmbda > 0:  # on-policy distillation (trainers.distillation_onpolicy); lmbda=0 changes nothing
            check_on_policy(args, self.task, cached=False, sharding=self._sharding())
            retokenize = self.cross.retokenize if spans else None  # across tokenizers: text again, both sides
            self.on_policy = OnPolicyBatches(
                args, *end_of_sequence(self.processing_class, self.model), retokenize
            )

    # ------------------------------------------------------------------------------------------- setup

    def _sharding(self) -> str | None:
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        if self.is_fsdp_enabled:
            return "FSDP"
        return "DeepSpeed ZeRO-3" if plugin is not None and plugin.zero_stage == 3 else None

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        # Keep what the collators read through remove_unused_columns: the prompt length of prompt/completion
        # data (CompletionCollator) and the cached teacher columns.
        extra = ["prompt_length", *(TEACHER_COLUMNS if self.cache_meta is not None else ())]
        extra += self.cross.collator.columns if self.cross is not None else []
        self._signature_columns = list(dict.fromkeys([*self._signature_columns, *extra]))

    def _prepare_teacher(self, teacher: Any) -> nn.Module:
        if isinstance(teacher, (str, os.PathLike)):
            task = self.task or "causal-lm"
            teacher = load_teacher(teacher, task, quantization=self.args.teacher_quantization)
        elif isinstance(teacher, nn.Module):
            teacher = freeze(teacher)
        else:
            raise TypeError(
                f"teacher_model must be a model, a Hub id or a folder; got {type(teacher).__name__}."
            )
        teacher_task = model_task(teacher)
        if self.task is not None and teacher_task is not None and teacher_task != self.task:
            raise ValueError(
                f"The teacher ({type(teacher).__name__}, task {teacher_task!r}) and the student "
                f"({type(self.model).__name__}, task {self.task!r}) have different heads: distillation compares their "
                f"outputs position by position. Load the teacher for task {self.task!r}."
            )
        if (
            getattr(teacher, "hf_device_map", None)
            or getattr(teacher, "is_loaded_in_4bit", False)
            or getattr(teacher, "is_loaded_in_8bit", False)
        ):
            return teacher  # placed by from_pretrained (device_map / bitsandbytes); cannot be moved
        # Evaluation mode: sharded for FSDP2 / DeepSpeed ZeRO-3 (trainers.distillation_sharding), frozen; never
        # wrapped for gradient sync, given to the optimizer or saved.
        return prepare_teacher(self.accelerator, teacher)

    def _preflight_vocabulary(self) -> int | None:
        tokenizer_len = len(self.processing_class) if hasattr(self.processing_class, "__len__") else None
        return common_vocabulary(self.model, self.teachers, self.task, tokenizer_len)

    def _build_projections(self) -> nn.ModuleDict | None:
        if self.args.hidden_weight <= 0:
            return None
        self.layer_pairs, projections = build_projections(self.model, self.teachers[0], self.args)
        return projections

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model) if model is not None else super().create_optimizer()
        if self.projections is not None and not any(
            p is q for g in optimizer.param_groups for p in g["params"] for q in self.projections.parameters()
        ):
            optimizer.add_param_group({"params": list(self.projections.parameters()), "weight_decay": 0.0})
        return optimizer

    # ---------------------------------------------------------------------------------------- the loss

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """One micro-batch: teachers forward -> student forward -> logit loss -> hidden/attention terms -> logs."""
        args = self.args
        labels = inputs.get("labels")
        if args.alpha < 1.0 and labels is None:
            raise ValueError(
                f"alpha={args.alpha} mixes in cross-entropy on the labels, but the batch has no 'labels' column. "
                "Add labels to the dataset, or set alpha=1.0 for pure distillation (e.g. on an unlabeled transfer set)."
            )
        if self.cross is not None and not self.cross.token_level:
            return self._cross_tokenizer_loss(model, inputs, return_outputs, num_items_in_batch)
        model_inputs, cached, extra = self._split_inputs(model, inputs, labels)
        keep = self._logits_to_keep(model, labels)
        if keep:  # the prompt's logits are never read: neither model computes them
            extra = {**extra, "logits_to_keep": keep}
            cached = {k: v[:, -keep:] for k, v in cached.items()}
        # The teachers first: their activations are freed before the student's (kept for backward) exist,
        # so the step's peak memory is the student's plus the teachers' outputs, not plus their activations.
        with torch.no_grad():
            teacher_outputs = [t(**model_inputs, **extra) for t in self.teachers]  # none with a teacher cache
        outputs = model(**model_inputs, **extra)

        # During training every loss is divided by its item count over the whole accumulated batch and all
        # processes (counted in _get_num_items_in_batch): micro-batches and ranks add up to the full batch.
        training = model.training and self._step_counts is not None
        kd_items = (
            num_items_in_batch if labels is not None else (self._step_counts["kd"] if training else None)
        )
        token_items = self._step_counts["tokens"] if training else None
        self.loss_is_scaled_for_ga = training
        s_logits, t_logits = self._aligned_logits(outputs.logits, teacher_outputs)
        kd_labels, kd_mask = self._kd_targets(labels, model_inputs)
        if keep:
            kd_labels = kd_labels[:, -keep:]
        # The student's own completions (lmbda > 0) are no target for cross-entropy: KD only, at its weight alpha.
        generated = bool(inputs.get(GENERATED_KEY, False))
        logit = losses.logit_distillation_loss(
            s_logits,
            t_logits,
            teacher_topk_logprobs=cached.get("teacher_topk_logprobs"),
            teacher_topk_indices=cached.get("teacher_topk_indices"),
            labels=kd_labels,
            mask=kd_mask,
            alpha=1.0 if generated else args.alpha,
            loss_type=args.loss_type,
            temperature=args.temperature,
            beta=args.beta,
            chunk_size=args.chunk_size,
            num_items_in_batch=kd_items,
            compiled=args.compile_loss,
        )
        loss, components = (logit.loss * args.alpha if generated else logit.loss), {"loss_kd": logit.kd}
        if logit.ce is not None:
            components["loss_ce"] = logit.ce

        attention_mask = model_inputs.get("attention_mask")
        if args.hidden_weight > 0:
            components["loss_hidden"] = self._hidden_loss(
                outputs, teacher_outputs[0], attention_mask, token_items
            )
            loss = loss + args.hidden_weight * components["loss_hidden"]
        if args.attention_weight > 0:
            components["loss_attention"] = self._attention_loss(
                outputs, teacher_outputs[0], attention_mask, token_items
            )
            loss = loss + args.attention_weight * components["loss_attention"]

        if training and self.accelerator.num_processes > 1 and args.average_tokens_across_devices:
            # The counts span every process while DDP averages gradients over processes: undo the average.
            loss = loss * self.accelerator.num_processes
        if training:
            self._record(components)
        elif labels is not None:  # evaluation: eval_loss_ce (the plain CE, also with alpha=1), eval_loss_kd
            self.eval_parts.add_batch(logit, s_logits, kd_labels, labels.shape[0], self.gather_function)
        return (loss, outputs) if return_outputs else loss

    def _split_inputs(
        self, model: nn.Module, inputs: dict[str, Any], labels: torch.Tensor | None
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, bool]]:
        """``(model inputs, cached teacher columns, output flags)``: labels and cached teacher outputs are
        taken out of the models' inputs; the flags ask for the hidden states / attentions the losses need."""
        dropped = (
            *NOT_MODEL_INPUTS,
            *CROSS_TOKENIZER_KEYS,
        )  # the collator's teacher ids, unused on this path
        model_inputs = {k: v for k, v in inputs.items() if k != "labels" and k not in dropped}
        if self.task == "seq2seq-lm" and labels is not None and "decoder_input_ids" not in model_inputs:
            unwrapped = self.accelerator.unwrap_model(model)
            model_inputs["decoder_input_ids"] = unwrapped.prepare_decoder_input_ids_from_labels(labels=labels)
        cached = {k: model_inputs.pop(k) for k in TEACHER_COLUMNS if k in model_inputs}
        extra = {"output_hidden_states": True} if self.args.hidden_weight > 0 else {}
        if self.args.attention_weight > 0:
            extra["output_attentions"] = True
        return model_inputs, cached, extra

    def _logits_to_keep(self, model: nn.Module, labels: torch.Tensor | None) -> int:
        """How many last positions the logit loss reads (0: all). With a causal LM and labels, the positions
        before the first one that predicts a label of the batch (the prompts of prompt/completion data) are
        dropped, when every model takes ``logits_to_keep``."""
        if (
            not self.args.skip_prompt_logits
            or self.task != "causal-lm"
            or labels is None
            or self.cross is not None
        ):
            return 0
        counted = labels[:, 1:].ne(losses.IGNORE_INDEX).any(0)  # position i predicts token i + 1
        first = int(counted.float().argmax()) if bool(counted.any()) else 0
        if first == 0 or not all(_takes_logits_to_keep(m) for m in (model, *self.teachers)):
            return 0
        return labels.shape[1] - first

    def _kd_targets(
        self, labels: torch.Tensor | None, model_inputs: dict[str, Any]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(labels, mask)`` of the positions the logit loss covers."""
        if self.task == "causal-lm":
            # Shift the targets, not the logits: position i predicts token i + 1 and the last position nothing.
            # Slicing logits[:, :-1] would make backward allocate and zero a full-size gradient every step.
            if labels is not None:
                return losses.shift_labels(labels), None
            return None, F.pad(_attention_mask(model_inputs)[:, 1:], (0, 1), value=0)
        if self.task == "token-classification" and labels is None:
            return None, _attention_mask(model_inputs)
        return labels, None

    def _aligned_logits(
        self, student_logits: torch.Tensor, teacher_outputs: list[Any]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Both models' logits cut to the common vocabulary, the teachers mixed into one (``None`` without
        teachers: training from a cache)."""
        n = self._vocab_size or student_logits.shape[-1]
        student_logits = student_logits[..., :n]
        if not teacher_outputs:
            return student_logits, None
        logits = [o.logits[..., :n].to(student_logits.device) for o in teacher_outputs]
        teacher = losses.mix_teacher_logits(
            logits, self.teacher_weights, loss_type=self.args.loss_type, temperature=self.args.temperature
        )
        return student_logits, teacher

    def get_batch_samples(
        self, epoch_iterator: Any, num_batches: int, device: torch.device
    ) -> tuple[list, Any]:
        """The optimizer step's micro-batches; with ``lmbda > 0`` the drawn ones are first replaced by the
        student's completions of their prompts, so the item counts below are those of what is trained on."""
        if self.on_policy is None:
            return super().get_batch_samples(epoch_iterator, num_batches, device)
        batch_samples = []
        for _ in range(num_batches):
            try:
                batch_samples.append(next(epoch_iterator))
            except StopIteration:
                break
        student = self.accelerator.unwrap_model(self.model)
        batch_samples = self.on_policy.prepare(student, batch_samples, self.state.global_step)
        return batch_samples, self._get_num_items_in_batch(batch_samples, device)

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | int | None:
        """The label count (Trainer's), plus the counts the other losses are normalized by: attention-mask
        tokens (hidden states, attention maps) and, without labels, the positions the KD loss covers."""
        num_items = super()._get_num_items_in_batch(batch_samples, device)
        tokens = sum(_attention_mask(b).sum() for b in batch_samples)
        if self.cross is not None and not self.cross.token_level:  # the aligned spans, per teacher tokenizer
            kd = self.cross.count(batch_samples)
        elif self.task == "causal-lm":
            kd = sum(_attention_mask(b)[:, 1:].sum() for b in batch_samples)
        elif self.task == "token-classification":
            kd = tokens
        else:
            kd = sum(torch.tensor(len(b["input_ids"])) for b in batch_samples)
        counts = torch.cat([torch.as_tensor(tokens).reshape(1), torch.as_tensor(kd).reshape(-1)]).to(device)
        if self.args.world_size > 1 and self.args.average_tokens_across_devices:
            counts = self.accelerator.gather(counts.unsqueeze(0)).sum(0)
        # kd: one count, or one per teacher tokenizer across tokenizers
        self._step_counts = {"tokens": counts[0], "kd": counts[1] if counts.numel() == 2 else counts[1:]}
        return num_items

    # -------------------------------------------------------------------------------- logs and files

    def _record(self, components: dict[str, torch.Tensor]) -> None:
        # Summed over micro-batches (each is its share of the step's loss), then over processes at log time.
        if not self._component_sums:  # first micro-batch since the last log (or since a resume)
            self._component_last_step = self.state.global_step
        for name, value in components.items():
            value = value.detach().float()
            self._component_sums[name] = (
                self._component_sums.get(name, torch.zeros((), device=value.device)) + value
            )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._component_sums:
            steps = max(1, self.state.global_step - self._component_last_step)
            for name, total in self._component_sums.items():
                total = self.accelerator.reduce(total.to(self.args.device), reduction="sum")
                logs[name] = round(total.item() / steps, 6)
            self._component_sums = {}
        if "loss" in logs and self.on_policy is not None:
            logs.update(self.on_policy.logs(self._sum_over_processes))
        super().log(logs, start_time)

    def _sum_over_processes(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(tensor.to(self.args.device), reduction="sum").cpu()

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        if self.projections is not None:
            save_projections(self.projections, self.layer_pairs, output_dir or self.args.output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.projections is not None:
            load_projections(self.projections, resume_from_checkpoint, self.args.device)


# --------------------------------------------------------------------------------------- helpers


def _takes_logits_to_keep(model: nn.Module) -> bool:
    """Whether the (unwrapped, PEFT base) model's forward has transformers' ``logits_to_keep`` argument."""
    return "logits_to_keep" in inspect.signature(unwrap_model(model, peft_base=True).forward).parameters


def _attention_mask(batch: dict[str, Any]) -> torch.Tensor:
    mask = batch.get("attention_mask")
    return mask if mask is not None else torch.ones_like(batch["input_ids"])
