"""A small fine-tuning run for the multi-process tests:
`python finetune_run.py OUT TASK PER_DEVICE_BATCH [GRAD_ACCUM [stock]]` or under `accelerate launch`.

TASK is `sequence-classification` (tiny BERT, some labels -100 so processes hold uneven label counts) or
`causal-lm` (tiny Llama, rows of different lengths). Every process builds the same seeded model and data; dropout
is off so one process and two see the same function. `stock` trains with `transformers.Trainer` instead of
`FinetuneTrainer`. Rank 0 prints `world_size=N` and the logged losses as `losses=[...]` (JSON)."""

from __future__ import annotations

import json
import sys

import torch
from datasets import Dataset
from transformers import DataCollatorForLanguageModeling, DataCollatorWithPadding, Trainer, TrainingArguments

from hf_lite.testing import build_tiny_model, build_tokenizer
from trainers import FinetuneTrainer

ROWS = 16


def build(task: str) -> tuple[torch.nn.Module, Dataset, object]:
    g = torch.Generator().manual_seed(0)
    if task == "sequence-classification":
        tok = build_tokenizer(style="bert")
        model = build_tiny_model(
            "bert",
            task,
            tokenizer=tok,
            num_labels=3,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )[0]
        lengths = torch.randint(4, 13, (ROWS,), generator=g).tolist()
        ids = [torch.randint(5, len(tok), (n,), generator=g).tolist() for n in lengths]
        labels = torch.randint(0, 3, (ROWS,), generator=g)
        labels[[1, 6, 7, 12]] = -100  # unlabelled rows: micro-batches of 2 hold 1 or 2 labelled rows
        data = Dataset.from_dict(
            {"input_ids": ids, "attention_mask": [[1] * n for n in lengths], "labels": labels.tolist()}
        )
        return model, data, DataCollatorWithPadding(tok)
    tok = build_tokenizer(style="gpt")
    tok.pad_token = tok.eos_token
    model = build_tiny_model("llama", task, tokenizer=tok, seed=2)[0]
    ids = [
        torch.randint(3, len(tok), (int(torch.randint(4, 13, (1,), generator=g)),), generator=g).tolist()
        for _ in range(ROWS)
    ]
    return model, Dataset.from_dict({"input_ids": ids}), DataCollatorForLanguageModeling(tok, mlm=False)


def main(out: str, task: str, per_device_batch: int, grad_accum: int = 1, which: str = "finetune") -> None:
    model, data, collator = build(task)
    args = TrainingArguments(
        out,
        max_steps=3,
        per_device_train_batch_size=per_device_batch,
        gradient_accumulation_steps=grad_accum,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler_type="constant",
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
        logging_steps=1,
    )
    cls = Trainer if which == "stock" else FinetuneTrainer
    trainer = cls(model=model, args=args, train_dataset=data, data_collator=collator)
    trainer.train()
    trainer.save_model()
    if trainer.is_world_process_zero():
        losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
        print(f"world_size={args.world_size}", flush=True)
        print(f"losses={json.dumps(losses)}", flush=True)
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:5]), *sys.argv[5:6])
