"""``skip_prompt_logits``: with labels on the completion only, neither model computes the prompt's logits.

The student's and the teacher's output layers see only the positions from the first one that predicts a label
of the batch (``logits_to_keep``), and training gives the losses and weights of computing every position
(float32 on CPU: within 1e-6), off-policy, on-policy (lmbda=1, greedy) and from a teacher cache.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from hf_lite.teacher_cache import TeacherCacheCollator, precompute_teacher_cache
from hf_lite.testing import build_tiny_model, build_tokenizer
from tests.trainers.test_distillation_onpolicy import _args, collate, prompt_data
from trainers import DistillationTrainer


@pytest.fixture(scope="module")
def tok():
    tokenizer = build_tokenizer(style="gpt")
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _positions_seen(model) -> list[int]:
    """Records how many positions the output layer computes at each call."""
    seen: list[int] = []
    model.lm_head.register_forward_hook(lambda m, args, out: seen.append(out.shape[1]))
    return seen


def _run(tmp_path, tok, skip: bool, cache: Dataset | None = None, **kw):
    student = build_tiny_model("llama", tokenizer=tok, seed=2)[0]
    teacher = (
        None if cache is not None else build_tiny_model("llama", tokenizer=tok, seed=1, hidden_size=96)[0]
    )
    seen_student = _positions_seen(student)
    seen_teacher = _positions_seen(teacher) if teacher is not None else []
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=_args(tmp_path, max_steps=3, skip_prompt_logits=skip, **kw),
        train_dataset=cache if cache is not None else prompt_data(tok),
        data_collator=TeacherCacheCollator(tok) if cache is not None else collate(tok),
        processing_class=tok,
    )
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    return trainer.model, logs, seen_student, seen_teacher


def _same_training(a, b, keys):
    model_a, logs_a, _, _ = a
    model_b, logs_b, _, _ = b
    assert len(logs_a) == len(logs_b) == 3
    for la, lb in zip(logs_a, logs_b, strict=True):
        for key in keys:
            assert la[key] == pytest.approx(lb[key], rel=1e-5, abs=1e-7), key
    for (name, p), q in zip(model_a.named_parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.integration
@pytest.mark.parametrize("lmbda", [0.0, 1.0])
def test_prompt_logits_are_skipped_with_the_same_training(tmp_path, tok, lmbda):
    extra = {
        "alpha": 1.0 if lmbda else 0.5,
        "hidden_weight": 0.5,
        "lmbda": lmbda,
        "generation_temperature": 0.0,
    }
    torch.manual_seed(0)
    skipped = _run(tmp_path / "skip", tok, True, **extra)
    torch.manual_seed(0)
    full = _run(tmp_path / "full", tok, False, **extra)
    keys = ("loss", "loss_kd", "loss_hidden", "grad_norm") + (() if lmbda else ("loss_ce",))
    _same_training(skipped, full, keys)
    # training forwards (generation's calls come before them in each step; count the last 3 * 2 calls)
    s_skip, s_full = skipped[2], full[2]
    assert sum(s_skip) < sum(s_full)
    assert skipped[3] and sum(skipped[3]) < sum(full[3])  # the teacher too


@pytest.mark.integration
def test_a_teacher_cache_is_cut_like_the_logits(tmp_path, tok):
    data = prompt_data(tok, n=12)
    labels = [[-100] * p + row[p:] for row, p in zip(data["input_ids"], data["prompt_length"], strict=True)]
    rows = Dataset.from_dict({"input_ids": data["input_ids"], "labels": labels})
    teacher = build_tiny_model("llama", tokenizer=tok, seed=1, hidden_size=96)[0]
    cache = precompute_teacher_cache(
        teacher, rows, tmp_path / "cache", tokenizer=tok, k=8, batch_size=4, temperature=2.0
    )
    torch.manual_seed(0)
    skipped = _run(tmp_path / "skip", tok, True, cache=cache, alpha=0.5)
    torch.manual_seed(0)
    full = _run(tmp_path / "full", tok, False, cache=cache, alpha=0.5)
    _same_training(skipped, full, ("loss", "loss_kd", "loss_ce", "grad_norm"))
    assert sum(skipped[2]) < sum(full[2])


@pytest.mark.parametrize("field", ["skip_prompt_logits", "cross_tokenizer"])
def test_switches_must_be_bools(tmp_path, field):
    with pytest.raises(ValueError, match=f"{field}='yes' must be True or False"):
        _args(tmp_path, **{field: "yes"})
