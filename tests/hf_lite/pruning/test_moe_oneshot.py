"""One-shot magnitude and Wanda pruning of MoE models (Mixtral, Qwen2-MoE, tiny configs built here): the
experts' 3-D weights are pruned per expert and per output row, the routers stay dense, the report says so,
and the pruned checkpoint reloads with the stock class as the same model."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GptOssConfig,
    GptOssForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
)

from hf_lite.pruning.experts import (
    ExpertInputNormCollector,
    expert_down_input,
    expert_wanda_scores,
    find_expert_weights,
    find_moe_routers,
)
from hf_lite.pruning.masks import pruned_count, unstructured_mask
from hf_lite.pruning.oneshot import magnitude_prune_, wanda_prune_
from hf_lite.pruning.report import sparsity_report
from hf_lite.pruning.targets import find_prunable_modules, find_prunable_targets
from hf_lite.testing import build_tiny_model

VOCAB = 64


def _mixtral(top_k: int = 2) -> MixtralForCausalLM:
    torch.manual_seed(0)
    config = MixtralConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_local_experts=4,
        num_experts_per_tok=top_k,
    )
    return MixtralForCausalLM(config).eval()


def _qwen2_moe() -> Qwen2MoeForCausalLM:
    torch.manual_seed(0)
    config = Qwen2MoeConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        moe_intermediate_size=8,
        shared_expert_intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_experts=4,
        num_experts_per_tok=2,
    )
    model = Qwen2MoeForCausalLM(config).eval()
    with torch.no_grad():  # Qwen2-MoE initialises its routers to zero: give them real weights
        for router in find_moe_routers(model).values():
            router.weight.normal_(0, 0.5)
    return model


def _gpt_oss() -> GptOssForCausalLM:
    """Experts stored transposed, (E, in, out), with biases and an interleaved, clamped SwiGLU."""
    torch.manual_seed(0)
    config = GptOssConfig(
        vocab_size=VOCAB,
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


BUILDERS = {"mixtral": _mixtral, "qwen2_moe": _qwen2_moe}
ROUTERS = {
    "mixtral": ["model.layers.0.mlp.gate", "model.layers.1.mlp.gate"],
    "qwen2_moe": [f"model.layers.{i}.mlp.{n}" for i in range(2) for n in ("gate", "shared_expert_gate")],
}


def _batches(n: int = 2, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(2, VOCAB, (2, 10), generator=g)
        mask = torch.ones_like(ids)
        mask[1, 7:] = 0  # right padding on the second row
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def test_discovery_finds_expert_weights_and_routers():
    for family, build in BUILDERS.items():
        model = build()
        experts = find_expert_weights(model)
        assert sorted(experts) == sorted(
            f"model.layers.{i}.mlp.experts.{a}" for i in range(2) for a in ("gate_up_proj", "down_proj")
        )
        assert all(e.in_dim == 2 and e.num_experts == 4 for e in experts.values())
        assert sorted(find_moe_routers(model)) == sorted(ROUTERS[family])
    llama = build_tiny_model("llama")[0]
    assert find_expert_weights(llama) == {} and find_moe_routers(llama) == {}
    assert find_prunable_targets(llama)[0].keys() == find_prunable_modules(llama).keys()


def test_routers_are_not_prunable_unless_named():
    model = _qwen2_moe()
    assert not any("shared_expert_gate" in n for n in find_prunable_modules(model))
    named = find_prunable_modules(model, include=r"shared_expert_gate")
    assert list(named) == ["model.layers.0.mlp.shared_expert_gate", "model.layers.1.mlp.shared_expert_gate"]
    layers, experts = find_prunable_targets(model, include=r"experts")
    assert layers == {} and len(experts) == 4
    with pytest.raises(
        ValueError, match=r"include pattern 'nope' matches no Linear/Conv1D layer or MoE expert"
    ):
        find_prunable_targets(model, include="nope")


@pytest.mark.parametrize("family", list(BUILDERS))
@pytest.mark.parametrize("scope", ["row", "layer"])
def test_magnitude_prunes_each_expert_and_keeps_routers(family, scope):
    model = BUILDERS[family]()
    routers = {n: copy.deepcopy(m.state_dict()) for n, m in find_moe_routers(model).items()}
    before = {n: e.weight.detach().clone() for n, e in find_expert_weights(model).items()}
    masks = magnitude_prune_(model, 0.5, scope=scope)
    for name, expert in find_expert_weights(model).items():
        weight = expert.weight.detach()  # (E, out, in)
        assert masks[name].shape == weight.shape
        assert torch.equal(weight == 0, ~masks[name])
        if scope == "row":  # every output row of every expert: exactly round(0.5 * in) zeros
            assert ((weight == 0).sum(dim=2) == pruned_count(weight.shape[2], 0.5)).all()
        else:  # every expert's matrix on its own, like one Linear layer
            per_expert = (weight == 0).reshape(weight.shape[0], -1).sum(dim=1)
            assert (per_expert == pruned_count(weight[0].numel(), 0.5)).all()
        # the kept weights are the largest of their ranking group
        expected = unstructured_mask(before[name].abs(), 0.5, dim=2) if scope == "row" else None
        if expected is not None:
            assert torch.equal(masks[name], expected)
    for name, router in find_moe_routers(model).items():
        for key, value in router.state_dict().items():
            assert torch.equal(value, routers[name][key]), f"router {name}.{key} changed"
        assert name not in masks


def test_magnitude_nm_and_global_cover_experts():
    model = _mixtral()
    masks = magnitude_prune_(model, pattern="2:4")
    for name in find_expert_weights(model):
        groups = masks[name].reshape(*masks[name].shape[:2], -1, 4)  # (E, out, in/4, 4)
        assert (groups.sum(dim=-1) == 2).all()
    model = _mixtral()
    masks = magnitude_prune_(model, 0.3, scope="global")
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == pruned_count(total, 0.3)
    assert set(find_expert_weights(model)) <= set(masks)


def _reference_expert_norms(model, batches, block: int):
    """||X_e,j||_2 of one MoE block's experts, gathered by our own hook and the eager Mixtral formulas."""
    experts = model.model.layers[block].mlp.experts
    sq_up = torch.zeros(4, experts.gate_up_proj.shape[2])
    sq_down = torch.zeros(4, experts.down_proj.shape[2])
    state = {}

    def hook(module, args):
        hidden, index = args[0], args[1]  # (T, hidden), (T, k)
        real = state["mask"].reshape(-1)
        for e in range(4):
            x = hidden[real & (index == e).any(-1)].float()  # (tokens_e, hidden)
            sq_up[e] += (x**2).sum(0)
            gate, up = torch.nn.functional.linear(x, module.gate_up_proj[e]).chunk(2, dim=-1)
            h = module.act_fn(gate) * up  # (tokens_e, ffn)
            sq_down[e] += (h**2).sum(0)

    handle = experts.register_forward_pre_hook(hook)
    with torch.no_grad():
        for batch in batches:
            state["mask"] = batch["attention_mask"].bool()
            model(**batch, use_cache=False)
    handle.remove()
    return sq_up.sqrt(), sq_down.sqrt()


def test_wanda_expert_scores_match_formula():
    model = _mixtral()
    batches = _batches()
    norms = {b: _reference_expert_norms(model, batches, b) for b in range(2)}
    weights = {n: e.weight.detach().clone() for n, e in find_expert_weights(model).items()}
    masks = wanda_prune_(model, batches, 0.5, sequential=False)
    for b in range(2):
        for attr, norm in zip(("gate_up_proj", "down_proj"), norms[b], strict=True):
            name = f"model.layers.{b}.mlp.experts.{attr}"
            w = weights[name]  # (E, out, in)
            assert (norm > 0).all(), "every expert should see tokens in this test"
            scores = w.abs() * norm[:, None, :]  # |W[e]_ij| * ||X_e,j||
            assert torch.allclose(expert_wanda_scores(w, norm, 2), scores)
            transposed = expert_wanda_scores(w.transpose(1, 2), norm, 1)  # (E, in, out) storage
            assert torch.allclose(transposed, scores.transpose(1, 2))
            assert torch.equal(masks[name], unstructured_mask(scores, 0.5, dim=2))
            zeros = (find_expert_weights(model)[name].weight == 0).sum(dim=2)
            assert (zeros == pruned_count(w.shape[2], 0.5)).all()
    assert not any(n in masks for n in find_moe_routers(model))


def test_wanda_unrouted_expert_falls_back_to_magnitude(caplog):
    model = _mixtral(top_k=1)
    batch = {"input_ids": torch.tensor([[5]]), "attention_mask": torch.tensor([[1]])}  # one token: one expert
    weights = {n: e.weight.detach().clone() for n, e in find_expert_weights(model).items()}
    with caplog.at_level(logging.WARNING, logger="hf_lite.pruning.oneshot"):
        masks = wanda_prune_(model, [batch], 0.5)
    assert "no calibration token was routed" in caplog.text
    for name, w in weights.items():
        magnitude = unstructured_mask(w.abs(), 0.5, dim=2)
        same = [torch.equal(masks[name][e], magnitude[e]) for e in range(4)]
        assert sum(same) >= 3  # the three unrouted experts are ranked by magnitude


@pytest.mark.parametrize("family", list(BUILDERS))
def test_pruned_moe_reloads_with_stock_class(family, tmp_path):
    model = BUILDERS[family]()
    wanda_prune_(model, _batches(), 0.5, pattern="2:4")
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    batch = _batches(1, seed=3)[0]
    with torch.no_grad():
        a = model(**batch).logits
        b = reloaded(**batch).logits
    assert torch.allclose(a, b, atol=1e-5, rtol=0)
    for name, expert in find_expert_weights(reloaded).items():
        assert torch.equal(expert.weight == 0, find_expert_weights(model)[name].weight == 0)
        assert float((expert.weight == 0).float().mean()) == 0.5


def test_report_counts_experts_and_names_dense_routers():
    model = _qwen2_moe()
    masks = magnitude_prune_(model, 0.5)
    report = sparsity_report(model, masks)
    unmasked = sparsity_report(model)
    expert_total = sum(e.weight.numel() for e in find_expert_weights(model).values())
    assert report.targeted_total == sum(m.numel() for m in masks.values())
    assert unmasked.targeted_total == report.targeted_total
    assert report.targeted_total > expert_total > 0
    assert report.targeted_sparsity == 0.5
    for name in find_expert_weights(model):
        assert report.layers[name].sparsity == 0.5 and report.layers[name].masked == report.layers[name].zeros
    routers = find_moe_routers(model)
    assert sum(report.dense_routers.values()) == 2 * (4 * 16) + 2 * (
        1 * 16
    )  # gate (E, hidden), shared gate (1, hidden)
    assert report.dense_routers == {n: sum(p.numel() for p in r.parameters()) for n, r in routers.items()}
    text = report.to_markdown()
    assert (
        "MoE routers kept dense (4, 160 parameters): model.layers.*.mlp.gate, model.layers.*.mlp.shared_expert_gate"
        in text
    )
    assert report.to_dict()["dense_routers"] == report.dense_routers
    assert sparsity_report(build_tiny_model("llama")[0]).dense_routers == {}


def test_expert_errors():
    model = _mixtral()
    experts = find_expert_weights(model)
    w = experts["model.layers.0.mlp.experts.down_proj"].weight
    with pytest.raises(ValueError, match=r"weight must be a 3-D expert weight with in_dim 1 or 2"):
        expert_wanda_scores(w[0], torch.ones(4, 32), 2)
    with pytest.raises(ValueError, match=r"input_norms has shape \(4, 16\) but weight .* needs \(4, 32\)"):
        expert_wanda_scores(w, torch.ones(4, 16), 2)
    collector = ExpertInputNormCollector(experts)
    with pytest.raises(ValueError, match=r"received no input during the calibration forward passes"):
        collector.norms()
    module = model.model.layers[0].mlp.experts
    with (
        collector,
        pytest.raises(
            ValueError, match=r"is not called as experts\(hidden_states, top_k_index.* Use magnitude_prune_"
        ),
    ):
        module(hidden_states=torch.zeros(3, 16))


@pytest.mark.parametrize("build", [_mixtral, _qwen2_moe, _gpt_oss])
def test_expert_down_input_matches_the_module_forward(build):
    """Routing every token to expert e with weight 1, the module's output is down_proj[e] applied to
    expert_down_input (plus the bias): so Wanda's down_proj norms are taken on the real inputs."""
    model = build()
    module = next(iter(find_expert_weights(model).values())).module
    x = torch.randn(5, 16)  # (tokens, hidden)
    for e in range(4):
        with torch.no_grad():
            out = module(x, torch.full((5, 1), e), torch.ones(5, 1))  # (tokens, hidden)
        h = expert_down_input(module, e, x)  # (tokens, ffn)
        down = module.down_proj[e].detach()
        expected = h @ down if module.is_transposed else h @ down.T
        if getattr(module, "down_proj_bias", None) is not None:
            expected = expected + module.down_proj_bias[e].detach()
        assert torch.allclose(out, expected, atol=1e-5)


def test_transposed_experts_are_pruned_along_their_input_dim(tmp_path):
    model = _gpt_oss()
    experts = find_expert_weights(model)
    assert {e.in_dim for e in experts.values()} == {1}  # (E, in, out)
    routers = {n: copy.deepcopy(m.state_dict()) for n, m in find_moe_routers(model).items()}
    assert sorted(routers) == ["model.layers.0.mlp.router", "model.layers.1.mlp.router"]
    masks = wanda_prune_(model, _batches(), 0.5)
    for name, expert in experts.items():
        zeros = (expert.weight == 0).sum(dim=1)  # (E, out): zeros among each output's inputs
        assert (zeros == pruned_count(expert.weight.shape[1], 0.5)).all()
        assert torch.equal(masks[name], expert.weight != 0)
    for name, router in find_moe_routers(model).items():
        assert all(torch.equal(v, routers[name][k]) for k, v in router.state_dict().items())
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    batch = _batches(1, seed=3)[0]
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, reloaded(**batch).logits, atol=1e-5, rtol=0)


def test_wanda_on_experts_only_leaves_other_layers_dense():
    model = _qwen2_moe()
    dense = {n: m.weight.detach().clone() for n, m in find_prunable_modules(model).items()}
    masks = wanda_prune_(model, _batches(), 0.5, include=r"experts\.")
    assert sorted(masks) == sorted(find_expert_weights(model))
    for name, module in find_prunable_modules(model).items():
        assert torch.equal(module.weight, dense[name])
    assert sparsity_report(model, masks).targeted_sparsity == 0.5
