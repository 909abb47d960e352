"""ULD and the GOLD-style hybrid loss (hf_lite.losses.cross_tokenizer) on real tokenizer pairs.

Checked against a per-span reference written with plain loops (float64), against the ordinary token-level loss
when both tokenizers are the same (or one is a permuted copy of the other), and for the house conventions:
masking, gradient accumulation by ``num_items_in_batch``, an all-masked batch, padding that holds NaN.
"""

from __future__ import annotations

import math

import pytest
import torch

from hf_lite.data import align_texts, alignment_tensors, shared_vocabulary
from hf_lite.losses import distillation_loss, forward_kl_loss, hybrid_uld_loss, uld_loss
from tests import tokenizer_kinds as kinds

ASCII = [
    "the quick brown fox jumps over the lazy dog",
    "def f(x): return x**2 + 12345",
    "student learns from teacher, token by token.",
]


@pytest.fixture(scope="module")
def tokenizers():
    return {
        "byte_level": kinds.byte_level_bpe(),
        "metaspace": kinds.metaspace_bpe(),
        "wordpiece": kinds.lowercase_wordpiece(),
    }


def make_batch(texts, s_tok, t_tok, *, seed=0, t_tokenizer_vocab=None):
    s = s_tok(texts, padding=True, return_tensors="pt")
    t = t_tok(texts, padding=True, return_tensors="pt")
    alignments = align_texts(texts, s_tok, t_tok)
    tensors = alignment_tensors(
        alignments,
        student_input_ids=s["input_ids"],
        teacher_input_ids=t["input_ids"],
        student_attention_mask=s["attention_mask"],
        teacher_attention_mask=t["attention_mask"],
    )
    g = torch.Generator().manual_seed(seed)
    s_logits = torch.randn(*s["input_ids"].shape, len(s_tok), generator=g) * 2
    t_logits = torch.randn(*t["input_ids"].shape, t_tokenizer_vocab or len(t_tok), generator=g) * 2
    return s, t, alignments, tensors, s_logits, t_logits


def span_vector(logits, ids, positions, start, stop, temperature):
    """q(v) = p(v | before the span) * prod p(later tokens), float64, by loops."""
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    q = probs[positions[start - 1]].clone()
    for i in range(start + 1, stop):
        q = q * probs[positions[i - 1], ids[positions[i]]]
    return q


def reference(
    s, t, alignments, s_logits, t_logits, *, temperature=1.0, shared=None, loss_type="forward_kl", beta=0.5
):
    """Per-span sum and count by plain loops: ULD when ``shared`` is None, else the hybrid (weights 1)."""
    total, count = 0.0, 0
    for row, alignment in enumerate(alignments):
        s_pos = s["attention_mask"][row].nonzero().flatten().tolist()
        t_pos = t["attention_mask"][row].nonzero().flatten().tolist()
        for span in alignment.spans:
            if span.student[0] == 0 or span.teacher[0] == 0:
                continue
            q_s = span_vector(s_logits[row], s["input_ids"][row], s_pos, *span.student, temperature)
            q_t = span_vector(t_logits[row], t["input_ids"][row], t_pos, *span.teacher, temperature)
            count += 1
            if shared is None:
                total += float(sorted_l1(q_s, q_t))
                continue
            s_ids, t_ids = shared
            a = torch.cat([q_s[s_ids], (1 - q_s[s_ids].sum()).clamp_min(0).reshape(1)])
            b = torch.cat([q_t[t_ids], (1 - q_t[t_ids].sum()).clamp_min(0).reshape(1)])
            total += float(divergence(a, b, loss_type, beta))
            rest_s = torch.ones(len(q_s), dtype=torch.bool)
            rest_s[s_ids] = False
            rest_t = torch.ones(len(q_t), dtype=torch.bool)
            rest_t[t_ids] = False
            total += float(sorted_l1(q_s[rest_s], q_t[rest_t]))
    return total * temperature**2, count


def sorted_l1(a, b):
    width = max(len(a), len(b))
    a = torch.nn.functional.pad(a.sort(descending=True).values, (0, width - len(a)))
    b = torch.nn.functional.pad(b.sort(descending=True).values, (0, width - len(b)))
    return (a - b).abs().sum()


def divergence(q_s, q_t, loss_type, beta):
    def kl(p, q):
        keep = p > 0
        return (p[keep] * (p[keep].log() - q[keep].log())).sum()

    if loss_type == "forward_kl":
        return kl(q_t, q_s)
    if loss_type == "reverse_kl":
        return kl(q_s, q_t)
    if loss_type == "tv":
        return 0.5 * (q_s - q_t).abs().sum()
    m = beta * q_t + (1 - beta) * q_s
    return beta * kl(q_t, m) + (1 - beta) * kl(q_s, m)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_uld_matches_a_per_span_reference(tokenizers, temperature):
    texts = [*kinds.TEXTS[:3], kinds.chat_text(tokenizers["byte_level"])]
    s, t, alignments, tensors, s_logits, t_logits = make_batch(
        texts, tokenizers["byte_level"], tokenizers["wordpiece"]
    )
    assert any(
        span.student[1] - span.student[0] > 1 for a in alignments for span in a.spans
    )  # chain rule used
    total, count = reference(s, t, alignments, s_logits, t_logits, temperature=temperature)
    loss = uld_loss(s_logits, t_logits, tensors, temperature=temperature)
    assert int(tensors["span_mask"].sum()) == count
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(total / count, rel=1e-5)


@pytest.mark.parametrize("loss_type", ["forward_kl", "reverse_kl", "jsd", "tv"])
def test_hybrid_matches_a_per_span_reference(tokenizers, loss_type):
    s_tok, t_tok = tokenizers["metaspace"], tokenizers["byte_level"]
    texts = [*kinds.TEXTS[:3], kinds.chat_text(t_tok)]
    s, t, alignments, tensors, s_logits, t_logits = make_batch(texts, s_tok, t_tok, seed=1)
    shared = shared_vocabulary(s_tok, t_tok)
    assert 100 < len(shared.student_ids) < len(s_tok)  # both parts of the hybrid are at work
    total, count = reference(
        s, t, alignments, s_logits, t_logits, temperature=1.5, shared=shared, loss_type=loss_type, beta=0.3
    )
    loss = hybrid_uld_loss(
        s_logits, t_logits, tensors, shared, loss_type=loss_type, beta=0.3, temperature=1.5
    )
    assert loss.item() == pytest.approx(total / count, rel=1e-5)


@pytest.mark.parametrize("loss_type", ["forward_kl", "reverse_kl", "jsd", "tv"])
def test_identical_tokenizers_hybrid_equals_the_ordinary_loss(tokenizers, loss_type):
    tok = tokenizers["byte_level"]
    s, _, alignments, tensors, s_logits, t_logits = make_batch(ASCII, tok, tok, seed=2)
    assert all(span.student[1] - span.student[0] == 1 for a in alignments for span in a.spans)
    shared = shared_vocabulary(tok, tok)
    assert torch.equal(shared.student_ids, torch.arange(len(tok)))
    hybrid = hybrid_uld_loss(s_logits, t_logits, tensors, shared, loss_type=loss_type, temperature=2.0)
    # position i predicts token i + 1 (no BOS: the first token is predicted by nothing)
    ordinary = distillation_loss(
        s_logits[:, :-1],
        t_logits[:, :-1],
        loss_type=loss_type,
        temperature=2.0,
        mask=s["attention_mask"][:, 1:],
    )
    assert abs(hybrid.item() - ordinary.item()) < 1e-6


def test_uld_gradient_is_finite_with_identical_tokenizers(tokenizers):
    tok = tokenizers["byte_level"]
    _, _, _, tensors, s_logits, t_logits = make_batch(ASCII, tok, tok, seed=3)
    for teacher in (t_logits, s_logits.clone()):  # random, then the same logits (ties everywhere, loss 0)
        student = s_logits.clone().requires_grad_()
        loss = uld_loss(student, teacher, tensors)
        loss.backward()
        assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0 or loss.item() < 1e-6
    assert loss.item() < 1e-6


def test_permuted_vocabulary_exact_match_part_recovers_the_kl(tokenizers):
    tok = tokenizers["byte_level"]
    permuted, perm = kinds.permuted_copy(tok, seed=4)
    s, t, alignments, tensors, s_logits, base = make_batch(ASCII, tok, permuted, seed=4)
    assert torch.equal(
        t["input_ids"][t["attention_mask"].bool()],
        torch.tensor(perm)[s["input_ids"]][s["attention_mask"].bool()],
    )
    teacher = torch.empty_like(base)
    teacher[..., perm] = base  # the permuted teacher's logit for token i sits at id perm[i]
    shared = shared_vocabulary(tok, permuted)
    assert torch.equal(shared.teacher_ids, torch.tensor(perm)[shared.student_ids]) and len(
        shared.student_ids
    ) == len(tok)
    mask = s["attention_mask"][:, 1:]
    kl = forward_kl_loss(s_logits[:, :-1], base[:, :-1], mask=mask)
    for unmatched_weight in (0.0, 1.0):  # nothing is left for the ULD part
        hybrid = hybrid_uld_loss(s_logits, teacher, tensors, shared, unmatched_weight=unmatched_weight)
        assert abs(hybrid.item() - kl.item()) < 1e-6
    # ULD ignores which id holds which probability
    assert uld_loss(s_logits, teacher, tensors).item() == pytest.approx(
        uld_loss(s_logits, base, tensors).item(), abs=1e-6
    )


@pytest.mark.parametrize("which", ["uld", "hybrid"])
def test_masking_and_gradient_accumulation_are_exact(tokenizers, which):
    s_tok, t_tok = tokenizers["wordpiece"], tokenizers["metaspace"]
    texts = [*kinds.TEXTS[:4]]
    _, _, _, tensors, s_logits, t_logits = make_batch(texts, s_tok, t_tok, seed=5)
    shared = shared_vocabulary(s_tok, t_tok)

    def loss_fn(student, teacher, alignment, **kw):
        if which == "uld":
            return uld_loss(student, teacher, alignment, temperature=2.0, **kw)
        return hybrid_uld_loss(student, teacher, alignment, shared, loss_type="jsd", temperature=2.0, **kw)

    full_student = s_logits.clone().requires_grad_()
    full = loss_fn(full_student, t_logits, tensors)
    full.backward()
    n = tensors["span_mask"].sum()
    micro_student = s_logits.clone().requires_grad_()
    parts = []
    for rows in (slice(0, 1), slice(1, 4)):
        part = {k: v[rows] for k, v in tensors.items()}
        parts.append(loss_fn(micro_student[rows], t_logits[rows], part, num_items_in_batch=n))
    sum(parts).backward()
    assert abs(sum(parts).item() - full.item()) < 1e-6
    torch.testing.assert_close(micro_student.grad, full_student.grad, atol=1e-7, rtol=1e-5)
    # padded positions may hold NaN: they never enter the loss
    poisoned_s, poisoned_t = s_logits.clone(), t_logits.clone()
    poisoned_s[tensors["student_next_ids"] == 0] = float("nan")  # the last column and the padding
    poisoned_t[tensors["teacher_next_ids"] == 0] = float("nan")
    assert abs(loss_fn(poisoned_s, poisoned_t, tensors).item() - full.item()) < 1e-6
    # a span mask leaves spans out exactly: the two halves add up to the whole, each normalised by its count
    keep = torch.rand(tensors["span_mask"].shape, generator=torch.Generator().manual_seed(0)) < 0.5
    counted = tensors["span_mask"]
    kept, dropped = int((keep & counted).sum()), int((~keep & counted).sum())
    assert kept and dropped
    halves = kept * loss_fn(s_logits, t_logits, tensors, mask=keep) + dropped * loss_fn(
        s_logits, t_logits, tensors, mask=~keep
    )
    assert halves.item() == pytest.approx(full.item() * int(n), rel=1e-5)
    as_span_mask = loss_fn(s_logits, t_logits, {**tensors, "span_mask": counted & keep})
    assert as_span_mask.item() == pytest.approx(
        loss_fn(s_logits, t_logits, tensors, mask=keep).item(), rel=1e-6
    )
    # nothing counted: exactly 0, zero gradient
    empty_student = s_logits.clone().requires_grad_()
    empty = loss_fn(empty_student, t_logits, tensors, mask=torch.zeros_like(keep))
    empty.backward()
    assert empty.item() == 0.0 and not math.isnan(empty.item())
    assert empty_student.grad is None or empty_student.grad.abs().sum() == 0


def test_padded_heads_keep_the_extra_rows_in_the_rest(tokenizers):
    tok = tokenizers["byte_level"]
    s, _, _, tensors, s_logits, t_logits = make_batch(
        ASCII, tok, tok, seed=6, t_tokenizer_vocab=len(tok) + 48
    )
    t_logits[..., len(tok) :] = -1e4  # padding rows of the teacher's head: no mass
    shared = shared_vocabulary(tok, tok)
    hybrid = hybrid_uld_loss(s_logits, t_logits, tensors, shared)
    ordinary = forward_kl_loss(
        s_logits[:, :-1], t_logits[:, :-1, : len(tok)], mask=s["attention_mask"][:, 1:]
    )
    assert abs(hybrid.item() - ordinary.item()) < 1e-5


def test_cross_tokenizer_loss_errors(tokenizers):
    tok = tokenizers["byte_level"]
    _, _, _, tensors, s_logits, t_logits = make_batch(ASCII[:1], tok, tok)
    shared = shared_vocabulary(tok, tok)
    with pytest.raises(ValueError, match="loss_type='mse' cannot compare span probabilities"):
        hybrid_uld_loss(s_logits, t_logits, tensors, shared, loss_type="mse")
    with pytest.raises(ValueError, match="loss_type='kl' is not a known distillation loss"):
        hybrid_uld_loss(s_logits, t_logits, tensors, shared, loss_type="kl")
    with pytest.raises(ValueError, match="unmatched_weight=-1.0 must be a number >= 0"):
        hybrid_uld_loss(s_logits, t_logits, tensors, shared, unmatched_weight=-1.0)
    with pytest.raises(TypeError, match=r"shared must be \(student_ids, teacher_ids\)"):
        hybrid_uld_loss(s_logits, t_logits, tensors, {"a": 1})
    with pytest.raises(ValueError, match=r"shared.teacher_ids must be a 1-d tensor of ids in \[0, 400\)"):
        hybrid_uld_loss(s_logits, t_logits, tensors, (shared[0], shared[1] + 1))
    with pytest.raises(ValueError, match="shared.student_ids has 2 ids and shared.teacher_ids 3"):
        hybrid_uld_loss(s_logits, t_logits, tensors, (torch.tensor([0, 1]), torch.tensor([0, 1, 2])))
    with pytest.raises(ValueError, match="shared.student_ids holds an id twice"):
        hybrid_uld_loss(s_logits, t_logits, tensors, (torch.tensor([0, 0]), torch.tensor([0, 1])))
    with pytest.raises(TypeError, match="alignment must be a mapping of tensors"):
        uld_loss(s_logits, t_logits, [tensors])
    with pytest.raises(ValueError, match=r"alignment lacks \['span_mask'\]"):
        uld_loss(s_logits, t_logits, {k: v for k, v in tensors.items() if k != "span_mask"})
    with pytest.raises(TypeError, match=r"alignment\['span_mask'\] must be a bool tensor"):
        uld_loss(s_logits, t_logits, {**tensors, "span_mask": tensors["span_mask"].float()})
    with pytest.raises(ValueError, match=r"alignment\['teacher_span'\].shape=.* must be"):
        uld_loss(s_logits, t_logits[:, :-1], {**tensors, "teacher_index": tensors["teacher_index"]})
    with pytest.raises(ValueError, match=r"alignment\['student_index'\].shape=.*disagree"):
        uld_loss(s_logits, t_logits, {**tensors, "student_index": tensors["student_index"][:, :-1]})
    with pytest.raises(ValueError, match=r"student_logits must be \(batch, seq, vocab\)"):
        uld_loss(s_logits[0], t_logits, tensors)
    _, _, _, other, s_other, t_other = make_batch([kinds.chat_text(tok)], tok, tokenizers["wordpiece"])
    assert (other["teacher_span"] >= 0).any()  # multi-token teacher spans: their later tokens are read
    with pytest.raises(ValueError, match=r"alignment\['teacher_next_ids'\] holds ids outside \[0, 300\)"):
        uld_loss(s_other, t_other, {**other, "teacher_next_ids": other["teacher_next_ids"] + 1000})
    with pytest.raises(ValueError, match=r"alignment\['student_index'\] points at positions outside"):
        uld_loss(s_logits, t_logits, {**tensors, "student_index": tensors["student_index"] + 1000})
    with pytest.raises(ValueError, match=r"mask must be a bool or 0/1 integer tensor of shape"):
        uld_loss(s_logits, t_logits, tensors, mask=torch.ones(3))
    with pytest.raises(ValueError, match="temperature=0 must be a finite number > 0"):
        uld_loss(s_logits, t_logits, tensors, temperature=0)


def test_half_precision_logits_are_computed_in_fp32(tokenizers):
    s_tok, t_tok = tokenizers["byte_level"], tokenizers["wordpiece"]
    _, _, _, tensors, s_logits, t_logits = make_batch(ASCII, s_tok, t_tok, seed=7)
    shared = shared_vocabulary(s_tok, t_tok)
    s16, t16 = s_logits.bfloat16(), t_logits.bfloat16()
    for fn in (uld_loss, lambda s, t, a: hybrid_uld_loss(s, t, a, shared)):
        low = fn(s16, t16, tensors)
        assert low.dtype == torch.float32
        assert low.item() == pytest.approx(fn(s16.float(), t16.float(), tensors).item(), rel=1e-5)
        assert fn(s_logits.double(), t_logits.double(), tensors).dtype == torch.float64
