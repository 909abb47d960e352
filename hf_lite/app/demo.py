"""``hf-lite demo``: the whole pipeline, offline, on CPU, in a few minutes.

The embedded default makes everything it needs in place, then runs an ordinary recipe
(:mod:`hf_lite.app.recipe`, :mod:`hf_lite.app.runner`):

1. **data**: a generated language (:func:`make_markov_corpus`): each word depends on the two before it
   through a fixed random table (1,600 two-word contexts, three continuations each), written to
   ``data/train.txt`` and ``data/eval.txt``. Predicting it well means memorising the table, and in the same
   number of steps a bigger model does that measurably better (lower perplexity): the gap that
   distillation narrows;
2. **teacher**: a randomly initialised 4-layer Llama-style model (grouped-query attention) trained on it;
3. **student**: its layers 0 and 2 (``init_student``), trained alone with cross-entropy as a baseline,
4. **distill**: the same student distilled from the teacher while pruned gradually to 50% sparsity,
5. **int8**: the distilled student in 8-bit (bitsandbytes),
6. **evaluate**: perplexity, parameters (nonzero too), bytes on disk, latency for every model (timed side by
   side): the compression report as JSON, Markdown and a PNG plot; **export**: the distilled student as a
   plain checkpoint.

With ``teacher=`` and ``dataset=`` the same stages run on a real causal LM and text data (the teacher is
fine-tuned on the data first).

>>> from hf_lite.app.demo import run_demo
>>> run_demo("hf-lite-demo")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState

from hf_lite._utils import atomic_dir, atomic_write_text
from hf_lite.app.recipe import Recipe
from hf_lite.app.runner import RUN_MARKER, run_recipe
from hf_lite.report import CompressionReport
from hf_lite.testing import build_tiny_model, build_tokenizer

_NOUNS = {"cat": "sg", "dog": "sg", "bird": "sg", "child": "sg", "teacher": "sg", "river": "sg",
          "cats": "pl", "dogs": "pl", "birds": "pl", "children": "pl", "teachers": "pl", "trees": "pl"}  # fmt: skip
_VERBS = {
    "sg": ["sees", "likes", "chases", "finds", "follows"],
    "pl": ["see", "like", "chase", "find", "follow"],
}
_ADJS = ["big", "small", "red", "old", "happy", "quiet", "young", "green"]


def make_corpus(n: int, *, seed: int) -> list[str]:
    """``n`` sentences of a small English-like grammar (the test suite's language; the demo uses
    :func:`make_markov_corpus`). Half carry a relative clause between the subject and its verb
    (``the dogs that the cat sees chase a bird .``), so predicting the verb's number needs to remember the
    subject across the clause: a deeper model does this better.

    >>> make_corpus(2, seed=0) == make_corpus(2, seed=0)
    True
    """
    rng = random.Random(seed)
    nouns = list(_NOUNS)

    def noun_phrase() -> tuple[list[str], str]:
        noun = rng.choice(nouns)
        det = "the" if _NOUNS[noun] == "pl" or rng.random() < 0.5 else "a"
        adj = [rng.choice(_ADJS)] if rng.random() < 0.4 else []
        return [det, *adj, noun], _NOUNS[noun]

    out = []
    for _ in range(n):
        subject, number = noun_phrase()
        words = list(subject)
        if rng.random() < 0.5:
            inner, inner_number = noun_phrase()
            words += ["that", *inner, rng.choice(_VERBS[inner_number])]
        obj, _ = noun_phrase()
        words += [rng.choice(_VERBS[number]), *obj, "."]
        out.append(" ".join(words))
    return out


#: The demo language's words: common English words, so that its text reads like (random) text.
_WORDS = ("the a cat dog bird child river tree house road sees likes finds follows runs sleeps sings "
          "big small red old happy quiet young green near under over with and but then today slowly "
          "again here there very not now").split()  # fmt: skip


def markov_table(*, seed: int = 7, branch: int = 3) -> dict[tuple[int, int], tuple[list[int], list[float]]]:
    """The demo language's grammar: for each pair of word ids, ``branch`` possible next words and their weights
    (drawn once from ``seed``: the same table for the training and the evaluation text).

    >>> table = markov_table()
    >>> len(table), len(table[0, 1][0])
    (1600, 3)
    """
    rng = random.Random(seed)
    n = len(_WORDS)
    table = {}
    for a in range(n):
        for b in range(n):
            table[a, b] = (
                rng.sample(range(n), branch),
                sorted((rng.random() for _ in range(branch)), reverse=True),
            )
    return table


def make_markov_corpus(n: int, *, seed: int, table_seed: int = 7) -> list[str]:
    """``n`` lines of 14 to 26 words of the demo language (:func:`markov_table`): a random start, then each
    word drawn from the continuations of the two before it.

    >>> make_markov_corpus(2, seed=0) == make_markov_corpus(2, seed=0) != make_markov_corpus(2, seed=1)
    True
    """
    table = markov_table(seed=table_seed)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ids = [rng.randrange(len(_WORDS)), rng.randrange(len(_WORDS))]
        for _ in range(rng.randint(12, 24)):
            words, weights = table[ids[-2], ids[-1]]
            ids.append(rng.choices(words, weights)[0])
        out.append(" ".join(_WORDS[i] for i in ids))
    return out


def demo_recipe(
    output_dir: str | Path,
    *,
    teacher: str,
    train: str,
    eval_file: str | None,
    seed: int,
    quick: bool,
    pretrain_teacher: bool,
) -> dict[str, Any]:
    """The demo's recipe as a dict (what a YAML recipe would hold)."""
    steps = 24 if quick else 600
    common = {
        "per_device_train_batch_size": 32,
        "learning_rate": 3e-3,
        "lr_scheduler_type": "cosine",
        "warmup_steps": max(1, steps // 20),
        "logging_steps": max(1, steps // 8),
        "save_steps": max(10, steps // 4),
        "disable_tqdm": False,
    }
    teacher_args = {**common, "max_steps": steps if pretrain_teacher else max(10, steps // 4)}
    if not pretrain_teacher:
        teacher_args["learning_rate"] = 5e-5
    student_args = {**common, "max_steps": max(10, steps // 2)}
    return {
        "name": "hf-lite-demo",
        "task": "causal-lm",
        "teacher": teacher,
        "output_dir": str(output_dir),
        "seed": seed,
        "data": {
            "train": train,
            "eval": eval_file,
            "max_length": 32 if pretrain_teacher else 128,
            "max_train_rows": 400 if quick else None,
        },
        "stages": [
            {"name": "teacher-trained", "type": "finetune", "model": "teacher", "args": teacher_args},
            {"name": "student", "type": "init_student", "model": "teacher-trained", "layers": "every_other"},
            {"name": "student-alone", "type": "finetune", "model": "student", "args": student_args},
            {
                "name": "distill",
                "type": "distill",
                "model": "student",
                "teacher": "teacher-trained",
                "pruning": {
                    "target_sparsity": 0.5,
                    "start_step": student_args["max_steps"] // 5,
                    "end_step": student_args["max_steps"] * 4 // 5,
                    "frequency": max(1, student_args["max_steps"] // 20),
                },
                "args": {**student_args, "temperature": 1.0, "alpha": 0.5},
            },
            {"name": "int8", "type": "quantize", "model": "distill", "bits": 8},
            {
                "name": "evaluate",
                "type": "evaluate",
                "latency_repeats": 3 if quick else 10,
                "models": ["teacher-trained", "student", "student-alone", "distill", "int8"],
            },
            {"name": "export", "type": "export", "model": "distill"},
        ],
    }


def run_demo(
    output_dir: str | Path = "hf-lite-demo",
    *,
    teacher: str | None = None,
    dataset: str | None = None,
    seed: int = 0,
    quick: bool = False,
) -> Any:
    """Run the demo pipeline into ``output_dir`` (resumable: a second call skips finished stages) and return
    the compression report.

    Args:
        output_dir: run folder.
        teacher: Hub id or folder of a causal LM to use instead of the generated teacher (needs ``dataset``).
        dataset: text file or Hub dataset id to use with ``teacher``.
        seed: seed of the data, the initialisations and the data order.
        quick: a few steps per stage (smoke tests).
    """
    if (teacher is None) != (dataset is None):
        raise ValueError("demo: give both --teacher and --dataset (a real model and its data), or neither.")
    out = Path(output_dir)
    state = PartialState(cpu=not torch.cuda.is_available())
    if teacher is None:
        data_dir, init_dir = out / "data", out / "teacher-init"
        if state.is_main_process and not (init_dir / "config.json").is_file():
            _make_embedded_default(out, data_dir, init_dir, seed)
        state.wait_for_everyone()
        raw = demo_recipe(
            out,
            teacher=str(init_dir),
            train=str(data_dir / "train.txt"),
            eval_file=str(data_dir / "eval.txt"),
            seed=seed,
            quick=quick,
            pretrain_teacher=True,
        )
    else:
        raw = demo_recipe(
            out,
            teacher=teacher,
            train=dataset,
            eval_file=None,
            seed=seed,
            quick=quick,
            pretrain_teacher=False,
        )
    ctx = run_recipe(Recipe.from_dict(raw))
    report = CompressionReport.from_json((out / "evaluate" / "report.json").read_text())
    if ctx.is_main:
        print(
            f"\nreport: {out / 'evaluate' / 'report.json'}, {out / 'evaluate' / 'report.md'}; "
            f"plot: {out / 'evaluate' / 'report.png'}; student checkpoint: {out / 'export' / 'model'}"
        )
    return report


def _make_embedded_default(out: Path, data_dir: Path, init_dir: Path, seed: int) -> None:
    """Generated data files and a randomly initialised teacher with its tokenizer, written before the recipe
    runs (the recipe folder is claimed by the run, so the marker file is written here first)."""
    if not (out / RUN_MARKER).exists():
        atomic_write_text(out / RUN_MARKER, json.dumps({"recipe": "hf-lite-demo"}))
    train, evaluation = make_markov_corpus(6000, seed=seed), make_markov_corpus(400, seed=seed + 1)
    atomic_write_text(data_dir / "train.txt", "\n".join(train) + "\n")
    atomic_write_text(data_dir / "eval.txt", "\n".join(evaluation) + "\n")
    tokenizer = build_tokenizer(train, style="gpt")
    tokenizer.pad_token = tokenizer.eos_token
    model, _ = build_tiny_model(
        "llama",
        tokenizer=tokenizer,
        seed=seed,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
    )
    with atomic_dir(init_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
