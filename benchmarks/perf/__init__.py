"""Performance ratios: what distillation, a teacher cache, the chunked loss and the pruning callback cost.

Each is a ratio of two things measured side by side in one run.

The machine this runs on is shared and noisy, so nothing here divides numbers taken at different times:
every time ratio divides two medians of timings taken *interleaved*, round after round, in one process
(the order rotating each round), so a burst of background load lands on both sides alike.

**How a training step is timed.** Each trainer runs its real ``trainer.train()`` (the stock
``transformers`` loop, callbacks and all) in a worker thread that pauses after every optimizer step
(:class:`benchmarks.perf.stepping.SteppedTrainer`: a ``TrainerCallback`` gate at ``on_step_end``). The main thread lets one trainer
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
the system at once (:data:`benchmarks.perf.chunked_loss.MEMORY_ENV`) so that RSS follows live tensors. Variants on given logits:
``distillation_loss`` (on the CPU it computes its rows in blocks of ``hf_lite.losses.fused.BLOCK_ELEMENTS``
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
(:func:`benchmarks.perf.prune.torch_prune_callback`, a ``TrainerCallback`` that re-prunes the same layers at the same steps and
calls ``prune.remove`` at the end). Each mask update falls on the last step of a window of
``prune_frequency`` steps, so steps are summed per window (one update each) and the ratio is of window
medians: the amortised cost of a step, updates included. The first window (``train()``'s set-up) is left
out. Counted sparsity and validation accuracy after training show both prune alike. The no-callback
trainer runs twice (an A/A control): how far its two medians land apart is the noise floor of the run.

Fixed seeds (``--seed``); timings are only as quiet as the machine (the load average is in the machine line).

**Layout.** This module holds the settings and :func:`run`; the measuring code is beside it: ``stepping``
(the lock-step race), ``lm`` (tiny Llama models, data, the cached teacher), ``distill`` (rows 1 and 2),
``chunked_loss`` (row 3), ``prune`` (row 4); ``report`` turns the raw timings into goals and tables.
"""

from __future__ import annotations

import random
from typing import Any

from benchmarks.perf.chunked_loss import loss_comparison, trainer_comparison, trl_status
from benchmarks.perf.distill import distillation_race
from benchmarks.perf.lm import get_teacher, read_text, to_blocks
from benchmarks.perf.prune import pruning_race
from benchmarks.perf.report import assemble

TITLE = "Performance ratios: distillation step, teacher cache, chunked loss, pruning callback"
ORDER = 30

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


def run(ctx: Any) -> dict[str, Any]:
    """Train (or load) the teacher, run the four races, and assemble goals and tables from the timings."""
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
