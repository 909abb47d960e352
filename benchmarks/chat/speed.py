"""What on-policy distillation costs on the real chat pair, and hf-lite beside TRL's ``DistillationTrainer``.

Race (every participant one step per round, rotating order, medians after the first rounds; learning rate 0 so
that the student, hence its greedy completions, is the same in every round):

- ``on-policy``: hf-lite ``DistillationTrainer`` with ``lmbda=1``, greedy generation;
- ``off-policy``: the same trainer with ``lmbda=0`` on the very sequences the student writes (prompt + its
  greedy completion, precomputed), so it trains on the same tokens without generating;
- ``generate``: the student's plain ``model.generate`` on the same prompts with the same settings;
- ``trl``: TRL's ``DistillationTrainer`` (always on-policy) on the same prompts, greedy, same loss
  (generalized JSD, beta 0.5, temperature 1: TRL's default), same batch and completion length.

Each on-policy trainer's time in the student's ``generate`` is clocked inside its steps, so the goal line also
shows the part of a step the trainer itself controls (the step less its generation).

Peak memory: each trainer in a fresh process (models loaded from the saved folders), the peak RSS its
``train()`` adds for ``mem_steps`` steps.
"""

from __future__ import annotations

import copy
import os
import statistics
from pathlib import Path
from typing import Any

from benchmarks.common import cpu_training_args, peak_rss_bytes, reset_peak_rss, run_isolated


def _greedy_rows(
    student: Any, rows: list[dict[str, Any]], generation_config: Any, collator: Any
) -> list[dict]:
    """``rows`` with the student's greedy completion of each prompt in place of its own (EOS kept, nothing
    after it): what the on-policy step will train on."""
    import torch

    from trainers.distillation_onpolicy import completion_batch

    batch = collator([{k: r[k] for k in ("input_ids", "labels", "prompt_length")} for r in rows])
    student.eval()
    with torch.no_grad():
        out = student.generate(
            input_ids=batch["prompt_input_ids"],
            attention_mask=batch["prompt_attention_mask"],
            generation_config=generation_config,
        )
    new = out[:, batch["prompt_input_ids"].shape[1] :]
    joined = completion_batch(
        batch["prompt_input_ids"],
        batch["prompt_attention_mask"],
        new,
        list(generation_config.eos_token_id),
        generation_config.pad_token_id,
    )
    result = []
    for ids, mask, labels, r in zip(
        joined["input_ids"], joined["attention_mask"], joined["labels"], rows, strict=True
    ):
        n = int(mask.sum())
        result.append(
            {
                "input_ids": ids[:n].tolist(),
                "labels": labels[:n].tolist(),
                "prompt_length": r["prompt_length"],
            }
        )
    return result


def hf_lite_trainer(student: Any, teacher: Any, tokenizer: Any, rows: list[dict], s: dict[str, Any], out: Path,
                    lmbda: float, steps: int, seed: int) -> Any:  # fmt: skip
    from datasets import Dataset

    from hf_lite.data import CompletionCollator
    from trainers import DistillationConfig, DistillationTrainer

    args = cpu_training_args(
        DistillationConfig, out, batch_size=s["race_batch"], steps=steps, lr=0.0, seed=seed,
        loss_type="jsd", beta=0.5, temperature=1.0, alpha=1.0, lmbda=lmbda, max_new_tokens=s["max_new_tokens"],
        generation_temperature=0.0, logging_steps=10**6,
    )  # fmt: skip
    data = Dataset.from_list([{k: r[k] for k in ("input_ids", "labels", "prompt_length")} for r in rows])
    return DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=data,
        data_collator=CompletionCollator(tokenizer), processing_class=tokenizer,
    )  # fmt: skip


def trl_trainer(student: Any, teacher: Any, tokenizer: Any, prompts: list[Any], s: dict[str, Any], out: Path,
                steps: int, seed: int) -> Any:  # fmt: skip
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset
    from trl import DistillationConfig, DistillationTrainer

    args = cpu_training_args(
        DistillationConfig, out, batch_size=s["race_batch"], steps=steps, lr=0.0, seed=seed,
        beta=0.5, max_completion_length=s["max_new_tokens"], generation_kwargs={"do_sample": False},
        shuffle_dataset=False, logging_steps=10**6,
    )  # fmt: skip
    data = Dataset.from_list([{"prompt": p} for p in prompts])
    return DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=data, processing_class=tokenizer
    )


def _clock_generate(model: Any, total: list[float]) -> None:
    """Add the seconds of each ``model.generate`` call to ``total[0]`` (TRL generates with the unwrapped model,
    this very object)."""
    import time

    inner = model.generate

    def generate(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            total[0] += time.perf_counter() - start

    model.generate = generate


def generation_race(ctx: Any, s: dict[str, Any], student: Any, teacher: Any, tokenizer: Any,
                    rows: list[dict], prompts: list[Any]) -> dict[str, Any]:  # fmt: skip
    """The race of the module docstring; medians and the two ratios of the issue."""
    from benchmarks.perf.stepping import SteppedTrainer, TimedCall, race, step_times
    from hf_lite.data import CompletionCollator

    rounds, bs = s["race_rounds"], s["race_batch"]
    rows, prompts = rows[:bs] * rounds, prompts[:bs] * rounds  # the same batch every round
    work = Path(ctx.work) / "race"
    on = hf_lite_trainer(
        copy.deepcopy(student), teacher, tokenizer, rows, s, work / "on", 1.0, rounds, ctx.seed
    )
    config = on.on_policy.generation_config
    collator = CompletionCollator(tokenizer)
    written = _greedy_rows(copy.deepcopy(student), rows[:bs], config, collator)
    off = hf_lite_trainer(copy.deepcopy(student), teacher, tokenizer, written * rounds, s, work / "off", 0.0,
                          rounds, ctx.seed)  # fmt: skip
    plain = copy.deepcopy(student).eval()
    batch = collator([{k: r[k] for k in ("input_ids", "labels", "prompt_length")} for r in rows[:bs]])

    def generate() -> None:
        import torch

        with torch.no_grad():
            plain.generate(
                input_ids=batch["prompt_input_ids"],
                attention_mask=batch["prompt_attention_mask"],
                generation_config=config,
            )

    participants = {"on-policy": SteppedTrainer(on, "on-policy"), "off-policy": SteppedTrainer(off, "off-policy"),
                    "generate": TimedCall(generate)}  # fmt: skip
    trl_error = None
    trl_gen = [0.0]  # seconds TRL's trainer spent in the student's generate, summed
    try:
        trl = trl_trainer(
            copy.deepcopy(student), teacher, tokenizer, prompts, s, work / "trl", rounds, ctx.seed
        )
        _clock_generate(trl.model, trl_gen)
        participants["trl"] = SteppedTrainer(trl, "trl")
    except Exception as err:  # TRL missing or refusing this setup: the row says why
        trl_error = f"{type(err).__name__}: {err}"
    trl_gen_seconds: list[float] = []
    gen_seconds: list[float] = []
    seen = [0.0]

    class GenerationClock:  # reads the on-policy trainer's generation time after each of its steps
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def step(self) -> dict[str, float]:
            out = self.inner.step()
            gen_seconds.append(on.on_policy.seconds - seen[0])
            seen[0] = on.on_policy.seconds
            return out

        def close(self) -> None:
            self.inner.close()

    class TrlGenerationClock(GenerationClock):
        def step(self) -> dict[str, float]:
            before = trl_gen[0]
            out = self.inner.step()
            trl_gen_seconds.append(trl_gen[0] - before)
            return out

    participants["on-policy"] = GenerationClock(participants["on-policy"])
    if "trl" in participants:
        participants["trl"] = TrlGenerationClock(participants["trl"])
    steps = race(participants, rounds)
    skip = s["race_skip"]
    med = {name: statistics.median(step_times(log, skip)) for name, log in steps.items()}
    med["in-trainer generation"] = statistics.median(gen_seconds[skip:])
    # The part of a step each trainer controls: the step less its student's generation (both run the same
    # model.generate, which on this CPU is bound by reading the weights once per token).
    med["on-policy less generation"] = statistics.median(
        [t - g for t, g in zip(step_times(steps["on-policy"], 0), gen_seconds, strict=True)][skip:]
    )
    if "trl" in med:
        med["trl generation"] = statistics.median(trl_gen_seconds[skip:])
        med["trl less generation"] = statistics.median(
            [t - g for t, g in zip(step_times(steps["trl"], 0), trl_gen_seconds, strict=True)][skip:]
        )
    tokens = sum(sum(1 for x in r["labels"] if x != -100) for r in written)
    return {
        "median_s": med,
        "step_ratio": med["on-policy"] / (med["off-policy"] + med["generate"]),
        "generation_ratio": med["in-trainer generation"] / med["generate"],
        "trl_ratio": med["on-policy"] / med["trl"] if "trl" in med else None,
        "trl_training_ratio": med["on-policy less generation"] / med["trl less generation"]
        if "trl" in med
        else None,
        "trl_error": trl_error,
        "batch": bs,
        "generated_tokens": tokens,
        "rounds": rounds,
        "skipped": skip,
        "steps": steps,
    }


def trainer_memory_child(kind: str, student_dir: str, teacher_dir: str, rows: list[dict], prompts: list[Any],
                         settings: dict[str, Any], threads: int, seed: int, out: str) -> dict[str, Any]:  # fmt: skip
    """Isolated-process target: load the pair, build hf-lite's (``kind="hf-lite"``) or TRL's trainer on-policy,
    reset the peak-RSS mark and train ``mem_steps`` steps; returns the peak the training added."""
    import torch

    from hf_lite import load_model, load_tokenizer

    torch.set_num_threads(threads)
    student, teacher = load_model(student_dir), load_model(teacher_dir)
    tokenizer = load_tokenizer(teacher_dir)
    steps = settings["mem_steps"]
    bs = settings["race_batch"]
    if kind == "hf-lite":
        trainer = hf_lite_trainer(
            student, teacher, tokenizer, rows[:bs] * steps, settings, Path(out), 1.0, steps, seed
        )
    else:
        trainer = trl_trainer(
            student, teacher, tokenizer, prompts[:bs] * steps, settings, Path(out), steps, seed
        )
    before = peak_rss_bytes()
    reset_peak_rss()
    trainer.train()
    return {"train_peak_added_bytes": peak_rss_bytes() - before, "loaded_bytes": before}


def trainer_memory(ctx: Any, s: dict[str, Any], student_dir: Path, teacher_dir: Path, rows: list[dict],
                   prompts: list[Any], threads: int) -> dict[str, Any]:  # fmt: skip
    from benchmarks.perf.chunked_loss import memory_env

    result = {}
    for kind in ("hf-lite", "trl"):
        try:
            out = run_isolated(
                "benchmarks.chat.speed:trainer_memory_child",
                {
                    "kind": kind,
                    "student_dir": str(student_dir),
                    "teacher_dir": str(teacher_dir),
                    "rows": rows,
                    "prompts": prompts,
                    "settings": s,
                    "threads": threads,
                    "seed": ctx.seed,
                    "out": str(Path(ctx.work) / "mem" / kind),
                },  # fmt: skip
                preload=("torch", "transformers", "trl" if kind == "trl" else "trainers"),
                env=memory_env(threads),
                capture_output=True,
            )
            result[kind] = out.result
            ctx.log(f"trainer memory {kind}: {out.result['train_peak_added_bytes'] / 2**20:.0f} MiB")
        except RuntimeError as err:
            result[kind] = {"error": str(err)[-500:]}
    return result
