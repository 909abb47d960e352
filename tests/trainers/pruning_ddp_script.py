"""Helper for test_pruning_callback.py: gradual pruning under `accelerate launch` with several CPU processes.

Each rank writes its final masks to ``<out>/masks_rank<r>.safetensors`` and what it saw to
``<out>/rank<r>.json``; the test compares them. Not a test module itself (no ``test_`` prefix).

    accelerate launch --multi_gpu --num_processes 2 tests/trainers/pruning_ddp_script.py OUT movement
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from datasets import Dataset
from safetensors.torch import save_file
from transformers import Trainer, TrainingArguments

from hf_lite.testing import build_tiny_model
from trainers.pruning_callback import PruningCallback


def main(out: Path, method: str) -> None:
    model, tokenizer = build_tiny_model("llama", seed=0)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, len(tokenizer), (32, 16), generator=generator)  # (rows, tokens)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    pruning = PruningCallback(method=method, target_sparsity=0.5, start_step=2, end_step=6, frequency=2)
    args = TrainingArguments(
        output_dir=str(out / "run"),
        max_steps=8,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        learning_rate=1e-3,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[pruning])
    trainer.train()
    rank = trainer.args.process_index
    save_file(
        {name: mask.contiguous().cpu() for name, mask in pruning.masks.items()},
        str(out / f"masks_rank{rank}.safetensors"),
    )
    info = {
        "rank": rank,
        "world_size": trainer.args.world_size,
        "parallel_mode": str(trainer.args.parallel_mode),
        "mask_disagreements": pruning.mask_disagreements,
        "targeted_sparsity": pruning.report().targeted_sparsity,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
