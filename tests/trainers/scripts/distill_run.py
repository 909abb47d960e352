"""A small distillation run for the multi-process tests: `python distill_run.py OUT BATCH` or under
`accelerate launch`. Every process builds the same seeded teacher, student and data."""

from __future__ import annotations

import sys

import torch
from datasets import Dataset
from transformers import DataCollatorForLanguageModeling

from hf_lite.testing import build_tiny_model, build_tokenizer
from trainers import DistillationConfig, DistillationTrainer


def main(out: str, per_device_batch: int) -> None:
    tok = build_tokenizer(style="gpt")
    tok.pad_token = tok.eos_token
    teacher = build_tiny_model("llama", tokenizer=tok, seed=1, hidden_size=96)[0]
    student = build_tiny_model("llama", tokenizer=tok, seed=2)[0]
    g = torch.Generator().manual_seed(0)
    rows = [
        torch.randint(3, len(tok), (int(torch.randint(4, 13, (1,), generator=g)),), generator=g).tolist()
        for _ in range(16)
    ]
    args = DistillationConfig(
        out,
        max_steps=3,
        per_device_train_batch_size=per_device_batch,
        learning_rate=1e-2,
        optim="sgd",
        lr_scheduler_type="constant",
        alpha=0.5,
        hidden_weight=0.5,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
        logging_steps=1,
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        processing_class=tok,
        train_dataset=Dataset.from_dict({"input_ids": rows}),
        data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
    )
    trainer.train()
    trainer.save_model()
    if trainer.is_world_process_zero():
        print(f"world_size={args.world_size}", flush=True)
    # Leave together: a rank that exits while another still talks to the process group can abort.
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()  # destroys the process group


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
