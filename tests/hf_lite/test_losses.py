"""Unit tests of hf_lite.losses: each loss against a reference written another way, its properties
(non-negativity, symmetry, bounds), masking, gradient accumulation, precision, chunking and every error."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from hf_lite.losses import (
    LOSS_TYPES,
    attention_loss,
    chunked_distillation_loss,
    chunked_distillation_loss_from_hidden,
    combine_losses,
    distillation_loss,
    forward_kl_loss,
    generalized_jsd_loss,
    hidden_state_loss,
    mse_logits_loss,
    reverse_kl_loss,
    shift_for_causal_lm,
    teacher_topk,
    topk_distillation_loss,
    total_variation_loss,
)

V = 13  # vocabulary of the small tests


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32, scale: float = 2.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=generator) * scale).to(dtype)


def random_labels(batch: int, seq: int, *, seed: int, masked: float = 0.3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, V, (batch, seq), generator=generator)
    labels[torch.rand(batch, seq, generator=generator) < masked] = -100
    labels[0, 0] = 5  # at least one valid position
    return labels


# ---------------------------------------------------------------------------------------------
# references, written independently of the module (torch's kl_div, TRL's formulation, explicit loops)


def ref_rows(student: torch.Tensor, teacher: torch.Tensor, loss_type: str, temperature: float, beta: float):
    """Mean over rows of (N, V) fp64 inputs, times T**2 for the probability divergences."""
    s, t = student.double() / temperature, teacher.double() / temperature
    if loss_type == "forward_kl":  # kl_div(input=log q, target=p) = KL(p || q), 'batchmean' = sum / rows
        return F.kl_div(F.log_softmax(s, -1), F.softmax(t, -1), reduction="batchmean") * temperature**2
    if loss_type == "reverse_kl":
        return (
            F.kl_div(F.log_softmax(t, -1), F.log_softmax(s, -1), reduction="batchmean", log_target=True)
            * temperature**2
        )
    if loss_type == "jsd":  # TRL's generalized_jsd_loss, stack + logsumexp
        log_s, log_t = F.log_softmax(s, -1), F.log_softmax(t, -1)
        b = torch.tensor(beta, dtype=torch.float64)
        log_m = torch.logsumexp(torch.stack([log_s + torch.log(1 - b), log_t + torch.log(b)]), dim=0)
        kl_t = F.kl_div(log_m, log_t, reduction="none", log_target=True).sum(-1)
        kl_s = F.kl_div(log_m, log_s, reduction="none", log_target=True).sum(-1)
        return (b * kl_t + (1 - b) * kl_s).mean() * temperature**2
    if loss_type == "tv":
        rows = [
            sum(abs(a - c) for a, c in zip(ps.tolist(), pt.tolist(), strict=True)) / 2
            for ps, pt in zip(F.softmax(s, -1), F.softmax(t, -1), strict=True)
        ]
        return torch.tensor(rows, dtype=torch.float64).mean() * temperature**2
    if loss_type == "mse":
        return F.mse_loss(student.double(), teacher.double())
    raise AssertionError(loss_type)


LOSS_FUNCTIONS = {
    "forward_kl": forward_kl_loss,
    "reverse_kl": reverse_kl_loss,
    "jsd": generalized_jsd_loss,
    "tv": total_variation_loss,
    "mse": mse_logits_loss,
}


def call(loss_type: str, student, teacher, **kwargs):
    """The individual function for ``loss_type`` (mse takes no temperature, only jsd takes beta)."""
    if loss_type == "mse":
        kwargs.pop("temperature", None)
    if loss_type != "jsd":
        kwargs.pop("beta", None)
    return LOSS_FUNCTIONS[loss_type](student, teacher, **kwargs)


# ---------------------------------------------------------------------------------------------
# token-level divergences: values


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_matches_reference_2d(loss_type, temperature):
    student, teacher = randn(6, V, seed=0), randn(6, V, seed=1)
    expected = ref_rows(student, teacher, loss_type, temperature, beta=0.3)
    got = distillation_loss(student, teacher, loss_type=loss_type, temperature=temperature, beta=0.3)
    torch.testing.assert_close(got, expected.float())
    # the individual function is the same loss
    torch.testing.assert_close(call(loss_type, student, teacher, temperature=temperature, beta=0.3), got)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_labels_select_positions_3d(loss_type):
    student, teacher = randn(3, 5, V, seed=2), randn(3, 5, V, seed=3)
    labels = random_labels(3, 5, seed=4)
    keep = labels != -100
    expected = ref_rows(student[keep], teacher[keep], loss_type, 2.0, beta=0.7)
    got = distillation_loss(student, teacher, loss_type=loss_type, temperature=2.0, beta=0.7, labels=labels)
    torch.testing.assert_close(got, expected.float())


def test_jsd_endpoints_are_the_kls_and_swap_symmetry():
    student, teacher = randn(4, V, seed=5), randn(4, V, seed=6)
    jsd = lambda s, t, beta: generalized_jsd_loss(s, t, beta=beta)  # noqa: E731
    torch.testing.assert_close(jsd(student, teacher, 0.0), forward_kl_loss(student, teacher))
    torch.testing.assert_close(jsd(student, teacher, 1.0), reverse_kl_loss(student, teacher))
    # TRL's convention: the ends are not limits of JSD_beta (which tends to 0) but of JSD_beta / beta and
    # JSD_beta / (1 - beta); checked in fp64, which the losses keep
    s64, t64 = student.double(), teacher.double()
    torch.testing.assert_close(jsd(s64, t64, 1e-6) / 1e-6, forward_kl_loss(s64, t64), rtol=1e-4, atol=0)
    torch.testing.assert_close(jsd(s64, t64, 1 - 1e-6) / 1e-6, reverse_kl_loss(s64, t64), rtol=1e-4, atol=0)
    assert jsd(student, teacher, 1e-3) < 0.01 * forward_kl_loss(student, teacher)
    # JSD_beta(p_t, p_s) == JSD_{1-beta} with the roles swapped; at beta=0.5 it is symmetric
    torch.testing.assert_close(jsd(student, teacher, 0.3), jsd(teacher, student, 0.7))
    torch.testing.assert_close(jsd(student, teacher, 0.5), jsd(teacher, student, 0.5))
    assert not torch.allclose(forward_kl_loss(student, teacher), forward_kl_loss(teacher, student))


@pytest.mark.parametrize("loss_type", ["forward_kl", "reverse_kl", "jsd", "tv"])
def test_divergence_properties(loss_type):
    student, teacher = randn(32, V, seed=7, scale=4.0), randn(32, V, seed=8, scale=4.0)
    per_token = torch.stack(
        [
            distillation_loss(s[None], t[None], loss_type=loss_type)
            for s, t in zip(student, teacher, strict=True)
        ]
    )
    assert (per_token > 0).all()
    assert distillation_loss(student, student.clone(), loss_type=loss_type).abs() < 1e-6
    if loss_type == "jsd":
        assert (per_token <= math.log(2) + 1e-6).all()
    if loss_type == "tv":
        assert (per_token <= 1).all()
        disjoint = torch.tensor([[30.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 30.0]])
        torch.testing.assert_close(total_variation_loss(*disjoint), torch.tensor(1.0))
        torch.testing.assert_close(generalized_jsd_loss(*disjoint), torch.tensor(math.log(2)))


def test_kl_is_exactly_zero_for_equal_inputs():
    logits = randn(5, V, seed=9)
    assert forward_kl_loss(logits, logits.clone()).item() == 0.0
    assert reverse_kl_loss(logits, logits.clone()).item() == 0.0


def test_teacher_zero_probabilities_contribute_zero():
    # a teacher that rules out tokens (-inf logits): 0 * log 0 terms must not become NaN, in value or gradient
    student = randn(3, V, seed=10).requires_grad_()
    teacher = randn(3, V, seed=11)
    teacher[:, :4] = float("-inf")
    loss = forward_kl_loss(student, teacher, temperature=2.0)
    loss.backward()
    expected = ref_rows(student.detach(), teacher, "forward_kl", 2.0, 0.5)
    torch.testing.assert_close(loss, expected.float())
    assert torch.isfinite(student.grad).all()


def test_masked_positions_never_enter_the_maths():
    student, teacher = randn(2, 6, V, seed=12), randn(2, 6, V, seed=13)
    attention_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    student[0, 4:] = float("nan")  # padding may hold anything
    teacher[0, 4:] = float("inf")
    student.requires_grad_()
    keep = attention_mask.bool()
    for loss_type in LOSS_TYPES:
        got = distillation_loss(student, teacher, loss_type=loss_type, mask=attention_mask)
        expected = distillation_loss(student[keep], teacher[keep], loss_type=loss_type)
        torch.testing.assert_close(got, expected)
        (grad,) = torch.autograd.grad(got, student)
        assert torch.isfinite(grad).all() and (grad[0, 4:] == 0).all()


def test_mask_and_labels_combine():
    student, teacher = randn(2, 4, V, seed=14), randn(2, 4, V, seed=15)
    labels = torch.tensor([[1, -100, 2, 3], [4, 5, -100, 6]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    keep = mask & (labels != -100)
    both = forward_kl_loss(student, teacher, mask=mask, labels=labels)
    torch.testing.assert_close(both, forward_kl_loss(student[keep], teacher[keep]))
    assert not torch.allclose(both, forward_kl_loss(student, teacher, labels=labels))


# ---------------------------------------------------------------------------------------------
# normalization, gradient accumulation, empty batches


def loss_on(name: str, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, **kwargs):
    """One entry point per loss family, for the accumulation and empty-batch tests."""
    if name in LOSS_TYPES:
        return distillation_loss(student, teacher, loss_type=name, temperature=2.0, labels=labels, **kwargs)
    if name == "chunked":
        return chunked_distillation_loss(
            student, teacher, loss_type="jsd", temperature=2.0, labels=labels, chunk_size=3, **kwargs
        )
    if name == "topk":
        logprobs, indices = teacher_topk(teacher, 4, temperature=2.0)
        return topk_distillation_loss(student, logprobs, indices, temperature=2.0, labels=labels, **kwargs)
    if name == "hidden_mse":
        return hidden_state_loss(student, teacher, mask=labels != -100, **kwargs)
    if name == "hidden_cosine":
        return hidden_state_loss(student, teacher, kind="cosine", mask=labels != -100, **kwargs)
    raise AssertionError(name)


FAMILIES = [*LOSS_TYPES, "chunked", "topk", "hidden_mse", "hidden_cosine"]


@pytest.mark.parametrize("name", FAMILIES)
def test_gradient_accumulation_is_exact(name):
    student, teacher = randn(4, 5, V, seed=16).requires_grad_(), randn(4, 5, V, seed=17)
    labels = random_labels(4, 5, seed=18)
    labels[3, :] = -100  # micro-batches with different numbers of valid tokens
    total = int((labels != -100).sum())
    full = loss_on(name, student, teacher, labels)
    (full_grad,) = torch.autograd.grad(full, student)

    micro = [
        loss_on(name, student[i:j], teacher[i:j], labels[i:j], num_items_in_batch=total)
        for i, j in [(0, 1), (1, 4)]
    ]
    torch.testing.assert_close(sum(micro), full)
    (micro_grad,) = torch.autograd.grad(sum(micro), student)
    torch.testing.assert_close(micro_grad, full_grad)
    # the plain per-batch mean is not what accumulation needs: the test above is not trivially true
    unnormalized = (
        sum(loss_on(name, student[i:j], teacher[i:j], labels[i:j]) for i, j in [(0, 1), (1, 4)]) / 2
    )
    assert not torch.allclose(unnormalized, full)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_num_items_in_batch_divides_the_sum(as_tensor):
    student, teacher = randn(3, 4, V, seed=19), randn(3, 4, V, seed=20)
    labels = random_labels(3, 4, seed=21)
    n_valid = int((labels != -100).sum())
    num_items = (
        torch.tensor([[40]]) if as_tensor else 40
    )  # one element, any shape (DataParallel passes (1, 1))
    got = reverse_kl_loss(student, teacher, labels=labels, num_items_in_batch=num_items)
    torch.testing.assert_close(got, reverse_kl_loss(student, teacher, labels=labels) * n_valid / 40)


def test_attention_gradient_accumulation_is_exact():
    student = torch.softmax(randn(4, 2, 5, 5, seed=22), -1).requires_grad_()
    teacher = torch.softmax(randn(4, 2, 5, 5, seed=23), -1)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
    total = int(mask.sum())
    for kind in ("kl", "mse"):
        full = attention_loss(student, teacher, kind=kind, mask=mask)
        micro = sum(
            attention_loss(student[i:j], teacher[i:j], kind=kind, mask=mask[i:j], num_items_in_batch=total)
            for i, j in [(0, 1), (1, 4)]
        )
        torch.testing.assert_close(micro, full)
        torch.testing.assert_close(
            torch.autograd.grad(micro, student)[0], torch.autograd.grad(full, student)[0]
        )


@pytest.mark.parametrize("name", FAMILIES)
def test_all_masked_batch_is_zero_with_finite_gradient(name):
    student, teacher = randn(2, 3, V, seed=24).requires_grad_(), randn(2, 3, V, seed=25)
    labels = torch.full((2, 3), -100)
    for num_items in (None, 0, 7):
        loss = loss_on(name, student, teacher, labels, num_items_in_batch=num_items)
        assert loss.item() == 0.0 and not loss.isnan()
        (grad,) = torch.autograd.grad(loss, student)
        assert torch.equal(grad, torch.zeros_like(grad))


def test_all_masked_attention_and_hidden_variant_are_zero():
    student = torch.softmax(randn(2, 2, 3, 3, seed=26), -1).requires_grad_()
    loss = attention_loss(student, student.detach() * 0.5, mask=torch.zeros(2, 3, dtype=torch.long))
    assert loss.item() == 0.0
    assert torch.equal(torch.autograd.grad(loss, student)[0], torch.zeros_like(student))
    hidden, head = randn(2, 3, 4, seed=27).requires_grad_(), randn(V, 4, seed=28).requires_grad_()
    loss = chunked_distillation_loss_from_hidden(
        hidden, head, randn(2, 3, 4, seed=29), randn(V, 4, seed=30), labels=torch.full((2, 3), -100)
    )
    assert loss.item() == 0.0
    grads = torch.autograd.grad(loss, [hidden, head])
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


# ---------------------------------------------------------------------------------------------
# precision and temperature


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_half_precision_inputs_are_computed_in_fp32(loss_type):
    student, teacher = (
        randn(16, 64, seed=31, dtype=torch.bfloat16),
        randn(16, 64, seed=32, dtype=torch.bfloat16),
    )
    student.requires_grad_()
    got = distillation_loss(student, teacher, loss_type=loss_type, temperature=2.0)
    assert got.dtype == torch.float32
    # fp32 maths on the very same (bf16-representable) values
    expected = distillation_loss(
        student.detach().float(), teacher.float(), loss_type=loss_type, temperature=2.0
    )
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    (grad,) = torch.autograd.grad(got, student)
    assert grad.dtype == torch.bfloat16 and torch.isfinite(grad).all()


def test_bf16_maths_would_be_visibly_worse():
    # guards the test above: had the loss been computed in bf16, its tolerance would have caught it
    student, teacher = (
        randn(16, 64, seed=31, dtype=torch.bfloat16),
        randn(16, 64, seed=32, dtype=torch.bfloat16),
    )
    in_bf16 = F.softmax(teacher / 2, -1) * (F.log_softmax(teacher / 2, -1) - F.log_softmax(student / 2, -1))
    in_bf16 = in_bf16.sum(-1).mean() * 4
    expected = forward_kl_loss(student, teacher, temperature=2.0)
    assert not torch.allclose(in_bf16.float(), expected, rtol=1e-6, atol=1e-7)


def test_temperature_squared_scaling():
    student, teacher = randn(5, V, seed=33), randn(5, V, seed=34)
    p_t = F.softmax(teacher.double() / 3, -1)
    by_hand = (p_t * (p_t.log() - F.log_softmax(student.double() / 3, -1))).sum(-1).mean()
    torch.testing.assert_close(forward_kl_loss(student, teacher, temperature=3.0), (9 * by_hand).float())


def test_temperature_squared_keeps_gradient_magnitude():
    # Hinton et al.: d(T^2 KL)/dz_s = T (p_s - p_t) -> ((z_s - z_t) - mean) / V as T grows, independent of T
    student, teacher = randn(4, V, seed=35).requires_grad_(), randn(4, V, seed=36)
    grads = {}
    for temperature in (10.0, 40.0):
        loss = forward_kl_loss(student, teacher, temperature=temperature)
        grads[temperature] = torch.autograd.grad(loss, student)[0]
    diff = student.detach() - teacher
    limit = (diff - diff.mean(-1, keepdim=True)) / V / 4  # / 4 tokens
    torch.testing.assert_close(grads[40.0], limit, rtol=0.05, atol=2e-3)
    ratio = grads[10.0].norm() / grads[40.0].norm()
    assert 0.8 < ratio < 1.25  # without the T^2 factor it would be 16


def test_mse_ignores_temperature():
    student, teacher = randn(3, V, seed=37), randn(3, V, seed=38)
    torch.testing.assert_close(
        distillation_loss(student, teacher, loss_type="mse", temperature=4.0), F.mse_loss(student, teacher)
    )


# ---------------------------------------------------------------------------------------------
# chunked losses


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 64])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_chunked_equals_plain(loss_type, chunk_size):
    # shifted views (not viewable as (tokens, vocab)), labels with padding, T != 1
    student_full, teacher_full = randn(3, 8, V, seed=39).requires_grad_(), randn(3, 8, V, seed=40)
    labels = random_labels(3, 8, seed=41)
    student, shifted = shift_for_causal_lm(student_full, labels)
    teacher, _ = shift_for_causal_lm(teacher_full, labels)
    kwargs = {"loss_type": loss_type, "temperature": 1.5, "beta": 0.4, "labels": shifted}
    plain = distillation_loss(student, teacher, **kwargs)
    chunked = chunked_distillation_loss(student, teacher, chunk_size=chunk_size, **kwargs)
    torch.testing.assert_close(chunked, plain)
    torch.testing.assert_close(
        torch.autograd.grad(chunked, student_full)[0], torch.autograd.grad(plain, student_full)[0]
    )


def test_chunked_2d_mask_bf16_and_teacher_gradient():
    student = randn(10, V, seed=42, dtype=torch.bfloat16).requires_grad_()
    teacher = randn(10, V, seed=43, dtype=torch.bfloat16).requires_grad_()  # a teacher being trained too
    mask = torch.tensor([1, 1, 0, 1, 1, 1, 0, 0, 1, 1])
    plain = reverse_kl_loss(student, teacher, mask=mask, num_items_in_batch=9)
    chunked = chunked_distillation_loss(
        student, teacher, loss_type="reverse_kl", mask=mask, num_items_in_batch=9, chunk_size=3
    )
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, plain)
    for a, b in zip(
        torch.autograd.grad(chunked, [student, teacher]),
        torch.autograd.grad(plain, [student, teacher]),
        strict=True,
    ):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a, b)


def test_chunked_backward_scales_by_incoming_gradient_and_runs_once():
    student, teacher = randn(2, 5, V, seed=44).requires_grad_(), randn(2, 5, V, seed=45)
    plain = 3.0 * forward_kl_loss(student, teacher)
    chunked = 3.0 * chunked_distillation_loss(student, teacher, chunk_size=2)
    chunked.backward(retain_graph=True)
    torch.testing.assert_close(student.grad, torch.autograd.grad(plain, student)[0])
    with pytest.raises(RuntimeError, match="second backward"):
        chunked.backward()


def test_chunked_without_gradients_computes_none(monkeypatch):
    student, teacher = randn(2, 5, V, seed=46), randn(2, 5, V, seed=47)
    hidden, head = randn(2, 5, 4, seed=46), randn(V, 4, seed=47).requires_grad_()  # a trainable head, in eval
    calls = []
    grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(1) or grad(*a, **k))
    with torch.no_grad():
        chunked = chunked_distillation_loss(student, teacher, loss_type="tv", chunk_size=3)
        from_hidden = chunked_distillation_loss_from_hidden(
            hidden, head, hidden, head.detach() * 2, chunk_size=3
        )
        expected = forward_kl_loss(hidden @ head.T, hidden @ head.T * 2)
    torch.testing.assert_close(chunked, total_variation_loss(student, teacher))
    torch.testing.assert_close(from_hidden, expected)
    assert calls == []
    chunked_distillation_loss_from_hidden(hidden, head, hidden, head.detach() * 2, chunk_size=3)
    assert len(calls) == 4  # the probe works: with grad enabled, one gradient per chunk of 3 tokens


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor (number of elements) that any operation outputs, forward and backward."""

    def __init__(self, dtypes: tuple[torch.dtype, ...]):
        super().__init__()
        self.dtypes, self.largest = dtypes, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.dtype in self.dtypes:
                self.largest = max(self.largest, t.numel())
        return out


def test_chunked_never_builds_fp32_tensors_for_all_tokens():
    tokens, vocab, chunk = 64, 50, 8
    student = randn(tokens, vocab, seed=48, dtype=torch.bfloat16).requires_grad_()
    teacher = randn(tokens, vocab, seed=49, dtype=torch.bfloat16)
    sizes = {}
    for name, fn in [("plain", distillation_loss), ("chunked", chunked_distillation_loss)]:
        kwargs = {"chunk_size": chunk} if name == "chunked" else {}
        with LargestTensor((torch.float32,)) as probe:
            fn(student, teacher, loss_type="jsd", **kwargs).backward()
        sizes[name] = probe.largest
    assert sizes["plain"] >= tokens * vocab  # the probe sees what it should
    assert sizes["chunked"] <= chunk * vocab


def test_chunked_from_hidden_never_builds_all_logits():
    tokens, hidden, vocab, chunk = 96, 8, 64, 16
    h_s, w_s = randn(tokens, hidden, seed=50).requires_grad_(), randn(vocab, hidden, seed=51).requires_grad_()
    h_t, w_t = randn(tokens, 2 * hidden, seed=52), randn(vocab, 2 * hidden, seed=53)
    with LargestTensor((torch.float32,)) as probe:
        chunked_distillation_loss_from_hidden(h_s, w_s, h_t, w_t, chunk_size=chunk).backward()
    assert probe.largest <= max(chunk * vocab, vocab * 2 * hidden, tokens * 2 * hidden) < tokens * vocab
    with LargestTensor((torch.float32,)) as probe:
        distillation_loss(h_s @ w_s.T, h_t @ w_t.T).backward()
    assert probe.largest >= tokens * vocab


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_chunked_from_hidden_equals_plain(loss_type):
    h_s, h_t = randn(3, 6, 8, seed=54, scale=1.0).requires_grad_(), randn(3, 6, 12, seed=55, scale=1.0)
    w_s, w_t = randn(V, 8, seed=56, scale=0.5).requires_grad_(), randn(V, 12, seed=57, scale=0.5)
    b_s, b_t = randn(V, seed=58).requires_grad_(), randn(V, seed=59)
    labels = random_labels(3, 6, seed=60)
    kwargs = {
        "loss_type": loss_type,
        "temperature": 2.0,
        "beta": 0.5,
        "labels": labels,
        "num_items_in_batch": 20,
    }
    plain = distillation_loss(F.linear(h_s, w_s, b_s), F.linear(h_t, w_t, b_t), **kwargs)
    chunked = chunked_distillation_loss_from_hidden(
        h_s, w_s, h_t, w_t, student_lm_head_bias=b_s, teacher_lm_head_bias=b_t, chunk_size=4, **kwargs
    )
    torch.testing.assert_close(chunked, plain)
    for a, b in zip(
        torch.autograd.grad(chunked, [h_s, w_s, b_s]),
        torch.autograd.grad(plain, [h_s, w_s, b_s]),
        strict=True,
    ):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------------
# cached (top-k) teacher


def test_teacher_topk():
    teacher = randn(2, 3, V, seed=61)
    logprobs, indices = teacher_topk(teacher, 5, temperature=2.0)
    assert logprobs.shape == indices.shape == (2, 3, 5) and indices.dtype == torch.int64
    assert torch.equal(indices, teacher.topk(5, dim=-1).indices)
    torch.testing.assert_close(logprobs, F.log_softmax(teacher / 2.0, -1).gather(-1, indices))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_topk_with_full_vocabulary_is_forward_kl(temperature):
    student, teacher = randn(3, 4, V, seed=62).requires_grad_(), randn(3, 4, V, seed=63)
    labels = random_labels(3, 4, seed=64)
    logprobs, indices = teacher_topk(teacher, V, temperature=temperature)
    topk = topk_distillation_loss(student, logprobs, indices, temperature=temperature, labels=labels)
    full = forward_kl_loss(student, teacher, temperature=temperature, labels=labels)
    torch.testing.assert_close(topk, full)
    torch.testing.assert_close(torch.autograd.grad(topk, student)[0], torch.autograd.grad(full, student)[0])


@pytest.mark.parametrize("k", [1, 3, 8])
def test_topk_is_the_kl_between_bucketed_distributions(k):
    student, teacher = randn(6, V, seed=65), randn(6, V, seed=66)
    logprobs, indices = teacher_topk(teacher, k, temperature=2.0)
    got = topk_distillation_loss(student, logprobs, indices, temperature=2.0)
    # by hand, in fp64: buckets = the k cached tokens + everything else
    p_s, p_t = F.softmax(student.double() / 2, -1), F.softmax(teacher.double() / 2, -1)
    rows = []
    for i in range(6):
        bucket_t = [p_t[i, j].item() for j in indices[i]]
        bucket_s = [p_s[i, j].item() for j in indices[i]]
        bucket_t.append(1 - sum(bucket_t))
        bucket_s.append(1 - sum(bucket_s))
        rows.append(sum(a * math.log(a / b) for a, b in zip(bucket_t, bucket_s, strict=True)))
    expected = 4 * sum(rows) / 6
    assert got.item() == pytest.approx(expected, rel=1e-5)
    full = forward_kl_loss(student, teacher, temperature=2.0)
    assert 0 <= got <= full  # merging outcomes never increases a KL
    assert got < full - 1e-3


def test_topk_tail_of_a_confident_student_stays_finite():
    # the student puts ~all its mass on the cached tokens: log(1 - sum) would be log(0)
    student = torch.full((2, V), -60.0)
    student[:, :3] = 10.0
    student.requires_grad_()
    teacher = randn(2, V, seed=67)
    logprobs, indices = teacher_topk(teacher, 3)
    indices = torch.tensor([[0, 1, 2], [2, 1, 0]])
    loss = topk_distillation_loss(student, logprobs, indices)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all() and loss > 10


def test_topk_cache_in_half_precision():
    student, teacher = randn(4, 50, seed=70), randn(4, 50, seed=71)
    logprobs, indices = teacher_topk(teacher, 10, temperature=2.0)
    exact = topk_distillation_loss(student, logprobs, indices, temperature=2.0)
    for dtype in (torch.float16, torch.bfloat16):
        stored = topk_distillation_loss(student, logprobs.to(dtype), indices.int(), temperature=2.0)
        torch.testing.assert_close(stored, exact, rtol=5e-2, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# helpers


def test_shift_for_causal_lm_matches_transformers_alignment():
    from transformers.loss.loss_utils import ForCausalLMLoss

    logits = randn(2, 6, V, seed=68)
    labels = random_labels(2, 6, seed=69)
    shifted_logits, shifted_labels = shift_for_causal_lm(logits, labels)
    assert shifted_logits.shape == (2, 5, V) and torch.equal(shifted_labels, labels[:, 1:])
    ours = F.cross_entropy(shifted_logits.reshape(-1, V), shifted_labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(ours, ForCausalLMLoss(logits, labels, vocab_size=V))


def test_combine_losses():
    kd, ce = torch.tensor(2.0), torch.tensor(6.0)
    torch.testing.assert_close(combine_losses(kd, ce, 0.25), torch.tensor(5.0))
    assert combine_losses(kd, ce, 1).item() == 2.0
    assert combine_losses(kd, ce, 0.0).item() == 6.0


# ---------------------------------------------------------------------------------------------
# intermediate layers


def test_hidden_state_loss():
    student, teacher = randn(2, 5, 8, seed=70), randn(2, 5, 8, seed=71)
    torch.testing.assert_close(hidden_state_loss(student, teacher), F.mse_loss(student, teacher))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    student[0, 3:] = float("nan")
    keep = mask.bool()
    torch.testing.assert_close(
        hidden_state_loss(student, teacher, mask=mask), F.mse_loss(student[keep], teacher[keep])
    )
    cosine = [
        1 - torch.dot(a, b) / (a.norm() * b.norm()) for a, b in zip(student[keep], teacher[keep], strict=True)
    ]
    torch.testing.assert_close(hidden_state_loss(student, teacher, kind="cosine", mask=mask), sum(cosine) / 8)
    same_direction = hidden_state_loss(teacher, 3 * teacher, kind="cosine")
    assert same_direction.abs() < 1e-6


def masked_attention(batch: int, heads: int, lengths: list[int], *, seed: int) -> torch.Tensor:
    """Attention maps whose valid rows put all their mass on valid keys; padded rows/columns hold garbage."""
    size = max(lengths)
    attn = torch.softmax(randn(batch, heads, size, size, seed=seed), -1)
    for b, length in enumerate(lengths):
        attn[b, :, :, :length] = torch.softmax(randn(heads, size, length, seed=seed + b + 1), -1)
        attn[b, :, :, length:] = 0.37  # garbage in padded key columns ...
        attn[b, :, length:, :] = float("nan")  # ... and padded query rows
    return attn


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_attention_loss_against_loops(kind):
    lengths = [5, 3]
    student, teacher = masked_attention(2, 3, lengths, seed=72), masked_attention(2, 3, lengths, seed=80)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    total = 0.0
    for b, length in enumerate(lengths):
        for q in range(length):
            per_head = []
            for h in range(3):
                s, t = student[b, h, q, :length].double(), teacher[b, h, q, :length].double()
                per_head.append((t * (t / s).log()).sum() if kind == "kl" else ((s - t) ** 2).mean())
            total += sum(per_head) / 3
    expected = total / sum(lengths)
    got = attention_loss(student, teacher, kind=kind, mask=mask)
    assert got.item() == pytest.approx(float(expected), rel=1e-5)


def test_attention_loss_without_mask():
    student, teacher = (
        torch.softmax(randn(2, 4, 3, 3, seed=90), -1),
        torch.softmax(randn(2, 4, 3, 3, seed=91), -1),
    )
    torch.testing.assert_close(attention_loss(student, teacher, kind="mse"), F.mse_loss(student, teacher))
    kl = F.kl_div(student.log(), teacher, reduction="sum") / (
        2 * 4 * 3
    )  # mean over rows = over (batch, query, head)
    torch.testing.assert_close(attention_loss(student, teacher, kind="kl"), kl)
    causal = torch.tril(torch.ones(3, 3))
    causal_attn = causal / causal.sum(-1, keepdim=True)  # exact zeros above the diagonal
    assert attention_loss(causal_attn[None, None], causal_attn[None, None]).item() == 0.0


# ---------------------------------------------------------------------------------------------
# errors


def _t(*shape: int) -> torch.Tensor:
    return torch.zeros(*shape)


ERRORS = [
    (
        lambda: distillation_loss(_t(2, 5), _t(2, 5), temperature=0),
        ValueError,
        r"temperature=0 must be .*> 0",
    ),
    (lambda: distillation_loss(_t(2, 5), _t(2, 5), temperature=-1.0), ValueError, r"temperature=-1.0"),
    (lambda: distillation_loss(_t(2, 5), _t(2, 5), temperature=float("nan")), ValueError, r"temperature=nan"),
    (
        lambda: distillation_loss(_t(2, 5), _t(2, 5), temperature="2"),
        TypeError,
        r"temperature must be a positive",
    ),
    (lambda: distillation_loss(_t(2, 5), _t(2, 5), beta=1.5), ValueError, r"beta=1.5 is outside \[0, 1\]"),
    (lambda: generalized_jsd_loss(_t(2, 5), _t(2, 5), beta=-0.1), ValueError, r"beta=-0.1 .*reverse KL"),
    (
        lambda: distillation_loss(_t(2, 5), _t(2, 5), loss_type="foward_kl"),
        ValueError,
        r"loss_type='foward_kl' .*did you mean 'forward_kl'",
    ),
    (
        lambda: distillation_loss(_t(2, 5), _t(2, 5), loss_type="kl"),
        ValueError,
        r"did you mean 'forward_kl'.*Use one of",
    ),
    (
        lambda: distillation_loss(_t(2, 5), _t(2, 5), loss_type="reverse-kl"),
        ValueError,
        r"did you mean 'reverse_kl'",
    ),
    (
        lambda: distillation_loss(_t(2, 3, 5), _t(2, 4, 5)),
        ValueError,
        r"\(2, 3, 5\) .*\(2, 4, 5\) differ.*same batch",
    ),
    (
        lambda: forward_kl_loss(_t(2, 5), _t(2, 6)),
        ValueError,
        r"vocab=5 and teacher_logits vocab=6.*len\(tokenizer\)",
    ),
    (
        lambda: chunked_distillation_loss(_t(2, 5), _t(2, 6)),
        ValueError,
        r"vocab=5 .*vocab=6.*cross-tokenizer",
    ),
    (
        lambda: distillation_loss(_t(2, 3, 5), _t(2, 3, 5), mask=torch.ones(2, 4, dtype=torch.long)),
        ValueError,
        r"mask.shape=\(2, 4\) must be \(2, 3\)",
    ),
    (
        lambda: distillation_loss(_t(2, 5), _t(2, 5), mask=torch.ones(2)),
        TypeError,
        r"mask must be bool or 0/1.*mask.bool",
    ),
    (
        lambda: distillation_loss(_t(2, 3, 5), _t(2, 3, 5), labels=torch.zeros(2, 4, dtype=torch.long)),
        ValueError,
        r"labels.shape=\(2, 4\) must be \(2, 3\).*shift_for_causal_lm",
    ),
    (
        lambda: distillation_loss(_t(2, 5), _t(2, 5), labels=torch.zeros(2)),
        TypeError,
        r"labels must be an integer tensor",
    ),
    (
        lambda: distillation_loss(torch.zeros(2, 5, dtype=torch.long), _t(2, 5)),
        TypeError,
        r"student_logits must be a floating",
    ),
    (
        lambda: distillation_loss(_t(2, 5), [[0.0] * 5] * 2),
        TypeError,
        r"teacher_logits must be a torch.Tensor",
    ),
    (
        lambda: distillation_loss(_t(2, 5), _t(2, 5), num_items_in_batch=-1),
        ValueError,
        r"num_items_in_batch=-1 must be a count",
    ),
    (
        lambda: distillation_loss(_t(2, 5), _t(2, 5), num_items_in_batch=torch.tensor([3, 4])),
        ValueError,
        r"one-element tensor; got a tensor of shape \(2,\)",
    ),
    (
        lambda: chunked_distillation_loss(_t(2, 5), _t(2, 5), chunk_size=0),
        ValueError,
        r"chunk_size=0 must be >= 1",
    ),
    (
        lambda: chunked_distillation_loss_from_hidden(_t(2, 4), _t(7, 4), _t(2, 3), _t(9, 3)),
        ValueError,
        r"vocab=7 rows and teacher_lm_head_weight vocab=9.*weight\[:len\(tokenizer\)\]",
    ),
    (
        lambda: chunked_distillation_loss_from_hidden(_t(2, 4), _t(4, 7), _t(2, 3), _t(7, 3)),
        ValueError,
        r"student_lm_head_weight.shape=\(4, 7\) does not fit student_hidden of size 4.*\.T",
    ),
    (
        lambda: chunked_distillation_loss_from_hidden(_t(2, 4), _t(7, 4), _t(3, 3), _t(7, 3)),
        ValueError,
        r"differ before the hidden size",
    ),
    (
        lambda: chunked_distillation_loss_from_hidden(
            _t(2, 4), _t(7, 4), _t(2, 3), _t(7, 3), student_lm_head_bias=_t(6)
        ),
        ValueError,
        r"student_lm_head_bias.shape=\(6,\) does not match",
    ),
    (lambda: teacher_topk(_t(2, 5), 6), ValueError, r"k=6 must be between 1 and the vocabulary size 5"),
    (lambda: teacher_topk(_t(2, 5), 0), ValueError, r"k=0 must be between 1"),
    (
        lambda: topk_distillation_loss(_t(2, 5), _t(2, 3), torch.tensor([[0, 1, 5], [0, 1, 2]])),
        ValueError,
        r"ids in \[0, 5\] but the student vocabulary has 5 entries.*rebuilt",
    ),
    (
        lambda: topk_distillation_loss(_t(2, 5), torch.full((2, 3), 2.0), torch.tensor([[0, 1, 2]] * 2)),
        ValueError,
        r"look like logits.*teacher_topk",
    ),
    (
        lambda: topk_distillation_loss(_t(2, 5), _t(2, 3), torch.zeros(2, 2, dtype=torch.long)),
        ValueError,
        r"two outputs of one teacher_topk",
    ),
    (
        lambda: topk_distillation_loss(_t(2, 5), _t(3, 3), torch.zeros(3, 3, dtype=torch.long)),
        ValueError,
        r"one entry per student position",
    ),
    (lambda: hidden_state_loss(_t(2, 3, 8), _t(2, 3, 16)), ValueError, r"Linear\(8, 16\).*W_h"),
    (
        lambda: hidden_state_loss(_t(2, 3, 8), _t(2, 4, 8)),
        ValueError,
        r"differ: both must come from the same batch",
    ),
    (
        lambda: hidden_state_loss(_t(2, 3, 8), _t(2, 3, 8), kind="cosin"),
        ValueError,
        r"kind='cosin' .*did you mean 'cosine'",
    ),
    (
        lambda: attention_loss(_t(2, 2, 3, 3), _t(2, 4, 3, 3)),
        ValueError,
        r"heads=2 and teacher_attn heads=4.*average the teacher's heads.*view\(2, 2, 2, q, k\)\.mean\(2\)",
    ),
    (lambda: attention_loss(_t(2, 2, 3, 3), _t(2, 3, 3, 3)), ValueError, r"heads=2 .*heads=3.*map the heads"),
    (
        lambda: attention_loss(_t(2, 2, 3, 3), _t(2, 2, 4, 4)),
        ValueError,
        r"differ: both must come from the same batch",
    ),
    (lambda: attention_loss(_t(2, 3, 3), _t(2, 3, 3)), ValueError, r"\(batch, heads, query, key\)"),
    (
        lambda: attention_loss(_t(2, 2, 3, 4), _t(2, 2, 3, 4), mask=torch.ones(2, 4)),
        ValueError,
        r"self-attention",
    ),
    (
        lambda: attention_loss(_t(2, 2, 3, 3), _t(2, 2, 3, 3), mask=torch.ones(2, 4)),
        ValueError,
        r"mask.shape=\(2, 4\) must be \(batch, seq\)=\(2, 3\)",
    ),
    (
        lambda: attention_loss(_t(2, 2, 3, 3), _t(2, 2, 3, 3), kind="kld"),
        ValueError,
        r"kind='kld' .*did you mean 'kl'",
    ),
    (lambda: combine_losses(1.0, 2.0, 1.5), ValueError, r"alpha=1.5 is outside \[0, 1\]"),
    (lambda: combine_losses(1.0, 2.0, "0.5"), TypeError, r"alpha must be a number"),
    (
        lambda: shift_for_causal_lm(_t(2, 5), torch.zeros(2, dtype=torch.long)),
        ValueError,
        r"\(batch, seq, vocab\).*nothing to shift",
    ),
    (
        lambda: shift_for_causal_lm(_t(2, 5, 3), torch.zeros(2, 4, dtype=torch.long)),
        ValueError,
        r"logits.shape\[:2\]=\(2, 5\) does not match labels.shape=\(2, 4\)",
    ),
]


@pytest.mark.parametrize("make, error, match", ERRORS, ids=[m for _, _, m in ERRORS])
def test_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()
