"""FSDP2 and DeepSpeed ZeRO-3 through ``accelerate launch`` at one process on a CUDA GPU (skipped elsewhere):
the example configs ``examples/accelerate/fsdp.yaml`` and ``deepspeed_zero3.yaml`` run DistillationTrainer (and,
under FSDP2, PruningCallback) for 6 steps; losses, the saved student and its zeros equal a plain one-GPU run of the
same script (``single_gpu.yaml``), the teacher is sharded and frozen, and ZeRO-3 refuses PruningCallback."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from tests.launch import free_port, run_group

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.integration,
    pytest.mark.multiprocess,
]

ROOT = Path(__file__).resolve().parents[2]


def _launch(config: str, out: Path, *extra: str):
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        f"examples/accelerate/{config}.yaml",
    ]
    cmd += ["--num_processes", "1", "--mixed_precision", "no", "--main_process_port", str(free_port())]
    return run_group([*cmd, "tests/gpu/sharded_engine_run.py", str(out), *extra], timeout=600, cwd=ROOT)


def _run(config: str, out: Path, *extra: str) -> dict:
    result = _launch(config, out, *extra)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((out / "result.json").read_text())


def _compare_students(ours: Path, reference: Path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    saved, expected = load_file(ours / "model.safetensors"), load_file(reference / "model.safetensors")
    assert set(saved) == set(expected) and not any("teacher" in key for key in saved)
    for key, value in saved.items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-4)
        assert torch.equal(value == 0, expected[key] == 0) or value.dim() < 2  # the same pruned entries
    assert json.loads((ours / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    AutoModelForCausalLM.from_pretrained(ours)  # stock reload


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    out = tmp_path_factory.mktemp("plain")
    return out, _run("single_gpu", out, "--prune")


def test_fsdp2_distillation_with_pruning_equals_one_gpu(plain, tmp_path):
    reference_dir, reference = plain
    result = _run("fsdp", tmp_path, "--prune")
    assert result["engine"] == "FSDP2"
    assert result["teacher_sharded"] and not result["teacher_trainable"]
    assert result["mask_sparsity"] == pytest.approx(0.5, abs=1e-3) == reference["mask_sparsity"]
    assert result["losses"] == pytest.approx(reference["losses"], abs=1e-4)
    _compare_students(tmp_path / "student", reference_dir / "student")


def test_zero3_distillation_equals_one_gpu(tmp_path, tmp_path_factory):
    pytest.importorskip("deepspeed")
    reference_dir = tmp_path_factory.mktemp("plain_no_prune")
    reference = _run("single_gpu", reference_dir)
    result = _run("deepspeed_zero3", tmp_path)
    assert result["engine"] == "DeepSpeed ZeRO-3"
    assert result["teacher_sharded"] and not result["teacher_trainable"]
    assert result["losses"] == pytest.approx(reference["losses"], abs=1e-4)
    _compare_students(tmp_path / "student", reference_dir / "student")


def test_zero3_refuses_pruning_callback(tmp_path):
    pytest.importorskip("deepspeed")
    result = _launch("deepspeed_zero3", tmp_path, "--prune")
    assert result.returncode != 0 and "partitioned by DeepSpeed ZeRO-3" in result.stderr
