"""The chat benchmark's scores and prompts, against direct computations on a tiny model (no GGUF, no data)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks.chat.data import CONTINUE, continuation_examples, sentiment_examples
from benchmarks.chat.scoring import answer_accuracy, completion_nll, reverse_kl_on_own
from hf_lite.testing import build_tiny_model


@pytest.fixture(scope="module")
def pair():
    student, _ = build_tiny_model("llama", seed=0)
    teacher, _ = build_tiny_model("llama", seed=1)
    return student.eval(), teacher.eval()


ROWS = [
    {"input_ids": [5, 6, 7, 8, 9], "labels": [-100, -100, 7, 8, 9]},
    {"input_ids": [11, 12, 13], "labels": [-100, 12, 13]},
]


def _direct_logps(model, row):
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([row["input_ids"]])).logits[0]
    return F.log_softmax(logits.float(), -1)


def test_reverse_kl_and_nll_equal_a_row_by_row_computation(pair):
    student, teacher = pair
    kl, nll, n = 0.0, 0.0, 0
    for row in ROWS:
        ls, lt = _direct_logps(student, row), _direct_logps(teacher, row)
        for j, label in enumerate(row["labels"]):
            if label == -100:
                continue
            p = ls[j - 1].exp()
            kl += float((p * (ls[j - 1] - lt[j - 1])).sum())
            nll -= float(ls[j - 1, label])
            n += 1
    # Batched and padded (pad id 0) like the benchmark: padding must not change a score.
    assert reverse_kl_on_own(student, teacher, ROWS, 2, pad_id=0) == pytest.approx(kl / n, rel=1e-5)
    assert completion_nll(student, ROWS, 2, pad_id=0) == pytest.approx(nll / n, rel=1e-5)
    assert reverse_kl_on_own(student, student, ROWS, 2, pad_id=0) == pytest.approx(0.0, abs=1e-6)


def test_answer_accuracy_picks_the_likelier_completion(pair):
    student, _ = pair
    candidates = [[{"input_ids": [5, 6, a], "labels": [-100, -100, a]} for a in (20, 30)]]
    lp = _direct_logps(student, {"input_ids": [5, 6]})[1]
    better = 0 if lp[20] > lp[30] else 1
    assert answer_accuracy(student, candidates, [better], pad_id=0) == 1.0
    assert answer_accuracy(student, candidates, [1 - better], pad_id=0) == 0.0


def test_prompts_are_conversations_whose_answer_follows_the_passage():
    text = "\n".join(f"line {i}" for i in range(40))
    rows = continuation_examples(text, 5, seed=3, lines=4, answer_lines=2)
    for r in rows:
        passage = r["prompt"][0]["content"].removeprefix(CONTINUE.format(""))
        last = int(passage.splitlines()[-1].split()[1])
        assert r["completion"] == [{"role": "assistant", "content": f"line {last + 1}\nline {last + 2}"}]
    pairs = [("good film", 1), ("bad film", 0), ("fine", 1)]
    q = sentiment_examples(pairs, 3, seed=0)
    assert sorted((r["prompt"][0]["content"].split("Review: ")[1], r["label"]) for r in q) == sorted(pairs)
    assert all(r["completion"][0]["content"] == ("positive" if r["label"] else "negative") for r in q)
