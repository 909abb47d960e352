"""SparseGPT: the OBS update against hand computations, the reconstruction error against magnitude and Wanda
on the same layer and data, exact sparsity and N:M structure, and whole tiny models (Llama, GPT-2 Conv1D)."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from hf_lite.pruning import (
    DEFAULT_EXCLUDE,
    check_sparsegpt_options,
    find_expert_weights,
    find_moe_routers,
    magnitude_prune_,
    magnitude_scores,
    nm_mask,
    reconstruction_error,
    sparsegpt_prune_,
    sparsegpt_update,
    unstructured_mask,
    wanda_prune_,
    wanda_scores,
)
from hf_lite.testing import build_tiny_model

PAD = 1  # the tiny tokenizer's <|endoftext|>, the pad token of the tiny configs


def _layer(inn: int = 64, out: int = 32, tokens: int = 512, seed: int = 0):
    """A weight ``(out, in)`` and correlated inputs ``X`` ``(in, tokens)`` with a few outlier features."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(inn) + 0.3 * torch.randn(inn, inn, generator=g)
    x = mix @ torch.randn(inn, tokens, generator=g)  # (in, tokens)
    x[:4] *= 10.0  # outlier features, as in pretrained LLMs
    return torch.randn(out, inn, generator=g), x


def _damped(h: torch.Tensor, dampening: float) -> torch.Tensor:
    return h + dampening * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)


# ----------------------------------------------------------------------------------------------------------
# the maths on one matrix


@pytest.mark.parametrize("q", [0, 3])
def test_one_pruned_column_matches_obs_closed_form(q):
    # One weight pruned per row (sparsity 1/in), all columns in one block: column q is the cheapest in every
    # row, so each row loses w_q and the columns j >= q absorb it by OBS over the not-yet-processed columns:
    # delta = -(w_q / [Hq^-1]_qq) Hq^-1[q, :], Hq = H[q:, q:] (the whole H for q = 0); columns < q stay.
    w, x = _layer(inn=8, out=3, tokens=40)
    w = w.double()
    w[:, q] = 1e-3 * torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    h = 2 * x.double() @ x.double().T
    new, mask = sparsegpt_update(w, h, 1 / 8, block_size=8, dampening=0.01)

    hinv = torch.linalg.inv(_damped(h, 0.01)[q:, q:])  # (in - q, in - q)
    expected = w.clone()
    expected[:, q:] -= (w[:, q] / hinv[0, 0]).unsqueeze(1) * hinv[0].unsqueeze(0)
    assert (~mask).nonzero()[:, 1].tolist() == [q, q, q]
    assert torch.all(new[:, q] == 0)
    torch.testing.assert_close(new, expected, rtol=1e-4, atol=1e-6)
    if q == 0:  # the textbook OBS update: w - w_q / [H^-1]_qq * H^-1[:, q]
        full = torch.linalg.inv(_damped(h, 0.01))
        torch.testing.assert_close(
            new, w - torch.outer(w[:, 0] / full[0, 0], full[:, 0]), rtol=1e-4, atol=1e-6
        )


@pytest.mark.parametrize(("sparsity", "nm"), [(0.5, None), (0.7, None), (None, (2, 4)), (None, (4, 8))])
def test_reconstruction_error_below_magnitude_and_wanda(sparsity, nm):
    w, x = _layer()
    new, mask = sparsegpt_update(w, 2 * x @ x.T, sparsity, nm=nm, block_size=16)
    s = 1 - nm[0] / nm[1] if nm else sparsity

    def baseline(scores):
        return nm_mask(scores, *nm, dim=1) if nm else unstructured_mask(scores, s, dim=1)

    err = reconstruction_error(w, new, x)
    err_mag = reconstruction_error(w, w * baseline(magnitude_scores(w)), x)
    err_wanda = reconstruction_error(w, w * baseline(wanda_scores(w, x.norm(dim=1), dim=1)), x)
    # measured (vs magnitude / Wanda): 0.14 / 0.71 at 50%, 0.17 / 0.80 at 70%, 0.28 / 0.28 at 2:4, 0.11 / 0.51 at 4:8
    assert err < 0.5 * err_mag
    assert err < 0.9 * err_wanda
    # and below the same mask without the weight update
    assert err < reconstruction_error(w, w * mask, x)


@pytest.mark.parametrize(("inn", "block_size", "sparsity"), [(64, 16, 0.5), (50, 16, 0.3), (50, 128, 0.62)])
def test_exact_sparsity_per_row(inn, block_size, sparsity):
    w, x = _layer(inn=inn, out=7)
    new, mask = sparsegpt_update(w, 2 * x @ x.T, sparsity, block_size=block_size)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert (~mask).sum(dim=1).tolist() == [round(sparsity * inn)] * 7
    assert torch.all(new[~mask] == 0)
    assert int((new == 0).sum()) == int((~mask).sum())  # kept weights are not zero (random data)


@pytest.mark.parametrize("nm", [(2, 4), (4, 8), (1, 4)])
def test_exact_nm_structure(nm):
    w, x = _layer(inn=32, out=5)
    new, mask = sparsegpt_update(w, 2 * x @ x.T, nm=nm, block_size=8)
    groups = mask.reshape(5, 32 // nm[1], nm[1])
    assert torch.all(groups.sum(dim=-1) == nm[0])
    assert torch.all(new[~mask] == 0)


def test_nm_result_does_not_depend_on_block_size():
    # N:M masks are chosen group by group when the walk reaches them, so lazy batching is exact: the result
    # with blocks of 4 columns equals the one with a single block.
    w, x = _layer(inn=32, out=5)
    h = 2 * x @ x.T
    new4, mask4 = sparsegpt_update(w, h, nm=(2, 4), block_size=4)
    new32, mask32 = sparsegpt_update(w, h, nm=(2, 4), block_size=32)
    assert torch.equal(mask4, mask32)
    torch.testing.assert_close(new4, new32, rtol=1e-4, atol=1e-4)


def test_deterministic_dtype_and_zero_sparsity():
    w, x = _layer(inn=32, out=4)
    h = 2 * x @ x.T
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a = sparsegpt_update(w, h, 0.5, block_size=8)  # the column loop runs on one CPU thread ...
        assert torch.get_num_threads() == 2  # ... and the caller's thread count is restored
    finally:
        torch.set_num_threads(threads)
    b = sparsegpt_update(w, h, 0.5, block_size=8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    new, mask = sparsegpt_update(w, h, 0.0)
    assert torch.equal(new, w) and bool(mask.all())
    new16, _ = sparsegpt_update(w.bfloat16(), h, 0.5)
    assert new16.dtype == torch.bfloat16


def test_dead_inputs_pruned_first_without_nan():
    w, x = _layer(inn=16, out=4)
    x[[2, 9]] = 0.0  # inputs never active on the calibration tokens: H_jj = 0
    new, mask = sparsegpt_update(w, 2 * x @ x.T, 0.25, dampening=0.0)
    assert bool(torch.isfinite(new).all())
    assert not bool(mask[:, [2, 9]].any())  # free to prune: pruned before anything else
    torch.testing.assert_close(new, sparsegpt_update(w, 2 * x @ x.T, 0.25, dampening=0.0)[0])


def test_update_errors():
    w, x = _layer(inn=16, out=4)
    h = 2 * x @ x.T
    with pytest.raises(ValueError, match=r"block_size=0 must be >= 1"):
        sparsegpt_update(w, h, 0.5, block_size=0)
    with pytest.raises(TypeError, match=r"block_size must be an int"):
        sparsegpt_update(w, h, 0.5, block_size=8.0)
    with pytest.raises(ValueError, match=r"block_size=6 is not a multiple of m=4"):
        sparsegpt_update(w, h, nm=(2, 4), block_size=6)
    with pytest.raises(ValueError, match=r"dampening=-0.1 must be a finite number >= 0"):
        sparsegpt_update(w, h, 0.5, dampening=-0.1)
    with pytest.raises(ValueError, match=r"dampening=nan"):
        sparsegpt_update(w, h, 0.5, dampening=float("nan"))
    with pytest.raises(TypeError, match=r"dampening must be a float"):
        sparsegpt_update(w, h, 0.5, dampening="0.01")
    with pytest.raises(ValueError, match=r"sparsity=1.5 is outside \[0, 1\)"):
        sparsegpt_update(w, h, 1.5)
    with pytest.raises(ValueError, match=r"sparsity is required"):
        sparsegpt_update(w, h)
    with pytest.raises(ValueError, match=r"sparsity=0.3 contradicts pattern '2:4'"):
        sparsegpt_update(w, h, 0.3, nm=(2, 4))
    with pytest.raises(ValueError, match=r"N:M pattern n=4, m=4 is invalid"):
        sparsegpt_update(w, h, nm=(4, 4))
    with pytest.raises(ValueError, match=r"nm=\(2, 3\) needs a number of input features divisible by 3"):
        sparsegpt_update(w, h, nm=(2, 3), block_size=3)
    with pytest.raises(ValueError, match=r"hessian has shape \(8, 8\) but weight \(4, 16\) has 16 input"):
        sparsegpt_update(w, h[:8, :8], 0.5)
    with pytest.raises(ValueError, match=r"weight must be a 2-D float tensor"):
        sparsegpt_update(w[0], h, 0.5)
    with pytest.raises(TypeError, match=r"weight and hessian must be torch.Tensors"):
        sparsegpt_update(w.tolist(), h, 0.5)
    with pytest.raises(ValueError, match=r"hessian contains NaN or inf"):
        sparsegpt_update(w, h * float("nan"), 0.5)
    rank_deficient = 2 * x[:, :3] @ x[:, :3].T  # 3 tokens, 16 inputs
    with pytest.raises(ValueError, match=r"not positive definite with dampening=0.*Raise dampening"):
        sparsegpt_update(w, rank_deficient, 0.5, dampening=0.0)
    sparsegpt_update(w, rank_deficient, 0.5, dampening=0.01)  # dampening makes it invertible


def test_check_sparsegpt_options_resolves_and_refuses():
    assert check_sparsegpt_options(0.6) == (0.6, None, 128, 0.01)
    assert check_sparsegpt_options(pattern="4:8", block_size=64, dampening=0) == (0.5, (4, 8), 64, 0.0)
    with pytest.raises(ValueError, match=r"block_size=12 is not a multiple of m=8 .* Use block_size=128"):
        check_sparsegpt_options(pattern="4:8", block_size=12)
    with pytest.raises(ValueError, match=r"sparsity is required with pattern='unstructured'"):
        check_sparsegpt_options(block_size=64)
    with pytest.raises(ValueError, match=r"dampening=inf must be a finite number"):
        check_sparsegpt_options(0.5, dampening=float("inf"))


# ----------------------------------------------------------------------------------------------------------
# whole models


@pytest.fixture(scope="module")
def models():
    return {family: build_tiny_model(family)[0] for family in ("llama", "gpt2")}


def _batches(vocab: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Two right-padded batches of random token ids (padded positions hold PAD)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2):
        ids = torch.randint(2, vocab, (4, 16), generator=g)
        mask = (torch.arange(16)[None, :] < torch.tensor([16, 11, 6, 16])[:, None]).long()
        out.append({"input_ids": ids.masked_fill(mask == 0, PAD), "attention_mask": mask})
    return out


@torch.no_grad()
def _output_error(model, dense, batches) -> float:
    """Squared error of the last hidden states against the dense model's, over real tokens."""
    total = 0.0
    for batch in batches:
        real = batch["attention_mask"].bool()
        a = model(**batch, output_hidden_states=True).hidden_states[-1][real]
        b = dense(**batch, output_hidden_states=True).hidden_states[-1][real]
        total += float((a - b).pow(2).sum())
    return total


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_model_output_error_below_magnitude_and_wanda(models, family, pattern):
    dense = models[family].eval()
    batches = _batches(dense.config.vocab_size)
    sparsity = 0.5 if pattern == "unstructured" else None
    pruned = copy.deepcopy(dense).train()
    masks = sparsegpt_prune_(pruned, batches, sparsity, pattern=pattern, block_size=32)
    magnitude = copy.deepcopy(dense)
    magnitude_prune_(magnitude, sparsity, pattern=pattern, scope="row")
    assert pruned.training  # mode restored
    err, err_mag = _output_error(pruned.eval(), dense, batches), _output_error(magnitude, dense, batches)
    assert err < 0.7 * err_mag, (err, err_mag)  # measured: 0.32 / 0.33 (llama), 0.51 / 0.38 (gpt2)
    wanda = copy.deepcopy(dense)
    wanda_prune_(wanda, batches, sparsity, pattern=pattern)
    assert err < 0.7 * _output_error(
        wanda, dense, batches
    )  # measured: 0.35 / 0.36 (llama), 0.54 / 0.42 (gpt2)
    modules = dict(pruned.named_modules())
    for name, mask in masks.items():
        weight = modules[name].weight
        assert mask.shape == weight.shape
        assert torch.all(weight[~mask] == 0)
        in_dim = 0 if family == "gpt2" else 1  # Conv1D weights are (in, out)
        assert torch.all((~mask).sum(dim=in_dim) == weight.shape[in_dim] // 2)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_first_block_matches_update_on_hooked_inputs(models, family):
    # Reference: the real-token inputs of block 0's layers in the dense model, gathered by our own hooks; each
    # layer must come out as sparsegpt_update(W, 2 X^T X / tokens) of them (Conv1D weights transposed).
    dense = models[family]
    batches = _batches(dense.config.vocab_size)
    block = "model.layers.0." if family == "llama" else "transformer.h.0."
    layers = {
        n: m
        for n, m in dense.named_modules()
        if n.startswith(block) and hasattr(m, "weight") and m.weight.dim() == 2
    }
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in layers if "ln" not in n and "norm" not in n}
    state = {}
    handles = [
        layers[n].register_forward_pre_hook(lambda mod, args, n=n: seen[n].append(args[0][state["mask"]]))
        for n in seen
    ]
    with torch.no_grad():
        for batch in batches:
            state["mask"] = batch["attention_mask"].bool()
            dense(**batch, use_cache=False)
    for handle in handles:
        handle.remove()
    pruned = copy.deepcopy(dense)
    masks = sparsegpt_prune_(pruned, batches, 0.5, block_size=16)
    modules = dict(pruned.named_modules())
    assert len(seen) in (4, 7)  # gpt2: c_attn, c_proj, c_fc, mlp.c_proj; llama: q k v o gate up down
    for name, chunks in seen.items():
        x = torch.cat(chunks).double()  # (tokens, in)
        conv1d = family == "gpt2"
        weight = layers[name].weight.T if conv1d else layers[name].weight  # (out, in)
        new, keep = sparsegpt_update(weight, 2 * x.T @ x / x.shape[0], 0.5, block_size=16)
        assert torch.equal(masks[name], keep.T if conv1d else keep), name
        torch.testing.assert_close(modules[name].weight, new.T if conv1d else new, rtol=1e-3, atol=1e-5)


def test_padded_tokens_do_not_count(models):
    # The same real tokens, once right-padded in one batch and once as separate unpadded batches: the same
    # Hessians, so the same masks and weights.
    dense = models["llama"]
    padded = _batches(dense.config.vocab_size)[:1]
    lengths = padded[0]["attention_mask"].sum(dim=1).tolist()
    unpadded = [{"input_ids": padded[0]["input_ids"][i : i + 1, :n]} for i, n in enumerate(lengths)]
    a, b = copy.deepcopy(dense), copy.deepcopy(dense)
    masks_a = sparsegpt_prune_(a, padded, 0.5)
    masks_b = sparsegpt_prune_(b, unpadded, 0.5)
    assert all(torch.equal(masks_a[n], masks_b[n]) for n in masks_a)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-3, atol=1e-4, msg=name)


def test_sequential_false_prunes_from_the_dense_model(models):
    dense = models["llama"]
    batches = _batches(dense.config.vocab_size)
    a, b = copy.deepcopy(dense), copy.deepcopy(dense)
    masks_a = sparsegpt_prune_(a, batches, 0.5, sequential=False)
    masks_b = sparsegpt_prune_(b, batches, 0.5)
    first = [n for n in masks_a if ".layers.0." in n]
    later = [n for n in masks_a if ".layers.1." in n]
    assert all(torch.equal(masks_a[n], masks_b[n]) for n in first)  # block 0 sees the same inputs
    assert not all(torch.equal(masks_a[n], masks_b[n]) for n in later)  # block 1 sees pruned vs dense ones


def test_prune_errors(models):
    model = copy.deepcopy(models["llama"])
    batches = _batches(model.config.vocab_size)
    with pytest.raises(ValueError, match=r"calibration_batches=None: SparseGPT reconstructs"):
        sparsegpt_prune_(model, None, 0.5)
    with pytest.raises(ValueError, match=r"calibration_batches=\[\]"):
        sparsegpt_prune_(model, iter([]), 0.5)
    with pytest.raises(ValueError, match=r"pattern='bad' is not understood"):
        sparsegpt_prune_(model, batches, 0.5, pattern="bad")
    with pytest.raises(ValueError, match=r"block_size=-1 must be >= 1"):
        sparsegpt_prune_(model, batches, 0.5, block_size=-1)
    with pytest.raises(ValueError, match=r"dampening=-1 must be"):
        sparsegpt_prune_(model, batches, 0.5, dampening=-1)
    with pytest.raises(ValueError, match=r"sparsity=2 is outside"):
        sparsegpt_prune_(model, batches, 2)
    with pytest.raises(TypeError, match=r"sequential must be True or False"):
        sparsegpt_prune_(model, batches, 0.5, sequential=1)
    with pytest.raises(ValueError, match=r"layer model.layers.0.self_attn.q_proj: the calibration Hessian"):
        one_token = [{"input_ids": torch.tensor([[5]])}]
        sparsegpt_prune_(model, one_token, 0.5, dampening=0.0)


# ----------------------------------------------------------------------------------------------------------
# MoE experts


def _mixtral(top_k: int = 2):
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    config = MixtralConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_local_experts=4,
        num_experts_per_tok=top_k,
    )
    return MixtralForCausalLM(config).eval()


def _gpt_oss():
    """Experts stored transposed, (E, in, out), with biases."""
    from transformers import GptOssConfig, GptOssForCausalLM

    torch.manual_seed(0)
    config = GptOssConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        num_local_experts=4,
        num_experts_per_tok=2,
    )
    model = GptOssForCausalLM(config).eval()
    with torch.no_grad():  # zero-initialised routers and biases: give them real values
        for module in (
            *find_moe_routers(model).values(),
            *(e.module for e in find_expert_weights(model).values()),
        ):
            for param in module.parameters():
                param.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("build", [_mixtral, _gpt_oss])
def test_moe_experts_pruned_per_expert_below_magnitude(build):
    dense = build()
    batches = _batches(64)
    pruned, magnitude = copy.deepcopy(dense), copy.deepcopy(dense)
    masks = sparsegpt_prune_(pruned, batches, 0.5, block_size=8)
    magnitude_prune_(magnitude, 0.5, scope="row")
    experts = find_expert_weights(pruned)
    assert set(experts) <= set(masks) and not set(find_moe_routers(pruned)) & set(masks)
    for name, expert in experts.items():
        weight = expert.weight
        assert torch.all(weight[~masks[name]] == 0)
        zeros = (~masks[name]).sum(dim=expert.in_dim)  # per expert and output row
        assert torch.all(zeros == weight.shape[expert.in_dim] // 2)
    err, err_mag = _output_error(pruned, dense, batches), _output_error(magnitude, dense, batches)
    assert err < 0.9 * err_mag, (err, err_mag)  # measured: 0.73 (Mixtral), 0.77 (GPT-OSS)


def test_moe_expert_hessians_from_routed_tokens():
    # Reference: block 0's experts see the dense model's inputs; each expert's Hessian is 2 X_e^T X_e / n_e over
    # the real tokens routed to it (down_proj: act(gate) * up of them), gathered here by our own hook.
    model = _mixtral()
    batches = _batches(64)
    experts = model.model.layers[0].mlp.experts
    inputs: dict[str, list[list[torch.Tensor]]] = {
        "gate_up_proj": [[] for _ in range(4)],
        "down_proj": [[] for _ in range(4)],
    }
    state = {}

    def hook(module, args):
        hidden, index = args[0], args[1]  # (T, hidden), (T, k)
        for e in range(4):
            x = hidden[state["mask"].reshape(-1) & (index == e).any(-1)].float()  # (tokens_e, hidden)
            gate, up = torch.nn.functional.linear(x, module.gate_up_proj[e]).chunk(2, dim=-1)
            inputs["gate_up_proj"][e].append(x)
            inputs["down_proj"][e].append(module.act_fn(gate) * up)  # (tokens_e, ffn)

    handle = experts.register_forward_pre_hook(hook)
    with torch.no_grad():
        for batch in batches:
            state["mask"] = batch["attention_mask"].bool()
            model(**batch, use_cache=False)
    handle.remove()
    before = {attr: getattr(experts, attr).detach().clone() for attr in inputs}
    masks = sparsegpt_prune_(model, batches, 0.5, block_size=8)
    for attr, per_expert in inputs.items():
        for e, chunks in enumerate(per_expert):
            x = torch.cat(chunks)  # (tokens_e, in)
            assert x.shape[0] > 0, "every expert should see tokens in this test"
            new, keep = sparsegpt_update(
                before[attr][e], 2 * x.T.double() @ x.double() / x.shape[0], 0.5, block_size=8
            )
            assert torch.equal(masks[f"model.layers.0.mlp.experts.{attr}"][e], keep)
            torch.testing.assert_close(getattr(experts, attr)[e], new, rtol=1e-3, atol=1e-5)


def test_moe_unrouted_expert_pruned_by_magnitude(caplog):
    model = _mixtral(top_k=1)
    batch = {"input_ids": torch.tensor([[5]]), "attention_mask": torch.tensor([[1]])}  # one token: one expert
    weights = {n: e.weight.detach().clone() for n, e in find_expert_weights(model).items()}
    with caplog.at_level(logging.WARNING, logger="hf_lite.pruning.sparsegpt"):
        masks = sparsegpt_prune_(model, [batch], 0.5, dampening=0.1)
    assert "no calibration token was routed" in caplog.text
    for name, expert in find_expert_weights(model).items():
        magnitude = unstructured_mask(weights[name].abs(), 0.5, dim=2)
        same = [torch.equal(masks[name][e], magnitude[e]) for e in range(4)]
        assert sum(same) >= 3  # the three unrouted experts: magnitude per row
        unchanged = [torch.equal(expert.weight[e], weights[name][e] * magnitude[e]) for e in range(4)]
        assert sum(unchanged) >= 3  # and no update (H = I)


def test_moe_experts_excluded():
    model = _mixtral()
    masks = sparsegpt_prune_(model, _batches(64), 0.5, exclude=[*DEFAULT_EXCLUDE, "experts"])
    assert masks and not any("experts" in n for n in masks)


def test_layers_and_experts_that_see_no_input():
    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 8)
            self.used = torch.nn.Linear(8, 8)
            self.unused = torch.nn.Linear(8, 8)
            self.experts = torch.nn.Module()
            self.experts.down_proj = torch.nn.Parameter(torch.randn(4, 8, 8))  # never called

        def forward(self, input_ids, attention_mask=None):
            return self.used(self.embed(input_ids))

    batches = [{"input_ids": torch.randint(0, 10, (2, 5))}]
    with pytest.raises(ValueError, match=r"layers unused received no input .* SparseGPT has no Hessian"):
        sparsegpt_prune_(Toy(), batches, 0.5, exclude="experts")
    with pytest.raises(ValueError, match=r"expert weights experts.down_proj received no input .* no Hessian"):
        sparsegpt_prune_(Toy(), batches, 0.5, include=["^used", "experts"])


def test_expert_hessian_error_names_the_expert_weight():
    model = _mixtral(top_k=1)
    one_token = [{"input_ids": torch.tensor([[5]]), "attention_mask": torch.tensor([[1]])}]
    with pytest.raises(
        ValueError, match=r"expert weight model.layers.0.mlp.experts.gate_up_proj: .*dampening=0"
    ):
        sparsegpt_prune_(model, one_token, 0.5, include="experts", dampening=0.0)
