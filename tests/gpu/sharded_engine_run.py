"""Helper for test_sharded_engines.py: a short DistillationTrainer run (optionally with PruningCallback) under
whatever ``accelerate launch`` config starts it; rank 0 writes ``OUT/result.json`` and the student into
``OUT/student`` (``save_model``). Not a test module itself (no ``test_`` prefix).

    accelerate launch --config_file examples/accelerate/fsdp.yaml --num_processes 1 \\
        tests/gpu/sharded_engine_run.py OUT --prune
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from datasets import Dataset

from hf_lite.pruning.sharded import is_sharded
from hf_lite.testing import build_tiny_model, build_tokenizer
from trainers import DistillationConfig, DistillationTrainer
from trainers.distillation_sharding import sharding_engine
from trainers.pruning_callback import PruningCallback


def main(out: Path, prune: bool) -> None:
    tokenizer = build_tokenizer(style="gpt")
    tokenizer.pad_token = tokenizer.eos_token
    teacher = build_tiny_model("llama", tokenizer=tokenizer, seed=1)[0]
    student = build_tiny_model("llama", tokenizer=tokenizer, seed=2)[0]
    ids = torch.randint(3, len(tokenizer), (32, 16), generator=torch.Generator().manual_seed(0))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    args = DistillationConfig(
        output_dir=str(out / "run"),
        max_steps=6,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=0,
        alpha=0.5,
        temperature=2.0,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    pruning = PruningCallback(target_sparsity=0.5, start_step=0, end_step=4, frequency=2) if prune else None
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=[pruning] if pruning else None,
    )
    trainer.train()
    trainer.save_model(str(out / "student"))
    teacher = trainer.teachers[0]
    if trainer.is_world_process_zero():
        result = {
            "engine": sharding_engine(trainer.accelerator),
            "losses": [log["loss"] for log in trainer.state.log_history if "loss" in log],
            "teacher_sharded": any(is_sharded(p) or hasattr(p, "ds_id") for p in teacher.parameters()),
            "teacher_trainable": any(p.requires_grad for p in teacher.parameters()),
            "mask_sparsity": None
            if pruning is None
            else 1
            - sum(int(m.sum()) for m in pruning.masks.values())
            / sum(m.numel() for m in pruning.masks.values()),
        }
        (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]), "--prune" in sys.argv[2:])
