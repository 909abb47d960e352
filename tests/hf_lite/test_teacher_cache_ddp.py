"""The teacher cache and the teacher's generations on two processes: shared out by shard, joined by the main one.

Two processes under ``accelerate launch`` (gloo on CPU) build a teacher cache (11 examples in shards of 3: rank 0
computes shards 0 and 2, rank 1 shards 1 and 3) and sampled teacher generations with top-k (7 prompts in shards of
2). Each result equals, bit for bit, the one-process run of the same worker (same kernels: one thread per process);
so does a two-process run that resumes a one-process run interrupted after two shards; a failure on the main
process (an interrupted run of other settings) stops both processes with the reason instead of a hang.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch

from hf_lite.teacher_cache.shards import check_whole_teacher, shards_of
from hf_lite.testing import build_tiny_model
from tests.launch import launch_two

WORKER = Path(__file__).parent / "teacher_cache_ddp_worker.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _alone(out: Path, mode: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(WORKER), str(out), mode], env=ENV, capture_output=True, text=True, timeout=300
    )


def _rows(folder: Path) -> dict:
    return datasets.load_from_disk(str(folder)).to_dict()


@pytest.mark.multiprocess
@pytest.mark.integration
def test_two_processes_share_the_shards_and_give_the_one_process_result(tmp_path):
    ref = _alone(tmp_path / "one", "full")
    assert ref.returncode == 0, ref.stderr[-3000:]
    two = launch_two([str(WORKER), str(tmp_path / "two"), "full"], env=ENV, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    # interrupted alone after two shards of each, resumed by two processes
    cut = _alone(tmp_path / "resumed", "interrupt")
    assert cut.returncode == 0, cut.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "resumed" / "cache.partial").glob("shard-*")) == [
        "shard-00000",
        "shard-00001",
    ]
    resumed = launch_two([str(WORKER), str(tmp_path / "resumed"), "full"], env=ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for run in ("two", "resumed"):  # really two processes
        assert [json.loads((tmp_path / run / f"rank{r}.json").read_text())["world_size"] for r in (0, 1)] == [
            2,
            2,
        ]
    for name in ("cache", "gen"):
        expected = _rows(tmp_path / "one" / name)
        assert len(expected["input_ids"]) == {"cache": 11, "gen": 7}[name]
        for run in ("two", "resumed"):
            assert _rows(tmp_path / run / name) == expected, (run, name)
            assert not (tmp_path / run / f"{name}.partial").exists()
        meta = [
            (tmp_path / run / name / "teacher_cache.json").read_text() for run in ("one", "two", "resumed")
        ]
        assert meta[0] == meta[1] == meta[2]


@pytest.mark.multiprocess
@pytest.mark.integration
def test_a_failure_on_the_main_process_stops_both_with_the_reason(tmp_path):
    cut = _alone(tmp_path, "interrupt")
    assert cut.returncode == 0, cut.stderr[-3000:]
    before = sorted(p.name for p in (tmp_path / "cache.partial").iterdir())
    run = launch_two([str(WORKER), str(tmp_path), "mismatch"], env=ENV, timeout=300)
    assert run.returncode != 0
    assert "k: 8 there, 4 now" in run.stderr and "Resume with the same arguments" in run.stderr
    assert "process 0 of 2 failed, so this one stops too" in run.stderr  # rank 1 learns why
    assert sorted(p.name for p in (tmp_path / "cache.partial").iterdir()) == before  # nothing lost


def test_shards_go_round_robin_and_cover_each_shard_once():
    for num_shards in range(7):
        for world_size in (1, 2, 3):
            parts = [shards_of(num_shards, r, world_size) for r in range(world_size)]
            assert sorted(s for part in parts for s in part) == list(range(num_shards))


def test_a_sharded_teacher_is_refused_on_several_processes():
    teacher, _ = build_tiny_model("llama", seed=0)
    check_whole_teacher(teacher, 2)  # whole: fine
    param = next(teacher.parameters())
    param.ds_id = 0  # how DeepSpeed ZeRO-3 marks a partitioned parameter
    with pytest.raises(
        ValueError, match="is sharded by DeepSpeed ZeRO-3: each process .* needs the whole teacher"
    ):
        check_whole_teacher(teacher, 2)
    check_whole_teacher(teacher, 1)  # one process: it runs the forwards as it is
    del param.ds_id
    assert isinstance(param, torch.nn.Parameter)
