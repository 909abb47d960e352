"""The examples run as documented, including under `accelerate launch` with two CPU processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.launch import launch_two

ROOT = Path(__file__).resolve().parents[1]
TEXT = "\n".join(f"line {i}: the quick brown fox jumps over the lazy dog number {i % 7}." for i in range(200))


@pytest.mark.multiprocess
def test_qlora_example_under_accelerate_launch_with_two_processes(tmp_path):
    from hf_lite.testing import save_tiny_checkpoint

    train = tmp_path / "train.txt"
    train.write_text(TEXT)
    model_dir = save_tiny_checkpoint(tmp_path / "model", "llama", texts=[TEXT])
    out = tmp_path / "out"
    args = [
        str(ROOT / "examples" / "qlora_finetune.py"),
        "--model_name_or_path",
        str(model_dir),
        "--train_file",
        str(train),
        "--output_dir",
        str(out),
        "--max_steps",
        "4",
        "--per_device_train_batch_size",
        "4",
        "--block_size",
        "16",
        "--report_to",
        "none",
        "--logging_steps",
        "1",
        "--use_cpu",
        "--save_strategy",
        "no",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = launch_two(args, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Two ranks trained together: the Trainer saw a world of 2, and only rank 0 wrote the adapter.
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    assert proc.stdout.count("***** eval metrics *****") == 1
    assert "world_size=2" in proc.stdout, proc.stdout[-2000:]


@pytest.mark.integration
def test_distill_classifier_example_runs_and_saves_a_plain_student(tmp_path):
    from hf_lite.testing import save_tiny_checkpoint

    rows = ["the cat runs\t1", "a dog sees the bird\t0", "the red fish sleeps\t1", "one big tree\t0"] * 6
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    teacher = save_tiny_checkpoint(
        tmp_path / "teacher", "bert", "sequence-classification", num_hidden_layers=4
    )
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        str(ROOT / "examples" / "distill_classifier.py"),
        "--teacher",
        str(teacher),
        "--train_file",
        str(tmp_path / "train.tsv"),
        "--output_dir",
        str(out),
        "--max_steps",
        "3",
        "--per_device_train_batch_size",
        "4",
        "--report_to",
        "none",
        "--use_cpu",
        "--hidden_weight",
        "1",
        "--save_strategy",
        "no",
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and "eval_accuracy" in proc.stdout
