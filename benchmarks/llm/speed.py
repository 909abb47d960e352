"""Costs measured on the real model: the distillation step at a 49k vocabulary, and QLoRA vs. full fine-tuning.

The step race runs every participant one step per round, in a rotating order (``benchmarks.perf.stepping``),
so the machine's noise hits all alike; figures are medians after the first rounds. Training memory runs each
mode in a fresh process (``benchmarks.causal_lm.memory.training_peak``).
"""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path
from typing import Any

from benchmarks.common import run_isolated


def distillation_step_race(
    ctx: Any, s: dict[str, Any], teacher: Any, student: Any, tokenizer: Any, rows: list[list[int]]
) -> dict[str, Any]:
    """Student CE step vs. DistillationTrainer step (online teacher) vs. DistillationTrainer from a top-k
    teacher cache vs. the teacher's forward alone, on the same batches; returns medians and ratios."""
    import copy

    import torch
    from transformers import Trainer, TrainingArguments, default_data_collator

    from benchmarks.perf.lm import lm_dataset
    from benchmarks.perf.stepping import SteppedTrainer, TimedCall, race, step_times
    from hf_lite.teacher_cache import TeacherCacheCollator, precompute_teacher_cache
    from trainers import DistillationConfig, DistillationTrainer

    bs, rounds = s["race_batch"], s["race_rounds"]
    data = lm_dataset(rows[: bs * rounds])
    cache_dir = Path(ctx.work) / "race-cache"
    for path in (cache_dir, cache_dir.with_name(cache_dir.name + ".partial")):
        shutil.rmtree(path, ignore_errors=True)
    cache = precompute_teacher_cache(
        teacher, data, cache_dir, tokenizer=tokenizer, k=s["cache_k"], temperature=1.0, batch_size=bs
    )

    def args(cls: Any, name: str, **extra: Any) -> Any:
        from benchmarks.common import cpu_training_args

        return cpu_training_args(
            cls, Path(ctx.work) / "race" / name, batch_size=bs, steps=rounds, lr=1e-5, seed=ctx.seed, **extra
        )

    ce = Trainer(
        model=copy.deepcopy(student),
        args=args(TrainingArguments, "ce"),
        train_dataset=data,
        data_collator=default_data_collator,
    )
    kd = dict(temperature=1.0, alpha=1.0, loss_type="forward_kl")
    online = DistillationTrainer(
        model=copy.deepcopy(student),
        teacher_model=teacher,
        args=args(DistillationConfig, "online", **kd),
        train_dataset=data,
        data_collator=default_data_collator,
        processing_class=tokenizer,
    )
    cached = DistillationTrainer(
        model=copy.deepcopy(student),
        teacher_model=None,
        args=args(DistillationConfig, "cache", **kd),
        train_dataset=cache,
        data_collator=TeacherCacheCollator(tokenizer),
        processing_class=tokenizer,
    )
    batch = default_data_collator([data[i] for i in range(bs)])
    inputs = {k: v for k, v in batch.items() if k != "labels"}

    def teacher_forward() -> None:
        with torch.no_grad():
            teacher(**inputs)

    steps = race(
        {
            "student-ce": SteppedTrainer(ce, "student-ce"),
            "kd-online": SteppedTrainer(online, "kd-online"),
            "kd-cache": SteppedTrainer(cached, "kd-cache"),
            "teacher-forward": TimedCall(teacher_forward),
        },
        rounds,
    )
    skip = s["race_skip"]
    med = {name: statistics.median(step_times(log, skip)) for name, log in steps.items()}
    return {
        "median_s": med,
        "online_ratio": med["kd-online"] / (med["student-ce"] + med["teacher-forward"]),
        "cache_ratio": med["kd-cache"] / med["student-ce"],
        "batch": [bs, len(rows[0])],
        "rounds": rounds,
        "skipped": skip,
        "cache_k": s["cache_k"],
        "steps": steps,
    }


def training_memory(
    ctx: Any, s: dict[str, Any], folder: Path, rows: list[list[int]], threads: int
) -> list[dict]:
    """Full fine-tuning vs. QLoRA of the teacher checkpoint (``folder``), with and without gradient
    checkpointing, each in a fresh process: training peak RSS (after loading) and training tokens/s."""
    from benchmarks.causal_lm.memory import MALLOC_ENV, PRELOAD

    runs: dict[tuple[str, bool], dict[str, Any]] = {}
    for ckpt in (False, True):
        for mode in ("full", "qlora"):
            ctx.log(f"training memory: {mode}, gradient checkpointing {ckpt}")
            out = run_isolated(
                "benchmarks.causal_lm.memory:training_peak",
                {
                    "folder": str(folder),
                    "mode": mode,
                    "gradient_checkpointing": ckpt,
                    "input_ids": rows[: s["mem_batch"]],
                    "steps": s["mem_steps"],
                    "lr": 1e-5,
                    "threads": threads,
                    "seed": ctx.seed,
                },
                preload=(*PRELOAD, "peft", "bitsandbytes"),
                env=MALLOC_ENV,
                capture_output=True,
            )
            runs[(mode, ckpt)] = {**out.result, "train_peak_bytes": out.added_rss_bytes}
    table = []
    for (mode, ckpt), r in runs.items():
        full = runs[("full", ckpt)]
        table.append(
            {
                "row": f"{'QLoRA' if mode == 'qlora' else 'full fine-tune'}{' + grad. checkpointing' if ckpt else ''}",
                "how": (
                    "fp32 weights, all trainable"
                    if mode == "full"
                    else "NF4 + double quantization, LoRA r=16 on every linear layer (load_model)"
                ),
                "mode": mode,
                "gradient_checkpointing": ckpt,
                "trainable_params": r["trainable_params"],
                "train_peak_bytes": r["train_peak_bytes"],
                "ratio_to_full": r["train_peak_bytes"] / full["train_peak_bytes"],
                "train_tokens_per_s": r["tokens_per_s"],
                "losses": r["losses"],
            }
        )
    return table


def loss_memory(ctx: Any, s: dict[str, Any], config: Any, threads: int) -> list[dict]:
    """The distillation loss at this model's vocabulary, each variant in a fresh process: what one forward +
    backward adds to memory (RSS) from the last hidden states and the LM head weights of a student and a
    teacher of this model's width, for ``race_batch`` x ``seq_len`` tokens. ``plain`` builds the whole
    (tokens, vocabulary) logits first; ``chunked`` is ``chunked_distillation_loss_from_hidden``."""
    from benchmarks.perf.chunked_loss import describe_variant, memory_env

    dims = {
        "tokens": s["race_batch"] * s["seq_len"],
        "vocab": config.vocab_size,
        "hidden_student": config.hidden_size,
        "hidden_teacher": config.hidden_size,
    }
    table = []
    for variant in ("plain-hidden", f"chunked-hidden@{s['loss_chunk']}"):
        out = run_isolated(
            "benchmarks.perf.chunked_loss:loss_memory_child",
            {"variant": variant, **dims, "seed": ctx.seed},
            preload=("torch", "hf_lite.losses"),
            env=memory_env(threads),
            capture_output=True,
        )
        table.append({"row": variant, "how": describe_variant(variant), **out.result, **dims})
        ctx.log(f"loss memory {variant}: {out.result['loss_bytes'] / 2**20:.0f} MiB")
    for row in table:
        row["ratio_to_plain"] = row["loss_bytes"] / table[0]["loss_bytes"]
    return table
