"""Helper for test_zero3_cpu.py: DeepSpeed ZeRO-3 on its CPU accelerator (gloo), ``torchrun --nproc_per_node 2``.

The distillation teacher becomes an inference-only ZeRO-3 engine (``trainers.distillation_sharding``): its
weights partitioned (``ds_id``, empty local tensors), its logits those of the unpartitioned teacher; a
``DistillationTrainer`` loss computed with it on each rank's half of the batch; ``PruningCallback`` refused on
the partitioned model. Rank 0 writes ``OUT/zero3.json``. Not a test module itself (no ``test_`` prefix).

    torchrun --nproc_per_node 2 -m tests.trainers.zero3_cpu_worker OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import deepspeed
import pytest
import torch
import torch.distributed as dist

from tests.trainers.fsdp2_cases import distillation_batch, distillation_config, distillation_models
from trainers.distillation_sharding import prepare_teacher
from trainers.pruning_callback import PruningCallback


def main(out: Path) -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    from trainers import DistillationTrainer

    student, teacher, tokenizer = distillation_models()
    batch = distillation_batch()
    with torch.no_grad():
        expected = teacher(input_ids=batch["input_ids"]).logits
    config = {  # as accelerate's plugin holds it, "auto" values included
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "zero_optimization": {
            "stage": 3,
            "reduce_bucket_size": "auto",
            "stage3_gather_16bit_weights_on_model_save": True,
        },
    }
    plugin = SimpleNamespace(zero_stage=3, deepspeed_config=config)
    accelerator = SimpleNamespace(
        is_fsdp2=False, mixed_precision="no", state=SimpleNamespace(deepspeed_plugin=plugin)
    )
    engine = prepare_teacher(accelerator, teacher)
    weight = teacher.lm_head.weight
    assert (
        hasattr(weight, "ds_id") and weight.numel() == 0 and not weight.requires_grad
    )  # partitioned, frozen
    with torch.no_grad():
        logits = engine(input_ids=batch["input_ids"]).logits
    with pytest.raises(ValueError, match="partitioned by DeepSpeed ZeRO-3"):
        PruningCallback(target_sparsity=0.5, end_step=4).on_init_end(None, None, None, model=engine)

    trainer = DistillationTrainer(
        model=student, teacher_model=engine, args=distillation_config(out / "run"), processing_class=tokenizer
    )
    half = {k: v.chunk(world)[rank] for k, v in batch.items()}
    student.train()
    num_items = trainer._get_num_items_in_batch([half], torch.device("cpu"))
    loss = trainer.compute_loss(student, half, num_items_in_batch=num_items).detach()
    dist.all_reduce(loss)
    if rank == 0:
        result = {"logits_max_diff": (logits - expected).abs().max().item(), "loss": loss.item() / world}
        (out / "zero3.json").write_text(json.dumps(result))
    dist.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
