"""Knowledge distillation as a ``transformers.Trainer`` subclass: a frozen teacher teaches a student.

The student is any model the Trainer can train (full fine-tune, PEFT adapter, 4/8-bit base + adapter);
the teacher is a model object or a Hub id/folder loaded with :func:`hf_lite.load_teacher`. Losses are
the pure functions of :mod:`hf_lite.losses`; this module only arranges the steps:

    student forward -> teacher forward (eval, no_grad) -> losses -> weighted sum

and keeps the bookkeeping right: exact under gradient accumulation (losses divided by the number of
label tokens of the whole accumulated batch), the teacher placed through the accelerator in evaluation
mode and never saved in checkpoints, hidden-state projections trained with the student but saved beside
it (``distillation_projections.safetensors``) so the student stays a plain checkpoint, and each loss
logged on its own (``loss_kd``, ``loss_ce``, ``loss_hidden``, ``loss_attention``).

>>> from trainers import DistillationConfig, DistillationTrainer
>>> args = DistillationConfig("out", temperature=2.0, alpha=0.5, hidden_weight=1.0)
>>> trainer = DistillationTrainer(model=student, teacher_model="org/teacher", args=args,
...                               train_dataset=data)  # doctest: +SKIP
>>> trainer.train()  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments

from hf_lite import losses
from hf_lite.loading import freeze, load_teacher
from hf_lite.tasks import TASKS

logger = logging.getLogger(__name__)

PROJECTIONS_FILE = "distillation_projections.safetensors"


@dataclass
class DistillationConfig(TrainingArguments):
    """``TrainingArguments`` plus the distillation settings; every field is a command-line flag and a YAML key.

    The training loss is ``alpha * loss_kd + (1 - alpha) * loss_ce + hidden_weight * loss_hidden
    + attention_weight * loss_attention``.

    >>> args = DistillationConfig("out", temperature=4.0, alpha=0.9, loss_type="jsd", beta=0.5)
    >>> args.temperature, args.loss_type
    (4.0, 'jsd')
    """

    temperature: float = field(
        default=2.0,
        metadata={"help": "Softmax temperature T > 0 of both models; the KD loss is scaled by T**2."},
    )
    alpha: float = field(
        default=0.5,
        metadata={
            "help": "Weight of the distillation loss in [0, 1]; 1 - alpha weighs cross-entropy on the labels."
        },
    )
    loss_type: Literal["forward_kl", "reverse_kl", "jsd", "tv", "mse"] = field(
        default="forward_kl",
        metadata={"help": "Divergence between the token distributions (see hf_lite.losses)."},
    )
    beta: float = field(
        default=0.5, metadata={"help": "Interpolation of the generalized JSD in [0, 1] (loss_type='jsd')."}
    )
    chunk_size: int | None = field(
        default=None,
        metadata={
            "help": "Compute the logit loss over this many tokens at a time (large vocabularies; same value and "
            "gradient; e.g. 128: benchmarks/RESULTS.md has the memory it saves)."
        },
    )
    compile_loss: bool = field(
        default=False,
        metadata={
            "help": "Run the logit loss through torch.compile. The first steps pay a few seconds of compilation; "
            "without a working compiler it warns once and runs eagerly. On the CPU the default (eager, blocked) "
            "loss measured as fast (benchmarks/RESULTS.md)."
        },
    )
    hidden_weight: float = field(
        default=0.0, metadata={"help": "Weight of hidden-state matching (0 turns it off)."}
    )
    hidden_loss: Literal["mse", "cosine"] = field(default="mse", metadata={"help": "Hidden-state distance."})
    layer_map: str = field(
        default="uniform",
        metadata={"help": "Student->teacher layer pairs for hidden/attention matching: 'uniform', 'last', or "
                          "explicit pairs 's:t,s:t' (hidden_states indices: 0 is the embeddings, i the output of layer i)."},
    )  # fmt: skip
    hidden_projection: bool = field(
        default=True,
        metadata={
            "help": "Learn a linear map from student to teacher width when they differ (saved beside the student)."
        },
    )
    attention_weight: float = field(
        default=0.0, metadata={"help": "Weight of attention-map matching (0 turns it off)."}
    )
    attention_loss: Literal["kl", "mse"] = field(default="kl", metadata={"help": "Attention-map distance."})
    teacher_weights: list[float] | None = field(
        default=None,
        metadata={"help": "Weights of several teachers' distributions (default: equal); sum to 1."},
    )
    teacher_quantization: str | None = field(
        default=None,
        metadata={"help": "Load a teacher given by id/path in '4bit' or '8bit' (None: full precision)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature} must be > 0 (typical: 1 to 4).")
        if not isinstance(self.compile_loss, bool):
            raise ValueError(
                f"compile_loss={self.compile_loss!r} must be True or False (from YAML or the command line: true/false)."
            )
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} must be in [0, 1].")
        for name in ("hidden_weight", "attention_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0 (0 turns the loss off).")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size={self.chunk_size} must be a positive number of tokens, or None.")
        if self.teacher_weights is not None:
            weights = list(self.teacher_weights)
            if any(not 0.0 <= w <= 1.0 for w in weights) or abs(sum(weights) - 1.0) > 1e-6:
                raise ValueError(
                    f"teacher_weights={weights} must each be in [0, 1] and sum to 1 (one weight per teacher)."
                )
        parse_layer_map(self.layer_map)  # syntax only; ranges are checked against the models
        if self.loss_type != "jsd" and self.beta != 0.5:
            logger.warning("beta=%s is ignored: it only applies to loss_type='jsd'.", self.beta)
        if self.loss_type == "mse" and self.temperature != 2.0:
            logger.warning("temperature=%s is ignored by loss_type='mse' (it cancels out).", self.temperature)


def parse_layer_map(spec: str | Sequence[Sequence[int]]) -> str | list[tuple[int, int]]:
    """Parse ``"uniform"``, ``"last"`` or pairs (``"1:2,2:4"`` or ``[[1, 2], [2, 4]]``).

    >>> parse_layer_map("1:2, 3:6")
    [(1, 2), (3, 6)]
    """
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text in ("uniform", "last"):
            return text
        if not re.fullmatch(r"\s*\d+\s*:\s*\d+\s*(,\s*\d+\s*:\s*\d+\s*)*", text):
            raise ValueError(
                f"layer_map={spec!r} is not understood. Use 'uniform', 'last', or student:teacher pairs "
                "such as '2:4,4:8' (hidden_states indices; 0 is the embedding output)."
            )
        return [(int(a), int(b)) for a, b in (pair.split(":") for pair in text.split(","))]
    pairs = [tuple(int(x) for x in pair) for pair in spec]
    if any(len(p) != 2 for p in pairs):
        raise ValueError(f"layer_map={spec!r}: each pair must be (student_layer, teacher_layer).")
    return pairs  # type: ignore[return-value]


def resolve_layer_map(
    spec: str | Sequence[Sequence[int]], n_student: int, n_teacher: int
) -> list[tuple[int, int]]:
    """Student/teacher ``hidden_states`` index pairs for ``n_student`` and ``n_teacher`` layers.

    ``"uniform"`` pairs student layer ``i`` with teacher layer ``round(i * n_teacher / n_student)``
    (DistilBERT/TinyBERT); ``"last"`` pairs the last layers. Index 0 is the embedding output.

    >>> resolve_layer_map("uniform", 3, 6)
    [(1, 2), (2, 4), (3, 6)]
    >>> resolve_layer_map("last", 3, 6)
    [(3, 6)]
    """
    parsed = parse_layer_map(spec)
    if parsed == "uniform":
        return [(i, round(i * n_teacher / n_student)) for i in range(1, n_student + 1)]
    if parsed == "last":
        return [(n_student, n_teacher)]
    for s, t in parsed:
        if not (0 <= s <= n_student and 0 <= t <= n_teacher):
            raise ValueError(
                f"layer_map pair {s}:{t} is out of range: the student has layers 0..{n_student} and the teacher "
                f"0..{n_teacher} (0 is the embedding output)."
            )
    return list(parsed)


def model_task(model: nn.Module) -> str | None:
    """The hf-lite task of a transformers model (``causal-lm``, ``sequence-classification``, ...), or None."""
    import transformers

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for task, auto_name in TASKS.items():
        mapping = getattr(transformers, auto_name)._model_mapping
        config_cls = type(getattr(base, "config", None))
        if config_cls in mapping and mapping[config_cls] is type(base):
            return task
    return None


class _ProjectionSync(TrainerCallback):
    """The projections live outside the (DDP-wrapped) student, so the Trainer neither averages their
    gradients over processes nor zeroes them (it calls ``model.zero_grad()``): do both here."""

    def __init__(self, trainer: DistillationTrainer) -> None:
        self.trainer = trainer

    def on_pre_optimizer_step(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        projections = self.trainer.projections
        if projections is None or args.world_size <= 1 or not torch.distributed.is_initialized():
            return
        for param in projections.parameters():
            if param.grad is not None:
                torch.distributed.all_reduce(param.grad, op=torch.distributed.ReduceOp.SUM)
                param.grad /= args.world_size

    def on_optimizer_step(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        if self.trainer.projections is not None:
            self.trainer.projections.zero_grad(set_to_none=True)


class DistillationTrainer(Trainer):
    """A ``Trainer`` whose loss distils one or several frozen teachers into the student.

    Args:
        model: the student (any model ``Trainer`` accepts, including PEFT and 4/8-bit + adapter models).
        teacher_model: a model, a Hub id / folder (loaded with :func:`hf_lite.load_teacher`, in
            ``args.teacher_quantization`` if set), or a list of those for multi-teacher distillation.
        args: a :class:`DistillationConfig`.
        **kwargs: everything else ``transformers.Trainer`` takes.

    Vocabulary preflight: teacher and student logits whose sizes differ only by padding rows beyond the
    tokenizer's length (``processing_class``) are cut to the common size; any other mismatch is an error
    before training starts. Classification heads must have the same number of labels.

    >>> trainer = DistillationTrainer(model=student, teacher_model=teacher, args=DistillationConfig("out"),
    ...                               train_dataset=train)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: PreTrainedModel | nn.Module | None = None,
        teacher_model: Any = None,
        args: DistillationConfig | None = None,
        **kwargs: Any,
    ) -> None:
        if args is None:
            args = DistillationConfig(output_dir="tmp_trainer")
        if not isinstance(args, DistillationConfig):
            raise TypeError(
                f"args must be a DistillationConfig (TrainingArguments plus the distillation fields); got "
                f"{type(args).__name__}. Build it with DistillationConfig(output_dir, ...)."
            )
        self.cache_meta = _cache_metadata(kwargs.get("train_dataset"))
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
        super().__init__(model=model, args=args, **kwargs)
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
        self._vocab_size = self._preflight_vocabulary()
        if args.attention_weight > 0:
            for m in (self.model, *self.teachers):
                _eager_attention(m)
        self.projections = self._build_projections()
        if self.projections is not None:
            self.add_callback(_ProjectionSync(self))
        # Count label tokens of the accumulated batch for every model, so losses are exact under accumulation.
        self.model_accepts_loss_kwargs = True
        self._component_sums: dict[str, torch.Tensor] = {}
        self._component_last_step = 0
        self._step_counts: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------------------------------- setup

    def _init_from_cache(self, args: DistillationConfig) -> None:
        meta = self.cache_meta
        unsupported = {
            "hidden_weight": args.hidden_weight > 0, "attention_weight": args.attention_weight > 0,
            "loss_type": args.loss_type != "forward_kl", "teacher_weights": args.teacher_weights is not None,
            "chunk_size": args.chunk_size is not None,
        }  # fmt: skip
        bad = [k for k, v in unsupported.items() if v]
        if bad:
            raise ValueError(
                f"Training from a teacher cache supports the top-k forward KL (plus cross-entropy) only; unset {bad}. "
                "Hidden states, attention maps and other divergences need the live teacher."
            )
        if abs(meta["temperature"] - args.temperature) > 1e-12:
            raise ValueError(
                f"The teacher cache was computed at temperature={meta['temperature']} but args.temperature="
                f"{args.temperature}: set temperature={meta['temperature']} or recompute the cache."
            )
        self.teachers, self.teacher_weights, self.projections = [], [1.0], None
        self.task = model_task(self.model)
        self._vocab_size = int(meta["vocab_size"])
        self.model_accepts_loss_kwargs = True
        self._component_sums = {}
        self._component_last_step = 0
        self._step_counts = None

    def get_train_dataloader(self) -> Any:
        """Training from a teacher cache reads it a batch of rows at a time
        (:class:`hf_lite.teacher_cache.TeacherCacheRows`): ``datasets`` would turn each of its ``(seq, k)``
        values into a Python object first, which costs about as much as a small student's step."""
        dataset = self.train_dataset
        strategy = getattr(self.args, "train_sampling_strategy", "random")
        if self.cache_meta is None or strategy not in ("random", "sequential") or not _is_arrow_dataset(dataset):
            return super().get_train_dataloader()  # length-grouped samplers read the dataset's columns
        from hf_lite.teacher_cache import TeacherCacheRows

        self.train_dataset = TeacherCacheRows(dataset)
        try:
            return super().get_train_dataloader()
        finally:
            self.train_dataset = dataset

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if self.cache_meta is not None:
            from hf_lite.teacher_cache import TEACHER_COLUMNS

            # Keep the cached teacher columns through remove_unused_columns: the collator needs them.
            self._signature_columns = list(dict.fromkeys([*self._signature_columns, *TEACHER_COLUMNS]))

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
        # Evaluation mode: moved to the device (and sharded for DeepSpeed/FSDP) but never wrapped for gradient sync.
        return self.accelerator.prepare_model(teacher, evaluation_mode=True)

    def _preflight_vocabulary(self) -> int | None:
        student_n = _output_size(self.model)
        tokenizer_len = len(self.processing_class) if hasattr(self.processing_class, "__len__") else None
        common = student_n
        for teacher in self.teachers:
            teacher_n = _output_size(teacher)
            if student_n is None or teacher_n is None or teacher_n == student_n:
                continue
            if self.task in ("causal-lm", "seq2seq-lm"):
                real = tokenizer_len if tokenizer_len is not None else min(student_n, teacher_n)
                if min(student_n, teacher_n) >= real:
                    common = min(common, teacher_n)
                    continue
                raise ValueError(
                    f"Vocabulary mismatch: the student's head has {student_n} outputs and the teacher's {teacher_n}, "
                    f"and the tokenizer has {real} tokens, so they are not the same vocabulary padded differently. "
                    "Distil between models that share a tokenizer (e.g. the same family), or pass the tokenizer as "
                    "processing_class if the extra rows are only padding."
                )
            raise ValueError(
                f"The teacher has {teacher_n} outputs and the student {student_n}: the heads are incompatible. "
                "Give the student the teacher's number of labels (num_labels) and label order."
            )
        return common

    def _build_projections(self) -> nn.ModuleDict | None:
        if self.args.hidden_weight <= 0:
            return None
        s_cfg, t_cfg = _text_config(self.model), _text_config(self.teachers[0])
        pairs = resolve_layer_map(self.args.layer_map, s_cfg.num_hidden_layers, t_cfg.num_hidden_layers)
        self.layer_pairs = pairs
        if s_cfg.hidden_size == t_cfg.hidden_size:
            return None
        if not self.args.hidden_projection:
            raise ValueError(
                f"Hidden widths differ (student {s_cfg.hidden_size}, teacher {t_cfg.hidden_size}) and "
                "hidden_projection=False: set hidden_projection=True to learn a linear map, or hidden_weight=0."
            )
        torch.manual_seed(self.args.seed)  # the projections' initialisation is part of the run's seed
        projections = nn.ModuleDict(
            {f"{s}_{t}": nn.Linear(s_cfg.hidden_size, t_cfg.hidden_size) for s, t in pairs}
        )
        return projections.to(self.args.device)

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
        args = self.args
        labels = inputs.get("labels")
        if args.alpha < 1.0 and labels is None:
            raise ValueError(
                f"alpha={args.alpha} mixes in cross-entropy on the labels, but the batch has no 'labels' column. "
                "Add labels to the dataset, or set alpha=1.0 for pure distillation (e.g. on an unlabeled transfer set)."
            )
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        if self.task == "seq2seq-lm" and labels is not None and "decoder_input_ids" not in model_inputs:
            unwrapped = self.accelerator.unwrap_model(model)
            model_inputs["decoder_input_ids"] = unwrapped.prepare_decoder_input_ids_from_labels(labels=labels)
        want_hidden, want_attn = args.hidden_weight > 0, args.attention_weight > 0
        extra = {"output_hidden_states": True} if want_hidden else {}
        if want_attn:
            extra["output_attentions"] = True

        cached = {k: model_inputs.pop(k) for k in ("teacher_topk_logprobs", "teacher_topk_indices",
                                                   "teacher_tail_mass") if k in model_inputs}  # fmt: skip
        if not cached:
            # The teachers first: their activations are freed before the student's (kept for backward) exist,
            # so the step's peak memory is the student's plus the teachers' outputs, not plus their activations.
            with torch.no_grad():
                teacher_outputs = [t(**model_inputs, **extra) for t in self.teachers]
        outputs = model(**model_inputs, **extra)
        if cached:
            s_logits = outputs.logits[..., : self._vocab_size]
            t_logprobs, t_indices = cached["teacher_topk_logprobs"], cached["teacher_topk_indices"]
            t_logits = None
        else:
            s_logits, t_logits = self._aligned_logits(outputs.logits, teacher_outputs)
        kd_labels, kd_mask = labels, None
        if self.task == "causal-lm":
            # Shift the targets, not the logits: position i predicts token i + 1 and the last position nothing.
            # Slicing logits[:, :-1] would make backward allocate and zero a full-size gradient every step.
            if labels is not None:
                kd_labels = losses.shift_labels(labels)
            else:
                kd_mask = F.pad(_attention_mask(model_inputs)[:, 1:], (0, 1), value=0)
        elif self.task == "token-classification" and labels is None:
            kd_mask = _attention_mask(model_inputs)
        # During training every loss is divided by its item count over the whole accumulated batch and all
        # processes (counted in _get_num_items_in_batch): micro-batches and ranks add up to the full batch.
        training = model.training and self._step_counts is not None
        kd_items = (
            num_items_in_batch if labels is not None else (self._step_counts["kd"] if training else None)
        )
        token_items = self._step_counts["tokens"] if training else None
        self.loss_is_scaled_for_ga = training
        kd_kwargs = dict(temperature=args.temperature, labels=kd_labels, mask=kd_mask, num_items_in_batch=kd_items,
                         compiled=args.compile_loss)  # fmt: skip
        if args.alpha < 1.0 and not args.chunk_size:
            # Both terms from one pass over the logits (they share the student's softmax and one gradient buffer).
            fused = dict(alpha=args.alpha, temperature=args.temperature, num_items_in_batch=kd_items,
                         compiled=args.compile_loss)  # fmt: skip
            if cached:
                mixed = losses.topk_distillation_and_ce_loss(s_logits, t_logprobs, t_indices, kd_labels, **fused)
            else:
                mixed = losses.distillation_and_ce_loss(s_logits, t_logits, kd_labels, loss_type=args.loss_type,
                                                        beta=args.beta, **fused)  # fmt: skip
            loss, components = mixed.loss, {"loss_kd": mixed.kd, "loss_ce": mixed.ce}
        else:
            if cached:
                loss_kd = losses.topk_distillation_loss(s_logits, t_logprobs, t_indices, **kd_kwargs)
            elif args.chunk_size:
                loss_kd = losses.chunked_distillation_loss(s_logits, t_logits, chunk_size=args.chunk_size,
                                                           loss_type=args.loss_type, beta=args.beta, **kd_kwargs)  # fmt: skip
            else:
                loss_kd = losses.distillation_loss(s_logits, t_logits, loss_type=args.loss_type, beta=args.beta,
                                                   **kd_kwargs)  # fmt: skip
            components = {"loss_kd": loss_kd}
            if args.alpha < 1.0:
                components["loss_ce"] = losses.cross_entropy_loss(s_logits, kd_labels, num_items_in_batch=kd_items)
            loss = losses.combine_losses(loss_kd, components.get("loss_ce", 0.0), args.alpha)

        attention_mask = model_inputs.get("attention_mask")
        if want_hidden:
            components["loss_hidden"] = self._hidden_loss(
                outputs, teacher_outputs[0], attention_mask, token_items
            )
            loss = loss + args.hidden_weight * components["loss_hidden"]
        if want_attn:
            components["loss_attention"] = self._attention_loss(
                outputs, teacher_outputs[0], attention_mask, token_items
            )
            loss = loss + args.attention_weight * components["loss_attention"]

        if training and self.accelerator.num_processes > 1 and args.average_tokens_across_devices:
            # The counts span every process while DDP averages gradients over processes: undo the average.
            loss = loss * self.accelerator.num_processes
        if training:
            self._record(components)
        return (loss, outputs) if return_outputs else loss

    def _aligned_logits(
        self, student_logits: torch.Tensor, teacher_outputs: list[Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = self._vocab_size or student_logits.shape[-1]
        student_logits = student_logits[..., :n]
        logits = [o.logits[..., :n].to(student_logits.device) for o in teacher_outputs]
        if len(logits) == 1:
            return student_logits, logits[0]
        weights = self.teacher_weights
        if self.args.loss_type == "mse":  # a weighted average of logits for a loss on logits
            return student_logits, sum(w * z.float() for w, z in zip(weights, logits, strict=True))
        # Mix the tempered distributions, then express the mixture as logits at the same temperature:
        # softmax(T * log p / T) = p.
        temp = self.args.temperature
        log_mix = torch.logsumexp(
            torch.stack([torch.log_softmax(z.float() / temp, -1) + torch.log(torch.tensor(w)) for w, z in zip(weights, logits, strict=True)]),
            dim=0,
        )  # fmt: skip
        return student_logits, temp * log_mix

    def _hidden_loss(
        self, outputs: Any, teacher_out: Any, attention_mask: torch.Tensor | None, items: Any = None
    ) -> torch.Tensor:
        s_hidden, t_hidden = _hidden_states(outputs), _hidden_states(teacher_out)
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
        s_cfg, t_cfg = _text_config(self.model), _text_config(self.teachers[0])
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
                outputs.attentions[s - 1], teacher_out.attentions[t - 1].to(outputs.attentions[s - 1].device),
                kind=self.args.attention_loss, mask=attention_mask, num_items_in_batch=items,
            )  # fmt: skip
        return total / max(1, len(pairs))

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | int | None:
        """The label count (Trainer's), plus the counts the other losses are normalized by: attention-mask
        tokens (hidden states, attention maps) and, without labels, the positions the KD loss covers."""
        num_items = super()._get_num_items_in_batch(batch_samples, device)
        tokens = sum(_attention_mask(b).sum() for b in batch_samples)
        if self.task == "causal-lm":
            kd = sum(_attention_mask(b)[:, 1:].sum() for b in batch_samples)
        elif self.task == "token-classification":
            kd = tokens
        else:
            kd = sum(torch.tensor(len(b["input_ids"])) for b in batch_samples)
        counts = torch.stack([torch.as_tensor(tokens), torch.as_tensor(kd)]).to(device)
        if self.args.world_size > 1 and self.args.average_tokens_across_devices:
            counts = self.accelerator.gather(counts.unsqueeze(0)).sum(0)
        self._step_counts = {"tokens": counts[0], "kd": counts[1]}
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
        super().log(logs, start_time)

    def compression_summary(self) -> Any:
        """What this run did, for the model card: teacher, distillation settings, pruning, adapter."""
        from hf_lite._utils import is_hub_id
        from hf_lite.card.build import CompressionSummary
        from hf_lite.summary import describe_adapter, describe_quantization

        args = self.args
        teacher = None
        if self.teachers:
            names = [getattr(getattr(t, "config", None), "_name_or_path", "") for t in self.teachers]
            teacher = ", ".join(n for n in names if is_hub_id(n)) or None
        parts = [f"{args.loss_type} on logits, T={args.temperature}, alpha={args.alpha}"]
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
            teacher=teacher, distillation="; ".join(parts), pruning=pruning, sparsity=sparsity,
            quantization=describe_quantization(model.get_base_model() if hasattr(model, "get_base_model") else model),
            adapter=describe_adapter(model),
        )  # fmt: skip

    def create_model_card(self, language: str | None = None, license: str | None = None, tags: Any = None,
                          model_name: str | None = None, finetuned_from: str | None = None, tasks: Any = None,
                          dataset_tags: Any = None, dataset: Any = None, dataset_args: Any = None) -> None:  # fmt: skip
        """The hf-lite model card (the one :func:`hf_lite.push_to_hub` writes) instead of the Trainer's draft."""
        if not self.is_world_process_zero():
            return
        from hf_lite.card.build import build_model_card

        card = build_model_card(
            self.compression_summary(), repo_id=self.hub_model_id, checkpoint=self.args.output_dir,
            license=license, language=language, datasets=dataset,
            tags=[tags] if isinstance(tags, str) else tags,
        )  # fmt: skip
        card.save(os.path.join(self.args.output_dir, "README.md"))

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        if self.projections is not None:
            from safetensors.torch import save_file

            out = output_dir or self.args.output_dir
            state = {k: v.detach().cpu().contiguous() for k, v in self.projections.state_dict().items()}
            save_file(
                state, os.path.join(out, PROJECTIONS_FILE), metadata={"layer_pairs": repr(self.layer_pairs)}
            )

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, PROJECTIONS_FILE)
        if self.projections is not None and os.path.isfile(path):
            from safetensors.torch import load_file

            self.projections.load_state_dict(load_file(path, device=str(self.args.device)))


# --------------------------------------------------------------------------------------- helpers


def _is_arrow_dataset(dataset: Any) -> bool:
    import datasets

    return isinstance(dataset, datasets.Dataset)


def _cache_metadata(dataset: Any) -> dict[str, Any] | None:
    """The teacher cache's metadata when ``dataset`` carries cached teacher outputs, else None."""
    columns = getattr(dataset, "column_names", None) or []
    if "teacher_topk_logprobs" not in columns:
        return None
    from hf_lite.teacher_cache import teacher_cache_metadata

    return teacher_cache_metadata(dataset)


def _text_config(model: nn.Module) -> Any:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _output_size(model: nn.Module) -> int | None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if head is not None and hasattr(head, "out_features"):
        return head.out_features
    if head is not None and hasattr(head, "weight"):
        return head.weight.shape[0]
    num_labels = getattr(base.config, "num_labels", None)
    return num_labels if model_task(base) in ("sequence-classification", "token-classification") else None


def _attention_mask(batch: dict[str, Any]) -> torch.Tensor:
    mask = batch.get("attention_mask")
    return mask if mask is not None else torch.ones_like(batch["input_ids"])


def _hidden_states(outputs: Any) -> tuple[torch.Tensor, ...]:
    hidden = getattr(outputs, "hidden_states", None)
    if hidden is None:
        hidden = getattr(outputs, "decoder_hidden_states", None)
    if hidden is None:
        raise ValueError(
            "hidden_weight > 0 but the model returned no hidden states (output_hidden_states=True)."
        )
    return hidden


def _eager_attention(model: nn.Module) -> None:
    """Attention maps are only returned by the eager implementation (SDPA/flash never build them)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "_attn_implementation", "eager") != "eager":
        logger.info("switching %s to eager attention to return attention maps", type(base).__name__)
        base.set_attn_implementation("eager")
