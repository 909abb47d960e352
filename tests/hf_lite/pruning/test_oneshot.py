"""One-shot magnitude and Wanda pruning on tiny real architectures (Llama, GPT-2 Conv1D, T5), checked
against exact counts, the N:M property, reference computations from our own hooks, and output error."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from hf_lite.pruning import (
    DEFAULT_EXCLUDE,
    find_prunable_modules,
    in_features_dim,
    magnitude_prune_,
    parse_pattern,
    unstructured_mask,
    wanda_prune_,
    wanda_scores,
)
from hf_lite.testing import build_tiny_model

PAD = 1  # the tiny GPT-style tokenizer's <|endoftext|>, used as pad token by the tiny configs


@pytest.fixture(scope="module")
def llama():
    return build_tiny_model("llama")[0]


@pytest.fixture(scope="module")
def gpt2():
    return build_tiny_model("gpt2")[0]


def _batches(vocab: int, seed: int = 0, n: int = 2) -> list[dict[str, torch.Tensor]]:
    """Right-padded batches of random token ids; padded positions hold PAD."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(2, vocab, (4, 12), generator=g)
        lengths = torch.tensor([12, 9, 5, 12])
        mask = (torch.arange(12)[None, :] < lengths[:, None]).long()
        out.append({"input_ids": ids.masked_fill(mask == 0, PAD), "attention_mask": mask})
    return out


def _capture_inputs(model, names, batches, *, real_only=True) -> dict[str, torch.Tensor]:
    """Reference: the (tokens, in_features) inputs each named layer sees, padded positions dropped."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    current: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = [
        modules[n].register_forward_pre_hook(
            lambda mod, args, n=n: seen[n].append(
                args[0][current["mask"]] if real_only else args[0].flatten(0, 1)
            )
        )
        for n in names
    ]
    model.eval()
    with torch.no_grad():
        for batch in batches:
            current["mask"] = batch["attention_mask"].bool()
            model(**batch)
    for h in handles:
        h.remove()
    return {n: torch.cat(v).float() for n, v in seen.items()}


def _reference_wanda_mask(weight: torch.Tensor, x: torch.Tensor, sparsity: float, dim: int) -> torch.Tensor:
    """Wanda by hand in the Linear layout: |W| * ||X_j||, rows pruned to the same count."""
    w = weight.detach().float() if dim == 1 else weight.detach().float().t()  # (out, in)
    scores = w.abs() * x.norm(dim=0)[None, :]
    mask = unstructured_mask(scores, sparsity, dim=1)
    return mask if dim == 1 else mask.t()


# --------------------------------------------------------------------------------------------- magnitude


def test_magnitude_layer_scope_exact_counts_and_order(llama):
    model = copy.deepcopy(llama)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = magnitude_prune_(model, 0.6)
    assert list(masks) == list(find_prunable_modules(model))
    for name, mask in masks.items():
        w0 = before[f"{name}.weight"].abs()
        assert mask.dtype == torch.bool and mask.shape == w0.shape
        assert int((~mask).sum()) == round(0.6 * mask.numel())
        assert w0[mask].min() >= w0[~mask].max()
        weight = model.get_submodule(name).weight
        assert (weight[~mask] == 0).all() and torch.equal(weight[mask], before[f"{name}.weight"][mask])
    untouched = [n for n in before if not any(n == f"{m}.weight" for m in masks)]
    assert "lm_head.weight" in untouched and "model.embed_tokens.weight" in untouched
    assert all(torch.equal(before[n], dict(model.named_parameters())[n]) for n in untouched)


def test_magnitude_global_scope_one_threshold(llama):
    model = copy.deepcopy(llama)
    with torch.no_grad():  # give layers different scales so that one threshold prunes them unevenly
        model.model.layers[1].mlp.down_proj.weight.mul_(5.0)
    before = {n: model.get_submodule(n).weight.detach().abs().clone() for n in find_prunable_modules(model)}
    masks = magnitude_prune_(model, 0.7, scope="global")
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.7 * total)
    kept = torch.cat([before[n][m] for n, m in masks.items()])
    pruned = torch.cat([before[n][~m] for n, m in masks.items()])
    assert kept.min() >= pruned.max()
    per_layer = {n: (~m).float().mean().item() for n, m in masks.items()}
    assert per_layer["model.layers.1.mlp.down_proj"] < 0.2 < per_layer["model.layers.0.mlp.down_proj"]


def test_magnitude_row_scope_exact_per_output(gpt2):
    model = copy.deepcopy(gpt2)
    masks = magnitude_prune_(model, 0.25, scope="row")
    for name, mask in masks.items():
        assert in_features_dim(model.get_submodule(name)) == 0  # Conv1D: the input dim is 0
        assert ((~mask).sum(dim=0) == round(0.25 * mask.shape[0])).all()


def test_magnitude_nm_on_gpt2_conv1d_groups_run_along_inputs(gpt2):
    model = copy.deepcopy(gpt2)
    masks = magnitude_prune_(model, pattern="2:4")
    wrong_dim_holds = []
    for name, mask in masks.items():
        weight = model.get_submodule(name).weight  # (in, out)
        n_in, n_out = weight.shape
        nonzero = weight != 0
        assert torch.equal(nonzero, mask)
        assert (nonzero.reshape(n_in // 4, 4, n_out).sum(dim=1) == 2).all()  # every group of 4 inputs keeps 2
        wrong_dim_holds.append(bool((mask.reshape(n_in, n_out // 4, 4).sum(dim=-1) == 2).all()))
    assert not any(wrong_dim_holds)


def test_magnitude_4_8_on_llama(llama):
    model = copy.deepcopy(llama)
    masks = magnitude_prune_(model, 0.5, pattern="4:8")  # the implied sparsity may be restated
    for mask in masks.values():
        out, n_in = mask.shape
        assert (mask.reshape(out, n_in // 8, 8).sum(dim=-1) == 4).all()


# ------------------------------------------------------------------------------------------------- Wanda


def test_wanda_llama_rows_pruned_exactly(llama):
    model = copy.deepcopy(llama)
    head = model.lm_head.weight.detach().clone()
    masks = wanda_prune_(model, _batches(model.config.vocab_size), 0.5)
    assert len(masks) == 14
    for name, mask in masks.items():
        assert ((~mask).sum(dim=1) == round(0.5 * mask.shape[1])).all()
        assert torch.equal(model.get_submodule(name).weight != 0, mask)
    assert torch.equal(model.lm_head.weight, head)


def test_wanda_matches_hand_computation_and_excludes_padding(llama):
    model = copy.deepcopy(llama)
    with torch.no_grad():  # padded positions point along feature 0 only: counting them would skew its norm
        model.model.embed_tokens.weight[PAD] = 0.0
        model.model.embed_tokens.weight[PAD, 0] = 100.0
    batches = _batches(model.config.vocab_size, seed=1)
    names = list(find_prunable_modules(model))
    real = _capture_inputs(model, names, batches)
    with_pads = _capture_inputs(model, names, batches, real_only=False)
    masks = wanda_prune_(model, batches, 0.4, sequential=False)  # every layer scored on the dense model
    for name in names:
        assert torch.equal(
            masks[name], _reference_wanda_mask(llama.get_submodule(name).weight, real[name], 0.4, 1)
        )
    q0 = "model.layers.0.self_attn.q_proj"
    assert not torch.equal(
        masks[q0], _reference_wanda_mask(llama.get_submodule(q0).weight, with_pads[q0], 0.4, 1)
    )


def test_wanda_sequential_scores_each_block_on_pruned_predecessors(llama):
    batches = _batches(llama.config.vocab_size, seed=2)
    block1 = [n for n in find_prunable_modules(llama) if n.startswith("model.layers.1.")]
    # reference: prune block 0 alone, then score block 1 on the activations of that model
    ref_model = copy.deepcopy(llama)
    wanda_prune_(ref_model, batches, 0.5, include=r"layers\.0\.")
    x = _capture_inputs(ref_model, block1, batches)
    seq = wanda_prune_(copy.deepcopy(llama), batches, 0.5)
    one_pass = wanda_prune_(copy.deepcopy(llama), batches, 0.5, sequential=False)
    for name in block1:
        assert torch.equal(
            seq[name], _reference_wanda_mask(llama.get_submodule(name).weight, x[name], 0.5, 1)
        )
    assert any(not torch.equal(seq[n], one_pass[n]) for n in block1)
    assert all(torch.equal(seq[n], one_pass[n]) for n in seq if n.startswith("model.layers.0."))


def test_wanda_with_uniform_input_norms_is_per_row_magnitude(llama):
    model = copy.deepcopy(llama)
    with torch.no_grad():
        # +-1 embeddings: RMSNorm (weight 1) leaves every feature at +-1/sqrt(1+eps) for every token, so
        # the inputs of layer 0's q/k/v have identical norms over any set of tokens.
        emb = model.model.embed_tokens.weight
        emb.copy_(torch.randn(emb.shape, generator=torch.Generator().manual_seed(3)).sign())
    assert torch.equal(model.model.layers[0].input_layernorm.weight, torch.ones(64))
    magnitude = magnitude_prune_(copy.deepcopy(model), 0.5, scope="row")
    wanda = wanda_prune_(model, _batches(model.config.vocab_size, seed=3), 0.5)
    for leaf in ("q_proj", "k_proj", "v_proj"):
        name = f"model.layers.0.self_attn.{leaf}"
        assert torch.equal(wanda[name], magnitude[name])
    # where input norms differ, Wanda is not magnitude pruning
    assert not torch.equal(wanda["model.layers.0.mlp.down_proj"], magnitude["model.layers.0.mlp.down_proj"])


def test_wanda_output_error_below_magnitude_when_input_scales_differ(llama):
    model = copy.deepcopy(llama)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():  # input features spanning four orders of magnitude (outlier features)
        scales = 10 ** (torch.rand(64, generator=g) * 4 - 2)
        model.model.embed_tokens.weight.mul_(scales[None, :])
    name = "model.layers.0.self_attn.q_proj"
    batches = _batches(model.config.vocab_size, seed=4)
    x = _capture_inputs(model, [name], batches)[name]  # (tokens, 64)
    dense = model.get_submodule(name).weight.detach().clone()  # (out, in)
    errors = {}
    for method in ("wanda", "magnitude-layer", "magnitude-row"):
        pruned_model = copy.deepcopy(model)
        if method == "wanda":
            masks = wanda_prune_(pruned_model, batches, 0.5, include=re.escape(name))
        else:
            masks = magnitude_prune_(pruned_model, 0.5, scope=method.split("-")[1], include=re.escape(name))
        pruned = pruned_model.get_submodule(name).weight.detach()
        assert torch.equal(pruned != 0, masks[name])
        errors[method] = (x @ dense.t() - x @ pruned.t()).norm().item()
    assert errors["wanda"] < 0.5 * errors["magnitude-layer"]
    assert errors["wanda"] < 0.5 * errors["magnitude-row"]


def test_wanda_gpt2_conv1d_scores_along_the_input_dim(gpt2):
    model = copy.deepcopy(gpt2)
    batches = _batches(model.config.vocab_size, seed=5)
    names = list(find_prunable_modules(model))
    x = _capture_inputs(model, names, batches)
    masks = wanda_prune_(model, batches, 0.5, sequential=False)
    for name in names:
        w = gpt2.get_submodule(name).weight  # (in, out)
        assert ((~masks[name]).sum(dim=0) == w.shape[0] // 2).all()  # each output column pruned to 50%
        # the same layer as an nn.Linear (weight transposed) gives the transposed mask
        assert torch.equal(masks[name], _reference_wanda_mask(w, x[name], 0.5, dim=0))
        assert torch.equal(
            masks[name], unstructured_mask(wanda_scores(w, x[name].norm(dim=0), dim=0), 0.5, dim=0)
        )
    nm = wanda_prune_(copy.deepcopy(gpt2), batches, pattern="2:4")
    for mask in nm.values():
        n_in, n_out = mask.shape
        assert (mask.reshape(n_in // 4, 4, n_out).sum(dim=1) == 2).all()


def test_wanda_on_t5_reaches_decoder_layers_with_labels():
    model = build_tiny_model("t5", "seq2seq-lm")[0]
    batch = _batches(model.config.vocab_size, seed=6, n=1)[0]
    batch["labels"] = batch["input_ids"][:, :6].clone()
    masks = wanda_prune_(model, [batch], 0.5)
    assert len(masks) == 32 and any(n.startswith("decoder.") and "EncDecAttention" in n for n in masks)
    assert all(((~m).sum(dim=1) == m.shape[1] // 2).all() for m in masks.values())


def test_wanda_is_deterministic_in_train_mode_and_restores_it(gpt2):
    # GPT-2 has dropout: calibration must run in eval mode, then the caller's mode comes back.
    batches = _batches(gpt2.config.vocab_size, seed=7)
    runs = []
    for _ in range(2):
        model = copy.deepcopy(gpt2).train()
        runs.append(wanda_prune_(model, iter(batches), 0.5))  # an iterator is read once, used per block
        assert model.training
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])


# ------------------------------------------------------------------------------------------------ errors


def test_parse_pattern():
    assert parse_pattern("unstructured") is None and parse_pattern(" 4 : 8 ") == (4, 8)
    with pytest.raises(ValueError, match=r"pattern='2-4' is not understood.*'2:4'"):
        parse_pattern("2-4")
    with pytest.raises(ValueError, match="N:M pattern n=4, m=2 is invalid"):
        parse_pattern("4:2")
    with pytest.raises(TypeError, match="pattern must be a string"):
        parse_pattern((2, 4))


def test_magnitude_argument_errors(llama):
    with pytest.raises(ValueError, match="sparsity is required with pattern='unstructured'"):
        magnitude_prune_(llama)
    with pytest.raises(ValueError, match=r"sparsity=0.3 contradicts pattern '2:4'.*sparsity 0.5"):
        magnitude_prune_(llama, 0.3, pattern="2:4")
    with pytest.raises(ValueError, match="scope='tensor' must be 'layer', 'row' or 'global'"):
        magnitude_prune_(llama, 0.3, scope="tensor")
    with pytest.raises(ValueError, match="scope='global' cannot apply to pattern='2:4'"):
        magnitude_prune_(llama, pattern="2:4", scope="global")
    with pytest.raises(ValueError, match=r"sparsity=1.5 is outside \[0, 1\)"):
        magnitude_prune_(llama, 1.5)


def test_nm_width_checked_before_any_weight_changes():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 6), torch.nn.Linear(6, 4))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"pattern '2:4' needs .* divisible by 4.*2 \(6 inputs\)"):
        magnitude_prune_(model, pattern="2:4")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize(
    ("calibration", "error", "match"),
    [
        (None, ValueError, "calibration_batches=None: Wanda scores weights by the norms of their inputs"),
        ([], ValueError, "calibration_batches is empty"),
        (
            {"input_ids": torch.ones(1, 3, dtype=torch.long)},
            TypeError,
            r"not a single dict; wrap one batch in a list",
        ),
        (5, TypeError, "calibration_batches must be an iterable of dicts of tensors; got int"),
        ([torch.ones(1, 3)], TypeError, "calibration batch 0 must be a dict of tensors; got Tensor"),
        (
            [{"attention_mask": torch.ones(1, 3)}],
            ValueError,
            r"calibration batch 0 has keys \['attention_mask'\]",
        ),
        ([{"input_ids": [[2, 3]]}], TypeError, r"calibration batch 0\['input_ids'\] must be a torch.Tensor"),
    ],
)
def test_wanda_calibration_errors(llama, calibration, error, match):
    with pytest.raises(error, match=match):
        wanda_prune_(llama, calibration, 0.5)


def test_wanda_argument_errors(llama):
    batches = _batches(llama.config.vocab_size, n=1)
    with pytest.raises(TypeError, match="sequential must be True or False"):
        wanda_prune_(llama, batches, 0.5, sequential="yes")
    with pytest.raises(ValueError, match="sparsity is required"):
        wanda_prune_(llama, batches)
    with pytest.raises(ValueError, match="include pattern 'mlpp' matches no"):
        wanda_prune_(llama, batches, 0.5, include="mlpp")


def test_wanda_layer_that_sees_no_input():
    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 8)
            self.used = torch.nn.Linear(8, 8)
            self.unused = torch.nn.Linear(8, 8)

        def forward(self, input_ids, attention_mask=None):
            return self.used(self.embed(input_ids))

    batches = [{"input_ids": torch.randint(0, 10, (2, 5))}]
    with pytest.raises(ValueError, match=r"layers unused received no input during the calibration"):
        wanda_prune_(Toy(), batches, 0.5, exclude=DEFAULT_EXCLUDE)
    assert list(wanda_prune_(Toy(), batches, 0.5, include="^used$")) == ["used"]


def test_wanda_sees_inputs_passed_by_keyword():
    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 8)
            self.lin = torch.nn.Linear(8, 8)

        def forward(self, input_ids, attention_mask=None):
            return self.lin(input=self.embed(input_ids))

    g = torch.Generator().manual_seed(8)
    model = Toy()
    ids = torch.randint(0, 10, (2, 5), generator=g)
    x = model.embed(ids).detach().reshape(-1, 8)
    masks = wanda_prune_(copy.deepcopy(model), [{"input_ids": ids}], 0.5)
    assert torch.equal(masks["lin"], _reference_wanda_mask(model.lin.weight, x, 0.5, 1))
