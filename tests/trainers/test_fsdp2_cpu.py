"""FSDP2 on CPU: hf-lite's sharding-aware code on ``fully_shard``-ed models, two processes with gloo.

accelerate refuses FSDP on CPU, so ``fsdp2_cpu_worker.py`` runs under ``torchrun --nproc_per_node 2`` and
shards the models with accelerate's own ``fsdp2_prepare_model``; the same runs are repeated here on one
process (``fsdp2_cases.py``) and compared: ``PruningCallback``'s masks (exact, ties included), its checkpoint
state, and one ``DistillationTrainer`` step (loss and updated student within 1e-5, the gathered student a
plain checkpoint without the teacher). Refusals of engines that cannot work are tested on one process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from hf_lite.pruning.sharded import (
    check_engine,
    is_sharded,
    local_state,
    local_tensor,
    shard_like,
    sortable_keys,
)
from tests.launch import free_port, run_group
from tests.trainers.fsdp2_cases import (
    PRUNING_CASES,
    distillation_models,
    one_process_distillation_step,
    pruning_model,
    run_pruning,
)
from trainers.distillation_sharding import deepspeed_teacher, prepare_teacher, sharding_engine
from trainers.pruning_callback import PRUNING_STATE_JSON, PRUNING_STATE_NAME, PruningCallback

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp2")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
    ]
    result = run_group([*cmd, "-m", "tests.trainers.fsdp2_cpu_worker", str(out)], timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


@pytest.mark.integration
@pytest.mark.multiprocess
@pytest.mark.parametrize("case", PRUNING_CASES)
def test_pruning_masks_on_fsdp2_shards_equal_the_one_process_masks(sharded_run, tmp_path, case):
    callback = run_pruning(pruning_model(case), case, rank=0, world=1, folder=tmp_path)
    sharded = load_file(
        sharded_run / f"masks_{case}.safetensors"
    )  # gathered from the shards, equal on both ranks
    assert set(sharded) == set(callback.masks)
    for name, mask in callback.masks.items():
        assert torch.equal(sharded[name], mask), (
            f"{case}: {name} differs in {int((sharded[name] != mask).sum())}"
        )
    assert 0.15 < 1 - sum(int(m.sum()) for m in sharded.values()) / sum(m.numel() for m in sharded.values())
    # report() counts the zeros of the sharded weights (unsharded for it): the one-process counts.
    report, expected_report = (
        json.loads((sharded_run / f"report_{case}.json").read_text()),
        callback.report().to_dict(),
    )
    for key in ("targeted_zeros", "targeted_total", "model_zeros", "model_total"):
        assert report[key] == expected_report[key], key
    # The checkpoint state is the one-process file: full masks (and scores), the same counted sparsity.
    step = next(p.name for p in (sharded_run / f"state_{case}").iterdir())
    ours, theirs = sharded_run / f"state_{case}" / step, tmp_path / step
    saved, expected = load_file(ours / PRUNING_STATE_NAME), load_file(theirs / PRUNING_STATE_NAME)
    assert set(saved) == set(expected)
    for key in saved:
        if key.startswith("masks."):
            assert torch.equal(saved[key], expected[key])
        else:  # movement scores: sums of -W * grad, gradients reduce-scattered in another order
            torch.testing.assert_close(saved[key], expected[key], rtol=1e-4, atol=1e-7)
    meta, ref = (json.loads((f / PRUNING_STATE_JSON).read_text()) for f in (ours, theirs))
    assert meta["counted_sparsity"] == ref["counted_sparsity"] and meta["layers"] == ref["layers"]


@pytest.mark.integration
@pytest.mark.multiprocess
def test_distillation_step_on_fsdp2_student_and_teacher_equals_one_process(sharded_run, tmp_path):
    from transformers import AutoModelForCausalLM

    loss, student = one_process_distillation_step(tmp_path)
    sharded_loss = json.loads((sharded_run / "distill.json").read_text())["loss"]
    assert abs(sharded_loss - loss) <= 1e-5
    saved = load_file(sharded_run / "student" / "model.safetensors")
    assert set(saved) == set(student.state_dict()) and not any("teacher" in key for key in saved)
    config = json.loads((sharded_run / "student" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    reloaded = AutoModelForCausalLM.from_pretrained(sharded_run / "student")  # stock transformers
    moved = 0
    for name, param in student.named_parameters():
        torch.testing.assert_close(reloaded.get_parameter(name), param.detach(), rtol=0, atol=1e-5)
        moved += int(not torch.equal(param.detach(), distillation_models()[0].get_parameter(name)))
    assert moved > 0  # the step changed the student


def _zero3_like(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.ds_id = 0  # what deepspeed.zero.Init leaves on every partitioned parameter
    return model


def test_pruning_callback_refuses_deepspeed_zero3_partitions():
    model = _zero3_like(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)))
    with pytest.raises(ValueError, match="partitioned by DeepSpeed ZeRO-3 .* Use FSDP2"):
        PruningCallback(target_sparsity=0.5, end_step=4).on_init_end(None, None, None, model=model)
    with pytest.raises(ValueError, match="partitioned by DeepSpeed ZeRO-3"):
        check_engine(model, {"0": model[0]})


def test_sharded_helpers_leave_plain_tensors_alone():
    w = torch.randn(3, 4)
    assert not is_sharded(w) and local_tensor(w) is w and local_state(None) is None
    state = {"step": torch.tensor(2.0), "exp_avg": w}
    assert local_state(state)["exp_avg"] is w
    scores = torch.cat([torch.randn(1000), torch.tensor([0.0, -0.0, float("inf"), -float("inf")])])
    order = scores.argsort(stable=True)
    keys = sortable_keys(scores)
    assert bool((keys[order][1:] >= keys[order][:-1]).all())  # the keys sort as the floats
    assert bool(((keys[:, None] == keys[None, :]) == (scores[:, None] == scores[None, :])).all())
    assert int(keys.min()) >= 0 and int(keys.max()) < 2**32


def test_shard_like_refuses_a_tensor_of_another_shape():
    with pytest.raises(ValueError, match=r"shape \(2, 2\) cannot be sharded like a weight of shape \(3, 2\)"):
        shard_like(torch.ones(2, 2), torch.ones(3, 2))


def test_teacher_without_sharding_engine_is_prepared_frozen_in_eval_mode():
    calls = []
    accelerator = SimpleNamespace(
        is_fsdp2=False,
        state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=2)),
        prepare_model=lambda model, evaluation_mode: calls.append(evaluation_mode) or model,
    )
    assert sharding_engine(accelerator) is None
    teacher = prepare_teacher(accelerator, nn.Linear(2, 2).train())
    assert calls == [True] and not teacher.training and not teacher.weight.requires_grad
    accelerator.state.deepspeed_plugin.zero_stage = 3
    assert sharding_engine(accelerator) == "DeepSpeed ZeRO-3"
    assert sharding_engine(SimpleNamespace(is_fsdp2=True, state=accelerator.state)) == "FSDP2"


def test_deepspeed_teacher_names_the_install_line_without_deepspeed(monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # import deepspeed raises ImportError
    with pytest.raises(ImportError, match="pip install deepspeed"):
        deepspeed_teacher(SimpleNamespace(), nn.Linear(2, 2))
