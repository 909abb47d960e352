"""The perf benchmark's result: tables, summary and notes around its figures.

Rendering only (see :mod:`benchmarks.perf.figures`); nothing is measured here.
"""

from __future__ import annotations

import os
import statistics
from typing import Any

from benchmarks.common import column, summarize_times
from benchmarks.perf.chunked_loss import JSD_BETA, baseline_variant, describe_variant
from benchmarks.perf.figures import derive, fmt_ms, goals, ms, ratio_rows
from benchmarks.perf.stepping import step_times


def assemble(
    s: dict[str, Any],
    teacher_meta: dict[str, Any],
    kd: dict[str, Any],
    prune: dict[str, Any],
    loss: dict[str, Any],
    trl_cmp: dict[str, Any],
    trl_missing: str | None,
) -> dict[str, Any]:
    """The benchmark's result: goals, tables and the raw timings (see the package docstring for the method)."""
    fig = derive(s, kd, prune, loss, trl_cmp)
    k = fig.k  # the teacher cache's top-k

    def step_rows(race_name: str, steps: dict[str, list], skip: int) -> list[dict[str, Any]]:
        out = []
        for name, log in steps.items():
            full, compute = (
                summarize_times(step_times(log, skip)),
                summarize_times(step_times(log, skip, "compute_s")),
            )
            out.append(
                {
                    "race": race_name,
                    "participant": name,
                    "median_ms": full["median_ms"],
                    "iqr_ms": full["iqr_ms"],
                    "compute_ms": compute["median_ms"],
                    "n": full["n"],
                }
            )
        return out

    timing_rows = step_rows("distillation", kd["steps"], fig.warm)
    for name, w in fig.windows.items():
        summary = summarize_times(w)
        timing_rows.append(
            {
                "race": f"pruning (sum of {fig.freq} steps)",
                "participant": name,
                "median_ms": summary["median_ms"],
                "iqr_ms": summary["iqr_ms"],
                "compute_ms": None,
                "n": summary["n"],
            }
        )
    timing_rows += step_rows("TRL vs hf-lite", trl_cmp["steps"], fig.trl_warm)

    loss_rows = []
    for v in loss["variants"]:
        base = baseline_variant(v)
        loss_rows.append(
            {
                "variant": describe_variant(v),
                "loss_bytes": fig.mem[v]["loss_bytes"],
                "x_mem": fig.mem[v]["loss_bytes"] / fig.mem[base]["loss_bytes"],
                "time_ms": fig.lt[v]["median_ms"],
                "x_time": fig.lt[v]["median_ms"] / fig.lt[base]["median_ms"],
                "value": loss["values"][v],
            }
        )

    trainer_rows = []
    for kind in trl_cmp["kinds"]:
        label = {
            "trl-gkd": f"TRL GKDTrainer (lmbda=0, beta={JSD_BETA})",
            "hf-lite-jsd": "DistillationTrainer jsd",
            "hf-lite-jsd-chunked": f"DistillationTrainer jsd, chunk_size={s['loss_chunk_size_small']}",
        }[kind]
        trainer_rows.append(
            {"trainer": label, "step_ms": ms(fig.trl_med[kind]), "train_bytes": fig.tmem[kind]["train_bytes"]}
        )

    student_how = f"Llama {s['student_layers']}×{s['student_hidden']}"
    quality_rows = [
        {
            "model": "teacher",
            "how": f"Llama {s['teacher_layers']}×{s['teacher_hidden']}, CE, {s['teacher_steps']} steps",
            "params": kd["params"]["teacher"],
            **fig.q["teacher"],
        },
        {
            "model": "student-ce",
            "how": f"{student_how}, plain CE (Trainer)",
            "params": kd["params"]["student"],
            **fig.q["student-ce"],
        },
        {
            "model": "kd-online",
            "how": f"DistillationTrainer, live teacher, forward KL, α={s['kd_alpha']}, "
            f"T={s['kd_temperature']}",
            "params": kd["params"]["student"],
            **fig.q["kd-online"],
        },
        {
            "model": "kd-cache",
            "how": f"DistillationTrainer from the top-{k} cache ({fig.bpt:.1f} bytes/token)",
            "params": kd["params"]["student"],
            **fig.q["kd-cache"],
        },
    ]
    for name, m in prune["models"].items():
        quality_rows.append(
            {
                "model": f"student-ce + {s['prune_steps']} steps, {name}",
                "how": "CE fine-tuning",
                "params": kd["params"]["student"],
                "sparsity": m["sparsity"],
                "accuracy": m["accuracy"],
                "perplexity": m["perplexity"],
            }
        )

    share = {name.split(" (")[0]: v for name, v in fig.med.items() if name.startswith("loss: ")}
    summary = (
        f"Ratios of medians of interleaved timings, all taken in one run on this machine. Distillation: a student "
        f"({kd['params']['student'] / 1e6:.2f}M parameters) and a teacher ({kd['params']['teacher'] / 1e6:.2f}M) "
        f"of hf-lite's tiny Llama on tinyshakespeare ({s['vocab_size']:,}-word vocabulary, batches of "
        f"{s['batch_size']}×{s['seq_len']} tokens), {s['student_steps']} steps each, the first {fig.warm} left out. "
        f"Teacher cache: k={k}, {kd['cache']['tokens']:,} tokens, {fig.bpt:.1f} bytes/token, computed in "
        f"{kd['cache']['precompute_s']:.0f} s. Chunked loss: generalized JSD on {fig.tok_label}. Pruning: the "
        f"CE-trained student fine-tuned {s['prune_steps']} more steps to {s['prune_sparsity']:.0%} sparsity, masks "
        f"recomputed every {fig.freq} steps."
    )
    notes = [
        f"Noise floor: the pruning race also runs the no-callback trainer twice (A/A control); its two medians "
        f"differ by {abs(fig.aa_ratio - 1):.1%} in this run. A ratio that meets or misses its goal by less than that "
        "is within the noise of the machine at the time.",
        "A step is timed from the moment its trainer is let go (batch fetching and collation included) to "
        "on_step_end; 'compute' starts at on_step_begin. The teacher forward is `torch.no_grad()` in eval mode on "
        "a batch of the same shape, as DistillationTrainer calls it. The distillation ratios come from the same "
        "rounds; the per-round KD ratio has median "
        f"{statistics.median(fig.per_round):.2f}×.",
        "The KD overhead is mostly the loss's share of a step. Timed alone in the race's first "
        f"{s['loss_share_rounds']} rounds (forward + backward on the logits of the first batch), the plain student's "
        f"CE takes {fmt_ms(share['loss: CE'])}, DistillationTrainer's forward KL + CE "
        f"{fmt_ms(share['loss: forward KL + CE'])} and the cached top-k KL + CE {fmt_ms(share['loss: top-k KL + CE'])}: "
        "at these tiny widths the vocabulary-sized softmaxes weigh more than in a real model, where the "
        "transformer layers dominate.",
        "Loss memory is the peak RSS of a fresh process during one forward + backward minus its RSS just before "
        "(inputs excluded, gradients included, after a warm-up call on 64 tokens); the baseline of the from-hidden "
        "variants builds both models' logits with F.linear, which the chunked variant never does whole.",
        "Loss values (all variants on the same inputs agree): "
        + ", ".join(f"{v} {loss['values'][v]:.6f}" for v in loss["variants"])
        + ".",
        f"TRL: {trl_missing}."
        if trl_missing
        else "TRL's GKDTrainer runs with lmbda=0 and seq_kd=False (no on-policy generation: the off-policy path that "
        "DistillationTrainer also takes), fp32 and no gradient checkpointing (TRL's defaults bf16=True and "
        "gradient_checkpointing=True turned off for both to run alike), on random tokens; train() memory is what "
        f"train() adds in a fresh process over {s['trl_memory_steps']} step(s), models and data excluded.",
    ]
    faults = {
        name: statistics.median([r.get("page_faults", 0) for r in rows[fig.warm :]])
        for name, rows in kd["steps"].items()
        if not name.startswith("loss: ")
    }
    allocator = {k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")}
    notes.append(
        "Page faults per step (medians): "
        + ", ".join(f"{n} {f:,.0f}" for n, f in faults.items())
        + ". glibc "
        "hands freed blocks of this size back to the system, and the next step that allocates them pays a page "
        "fault per 4 KiB again (~10 ms per 16k faults here), depending on the heap's state rather than on the "
        "code: identical trainers can differ by thousands of faults per step. Allocator settings of this run: "
        + (", ".join(f"{k}={v}" for k, v in allocator.items()) if allocator else "glibc's defaults")
        + ". `MALLOC_ARENA_MAX=1 MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=2147483647` keeps freed "
        "memory in the process (no faults after the first steps), so that the ratios compare the code only."
    )
    if teacher_meta.get("from_cache"):
        notes.append(
            "The teacher was loaded from the benchmark cache (trained by an earlier run with the same settings)."
        )

    return {
        "summary": summary,
        "goals": goals(fig),
        "tables": [
            {
                "title": "Ratios",
                "columns": [
                    column("ratio", "ratio"),
                    column("x", "measured", "x"),
                    column("goal", "goal"),
                    column("status", "status"),
                    column("raw", "medians"),
                ],
                "rows": ratio_rows(fig),
            },
            {
                "title": "Step times (medians of interleaved rounds)",
                "columns": [
                    column("race", "race"),
                    column("participant", "participant"),
                    column("median_ms", "step (ms)", "ms"),
                    column("iqr_ms", "IQR (ms)", "ms"),
                    column("compute_ms", "compute (ms)", "ms"),
                    column("n", "n", "int"),
                ],
                "rows": timing_rows,
            },
            {
                "title": f"Distillation losses, forward + backward, {fig.tok_label}",
                "columns": [
                    column("variant", "variant"),
                    column("loss_bytes", "peak memory", "bytes"),
                    column("x_mem", "× plain", "x"),
                    column("time_ms", "time (ms)", "ms"),
                    column("x_time", "× plain", "x"),
                ],
                "rows": loss_rows,
                "notes": [
                    "'× plain' compares with the plain loss on the same inputs: logits given, the plain loss in one "
                    "block of rows (whole (tokens, vocab) temporaries, as on an accelerator; on the CPU "
                    "distillation_loss itself runs in blocks, the 'hf-lite distillation_loss' row); hidden states "
                    "given, the plain loss after building the logits."
                ],
            },
            {
                "title": f"Distillation trainers, tiny Llama pair with a {s['loss_vocab'] // 1000}k vocabulary, batch "
                f"{s['trl_batch_size']}×{s['trl_seq_len']}",
                "columns": [
                    column("trainer", "trainer"),
                    column("step_ms", "step (ms)", "ms"),
                    column("train_bytes", "train() peak memory", "bytes"),
                ],
                "rows": trainer_rows,
                "notes": [f"TRL rows missing: {trl_missing}."] if trl_missing else [],
            },
            {
                "title": "Quality checks (validation: next-token accuracy, perplexity)",
                "columns": [
                    column("model", "model"),
                    column("how", "how"),
                    column("params", "params", "params"),
                    column("sparsity", "sparsity", "pct"),
                    column("accuracy", "accuracy", "pct2"),
                    column("perplexity", "perplexity", "{:.1f}"),
                ],
                "rows": quality_rows,
            },
        ],
        "notes": notes,
        "settings": s,
        "teacher": {key: v for key, v in teacher_meta.items() if key != "settings"},
        "raw": {
            "distillation_steps": kd["steps"],
            "kd_ratio_per_round_median": statistics.median(fig.per_round),
            "cache": kd["cache"],
            "quality": kd["quality"],
            "loss": {"memory": fig.mem, "timing": fig.lt, "values": loss["values"]},
            "trainers": trl_cmp,
            "pruning": {"windows_s": fig.windows, "steps": prune["steps"], "models": prune["models"]},
        },
    }
