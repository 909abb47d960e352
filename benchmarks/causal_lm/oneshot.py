"""One-shot pruning rows of the causal LM benchmark (magnitude vs. Wanda, 50% and 2:4).

Also the input-feature scales that explain Wanda's gain, and the same rows on a pretrained model fine-tuned
here as a causal LM.
"""

from __future__ import annotations

import copy
import re
import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.causal_lm.data import Windows, batches_of, validation_set
from benchmarks.causal_lm.training import seed_for, train_ce
from benchmarks.common import cached_teacher, count_parameters, minilm_path, save_teacher

#: Cache layout version of the pretrained model fine-tuned as a causal LM: bump when its recipe changes.
PRETRAINED_RECIPE = 1
#: A numbered transformer block in a module name: ``model.layers.3.`` (Llama), ``encoder.layer.3.`` (BERT).
_BLOCK = re.compile(r"\.layers?\.\d+\.")


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


def oneshot_prune_(
    model: Any,
    method: str,
    pattern: str,
    scope: str | None,
    sparsity: float,
    calib_batches: list[dict[str, Any]],
) -> str:
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
    settings = {
        "recipe": PRETRAINED_RECIPE,
        "seed": ctx.seed,
        "model": "all-MiniLM-L6-v2",
        "train_tokens": len(train_ids),
        **{k: s[k] for k in keys},
    }
    folder, cached = cached_teacher(ctx, "pretrained-clm", settings, "pretrained causal LM")
    if cached is not None:
        return folder, cached
    # is_decoder=True: causal self-attention; the LM head's transform layer is new (the checkpoint has none),
    # its decoder is tied to the pretrained word embeddings.
    model = load_model(minilm_path(), "causal-lm", is_decoder=True)
    data = Windows(
        train_ids, s["pt_seq_len"], s["pt_steps"] * s["pt_batch_size"], seed_for(ctx.seed, "pretrained")
    )
    model, log = train_ce(
        model,
        data,
        {**s, "batch_size": s["pt_batch_size"]},
        s["pt_steps"],
        s["pt_lr"],
        ctx.work / "pretrained-run",
        ctx.seed,
    )
    return save_teacher(folder, model, tokenizer, {"settings": settings, "steps": s["pt_steps"], **log})


def pretrained_oneshot(ctx: Any, s: dict[str, Any], train_text: str, val_text: str) -> dict[str, Any]:
    """One-shot magnitude vs. Wanda on a pretrained model fine-tuned as a causal LM on the same split (the
    regime of the Wanda paper: pruning pretrained weights). Every row is saved and loaded back with stock
    ``from_pretrained`` before its validation perplexity (per token of the model's WordPiece vocabulary)."""
    from hf_lite import load_model, load_tokenizer
    from hf_lite.evaluation import perplexity

    tokenizer = load_tokenizer(minilm_path())
    train_ids, val_ids = wordpiece_ids(tokenizer, train_text), wordpiece_ids(tokenizer, val_text)
    val = validation_set(val_ids, s["pt_seq_len"])
    calib = Windows(
        train_ids, s["pt_seq_len"], s["calibration_windows"], seed_for(ctx.seed, "pt-calibration")
    )
    calib_batches = batches_of(calib, s["eval_batch_size"], labels=False)
    folder, meta = get_pretrained_clm(ctx, s, tokenizer, train_ids)
    dense = load_model(folder)
    c = dense.config
    arch = (
        f"all-MiniLM-L6-v2 as a causal LM ({type(dense).__name__}, {c.num_hidden_layers} layers, hidden "
        f"{c.hidden_size}, {c.num_attention_heads} heads, FFN {c.intermediate_size}, WordPiece vocabulary "
        f"{c.vocab_size:,})"
    )
    outliers = input_feature_scales(dense, calib_batches)
    work = ctx.work / "pretrained-models"
    shutil.rmtree(work, ignore_errors=True)
    params, nonzero = count_parameters(dense)
    rows = {
        "dense": {
            "row": "dense",
            "how": f"{arch}; fine-tuned {s['pt_steps']} steps",
            "train_s": meta["train_s"],
            "perplexity": perplexity(dense, val, s["eval_batch_size"]),
            "params": params,
            "nonzero_params": nonzero,
        }
    }
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
        row = {
            "row": name,
            "how": f"fine-tuned model, {how}; no retraining",
            "train_s": prune_s,
            "perplexity": perplexity(model, val, s["eval_batch_size"]),
        }
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
        },
    }
