"""The closed-form gradients of hf_lite.losses.fused against autograd through the textbook formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hf_lite.losses import fused as divergences


def _xlogratio(p: torch.Tensor, log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))


def reference_rows(student, teacher, loss_type, temperature, beta):
    """Textbook per-row divergences, differentiated by autograd."""
    log_s = F.log_softmax(student / temperature, dim=-1)
    log_t = F.log_softmax(teacher / temperature, dim=-1)
    p_s, p_t = log_s.exp(), log_t.exp()
    if loss_type == "forward_kl":
        return _xlogratio(p_t, log_t, log_s).sum(-1)
    if loss_type == "reverse_kl":
        return _xlogratio(p_s, log_s, log_t).sum(-1)
    m = beta * p_t + (1 - beta) * p_s
    log_m = m.log()
    return beta * _xlogratio(p_t, log_t, log_m).sum(-1) + (1 - beta) * _xlogratio(p_s, log_s, log_m).sum(-1)


def reference_topk_rows(student, logprobs_t, indices, temperature):
    """Bucketed forward KL (k cached tokens + one tail bucket), by autograd through probabilities."""
    p_s = F.softmax(student / temperature, dim=-1)
    p_s_k = p_s.gather(-1, indices)
    p_t_k = logprobs_t.exp()
    tail_s = 1 - p_s_k.sum(-1)
    tail_t = (1 - p_t_k.sum(-1)).clamp(0, 1)
    rows = (p_t_k * (logprobs_t - p_s_k.log())).sum(-1)
    if indices.shape[-1] == student.shape[-1]:  # no tail bucket
        return rows
    return rows + torch.where(tail_t > 0, tail_t * (tail_t.log() - tail_s.log()), torch.zeros_like(tail_t))


def _pair(seed: int, n: int = 6, vocab: int = 11, spread: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    student = (torch.randn(n, vocab, generator=g, dtype=torch.float64) * spread).requires_grad_()
    teacher = torch.randn(n, vocab, generator=g, dtype=torch.float64) * spread
    return student, teacher


@pytest.mark.parametrize(
    "loss_type,beta",
    [
        ("forward_kl", 0.5),
        ("reverse_kl", 0.5),
        ("jsd", 0.5),
        ("jsd", 0.1),
        ("jsd", 0.9),
        ("jsd", 0.0),
        ("jsd", 1.0),
    ],
)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_value_and_gradient_equal_autograd_of_the_formula(loss_type, beta, temperature):
    student, teacher = _pair(0)
    weights = torch.rand(student.shape[0], dtype=torch.float64)  # a non-uniform incoming gradient
    rows = divergences.kl_rows(student, teacher, loss_type, temperature, beta).total
    (grad,) = torch.autograd.grad((rows * weights).sum(), student)
    ref_type = (
        {0.0: "forward_kl", 1.0: "reverse_kl"}.get(beta, loss_type) if loss_type == "jsd" else loss_type
    )
    ref_rows = reference_rows(student, teacher, ref_type, temperature, beta)
    (ref_grad,) = torch.autograd.grad((ref_rows * weights).sum(), student)
    torch.testing.assert_close(rows, ref_rows, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("loss_type", ["forward_kl", "reverse_kl", "jsd"])
def test_zero_probability_tokens_give_finite_exact_values(loss_type):
    student, teacher = _pair(1)
    teacher[:, :3] = float("-inf")  # tokens the teacher rules out (e.g. padding rows of its vocabulary)
    with torch.no_grad():
        student[:2, :3] = float("-inf")  # and the student too, in two rows
    rows = divergences.kl_rows(student, teacher, loss_type, 1.0, 0.5).total
    if (
        loss_type == "reverse_kl"
    ):  # KL(p_s || p_t) is infinite where p_s > 0 = p_t; finite where both rule out
        assert torch.isfinite(rows[:2]).all() and torch.isinf(rows[2:]).all()
        return
    (grad,) = torch.autograd.grad(rows.sum(), student)
    assert torch.isfinite(rows).all() and torch.isfinite(grad).all()
    ref = reference_rows(student.detach(), teacher, loss_type, 1.0, 0.5)
    torch.testing.assert_close(rows, ref)
    torch.testing.assert_close(grad[:2, :3], torch.zeros_like(grad[:2, :3]))  # no mass there on either side


def test_equal_distributions_give_zero_value_and_gradient():
    student, _ = _pair(2)
    for loss_type in divergences.FUSED_LOSS_TYPES:
        rows = divergences.kl_rows(
            student, student.detach() + 5.0, loss_type, 1.5, 0.3
        ).total  # shift: same softmax
        (grad,) = torch.autograd.grad(rows.sum(), student)
        torch.testing.assert_close(rows, torch.zeros_like(rows), atol=1e-12, rtol=0)
        torch.testing.assert_close(grad, torch.zeros_like(grad), atol=1e-12, rtol=0)


def test_no_grad_path_gives_the_same_values():
    student, teacher = _pair(3)
    for loss_type in divergences.FUSED_LOSS_TYPES:
        with_grad = divergences.kl_rows(student, teacher, loss_type, 2.0, 0.5).total
        with torch.no_grad():
            without = divergences.kl_rows(student, teacher, loss_type, 2.0, 0.5).total
        assert without.grad_fn is None
        torch.testing.assert_close(with_grad.detach(), without, rtol=0, atol=0)


@pytest.mark.parametrize("k", [1, 4, 11])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_topk_value_and_gradient_equal_autograd_of_the_formula(k, temperature):
    student, teacher = _pair(4, spread=2.0)
    logprobs_t, indices = F.log_softmax(teacher / temperature, dim=-1).topk(k, dim=-1)
    tail_t = (1 - logprobs_t.exp().sum(-1)).clamp(0, 1)
    weights = torch.rand(student.shape[0], dtype=torch.float64)
    rows = divergences.topk_kl_rows(student, logprobs_t, indices, tail_t, temperature).total
    (grad,) = torch.autograd.grad((rows * weights).sum(), student)
    ref_rows = reference_topk_rows(student, logprobs_t, indices, temperature)
    (ref_grad,) = torch.autograd.grad((ref_rows * weights).sum(), student)
    torch.testing.assert_close(rows, ref_rows, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-7, atol=1e-10)
    if k == student.shape[-1]:  # every token cached: the bucketed loss is the full forward KL
        full = divergences.kl_rows(student, teacher, "forward_kl", temperature, 0.5).total
        torch.testing.assert_close(rows, full, rtol=1e-9, atol=1e-12)


def test_topk_gradient_is_finite_when_the_student_tail_is_tiny():
    """The student puts almost all its mass on the cached tokens: log(1 - sum) would cancel to -inf."""
    student = torch.full((2, 8), -40.0, dtype=torch.float32)
    student[:, :2] = 10.0
    student.requires_grad_()
    logprobs_t = torch.log(torch.tensor([[0.6, 0.3], [0.5, 0.4]]))
    indices = torch.tensor([[0, 1], [1, 0]])
    tail_t = 1 - logprobs_t.exp().sum(-1)
    rows = divergences.topk_kl_rows(student, logprobs_t, indices, tail_t, 1.0).total
    (grad,) = torch.autograd.grad(rows.sum(), student)
    assert torch.isfinite(rows).all() and torch.isfinite(grad).all()
    # exact tail term: tail_t * (log tail_t - log tail_s) with log tail_s = logsumexp(-40 x 6) - logsumexp(all)
    log_tail_s = (-40.0 + math.log(6)) - torch.logsumexp(student.detach(), -1)
    cached = (logprobs_t.exp() * (logprobs_t - F.log_softmax(student.detach(), -1).gather(-1, indices))).sum(
        -1
    )
    torch.testing.assert_close(rows, cached + tail_t * (tail_t.log() - log_tail_s))


@pytest.mark.parametrize("loss_type", ["forward_kl", "reverse_kl", "jsd"])
def test_rows_left_out_give_zero_and_no_gradient_even_when_not_finite(loss_type):
    student, teacher = _pair(5, n=8)
    valid = torch.tensor([True, False, True, True, False, True, True, True])
    with torch.no_grad():
        student[1] = float("nan")  # e.g. logits at padding positions
        teacher[4] = float("inf")
    rows = divergences.kl_rows(student, teacher, loss_type, 1.5, 0.5, valid).total
    (grad,) = torch.autograd.grad(rows.sum(), student)
    assert rows[~valid].eq(0).all() and grad[~valid].eq(0).all()
    ref_student = student.detach()[valid].requires_grad_()
    ref = divergences.kl_rows(ref_student, teacher[valid], loss_type, 1.5, 0.5).total
    (ref_grad,) = torch.autograd.grad(ref.sum(), ref_student)
    torch.testing.assert_close(rows[valid], ref, rtol=0, atol=0)
    torch.testing.assert_close(grad[valid], ref_grad, rtol=0, atol=0)


def test_topk_loss_ignores_whatever_the_cache_holds_at_rows_left_out():
    from hf_lite.losses import teacher_topk, topk_distillation_loss

    g = torch.Generator().manual_seed(6)
    student = torch.randn(2, 5, 30, generator=g, requires_grad=True)
    logprobs, indices = teacher_topk(torch.randn(2, 5, 30, generator=g), k=4)
    labels = torch.randint(0, 30, (2, 5), generator=g)
    labels[1, 3:] = -100  # padding: the cache holds garbage there
    logprobs, indices = logprobs.clone(), indices.clone()
    logprobs[1, 3:], indices[1, 3:] = 7.0, 10_000
    loss = topk_distillation_loss(student, logprobs, indices, labels=labels)
    loss.backward()
    assert torch.isfinite(loss) and student.grad[1, 3:].eq(0).all()
    keep = labels != -100
    ref_student = student.detach()[keep].requires_grad_()
    ref = topk_distillation_loss(ref_student, logprobs[keep], indices[keep])
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(student.grad[keep], ref_student.grad)


@pytest.mark.slow  # torch.compile: up to ~30 s on 2 busy cores
def test_compiled_gives_the_same_values_and_gradients():
    student, teacher = _pair(7, n=5, vocab=33)
    student = student.detach().float().requires_grad_()
    teacher = teacher.float()
    valid = torch.tensor([True, True, False, True, True])
    for loss_type in ("forward_kl", "jsd"):
        rows = {}
        grads = {}
        for compiled in (False, True):
            rows[compiled] = divergences.kl_rows(student, teacher, loss_type, 2.0, 0.3, valid, compiled).total
            (grads[compiled],) = torch.autograd.grad(rows[compiled].sum(), student)
        torch.testing.assert_close(rows[True], rows[False], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grads[True], grads[False], rtol=1e-5, atol=1e-7)


def test_compile_failure_warns_once_and_computes_eagerly(monkeypatch, caplog):
    def broken_compile(fn, **kwargs):
        def call(*args, **kw):
            raise RuntimeError("no C++ compiler here")

        return call

    monkeypatch.setattr(divergences, "_COMPILED", {})
    monkeypatch.setattr(divergences, "_COMPILE_FAILED", [])
    monkeypatch.setattr(torch, "compile", broken_compile)
    student, teacher = _pair(8)
    with caplog.at_level("WARNING", logger="hf_lite.losses.fused"):
        first = divergences.kl_rows(student, teacher, "forward_kl", 1.0, 0.5, None, True).total
        second = divergences.kl_rows(student, teacher, "forward_kl", 1.0, 0.5, None, True).total
    eager = divergences.kl_rows(student, teacher, "forward_kl", 1.0, 0.5).total
    torch.testing.assert_close(first, eager, rtol=0, atol=0)
    torch.testing.assert_close(second, eager, rtol=0, atol=0)
    warnings = [r for r in caplog.records if "compile_loss" in r.getMessage()]
    assert len(warnings) == 1 and "no C++ compiler here" in warnings[0].getMessage()
