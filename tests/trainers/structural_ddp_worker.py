"""Helper for test_structural_ddp.py: gradual structural pruning of a tiny Llama in one or several processes.

    python tests/trainers/structural_ddp_worker.py OUT PER_DEVICE_BATCH IMPORTANCE[,IMPORTANCE...] [no-rebuild]
    accelerate launch --multi_gpu --num_processes 2 tests/trainers/structural_ddp_worker.py OUT 2 activation,taylor

Global batch: ``PER_DEVICE_BATCH`` x processes x 2 accumulation steps. Stages after optimizer steps 2 (FFN
128 -> 72, groups 2 -> 1, blocks 3 -> 2) and 4 (FFN -> 64), then two more steps on the shrunk model; one run
per importance method, in the same processes, into ``OUT/<importance>/``. Each rank writes its final weights to
``rank<r>.safetensors`` and what it saw to ``rank<r>.json`` (stages, config, reducer rebuilds); rank 0 saves
the model to ``final/`` and the logits of a fixed input to ``logits.safetensors``. ``no-rebuild`` leaves DDP's
reducer as it was (the failure the test guards against). Not a test module itself (no ``test_`` prefix).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from datasets import Dataset
from safetensors.torch import save_file
from transformers import Trainer, TrainingArguments

import trainers._structural_ddp as structural_ddp
from hf_lite.testing import build_tiny_model
from trainers.structural_callback import StructuralPruningCallback

PROBE = torch.arange(5, 17).reshape(2, 6)  # (batch, tokens): the input whose logits the test reloads


def main(out: Path, per_device_batch: int, importances: list[str], rebuild: bool = True) -> None:
    if not rebuild:
        structural_ddp.rebuild_ddp_reducer = lambda ddp: None
    for importance in importances:
        trainer = run(out / importance, per_device_batch, importance)
    trainer.accelerator.end_training()


def run(out: Path, per_device_batch: int, importance: str) -> Trainer:
    model, tokenizer = build_tiny_model("llama", num_hidden_layers=3, seed=0)
    ids = torch.randint(
        5, len(tokenizer), (48, 16), generator=torch.Generator().manual_seed(0)
    )  # (rows, tokens)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    callback = StructuralPruningCallback(
        ffn_keep_ratio=0.5,
        kv_groups_keep_ratio=0.5,
        num_layers=2,
        end_step=4,
        num_stages=2,
        importance=importance,
        taylor_steps=2,
        num_calibration_batches=2,
    )
    args = TrainingArguments(
        output_dir=str(out / "run"),
        max_steps=6,
        per_device_train_batch_size=per_device_batch,
        gradient_accumulation_steps=2,  # the rebuilt reducer also goes through DDP's no_sync
        learning_rate=1e-3,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train()
    out.mkdir(parents=True, exist_ok=True)
    rank, root = trainer.args.process_index, trainer.model
    save_file(
        {k: v.detach().contiguous() for k, v in root.state_dict().items()},
        str(out / f"rank{rank}.safetensors"),
    )
    info = {
        "world_size": trainer.args.world_size,
        "stages": callback.stages,
        "config": {
            k: v
            for k, v in root.config.to_dict().items()
            if k
            in (
                "intermediate_size",
                "num_key_value_heads",
                "num_attention_heads",
                "num_hidden_layers",
                "layer_types",
            )
        },
        "ddp_rebuilds": callback._ddp_rebuilds,
        "ddp_wrapped": isinstance(trainer.model_wrapped, torch.nn.parallel.DistributedDataParallel),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(info))
    if trainer.is_world_process_zero():
        trainer.save_model(str(out / "final"))
        with torch.no_grad():
            logits = root.eval()(input_ids=PROBE).logits  # (batch, tokens, vocab)
        save_file({"logits": logits.contiguous()}, str(out / "logits.safetensors"))
    trainer.accelerator.wait_for_everyone()
    return trainer


if __name__ == "__main__":
    main(
        Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(","), rebuild="no-rebuild" not in sys.argv[4:]
    )
