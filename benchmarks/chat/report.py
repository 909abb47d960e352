"""Rendering of the chat benchmark's result (nothing is measured here): columns, goals, notes, summary."""

from __future__ import annotations

from typing import Any

from benchmarks.common import HOW, MODEL, column

METHOD_COLUMNS = [
    MODEL,
    column("reverse_kl", "reverse KL on own answers", "{:.3f}"),
    column("reverse_kl_se", "± s.e. over prompts", "{:.3f}"),
    column("ppl_teacher_answers", "ppl on teacher's answers", "{:.2f}"),
    column("sst2_accuracy", "SST-2 accuracy", "pct"),
    column("own_length", "own answer tokens", "{:.1f}"),
    column("tokens", "completion tokens trained", "int"),
    column("train_s", "train (min)", "min"),
    HOW,
]

COST_COLUMNS = [column("row", "step"), column("median_s", "median s", "{:.3f}")]


def goals(rows: list[dict[str, Any]], race: dict[str, Any], memory: dict[str, Any]) -> list[dict]:
    """The issue's goals, each with what was measured and whether it was met."""
    by = {r["row"]: r for r in rows}
    methods = ["off-policy", "seq-kd", "on-policy-0.5", "on-policy-1", "sft"]
    best_kl = min(methods, key=lambda m: by[m]["reverse_kl"])
    on = min(("on-policy-0.5", "on-policy-1"), key=lambda m: by[m]["reverse_kl"])
    out = [
        {
            "goal": "on-policy KD best on the teacher's reverse KL on the student's own answers",
            "measured": ", ".join(f"{m} {by[m]['reverse_kl']:.3f}" for m in methods),
            "met": best_kl.startswith("on-policy"),
        },
        {
            "goal": "on-policy KD not worse than off-policy on perplexity of the teacher's answers",
            "measured": f"{on} {by[on]['ppl_teacher_answers']:.2f} vs off-policy {by['off-policy']['ppl_teacher_answers']:.2f}",
            "met": by[on]["ppl_teacher_answers"] <= by["off-policy"]["ppl_teacher_answers"],
        },
        {
            "goal": "on-policy step ≤ 1.3 × (off-policy step on the same tokens + the student's generate)",
            "measured": f"ratio {race['step_ratio']:.2f}",
            "met": race["step_ratio"] <= 1.3,
        },
        {
            "goal": "generation inside the trainer ≤ 1.2 × plain model.generate on the same prompts",
            "measured": f"ratio {race['generation_ratio']:.2f}",
            "met": race["generation_ratio"] <= 1.2,
        },
    ]
    if race["trl_ratio"] is not None:
        mem = ""
        if "error" not in memory.get("trl", {"error": 1}) and "error" not in memory.get(
            "hf-lite", {"error": 1}
        ):
            mem = (
                f"; training peak added: hf-lite {memory['hf-lite']['train_peak_added_bytes'] / 2**20:.0f} MiB, "
                f"TRL {memory['trl']['train_peak_added_bytes'] / 2**20:.0f} MiB"
            )
        out.append({
            "goal": "step time ≤ 0.8 × TRL DistillationTrainer's at equal settings (on-policy, greedy, JSD 0.5)",
            "measured": f"ratio {race['trl_ratio']:.2f} (hf-lite {race['median_s']['on-policy']:.2f} s, TRL "
            f"{race['median_s']['trl']:.2f} s){_less_generation(race)}{mem}",
            "met": race["trl_ratio"] <= 0.8,
        })  # fmt: skip
    else:
        out.append({"goal": "step time ≤ 0.8 × TRL DistillationTrainer's", "measured": str(race["trl_error"]),
                    "met": None})  # fmt: skip
    return out


def _less_generation(race: dict[str, Any]) -> str:
    """The step without the student's generation, each trainer's (absent from runs that did not time it)."""
    med = race["median_s"]
    if race.get("trl_training_ratio") is None:
        return ""
    return (
        f"; less the student's generate (hf-lite {med['in-trainer generation']:.2f} s, TRL "
        f"{med['trl generation']:.2f} s): {med['on-policy less generation']:.2f} s vs "
        f"{med['trl less generation']:.2f} s, ratio {race['trl_training_ratio']:.2f}"
    )


def summary(s: dict[str, Any], n_train: int, n_held: int, n_task: int) -> str:
    return (
        f"Teacher SmolLM2-135M-Instruct (dequantized Q4_1 GGUF), student: its 15 most influential blocks. "
        f"{n_train} training conversations (half SST-2 questions, half Tiny Shakespeare continuations), "
        f"{s['train_batch']} per step, one pass, lr {s['train_lr']:g} (cosine); completions at most "
        f"{s['max_new_tokens']} tokens, on-policy sampling at temperature {s['generation_temperature']:g}. "
        f"Scored on {n_held} held-out prompts and {n_task} SST-2 dev questions."
    )


def notes(s: dict[str, Any], race: dict[str, Any], memory: dict[str, Any]) -> list[str]:
    return [
        f"Cost race: batch {race['batch']} prompts, {race['generated_tokens']} generated tokens per step (greedy, "
        f"the same in every round: learning rate 0), {race['rounds']} rotating rounds, the first "
        f"{race['skipped']} left out.",
        "Trainer memory (each in a fresh process): "
        + "; ".join(
            f"{k}: "
            + (
                f"{v['train_peak_added_bytes'] / 2**20:.0f} MiB added by train()"
                if "error" not in v
                else f"failed ({v['error'][-200:]})"
            )
            for k, v in memory.items()
        ),  # fmt: skip
        "Reverse KL and the teacher's answers are greedy; SST-2 accuracy compares the likelihood of the two "
        "label words' completions.",
    ]
