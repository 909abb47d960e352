"""``hf-lite demo``: an offline run on an embedded default, on CPU, in a couple of minutes.

What runs today (the pipeline grows as stages land):

1. **Pretrain** a small Llama-style model (grouped-query attention) on a generated corpus; this stands in
   for a Hub checkpoint and is saved with ``save_pretrained`` like one.
2. **QLoRA fine-tune** it on a shifted corpus: the saved checkpoint is loaded through
   :func:`hf_lite.load_model` in 4-bit NF4 with a LoRA adapter, and trained with ``transformers.Trainer``.
3. **Report** validation perplexity before and after, parameters, trainable parameters and bytes in
   memory of the full-precision and the 4-bit + adapter models, as a Markdown table.

The corpus is a small grammar (``det adj noun verb det noun``, with verbs that agree with their subject),
so both stages have something real to learn and perplexity falls measurably.

>>> from hf_lite.demo import run_demo
>>> report = run_demo("hf-lite-demo")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_NOUNS = {"cat": "sg", "dog": "sg", "bird": "sg", "child": "sg", "cats": "pl", "dogs": "pl", "birds": "pl",
          "children": "pl", "river": "sg", "trees": "pl"}  # fmt: skip
_VERBS = {"sg": ["sees", "likes", "chases", "finds"], "pl": ["see", "like", "chase", "find"]}
_ADJS = ["big", "small", "red", "old", "happy", "quiet"]


def make_corpus(n: int, *, seed: int, shift: bool = False) -> list[str]:
    """``n`` sentences of the demo grammar. ``shift=True`` draws the fine-tuning domain: adjectives
    always present, and only plural subjects (a distribution the pretrained model has rarely seen).

    >>> make_corpus(2, seed=0)  # doctest: +SKIP
    ['the red dog chases a cat .', 'a birds ...']
    """
    rng = random.Random(seed)
    nouns = list(_NOUNS)
    out = []
    for _ in range(n):
        subject = rng.choice([w for w in nouns if _NOUNS[w] == "pl"] if shift else nouns)
        obj = rng.choice(nouns)
        adj = rng.choice(_ADJS) if shift or rng.random() < 0.3 else None
        verb = rng.choice(_VERBS[_NOUNS[subject]])
        det = "the" if _NOUNS[subject] == "pl" or rng.random() < 0.5 else "a"
        words = [det, *([adj] if adj else []), subject, verb, "the", obj, "."]
        out.append(" ".join(words))
    return out


@dataclass
class DemoReport:
    """Measured results of one demo run (written to ``report.json``)."""

    base: dict[str, Any]
    qlora: dict[str, Any]
    perplexity_pretrained: float
    perplexity_base_on_shift: float
    perplexity_qlora_on_shift: float
    seconds: float

    def to_markdown(self) -> str:
        def mib(n: int) -> str:
            return f"{n / 2**20:.2f} MiB"

        rows = [
            ("model", "parameters", "trainable", "bytes in memory", "quantization", "val. perplexity (shifted)"),
            ("pretrained base (fp32)", f"{self.base['total_params']:,}", f"{self.base['trainable_params']:,}",
             mib(self.base["bytes_in_memory"]), "none", f"{self.perplexity_base_on_shift:.2f}"),
            ("QLoRA (4-bit base + LoRA)", f"{self.qlora['total_params']:,}", f"{self.qlora['trainable_params']:,}",
             mib(self.qlora["bytes_in_memory"]), self.qlora["quantization"], f"{self.perplexity_qlora_on_shift:.2f}"),
        ]  # fmt: skip
        lines = ["| " + " | ".join(r) + " |" for r in rows]
        lines.insert(1, "|" + "---|" * len(rows[0]))
        return "\n".join(lines)


def _dataset(tokenizer: Any, texts: list[str], max_length: int = 16) -> Any:
    from datasets import Dataset

    def tokenize(batch: dict[str, list[str]]) -> dict[str, Any]:
        enc = tokenizer(batch["text"], padding="max_length", truncation=True, max_length=max_length)
        enc["labels"] = [
            [tok if mask else -100 for tok, mask in zip(ids, am, strict=True)]
            for ids, am in zip(enc["input_ids"], enc["attention_mask"], strict=True)
        ]
        return enc

    return Dataset.from_dict({"text": texts}).map(tokenize, batched=True, remove_columns=["text"])


def _trainer(model: Any, out: Path, train: Any, evaluation: Any, *, steps: int, lr: float, seed: int) -> Any:
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=32, per_device_eval_batch_size=64,
        learning_rate=lr, lr_scheduler_type="cosine", warmup_steps=max(1, steps // 20), logging_steps=max(1, steps // 5),
        save_strategy="no", report_to=[], seed=seed, disable_tqdm=True,
    )  # fmt: skip
    return Trainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation)


def _perplexity(trainer: Any) -> float:
    import math

    return math.exp(trainer.evaluate()["eval_loss"])


def run_demo(output_dir: str | Path = "hf-lite-demo", *, steps: int = 300, seed: int = 0) -> DemoReport:
    """Run the demo pipeline into ``output_dir`` and return its measured report.

    Args:
        output_dir: where the pretrained base, the adapter and ``report.json``/``report.md`` go.
        steps: optimizer steps of the pretraining stage (the QLoRA stage takes a third of them).
        seed: seed of the corpus, the initialisation and the data order.
    """
    from hf_lite.loading import load_model
    from hf_lite.summary import model_summary
    from hf_lite.tiny import build_tiny_model, build_tokenizer

    if steps < 3:
        raise ValueError(f"steps={steps} is too few to train anything; use at least 3 (default 300).")
    start = time.perf_counter()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    pretrain_texts = make_corpus(4000, seed=seed)
    shift_texts = make_corpus(1200, seed=seed + 1, shift=True)
    tokenizer = build_tokenizer(pretrain_texts + shift_texts, style="gpt")
    tokenizer.pad_token = tokenizer.eos_token

    # 1. Pretrain a base model and save it like a Hub checkpoint.
    print(f"[1/3] pretraining a small Llama-style base model ({steps} steps) ...", flush=True)
    model, _ = build_tiny_model("llama", "causal-lm", tokenizer=tokenizer, seed=seed)
    base_dir = out / "base"
    pre = _trainer(model, out / "runs" / "pretrain", _dataset(tokenizer, pretrain_texts[:3600]),
                   _dataset(tokenizer, pretrain_texts[3600:]), steps=steps, lr=3e-3, seed=seed)  # fmt: skip
    pre.train()
    ppl_pretrained = _perplexity(pre)
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)

    # 2. QLoRA: the saved checkpoint, loaded 4-bit with a LoRA adapter, fine-tuned on the shifted corpus.
    shift_train, shift_eval = _dataset(tokenizer, shift_texts[:1000]), _dataset(tokenizer, shift_texts[1000:])
    base = load_model(base_dir, dtype="float32")
    base_summary = model_summary(base)
    ppl_base_shift = _perplexity(_trainer(base, out / "runs" / "eval", None, shift_eval, steps=1, lr=0.0, seed=seed))
    del base
    print("[2/3] QLoRA fine-tuning: 4-bit NF4 base + LoRA on the shifted corpus ...", flush=True)
    qlora = load_model(base_dir, quantization="4bit", peft="lora")
    ft = _trainer(qlora, out / "runs" / "qlora", shift_train, shift_eval, steps=max(3, steps // 3), lr=5e-3, seed=seed)
    ft.train()
    ppl_qlora = _perplexity(ft)
    qlora.save_pretrained(out / "adapter")  # the adapter only: a few hundred KB

    print("[3/3] report", flush=True)
    report = DemoReport(
        base=base_summary.to_dict(),
        qlora=model_summary(qlora).to_dict(),
        perplexity_pretrained=ppl_pretrained,
        perplexity_base_on_shift=ppl_base_shift,
        perplexity_qlora_on_shift=ppl_qlora,
        seconds=time.perf_counter() - start,
    )
    (out / "report.json").write_text(json.dumps(asdict(report), indent=2))
    (out / "report.md").write_text(report.to_markdown() + "\n")
    return report
