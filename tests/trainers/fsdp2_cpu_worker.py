"""Helper for test_fsdp2_cpu.py: FSDP2 (``fully_shard``) on CPU with gloo, under ``torchrun --nproc_per_node 2``.

accelerate refuses FSDP on CPU, so the models are sharded here as accelerate shards them (its own
``fsdp2_prepare_model`` with an FSDP2 plugin, through a stand-in accelerator) and hf-lite's sharding-aware
code runs on the ``DTensor`` parameters. Rank 0 writes what the test compares with a one-process run into
``OUT``: ``masks_<case>.safetensors`` (gathered masks), ``state_<case>/`` (the pruning checkpoint state),
``distill.json`` (the step's loss) and ``student/`` (the gathered student, saved by the trainer's ``_save``).
Not a test module itself (no ``test_`` prefix).

    torchrun --nproc_per_node 2 -m tests.trainers.fsdp2_cpu_worker OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard

from hf_lite.pruning.sharded import gather_full, is_sharded
from tests.trainers.fsdp2_cases import (
    CASES,
    PRUNING_CASES,
    distillation_batch,
    distillation_config,
    distillation_models,
    pruning_model,
    run_pruning,
)
from trainers.distillation_sharding import prepare_teacher, unsharded_class
from trainers.pruning_callback import PruningCallback


def stand_in_accelerator():
    """What ``fsdp2_prepare_model`` reads of an ``Accelerator`` under ``fsdp_version: 2`` (CPU, no mesh)."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        reshard_after_forward=True,
        state_dict_type="FULL_STATE_DICT",
        cpu_ram_efficient_loading=False,
    )
    return SimpleNamespace(
        is_fsdp2=True,
        state=SimpleNamespace(fsdp_plugin=plugin, deepspeed_plugin=None),
        is_main_process=dist.get_rank() == 0,
        device=torch.device("cpu"),
        mixed_precision="no",
        torch_device_mesh=None,
        parallelism_config=None,
    )


def shard(model, accelerator):
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    return fsdp2_prepare_model(accelerator, model)


def pruning(out: Path, accelerator, rank: int, world: int) -> None:
    for case in PRUNING_CASES:
        model = shard(pruning_model(case), accelerator)
        callback = run_pruning(model, case, rank=rank, world=world, folder=out / f"state_{case}")
        assert callback._sharded
        full = {n: gather_full(m, callback._modules[n].weight) for n, m in callback.masks.items()}
        others = [None] * world
        dist.all_gather_object(others, {n: m.tolist() for n, m in full.items()})
        assert all(o == others[0] for o in others), f"{case}: gathered masks differ across ranks"
        report = callback.report()  # counted from the sharded weights, with the gathered masks
        if rank == 0:
            save_file({n: m.contiguous() for n, m in full.items()}, str(out / f"masks_{case}.safetensors"))
            (out / f"report_{case}.json").write_text(json.dumps(report.to_dict()))
        steps = CASES[case][1]
        if steps:  # resuming on the sharded model reads the gathered masks back into the same shards
            resumed = PruningCallback(callback.config)
            args = SimpleNamespace(resume_from_checkpoint=None, output_dir=str(out / f"state_{case}"))
            resumed.on_train_begin(args, SimpleNamespace(global_step=steps, max_steps=0), None, model=model)
            assert all(torch.equal(resumed.masks[n], callback.masks[n]) for n in callback.masks)
    # A model sharded only in part: one threshold cannot mix shards and full copies.
    partial = pruning_model("global_ties")
    fully_shard(partial.model.layers[0])
    with pytest.raises(ValueError, match="targeted weights are sharded .* but .* is not"):
        PruningCallback(target_sparsity=0.5, end_step=4).on_init_end(None, None, None, model=partial)
    # FSDP1's flat parameters: refused, pointing to FSDP2.
    from torch.distributed.fsdp import FullyShardedDataParallel

    fsdp1 = FullyShardedDataParallel(
        torch.nn.Sequential(torch.nn.Linear(8, 8)), device_id=torch.device("cpu")
    )
    with pytest.raises(ValueError, match=r"wrapped by FSDP1 .* Use FSDP2: fsdp_version: 2"):
        PruningCallback(target_sparsity=0.5, end_step=4).on_init_end(None, None, None, model=fsdp1)


def distillation(out: Path, accelerator, rank: int, world: int) -> None:
    from transformers import LlamaForCausalLM

    from trainers import DistillationTrainer

    student, teacher, tokenizer = distillation_models()
    # As under accelerate: the trainer is built on the unsharded student, whose task it reads from its class
    # (fully_shard renames it FSDPLlamaForCausalLM); accelerate.prepare shards it in place in train(). The
    # teacher goes through prepare_teacher, the hook of DistillationTrainer._prepare_teacher.
    teacher = prepare_teacher(accelerator, teacher)
    assert type(teacher).__name__.startswith("FSDP") and not any(
        p.requires_grad for p in teacher.parameters()
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=distillation_config(out / "run"),
        processing_class=tokenizer,
    )
    assert trainer.task == "causal-lm"
    student = shard(student, accelerator)
    assert trainer.model is student and is_sharded(student.lm_head.weight)
    assert unsharded_class(student) is unsharded_class(teacher) is LlamaForCausalLM is not type(student)
    batch = {k: v.chunk(world)[rank] for k, v in distillation_batch().items()}  # this rank's half
    student.train()
    num_items = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
    loss = trainer.compute_loss(student, batch, num_items_in_batch=num_items)
    loss.backward()  # FSDP2 reduce-scatters the mean of the ranks' gradients
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    optimizer.step()
    total = loss.detach().clone()
    dist.all_reduce(total)  # each rank's loss is its share times the world size (undoing the gradient mean)
    state = get_model_state_dict(student, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        (out / "distill.json").write_text(json.dumps({"loss": total.item() / world}))
        trainer._save(str(out / "student"), state_dict=state)


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    accelerator = stand_in_accelerator()
    pruning(out, accelerator, rank, world)
    distillation(out, accelerator, rank, world)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
