"""How the chat benchmark scores a student on held-out prompts (nothing here trains).

- :func:`reverse_kl_on_own`: the student answers greedily; the teacher's per-token reverse KL
  ``KL(p_student || p_teacher)`` over the tokens it wrote (what on-policy distillation minimises where the
  student will actually be); :func:`reverse_kl_per_row` and :func:`ratio_mean` give its standard error over
  the prompts.
- :func:`completion_nll`: mean negative log-likelihood of given completions (the teacher's greedy answers):
  ``exp`` of it is the student's perplexity on them.
- :func:`answer_accuracy`: SST-2 asked as an instruction; the answer is the label word whose completion
  (word and end of turn) the model finds more likely.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def _batches(rows: list[dict[str, Any]], batch_size: int, pad_id: int):
    """Right-padded ``input_ids``, ``attention_mask``, ``labels`` batches of tokenized rows."""
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        width = max(len(r["input_ids"]) for r in chunk)
        ids = torch.full((len(chunk), width), pad_id)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), -100)
        for j, r in enumerate(chunk):
            n = len(r["input_ids"])
            ids[j, :n], mask[j, :n], labels[j, :n] = (
                torch.tensor(r["input_ids"]),
                1,
                torch.tensor(r["labels"]),
            )
        yield ids, mask, labels


def _shifted(model: Any, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor):
    """Log-probabilities at the positions that predict a labelled token, and those tokens."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    target = labels[:, 1:]
    keep = target.ne(-100)
    return F.log_softmax(logits[keep], dim=-1), target[keep]


@torch.no_grad()
def reverse_kl_per_row(
    student: Any, teacher: Any, rows: list[dict[str, Any]], batch_size: int, pad_id: int
) -> list[tuple[float, int]]:
    """``(sum of the per-token KL(p_student || p_teacher), token count)`` over the completion tokens of each row
    (the student's own answers: ``input_ids`` = prompt + answer, ``labels`` = the answer)."""
    out = []
    for ids, mask, labels in _batches(rows, batch_size, pad_id):
        log_s, _ = _shifted(student, ids, mask, labels)
        log_t, _ = _shifted(teacher, ids, mask, labels)
        kl = (log_s.exp() * (log_s - log_t)).sum(-1)  # one per labelled position, rows in order
        counts = labels[:, 1:].ne(-100).sum(1).tolist()
        out += [(float(part.sum()), n) for part, n in zip(kl.split(counts), counts, strict=True)]
    return out


def ratio_mean(parts: list[tuple[float, int]]) -> tuple[float, float]:
    """Per-token mean ``sum(s) / sum(n)`` of per-row ``(s, n)`` and its standard error over rows (the delta
    method for a ratio of means: rows are the independent draws, not tokens).

    >>> ratio_mean([(2.0, 2), (4.0, 2)])
    (1.5, 0.5)
    """
    total, count = sum(s for s, _ in parts), sum(n for _, n in parts)
    mean = total / max(count, 1)
    if len(parts) < 2 or count == 0:
        return mean, float("nan")
    residual = sum((s - mean * n) ** 2 for s, n in parts) / (len(parts) - 1)
    return mean, (residual / len(parts)) ** 0.5 / (count / len(parts))


def reverse_kl_on_own(
    student: Any, teacher: Any, rows: list[dict[str, Any]], batch_size: int, pad_id: int
) -> float:
    """Mean per-token ``KL(p_student || p_teacher)`` over the completion tokens of ``rows``."""
    return ratio_mean(reverse_kl_per_row(student, teacher, rows, batch_size, pad_id))[0]


@torch.no_grad()
def completion_nll(model: Any, rows: list[dict[str, Any]], batch_size: int, pad_id: int) -> float:
    """Mean next-token negative log-likelihood of the labelled (completion) tokens of ``rows``."""
    total, count = 0.0, 0
    for ids, mask, labels in _batches(rows, batch_size, pad_id):
        logp, target = _shifted(model, ids, mask, labels)
        total += float(-logp.gather(1, target[:, None]).sum())
        count += len(target)
    return total / max(count, 1)


@torch.no_grad()
def answer_accuracy(
    model: Any, candidates: list[list[dict[str, Any]]], labels: list[int], pad_id: int
) -> float:
    """Fraction of questions whose labelled candidate completion has the highest total log-likelihood;
    ``candidates[i]`` holds question ``i``'s tokenized rows, one per answer, in label order."""
    right = 0
    for rows, label in zip(candidates, labels, strict=True):
        scores = []
        for ids, mask, lab in _batches(rows, len(rows), pad_id):
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = lab[:, 1:]
            logp = F.log_softmax(logits, dim=-1).gather(2, target.clamp(min=0)[..., None])[..., 0]
            scores = (logp * target.ne(-100)).sum(1).tolist()
        right += int(max(range(len(scores)), key=scores.__getitem__) == label)
    return right / max(len(labels), 1)
