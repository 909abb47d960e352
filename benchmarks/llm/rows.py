"""The rows of the LLM benchmark: one-shot pruning (magnitude, Wanda, SparseGPT) and structural shrinking
(FFN width, key/value groups, depth, a Minitron-style mix), each then trained with plain CE or distilled.

Every builder works on a copy of the teacher and returns a one-line description for the table.
"""

from __future__ import annotations

import copy
import time
from typing import Any

#: (row, method, pattern): the one-shot rows; sparsity from the settings for "unstructured".
ONESHOT = (
    ("magnitude-50", "magnitude", "unstructured"),
    ("wanda-50", "wanda", "unstructured"),
    ("sparsegpt-50", "sparsegpt", "unstructured"),
    ("magnitude-2:4", "magnitude", "2:4"),
    ("wanda-2:4", "wanda", "2:4"),
    ("sparsegpt-2:4", "sparsegpt", "2:4"),
)

#: The structural rows, in order; each is scored untrained, then after CE training and after distillation.
STRUCTURAL = ("ffn-50", "kv-2", "depth-half", "minitron")


def oneshot_row(
    teacher: Any, method: str, pattern: str, sparsity: float, calibration: list[dict[str, Any]]
) -> tuple[Any, str]:
    """A copy of ``teacher`` pruned one-shot (no retraining) and how. Embeddings, norms and the LM head stay
    dense (the methods' default exclusions): every linear layer of the 30 blocks is pruned."""
    from hf_lite.pruning import magnitude_prune_, sparsegpt_prune_, wanda_prune_

    model = copy.deepcopy(teacher)
    amount = sparsity if pattern == "unstructured" else None
    label = f"{100 * sparsity:.0f}% unstructured" if pattern == "unstructured" else pattern
    windows = len(calibration) and sum(len(b["input_ids"]) for b in calibration)
    if method == "magnitude":
        magnitude_prune_(model, amount, pattern=pattern, scope="layer")
        return model, f"magnitude to {label} (each layer's smallest weights)"
    if method == "wanda":
        wanda_prune_(model, calibration, amount, pattern=pattern)
        return model, f"Wanda to {label} (|W|·‖X‖ per output row, {windows} calibration windows)"
    sparsegpt_prune_(model, calibration, amount, pattern=pattern)
    return model, f"SparseGPT to {label} (OBS reconstruction, {windows} calibration windows)"


def structural_row(
    teacher: Any, row: str, s: dict[str, Any], calibration: list[dict[str, Any]]
) -> tuple[Any, str]:
    """A copy of ``teacher`` shrunk for the structural ``row`` (physically smaller tensors and config) and how.
    Importance: mean |activation| of neurons and heads (Minitron's choice), block influence for depth,
    all on the calibration windows (with labels, for the methods that need them)."""
    from hf_lite.pruning import prune_attention_heads_, prune_ffn_, prune_layers_

    model = copy.deepcopy(teacher).requires_grad_(True)
    c = model.config
    n_layers, ffn, kv, q = (
        c.num_hidden_layers,
        c.intermediate_size,
        c.num_key_value_heads,
        c.num_attention_heads,
    )
    imp = s["structural_importance"]
    if row == "ffn-50":
        prune_ffn_(model, 0.5, importance=imp, calibration_batches=calibration)
        how = f"FFN width {ffn} → {model.config.intermediate_size} ({imp} importance)"
    elif row == "kv-2":
        prune_attention_heads_(
            model, num_key_value_heads=s["kv_heads"], importance=imp, calibration_batches=calibration
        )
        how = (
            f"key/value groups {kv} → {model.config.num_key_value_heads} with their query heads "
            f"({q} → {model.config.num_attention_heads}; {imp} importance)"
        )
    elif row == "depth-half":
        kept = prune_layers_(model, num_hidden_layers=n_layers // 2, calibration_batches=calibration)
        how = f"depth {n_layers} → {model.config.num_hidden_layers} blocks by block influence (kept {kept})"
    elif row == "minitron":
        kept = prune_layers_(model, num_hidden_layers=s["minitron_layers"], calibration_batches=calibration)
        prune_ffn_(model, s["minitron_ffn_keep"], importance=imp, calibration_batches=calibration)
        how = (
            f"Minitron-style: depth {n_layers} → {model.config.num_hidden_layers} by block influence (kept "
            f"{kept}), then FFN width {ffn} → {model.config.intermediate_size} ({imp} importance)"
        )
    else:
        raise ValueError(f"row={row!r} is not a structural row; choose one of {STRUCTURAL}.")
    return model, how


def train_row(
    kind: str, model: Any, teacher: Any, data: Any, s: dict[str, Any], out: Any, seed: int
) -> tuple[Any, dict[str, Any]]:
    """``model`` trained ``s['train_steps']`` steps on ``data`` with plain CE (``kind="ce"``, ``Trainer``) or
    distilled from ``teacher`` (``kind="kd"``, ``DistillationTrainer``: forward KL on the logits, alpha 1)."""
    from benchmarks.causal_lm.training import train_ce, train_kd

    settings = {
        "batch_size": s["train_batch"],
        "warmup_ratio": s["warmup_ratio"],
        "weight_decay": s["weight_decay"],
        "student_lr": s["train_lr"],
        "kd_temperature": s["kd_temperature"],
        "kd_alpha": 1.0,
    }
    start = time.perf_counter()
    if kind == "ce":
        model, log = train_ce(model, data, settings, s["train_steps"], s["train_lr"], out, seed)
    else:
        model, log = train_kd(model, teacher, data, settings, s["train_steps"], out, seed)
    log["train_s"] = round(time.perf_counter() - start, 1)
    return model, log


def correct_teacher(
    teacher: Any, train_ids: Any, s: dict[str, Any], out: Any, seed: int
) -> tuple[Any, str, float]:
    """A copy of ``teacher`` fine-tuned with plain CE on ``s['correction_steps']`` batches of windows of the
    training stream (Minitron's teacher correction), drawn apart from the students' windows; with how and the
    seconds it took."""
    from benchmarks.causal_lm.data import Windows
    from benchmarks.causal_lm.training import seed_for, train_ce

    n = s["correction_steps"] * s["train_batch"]
    windows = Windows(train_ids, s["seq_len"], n, seed_for(seed, "correction"))
    settings = {
        "batch_size": s["train_batch"],
        "warmup_ratio": s["warmup_ratio"],
        "weight_decay": s["weight_decay"],
    }
    start = time.perf_counter()
    model = copy.deepcopy(teacher).requires_grad_(True).train()
    model, _ = train_ce(model, windows, settings, s["correction_steps"], s["correction_lr"], out, seed)
    tokens = n * s["seq_len"]
    how = (
        f"teacher correction: the teacher fine-tuned with plain CE on {tokens:,} tokens of the training stream "
        f"(other windows than the students'), lr {s['correction_lr']:g}; the structural rows are pruned from "
        "it and distilled from it"
    )
    return model, how, time.perf_counter() - start
