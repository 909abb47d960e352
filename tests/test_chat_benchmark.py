"""The chat benchmark's scores and prompts, against direct computations on a tiny model (no GGUF, no data)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks.chat.data import CONTINUE, continuation_examples, sentiment_examples
from benchmarks.chat.scoring import (
    answer_accuracy,
    completion_nll,
    ratio_mean,
    reverse_kl_on_own,
    reverse_kl_per_row,
)
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
    per_row = []
    for row in ROWS:
        ls, lt = _direct_logps(student, row), _direct_logps(teacher, row)
        row_kl, row_n = 0.0, 0
        for j, label in enumerate(row["labels"]):
            if label == -100:
                continue
            p = ls[j - 1].exp()
            row_kl += float((p * (ls[j - 1] - lt[j - 1])).sum())
            nll -= float(ls[j - 1, label])
            row_n += 1
        per_row.append((row_kl, row_n))
        kl, n = kl + row_kl, n + row_n
    got = reverse_kl_per_row(student, teacher, ROWS, 2, pad_id=0)
    assert [c for _, c in got] == [c for _, c in per_row]
    assert [s for s, _ in got] == pytest.approx([s for s, _ in per_row], rel=1e-5)
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


def test_ratio_mean_with_equal_counts_is_the_mean_of_row_means_and_its_standard_error():
    sums = [1.0, 4.0, 2.5, 7.0, 0.5]
    means = torch.tensor(sums) / 3
    mean, se = ratio_mean([(s, 3) for s in sums])
    assert mean == pytest.approx(float(means.mean()))
    assert se == pytest.approx(float(means.std(unbiased=True)) / len(sums) ** 0.5)
    # Rows with more tokens weigh more in the mean; one row has no spread.
    assert ratio_mean([(1.0, 1), (9.0, 3)])[0] == pytest.approx(2.5)
    assert ratio_mean([(1.0, 2)])[1] != ratio_mean([(1.0, 2)])[1]  # nan: no spread from one row
