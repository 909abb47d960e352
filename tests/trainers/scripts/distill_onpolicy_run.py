"""A small on-policy distillation run (greedy, lmbda=1) for the multi-process test:
`python distill_onpolicy_run.py OUT BATCH` or under `accelerate launch`. Every process builds the same seeded
teacher, student and prompt/completion data."""

from __future__ import annotations

import sys

import torch
from datasets import Dataset

from hf_lite.testing import build_tiny_model, build_tokenizer
from trainers import DistillationConfig, DistillationTrainer


def collate(tok):
    """Prompt/completion batches: right-padded sequences, labels on the completion, left-padded prompts."""

    def fn(features):
        n, width = len(features), max(len(f["input_ids"]) for f in features)
        pwidth = max(f["prompt_length"] for f in features)
        ids = torch.full((n, width), tok.pad_token_id)
        mask, labels = torch.zeros_like(ids), torch.full_like(ids, -100)
        pids, pmask = torch.full((n, pwidth), tok.pad_token_id), torch.zeros((n, pwidth), dtype=torch.long)
        for i, f in enumerate(features):
            row, p = torch.tensor(f["input_ids"]), f["prompt_length"]
            ids[i, : len(row)], mask[i, : len(row)], labels[i, p : len(row)] = row, 1, row[p:]
            pids[i, pwidth - p :], pmask[i, pwidth - p :] = row[:p], 1
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": labels,
            "prompt_input_ids": pids,
            "prompt_attention_mask": pmask,
        }

    return fn


def main(out: str, per_device_batch: int) -> None:
    tok = build_tokenizer(style="gpt")
    tok.pad_token = tok.eos_token
    teacher = build_tiny_model("llama", tokenizer=tok, seed=1, hidden_size=96)[0]
    student = build_tiny_model("llama", tokenizer=tok, seed=2)[0]
    # A word this student writes early after some prompts only is its end of sequence (no tokenizer is given:
    # the generation config's), so completions differ in length within and across the processes' batches.
    student.generation_config.eos_token_id = 16
    g = torch.Generator().manual_seed(0)
    rows, lengths = [], []
    for _ in range(16):
        p, c = (int(x) for x in torch.randint(2, 7, (2,), generator=g))
        rows.append([*torch.randint(2, len(tok), (p + c,), generator=g).tolist(), tok.eos_token_id])
        lengths.append(p)
    args = DistillationConfig(
        out,
        max_steps=3,
        per_device_train_batch_size=per_device_batch,
        learning_rate=1e-2,
        optim="sgd",
        lr_scheduler_type="constant",
        alpha=1.0,
        hidden_weight=0.5,
        lmbda=1.0,
        generation_temperature=0.0,
        max_new_tokens=6,
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
        train_dataset=Dataset.from_dict({"input_ids": rows, "prompt_length": lengths}),
        data_collator=collate(tok),
    )
    trainer.train()
    trainer.save_model()
    if trainer.is_world_process_zero():
        logs = [log for log in trainer.state.log_history if "loss" in log]
        print(f"world_size={args.world_size}", flush=True)
        print("generated_length=" + ",".join(str(log["generated_length"]) for log in logs), flush=True)
        print("on_policy_fraction=" + ",".join(str(log["on_policy_fraction"]) for log in logs), flush=True)
    # Leave together: a rank that exits while another still talks to the process group can abort.
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()  # destroys the process group


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
