"""Unit tests of the mask maths: exact counts, ordering properties, N:M groups, tie-breaking, errors."""

from __future__ import annotations

import math

import pytest
import torch

from hf_lite.pruning import (
    apply_mask_,
    global_unstructured_masks,
    magnitude_scores,
    mask_sparsity,
    movement_scores,
    nm_mask,
    pruned_count,
    unstructured_mask,
    wanda_scores,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------ scores


def test_magnitude_scores_is_abs_in_fp32_detached():
    w = torch.randn(3, 5, generator=_gen(), dtype=torch.bfloat16, requires_grad=True)
    s = magnitude_scores(w)
    assert s.dtype == torch.float32 and not s.requires_grad
    torch.testing.assert_close(s, w.detach().float().abs())


def test_movement_scores_formula_and_accumulation():
    w, g1, g2 = (torch.randn(4, 6, generator=_gen(i)) for i in range(3))
    s1 = movement_scores(w, g1)
    torch.testing.assert_close(s1, -(w * g1))
    torch.testing.assert_close(movement_scores(w, g2, accumulated=s1), -(w * g1) - (w * g2))


def test_movement_score_sign_follows_sanh_et_al():
    # Positive score <=> an SGD step (w - lr * g) moves the weight away from zero.
    w, g = torch.randn(200, generator=_gen(1)), torch.randn(200, generator=_gen(2))
    grows = (w.double() - 1e-6 * g.double()).abs() > w.double().abs()  # float64: no rounding away
    assert torch.equal(movement_scores(w, g) > 0, grows)
    # ... so hard movement pruning keeps the weights that grow.
    keep = unstructured_mask(movement_scores(w, g), sparsity=1 - grows.float().mean().item())
    assert torch.equal(keep, grows)


def test_wanda_scores_formula_both_layouts():
    w = torch.randn(5, 3, generator=_gen())  # nn.Linear layout (out, in)
    norm = torch.tensor([1.0, 10.0, 0.1])
    expected = w.abs() * norm[None, :]
    torch.testing.assert_close(wanda_scores(w, norm), expected)
    torch.testing.assert_close(wanda_scores(w, norm, dim=1), expected)
    torch.testing.assert_close(wanda_scores(w.t(), norm, dim=0), expected.t())  # Conv1D layout (in, out)


# ---------------------------------------------------------------------------------------- unstructured


def test_pruned_count_is_round():
    assert [pruned_count(10, s) for s in (0.0, 0.3, 0.55, 0.99)] == [0, 3, 6, 10]
    assert pruned_count(3, 0.5) == round(1.5) == 2 and pruned_count(5, 0.5) == round(2.5) == 2


@pytest.mark.parametrize("shape", [(7,), (13, 17), (4, 8, 6), (1, 1)])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.75, 0.9, 0.999])
def test_unstructured_mask_exact_count_and_order(shape, sparsity):
    scores = torch.randn(shape, generator=_gen(len(shape)))
    mask = unstructured_mask(scores, sparsity)
    assert mask.dtype == torch.bool and mask.shape == scores.shape
    numel = math.prod(shape)
    assert int((~mask).sum()) == round(sparsity * numel)
    if mask.any() and (~mask).any():
        assert scores[mask].min() >= scores[~mask].max()


def test_unstructured_mask_ties_are_deterministic_lower_index_pruned_first():
    scores = torch.tensor([[2.0, 1.0, 1.0, 1.0], [1.0, 3.0, 1.0, 1.0]])
    mask = unstructured_mask(scores, 0.5)  # 4 of the six 1.0 are pruned: the first four in row-major order
    assert mask.tolist() == [[True, False, False, False], [False, True, True, True]]
    assert torch.equal(unstructured_mask(scores.clone(), 0.5), mask)
    row = unstructured_mask(scores, 0.5, dim=1)
    assert row.tolist() == [[True, False, False, True], [False, True, False, True]]


def test_unstructured_mask_per_row_exact_and_transposed():
    scores = torch.randn(9, 20, generator=_gen(3))
    mask = unstructured_mask(scores, 0.35, dim=-1)
    assert ((~mask).sum(dim=1) == round(0.35 * 20)).all()
    for r in range(9):  # every row keeps its own largest scores
        assert scores[r][mask[r]].min() >= scores[r][~mask[r]].max()
    # rows along dim 0 of the transpose are the same rows
    assert torch.equal(unstructured_mask(scores.t().contiguous(), 0.35, dim=0), mask.t())
    assert torch.equal(unstructured_mask(scores, 0.35, dim=1), mask)


def test_unstructured_mask_bf16_and_zero_sparsity():
    scores = torch.randn(6, 6, generator=_gen(4)).to(torch.bfloat16)
    assert int((~unstructured_mask(scores, 0.5)).sum()) == 18
    assert unstructured_mask(scores, 0.0).all()


# -------------------------------------------------------------------------------------------- global


def test_global_masks_exact_total_and_threshold_property():
    scores = {
        "small": torch.randn(10, 12, generator=_gen(5)).abs() * 0.1,
        "large": torch.randn(20, 8, generator=_gen(6)).abs() * 10.0,
        "mid": torch.randn(33, generator=_gen(7)).abs(),
    }
    masks = global_unstructured_masks(scores, 0.45)
    total = sum(s.numel() for s in scores.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.45 * total)
    kept = torch.cat([s[masks[n]] for n, s in scores.items()])
    pruned = torch.cat([s[~masks[n]] for n, s in scores.items()])
    assert kept.min() >= pruned.max()
    # one threshold, uneven per-tensor sparsity: the small-scale tensor is pruned most
    assert mask_sparsity(masks["small"]) > mask_sparsity(masks["mid"]) > mask_sparsity(masks["large"])
    assert 0 < mask_sparsity(masks["mid"]) < 1


def test_global_masks_equal_unstructured_mask_of_concatenation_ties_included():
    scores = {"a": torch.tensor([[1.0, 1.0], [2.0, 1.0]]), "b": torch.tensor([1.0, 0.5, 1.0])}
    masks = global_unstructured_masks(scores, 0.5)  # 4 pruned: 0.5 then the first three 1.0 in order
    flat = unstructured_mask(torch.cat([s.reshape(-1) for s in scores.values()]), 0.5)
    assert torch.equal(torch.cat([m.reshape(-1) for m in masks.values()]), flat)
    assert masks["a"].tolist() == [[False, False], [True, False]] and masks["b"].tolist() == [
        True,
        False,
        True,
    ]


# ---------------------------------------------------------------------------------------------- N:M


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 4), (3, 4)])
def test_nm_mask_every_group_keeps_its_n_largest(n, m):
    scores = torch.randn(6, 4 * m, generator=_gen(m))
    mask = nm_mask(scores, n, m)
    groups_s = scores.reshape(6, 4, m)
    groups_m = mask.reshape(6, 4, m)
    assert (groups_m.sum(dim=-1) == n).all()
    for s, k in zip(groups_s.reshape(-1, m), groups_m.reshape(-1, m), strict=True):
        assert s[k].min() >= s[~k].max()
    assert mask_sparsity(mask) == pytest.approx(1 - n / m)


def test_nm_mask_groups_follow_dim():
    scores = torch.randn(8, 12, generator=_gen(8))  # (out, in) of a Linear
    mask = nm_mask(scores, 2, 4, dim=-1)
    # A Conv1D stores the transpose (in, out): groups must run along dim 0 and give the transposed mask.
    conv = nm_mask(scores.t().contiguous(), 2, 4, dim=0)
    assert torch.equal(conv, mask.t())
    assert (conv.reshape(3, 4, 8).sum(dim=1) == 2).all()
    # grouping along the wrong dimension is not the same mask
    assert not torch.equal(nm_mask(scores.t().contiguous(), 2, 4, dim=1), mask.t())


def test_nm_mask_ties_prune_lower_index_first():
    assert nm_mask(torch.ones(1, 8), 2, 4).tolist() == [[False, False, True, True] * 2]


# --------------------------------------------------------------------------------------- apply / count


def test_apply_mask_in_place_on_parameter():
    w = torch.nn.Parameter(torch.randn(4, 5, generator=_gen(9)))
    w.data[0, 0] = float("inf")
    before = w.detach().clone()
    mask = torch.rand(4, 5, generator=_gen(10)) > 0.5
    mask[0, 0] = False
    out = apply_mask_(w, mask)
    assert out is w and w.requires_grad
    assert (w[~mask] == 0).all() and torch.equal(w[mask], before[mask])


def test_mask_sparsity_tensor_and_dict():
    a = torch.tensor([True, False, False, False])
    b = torch.tensor([[True, True], [True, False]])
    assert mask_sparsity(a) == 0.75
    assert mask_sparsity({"a": a, "b": b}) == 4 / 8
    assert mask_sparsity(torch.ones(0, dtype=torch.bool)) == 0.0


# ------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("bad", [-0.1, 1.0, 50, float("nan")])
def test_sparsity_out_of_range(bad):
    with pytest.raises(ValueError, match=r"sparsity=.* is outside \[0, 1\).*Pass a value such as 0.5"):
        unstructured_mask(torch.randn(4), bad)


def test_sparsity_wrong_type():
    with pytest.raises(TypeError, match="sparsity must be a float in"):
        unstructured_mask(torch.randn(4), "0.5")
    with pytest.raises(TypeError, match="sparsity must be a float in"):
        pruned_count(4, True)


def test_scores_errors():
    with pytest.raises(TypeError, match="scores must be a torch.Tensor"):
        unstructured_mask([1.0, 2.0], 0.5)
    with pytest.raises(TypeError, match="scores must be a floating point tensor"):
        unstructured_mask(torch.arange(4), 0.5)
    with pytest.raises(ValueError, match="scores contain NaN"):
        unstructured_mask(torch.tensor([1.0, float("nan")]), 0.5)
    with pytest.raises(ValueError, match="dim=2 is not a dimension of scores of shape"):
        unstructured_mask(torch.randn(2, 2), 0.5, dim=2)
    with pytest.raises(TypeError, match="dim must be an int"):
        unstructured_mask(torch.randn(2, 2), 0.5, dim=1.0)


def test_magnitude_scores_rejects_integer_weight():
    with pytest.raises(TypeError, match="weight must be a floating point tensor"):
        magnitude_scores(torch.arange(3))


def test_movement_scores_shape_errors():
    with pytest.raises(ValueError, match=r"grad has shape \(2, 3\) but weight has shape \(3, 2\)"):
        movement_scores(torch.randn(3, 2), torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"accumulated has shape \(6,\) but weight has shape \(3, 2\)"):
        movement_scores(torch.randn(3, 2), torch.randn(3, 2), accumulated=torch.zeros(6))


def test_wanda_scores_errors():
    with pytest.raises(ValueError, match="weight must be 2-D"):
        wanda_scores(torch.randn(4), torch.ones(4))
    with pytest.raises(ValueError, match=r"input_norm has shape \(5,\) .* has 3 input features along dim=1"):
        wanda_scores(torch.randn(5, 3), torch.ones(5))


def test_global_masks_errors():
    with pytest.raises(TypeError, match="scores must be a dict"):
        global_unstructured_masks([torch.randn(3)], 0.5)
    with pytest.raises(ValueError, match="scores is empty"):
        global_unstructured_masks({}, 0.5)
    with pytest.raises(ValueError, match=r"scores\['b'\] contain NaN"):
        global_unstructured_masks({"a": torch.randn(2), "b": torch.tensor([float("nan")])}, 0.5)


@pytest.mark.parametrize(("n", "m"), [(4, 4), (0, 4), (5, 4), (-1, 2)])
def test_nm_mask_invalid_pattern(n, m):
    with pytest.raises(ValueError, match=rf"N:M pattern n={n}, m={m} is invalid.*1 <= n < m"):
        nm_mask(torch.randn(2, 8), n, m)


def test_nm_mask_type_and_width_errors():
    with pytest.raises(TypeError, match="n must be an int"):
        nm_mask(torch.randn(2, 8), 2.0, 4)
    with pytest.raises(ValueError, match=r"have 6 there, not a multiple of 4"):
        nm_mask(torch.randn(2, 6), 2, 4)


def test_apply_mask_errors():
    with pytest.raises(TypeError, match="mask must be a torch.bool tensor"):
        apply_mask_(torch.randn(3), torch.ones(3))
    with pytest.raises(ValueError, match=r"mask has shape \(3,\) but weight has shape \(4,\)"):
        apply_mask_(torch.randn(4), torch.ones(3, dtype=torch.bool))
    with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
        apply_mask_([1.0], torch.ones(1, dtype=torch.bool))


def test_mask_sparsity_rejects_non_bool():
    with pytest.raises(TypeError, match="mask must be a torch.bool tensor"):
        mask_sparsity(torch.ones(3))
