"""The one loss entry point: on each path (full or cached teacher x alpha < 1 x chunk_size)
it equals the specialised function it picks, in value and gradient; and mix_teacher_logits."""

from __future__ import annotations

import typing

import pytest
import torch

from hf_lite import losses
from hf_lite.losses import (
    LOSS_TYPES,
    DistillationLosses,
    LossType,
    chunked_distillation_loss,
    combine_losses,
    cross_entropy_loss,
    distillation_and_ce_loss,
    distillation_loss,
    logit_distillation_loss,
    mix_teacher_logits,
    shift_labels,
    teacher_topk,
    topk_distillation_and_ce_loss,
    topk_distillation_loss,
)

V = 17


def _batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    student = (torch.randn(3, 6, V, generator=g) * 2).requires_grad_()
    teacher = torch.randn(3, 6, V, generator=g) * 2
    raw = torch.randint(0, V, (3, 6), generator=g)
    raw[0, :2] = -100
    labels = shift_labels(raw)
    return student, teacher, labels


def _grad(loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def _reference(student, teacher, labels, *, cached, alpha, chunk_size, loss_type, num_items):
    """The specialised function(s) the trainer called before there was one entry point."""
    common = dict(temperature=2.0, num_items_in_batch=num_items)
    if cached:
        logprobs, indices = teacher_topk(teacher, k=5, temperature=2.0)
    if alpha < 1.0 and chunk_size is None:
        if cached:
            out = topk_distillation_and_ce_loss(student, logprobs, indices, labels, alpha=alpha, **common)
        else:
            out = distillation_and_ce_loss(
                student, teacher, labels, alpha=alpha, loss_type=loss_type, **common
            )
        return out.loss, out.kd, out.ce
    if cached:
        kd = topk_distillation_loss(student, logprobs, indices, labels=labels, **common)
    elif chunk_size is not None:
        kd = chunked_distillation_loss(
            student, teacher, chunk_size=chunk_size, loss_type=loss_type, labels=labels, **common
        )
    else:
        kd = distillation_loss(student, teacher, loss_type=loss_type, labels=labels, **common)
    ce = cross_entropy_loss(student, labels, num_items_in_batch=num_items) if alpha < 1.0 else None
    return combine_losses(kd, 0.0 if ce is None else ce, alpha), kd, ce


PATHS = [
    (cached, alpha, chunk_size)
    for cached in (False, True)
    for alpha in (1.0, 0.3)
    for chunk_size in (None, 4)
    if not (cached and chunk_size)
]


@pytest.mark.parametrize("cached, alpha, chunk_size", PATHS)
@pytest.mark.parametrize("num_items", [None, 40])
def test_entry_point_equals_the_specialised_function_on_each_path(cached, alpha, chunk_size, num_items):
    loss_type = "forward_kl" if cached else "jsd"
    student, teacher, labels = _batch(0)
    if cached:
        logprobs, indices = teacher_topk(teacher, k=5, temperature=2.0)
        teacher_kwargs = dict(teacher_topk_logprobs=logprobs, teacher_topk_indices=indices)
    else:
        teacher_kwargs = dict(teacher_logits=teacher)
    out = logit_distillation_loss(
        student,
        labels=labels,
        alpha=alpha,
        loss_type=loss_type,
        temperature=2.0,
        chunk_size=chunk_size,
        num_items_in_batch=num_items,
        **teacher_kwargs,
    )
    ref_loss, ref_kd, ref_ce = _reference(
        student,
        teacher,
        labels,
        cached=cached,
        alpha=alpha,
        chunk_size=chunk_size,
        loss_type=loss_type,
        num_items=num_items,
    )
    assert isinstance(out, DistillationLosses)
    torch.testing.assert_close(out.loss, ref_loss)
    torch.testing.assert_close(out.kd, ref_kd.detach())
    assert not out.kd.requires_grad
    if alpha == 1.0:
        assert out.ce is None
    else:
        torch.testing.assert_close(out.ce, ref_ce.detach())
        assert not out.ce.requires_grad
    torch.testing.assert_close(_grad(out.loss, student), _grad(ref_loss, student))


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_every_loss_type_goes_through_the_entry_point(loss_type):
    student, teacher, labels = _batch(1)
    out = logit_distillation_loss(student, teacher, labels=labels, loss_type=loss_type, beta=0.3)
    ref = distillation_loss(student, teacher, labels=labels, loss_type=loss_type, beta=0.3)
    torch.testing.assert_close(out.loss, ref)


def test_mask_without_labels_and_mask_with_alpha_below_one():
    student, teacher, labels = _batch(2)
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[1, 3:] = 0
    out = logit_distillation_loss(student, teacher, mask=mask, temperature=1.5)
    torch.testing.assert_close(out.loss, distillation_loss(student, teacher, mask=mask, temperature=1.5))
    mixed = logit_distillation_loss(student, teacher, labels=labels, mask=mask, alpha=0.5)
    kd = distillation_loss(student, teacher, labels=labels, mask=mask)
    torch.testing.assert_close(mixed.loss, 0.5 * kd + 0.5 * cross_entropy_loss(student, labels))


ERRORS = [
    (dict(), r"got neither"),
    (dict(teacher_logits=True, topk=True), r"got both teacher_logits and a top-k cache"),
    (dict(only_logprobs=True), r"go together"),
    (dict(teacher_logits=True, alpha=0.5, labels=False), r"alpha=0.5 mixes in cross-entropy.*labels=None"),
    (
        dict(topk=True, loss_type="reverse_kl"),
        r"loss_type='reverse_kl' needs the teacher's full distribution",
    ),
    (dict(topk=True, chunk_size=8), r"chunk_size=8 chunks full teacher logits"),
    (dict(teacher_logits=True, loss_type="kl"), r"loss_type='kl' .*did you mean 'forward_kl'"),
    (dict(teacher_logits=True, alpha=2.0), r"alpha=2.0 is outside \[0, 1\]"),
]


@pytest.mark.parametrize("spec, match", ERRORS, ids=[m for _, m in ERRORS])
def test_entry_point_errors(spec, match):
    student, teacher, labels = _batch(3)
    logprobs, indices = teacher_topk(teacher, k=4)
    kwargs = dict(labels=None if spec.get("labels") is False else labels)
    if spec.get("teacher_logits"):
        kwargs["teacher_logits"] = teacher
    if spec.get("topk"):
        kwargs.update(teacher_topk_logprobs=logprobs, teacher_topk_indices=indices)
    if spec.get("only_logprobs"):
        kwargs["teacher_topk_logprobs"] = logprobs
    for key in ("alpha", "loss_type", "chunk_size"):
        if key in spec:
            kwargs[key] = spec[key]
    with pytest.raises(ValueError, match=match):
        logit_distillation_loss(student, **kwargs)


def test_mix_teacher_logits():
    z1, z2 = torch.randn(2, 3, V), torch.randn(2, 3, V)
    assert mix_teacher_logits([z1], [1.0], temperature=3.0) is z1
    mixed = mix_teacher_logits([z1, z2], [0.25, 0.75], loss_type="jsd", temperature=2.0)
    expected = 0.25 * torch.softmax(z1 / 2, -1) + 0.75 * torch.softmax(z2 / 2, -1)
    torch.testing.assert_close(torch.softmax(mixed / 2, -1), expected)
    torch.testing.assert_close(
        mix_teacher_logits([z1, z2], [0.25, 0.75], loss_type="mse"), 0.25 * z1 + 0.75 * z2
    )
    with pytest.raises(ValueError, match="2 teacher logits and 1 weights"):
        mix_teacher_logits([z1, z2], [1.0])


def test_the_loss_type_vocabulary_is_spelled_once():
    assert LOSS_TYPES == typing.get_args(LossType)
    assert set(losses.TOPK_LOSS_TYPES) <= set(LOSS_TYPES)
