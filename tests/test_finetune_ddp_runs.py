"""A ``finetune`` stage (``hf-lite run``) and the example scripts (QLoRA in 4-bit, distil a classifier) give, on
2 processes under ``accelerate launch`` (gloo on CPU) with the same global batch, the loss and the weights of 1
process: for sequence classifiers (tiny BERT, whose loss ignores ``num_items_in_batch``) and causal LMs (tiny
Llama). Tolerances: the stage's losses ``rel=1e-5``, the scripts' printed losses to their 4 digits (``rel=1e-3``);
weights ``rtol=1e-4, atol=1e-6`` (gloo sums gradients in another order than one process). And a script launched
on several CPU processes without ``--use_cpu`` stops with the fix instead of training twice into one folder."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from hf_lite.app.demo import make_corpus
from tests.launch import LAUNCH, free_port, launch_two, run_group

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
TRAIN_ARGS = {
    "max_steps": 3,
    "per_device_train_batch_size": 4,
    "per_device_eval_batch_size": 4,  # eval_loss averages batch means: same global eval batches too
    "learning_rate": 0.5,
    "optim": "sgd",
    "lr_scheduler_type": "constant",
    "logging_steps": 1,
    "disable_tqdm": True,
    "save_strategy": "no",
    "do_eval": True,  # the stage evaluates only when asked
}


def _assert_same_weights(a_file: Path, b_file: Path) -> None:
    a, b = load_file(a_file), load_file(b_file)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6, msg=key)


def _recipe(tmp_path: Path, task: str, out: Path) -> Path:
    from hf_lite.testing import save_tiny_checkpoint

    if task == "sequence-classification":
        rows = ["the cat runs\t1", "a dog sees the bird\t0", "the red fish sleeps\t2", "one big tree\t0"]
        rows += ["tiny birds sing loud songs today\t1"]
        (tmp_path / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows * 8) + "\n")
        model = save_tiny_checkpoint(
            tmp_path / "model",
            "bert",
            task,
            num_labels=3,
            hidden_dropout_prob=0.0,  # dropout masks differ between 1 and 2 processes
            attention_probs_dropout_prob=0.0,
        )
        data = {"train": str(tmp_path / "train.tsv"), "columns": {"text": "sentence", "label": "label"}}
    else:
        texts = make_corpus(120, seed=0)
        (tmp_path / "train.txt").write_text("\n".join(texts) + "\n")
        model = save_tiny_checkpoint(tmp_path / "model", "llama", texts=texts)
        data = {"train": str(tmp_path / "train.txt")}
    raw = {
        "name": "ft",
        "task": task,
        "teacher": str(model),
        "output_dir": str(out),
        "seed": 0,
        "data": {**data, "max_length": 16},
        "stages": [{"name": "ft", "type": "finetune", "model": "teacher", "args": TRAIN_ARGS}],
    }
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.multiprocess
@pytest.mark.parametrize("task", ["sequence-classification", "causal-lm"])
def test_finetune_stage_on_two_processes_matches_one(tmp_path, task):
    one, two = tmp_path / "one", tmp_path / "two"
    recipe_one, recipe_two = _recipe(tmp_path, task, one), _recipe(tmp_path, task, two)
    single = subprocess.run(
        [sys.executable, "-m", "hf_lite", "run", str(recipe_one)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    # global batches of 4, in training and in evaluation
    args = ["-m", "hf_lite", "run", str(recipe_two)]
    args += ["--ft.per_device_train_batch_size", "2", "--ft.per_device_eval_batch_size", "2"]
    launched = launch_two(args, env=ENV, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    got = json.loads((two / "ft" / "stage.json").read_text())
    want = json.loads((one / "ft" / "stage.json").read_text())
    assert got["steps"] == want["steps"] == 3
    for key in ("train_loss", "eval_loss"):
        assert got[key] == pytest.approx(want[key], rel=1e-5), key
    _assert_same_weights(
        one / "ft" / "model" / "model.safetensors", two / "ft" / "model" / "model.safetensors"
    )


def _qlora_args(tmp_path: Path, out: Path, batch: int) -> list[str]:
    from hf_lite.testing import save_tiny_checkpoint

    text = "\n".join(make_corpus(200, seed=0))
    (tmp_path / "train.txt").write_text(text)
    model = tmp_path / "model"
    if not model.is_dir():
        save_tiny_checkpoint(model, "llama", texts=[text])
    flags = {
        "model_name_or_path": model,
        "train_file": tmp_path / "train.txt",
        "output_dir": out,
        "max_steps": 3,
        "per_device_train_batch_size": batch,
        "logging_steps": 1,
        "block_size": 16,
        "learning_rate": 0.05,
        "optim": "sgd",
        "report_to": "none",
        "save_strategy": "no",
        "seed": 0,
    }
    return [
        str(ROOT / "examples" / "qlora_finetune.py"),
        *(str(x) for kv in flags.items() for x in ("--" + kv[0], kv[1])),
    ]


def _logged_losses(stdout: str) -> list[float]:
    """The training losses the Trainer printed (``{'loss': '4.246', ...}``, 4 significant digits)."""
    return [
        float(ast.literal_eval(line)["loss"]) for line in stdout.splitlines() if line.startswith("{'loss'")
    ]


@pytest.mark.multiprocess
def test_qlora_example_on_two_processes_matches_one(tmp_path):
    single = subprocess.run(
        [sys.executable, *_qlora_args(tmp_path, tmp_path / "one", 4), "--use_cpu"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    launched = launch_two([*_qlora_args(tmp_path, tmp_path / "two", 2), "--use_cpu"], env=ENV, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "world_size=2" in launched.stdout
    # eval_loss is not compared: the Trainer averages per-batch means, and the evaluation split (a few blocks)
    # is padded with repeated blocks to fill both processes' batches.
    want = _logged_losses(single.stdout)
    assert len(want) == 3 and _logged_losses(launched.stdout) == pytest.approx(want, rel=1e-3)
    name = "adapter_model.safetensors"
    _assert_same_weights(tmp_path / "one" / name, tmp_path / "two" / name)


@pytest.mark.multiprocess
def test_a_script_on_several_cpu_processes_without_use_cpu_stops_with_the_fix(tmp_path):
    out = tmp_path / "out"
    cmd = [*LAUNCH, "--main_process_port", str(free_port()), *_qlora_args(tmp_path, out, 2)]  # no --use_cpu
    proc = run_group(cmd, env={**ENV, "CUDA_VISIBLE_DEVICES": ""}, timeout=300)
    assert proc.returncode != 0
    assert (
        "qlora_finetune.py: error: launched as WORLD_SIZE=2" in proc.stderr and "add --use_cpu" in proc.stderr
    )
    assert not out.exists()  # stopped before training or writing anything


@pytest.mark.multiprocess
def test_distill_classifier_example_on_two_processes_matches_one(tmp_path):
    from hf_lite.testing import save_tiny_checkpoint

    rows = ["the cat runs\t1", "a dog sees the bird\t0", "the red fish sleeps\t1", "one big tree\t0"]
    rows += ["tiny birds sing loud songs today\t1"]
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows * 8) + "\n")
    teacher = save_tiny_checkpoint(
        tmp_path / "teacher",
        "bert",
        "sequence-classification",
        num_hidden_layers=4,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )

    def args(out: str, batch: int) -> list[str]:
        flags = {
            "teacher": teacher,
            "train_file": tmp_path / "train.tsv",
            "output_dir": tmp_path / out,
            "max_steps": 3,
            "per_device_train_batch_size": batch,
            "per_device_eval_batch_size": batch,
            "hidden_weight": 1,
            "optim": "sgd",
            "learning_rate": 0.5,
            "logging_steps": 1,
            "report_to": "none",
            "save_strategy": "no",
            "seed": 0,
        }
        script = str(ROOT / "examples" / "distill_classifier.py")
        return [script, *(str(x) for kv in flags.items() for x in ("--" + kv[0], kv[1])), "--use_cpu"]

    single = subprocess.run(
        [sys.executable, *args("one", 4)], env=ENV, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert single.returncode == 0, single.stderr[-3000:]
    launched = launch_two(args("two", 2), env=ENV, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    want = _logged_losses(single.stdout)
    assert len(want) == 3 and _logged_losses(launched.stdout) == pytest.approx(want, rel=1e-3)
    _assert_same_weights(tmp_path / "one" / "model.safetensors", tmp_path / "two" / "model.safetensors")
