"""Performance ratios: what distillation, a teacher cache, the chunked loss and the pruning callback cost,
each as a ratio of two things measured side by side in one run.

The machine this runs on is shared and noisy, so nothing here divides numbers taken at different times:
every time ratio divides two medians of timings taken *interleaved*, round after round, in one process
(the order rotating each round), so a burst of background load lands on both sides alike.

**How a training step is timed.** Each trainer runs its real ``trainer.train()`` (the stock
``transformers`` loop, callbacks and all) in a worker thread that pauses after every optimizer step
(:class:`SteppedTrainer`: a ``TrainerCallback`` gate at ``on_step_end``). The main thread lets one trainer
at a time take one step, so the trainers of a race advance in lock step and never run at the same time.
A step's time runs from the moment its trainer is let go to its ``on_step_end``: fetching and collating
the batch, forward, backward, gradient clipping, optimizer and scheduler steps and every
``on_pre_optimizer_step``/``on_optimizer_step`` callback (the part from ``on_step_begin`` is kept too, as
"compute"). The first ``warmup_steps`` steps (which carry ``train()``'s set-up) are left out. A plain
function (the teacher's forward) takes part in the rounds the same way.

**Rows 1 and 2: distillation step, cached teacher** (tinyshakespeare, a word-level tokenizer of
``vocab_size`` words built from the training text, blocks of ``seq_len`` tokens; the last 10% of the
characters for validation). A teacher (hf-lite's tiny Llama at ``teacher_layers`` x ``teacher_hidden``) is
trained with plain CE and cached under ``benchmarks/.cache/perf/``. Six participants then race for
``student_steps`` rounds on the same batches in the same order (a sequential sampler over blocks shuffled
once with the seed; every batch is ``batch_size x seq_len``): a student (``student_layers`` x
``student_hidden``) trained with plain CE by ``transformers.Trainer``; the same initialisation distilled
online by ``trainers.DistillationTrainer`` (forward KL, ``kd_alpha``, ``kd_temperature``); the same
initialisation distilled from a teacher cache (``hf_lite.teacher_cache.precompute_teacher_cache``, k =
``cache_k``, read by ``TeacherCacheCollator``, ``teacher_model=None``); those two again with
``DistillationConfig(compile_loss=True)`` (the loss through ``torch.compile``; its compilation falls in the
left-out first steps); and one ``torch.no_grad()`` forward of the teacher in evaluation mode on a batch of
the same shape. Ratios: KD online / (CE student + teacher forward), and KD from the cache / CE student,
each without and with ``compile_loss``. Cache size: ``cache_bytes_per_token`` (the Arrow
buffers of the teacher columns, measured). KD result: validation next-token accuracy (top-1; the
difference in percentage points) and perplexity of each student after the race. To show how much of a
step is loss, the three trainers' losses alone (forward + backward on the student's and teacher's logits
of the first batch, and its cached top-k) take part in the first ``loss_share_rounds`` rounds of the race.

**Row 3: chunked loss and TRL** (random inputs; generalized JSD, beta 0.5, T = 1, the loss of TRL's
``GKDTrainer``; every position labelled, as in a packed batch): ``loss_tokens`` positions x ``loss_vocab``
classes, fp32. Memory: each variant runs forward + backward once in a fresh process
(``benchmarks.common.run_isolated``, after a warm-up call on 64 tokens); the figure is that process's
peak RSS during the call minus its RSS just before (the peak mark is reset then), so inputs are not
counted but gradients and every temporary are. glibc is set to return freed blocks of 64 KiB or more to
the system at once (:data:`MEMORY_ENV`) so that RSS follows live tensors. Variants on given logits:
``distillation_loss`` (on the CPU it computes its rows in blocks of ``hf_lite.losses._fused.BLOCK_ELEMENTS``
values); the same in one block of rows (whole ``(tokens, vocab)`` temporaries, as it runs on an accelerator:
the baseline of the chunked variants); ``chunked_distillation_loss`` with chunks of ``loss_chunk_size`` and
``loss_chunk_size_small`` (its default) tokens; TRL's ``GKDTrainer.generalized_jsd_loss`` called as
``GKDTrainer.compute_loss`` calls it. From final hidden states and LM-head weights (the widths of the
tiny student and teacher): logits built with ``F.linear`` then ``distillation_loss``, against
``chunked_distillation_loss_from_hidden`` at both chunk sizes. Time: the same calls side by side in one
process (median of ``loss_repeats`` rounds). Then the tiny student/teacher pair with a ``loss_vocab``
vocabulary, on random tokens, trained by TRL's ``GKDTrainer`` (``lmbda=0``, ``seq_kd=False``: distillation
on the dataset's sequences, no generation; ``beta=0.5``; fp32 without gradient checkpointing like
hf-lite, TRL's defaults ``bf16=True``/``gradient_checkpointing=True`` turned off) and by
``DistillationTrainer(loss_type="jsd", beta=0.5, alpha=1, temperature=1)``, plain and with
``chunk_size=loss_chunk_size_small``: step times raced as above, and the RSS each one's ``train()`` adds
over ``trl_memory_steps`` steps in its own process (models and data built before the mark). TRL is in
the benchmark environment only (``pip install trl``); without it those rows say so.

**Row 4: pruning callback.** Copies of the CE-trained student fine-tuned side by side with plain CE for
``prune_steps`` steps: without a callback; with ``trainers.PruningCallback`` (magnitude, unstructured,
per layer, cubic schedule from 0 to ``prune_sparsity`` at the last step, masks recomputed every
``prune_frequency`` steps); and with the same schedule done by ``torch.nn.utils.prune.l1_unstructured``
(:func:`torch_prune_callback`, a ``TrainerCallback`` that re-prunes the same layers at the same steps and
calls ``prune.remove`` at the end). Each mask update falls on the last step of a window of
``prune_frequency`` steps, so steps are summed per window (one update each) and the ratio is of window
medians: the amortised cost of a step, updates included. The first window (``train()``'s set-up) is left
out. Counted sparsity and validation accuracy after training show both prune alike. The no-callback
trainer runs twice (an A/A control): how far its two medians land apart is the noise floor of the run.

Fixed seeds (``--seed``); timings are only as quiet as the machine (the load average is in the machine line).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import shutil
import statistics
import threading
import time
import warnings
from pathlib import Path
from typing import Any

TITLE = "Performance ratios: distillation step, teacher cache, chunked loss, pruning callback"
ORDER = 30

#: Bump when the teacher recipe changes so that old cached teachers are not reused.
TEACHER_RECIPE = 1

DEFAULTS: dict[str, Any] = {
    # rows 1, 2, 4: tinyshakespeare, word-level tokenizer, tiny Llama teacher and student
    "vocab_size": 4096,
    "seq_len": 64,
    "batch_size": 16,
    "teacher_layers": 4,
    "teacher_hidden": 256,
    "teacher_steps": 200,
    "teacher_lr": 2e-3,
    "student_layers": 2,
    "student_hidden": 128,
    "student_steps": 150,  # rounds of the distillation race (every participant takes this many steps)
    "student_lr": 2e-3,
    "kd_temperature": 1.0,
    "kd_alpha": 0.5,
    "cache_k": 16,
    "warmup_steps": 3,  # steps of each race left out of the timings (they carry train()'s set-up)
    "val_blocks": 256,
    "prune_steps": 72,
    "prune_frequency": 8,
    "prune_sparsity": 0.5,
    "prune_lr": 5e-4,
    # row 3: chunked loss and TRL
    "loss_tokens": 4096,
    "loss_vocab": 32000,
    "loss_chunk_size": 1024,  # a larger chunk than the default
    "loss_chunk_size_small": 128,  # chunked_distillation_loss's default
    "loss_repeats": 2,
    "loss_share_rounds": 30,  # first rounds of the distillation race in which the losses alone are timed too
    "trl_batch_size": 2,
    "trl_seq_len": 512,
    "trl_rounds": 3,  # timed rounds of the TRL/hf-lite trainer race (after one warm-up round)
    "trl_memory_steps": 2,
}

#: Environment of the processes that measure memory: glibc serves every block >= 64 KiB with mmap and
#: returns it to the system when freed, so RSS follows the live tensors. (By default it keeps freed
#: blocks up to 32 MiB in its heap, and RSS then depends on the order of allocations as much as on
#: their sizes: a chunk of 256 tokens x 32k vocabulary in fp32 is just under that limit.)
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}

#: --quick: every row on small sizes (numbers only show the benchmark runs).
QUICK: dict[str, Any] = {
    "teacher_hidden": 128,
    "student_hidden": 64,
    "teacher_steps": 12,
    "student_steps": 10,
    "warmup_steps": 2,
    "val_blocks": 32,
    "prune_steps": 9,
    "prune_frequency": 3,
    "loss_tokens": 512,
    "loss_chunk_size": 128,
    "loss_chunk_size_small": 128,
    "loss_repeats": 1,
    "loss_share_rounds": 10,
    "trl_batch_size": 1,
    "trl_seq_len": 256,
    "trl_rounds": 1,
    "trl_memory_steps": 1,
}

KD_GOAL, CACHE_GOAL, CACHE_BYTES_GOAL, CACHE_POINTS_GOAL = 1.05, 1.10, 128, 0.5
CHUNK_MEMORY_GOAL, PRUNE_GOAL = 0.2, 1.10
JSD_BETA = 0.5
AA_CONTROL = "no callback, again (A/A control)"


# ------------------------------------------------------------------------------------------------ stepping


class SteppedTrainer:
    """Runs ``trainer.train()`` in a worker thread that stops after every optimizer step until told to go on.

    ``step()`` lets the trainer take exactly one optimizer step and returns its timings: ``step_s`` from
    the release to ``on_step_end`` (batch fetching and collation included), ``compute_s`` from
    ``on_step_begin`` to ``on_step_end``. Only one thread runs at any time (the caller waits), so several
    trainers stepped in turn never compete for the CPU. ``close()`` lets the run finish (``on_train_end``
    included) or, if steps remain, stops it at the next step.
    """

    def __init__(self, trainer: Any, name: str = "trainer") -> None:
        from transformers import TrainerCallback
        from transformers.trainer_callback import PrinterCallback

        runner = self

        class _Gate(TrainerCallback):
            def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                runner._begin = time.perf_counter()

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                end = time.perf_counter()
                runner._last = {"step_s": end - runner._resumed, "compute_s": end - runner._begin,
                                "page_faults": _minor_faults() - runner._faults}  # fmt: skip
                if not runner._stop:
                    runner._done.release()
                    runner._go.acquire()  # paused here until the next step() (or close())
                    runner._faults = _minor_faults()
                    runner._resumed = time.perf_counter()
                if runner._stop:
                    control.should_training_stop = True

        self.trainer = trainer
        self.name = name
        self._go, self._done = threading.Semaphore(0), threading.Semaphore(0)
        self._stop = False
        self._error: BaseException | None = None
        self._last: dict[str, float] | None = None
        self._resumed = self._begin = 0.0
        self._faults = 0
        self.finished = False
        trainer.remove_callback(PrinterCallback)  # no end-of-training summary dict in the benchmark's log
        trainer.add_callback(_Gate())  # last: it runs after every other callback of the step
        self._thread = threading.Thread(target=self._work, name=f"stepped-{name}", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        self._go.acquire()
        self._faults = _minor_faults()
        self._resumed = time.perf_counter()
        try:
            if not self._stop:
                self.trainer.train()
        except BaseException as err:  # handed to the caller by step()/close()
            self._error = err
        finally:
            self.finished = True
            self._done.release()

    def step(self) -> dict[str, float]:
        if self.finished:
            raise RuntimeError(f"{self.name}: training already finished; give it more max_steps.")
        self._go.release()
        self._done.acquire()
        if self._error is not None:
            raise RuntimeError(f"{self.name} failed during training: {self._error!r}") from self._error
        if self._last is None:
            raise RuntimeError(f"{self.name}: train() ended without taking a step; give it more max_steps.")
        out, self._last = self._last, None
        return out

    def close(self) -> None:
        if not self.finished:
            self._stop = True
            self._go.release()
            self._done.acquire()
        self._thread.join()
        if self._error is not None:
            raise RuntimeError(f"{self.name} failed: {self._error!r}") from self._error


def _minor_faults() -> int:
    """Minor page faults of this process so far: first touches of memory the allocator got from the system
    (only one participant runs at a time, so a step's difference is its own)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class TimedCall:
    """A plain function as a participant of :func:`race` (one call per round)."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def step(self) -> dict[str, float]:
        faults = _minor_faults()
        start = time.perf_counter()
        self.fn()
        seconds = time.perf_counter() - start
        return {"step_s": seconds, "compute_s": seconds, "page_faults": _minor_faults() - faults}

    def close(self) -> None:
        pass


def race(
    participants: dict[str, Any], rounds: int, limits: dict[str, int] | None = None
) -> dict[str, list[dict[str, float]]]:
    """``rounds`` rounds in which every participant takes one step, in an order rotating each round; a
    participant named in ``limits`` only takes part in that many first rounds."""
    names = list(participants)
    limits = limits or {}
    out: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    try:
        for r in range(rounds):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                if r < limits.get(name, rounds):
                    out[name].append(participants[name].step())
    finally:
        errors = []
        for participant in participants.values():
            try:
                participant.close()
            except RuntimeError as err:
                errors.append(err)
        if errors:
            raise errors[0]
    return out


def _times(steps: list[dict[str, float]], skip: int, key: str = "step_s") -> list[float]:
    return [s[key] for s in steps[skip:]]


def _summary_ms(seconds: list[float]) -> dict[str, float]:
    from benchmarks.common import summarize_times

    return summarize_times(seconds)


# ------------------------------------------------------------------------------------------------ models, data


def llama_kwargs(hidden: int, layers: int) -> dict[str, Any]:
    """Config overrides of hf-lite's tiny Llama at another width/depth (heads of 16 or 32, GQA 2:1, FFN 2x)."""
    head_dim = 16 if hidden <= 64 else 32
    heads = max(1, hidden // head_dim)
    return {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": max(1, heads // 2), "head_dim": head_dim}  # fmt: skip


def read_text(data: Path) -> tuple[str, str]:
    path = data / "tinyshakespeare" / "input.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: pass --data-dir with the folder holding tinyshakespeare/input.txt."
        )
    text = path.read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)  # the usual split: last 10% of the characters for validation
    return text[:cut], text[cut:]


def to_blocks(tokenizer: Any, text: str, seq_len: int) -> list[list[int]]:
    """Non-overlapping blocks of ``seq_len`` tokens of ``text`` (tokenized line by line, lines joined)."""
    ids: list[int] = []
    for line_ids in tokenizer([ln for ln in text.splitlines() if ln.strip()])["input_ids"]:
        ids.extend(line_ids)
    return [ids[i : i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)]


def lm_dataset(blocks: list[list[int]]) -> Any:
    from datasets import Dataset

    return Dataset.from_dict(
        {"input_ids": blocks, "attention_mask": [[1] * len(b) for b in blocks], "labels": blocks}
    )


def evaluate_lm(model: Any, blocks: Any, batch_size: int = 32) -> dict[str, float]:
    """Next-token top-1 accuracy and perplexity over every position of the validation blocks."""
    import torch
    import torch.nn.functional as F

    model.eval()
    correct = total = 0
    nll = 0.0
    with torch.inference_mode():
        for i in range(0, len(blocks), batch_size):
            ids = blocks[i : i + batch_size]  # (b, L)
            logits = model(input_ids=ids).logits[:, :-1].float()  # (b, L-1, V)
            target = ids[:, 1:]
            nll += float(
                F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum")
            )
            correct += int((logits.argmax(-1) == target).sum())
            total += target.numel()
    return {"accuracy": correct / total, "perplexity": math.exp(nll / total)}


def training_args(
    cls: Any, out: Path, *, steps: int, lr: float, batch_size: int, seed: int, **extra: Any
) -> Any:
    return cls(
        output_dir=str(out),
        per_device_train_batch_size=batch_size,
        max_steps=steps,
        learning_rate=lr,
        warmup_steps=0.05,
        lr_scheduler_type="linear",
        weight_decay=0.01,
        logging_strategy="no",
        save_strategy="no",
        report_to="none",
        seed=seed,
        data_seed=seed,
        use_cpu=True,
        train_sampling_strategy="sequential",  # every trainer of a race reads the same batches in the same order
        dataloader_num_workers=0,
        disable_tqdm=True,
        **extra,
    )


def teacher_settings(s: dict[str, Any], seed: int) -> dict[str, Any]:
    keys = ("vocab_size", "seq_len", "batch_size", "teacher_layers", "teacher_hidden", "teacher_steps",
            "teacher_lr")  # fmt: skip
    return {"recipe": TEACHER_RECIPE, "seed": seed, **{k: s[k] for k in keys}}


def get_teacher(ctx: Any, s: dict[str, Any], train_text: str) -> tuple[Path, dict[str, Any]]:
    """The trained teacher's folder (with its tokenizer), trained now or found in the cache."""
    from transformers import Trainer, TrainingArguments, default_data_collator

    from benchmarks.common import save_teacher, settings_key
    from hf_lite.testing import build_tiny_model, build_tokenizer

    settings = teacher_settings(s, ctx.seed)
    folder = ctx.cache / f"teacher-{settings_key(settings)}"
    meta_path = folder / "teacher.json"
    if meta_path.is_file():
        ctx.log(f"teacher from cache {folder.name}")
        return folder, {**json.loads(meta_path.read_text()), "from_cache": True}
    tokenizer = build_tokenizer([train_text], max_vocab=s["vocab_size"])
    blocks = to_blocks(tokenizer, train_text, s["seq_len"])
    random.Random(ctx.seed).shuffle(blocks)
    model, _ = build_tiny_model("llama", tokenizer=tokenizer, seed=ctx.seed,
                                **llama_kwargs(s["teacher_hidden"], s["teacher_layers"]))  # fmt: skip
    args = training_args(TrainingArguments, ctx.work / "teacher-run", steps=s["teacher_steps"], lr=s["teacher_lr"],
                         batch_size=s["batch_size"], seed=ctx.seed)  # fmt: skip
    start = time.perf_counter()
    Trainer(
        model=model, args=args, train_dataset=lm_dataset(blocks), data_collator=default_data_collator
    ).train()
    meta = {
        "settings": settings,
        "train_s": round(time.perf_counter() - start, 1),
        "train_blocks": len(blocks),
    }
    return save_teacher(folder, model, tokenizer, meta)  # the cache entry is complete or absent


# ------------------------------------------------------------------------------------------------ rows 1, 2


def distillation_race(ctx: Any, s: dict[str, Any], teacher_dir: Path, tokenizer: Any, train_blocks: list,
                      val: Any) -> tuple[Any, dict[str, Any]]:  # fmt: skip
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
        cache = precompute_teacher_cache(teacher, data, cache_dir, tokenizer=tokenizer, k=s["cache_k"],
                                         temperature=s["kd_temperature"], batch_size=32)  # fmt: skip
        precompute_s = time.perf_counter() - start
    bytes_per_token = float(cache_bytes_per_token(cache_dir))
    by_column = cache_bytes_per_token(cache_dir, by_column=True)

    def student() -> Any:
        return build_tiny_model("llama", tokenizer=tokenizer, seed=ctx.seed,
                                **llama_kwargs(s["student_hidden"], s["student_layers"]))[0]  # fmt: skip

    common = dict(steps=steps, lr=s["student_lr"], batch_size=bs, seed=ctx.seed)
    kd = dict(temperature=s["kd_temperature"], alpha=s["kd_alpha"], loss_type="forward_kl")
    out = ctx.work / "race"
    ce_trainer = Trainer(model=student(), args=training_args(TrainingArguments, out / "ce", **common),
                         train_dataset=data, data_collator=default_data_collator)  # fmt: skip
    online = DistillationTrainer(model=student(), teacher_model=teacher, train_dataset=data,
                                 args=training_args(DistillationConfig, out / "online", **common, **kd),
                                 data_collator=default_data_collator, processing_class=tokenizer)  # fmt: skip
    cached = DistillationTrainer(model=student(), teacher_model=None, train_dataset=cache,
                                 args=training_args(DistillationConfig, out / "cache", **common, **kd),
                                 data_collator=TeacherCacheCollator(tokenizer), processing_class=tokenizer)  # fmt: skip
    # the same two with DistillationConfig(compile_loss=True): the loss through torch.compile
    online_c = DistillationTrainer(model=student(), teacher_model=teacher, train_dataset=data,
                                   args=training_args(DistillationConfig, out / "online-c", **common, **kd,
                                                      compile_loss=True),
                                   data_collator=default_data_collator, processing_class=tokenizer)  # fmt: skip
    cached_c = DistillationTrainer(model=student(), teacher_model=None, train_dataset=cache,
                                   args=training_args(DistillationConfig, out / "cache-c", **common, **kd,
                                                      compile_loss=True),
                                   data_collator=TeacherCacheCollator(tokenizer), processing_class=tokenizer)  # fmt: skip
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
        "cache": {"bytes_per_token": bytes_per_token, "by_column": by_column, "k": s["cache_k"],
                  "precompute_s": round(precompute_s, 2), "rows": len(data), "tokens": len(data) * s["seq_len"]},
        "params": {"teacher": sum(p.numel() for p in teacher.parameters()),
                   "student": sum(p.numel() for p in ce_trainer.model.parameters())},
    }  # fmt: skip


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

    def kd(cached: bool) -> None:  # the loss part of DistillationTrainer.compute_loss (alpha < 1: one fused pass)
        student_logits.grad = None
        kd_labels = losses.shift_labels(labels)
        if cached:
            out = losses.topk_distillation_and_ce_loss(student_logits, logprobs, indices, kd_labels, alpha=alpha,
                                                       temperature=temp)  # fmt: skip
        else:
            out = losses.distillation_and_ce_loss(student_logits, teacher_logits, kd_labels, alpha=alpha,
                                                  loss_type="forward_kl", temperature=temp)  # fmt: skip
        out.loss.backward()

    return {"loss: CE (student-ce)": ce, "loss: forward KL + CE (kd-online)": lambda: kd(False),
            "loss: top-k KL + CE (kd-cache)": lambda: kd(True)}  # fmt: skip


# ------------------------------------------------------------------------------------------------ row 3


LOSS_KINDS = {
    "plain": "hf-lite distillation_loss",
    "plain-oneblock": "hf-lite distillation_loss in one block of rows (as on an accelerator)",
    "chunked": "hf-lite chunked_distillation_loss",
    "trl": "TRL GKDTrainer.generalized_jsd_loss",
    "plain-hidden": "F.linear to logits + hf-lite distillation_loss",
    "chunked-hidden": "hf-lite chunked_distillation_loss_from_hidden",
}


def trl_status() -> str | None:
    """None when TRL's GKDTrainer can be imported, else why not."""
    if importlib.util.find_spec("trl") is None:
        return "TRL is not installed (pip install trl; it is part of the benchmark environment only)"
    try:
        gkd()
    except Exception as err:  # any import failure makes the TRL rows unavailable, with the reason
        return f"TRL is installed but its GKDTrainer cannot be imported ({type(err).__name__}: {err})"
    return None


def gkd() -> tuple[Any, Any]:
    """TRL's ``(GKDConfig, GKDTrainer)``: in ``trl.experimental.gkd`` in TRL 1.x, top-level before."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        from trl.experimental.gkd import GKDConfig, GKDTrainer
    except ImportError:
        from trl import GKDConfig, GKDTrainer
    return GKDConfig, GKDTrainer


def loss_variants(s: dict[str, Any], with_trl: bool) -> list[str]:
    """Variant names: a kind of :data:`LOSS_KINDS`, with ``@<chunk_size>`` for the chunked ones."""
    sizes = list(dict.fromkeys([s["loss_chunk_size"], s["loss_chunk_size_small"]]))
    return ["plain", "plain-oneblock", *(f"chunked@{c}" for c in sizes), *(["trl"] if with_trl else []), "plain-hidden",
            *(f"chunked-hidden@{c}" for c in sizes)]  # fmt: skip


def _split_variant(variant: str) -> tuple[str, int | None]:
    kind, _, chunk = variant.partition("@")
    if kind not in LOSS_KINDS:
        raise ValueError(f"variant={variant!r}: the kind must be one of {sorted(LOSS_KINDS)}.")
    return kind, int(chunk) if chunk else None


def describe_variant(variant: str) -> str:
    kind, chunk = _split_variant(variant)
    given = "hidden states given" if kind.endswith("hidden") else "logits given"
    return f"{LOSS_KINDS[kind]}{f', chunks of {chunk}' if chunk else ''} ({given})"


def _baseline(variant: str) -> str:
    """What a chunked variant is compared with: the plain loss holding whole (tokens, vocab) tensors. On the
    CPU hf-lite's plain loss runs in blocks of rows (hf_lite.losses._fused.BLOCK_ELEMENTS), so its one-block
    run (what it does on an accelerator) is the baseline; from hidden states, building the logits first."""
    return "plain-hidden" if variant.startswith(("plain-hidden", "chunked-hidden")) else "plain-oneblock"


def _inputs_kind(variant: str) -> str:
    return "plain-hidden" if _split_variant(variant)[0].endswith("hidden") else "plain"


def _loss_inputs(variant: str, tokens: int, vocab: int, hidden_student: int, hidden_teacher: int,
                 seed: int) -> dict[str, Any]:  # fmt: skip
    import torch

    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, vocab, (tokens,), generator=g)  # every position counts, as in a packed batch
    if _split_variant(variant)[0].endswith("hidden"):
        return {
            "h_s": torch.randn(tokens, hidden_student, generator=g).requires_grad_(),
            "w_s": (torch.randn(vocab, hidden_student, generator=g) / hidden_student**0.5).requires_grad_(),
            "h_t": torch.randn(tokens, hidden_teacher, generator=g),
            "w_t": torch.randn(vocab, hidden_teacher, generator=g) / hidden_teacher**0.5,
            "labels": labels,
        }
    return {
        "s": (2 * torch.randn(tokens, vocab, generator=g)).requires_grad_(),
        "t": 2 * torch.randn(tokens, vocab, generator=g),
        "labels": labels,
    }


def _loss_call(variant: str, x: dict[str, Any]) -> Any:
    """A no-argument callable: forward + backward of one variant's loss on ``x``; returns the loss value.

    Generalized JSD, beta 0.5, T = 1, every position labelled (the call DistillationTrainer makes for a
    packed causal-LM batch; TRL's loss is called as ``GKDTrainer.compute_loss`` calls it).
    """
    import torch.nn.functional as F

    from hf_lite import losses

    kind, chunk = _split_variant(variant)
    kw = {"loss_type": "jsd", "beta": JSD_BETA, "temperature": 1.0, "labels": x["labels"]}
    if kind == "trl":
        GKDTrainer = gkd()[1]

    def call() -> float:
        for t in x.values():
            t.grad = None
        if kind == "plain":
            loss = losses.distillation_loss(x["s"], x["t"], **kw)
        elif kind == "plain-oneblock":
            from hf_lite.losses import _fused as divergences

            blocks, divergences.BLOCK_ELEMENTS = divergences.BLOCK_ELEMENTS, x["s"].numel()
            try:
                loss = losses.distillation_loss(x["s"], x["t"], **kw)
            finally:
                divergences.BLOCK_ELEMENTS = blocks
        elif kind == "chunked":
            loss = losses.chunked_distillation_loss(x["s"], x["t"], chunk_size=chunk, **kw)
        elif kind == "trl":
            loss = GKDTrainer.generalized_jsd_loss(x["s"], x["t"], labels=x["labels"], beta=JSD_BETA,
                                                   temperature=1.0, num_items_in_batch=x["labels"].numel())  # fmt: skip
        elif kind == "plain-hidden":
            s_logits = F.linear(x["h_s"], x["w_s"])  # (N, V), what the LM head would give
            t_logits = F.linear(x["h_t"], x["w_t"])  # (N, V)
            loss = losses.distillation_loss(s_logits, t_logits, **kw)
        else:
            loss = losses.chunked_distillation_loss_from_hidden(x["h_s"], x["w_s"], x["h_t"], x["w_t"],
                                                                 chunk_size=chunk, **kw)  # fmt: skip
        loss.backward()
        return float(loss.detach())

    return call


def loss_memory_child(variant: str, tokens: int, vocab: int, hidden_student: int, hidden_teacher: int,
                      seed: int) -> dict[str, Any]:  # fmt: skip
    """``run_isolated`` target: RSS one loss forward + backward adds on top of its inputs.

    One warm-up call on 64 tokens first, so that one-time initialisation (thread pools, allocator arenas)
    is not counted as the loss's memory."""
    from benchmarks.common import _proc_status_bytes, peak_rss_bytes, reset_peak_rss

    _loss_call(variant, _loss_inputs(variant, 64, vocab, hidden_student, hidden_teacher, seed))()
    x = _loss_inputs(variant, tokens, vocab, hidden_student, hidden_teacher, seed)
    call = _loss_call(variant, x)
    before = _proc_status_bytes("VmRSS") or peak_rss_bytes()
    reset = reset_peak_rss()
    start = time.perf_counter()
    value = call()
    seconds = time.perf_counter() - start
    return {"loss_bytes": peak_rss_bytes() - before, "inputs_rss_bytes": before, "peak_reset": reset,
            "value": value, "seconds": seconds}  # fmt: skip


def loss_comparison(ctx: Any, s: dict[str, Any], trl_missing: str | None) -> dict[str, Any]:
    import torch

    from benchmarks.common import run_isolated, time_side_by_side

    variants = loss_variants(s, with_trl=not trl_missing)
    dims = dict(tokens=s["loss_tokens"], vocab=s["loss_vocab"], hidden_student=s["student_hidden"],
                hidden_teacher=s["teacher_hidden"])  # fmt: skip
    env = {"OMP_NUM_THREADS": str(torch.get_num_threads()), "TRL_EXPERIMENTAL_SILENCE": "1", **MEMORY_ENV}
    memory = {}
    with ctx.phase("loss memory (isolated processes)"):
        for variant in variants:
            preload = ("torch", "hf_lite.losses", *(("trl",) if variant == "trl" else ()))
            out = run_isolated("benchmarks.perf:loss_memory_child", {"variant": variant, **dims, "seed": ctx.seed},
                               preload=preload, env=env, capture_output=True)  # fmt: skip
            memory[variant] = {**out.result, "process_peak_rss_bytes": out.peak_rss_bytes}
            ctx.log(f"loss memory {variant}: {out.result['loss_bytes'] / 2**20:.0f} MiB")
    with ctx.phase("loss time (side by side)"):
        # One set of inputs per kind of input, shared by the variants that take it.
        inputs = {"plain": _loss_inputs("plain", **dims, seed=ctx.seed),
                  "plain-hidden": _loss_inputs("plain-hidden", **dims, seed=ctx.seed)}  # fmt: skip
        calls = {}
        for v in variants:
            small = _loss_inputs(v, **{**dims, "tokens": 64}, seed=ctx.seed)
            _loss_call(v, small)()  # warm-up on 64 tokens: code paths and thread pools, not sizes
            calls[v] = _loss_call(v, inputs[_inputs_kind(v)])
        timing = time_side_by_side(calls, repeats=s["loss_repeats"], warmup=0)
        del inputs, calls
    values = {v: memory[v]["value"] for v in variants}
    return {"memory": memory, "timing": timing, "values": values, "variants": variants}


def _kd_trainer(kind: str, student: Any, teacher: Any, data: Any, tokenizer: Any, out: Path, steps: int,
                s: dict[str, Any], seed: int) -> Any:  # fmt: skip
    from transformers import default_data_collator

    common = dict(steps=steps, lr=s["student_lr"], batch_size=s["trl_batch_size"], seed=seed)
    if kind == "trl-gkd":
        GKDConfig, GKDTrainer = gkd()

        # lmbda=0, seq_kd=False: distillation on the dataset's sequences (no generation), the path
        # DistillationTrainer takes; GKD's loss ignores temperature (it is the sampling temperature). TRL's
        # own defaults gradient_checkpointing=True and bf16=True are turned off: both trainers run fp32
        # without recomputation, so the comparison is of the loss paths.
        with warnings.catch_warnings():  # TRL's config still sets the field transformers renamed
            warnings.simplefilter("ignore", FutureWarning)
            args = training_args(GKDConfig, out, **common, lmbda=0.0, seq_kd=False, beta=JSD_BETA, temperature=1.0,
                                 gradient_checkpointing=False, bf16=False)  # fmt: skip
        return GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data,
                          processing_class=tokenizer, data_collator=default_data_collator)  # fmt: skip
    from trainers import DistillationConfig, DistillationTrainer

    chunk = s["loss_chunk_size_small"] if kind == "hf-lite-jsd-chunked" else None
    args = training_args(DistillationConfig, out, **common, loss_type="jsd", beta=JSD_BETA, temperature=1.0,
                         alpha=1.0, chunk_size=chunk)  # fmt: skip
    return DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data,
                               data_collator=default_data_collator, processing_class=tokenizer)  # fmt: skip


def _trl_models_and_data(s: dict[str, Any], seed: int, rows: int) -> tuple[Any, Any, Any, Any]:
    """The tiny causal LM pair with a ``loss_vocab`` vocabulary, and random token rows (a packed batch)."""
    import torch
    import transformers

    from hf_lite.testing import build_tokenizer, tiny_config

    tokenizer = build_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    ids = {"pad_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id,
           "eos_token_id": tokenizer.eos_token_id}  # fmt: skip

    def model(hidden: int, layers: int, model_seed: int) -> Any:
        torch.manual_seed(model_seed)
        config = tiny_config("llama", s["loss_vocab"], special_ids=ids, **llama_kwargs(hidden, layers))
        return transformers.LlamaForCausalLM(config)

    student = model(s["student_hidden"], s["student_layers"], seed)
    teacher = model(s["teacher_hidden"], s["teacher_layers"], seed + 1).eval()
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, s["loss_vocab"], (rows, s["trl_seq_len"]), generator=g).tolist()
    return student, teacher, tokenizer, lm_dataset(blocks)


TRAINER_KINDS = ("trl-gkd", "hf-lite-jsd", "hf-lite-jsd-chunked")


def trainer_memory_child(kind: str, settings: dict[str, Any], seed: int, out: str) -> dict[str, Any]:
    """``run_isolated`` target: RSS that ``train()`` adds over ``trl_memory_steps`` steps (models, data and
    trainer built before the mark)."""
    from benchmarks.common import _proc_status_bytes, peak_rss_bytes, quiet_libraries, reset_peak_rss

    quiet_libraries()
    s = settings
    steps = s["trl_memory_steps"]
    student, teacher, tokenizer, data = _trl_models_and_data(s, seed, steps * s["trl_batch_size"])
    trainer = _kd_trainer(kind, student, teacher, data, tokenizer, Path(out), steps, s, seed)
    before = _proc_status_bytes("VmRSS") or peak_rss_bytes()
    reset = reset_peak_rss()
    start = time.perf_counter()
    trainer.train()
    return {"train_bytes": peak_rss_bytes() - before, "peak_reset": reset,
            "seconds": time.perf_counter() - start}  # fmt: skip


def trainer_comparison(ctx: Any, s: dict[str, Any], trl_missing: str | None) -> dict[str, Any]:
    import torch

    from benchmarks.common import run_isolated

    kinds = [k for k in TRAINER_KINDS if not (k == "trl-gkd" and trl_missing)]
    rounds = 1 + s["trl_rounds"]
    participants = {}
    for kind in kinds:
        student, teacher, tokenizer, data = _trl_models_and_data(s, ctx.seed, rounds * s["trl_batch_size"])
        trainer = _kd_trainer(
            kind, student, teacher, data, tokenizer, ctx.work / "trl" / kind, rounds, s, ctx.seed
        )
        participants[kind] = SteppedTrainer(trainer, kind)
    with ctx.phase("TRL/hf-lite trainer race"):
        steps_log = race(participants, rounds)
    del participants
    env = {"OMP_NUM_THREADS": str(torch.get_num_threads()), "TRL_EXPERIMENTAL_SILENCE": "1", **MEMORY_ENV}
    memory = {}
    with ctx.phase("trainer memory (isolated processes)"):
        for kind in kinds:
            # Imports are not measured (the mark is set just before train()): import only what runs.
            preload = ("torch", "transformers", "trl" if kind == "trl-gkd" else "trainers")
            out = run_isolated("benchmarks.perf:trainer_memory_child",
                               {"kind": kind, "settings": s, "seed": ctx.seed, "out": str(ctx.work / "trl-mem" / kind)},
                               preload=preload, env=env, capture_output=True)  # fmt: skip
            memory[kind] = {**out.result, "process_peak_rss_bytes": out.peak_rss_bytes}
            ctx.log(f"trainer memory {kind}: {out.result['train_bytes'] / 2**20:.0f} MiB")
    return {"steps": steps_log, "memory": memory, "kinds": kinds}


# ------------------------------------------------------------------------------------------------ row 4


def torch_prune_callback(sparsity: float, end_step: int, frequency: int) -> Any:
    """The pruning of ``trainers.PruningCallback`` (magnitude, per layer, cubic schedule, same layers and
    steps) done with ``torch.nn.utils.prune``: ``l1_unstructured`` re-applied at each scheduled step to the
    weights still unpruned (its ``PruningContainer`` keeps earlier masks), ``prune.remove`` at the end."""
    from torch.nn.utils import prune
    from transformers import TrainerCallback

    from hf_lite.pruning import CubicSchedule, find_prunable_modules

    class TorchPruneCallback(TrainerCallback):
        def __init__(self) -> None:
            self.schedule = CubicSchedule(final_sparsity=sparsity, end_step=end_step, frequency=frequency)
            self.modules: dict[str, Any] = {}
            self.current = 0.0

        def _prune(self, step: int) -> None:
            target = self.schedule.sparsity_at(step)
            if target <= self.current:
                return
            amount = 1.0 - (1.0 - target) / (1.0 - self.current)  # fraction of the still-unpruned weights
            for module in self.modules.values():
                prune.l1_unstructured(module, "weight", amount=amount)
            self.current = target

        def on_train_begin(
            self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
        ) -> None:
            self.modules = find_prunable_modules(model)
            if self.schedule.should_update(0):
                self._prune(0)

        def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            step = state.global_step + 1  # the step just taken, as PruningCallback counts it
            if self.schedule.should_update(step):
                self._prune(step)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            for module in self.modules.values():
                if prune.is_pruned(module):
                    prune.remove(module, "weight")

    return TorchPruneCallback()


def pruning_race(
    ctx: Any, s: dict[str, Any], base_model: Any, train_blocks: list, val: Any
) -> dict[str, Any]:
    """Row 4: copies of ``base_model`` (the CE-trained student) fine-tuned side by side, pruned or not."""
    import copy

    from transformers import Trainer, TrainingArguments, default_data_collator

    from hf_lite.pruning import find_prunable_modules
    from trainers import PruningCallback

    steps, freq = s["prune_steps"], s["prune_frequency"]
    if steps % freq or steps < 2 * freq:
        raise ValueError(
            f"prune_steps={steps} must be a multiple of prune_frequency={freq} and at least two windows "
            f"(>= {2 * freq}): the first window is left out as warm-up."
        )
    bs = s["batch_size"]
    data = lm_dataset([train_blocks[i % len(train_blocks)] for i in range(steps * bs)])
    callbacks = {
        "no callback": None,
        # The same trainer twice: how far two identical participants' medians land apart in this run.
        AA_CONTROL: None,
        "PruningCallback": PruningCallback(
            target_sparsity=s["prune_sparsity"], start_step=0, end_step=steps, frequency=freq
        ),  # fmt: skip
        "torch.nn.utils.prune": torch_prune_callback(s["prune_sparsity"], steps, freq),
    }
    trainers_, participants = {}, {}
    for name, callback in callbacks.items():
        model = copy.deepcopy(base_model)
        args = training_args(TrainingArguments, ctx.work / "prune" / name.replace(" ", "-"), steps=steps,
                             lr=s["prune_lr"], batch_size=bs, seed=ctx.seed)  # fmt: skip
        trainers_[name] = Trainer(model=model, args=args, train_dataset=data, data_collator=default_data_collator,
                                  callbacks=[callback] if callback else None)  # fmt: skip
        participants[name] = SteppedTrainer(trainers_[name], name)
    with ctx.phase("pruning race"):
        steps_log = race(participants, steps)
    result: dict[str, Any] = {"steps": steps_log, "models": {}}
    for name, trainer in trainers_.items():
        if name == AA_CONTROL:
            continue
        weights = [m.weight for m in find_prunable_modules(trainer.model).values()]
        zeros = sum(int((w == 0).sum()) for w in weights)
        result["models"][name] = {"sparsity": zeros / sum(w.numel() for w in weights),
                                  **evaluate_lm(trainer.model, val)}  # fmt: skip
    return result


def window_sums(steps: list[dict[str, float]], size: int) -> list[float]:
    """Sums of ``size`` consecutive step times, the first window (warm-up) left out."""
    times = [x["step_s"] for x in steps]
    return [sum(times[i : i + size]) for i in range(size, len(times) - size + 1, size)]


# ------------------------------------------------------------------------------------------------ run


def _ms(seconds: float) -> float:
    return 1000.0 * seconds


def run(ctx: Any) -> dict[str, Any]:
    import torch

    from hf_lite import load_tokenizer

    s = ctx.settings(DEFAULTS, QUICK if ctx.quick else None)
    warm = s["warmup_steps"]
    if s["student_steps"] <= warm:
        raise ValueError(f"student_steps={s['student_steps']} must exceed warmup_steps={warm}.")
    train_text, val_text = read_text(ctx.data)
    with ctx.phase("teacher"):
        teacher_dir, teacher_meta = get_teacher(ctx, s, train_text)
    tokenizer = load_tokenizer(teacher_dir)
    with ctx.phase("data"):
        train_blocks = to_blocks(tokenizer, train_text, s["seq_len"])
        random.Random(ctx.seed).shuffle(train_blocks)
        val = torch.tensor(to_blocks(tokenizer, val_text, s["seq_len"])[: s["val_blocks"]])

    ce_student, kd = distillation_race(ctx, s, teacher_dir, tokenizer, train_blocks, val)
    prune_result = pruning_race(ctx, s, ce_student, train_blocks, val)
    trl_missing = trl_status()
    if trl_missing:
        ctx.log(trl_missing)
    loss = loss_comparison(ctx, s, trl_missing)
    trl_cmp = trainer_comparison(ctx, s, trl_missing)
    return assemble(s, teacher_meta, kd, prune_result, loss, trl_cmp, trl_missing)


# ------------------------------------------------------------------------------------------------ report


def _fmt_ms(seconds: float) -> str:
    ms = _ms(seconds)
    return f"{ms:,.0f} ms" if ms >= 100 else f"{ms:.1f} ms"


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def _status(ratio: float, goal: float | None) -> str:
    return "comparison" if goal is None else ("met" if ratio <= goal else "missed")


def _ratio_row(what: str, ratio: float, goal: float | None, raw: str) -> dict[str, Any]:
    return {"ratio": what, "x": ratio, "goal": "–" if goal is None else f"≤ {goal:g}×", "status": _status(ratio, goal),
            "raw": raw}  # fmt: skip


def assemble(s: dict[str, Any], teacher_meta: dict[str, Any], kd: dict[str, Any], prune: dict[str, Any],
             loss: dict[str, Any], trl_cmp: dict[str, Any], trl_missing: str | None) -> dict[str, Any]:  # fmt: skip
    """The benchmark's result: goals, tables and the raw timings (see the module docstring for the method)."""
    warm = s["warmup_steps"]
    med = {n: statistics.median(_times(v, warm)) for n, v in kd["steps"].items()}
    kd_ratio = med["kd-online"] / (med["student-ce"] + med["teacher-forward"])
    cache_ratio = med["kd-cache"] / med["student-ce"]
    compiled = "kd-online-compiled" in med  # results written before compile_loss existed lack them
    if compiled:
        kd_ratio_c = med["kd-online-compiled"] / (med["student-ce"] + med["teacher-forward"])
        cache_ratio_c = med["kd-cache-compiled"] / med["student-ce"]
    online, ce, tf = (kd["steps"][n] for n in ("kd-online", "student-ce", "teacher-forward"))
    per_round = [o["step_s"] / (c["step_s"] + t["step_s"]) for o, c, t in zip(online, ce, tf, strict=True)][
        warm:
    ]
    q = kd["quality"]
    points = 100 * (q["kd-cache"]["accuracy"] - q["kd-online"]["accuracy"])
    bpt, k = kd["cache"]["bytes_per_token"], kd["cache"]["k"]

    mem, lt = loss["memory"], loss["timing"]
    chunked = [v for v in loss["variants"] if "@" in v]

    freq = s["prune_frequency"]
    windows = {n: window_sums(v, freq) for n, v in prune["steps"].items()}
    win_med = {n: statistics.median(w) for n, w in windows.items()}
    prune_ratio = win_med["PruningCallback"] / win_med["no callback"]
    torch_ratio = win_med["torch.nn.utils.prune"] / win_med["no callback"]
    aa_ratio = win_med[AA_CONTROL] / win_med["no callback"]

    trl_warm = 1
    trl_med = {name: statistics.median(_times(v, trl_warm)) for name, v in trl_cmp["steps"].items()}
    tmem = trl_cmp["memory"]

    tok_label = f"{s['loss_tokens']:,} tokens × {s['loss_vocab'] // 1000}k vocab"
    goals = [
        {"goal": f"DistillationTrainer step ≤ {KD_GOAL:.2f} × (plain Trainer step of the student + one no-grad "
                 "teacher forward), same batch, side by side",
         "measured": f"{kd_ratio:.2f}× ({_fmt_ms(med['kd-online'])} vs {_fmt_ms(med['student-ce'])} + "
                     f"{_fmt_ms(med['teacher-forward'])})",
         "met": kd_ratio <= KD_GOAL},
        {"goal": f"training from a teacher cache: step ≤ {CACHE_GOAL:.2f} × plain student step",
         "measured": f"{cache_ratio:.2f}× ({_fmt_ms(med['kd-cache'])} vs {_fmt_ms(med['student-ce'])})",
         "met": cache_ratio <= CACHE_GOAL},
    ]  # fmt: skip
    if compiled:
        goals += [
            {"goal": f"the same, DistillationConfig(compile_loss=True): step ≤ {KD_GOAL:.2f} × (student step + "
                     "teacher forward)",
             "measured": f"{kd_ratio_c:.2f}× ({_fmt_ms(med['kd-online-compiled'])} vs "
                         f"{_fmt_ms(med['student-ce'])} + {_fmt_ms(med['teacher-forward'])})",
             "met": kd_ratio_c <= KD_GOAL},
            {"goal": f"the same from the cache, compile_loss=True: step ≤ {CACHE_GOAL:.2f} × plain student step",
             "measured": f"{cache_ratio_c:.2f}× ({_fmt_ms(med['kd-cache-compiled'])} vs "
                         f"{_fmt_ms(med['student-ce'])})",
             "met": cache_ratio_c <= CACHE_GOAL},
        ]  # fmt: skip
    goals += [
        {"goal": f"teacher cache ≤ {CACHE_BYTES_GOAL} bytes/token at k=16",
         "measured": f"{bpt:.1f} bytes/token at k={k}",
         "met": bpt <= CACHE_BYTES_GOAL if k == 16 else None},
        {"goal": f"KD from the cache (k=16) within {CACHE_POINTS_GOAL} point of online KD (validation "
                 "next-token accuracy)",
         "measured": f"{points:+.2f} points ({100 * q['kd-cache']['accuracy']:.2f}% vs "
                     f"{100 * q['kd-online']['accuracy']:.2f}%)",
         "met": abs(points) <= CACHE_POINTS_GOAL + 1e-9 if k == 16 else None},
    ]  # fmt: skip
    for v in chunked:
        base = _baseline(v)
        ratio = mem[v]["loss_bytes"] / mem[base]["loss_bytes"]
        given = ("from hidden states, vs logits + plain loss" if base == "plain-hidden"
                 else "logits given, vs the plain loss in one block")  # fmt: skip
        goals.append({
            "goal": f"chunked loss peak memory ≤ {CHUNK_MEMORY_GOAL} × the plain loss ({tok_label}; {given}; "
                    f"chunks of {_split_variant(v)[1]})",
            "measured": f"{ratio:.3f}× ({_mib(mem[v]['loss_bytes'])} vs {_mib(mem[base]['loss_bytes'])})",
            "met": ratio <= CHUNK_MEMORY_GOAL,
        })  # fmt: skip
    goals.append({
        "goal": f"training step with PruningCallback ≤ {PRUNE_GOAL:.2f} × the step without it",
        "measured": f"{prune_ratio:.3f}× (per {freq} steps: {_fmt_ms(win_med['PruningCallback'])} vs "
                    f"{_fmt_ms(win_med['no callback'])}; torch.nn.utils.prune {torch_ratio:.3f}×)",
        "met": prune_ratio <= PRUNE_GOAL,
    })  # fmt: skip

    ratio_rows = [
        _ratio_row("KD step / (student step + teacher forward)", kd_ratio, KD_GOAL,
                   f"{_fmt_ms(med['kd-online'])} / ({_fmt_ms(med['student-ce'])} + {_fmt_ms(med['teacher-forward'])})"),
        _ratio_row("KD-from-cache step / student step", cache_ratio, CACHE_GOAL,
                   f"{_fmt_ms(med['kd-cache'])} / {_fmt_ms(med['student-ce'])}"),
    ]  # fmt: skip
    if compiled:
        ratio_rows += [
            _ratio_row("KD step, compile_loss=True / (student step + teacher forward)", kd_ratio_c, KD_GOAL,
                       f"{_fmt_ms(med['kd-online-compiled'])} / ({_fmt_ms(med['student-ce'])} + "
                       f"{_fmt_ms(med['teacher-forward'])})"),
            _ratio_row("KD-from-cache step, compile_loss=True / student step", cache_ratio_c, CACHE_GOAL,
                       f"{_fmt_ms(med['kd-cache-compiled'])} / {_fmt_ms(med['student-ce'])}"),
        ]  # fmt: skip
    for v in chunked:
        base = _baseline(v)
        what = (
            "chunked from hidden / logits + plain loss" if base == "plain-hidden" else "chunked / one-block plain loss"
        )
        ratio_rows.append(_ratio_row(f"{what}, peak memory (chunks of {_split_variant(v)[1]})",
                                     mem[v]["loss_bytes"] / mem[base]["loss_bytes"], CHUNK_MEMORY_GOAL,
                                     f"{_mib(mem[v]['loss_bytes'])} / {_mib(mem[base]['loss_bytes'])}"))  # fmt: skip
    for v in chunked:
        base = _baseline(v)
        what = (
            "chunked from hidden / logits + plain loss" if base == "plain-hidden" else "chunked / one-block plain loss"
        )
        ratio_rows.append(_ratio_row(f"{what}, time (chunks of {_split_variant(v)[1]})",
                                     lt[v]["median_ms"] / lt[base]["median_ms"], None,
                                     f"{lt[v]['median_ms']:,.0f} ms / {lt[base]['median_ms']:,.0f} ms"))  # fmt: skip
    if "trl" in mem:
        best = min((v for v in chunked if _baseline(v) == "plain-oneblock"), key=lambda v: mem[v]["loss_bytes"])
        ratio_rows += [
            _ratio_row("TRL generalized_jsd_loss / hf-lite plain loss, peak memory",
                       mem["trl"]["loss_bytes"] / mem["plain"]["loss_bytes"], None,
                       f"{_mib(mem['trl']['loss_bytes'])} / {_mib(mem['plain']['loss_bytes'])}"),
            _ratio_row(f"hf-lite chunked ({_split_variant(best)[1]}) / TRL loss, peak memory",
                       mem[best]["loss_bytes"] / mem["trl"]["loss_bytes"], None,
                       f"{_mib(mem[best]['loss_bytes'])} / {_mib(mem['trl']['loss_bytes'])}"),
            _ratio_row("hf-lite plain / TRL loss, time", lt["plain"]["median_ms"] / lt["trl"]["median_ms"], None,
                       f"{lt['plain']['median_ms']:,.0f} ms / {lt['trl']['median_ms']:,.0f} ms"),
            _ratio_row(f"hf-lite chunked ({_split_variant(best)[1]}) / TRL loss, time",
                       lt[best]["median_ms"] / lt["trl"]["median_ms"], None,
                       f"{lt[best]['median_ms']:,.0f} ms / {lt['trl']['median_ms']:,.0f} ms"),
        ]  # fmt: skip
    if "trl-gkd" in trl_med:
        for kind in ("hf-lite-jsd", "hf-lite-jsd-chunked"):
            label = f"DistillationTrainer ({'chunked ' if 'chunked' in kind else ''}jsd) / GKDTrainer"
            ratio_rows += [
                _ratio_row(f"{label}, step time", trl_med[kind] / trl_med["trl-gkd"], None,
                           f"{_fmt_ms(trl_med[kind])} / {_fmt_ms(trl_med['trl-gkd'])}"),
                _ratio_row(f"{label}, train() peak memory", tmem[kind]["train_bytes"] / tmem["trl-gkd"]["train_bytes"],
                           None, f"{_mib(tmem[kind]['train_bytes'])} / {_mib(tmem['trl-gkd']['train_bytes'])}"),
            ]  # fmt: skip
    ratio_rows += [
        _ratio_row(f"step with PruningCallback / without (per {freq} steps)", prune_ratio, PRUNE_GOAL,
                   f"{_fmt_ms(win_med['PruningCallback'])} / {_fmt_ms(win_med['no callback'])}"),
        _ratio_row("step with torch.nn.utils.prune / without (same schedule)", torch_ratio, None,
                   f"{_fmt_ms(win_med['torch.nn.utils.prune'])} / {_fmt_ms(win_med['no callback'])}"),
        _ratio_row("step with PruningCallback / with torch.nn.utils.prune", prune_ratio / torch_ratio, None,
                   f"{_fmt_ms(win_med['PruningCallback'])} / {_fmt_ms(win_med['torch.nn.utils.prune'])}"),
        _ratio_row("A/A control: the same trainer twice (noise floor of this run)", aa_ratio, None,
                   f"{_fmt_ms(win_med[AA_CONTROL])} / {_fmt_ms(win_med['no callback'])}"),
    ]  # fmt: skip

    def step_rows(race_name: str, steps: dict[str, list], skip: int) -> list[dict[str, Any]]:
        out = []
        for name, log in steps.items():
            full, compute = _summary_ms(_times(log, skip)), _summary_ms(_times(log, skip, "compute_s"))
            out.append({"race": race_name, "participant": name, "median_ms": full["median_ms"], "iqr_ms": full["iqr_ms"],
                        "compute_ms": compute["median_ms"], "n": full["n"]})  # fmt: skip
        return out

    timing_rows = step_rows("distillation", kd["steps"], warm)
    for name, w in windows.items():
        summary = _summary_ms(w)
        timing_rows.append({"race": f"pruning (sum of {freq} steps)", "participant": name,
                            "median_ms": summary["median_ms"], "iqr_ms": summary["iqr_ms"], "compute_ms": None,
                            "n": summary["n"]})  # fmt: skip
    timing_rows += step_rows("TRL vs hf-lite", trl_cmp["steps"], trl_warm)

    loss_rows = []
    for v in loss["variants"]:
        base = _baseline(v)
        loss_rows.append({"variant": describe_variant(v), "loss_bytes": mem[v]["loss_bytes"],
                          "x_mem": mem[v]["loss_bytes"] / mem[base]["loss_bytes"], "time_ms": lt[v]["median_ms"],
                          "x_time": lt[v]["median_ms"] / lt[base]["median_ms"], "value": loss["values"][v]})  # fmt: skip

    trainer_rows = []
    for kind in trl_cmp["kinds"]:
        label = {"trl-gkd": f"TRL GKDTrainer (lmbda=0, beta={JSD_BETA})", "hf-lite-jsd": "DistillationTrainer jsd",
                 "hf-lite-jsd-chunked": f"DistillationTrainer jsd, chunk_size={s['loss_chunk_size_small']}"}[kind]  # fmt: skip
        trainer_rows.append(
            {"trainer": label, "step_ms": _ms(trl_med[kind]), "train_bytes": tmem[kind]["train_bytes"]}
        )

    student_how = f"Llama {s['student_layers']}×{s['student_hidden']}"
    quality_rows = [
        {"model": "teacher", "how": f"Llama {s['teacher_layers']}×{s['teacher_hidden']}, CE, {s['teacher_steps']} steps",
         "params": kd["params"]["teacher"], **q["teacher"]},
        {"model": "student-ce", "how": f"{student_how}, plain CE (Trainer)", "params": kd["params"]["student"],
         **q["student-ce"]},
        {"model": "kd-online", "how": f"DistillationTrainer, live teacher, forward KL, α={s['kd_alpha']}, "
                                      f"T={s['kd_temperature']}", "params": kd["params"]["student"], **q["kd-online"]},
        {"model": "kd-cache", "how": f"DistillationTrainer from the top-{k} cache ({bpt:.1f} bytes/token)",
         "params": kd["params"]["student"], **q["kd-cache"]},
    ]  # fmt: skip
    for name, m in prune["models"].items():
        quality_rows.append({"model": f"student-ce + {s['prune_steps']} steps, {name}", "how": "CE fine-tuning",
                             "params": kd["params"]["student"], "sparsity": m["sparsity"], "accuracy": m["accuracy"],
                             "perplexity": m["perplexity"]})  # fmt: skip

    share = {name.split(" (")[0]: v for name, v in med.items() if name.startswith("loss: ")}
    summary = (
        f"Ratios of medians of interleaved timings, all taken in one run on this machine. Distillation: a student "
        f"({kd['params']['student'] / 1e6:.2f}M parameters) and a teacher ({kd['params']['teacher'] / 1e6:.2f}M) "
        f"of hf-lite's tiny Llama on tinyshakespeare ({s['vocab_size']:,}-word vocabulary, batches of "
        f"{s['batch_size']}×{s['seq_len']} tokens), {s['student_steps']} steps each, the first {warm} left out. "
        f"Teacher cache: k={k}, {kd['cache']['tokens']:,} tokens, {bpt:.1f} bytes/token, computed in "
        f"{kd['cache']['precompute_s']:.0f} s. Chunked loss: generalized JSD on {tok_label}. Pruning: the "
        f"CE-trained student fine-tuned {s['prune_steps']} more steps to {s['prune_sparsity']:.0%} sparsity, masks "
        f"recomputed every {freq} steps."
    )
    notes = [
        f"Noise floor: the pruning race also runs the no-callback trainer twice (A/A control); its two medians "
        f"differ by {abs(aa_ratio - 1):.1%} in this run. A ratio that meets or misses its goal by less than that "
        "is within the noise of the machine at the time.",
        "A step is timed from the moment its trainer is let go (batch fetching and collation included) to "
        "on_step_end; 'compute' starts at on_step_begin. The teacher forward is `torch.no_grad()` in eval mode on "
        "a batch of the same shape, as DistillationTrainer calls it. The distillation ratios come from the same "
        "rounds; the per-round KD ratio has median "
        f"{statistics.median(per_round):.2f}×.",
        "The KD overhead is mostly the loss's share of a step. Timed alone in the race's first "
        f"{s['loss_share_rounds']} rounds (forward + backward on the logits of the first batch), the plain student's "
        f"CE takes {_fmt_ms(share['loss: CE'])}, DistillationTrainer's forward KL + CE "
        f"{_fmt_ms(share['loss: forward KL + CE'])} and the cached top-k KL + CE {_fmt_ms(share['loss: top-k KL + CE'])}: "
        "at these tiny widths the vocabulary-sized softmaxes weigh more than in a real model, where the "
        "transformer layers dominate.",
        "Loss memory is the peak RSS of a fresh process during one forward + backward minus its RSS just before "
        "(inputs excluded, gradients included, after a warm-up call on 64 tokens); the baseline of the from-hidden "
        "variants builds both models' logits with F.linear, which the chunked variant never does whole.",
        "Loss values (all variants on the same inputs agree): "
        + ", ".join(f"{v} {loss['values'][v]:.6f}" for v in loss["variants"]) + ".",
        f"TRL: {trl_missing}." if trl_missing else
        "TRL's GKDTrainer runs with lmbda=0 and seq_kd=False (no on-policy generation: the off-policy path that "
        "DistillationTrainer also takes), fp32 and no gradient checkpointing (TRL's defaults bf16=True and "
        "gradient_checkpointing=True turned off for both to run alike), on random tokens; train() memory is what "
        f"train() adds in a fresh process over {s['trl_memory_steps']} step(s), models and data excluded.",
    ]  # fmt: skip
    faults = {name: statistics.median([r.get("page_faults", 0) for r in rows[warm:]])
              for name, rows in kd["steps"].items() if not name.startswith("loss: ")}  # fmt: skip
    allocator = {k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")}
    notes.append(
        "Page faults per step (medians): " + ", ".join(f"{n} {f:,.0f}" for n, f in faults.items()) + ". glibc "
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
        "goals": goals,
        "tables": [
            {
                "title": "Ratios",
                "columns": [
                    {"key": "ratio", "label": "ratio"},
                    {"key": "x", "label": "measured", "format": "x"},
                    {"key": "goal", "label": "goal"},
                    {"key": "status", "label": "status"},
                    {"key": "raw", "label": "medians"},
                ],
                "rows": ratio_rows,
            },
            {
                "title": "Step times (medians of interleaved rounds)",
                "columns": [
                    {"key": "race", "label": "race"},
                    {"key": "participant", "label": "participant"},
                    {"key": "median_ms", "label": "step (ms)", "format": "ms"},
                    {"key": "iqr_ms", "label": "IQR (ms)", "format": "ms"},
                    {"key": "compute_ms", "label": "compute (ms)", "format": "ms"},
                    {"key": "n", "label": "n", "format": "int"},
                ],
                "rows": timing_rows,
            },
            {
                "title": f"Distillation losses, forward + backward, {tok_label}",
                "columns": [
                    {"key": "variant", "label": "variant"},
                    {"key": "loss_bytes", "label": "peak memory", "format": "bytes"},
                    {"key": "x_mem", "label": "× plain", "format": "x"},
                    {"key": "time_ms", "label": "time (ms)", "format": "ms"},
                    {"key": "x_time", "label": "× plain", "format": "x"},
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
                    {"key": "trainer", "label": "trainer"},
                    {"key": "step_ms", "label": "step (ms)", "format": "ms"},
                    {"key": "train_bytes", "label": "train() peak memory", "format": "bytes"},
                ],
                "rows": trainer_rows,
                "notes": [f"TRL rows missing: {trl_missing}."] if trl_missing else [],
            },
            {
                "title": "Quality checks (validation: next-token accuracy, perplexity)",
                "columns": [
                    {"key": "model", "label": "model"},
                    {"key": "how", "label": "how"},
                    {"key": "params", "label": "params", "format": "params"},
                    {"key": "sparsity", "label": "sparsity", "format": "pct"},
                    {"key": "accuracy", "label": "accuracy", "format": "pct2"},
                    {"key": "perplexity", "label": "perplexity", "format": "{:.1f}"},
                ],
                "rows": quality_rows,
            },
        ],  # fmt: skip
        "notes": notes,
        "settings": s,
        "teacher": {key: v for key, v in teacher_meta.items() if key != "settings"},
        "raw": {
            "distillation_steps": kd["steps"],
            "kd_ratio_per_round_median": statistics.median(per_round),
            "cache": kd["cache"],
            "quality": kd["quality"],
            "loss": {"memory": mem, "timing": lt, "values": loss["values"]},
            "trainers": trl_cmp,
            "pruning": {"windows_s": windows, "steps": prune["steps"], "models": prune["models"]},
        },
    }
