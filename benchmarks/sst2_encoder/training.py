"""Training for the SST-2 encoder benchmark.

Trainer arguments, plain CE and distillation runs, the fine-tuned all-MiniLM-L6-v2 teacher (cached
between runs), and dev accuracy.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from benchmarks.common import cached_teacher, cpu_training_args, minilm_path, save_teacher

#: Cache layout version: bump when the teacher recipe changes so old caches are not reused.
TEACHER_RECIPE = 1

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
TASK = "sequence-classification"


def _training_args(
    cls: Any, out: Path, s: dict[str, Any], steps: int, lr: float, seed: int, **extra: Any
) -> Any:
    return cpu_training_args(
        cls,
        out,
        batch_size=s["batch_size"],
        steps=steps,
        lr=lr,
        seed=seed,
        warmup_steps=s["warmup_ratio"],
        weight_decay=0.01,
        lr_scheduler_type="linear",
        logging_steps=max(1, steps // 8),
        train_sampling_strategy="group_by_length",  # batches of similar length: little padding
        **extra,
    )


def freeze_embeddings(model: Any, s: dict[str, Any]) -> Any:
    if s["freeze_word_embeddings"]:
        model.get_input_embeddings().weight.requires_grad_(False)
    return model


def steps_for(rows: int, epochs: float, batch_size: int) -> int:
    return max(1, math.ceil(rows * epochs / batch_size))


def train_ce(
    model: Any, train: Any, tokenizer: Any, s: dict[str, Any], steps: int, lr: float, out: Path, seed: int
) -> Any:
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    args = _training_args(TrainingArguments, out, s, steps, lr, seed)
    trainer = Trainer(
        model=model, args=args, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer)
    )
    trainer.train()
    return trainer.model


def train_kd(
    student: Any,
    teacher: Any,
    train: Any,
    tokenizer: Any,
    s: dict[str, Any],
    steps: int,
    out: Path,
    seed: int,
    *,
    hidden: bool,
    callbacks: list[Any] | None = None,
) -> Any:
    from transformers import DataCollatorWithPadding

    from trainers import DistillationConfig, DistillationTrainer

    kd = {
        "temperature": s["kd_temperature"],
        "alpha": s["kd_alpha"],
        "hidden_weight": s["hidden_weight"] if hidden else 0.0,
        "hidden_loss": s["hidden_loss"],
        "layer_map": "uniform",
    }
    args = _training_args(DistillationConfig, out, s, steps, s["student_lr"], seed, **kd)
    collator = DataCollatorWithPadding(tokenizer)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=train,
        data_collator=collator,
        callbacks=callbacks,
    )
    trainer.train()
    return trainer.model


def teacher_settings(s: dict[str, Any], seed: int, n_train: int) -> dict[str, Any]:
    keys = (
        "train_rows",
        "max_seq_length",
        "batch_size",
        "freeze_word_embeddings",
        "teacher_layers",
        "teacher_epochs",
        "teacher_lr",
        "warmup_ratio",
    )
    return {
        "recipe": TEACHER_RECIPE,
        "model": MODEL_NAME,
        "seed": seed,
        "n_train": n_train,
        **{k: s[k] for k in keys},
    }


def get_teacher(ctx: Any, s: dict[str, Any], train: Any, tokenizer: Any) -> tuple[Path, dict[str, Any]]:
    """The fine-tuned teacher's folder, trained now or found in the cache (keyed by its settings)."""
    from hf_lite import load_model
    from hf_lite.student import init_student_from_teacher

    settings = teacher_settings(s, ctx.seed, len(train))
    folder, cached = cached_teacher(ctx, "teacher", settings)
    if cached is not None:
        return folder, cached
    model = load_model(minilm_path(), task=TASK, num_labels=2)
    if s["teacher_layers"]:
        model = init_student_from_teacher(model, layers=s["teacher_layers"])
    freeze_embeddings(model, s)
    steps = steps_for(len(train), s["teacher_epochs"], s["batch_size"])
    start = time.perf_counter()
    model = train_ce(model, train, tokenizer, s, steps, s["teacher_lr"], ctx.work / "teacher-run", ctx.seed)
    meta = {"settings": settings, "steps": steps, "train_s": round(time.perf_counter() - start, 1)}
    return save_teacher(folder, model, tokenizer, meta)  # the cache entry is complete or absent


def accuracy(model: Any, batches: list[tuple[dict, Any]]) -> float:
    import torch

    model.eval()
    correct = total = 0
    with torch.inference_mode():
        for inputs, labels in batches:
            pred = model(**inputs).logits.argmax(-1)
            correct += int((pred == labels).sum())
            total += len(labels)
    return correct / total
