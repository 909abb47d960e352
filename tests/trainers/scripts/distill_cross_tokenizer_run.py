"""A small run across tokenizers for the multi-process test: `python distill_cross_tokenizer_run.py OUT BATCH DIR`
or under `accelerate launch`. DIR holds the student's and the teacher's tokenizers (``student``, ``teacher``) and
``texts.json`` (texts of different lengths, so the processes' micro-batches hold different numbers of aligned
spans); every process builds the same seeded teacher and student."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from datasets import Dataset
from transformers import PreTrainedTokenizerFast

from hf_lite.testing import build_tiny_model
from trainers import DistillationConfig, DistillationTrainer


def main(out: str, per_device_batch: int, folder: str) -> None:
    s_tok = PreTrainedTokenizerFast.from_pretrained(Path(folder) / "student")
    t_tok = PreTrainedTokenizerFast.from_pretrained(Path(folder) / "teacher")
    texts = json.loads((Path(folder) / "texts.json").read_text())
    teacher = build_tiny_model("llama", tokenizer=t_tok, seed=1, hidden_size=96)[0]
    student = build_tiny_model("llama", tokenizer=s_tok, seed=2)[0]
    args = DistillationConfig(
        out,
        max_steps=2,
        per_device_train_batch_size=per_device_batch,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler_type="constant",
        alpha=0.5,
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
        teacher_tokenizer=t_tok,
        args=args,
        processing_class=s_tok,
        train_dataset=Dataset.from_dict({"text": texts}),
    )
    trainer.train()
    trainer.save_model()
    if trainer.is_world_process_zero():
        print(f"world_size={args.world_size}", flush=True)
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
