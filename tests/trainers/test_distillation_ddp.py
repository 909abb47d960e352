"""Two processes under `accelerate launch` (gloo on CPU) reach the weights of one process with the same
global batch: the teacher is not wrapped for gradient sync, losses are normalized by the label tokens of
all processes, and the hidden-state projections' gradients are averaged over processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.launch import launch_two

SCRIPT = Path(__file__).parent / "scripts" / "distill_run.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.multiprocess
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    one = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "one"), "4"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch_two([str(SCRIPT), str(tmp_path / "two"), "2"], env=ENV, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "world_size=1" in one.stdout and "world_size=2" in two.stdout
    a = load_file(tmp_path / "one" / "model.safetensors")
    b = load_file(tmp_path / "two" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6, msg=key)
    pa = load_file(tmp_path / "one" / "distillation_projections.safetensors")
    pb = load_file(tmp_path / "two" / "distillation_projections.safetensors")
    for key in pa:
        torch.testing.assert_close(pb[key], pa[key], rtol=1e-4, atol=1e-6, msg=key)
