"""Rows 1 and 2 of the perf benchmark: the distillation race.

Plain CE student, online KD, KD from a teacher cache, both again with ``compile_loss``, the teacher's
forward, and the three losses alone.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.perf.lm import evaluate_lm, llama_kwargs, lm_dataset, training_args
from benchmarks.perf.stepping import SteppedTrainer, TimedCall, race


def distillation_race(
    ctx: Any, s: dict[str, Any], teacher_dir: Path, tokenizer: Any, train_blocks: list, val: Any
) -> tuple[Any, dict[str, Any]]:
    """Rows 1 and 2; returns the CE-trained student (the pruning race fine-tunes copies of it) and the results."""
    import torch
    from transformers import Trainer, TrainingArguments, default_data_collator

    from hf_lite import load_model
    from hf_lite.teacher_cache import TeacherCacheCollator, cache_bytes_per_token, precompute_teacher_cache
    from hf_lite.testing import build_tiny_model
    from trainers import DistillationConfig, DistillationTrainer

    steps, bs = s["student_steps"], s["batch_size"]
    rows = [train_blocks[i % len(train_blocks)] for i in range(steps * bs)]  # exactly one pass of the race
    data = lm_dataset(rows)
    teacher = load_model(teacher_dir, task="causal-lm", dtype=torch.float32).eval()

    cache_dir = ctx.work / f"teacher-cache-k{s['cache_k']}"
    for path in (cache_dir, cache_dir.with_name(cache_dir.name + ".partial")):
        shutil.rmtree(path, ignore_errors=True)
    with ctx.phase("teacher cache"):
        start = time.perf_counter()
        cache = precompute_teacher_cache(
            teacher,
            data,
            cache_dir,
            tokenizer=tokenizer,
            k=s["cache_k"],
            temperature=s["kd_temperature"],
            batch_size=32,
        )
        precompute_s = time.perf_counter() - start
    bytes_per_token = float(cache_bytes_per_token(cache_dir))
    by_column = cache_bytes_per_token(cache_dir, by_column=True)

    def student() -> Any:
        return build_tiny_model(
            "llama",
            tokenizer=tokenizer,
            seed=ctx.seed,
            **llama_kwargs(s["student_hidden"], s["student_layers"]),
        )[0]

    common = dict(steps=steps, lr=s["student_lr"], batch_size=bs, seed=ctx.seed)
    kd = dict(temperature=s["kd_temperature"], alpha=s["kd_alpha"], loss_type="forward_kl")
    out = ctx.work / "race"
    ce_trainer = Trainer(
        model=student(),
        args=training_args(TrainingArguments, out / "ce", **common),
        train_dataset=data,
        data_collator=default_data_collator,
    )

    def kd_trainer(name: str, teacher_model: Any, dataset: Any, collator: Any, **extra: Any) -> Any:
        return DistillationTrainer(
            model=student(),
            teacher_model=teacher_model,
            train_dataset=dataset,
            args=training_args(DistillationConfig, out / name, **common, **kd, **extra),
            data_collator=collator,
            processing_class=tokenizer,
        )

    online = kd_trainer("online", teacher, data, default_data_collator)
    cached = kd_trainer("cache", None, cache, TeacherCacheCollator(tokenizer))
    # the same two with DistillationConfig(compile_loss=True): the loss through torch.compile
    online_c = kd_trainer("online-c", teacher, data, default_data_collator, compile_loss=True)
    cached_c = kd_trainer("cache-c", None, cache, TeacherCacheCollator(tokenizer), compile_loss=True)
    batch = default_data_collator([data[i] for i in range(bs)])
    teacher_inputs = {k: v for k, v in batch.items() if k != "labels"}  # what DistillationTrainer gives it

    def teacher_forward() -> None:
        with torch.no_grad():  # as in DistillationTrainer.compute_loss
            teacher(**teacher_inputs)

    cache_batch = TeacherCacheCollator(tokenizer)([cache[i] for i in range(bs)])
    share = loss_calls(s, student(), teacher, batch, cache_batch)
    participants = {
        "student-ce": SteppedTrainer(ce_trainer, "student-ce"),
        "kd-online": SteppedTrainer(online, "kd-online"),
        "kd-cache": SteppedTrainer(cached, "kd-cache"),
        "kd-online-compiled": SteppedTrainer(online_c, "kd-online-compiled"),
        "kd-cache-compiled": SteppedTrainer(cached_c, "kd-cache-compiled"),
        "teacher-forward": TimedCall(teacher_forward),
        **{name: TimedCall(call) for name, call in share.items()},
    }
    with ctx.phase("distillation race"):
        steps_log = race(participants, steps, limits={name: s["loss_share_rounds"] for name in share})
    with ctx.phase("evaluate students"):
        quality = {
            "teacher": evaluate_lm(teacher, val),
            "student-ce": evaluate_lm(ce_trainer.model, val),
            "kd-online": evaluate_lm(online.model, val),
            "kd-cache": evaluate_lm(cached.model, val),
            "kd-online-compiled": evaluate_lm(online_c.model, val),
            "kd-cache-compiled": evaluate_lm(cached_c.model, val),
        }
    return ce_trainer.model, {
        "steps": steps_log,
        "quality": quality,
        "cache": {
            "bytes_per_token": bytes_per_token,
            "by_column": by_column,
            "k": s["cache_k"],
            "precompute_s": round(precompute_s, 2),
            "rows": len(data),
            "tokens": len(data) * s["seq_len"],
        },
        "params": {
            "teacher": sum(p.numel() for p in teacher.parameters()),
            "student": sum(p.numel() for p in ce_trainer.model.parameters()),
        },
    }


def loss_calls(
    s: dict[str, Any], student: Any, teacher: Any, batch: dict[str, Any], cache_batch: dict[str, Any]
) -> dict[str, Any]:
    """The losses of the race's three trainers alone (forward + backward), on the logits of the race's first
    batch: the student's (a fresh copy of the race's initialisation) and the teacher's, and the cached top-k
    of that batch. They take part in the race's first rounds, to show how much of each step is loss."""
    import torch
    from transformers.loss.loss_utils import ForCausalLMLoss

    from hf_lite import losses

    temp, alpha = s["kd_temperature"], s["kd_alpha"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    labels = batch["labels"]
    with torch.no_grad():
        student_logits = student(**inputs).logits.detach().requires_grad_()  # (B, L, V)
        teacher_logits = teacher(**inputs).logits  # (B, L, V)
    logprobs, indices = cache_batch["teacher_topk_logprobs"], cache_batch["teacher_topk_indices"]  # (B, L, k)
    vocab = student_logits.shape[-1]

    def ce() -> None:  # what the plain student's forward computes (transformers' causal-LM loss)
        student_logits.grad = None
        ForCausalLMLoss(student_logits, labels, vocab_size=vocab).backward()

    def kd(
        cached: bool,
    ) -> None:  # the loss part of DistillationTrainer.compute_loss (alpha < 1: one fused pass)
        student_logits.grad = None
        kd_labels = losses.shift_labels(labels)
        if cached:
            out = losses.topk_distillation_and_ce_loss(
                student_logits, logprobs, indices, kd_labels, alpha=alpha, temperature=temp
            )
        else:
            out = losses.distillation_and_ce_loss(
                student_logits,
                teacher_logits,
                kd_labels,
                alpha=alpha,
                loss_type="forward_kl",
                temperature=temp,
            )
        out.loss.backward()

    return {
        "loss: CE (student-ce)": ce,
        "loss: forward KL + CE (kd-online)": lambda: kd(False),
        "loss: top-k KL + CE (kd-cache)": lambda: kd(True),
    }
