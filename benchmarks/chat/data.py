"""Prompts of the chat distillation benchmark: SST-2 sentiment questions and Tiny Shakespeare continuations.

Every example is TRL's conversational prompt/completion format: ``prompt`` is a one-message conversation
(the user's request) and ``completion`` the reference answer (the SST-2 label word, or the passage's next
lines). Training prompts come from SST-2's training split and Tiny Shakespeare's first 90%; held-out prompts
from SST-2's dev split and Tiny Shakespeare's last 10%, never used in training.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

SENTIMENT = "Is the sentiment of this movie review positive or negative? Answer with one word.\n\nReview: {}"
CONTINUE = "Continue this passage from a play with the next lines.\n\n{}"
ANSWERS = ("negative", "positive")  # SST-2 label 0, 1


def read_sst2_labelled(data_dir: Path, split: str) -> list[tuple[str, int]]:
    """``(sentence, label)`` pairs of ``<data_dir>/sst2/<split>.tsv`` (GLUE SST-2, quoting disabled)."""
    path = Path(data_dir) / "sst2" / f"{split}.tsv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: pass --data-dir with the folder holding sst2/{split}.tsv."
        )
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [(r["sentence"].strip(), int(r["label"])) for r in rows if r["sentence"].strip()]


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def sentiment_examples(pairs: list[tuple[str, int]], count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` SST-2 questions drawn with ``seed``; the completion is the label word."""
    picked = random.Random(seed).sample(pairs, min(count, len(pairs)))
    return [
        {"prompt": user(SENTIMENT.format(s)), "completion": assistant(ANSWERS[y]), "label": y, "kind": "sst2"}
        for s, y in picked
    ]


def continuation_examples(
    text: str, count: int, seed: int, lines: int = 4, answer_lines: int = 2
) -> list[dict]:
    """``count`` passages of ``lines`` non-empty lines of ``text`` (starts drawn with ``seed``); the completion
    is the ``answer_lines`` lines that follow."""
    rows = [line for line in text.splitlines() if line.strip()]
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        i = rng.randrange(0, len(rows) - lines - answer_lines)
        passage, answer = rows[i : i + lines], rows[i + lines : i + lines + answer_lines]
        out.append({
            "prompt": user(CONTINUE.format("\n".join(passage))),
            "completion": assistant("\n".join(answer)),
            "label": -1,
            "kind": "shakespeare",
        })  # fmt: skip
    return out


def prompt_sets(data_dir: Path, shakespeare: str, s: dict[str, Any], seed: int) -> dict[str, list[dict]]:
    """The training examples (half of each kind, shuffled), the warm-start examples (others of the same
    kinds), the held-out examples and the SST-2 task set."""
    cut = len(shakespeare) - int(round(len(shakespeare) * s["val_fraction"]))
    n, m, w = s["train_prompts"], s["eval_prompts"], s["warm_prompts"]
    # The warm-start examples are drawn with the training ones, so that the two sets never share a question.
    pool = sentiment_examples(read_sst2_labelled(data_dir, "train"), (n + w) // 2, seed)
    pool += continuation_examples(shakespeare[:cut], n + w - (n + w) // 2, seed)
    random.Random(seed).shuffle(pool)
    warm, train = pool[:w], pool[w:]
    dev = read_sst2_labelled(data_dir, "dev")
    held_out = sentiment_examples(dev, m // 2, seed + 1) + continuation_examples(
        shakespeare[cut:], m - m // 2, seed + 1
    )
    task = sentiment_examples(dev, s["task_prompts"], seed + 2)
    return {"train": train, "warm": warm, "held_out": held_out, "task": task}
