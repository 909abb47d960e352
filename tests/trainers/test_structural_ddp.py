"""StructuralPruningCallback with several processes: DDP shrinks in lockstep, FSDP and DeepSpeed are refused.

Multi-process: 2 processes x batch 2 under ``accelerate launch`` (gloo on CPU) and 1 process x batch 4, both with 2
accumulation steps, prune a tiny Llama (FFN, key/value groups and a block at step 2, FFN again at step 4, two more
steps after) with activation and with Taylor importance. Both ranks end with bitwise-equal weights (DDP still
averages gradients after the shrinks; without rebuilding its reducer the ranks drift ~3e-3 apart), the kept indices
and config are the one-process run's, the weights equal it within ``atol=1e-5`` (measured: 3e-7 activation, 6e-8
Taylor; gloo sums in another order than one process), and the checkpoint reloads with stock ``from_pretrained`` to
the same logits.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainerState, TrainingArguments

from hf_lite.testing import build_tiny_model
from tests.launch import launch_two
from trainers._structural_ddp import (
    DdpWatch,
    average_over_processes,
    broadcast_from_main,
    calibration_from_dataloader,
    count_tokens,
    shard_batches,
    sharded_parameter,
)
from trainers.structural_callback import StructuralPruningCallback

WORKER = Path(__file__).parent / "structural_ddp_worker.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
METHODS = ["activation", "taylor"]


def _worker():
    spec = importlib.util.spec_from_file_location("structural_ddp_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------- two processes


@pytest.mark.multiprocess
@pytest.mark.integration
def test_two_processes_shrink_like_one_process_with_the_same_global_batch(tmp_path):
    two = launch_two([str(WORKER), str(tmp_path / "two"), "2", ",".join(METHODS)], env=ENV, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    _worker().main(tmp_path / "one", 4, METHODS)  # the reference: one process, batch 4, in this process
    for method in METHODS:
        one, two_dir = tmp_path / "one" / method, tmp_path / "two" / method
        ref = json.loads((one / "rank0.json").read_text())
        ranks = [json.loads((two_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
        assert ref["world_size"] == 1 and ref["ddp_rebuilds"] == 0
        for seen in ranks:
            assert seen["world_size"] == 2 and seen["ddp_wrapped"]
            assert seen["ddp_rebuilds"] == 2  # one per stage
            assert seen["stages"] == ref["stages"]  # the same kept neurons, groups and dropped block
            assert seen["config"] == ref["config"]
        assert ref["config"]["intermediate_size"] == 64 and ref["config"]["num_hidden_layers"] == 2
        weights = [load_file(two_dir / f"rank{r}.safetensors") for r in (0, 1)]
        reference = load_file(one / "rank0.safetensors")
        assert weights[0].keys() == weights[1].keys() == reference.keys()
        for key in reference:
            # two more steps after the last shrink: equal only if DDP kept averaging the new parameters
            assert torch.equal(weights[0][key], weights[1][key]), key
            torch.testing.assert_close(weights[0][key], reference[key], rtol=0, atol=1e-5, msg=key)
        reloaded = AutoModelForCausalLM.from_pretrained(two_dir / "final").eval()
        with torch.no_grad():
            logits = reloaded(input_ids=_worker().PROBE).logits  # (batch, tokens, vocab)
        torch.testing.assert_close(
            logits, load_file(two_dir / "logits.safetensors")["logits"], rtol=0, atol=1e-6
        )


# ---------------------------------------------------------------------------------------- the pieces, one process


def test_calibration_rows_do_not_depend_on_how_the_global_batch_is_split():
    rows = [{"input_ids": torch.tensor([i, i])} for i in range(20)]
    loader = torch.utils.data.DataLoader(rows, batch_size=2)
    one = calibration_from_dataloader(loader, 4, 2, seed=3)  # one process, batch 4
    shares = [calibration_from_dataloader(loader, 2, 2, seed=3, rank=r, world_size=2) for r in (0, 1)]
    assert [b["input_ids"].shape[0] for b in one] == [4, 4]
    assert [len(s) for s in shares] == [2, 2]
    seen = sorted(int(x) for s in shares for b in s for x in b["input_ids"][:, 0])
    assert seen == sorted(int(x) for b in one for x in b["input_ids"][:, 0])
    assert shard_batches([1, 2, 3], rank=1, world_size=2) == [2]
    assert shard_batches([1], rank=1, world_size=2) == [1]  # fewer batches than processes: all of them


def test_one_process_leaves_scores_and_indices_as_they_are():
    scores = {0: torch.tensor([0.5, 2.0]), 1: torch.tensor([1.0, 0.0])}
    assert average_over_processes(scores, weight=7) is scores
    influence = torch.tensor([0.1, 0.3])
    assert average_over_processes(influence, weight=3) is influence
    assert broadcast_from_main([2, 0]) == [2, 0]
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])
    assert (
        count_tokens(
            [{"input_ids": torch.ones(2, 4), "attention_mask": mask}, {"input_ids": torch.ones(3, 2)}]
        )
        == 11
    )


def test_the_watch_finds_nothing_without_ddp_and_removes_its_hook():
    model, tok = build_tiny_model("llama", seed=0)
    watch = DdpWatch(model)
    model(input_ids=torch.tensor([[5, 6, 7]]))
    assert watch.wrapper is None
    watch.close()
    watch.close()  # idempotent
    assert watch._handle is None


def test_the_watch_finds_the_ddp_wrapper_whose_rebuilt_reducer_reduces_the_new_parameters(tmp_path):
    """On a one-process gloo group: after a shrink the rebuilt reducer's buckets hold exactly the new parameters'
    gradients, and a registered communication hook is carried over to it."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from trainers.structural_callback import shrink_ffn

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = build_tiny_model("llama", seed=0)[0]
        ddp = DistributedDataParallel(model)
        seen: list[int] = []

        def hook(state, bucket):  # records each bucket's size, reduces nothing (one process)
            seen.append(bucket.buffer().numel())
            future = torch.futures.Future()
            future.set_result(bucket.buffer())
            return future

        ddp.register_comm_hook(None, hook)
        watch = DdpWatch(model)
        ids = torch.tensor([[5, 6, 7, 8, 9]])
        ddp(input_ids=ids, labels=ids).loss.backward()
        assert watch.wrapper is ddp and watch._handle is None  # found on the first forward, hook removed
        assert sum(seen) == sum(p.numel() for p in model.parameters())
        old_reducer = ddp.reducer
        shrink_ffn(model, {0: torch.arange(8), 1: torch.arange(8)})
        model.zero_grad()
        seen.clear()
        assert watch.rebuild() is True
        assert ddp.reducer is not old_reducer
        ddp(input_ids=ids, labels=ids).loss.backward()
        assert sum(seen) == sum(p.numel() for p in model.parameters())  # the shrunk parameters, each once
        assert {id(p) for p in ddp._module_parameters} == {id(p) for p in model.parameters()}
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("env", "match"),
    [
        (
            {"ACCELERATE_USE_FSDP": "true"},
            r"FSDP-sharded model \(ACCELERATE_USE_FSDP=true from accelerate launch\)",
        ),
        ({"ACCELERATE_USE_DEEPSPEED": "true"}, r"\(ACCELERATE_USE_DEEPSPEED=true .*cannot be done safely"),
    ],
)
def test_sharded_launches_are_refused(tmp_path, monkeypatch, env, match):
    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to=[], max_steps=4)
    for key, value in env.items():  # set after TrainingArguments, which would load DeepSpeed
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=match):
        StructuralPruningCallback(num_layers=1, end_step=4).on_init_end(
            args, TrainerState(), None, model=build_tiny_model("llama")[0]
        )


def test_deepspeed_argument_is_refused(tmp_path):
    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to=[], max_steps=4)
    args.deepspeed = "ds_config.json"  # set after __post_init__, which would load DeepSpeed
    with pytest.raises(ValueError, match=r"\(deepspeed='ds_config.json'\).*Use DDP"):
        StructuralPruningCallback(num_layers=1, end_step=4).on_init_end(
            args, TrainerState(), None, model=build_tiny_model("llama")[0]
        )


def test_zero3_partitioned_parameters_are_refused(tmp_path):
    model = build_tiny_model("llama")[0]
    model.model.layers[
        0
    ].mlp.up_proj.weight.ds_id = 7  # what DeepSpeed ZeRO-3 sets on the parameters it partitions
    assert sharded_parameter(model) == (
        "model.layers.0.mlp.up_proj.weight",
        "DeepSpeed ZeRO-3 (a partitioned parameter)",
    )
    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to=[], max_steps=4)
    with pytest.raises(
        ValueError, match=r"'model.layers.0.mlp.up_proj.weight' is sharded by DeepSpeed ZeRO-3"
    ):
        StructuralPruningCallback(num_layers=1, end_step=4).on_train_begin(
            args, TrainerState(), None, model=model
        )


def test_fsdp2_shards_are_refused(tmp_path):
    """FSDP2's ``fully_shard`` on a one-process gloo group turns the parameters into DTensors."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    model = build_tiny_model("llama")[0]
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        fully_shard(model)
        args = TrainingArguments(str(tmp_path), use_cpu=True, report_to=[], max_steps=4)
        with pytest.raises(ValueError, match=r"is sharded by FSDP \(a DTensor shard\).*Train with DDP"):
            StructuralPruningCallback(num_layers=1, end_step=4).on_train_begin(
                args, TrainerState(), None, model=model
            )
    finally:
        dist.destroy_process_group()
