"""Rendering of the LLM benchmark's result (nothing is measured here): columns, goals, notes, summary."""

from __future__ import annotations

from typing import Any

from benchmarks.common import HOW, MODEL, NONZERO, PARAMS, SAFETENSORS, column

COLUMNS = [
    MODEL,
    column("ppl_shakespeare", "ppl Shakespeare", "{:.2f}"),
    column("ppl_sst2", "ppl SST-2", "{:.2f}"),
    PARAMS,
    NONZERO,
    SAFETENSORS,
    column("bytes_vs_teacher", "bytes ÷ teacher", "{:.2f}"),
    column("tokens_per_s", "CPU tokens/s", "int"),
    column("speedup", "speedup", "x"),
    column("time_s", "prune/train (min)", "min"),
    HOW,
]

STEP_COLUMNS = [column("row", "step"), column("median_s", "median s/step", "{:.3f}")]

LOSS_COLUMNS = [
    column("row", "loss"),
    column("tokens", "tokens", "int"),
    column("vocab", "vocabulary", "int"),
    column("loss_bytes", "memory added", "bytes"),
    column("ratio_to_plain", "÷ whole logits", "{:.2f}"),
    column("seconds", "s", "{:.2f}"),
    HOW,
]

MEMORY_COLUMNS = [
    column("row", "training"),
    column("trainable_params", "trainable", "params"),
    column("train_peak_bytes", "training peak", "bytes"),
    column("ratio_to_full", "÷ full fine-tune", "{:.2f}"),
    column("train_tokens_per_s", "train tokens/s", "{:.0f}"),
    HOW,
]

_SETS = ("shakespeare", "sst2")


def _ppl(rows: dict[str, dict[str, Any]], name: str) -> str:
    return ", ".join(f"{k} {rows[name][f'ppl_{k}']:.2f}" for k in _SETS)


def goals(
    rows: dict[str, dict[str, Any]], step: dict[str, Any], memory: list[dict], s: dict[str, Any]
) -> list[dict]:
    """The issue's goals, each with what was measured and whether it was met."""
    out = []
    t = rows["teacher"]

    def rise(name: str, key: str) -> float:
        return rows[name][f"ppl_{key}"] - t[f"ppl_{key}"]

    ratios = {
        k: rise("wanda-50", k) / rise("magnitude-50", k) if rise("magnitude-50", k) > 0 else None
        for k in _SETS
    }
    out.append({
        "goal": "Wanda at 50% raises validation perplexity by ≤ ⅓ of what magnitude pruning at 50% raises it "
        "(published Llama-2-7B ratio ≈ 0.13)",
        "measured": "; ".join(
            f"{k}: Wanda {rise('wanda-50', k):+.2f}, magnitude {rise('magnitude-50', k):+.2f}"
            + (f", ratio {r:.2f}" if r is not None else "") for k, r in ratios.items()
        ),
        "met": all(r is not None and r <= 1 / 3 for r in ratios.values()),
    })  # fmt: skip
    out.append({
        "goal": "SparseGPT at 50% ≤ Wanda at 50% (perplexity); both at 2:4 reported",
        "measured": f"SparseGPT {_ppl(rows, 'sparsegpt-50')}; Wanda {_ppl(rows, 'wanda-50')}; 2:4: SparseGPT "
        f"{_ppl(rows, 'sparsegpt-2:4')}, Wanda {_ppl(rows, 'wanda-2:4')}, magnitude {_ppl(rows, 'magnitude-2:4')}",
        "met": all(rows["sparsegpt-50"][f"ppl_{k}"] <= rows["wanda-50"][f"ppl_{k}"] for k in _SETS),
    })  # fmt: skip
    bases = [r["base"] for r in rows.values() if r.get("stage") == "pruned"]
    beats = {b: all(rows[f"{b}+kd"][f"ppl_{k}"] < rows[f"{b}+ce"][f"ppl_{k}"] for k in _SETS) for b in bases}
    corrected = rows.get("teacher-corrected")
    source = " (both from the pruned corrected teacher; KD from the corrected teacher)" if corrected else ""
    out.append({
        "goal": "distillation beats plain CE for every structural row at the same token budget",
        "measured": "; ".join(
            f"{b}: KD {_ppl(rows, b + '+kd')} vs CE {_ppl(rows, b + '+ce')}" for b in bases
        ) + source,
        "met": all(beats.values()),
    })  # fmt: skip
    for b in ("minitron", "depth-half", "ffn-50"):
        rec = {}
        for k in _SETS:
            lost = rows[b][f"ppl_{k}"] - t[f"ppl_{k}"]
            rec[k] = (rows[b][f"ppl_{k}"] - rows[f"{b}+kd"][f"ppl_{k}"]) / lost if lost > 0 else None
        out.append({
            "goal": f"{b}: distillation recovers ≥ 50% of the perplexity lost to pruning "
            "(ppl_pruned − ppl_kd ≥ ½ (ppl_pruned − ppl_teacher))" + ("" if b == "minitron" else " (reported)"),
            "measured": "; ".join(
                f"{k}: pruned {rows[b][f'ppl_{k}']:.2f} → KD {rows[f'{b}+kd'][f'ppl_{k}']:.2f} (teacher "
                f"{t[f'ppl_{k}']:.2f}" + (f", corrected {corrected[f'ppl_{k}']:.2f}" if corrected else "") + ")"
                + (f", recovered {100 * r:.0f}%" if r is not None else "")
                for k, r in rec.items()
            ),
            "met": all(r is not None and r >= 0.5 for r in rec.values()) if b == "minitron" else None,
        })  # fmt: skip
    m = rows["minitron+kd"]
    out.append({
        "goal": "structural rows at ≈ 50% of the parameters: ≥ 1.6 × the teacher's CPU tokens/s and ≤ 0.6 × its bytes",
        "measured": "; ".join(
            f"{n}: {rows[n]['params_vs_teacher']:.2f} × params, {rows[n]['speedup']:.2f} × tokens/s, "
            f"{rows[n]['bytes_vs_teacher']:.2f} × bytes" for n in ("minitron+kd", "depth-half+kd")
        ),
        "met": m["speedup"] >= 1.6 and m["bytes_vs_teacher"] <= 0.6,
    })  # fmt: skip
    ck = next(r for r in memory if r["mode"] == "qlora" and r["gradient_checkpointing"])
    out.append({
        "goal": "QLoRA training peak ≤ 0.4 × full fine-tuning, gradient checkpointing on both",
        "measured": f"ratio {ck['ratio_to_full']:.2f} (without checkpointing "
        f"{next(r for r in memory if r['mode'] == 'qlora' and not r['gradient_checkpointing'])['ratio_to_full']:.2f})",
        "met": ck["ratio_to_full"] <= 0.4,
    })  # fmt: skip
    out.append({
        "goal": "distillation step ≤ 1.05 × (student step + teacher forward); cached step ≤ 1.10 × student step",
        "measured": f"online {step['online_ratio']:.2f}, cached {step['cache_ratio']:.2f}",
        "met": step["online_ratio"] <= 1.05 and step["cache_ratio"] <= 1.10,
    })  # fmt: skip
    return out


def summary(s: dict[str, Any], arch: str, gguf: str, load_s: float, counts: dict[str, Any]) -> str:
    val = ", ".join(
        f"{k} {v:,} tokens ({counts['val_rows'][k]} rows)" for k, v in counts["val_tokens"].items()
    )
    return (
        f"Teacher: {arch}, loaded by hf_lite.load_teacher from {gguf} (a dequantized Q4_1 copy of the released "
        f"weights) in {load_s:.0f} s. Training stream: {counts['train_tokens']:,} tokens (Tiny Shakespeare's "
        f"first 90% + SST-2 training sentences). Validation, perplexity per SmolLM2 token: {val}. Calibration: "
        f"{counts['calibration_windows']} windows of {s['calibration_seq_len']} tokens. Each trained row: "
        f"{s['train_steps']} steps × {s['train_batch']} windows × {s['seq_len']} tokens = "
        f"{counts['train_tokens_per_row']:,} tokens, lr {s['train_lr']:g} (cosine, warm-up "
        f"{100 * s['warmup_ratio']:.0f}%)."
        + (
            f" Teacher correction before the structural rows: {s['correction_steps']} steps × {s['train_batch']} "
            f"windows × {s['seq_len']} tokens of plain CE, lr {s['correction_lr']:g}."
            if s["correction_steps"] > 0
            else ""
        )
    )


def notes(s: dict[str, Any], step: dict[str, Any]) -> list[str]:
    b, L = step["batch"]
    return [
        "Every row was saved and reloaded with stock from_pretrained before scoring. One-shot rows store zeros "
        "densely (same bytes and speed as the teacher: no sparse kernels on the CPU).",
        f"Distillation step: batch {b} × {L} tokens, {step['rounds']} rotating rounds, the first "
        f"{step['skipped']} left out; online ratio = DistillationTrainer step ÷ (CE step + teacher forward), cached "
        f"ratio = step from a top-{step['cache_k']} cache ÷ CE step.",
        "Throughput: the teacher and the distilled structural rows, forward passes on the CPU, side by side.",
    ]
