"""Rendering of the SST-2 encoder benchmark's result: table columns, goals, notes and the summary."""

from __future__ import annotations

from typing import Any

from benchmarks.common import HOW, MODEL, NONZERO, PARAMS, SAFETENSORS, column
from benchmarks.sst2_encoder.training import MODEL_NAME

COLUMNS = [
    MODEL,
    column("accuracy", "dev accuracy", "pct"),
    column("pct_of_teacher", "% of teacher", "pct"),
    PARAMS,
    NONZERO,
    SAFETENSORS,
    column("latency_b1_ms", "latency b1 (ms)", "ms"),
    column("latency_b32_ms", "latency b32 (ms)", "ms"),
    column("speedup_b1", "speedup b1", "x"),
    column("speedup_b32", "speedup b32", "x"),
    column("train_s", "train (min)", "min"),
    HOW,
]


def _pts(a: float, b: float) -> str:
    return f"{100 * (a - b):+.1f} points"


def goals(rows: dict[str, dict[str, Any]], best: str) -> list[dict[str, Any]]:
    t = rows["teacher"]["accuracy"]
    b, ce = rows[best]["accuracy"], rows["student-ce"]["accuracy"]
    kd = max(rows["student-kd"]["accuracy"], rows["student-kd-hidden"]["accuracy"])
    goals = [
        {
            "goal": "a student with half the teacher's layers keeps ≥ 98% of the teacher's accuracy",
            "measured": f"{best}: {100 * b / t:.1f}% ({100 * b:.1f} vs {100 * t:.1f})",
            "met": b / t >= 0.98,
        },
        {
            "goal": "distillation beats plain CE for the same student by ≥ 1 point",
            "measured": f"{_pts(kd, ce)} ({100 * kd:.1f} vs {100 * ce:.1f})",
            "met": kd - ce >= 0.01 - 1e-9,
        },
    ]
    for label in ("b1", "b32"):
        key = "speedup_" + label
        good = [r for r in rows.values() if r["accuracy"] / t >= 0.97]
        ok = [r for r in good if r[key] >= 2.0]
        fast = max(good, key=lambda r: r[key])
        if ok:
            measured = ", ".join(f"{r['row']} ({100 * r['accuracy'] / t:.1f}%, {r[key]:.2f}×)" for r in ok)
        else:
            measured = f"fastest row at ≥ 97%: {fast['row']} at {fast[key]:.2f}×"
        goals.append(
            {
                "goal": f"some row keeps ≥ 97% at ≥ 2.0× CPU speedup, batch {label[1:]}",
                "measured": measured,
                "met": bool(ok),
            }
        )
    for suffix, bits, limit in (("int8", 8, 0.005), ("nf4", 4, 0.015)):
        q = rows[f"{best}-{suffix}"]["accuracy"]
        goals.append(
            {
                "goal": f"{bits}-bit loses ≤ {100 * limit:.1f} point(s)",
                "measured": f"{_pts(q, b)} ({100 * q:.1f} vs {100 * b:.1f})",
                "met": b - q <= limit + 1e-9,
            }
        )
    return goals


def latency_note(s: dict[str, Any], b1: dict, b32: dict) -> str:
    return (
        f"Latency inputs: batch 1 = the dev sentence of median length ({b1['input_ids'].shape[1]} tokens); "
        f"batch 32 = the first 32 dev sentences padded to {b32['input_ids'].shape[1]} tokens. Median of "
        f"{s['latency_repeats_b1']} (batch 1) and {s['latency_repeats_b32']} (batch 32) interleaved rounds "
        "after warm-up; speedup = teacher latency ÷ row latency."
    )


def summary(best: str, s: dict, teacher_meta: dict, steps: int, n_train: int, n_kd: int, n_dev: int) -> str:
    cached = ", loaded from the cache" if teacher_meta["from_cache"] else ""
    return (
        f"Teacher: {MODEL_NAME} fine-tuned on {n_train:,} SST-2 training rows for {s['teacher_epochs']:g} "
        f"epoch(s) ({teacher_meta['steps']} steps of batch {s['batch_size']}{cached}). Students: "
        f"{steps} steps each of batch {s['batch_size']}; the distilled ones read a transfer set of {n_kd:,} "
        f"rows (the labelled rows and EDA copies, labelled by the teacher as they are read). Best distilled "
        f"student (the base of the pruned and quantized rows): {best}. Dev accuracy on {n_dev} rows."
    )


def notes(s: dict, best: str, steps: int, recovery_steps: int) -> list[str]:
    return [
        "The best distilled student is chosen by dev accuracy (the split reported here; SST-2 has no "
        "labelled test split), so its row is optimistic by that selection; no other row is selected.",
        "Unstructured sparsity zeroes weights without shrinking the dense tensors: files and latency stay "
        "those of the dense student (sparse kernels would be needed to gain speed); the nonzero column "
        "shows the pruning.",
        "8-bit and 4-bit rows run bitsandbytes' CPU kernels: their latency is that backend's, not a GPU's. "
        "Embeddings and the classifier stay in full precision, so the files shrink less than the linear "
        "layers.",
        f"Word embeddings frozen during all training: {s['freeze_word_embeddings']}. Max sequence length "
        f"{s['max_seq_length']}, dynamic padding, length-grouped batches, fp32, learning rate "
        f"{s['student_lr']:g} (students) / {s['teacher_lr']:g} (teacher), linear decay after "
        f"{100 * s['warmup_ratio']:g}% warm-up; pruned rows distilled {recovery_steps} more steps.",
    ]
