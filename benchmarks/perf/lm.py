"""Tiny Llama models and tinyshakespeare data for the perf races: blocks, datasets, the cached teacher."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

from benchmarks.common import cached_teacher, cpu_training_args, read_tinyshakespeare, save_teacher

#: Bump when the teacher recipe changes so that old cached teachers are not reused.
TEACHER_RECIPE = 1


def llama_kwargs(hidden: int, layers: int) -> dict[str, Any]:
    """Config overrides of hf-lite's tiny Llama at another width/depth (heads of 16 or 32, GQA 2:1, FFN 2x)."""
    head_dim = 16 if hidden <= 64 else 32
    heads = max(1, hidden // head_dim)
    return {
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // 2),
        "head_dim": head_dim,
    }


def read_text(data: Path) -> tuple[str, str]:
    """Training and validation text of tinyshakespeare."""
    text = read_tinyshakespeare(data)
    cut = int(len(text) * 0.9)  # the usual split: last 10% of the characters for validation
    return text[:cut], text[cut:]


def to_blocks(tokenizer: Any, text: str, seq_len: int) -> list[list[int]]:
    """Non-overlapping blocks of ``seq_len`` tokens of ``text`` (tokenized line by line, lines joined)."""
    ids: list[int] = []
    for line_ids in tokenizer([ln for ln in text.splitlines() if ln.strip()])["input_ids"]:
        ids.extend(line_ids)
    return [ids[i : i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)]


def lm_dataset(blocks: list[list[int]]) -> Any:
    from datasets import Dataset

    return Dataset.from_dict(
        {"input_ids": blocks, "attention_mask": [[1] * len(b) for b in blocks], "labels": blocks}
    )


def evaluate_lm(model: Any, blocks: Any, batch_size: int = 32) -> dict[str, float]:
    """Next-token top-1 accuracy and perplexity over every position of the validation blocks."""
    import torch
    import torch.nn.functional as F

    model.eval()
    correct = total = 0
    nll = 0.0
    with torch.inference_mode():
        for i in range(0, len(blocks), batch_size):
            ids = blocks[i : i + batch_size]  # (b, L)
            logits = model(input_ids=ids).logits[:, :-1].float()  # (b, L-1, V)
            target = ids[:, 1:]
            nll += float(
                F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum")
            )
            correct += int((logits.argmax(-1) == target).sum())
            total += target.numel()
    return {"accuracy": correct / total, "perplexity": math.exp(nll / total)}


def training_args(
    cls: Any, out: Path, *, steps: int, lr: float, batch_size: int, seed: int, **extra: Any
) -> Any:
    return cpu_training_args(
        cls,
        out,
        batch_size=batch_size,
        steps=steps,
        lr=lr,
        seed=seed,
        warmup_steps=0.05,
        lr_scheduler_type="linear",
        weight_decay=0.01,
        logging_strategy="no",
        train_sampling_strategy="sequential",  # every trainer of a race reads the same batches in the same order
        **extra,
    )


def teacher_settings(s: dict[str, Any], seed: int) -> dict[str, Any]:
    keys = (
        "vocab_size",
        "seq_len",
        "batch_size",
        "teacher_layers",
        "teacher_hidden",
        "teacher_steps",
        "teacher_lr",
    )
    return {"recipe": TEACHER_RECIPE, "seed": seed, **{k: s[k] for k in keys}}


def get_teacher(ctx: Any, s: dict[str, Any], train_text: str) -> tuple[Path, dict[str, Any]]:
    """The trained teacher's folder (with its tokenizer), trained now or found in the cache."""
    from transformers import Trainer, TrainingArguments, default_data_collator

    from hf_lite.testing import build_tiny_model, build_tokenizer

    settings = teacher_settings(s, ctx.seed)
    folder, cached = cached_teacher(ctx, "teacher", settings)
    if cached is not None:
        return folder, cached
    tokenizer = build_tokenizer([train_text], max_vocab=s["vocab_size"])
    blocks = to_blocks(tokenizer, train_text, s["seq_len"])
    random.Random(ctx.seed).shuffle(blocks)
    model, _ = build_tiny_model(
        "llama", tokenizer=tokenizer, seed=ctx.seed, **llama_kwargs(s["teacher_hidden"], s["teacher_layers"])
    )
    args = training_args(
        TrainingArguments,
        ctx.work / "teacher-run",
        steps=s["teacher_steps"],
        lr=s["teacher_lr"],
        batch_size=s["batch_size"],
        seed=ctx.seed,
    )
    start = time.perf_counter()
    Trainer(
        model=model, args=args, train_dataset=lm_dataset(blocks), data_collator=default_data_collator
    ).train()
    meta = {
        "settings": settings,
        "train_s": round(time.perf_counter() - start, 1),
        "train_blocks": len(blocks),
    }
    return save_teacher(folder, model, tokenizer, meta)  # the cache entry is complete or absent
