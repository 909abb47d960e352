"""Distillation across tokenizers: a teacher and a student that do not share a vocabulary (TRL's GOLD).

:class:`~trainers.distillation_trainer.DistillationTrainer` takes ``teacher_tokenizer=`` (or
``DistillationConfig.teacher_tokenizer``). When it is the student's tokenizer, or one the token-level losses
still apply to (:func:`hf_lite.data.compare_vocabularies`: identical, padding-only, same family), nothing
changes. Otherwise each step:

    text rows -> CrossTokenizerCollator (student ids, teacher ids, span alignment) -> teacher forward on its own
    ids (eval, no_grad) -> student forward -> hybrid ULD (or ULD) over the aligned spans
    -> alpha * that + (1 - alpha) * the student's cross-entropy on its own labels

The distillation term is normalized by the counted spans of the whole accumulated batch over all processes
(``span_mask``, counted in the trainer's ``_get_num_items_in_batch``), the cross-entropy by its label tokens,
so gradient accumulation and DDP stay exact. On-policy (``lmbda > 0``, prompt/completion rows): each generated
completion is decoded and tokenized again with its prompt's text for both models (the student's side becomes
the canonical tokenization of what it wrote), then scored like a data batch without cross-entropy. Not
supported together with a teacher tokenizer (each refused with a ``ValueError``): hidden-state and attention
matching (the positions do not correspond), a teacher cache, tasks other than causal LM. Several teachers of one
tokenizer are mixed as on the token-level path; teachers with tokenizers of their own (``teacher_tokenizer=[...]``,
one per teacher) each give their span loss over their own spans, weighted by ``teacher_weights``.

>>> from trainers import DistillationConfig, DistillationTrainer
>>> from transformers import AutoTokenizer
>>> trainer = DistillationTrainer(
...     model=student,  # a causal LM with its own tokenizer
...     teacher_model="Qwen/Qwen2.5-0.5B-Instruct",
...     teacher_tokenizer=AutoTokenizer.from_pretrained("Qwen/Qwen2.5-0.5B-Instruct"),
...     args=DistillationConfig("out", alpha=0.9, cross_tokenizer_loss="hybrid"),
...     processing_class=student_tokenizer,
...     train_dataset=Dataset.from_dict({"text": texts}),  # or prompt/completion strings
... )  # doctest: +SKIP
>>> trainer.train()  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import datasets
import torch
from torch import nn

from hf_lite import losses
from hf_lite.data import ALIGNMENT_KEYS, compare_vocabularies, shared_vocabulary
from hf_lite.data.collate import (
    CROSS_TOKENIZER_KEYS,
    PROMPT_TEXT_KEY,
    CrossTokenizerCollator,
    teacher_key,
)
from hf_lite.loading import load_tokenizer
from hf_lite.teacher_cache.fingerprint import tokenizer_digest
from trainers.distillation_models import output_size
from trainers.distillation_onpolicy import GENERATED_KEY

logger = logging.getLogger(__name__)

__all__ = [
    "CrossTokenizerDistillation",
    "CrossTokenizerLossMixin",
    "check_cache_tokenizer",
    "check_cross_tokenizer",
    "cross_tokenizer_setup",
]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def check_cross_tokenizer(args: Any, task: str | None, teachers: list, student_tokenizer: Any) -> None:
    """Refuse what distillation across tokenizers cannot run with (module doc), naming the fix.

    >>> from hf_lite.testing import build_tiny_model
    >>> from trainers import DistillationConfig
    >>> teacher, tok = build_tiny_model("llama", seed=0)
    >>> check_cross_tokenizer(DistillationConfig("out", lmbda=0.5), "causal-lm", [teacher], student_tokenizer=tok)
    >>> check_cross_tokenizer(DistillationConfig("out", hidden_weight=1.0), "causal-lm", [teacher], tok)
    Traceback (most recent call last):
    ...
    ValueError: hidden_weight=1.0 with teacher_tokenizer: hidden states and attention maps are per token, ...
    """
    fix = "or distil from a teacher that shares the student's tokenizer"
    if student_tokenizer is None:
        raise ValueError(
            "teacher_tokenizer is set but the student's tokenizer is unknown: pass it as processing_class=... "
            "(each text is tokenized for both models)."
        )
    if task != "causal-lm":
        raise ValueError(
            f"teacher_tokenizer distils between causal language models; this student's task is {task!r}. "
            "Across tokenizers only next-token distributions can be compared span by span."
        )
    sizes = [output_size(t) for t in teachers]
    if len(set(sizes)) > 1:
        raise ValueError(
            f"teacher_tokenizer with {len(teachers)} teachers whose heads have {sizes} outputs: one teacher_tokenizer "
            "serves every teacher, so they must share it. Give a list, one tokenizer per teacher in the same order "
            f"(teacher_tokenizer=[tokenizer_1, tokenizer_2, ...]), {fix}."
        )
    for name in ("hidden_weight", "attention_weight"):
        if getattr(args, name) > 0:
            raise ValueError(
                f"{name}={getattr(args, name)} with teacher_tokenizer: hidden states and attention maps are per "
                f"token, and the two models' tokens do not correspond. Set {name}=0, {fix}."
            )
    if args.cross_tokenizer_loss == "hybrid" and args.loss_type not in losses.HYBRID_LOSS_TYPES:
        raise ValueError(
            f"loss_type={args.loss_type!r} cannot compare the hybrid loss's span probabilities (it compares "
            f"logits); use one of {', '.join(losses.HYBRID_LOSS_TYPES)}, or cross_tokenizer_loss='uld'."
        )
    ignored = [n for n in ("chunk_size", "compile_loss") if getattr(args, n) not in (None, False)]
    if ignored:
        logger.warning(
            "%s do not apply across tokenizers (the span losses run as they are) and are ignored.", ignored
        )


def check_cache_tokenizer(metadata: dict[str, Any], teacher_tokenizer: Any, student_tokenizer: Any) -> None:
    """Refuse a teacher cache with ``teacher_tokenizer``, or one made with another tokenizer than the student's.

    >>> check_cache_tokenizer({"fingerprint_parts": {}}, None, None)  # nothing to compare
    """
    if teacher_tokenizer is not None:
        raise ValueError(
            "teacher_tokenizer with a teacher cache: the cache holds the teacher's top-k outputs at the positions of "
            "the student's tokens, which a teacher with another tokenizer does not have. Pass the live teacher "
            "(teacher_model=...) with text data, or drop teacher_tokenizer to train from a cache made with the "
            "student's tokenizer."
        )
    made_with = metadata.get("fingerprint_parts", {}).get("tokenizer")
    if made_with is None or student_tokenizer is None or not hasattr(student_tokenizer, "get_vocab"):
        return
    if tokenizer_digest(student_tokenizer) != made_with:
        raise ValueError(
            f"The teacher cache was made with another tokenizer than processing_class ({type(student_tokenizer).__name__}, "
            f"{len(student_tokenizer)} tokens): its top-k ids index another vocabulary. Recompute it with "
            "precompute_teacher_cache(..., tokenizer=<the student's tokenizer>), or pass the tokenizer it was made with."
        )


def _resolve(teacher_tokenizer: Any) -> Any:
    if isinstance(teacher_tokenizer, (str, os.PathLike)):
        return load_tokenizer(teacher_tokenizer)
    if not callable(getattr(teacher_tokenizer, "get_vocab", None)):
        raise TypeError(
            f"teacher_tokenizer must be a tokenizer, a Hub id or a folder; got {type(teacher_tokenizer).__name__}."
        )
    return teacher_tokenizer


def _folder_tokenizer(teacher: Any) -> Any:
    """The tokenizer saved beside a teacher given as a local folder, else None."""
    if not isinstance(teacher, (str, os.PathLike)) or not Path(teacher).is_dir():
        return None
    if not any((Path(teacher) / name).is_file() for name in _TOKENIZER_FILES):
        return None
    try:
        return load_tokenizer(teacher)
    except (OSError, ValueError, TypeError):
        return None


def _tokenizer_of_folder(args: Any, given: list, task: str | None, student_tokenizer: Any) -> Any:
    """The tokenizer saved beside a single teacher folder when it differs from the student's, else None."""
    found = _folder_tokenizer(given[0]) if len(given) == 1 and task == "causal-lm" else None
    if found is None or student_tokenizer is None:
        return None
    relation = compare_vocabularies(student_tokenizer, found)
    if relation.token_level:
        return None
    if not args.cross_tokenizer:
        raise ValueError(
            f"The teacher {str(given[0])!r} has another tokenizer than the student ({relation.message}) and "
            "cross_tokenizer=False: distillation across tokenizers is off. Set cross_tokenizer=True (or pass "
            f"teacher_tokenizer={str(given[0])!r}) to distil across tokenizers on text data, or distil from a "
            "teacher that shares the student's tokenizer."
        )
    logger.info(
        "the teacher folder %s has its own tokenizer (%s): distilling across tokenizers",
        given[0],
        relation.message,
    )
    return found


def cross_tokenizer_setup(
    args: Any,
    teacher_tokenizer: Any,
    student_tokenizer: Any,
    task: str | None,
    given: list,
    student: nn.Module,
    teachers: list[nn.Module],
) -> CrossTokenizerDistillation | None:
    """The cross-tokenizer part of a trainer, or None when the token-level path applies.

    ``given`` are the teachers as passed: without ``teacher_tokenizer``, a teacher folder's own tokenizer is
    compared with the student's, and one that differs is taken as ``teacher_tokenizer`` (``cross_tokenizer=False``:
    an error instead).
    """
    if teacher_tokenizer is None:
        teacher_tokenizer = _tokenizer_of_folder(args, given, task, student_tokenizer)
        if teacher_tokenizer is None:
            return None
    if isinstance(teacher_tokenizer, (list, tuple)):  # one per teacher
        if len(teacher_tokenizer) != len(teachers):
            raise ValueError(
                f"teacher_tokenizer has {len(teacher_tokenizer)} entries for {len(teachers)} teacher(s): give one "
                "tokenizer per teacher, in the same order (or one tokenizer that every teacher shares)."
            )
        tokenizers = [_resolve(t) for t in teacher_tokenizer]
        if len({json.dumps(sorted(t.get_vocab().items())) for t in tokenizers}) == 1:
            tokenizers = tokenizers[:1]  # the same tokenizer for every teacher: mixed as one teacher
    else:
        tokenizers = [_resolve(teacher_tokenizer)]
    groups = [teachers] if len(tokenizers) == 1 else [[t] for t in teachers]
    for group in groups:
        check_cross_tokenizer(args, task, group, student_tokenizer)
    collator = CrossTokenizerCollator(student_tokenizer, tokenizers if len(tokenizers) > 1 else tokenizers[0])
    relations = [
        compare_vocabularies(
            student_tokenizer,
            tok,
            student_head_size=output_size(student),
            teacher_head_size=output_size(group[0]),
        )
        for tok, group in zip(tokenizers, groups, strict=True)
    ]
    for relation in relations:
        logger.info("teacher_tokenizer: %s", relation.message)
    if len(tokenizers) == 1 and relations[0].token_level:
        return CrossTokenizerDistillation(args, [None], collator, token_level=True)
    hybrid = args.cross_tokenizer_loss == "hybrid"
    shared = [shared_vocabulary(student_tokenizer, tok) if hybrid else None for tok in tokenizers]
    return CrossTokenizerDistillation(args, shared, collator, token_level=False)


class CrossTokenizerDistillation:
    """What a trainer keeps to distil across tokenizers: the collator, the shared vocabulary, the loss.

    ``token_level`` is True when the teacher tokenizer turned out to be the student's (or one the token-level
    losses apply to): the collator still reads the text rows, the loss is the ordinary one. ``shared`` holds one
    entry per teacher tokenizer (``slots``; None for ULD): one slot when every teacher shares it (their
    distributions mixed), else one per teacher (their span losses weighted by ``teacher_weights``).
    """

    def __init__(self, args: Any, shared: list, collator: CrossTokenizerCollator, token_level: bool) -> None:
        self.args, self.shared, self.collator, self.token_level = args, shared, collator, token_level
        self.slots = len(shared)

    def count(self, batch_samples: list[dict[str, Any]]) -> torch.Tensor:
        """``(slots,)``: the counted spans of each teacher tokenizer over an optimizer step's micro-batches."""
        return torch.stack(
            [
                sum(
                    b[teacher_key("span_mask", j)].sum() if "span_mask" in b else torch.tensor(0)
                    for b in batch_samples
                )
                for j in range(self.slots)
            ]
        )

    def encode_dataset(self, dataset: Any) -> Any:
        """A ``datasets.Dataset`` of text rows with :meth:`CrossTokenizerCollator.encode`'s columns added (the two
        tokenizations and their alignment computed once per example, kept by ``datasets``' cache); other
        datasets (iterable, already encoded, without text columns) as they are."""
        columns = getattr(dataset, "column_names", None) or []
        if not isinstance(dataset, datasets.Dataset) or "alignment" in columns:
            return dataset
        if (
            "text" not in columns
            and "messages" not in columns
            and not {"prompt", "completion"} <= set(columns)
        ):
            return dataset
        return dataset.map(self.collator.encode, desc="tokenizing for student and teacher")

    def check_batch(self, inputs: dict[str, Any]) -> None:
        keys = [teacher_key(k, j) for j in range(self.slots) for k in CROSS_TOKENIZER_KEYS]
        missing = [k for k in keys if k not in inputs]
        if missing:
            raise ValueError(
                f"the batch lacks {missing}: distillation across tokenizers reads batches of CrossTokenizerCollator "
                "(the default with teacher_tokenizer; a data_collator passed to the trainer replaces it)."
            )

    def retokenize(self, drawn: dict[str, Any], generated: dict[str, Any]) -> dict[str, Any]:
        """On-policy (``lmbda > 0``): the student's completions decoded to text (special tokens such as its EOS
        left out) and tokenized again, with their prompts' text, for both models; the student's side is then the
        canonical tokenization of what it wrote."""
        prompts = drawn.get(PROMPT_TEXT_KEY)
        if prompts is None:
            raise ValueError(
                f"lmbda={self.args.lmbda} with teacher_tokenizer decodes the student's completions and tokenizes them "
                "again with their prompts' text, but the batch has no 'prompt_text': give 'prompt'/'completion' "
                "rows to CrossTokenizerCollator (text rows have no prompt to complete)."
            )
        tok = self.collator.student.tokenizer
        rows = []
        for prompt, ids, mask, labels in zip(
            prompts, generated["input_ids"], generated["attention_mask"], generated["labels"], strict=True
        ):
            prompt_ids, new_ids = ids[(labels == -100) & (mask == 1)].tolist(), ids[labels != -100].tolist()
            # decoded after the prompt's tokens, then cut: a piece decoded alone can lose its leading space (▁)
            before = tok.decode(prompt_ids, skip_special_tokens=True)
            both = tok.decode(prompt_ids + new_ids, skip_special_tokens=True)
            alone = both[len(before) :] if both.startswith(before) else None
            completion = alone if alone is not None else tok.decode(new_ids, skip_special_tokens=True)
            rows.append({"prompt": prompt, "completion": completion})
        return {**self.collator(rows), GENERATED_KEY: True}

    @staticmethod
    def teacher_inputs(inputs: dict[str, Any], slot: int = 0) -> dict[str, torch.Tensor]:
        return {
            "input_ids": inputs[teacher_key("teacher_input_ids", slot)],
            "attention_mask": inputs[teacher_key("teacher_attention_mask", slot)],
        }

    def loss(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        inputs: dict[str, Any],
        items: Any,
        slot: int = 0,
    ) -> torch.Tensor:
        """The span loss (``args.cross_tokenizer_loss``) against teacher tokenizer ``slot``, divided by ``items``
        (counted spans; None: these)."""
        args = self.args
        alignment = {k: inputs[teacher_key(k, slot)] for k in ALIGNMENT_KEYS}
        common = {"temperature": args.temperature, "num_items_in_batch": items}
        if self.shared[slot] is None:
            return losses.uld_loss(student_logits, teacher_logits, alignment, **common)
        return losses.hybrid_uld_loss(
            student_logits,
            teacher_logits,
            alignment,
            self.shared[slot],
            loss_type=args.loss_type,
            beta=args.beta,
            matched_weight=args.hybrid_matched_weight,
            unmatched_weight=args.hybrid_unmatched_weight,
            **common,
        )


class CrossTokenizerLossMixin:
    """``compute_loss``'s cross-tokenizer branch for :class:`~trainers.distillation_trainer.DistillationTrainer`."""

    args: Any
    cross: CrossTokenizerDistillation | None
    teachers: list
    teacher_weights: list[float]
    _step_counts: dict[str, torch.Tensor] | None

    def _cross_tokenizer_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool, num_items_in_batch: Any
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        args, cross = self.args, self.cross
        cross.check_batch(inputs)
        labels = inputs.get("labels")
        slots = range(len(self.teachers)) if cross.slots > 1 else [0] * len(self.teachers)
        with torch.no_grad():  # each teacher on its own tokens
            logits = [
                t(**cross.teacher_inputs(inputs, j)).logits for t, j in zip(self.teachers, slots, strict=True)
            ]
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"))
        training = model.training and self._step_counts is not None
        self.loss_is_scaled_for_ga = training
        items = self._step_counts["kd"] if training else None
        if (
            cross.slots == 1
        ):  # teachers of one tokenizer: their distributions mixed, as on the token-level path
            mixed = losses.mix_teacher_logits(
                logits, self.teacher_weights, loss_type=args.loss_type, temperature=args.temperature
            )
            kd = cross.loss(outputs.logits, mixed, inputs, items)
        else:  # tokenizers of their own: each teacher's span loss, over its own spans, weighted
            kd = sum(
                w * cross.loss(outputs.logits, z, inputs, None if items is None else items[j], j)
                for j, (w, z) in enumerate(zip(self.teacher_weights, logits, strict=True))
            )
        loss, components = args.alpha * kd, {"loss_kd": kd}
        ce = None
        if inputs.get(GENERATED_KEY, False):  # the student's completions: no target for cross-entropy
            labels = None
        if labels is not None and (args.alpha < 1 or not training):
            ce = losses.cross_entropy_loss(
                outputs.logits,
                losses.shift_labels(labels),
                num_items_in_batch=num_items_in_batch if training else None,
            )
            if args.alpha < 1:
                loss, components["loss_ce"] = loss + (1 - args.alpha) * ce, ce
        if training and self.accelerator.num_processes > 1 and args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes  # the counts span every process; DDP averages
        if training:
            self._record(components)
        elif ce is not None:
            self.eval_parts.add({"loss_ce": ce, "loss_kd": kd}, labels.shape[0], self.gather_function)
        return (loss, outputs) if return_outputs else loss
