"""Training for the causal LM benchmark.

Trainer arguments, plain CE and distillation runs, the Llama teacher (built here, cached between runs).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from benchmarks.causal_lm.data import Windows
from benchmarks.common import cached_teacher, cpu_training_args, save_teacher

#: Cache layout version: bump when the teacher recipe changes so old caches are not reused.
TEACHER_RECIPE = 1


def seed_for(seed: int, name: str) -> int:
    """A seed of its own for each use of the run's seed (the teacher's windows, the students', ...)."""
    return random.Random(f"{seed}:{name}").randrange(2**31)


def training_args(
    cls: Any, out: Path, s: dict[str, Any], steps: int, lr: float, seed: int, **extra: Any
) -> Any:
    return cpu_training_args(
        cls,
        out,
        batch_size=s["batch_size"],
        steps=steps,
        lr=lr,
        seed=seed,
        warmup_steps=s["warmup_ratio"],  # a float < 1 is a fraction of the steps
        lr_scheduler_type="cosine",
        weight_decay=s["weight_decay"],
        adam_beta2=0.99,
        max_grad_norm=1.0,
        logging_steps=max(1, steps // 10),
        **extra,
    )


def logged_losses(trainer: Any) -> list[dict[str, float]]:
    """The training losses a trainer logged, by step."""
    return [
        {k: v for k, v in e.items() if k in ("step", "loss", "loss_kd", "loss_ce")}
        for e in trainer.state.log_history
        if "loss" in e
    ]


def train_ce(
    model: Any, data: Windows, s: dict[str, Any], steps: int, lr: float, out: Path, seed: int
) -> tuple[Any, dict]:
    from transformers import Trainer, TrainingArguments

    args = training_args(TrainingArguments, out, s, steps, lr, seed)
    trainer = Trainer(model=model, args=args, train_dataset=data)
    start = time.perf_counter()
    trainer.train()
    return trainer.model, {"train_s": round(time.perf_counter() - start, 1), "losses": logged_losses(trainer)}


def train_kd(
    student: Any, teacher: Any, data: Windows, s: dict[str, Any], steps: int, out: Path, seed: int
) -> tuple[Any, dict]:
    from trainers import DistillationConfig, DistillationTrainer

    args = training_args(
        DistillationConfig,
        out,
        s,
        steps,
        s["student_lr"],
        seed,
        temperature=s["kd_temperature"],
        alpha=s["kd_alpha"],
    )
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data)
    start = time.perf_counter()
    trainer.train()
    return trainer.model, {"train_s": round(time.perf_counter() - start, 1), "losses": logged_losses(trainer)}


def teacher_settings(s: dict[str, Any], seed: int, n_train: int, vocab: int) -> dict[str, Any]:
    keys = (
        "val_fraction",
        "seq_len",
        "batch_size",
        "hidden_size",
        "num_layers",
        "num_heads",
        "num_kv_heads",
        "intermediate_size",
        "teacher_steps",
        "teacher_lr",
        "warmup_ratio",
        "weight_decay",
    )
    return {
        "recipe": TEACHER_RECIPE,
        "seed": seed,
        "train_chars": n_train,
        "vocab": vocab,
        **{k: s[k] for k in keys},
    }


def build_llama(
    tokenizer: Any,
    seed: int,
    *,
    hidden: int,
    layers: int,
    heads: int,
    kv_heads: int,
    intermediate: int,
    max_len: int,
) -> Any:
    from hf_lite.testing import build_tiny_model

    if hidden % heads:
        raise ValueError(f"hidden_size={hidden} must be divisible by num_heads={heads}.")
    model, _ = build_tiny_model(
        "llama",
        tokenizer=tokenizer,
        seed=seed,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        intermediate_size=intermediate,
        max_position_embeddings=max_len,
        tie_word_embeddings=False,
    )
    return model


def get_teacher(ctx: Any, s: dict[str, Any], tokenizer: Any, train_ids: Any) -> tuple[Path, dict[str, Any]]:
    """The trained teacher's folder, trained now or found in the cache (keyed by its settings)."""
    settings = teacher_settings(s, ctx.seed, len(train_ids), len(tokenizer))
    folder, cached = cached_teacher(ctx, "teacher", settings)
    if cached is not None:
        return folder, cached
    model = build_llama(
        tokenizer,
        ctx.seed,
        hidden=s["hidden_size"],
        layers=s["num_layers"],
        heads=s["num_heads"],
        kv_heads=s["num_kv_heads"],
        intermediate=s["intermediate_size"],
        max_len=s["seq_len"],
    )
    data = Windows(
        train_ids, s["seq_len"], s["teacher_steps"] * s["batch_size"], seed_for(ctx.seed, "teacher")
    )
    model, log = train_ce(
        model, data, s, s["teacher_steps"], s["teacher_lr"], ctx.work / "teacher-run", ctx.seed
    )
    meta = {"settings": settings, "steps": s["teacher_steps"], **log}
    return save_teacher(folder, model, tokenizer, meta)  # the cache entry is complete or absent
