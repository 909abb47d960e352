"""distillation_and_ce_loss / topk_distillation_and_ce_loss: one pass, the same value and gradient as the two
losses combined, and shift_labels."""

from __future__ import annotations

import pytest
import torch

from hf_lite.losses import (
    combine_losses,
    cross_entropy_loss,
    distillation_and_ce_loss,
    distillation_loss,
    fused,
    shift_for_causal_lm,
    shift_labels,
    teacher_topk,
    topk_distillation_and_ce_loss,
    topk_distillation_loss,
)


def _batch(seed: int, vocab: int = 13, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    student = (torch.randn(3, 7, vocab, generator=g, dtype=dtype) * 2).requires_grad_()
    teacher = torch.randn(3, 7, vocab, generator=g, dtype=dtype) * 2
    labels = torch.randint(0, vocab, (3, 7), generator=g)
    labels[0, :2] = -100  # a prompt
    labels[2, 5:] = -100  # padding
    return student, teacher, shift_labels(labels)


def _grad(loss, student):
    (grad,) = torch.autograd.grad(loss, student)
    return grad


@pytest.mark.parametrize(
    "loss_type,beta", [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.3), ("tv", 0.5), ("mse", 0.5)]
)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_equals_the_two_losses_combined(loss_type, beta, temperature, alpha):
    student, teacher, labels = _batch(0)
    kwargs = dict(loss_type=loss_type, temperature=temperature, beta=beta, num_items_in_batch=17)
    out = distillation_and_ce_loss(student, teacher, labels, alpha=alpha, **kwargs)
    kd = distillation_loss(student, teacher, labels=labels, **kwargs)
    ce = cross_entropy_loss(student, labels, num_items_in_batch=17)
    ref = combine_losses(kd, ce, alpha)
    torch.testing.assert_close(out.loss, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.kd, kd.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.ce, ce.detach(), rtol=1e-10, atol=1e-12)
    assert not out.kd.requires_grad and not out.ce.requires_grad
    torch.testing.assert_close(
        _grad(out.loss * 3.0, student), _grad(ref * 3.0, student), rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize("k,temperature", [(4, 1.0), (4, 2.0), (13, 1.0)])
@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
def test_topk_equals_the_two_losses_combined(k, temperature, alpha):
    student, teacher, labels = _batch(1)
    logprobs, indices = teacher_topk(teacher, k, temperature=temperature)
    out = topk_distillation_and_ce_loss(
        student, logprobs, indices, labels, alpha=alpha, temperature=temperature
    )
    kd = topk_distillation_loss(student, logprobs, indices, temperature=temperature, labels=labels)
    ref = combine_losses(kd, cross_entropy_loss(student, labels), alpha)
    torch.testing.assert_close(out.loss, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.kd, kd.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(_grad(out.loss, student), _grad(ref, student), rtol=1e-8, atol=1e-12)


def test_positions_left_out_may_hold_anything():
    student, teacher, labels = _batch(2, dtype=torch.float32)
    with torch.no_grad():
        student[2, 5:] = float("nan")  # padding logits
        teacher[0, 0] = float("inf")
    labels[0, 0] = -100
    out = distillation_and_ce_loss(student, teacher, labels, alpha=0.5)
    grad = _grad(out.loss, student)
    assert torch.isfinite(out.loss) and torch.isfinite(grad).all()
    assert grad[labels == -100].eq(0).all()


def test_causal_lm_alignment_equals_slicing_the_logits():
    """Unshifted logits with shift_labels give exactly what logits[:, :-1] with labels[:, 1:] give."""
    student, teacher, _ = _batch(3)
    raw = torch.randint(0, 13, (3, 7), generator=torch.Generator().manual_seed(3))
    raw[1, 4:] = -100
    s_cut, y_cut = shift_for_causal_lm(student, raw)
    t_cut, _ = shift_for_causal_lm(teacher, raw)
    for fn in (
        lambda s, t, y: distillation_loss(s, t, labels=y, loss_type="jsd"),
        lambda s, t, y: cross_entropy_loss(s, y),
        lambda s, t, y: distillation_and_ce_loss(s, t, y, alpha=0.4).loss,
    ):
        full = fn(student, teacher, shift_labels(raw))
        cut = fn(s_cut, t_cut, y_cut)
        torch.testing.assert_close(full, cut, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(_grad(full, student), _grad(cut, student), rtol=1e-12, atol=1e-12)


def test_shift_labels_matches_transformers():
    from transformers.loss.loss_utils import ForCausalLMLoss

    student, _, _ = _batch(4, dtype=torch.float32)
    raw = torch.randint(0, 13, (3, 7), generator=torch.Generator().manual_seed(4))
    raw[0, :3] = -100
    ref = ForCausalLMLoss(student, raw, vocab_size=13)  # mean over its valid targets
    torch.testing.assert_close(cross_entropy_loss(student, shift_labels(raw)), ref)
    assert shift_labels(raw).shape == raw.shape and (shift_labels(raw)[:, -1] == -100).all()


def test_blocks_give_the_same_result_as_one_block(monkeypatch):
    """Rows are processed in blocks on CPU; the block size changes nothing but speed."""
    student, teacher, labels = _batch(5, vocab=16, dtype=torch.float32)
    results = {}
    for size in (16, 16 * 5, 16 * 1000):  # 1 row, 5 rows (a ragged last block), all rows per block
        monkeypatch.setattr(fused, "BLOCK_ELEMENTS", size)
        out = distillation_and_ce_loss(student, teacher, labels, alpha=0.3, temperature=1.5)
        results[size] = (out.loss.detach(), _grad(out.loss, student))
    for size in results:
        torch.testing.assert_close(results[size][0], results[16][0], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(results[size][1], results[16][1], rtol=1e-6, atol=1e-8)


def test_all_masked_gives_zero():
    student, teacher, labels = _batch(6)
    out = distillation_and_ce_loss(student, teacher, torch.full_like(labels, -100), alpha=0.5)
    assert out.loss.item() == 0.0 and out.kd.item() == 0.0 and out.ce.item() == 0.0
    assert _grad(out.loss, student).eq(0).all()


def test_bad_input():
    student, teacher, labels = _batch(7)
    bad = labels.clone()
    bad[1, 1] = 13
    with pytest.raises(ValueError, match=r"labels hold ids in \[\d+, 13\] but the logits have 13 classes"):
        distillation_and_ce_loss(student, teacher, bad)
    with pytest.raises(ValueError, match=r"alpha=1.5 is outside \[0, 1\]"):
        distillation_and_ce_loss(student, teacher, labels, alpha=1.5)
    with pytest.raises(ValueError, match=r"shift_labels expects labels \(batch, seq\)"):
        shift_labels(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"temperature=0.0 must be a finite number > 0"):
        distillation_and_ce_loss(student, teacher, labels, temperature=0.0)
    with pytest.raises(ValueError, match=r"loss_type='kl'.*forward_kl"):
        distillation_and_ce_loss(student, teacher, labels, loss_type="kl")
    with pytest.raises(ValueError, match=r"labels.shape=\(3, 6\) must be \(3, 7\)"):
        distillation_and_ce_loss(student, teacher, labels[:, :-1])
    with pytest.raises(TypeError, match="labels must be a torch.Tensor of class ids; got list"):
        distillation_and_ce_loss(student, teacher, labels.tolist())
    with pytest.raises(ValueError, match=r"student_logits.*teacher_logits"):
        distillation_and_ce_loss(student, teacher[..., :-1], labels)
    logprobs, indices = teacher_topk(teacher, 4)
    with pytest.raises(
        ValueError, match=r"teacher_topk_indices hold ids in \[.*\] but the student vocabulary"
    ):
        topk_distillation_and_ce_loss(student[..., :5], logprobs, indices, labels.clamp(max=4))
    with pytest.raises(ValueError, match=r"labels hold ids in .* but the logits have 13 classes"):
        topk_distillation_and_ce_loss(student, logprobs, indices, bad)
    out = distillation_and_ce_loss(student, teacher, labels)
    out.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="retain_graph=True\\) is not supported"):
        out.loss.backward()
