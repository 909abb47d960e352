"""DeepSpeed ZeRO-3 on DeepSpeed's CPU accelerator (gloo), two processes under torchrun: the distillation teacher
partitioned for inference gives the unpartitioned teacher's logits and the one-process loss; PruningCallback is
refused on partitioned weights. Skipped where deepspeed is not installed (it is not a dependency of hf-lite)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.launch import free_port, run_group
from tests.trainers.fsdp2_cases import one_process_distillation_step

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
@pytest.mark.multiprocess
def test_zero3_teacher_on_cpu_gives_the_unpartitioned_logits_and_loss(tmp_path):
    pytest.importorskip("deepspeed")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
    ]
    result = run_group([*cmd, "-m", "tests.trainers.zero3_cpu_worker", str(tmp_path)], timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    measured = json.loads((tmp_path / "zero3.json").read_text())
    assert measured["logits_max_diff"] <= 1e-6
    loss, _ = one_process_distillation_step(tmp_path / "reference")
    assert abs(measured["loss"] - loss) <= 1e-5
