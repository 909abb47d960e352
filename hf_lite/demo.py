"""``hf-lite demo``: the whole pipeline, offline, on CPU, in a few minutes.

The embedded default makes everything it needs in place, then runs an ordinary recipe
(:mod:`hf_lite.recipe`, :mod:`hf_lite.runner`):

1. **data**: a generated language (``make_corpus``) whose sentences carry long-range agreement (a subject
   and its verb separated by a relative clause), written to ``data/train.txt`` and ``data/eval.txt``;
2. **teacher**: a randomly initialised 4-layer Llama-style model (grouped-query attention) trained on it;
3. **student**: its layers 0 and 2 (``init_student``), trained alone with cross-entropy as a baseline,
4. **distill**: the same student distilled from the teacher while pruned gradually to 50% sparsity,
5. **int8**: the distilled student in 8-bit (bitsandbytes),
6. **evaluate**: perplexity, parameters (nonzero too), bytes on disk, latency for every model: the
   compression report as JSON, Markdown and a PNG plot; **export**: the distilled student as a plain checkpoint.

The bigger teacher is measurably better than the small student trained alone (lower perplexity): that is
what distillation transfers. With ``teacher=`` and ``dataset=`` the same stages run on a real causal LM and
text data (the teacher is fine-tuned on the data first).

>>> from hf_lite.demo import run_demo
>>> run_demo("hf-lite-demo")  # doctest: +SKIP
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

_NOUNS = {"cat": "sg", "dog": "sg", "bird": "sg", "child": "sg", "teacher": "sg", "river": "sg",
          "cats": "pl", "dogs": "pl", "birds": "pl", "children": "pl", "teachers": "pl", "trees": "pl"}  # fmt: skip
_VERBS = {
    "sg": ["sees", "likes", "chases", "finds", "follows"],
    "pl": ["see", "like", "chase", "find", "follow"],
}
_ADJS = ["big", "small", "red", "old", "happy", "quiet", "young", "green"]


def make_corpus(n: int, *, seed: int) -> list[str]:
    """``n`` sentences of the demo language. Half carry a relative clause between the subject and its verb
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


def demo_recipe(output_dir: str | Path, *, teacher: str, train: str, eval_file: str | None, seed: int,
                quick: bool, pretrain_teacher: bool) -> dict[str, Any]:  # fmt: skip
    """The demo's recipe as a dict (what a YAML recipe would hold)."""
    steps = 24 if quick else 300
    common = {"per_device_train_batch_size": 32, "learning_rate": 3e-3, "lr_scheduler_type": "cosine",
              "warmup_steps": max(1, steps // 20), "logging_steps": max(1, steps // 8), "save_steps": max(10, steps // 4),
              "disable_tqdm": False}  # fmt: skip
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
        "data": {"train": train, "eval": eval_file, "max_length": 32 if pretrain_teacher else 128,
                 "max_train_rows": 400 if quick else None},  # fmt: skip
        "stages": [
            {"name": "teacher-trained", "type": "finetune", "model": "teacher", "args": teacher_args},
            {"name": "student", "type": "init_student", "model": "teacher-trained", "layers": "every_other"},
            {"name": "student-alone", "type": "finetune", "model": "student", "args": student_args},
            {"name": "distill", "type": "distill", "model": "student", "teacher": "teacher-trained",
             "pruning": {"target_sparsity": 0.5, "start_step": student_args["max_steps"] // 5,
                         "end_step": student_args["max_steps"] * 4 // 5, "frequency": max(1, student_args["max_steps"] // 20)},
             "args": {**student_args, "temperature": 1.0, "alpha": 0.5}},
            {"name": "int8", "type": "quantize", "model": "distill", "bits": 8},
            {"name": "evaluate", "type": "evaluate", "latency_repeats": 3 if quick else 10,
             "models": ["teacher-trained", "student", "student-alone", "distill", "int8"]},
            {"name": "export", "type": "export", "model": "distill"},
        ],
    }  # fmt: skip


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
    import torch
    from accelerate import PartialState

    from hf_lite.recipe import Recipe
    from hf_lite.runner import run_recipe

    if (teacher is None) != (dataset is None):
        raise ValueError("demo: give both --teacher and --dataset (a real model and its data), or neither.")
    out = Path(output_dir)
    state = PartialState(cpu=not torch.cuda.is_available())
    if teacher is None:
        data_dir, init_dir = out / "data", out / "teacher-init"
        if state.is_main_process and not (init_dir / "config.json").is_file():
            _make_embedded_default(out, data_dir, init_dir, seed)
        state.wait_for_everyone()
        raw = demo_recipe(out, teacher=str(init_dir), train=str(data_dir / "train.txt"),
                          eval_file=str(data_dir / "eval.txt"), seed=seed, quick=quick, pretrain_teacher=True)  # fmt: skip
    else:
        raw = demo_recipe(out, teacher=teacher, train=dataset, eval_file=None, seed=seed, quick=quick,
                          pretrain_teacher=False)  # fmt: skip
    ctx = run_recipe(Recipe.from_dict(raw))
    from hf_lite.report import CompressionReport

    report = CompressionReport.from_json((out / "evaluate" / "report.json").read_text())
    if ctx.is_main:
        print(f"\nreport: {out / 'evaluate' / 'report.json'}, {out / 'evaluate' / 'report.md'}; "
              f"plot: {out / 'evaluate' / 'report.png'}; student checkpoint: {out / 'export' / 'model'}")  # fmt: skip
    return report


def _make_embedded_default(out: Path, data_dir: Path, init_dir: Path, seed: int) -> None:
    """Generated data files and a randomly initialised teacher with its tokenizer, written before the recipe
    runs (the recipe folder is claimed by the run, so the marker file is written here first)."""
    import json

    from hf_lite.runner import RUN_MARKER
    from hf_lite.tiny import build_tiny_model, build_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    if not (out / RUN_MARKER).exists():
        (out / RUN_MARKER).write_text(json.dumps({"recipe": "hf-lite-demo"}))
    data_dir.mkdir(parents=True, exist_ok=True)
    train, evaluation = make_corpus(6000, seed=seed), make_corpus(400, seed=seed + 1)
    (data_dir / "train.txt").write_text("\n".join(train) + "\n")
    (data_dir / "eval.txt").write_text("\n".join(evaluation) + "\n")
    tokenizer = build_tokenizer(train, style="gpt")
    tokenizer.pad_token = tokenizer.eos_token
    model, _ = build_tiny_model("llama", tokenizer=tokenizer, seed=seed, hidden_size=128, intermediate_size=256,
                                num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=32)  # fmt: skip
    tmp = init_dir.with_name(".teacher-init.tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(init_dir)
