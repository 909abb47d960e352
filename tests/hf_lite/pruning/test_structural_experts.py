"""Structural pruning of mixture-of-experts models (tiny Mixtral, Qwen2-MoE, GPT-OSS built here): router load,
dropping whole experts, shrinking every expert's FFN (and Qwen2-MoE's shared expert), checked against
reference computations on the original model and reloaded by stock transformers as the same model."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import (
    GptOssConfig,
    GptOssForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
)

from hf_lite.pruning.experts import find_expert_weights, find_moe_routers
from hf_lite.pruning.structural import (
    StructuralPlan,
    apply_plan_,
    expert_load,
    expert_neuron_scores,
    find_moe_sites,
    plan_expert_ffn,
    plan_experts,
    prune_expert_ffn_,
    prune_experts_,
    prune_ffn_,
    reload_mismatches,
    slice_optimizer_state_,
)
from hf_lite.testing import build_tiny_model

VOCAB = 64


def _mixtral(top_k: int = 2, experts: int = 4, layers: int = 2) -> MixtralForCausalLM:
    torch.manual_seed(0)
    config = MixtralConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_local_experts=experts,
        num_experts_per_tok=top_k,
    )
    return MixtralForCausalLM(config).eval()


def _qwen2_moe(
    norm_topk_prob: bool = False, decoder_sparse_step: int = 1, layers: int = 2
) -> Qwen2MoeForCausalLM:
    torch.manual_seed(0)
    config = Qwen2MoeConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=20,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=12,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_experts=4,
        num_experts_per_tok=2,
        norm_topk_prob=norm_topk_prob,
        decoder_sparse_step=decoder_sparse_step,
    )
    model = Qwen2MoeForCausalLM(config).eval()
    with torch.no_grad():  # Qwen2-MoE initialises its routers to zero: give them real weights
        for router in find_moe_routers(model).values():
            router.weight.normal_(0, 0.5)
    return model


def _gpt_oss() -> GptOssForCausalLM:
    """Experts stored transposed, (E, in, out), gate and up interleaved, with biases; a router with a bias."""
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


BUILDERS = {
    "mixtral": _mixtral,
    "qwen2_moe": _qwen2_moe,
    "qwen2_moe-norm": lambda: _qwen2_moe(norm_topk_prob=True),
    "qwen2_moe-sparse2": lambda: _qwen2_moe(decoder_sparse_step=2, layers=4),
    "gpt_oss": _gpt_oss,
}
COUNT_KEY = {"mixtral": "num_local_experts", "gpt_oss": "num_local_experts"}
WIDTH_KEY = {"mixtral": "intermediate_size", "gpt_oss": "intermediate_size"}


def _ids(seed: int = 7) -> torch.Tensor:
    return torch.randint(2, VOCAB, (2, 10), generator=torch.Generator().manual_seed(seed))


def _batches(n: int = 2, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(2, VOCAB, (2, 10), generator=g)
        mask = torch.ones_like(ids)
        mask[1, 6:] = 0  # right padding on the second row
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


@torch.no_grad()
def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits


def _moe_layers(model) -> list[int]:
    return [s.layer for s in find_moe_sites(model)]


# ----------------------------------------------------------------------------------------------------------
# router load


@torch.no_grad()
def _reference_load(model, batches, measure: str) -> dict[int, torch.Tensor]:
    """From the stock ``output_router_logits`` (one (tokens, E) per MoE block), real tokens only."""
    top_k = model.config.num_experts_per_tok
    layers = _moe_layers(model)
    totals = {b: torch.zeros(model.config.num_experts) for b in layers}
    for batch in batches:
        router_logits = model(**batch, output_router_logits=True).router_logits
        real = batch["attention_mask"].reshape(-1).bool()
        for b, logits in zip(layers, router_logits, strict=True):
            probs = torch.softmax(logits[real].float(), dim=-1)  # (T, E)
            if measure == "tokens":
                picked = probs.topk(top_k, dim=-1).indices  # (T, k)
                totals[b] += torch.zeros_like(totals[b]).index_add_(
                    0, picked.reshape(-1), torch.ones(picked.numel())
                )
            else:
                totals[b] += probs.sum(dim=0)
    return {b: t / t.sum() for b, t in totals.items()}


@pytest.mark.parametrize("measure", ["tokens", "probability"])
def test_expert_load_equals_the_router_statistics_of_real_tokens(measure):
    model = _qwen2_moe(decoder_sparse_step=2, layers=4)  # MoE blocks 1 and 3 only
    batches = _batches()
    load = expert_load(model, batches, measure=measure)
    assert sorted(load) == [1, 3]
    reference = _reference_load(model, batches, measure)
    for b in load:
        torch.testing.assert_close(load[b], reference[b], rtol=1e-5, atol=1e-6)
        assert abs(float(load[b].sum()) - 1.0) < 1e-5


def test_expert_load_ignores_padded_positions():
    model = _mixtral()
    ids = _ids()
    padded = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    padded["attention_mask"][:, 6:] = 0  # right padding: the real tokens' states do not depend on it
    short = {"input_ids": ids[:, :6], "attention_mask": torch.ones(2, 6, dtype=torch.long)}
    every = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    for measure in ("tokens", "probability"):
        with_pads = expert_load(model, [padded], measure=measure)
        torch.testing.assert_close(
            with_pads, expert_load(model, [short], measure=measure), rtol=1e-5, atol=1e-6
        )
        assert any(
            not torch.allclose(with_pads[b], v)
            for b, v in expert_load(model, [every], measure=measure).items()
        )


def test_expert_load_counts_token_slots():
    model = _mixtral(top_k=1, experts=8)
    load = expert_load(model, [{"input_ids": _ids()[:1, :5]}])  # 5 tokens, 1 slot each
    for v in load.values():
        assert torch.equal(v * 5, (v * 5).round()) and int((v > 0).sum()) <= 5


# ----------------------------------------------------------------------------------------------------------
# dropping experts: references on the original model


def _mask_router_logits(monkeypatch, model, keep: dict[int, list[int]]) -> None:
    """Set the router logits of every expert not in ``keep[block]`` to -inf inside the stock router forward."""
    dropped = {}
    for site in find_moe_sites(model):
        kept = set(keep[site.layer])
        dropped[id(site.router.weight)] = [e for e in range(site.num_experts) if e not in kept]
    linear = torch.nn.functional.linear

    def masked_linear(x, weight, bias=None):
        out = linear(x, weight, bias)
        if id(weight) in dropped:
            out = out.clone()
            out[..., dropped[id(weight)]] = float("-inf")
        return out

    monkeypatch.setattr(torch.nn.functional, "linear", masked_linear)


@pytest.mark.parametrize("family", list(BUILDERS))
def test_dropping_experts_equals_masking_their_router_logits(family, monkeypatch):
    model = BUILDERS[family]()
    layers = _moe_layers(model)
    keep = {b: [[0, 2, 3], [1, 2, 3], [0, 1, 3]][i % 3] for i, b in enumerate(layers)}
    pruned = copy.deepcopy(model)
    kept = prune_experts_(pruned, keep_indices=keep)
    assert {b: v.tolist() for b, v in kept.items()} == keep
    assert getattr(pruned.config, COUNT_KEY.get(family, "num_experts")) == 3
    ids = _ids()
    with monkeypatch.context() as patch:
        _mask_router_logits(patch, model, keep)
        reference = _logits(model, ids)
    torch.testing.assert_close(_logits(pruned, ids), reference, rtol=1e-5, atol=1e-5)
    assert (reference - _logits(model, ids)).abs().max() > 1e-4  # the dropped experts mattered


def test_dropping_experts_no_token_reaches_leaves_those_tokens_unchanged():
    model = _mixtral(top_k=1, experts=8)
    batch = {"input_ids": _ids()[:1, :3], "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    load = expert_load(model, [batch])
    assert all(int((v > 0).sum()) <= 3 for v in load.values())
    before = _logits(model, batch["input_ids"])
    kept = prune_experts_(model, keep=4, calibration_batches=[batch])
    assert all(bool((load[b][kept[b]] > 0).sum() == (load[b] > 0).sum()) for b in kept)  # every used one kept
    torch.testing.assert_close(_logits(model, batch["input_ids"]), before, rtol=0, atol=1e-6)


def test_least_loaded_experts_are_dropped_lower_index_wins_ties():
    model = _mixtral()
    scores = {0: torch.tensor([0.1, 0.4, 0.1, 0.4]), 1: torch.tensor([0.5, 0.2, 0.2, 0.1])}
    kept = prune_experts_(model, keep_ratio=0.5, scores=scores)
    assert {b: v.tolist() for b, v in kept.items()} == {0: [1, 3], 1: [0, 1]}


def test_router_rows_and_expert_tensors_are_the_kept_experts():
    model = _gpt_oss()
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    kept = prune_experts_(model, keep_indices={0: [3, 1], 1: [0, 2]})
    for b, index in kept.items():
        for name in (
            "router.weight",
            "router.bias",
            *(f"experts.{a}" for a in ("gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias")),
        ):
            full = f"model.layers.{b}.mlp.{name}"
            assert torch.equal(model.get_parameter(full), original[full][index]), full
        mlp = model.model.layers[b].mlp
        assert mlp.experts.num_experts == mlp.router.num_experts == 2
    assert model.num_experts == 2  # the causal LM's auxiliary loss


@pytest.mark.integration
def test_optimizer_state_is_sliced_with_the_experts():
    model = _qwen2_moe()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(**_batches()[0], labels=_batches()[0]["input_ids"]).loss.backward()
    optimizer.step()
    experts = model.model.layers[0].mlp.experts
    before = {k: v.clone() for k, v in optimizer.state[experts.gate_up_proj].items()}
    router_before = optimizer.state[model.model.layers[0].mlp.gate.weight]["exp_avg"].clone()
    plan = plan_experts(model, keep_indices=[1, 2, 3])
    apply_plan_(model, plan)
    assert slice_optimizer_state_(optimizer, model, plan) == 2 * 3  # router + 2 expert tensors, 2 blocks
    state = optimizer.state[experts.gate_up_proj]
    torch.testing.assert_close(state["exp_avg"], before["exp_avg"][[1, 2, 3]], rtol=0, atol=0)
    torch.testing.assert_close(state["exp_avg_sq"], before["exp_avg_sq"][[1, 2, 3]], rtol=0, atol=0)
    torch.testing.assert_close(
        optimizer.state[model.model.layers[0].mlp.gate.weight]["exp_avg"],
        router_before[[1, 2, 3]],
        rtol=0,
        atol=0,
    )
    out = model(**_batches()[0], labels=_batches()[0]["input_ids"], output_router_logits=True)
    assert out.router_logits[0].shape[-1] == 3 and torch.isfinite(out.aux_loss)  # load-balancing loss of 3
    out.loss.backward()
    optimizer.step()  # trains on with the sliced state


# ----------------------------------------------------------------------------------------------------------
# expert FFN width


def _zero_removed_neurons(model, kept) -> None:
    """Reference: zero the down_proj columns of every removed neuron (of the routed and shared experts)."""
    with torch.no_grad():
        for site in find_moe_sites(model):
            if kept.experts is not None:
                down = find_expert_weights(site.experts)["down_proj"]
                for e in range(site.num_experts):
                    removed = [
                        j for j in range(site.width) if j not in set(kept.experts[site.layer][e].tolist())
                    ]
                    down.weight.select(0, e).index_fill_(
                        down.in_dim - 1, torch.tensor(removed, dtype=torch.long), 0.0
                    )
            if kept.shared is not None:
                width = site.shared.down_proj.in_features
                removed = [j for j in range(width) if j not in set(kept.shared[site.layer].tolist())]
                site.shared.down_proj.weight[:, removed] = 0.0


@pytest.mark.parametrize(
    ("family", "options"),
    [
        ("mixtral", dict(keep_ratio=0.5)),
        ("qwen2_moe", dict(intermediate_size=8, shared_keep_ratio=0.5)),
        ("qwen2_moe-sparse2", dict(keep_ratio=0.5, importance="activation", calibration_batches=_batches())),
        ("gpt_oss", dict(keep_ratio=0.5)),
    ],
)
def test_expert_ffn_pruning_equals_zeroing_the_removed_neurons(family, options):
    model = BUILDERS[family]()
    pruned = copy.deepcopy(model)
    kept = prune_expert_ffn_(pruned, **options)
    width = find_moe_sites(model)[0].width
    count = options.get("intermediate_size", round(width * options.get("keep_ratio", 1.0)))
    assert all(tuple(v.shape) == (4, count) for v in kept.experts.values())
    assert (
        len({tuple(r) for v in kept.experts.values() for r in v.tolist()}) > 1
    )  # each expert its own neurons
    assert getattr(pruned.config, WIDTH_KEY.get(family, "moe_intermediate_size")) == count
    if family.startswith("qwen2_moe"):
        assert pruned.config.intermediate_size == 20  # the dense blocks' width is untouched
    _zero_removed_neurons(model, kept)
    ids = _ids()
    torch.testing.assert_close(_logits(pruned, ids), _logits(model, ids), rtol=1e-5, atol=1e-5)


def test_expert_width_is_rounded_up_to_a_multiple_of_8_for_the_stock_experts_kernel(caplog):
    model = _mixtral()
    kept = prune_expert_ffn_(model, 0.3)  # round(0.3 * 32) = 10 -> 16
    assert model.config.intermediate_size == 16 and tuple(kept.experts[0].shape) == (4, 16)
    _logits(model, _ids())  # runs with transformers' default grouped_mm experts
    eager = _mixtral()
    eager.set_experts_implementation("eager")
    with caplog.at_level("WARNING", logger="hf_lite.pruning.structural.expert_ffn"):
        prune_expert_ffn_(eager, intermediate_size=6, multiple_of=1)
    assert "expert FFN width 6 is not a multiple of 8" in caplog.text
    _logits(eager, _ids())


def test_magnitude_scores_are_the_norms_of_each_experts_neuron_weights():
    model = _mixtral()
    scores = expert_neuron_scores(model)
    experts = model.model.layers[1].mlp.experts
    width = experts.intermediate_dim
    for e in (0, 3):
        gate_up, down = experts.gate_up_proj[e].detach(), experts.down_proj[e].detach()  # (2F, H), (H, F)
        for j in (0, width - 1):
            weights = torch.cat([gate_up[j], gate_up[width + j], down[:, j]])
            torch.testing.assert_close(scores[1][e, j], weights.norm(), rtol=1e-5, atol=1e-6)


def test_activation_scores_are_mean_abs_activations_of_routed_real_tokens():
    model = _mixtral(top_k=4, experts=4)  # every token reaches every expert
    batches = _batches(1)
    captured = []
    block = model.model.layers[0]
    handle = block.post_attention_layernorm.register_forward_hook(
        lambda m, a, out: captured.append(out.detach())
    )
    scores = expert_neuron_scores(model, "activation", batches)
    handle.remove()
    x = captured[0][batches[0]["attention_mask"].bool()]  # (real tokens, hidden)
    experts = block.mlp.experts
    for e in range(4):
        gate, up = (x @ experts.gate_up_proj[e].detach().T).chunk(2, dim=-1)
        reference = (torch.nn.functional.silu(gate) * up).abs().mean(dim=0)
        torch.testing.assert_close(scores[0][e], reference, rtol=1e-5, atol=1e-6)


def test_activation_scores_fall_back_to_magnitude_for_experts_no_token_reaches():
    model = _mixtral(top_k=1, experts=8)
    batch = {"input_ids": _ids()[:1, :2]}  # 2 tokens: at most 2 of 8 experts used per block
    scores = expert_neuron_scores(model, "activation", [batch])
    magnitude = expert_neuron_scores(model)
    load = expert_load(model, [batch])
    for b, v in scores.items():
        unused = load[b] == 0
        assert int(unused.sum()) >= 6
        torch.testing.assert_close(v[unused], magnitude[b][unused])


@pytest.mark.integration
def test_optimizer_state_is_sliced_per_expert():
    model = _mixtral()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(**_batches()[0], labels=_batches()[0]["input_ids"]).loss.backward()
    optimizer.step()
    experts = model.model.layers[0].mlp.experts
    before = optimizer.state[experts.down_proj]["exp_avg"].clone()  # (E, H, F)
    gate_up_before = optimizer.state[experts.gate_up_proj]["exp_avg"].clone()  # (E, 2F, H)
    plan = plan_expert_ffn(model, keep_ratio=0.5)
    apply_plan_(model, plan)
    slice_optimizer_state_(optimizer, model, plan)
    index = plan.kept.experts[0]
    for e in range(4):
        torch.testing.assert_close(optimizer.state[experts.down_proj]["exp_avg"][e], before[e][:, index[e]])
        rows = torch.cat([index[e], index[e] + 32])
        torch.testing.assert_close(
            optimizer.state[experts.gate_up_proj]["exp_avg"][e], gate_up_before[e][rows]
        )


def test_lora_on_the_shared_expert_is_sliced_with_it():
    # prune then merge == merge then prune
    targets = ["shared_expert.up_proj", "shared_expert.down_proj"]
    wrapped = get_peft_model(_qwen2_moe(), LoraConfig(r=2, target_modules=targets))
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    reference = copy.deepcopy(wrapped).merge_and_unload()
    keep = {0: [0, 2, 4, 6, 8, 10], 1: [1, 3, 5, 7, 9, 11]}
    prune_expert_ffn_(wrapped, shared_keep_indices=keep)
    prune_expert_ffn_(reference, shared_keep_indices=keep)
    merged = wrapped.merge_and_unload()
    assert merged.config.shared_expert_intermediate_size == 6
    assert tuple(merged.model.layers[1].mlp.shared_expert.up_proj.weight.shape) == (6, 16)
    ids = _ids()
    torch.testing.assert_close(_logits(merged, ids), _logits(reference, ids), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# stock reload, in a process without hf-lite

_LOADER = textwrap.dedent(
    """
    import json, sys
    import torch, transformers
    from safetensors.torch import load_file, save_file
    jobs = json.loads(sys.argv[1])
    ids = load_file(sys.argv[3])["input_ids"]
    out, problems = {}, {}
    for name, folder in jobs.items():
        model, info = transformers.AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
        problems[name] = {k: sorted(v) for k, v in info.items() if v and k != "error_msgs"}
        with torch.no_grad():
            out[name] = model.eval()(input_ids=ids).logits.contiguous()
    save_file(out, sys.argv[2])
    print(json.dumps({"problems": problems, "hf_lite": any(m.split(".")[0] == "hf_lite" for m in sys.modules)}))
    """
)
RELOAD_CASES = {
    "mixtral-experts": ("mixtral", lambda m: prune_experts_(m, keep=3, calibration_batches=_batches())),
    "mixtral-ffn": (
        "mixtral",
        lambda m: prune_expert_ffn_(m, 0.5, importance="activation", calibration_batches=_batches()),
    ),
    "qwen2_moe-experts": (
        "qwen2_moe-sparse2",
        lambda m: prune_experts_(m, keep=2, calibration_batches=_batches(), measure="probability"),
    ),
    "qwen2_moe-ffn": (
        "qwen2_moe",
        lambda m: prune_expert_ffn_(m, intermediate_size=8, shared_keep_ratio=0.5),
    ),
    "qwen2_moe-both": (
        "qwen2_moe",
        lambda m: (prune_experts_(m, keep=3, calibration_batches=_batches()), prune_expert_ffn_(m, 0.5)),
    ),
    "gpt_oss-both": (
        "gpt_oss",
        lambda m: (prune_experts_(m, keep=2, calibration_batches=_batches()), prune_expert_ffn_(m, 0.5)),
    ),
}


@pytest.fixture(scope="module")
def reloaded(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe-reload")
    ids = _ids()
    save_file({"input_ids": ids}, str(root / "ids.safetensors"))
    logits, jobs, mismatches = {}, {}, {}
    for name, (family, prune) in RELOAD_CASES.items():
        model = BUILDERS[family]()
        prune(model)
        mismatches[name] = reload_mismatches(model, StructuralPlan(), model.config)
        logits[name] = _logits(model, ids)
        model.save_pretrained(root / name)
        jobs[name] = str(root / name)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _LOADER,
            json.dumps(jobs),
            str(root / "out.safetensors"),
            str(root / "ids.safetensors"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["hf_lite"] is False
    return {
        "logits": logits,
        "stock": load_file(str(root / "out.safetensors")),
        "report": report,
        "mismatches": mismatches,
    }


@pytest.mark.integration
@pytest.mark.parametrize("name", list(RELOAD_CASES))
def test_pruned_moe_reloads_with_the_stock_class_as_the_same_model(reloaded, name):
    assert reloaded["mismatches"][name] == []
    assert reloaded["report"]["problems"][name] == {}  # no missing, unexpected or mismatched keys
    torch.testing.assert_close(reloaded["stock"][name], reloaded["logits"][name], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# refusals


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_dense_ffn_pruning_refuses_moe_models_and_names_the_expert_functions(family):
    model = BUILDERS[family]()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    name = "Mixtral" if family == "mixtral" else "Qwen2Moe"
    with pytest.raises(
        ValueError,
        match=rf"{name} is a mixture-of-experts model: prune_ffn_ .* prune_expert_ffn_ .* prune_experts_",
    ):
        prune_ffn_(model, 0.5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_keeping_fewer_experts_than_top_k_is_refused():
    model = _mixtral(top_k=2)
    with pytest.raises(
        ValueError, match=r"keeping 1 of 4 experts is outside 2\.\.4: .*num_experts_per_tok=2"
    ):
        prune_experts_(model, keep=1, calibration_batches=_batches())
    with pytest.raises(ValueError, match=r"keeping 5 of 4 experts is outside 2\.\.4"):
        prune_experts_(model, keep=5, calibration_batches=_batches())
    assert model.config.num_local_experts == 4


def test_expert_pruning_argument_errors():
    model = _mixtral()
    with pytest.raises(ValueError, match=r"pass exactly one of keep .* got keep=2, keep_ratio=0\.5"):
        prune_experts_(model, 2, keep_ratio=0.5)
    with pytest.raises(ValueError, match=r"pass exactly one of keep .* got none"):
        prune_experts_(model)
    with pytest.raises(ValueError, match=r"needs calibration_batches .* or scores="):
        prune_experts_(model, keep=2)
    with pytest.raises(ValueError, match=r"scores must give a \(4,\) tensor for each MoE block \[0, 1\]"):
        prune_experts_(model, keep=2, scores={0: torch.ones(4)})
    with pytest.raises(ValueError, match=r"keep_indices gives blocks \[0\] but the MoE blocks are \[0, 1\]"):
        prune_experts_(model, keep_indices={0: [0, 1]})
    with pytest.raises(ValueError, match=r"measure='slots' is not known; use 'tokens'"):
        expert_load(model, _batches(), measure="slots")
    with pytest.raises(ValueError, match=r"expert load \(router statistics\) needs calibration data"):
        expert_load(model, None)
    with pytest.raises(ValueError, match=r"router of block 0 saw no real token"):
        expert_load(model, [{"input_ids": _ids(), "attention_mask": torch.zeros(2, 10, dtype=torch.long)}])
    assert model.config.num_local_experts == 4


def test_dense_models_are_refused():
    model = build_tiny_model("llama")[0]
    with pytest.raises(
        ValueError, match=r"expert pruning: Llama \(LlamaForCausalLM\) has no mixture-of-experts"
    ):
        prune_experts_(model, keep=2, calibration_batches=_batches())
    with pytest.raises(
        ValueError, match=r"expert FFN pruning: Llama .* has no mixture-of-experts .*\(prune_ffn_\)"
    ):
        prune_expert_ffn_(model, 0.5)


def test_config_that_cannot_express_the_edit_is_refused():
    model = _mixtral()
    model.config.num_local_experts = 7  # the config no longer describes the model
    with pytest.raises(
        ValueError, match=r"Mixtral \(MixtralConfig\) has no config entry for the number of experts \(4\)"
    ):
        prune_experts_(model, keep=2, calibration_batches=_batches())
    model = _mixtral()
    model.config.intermediate_size = 99
    with pytest.raises(ValueError, match=r"has no config entry for the experts' FFN width \(32\) among"):
        prune_expert_ffn_(model, 0.5)


def _deepseek_v3(n_group: int) -> torch.nn.Module:
    config = transformers.DeepseekV3Config(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        moe_intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_group=n_group,
        topk_group=1,
        first_k_dense_replace=0,
        kv_lora_rank=8,
        q_lora_rank=8,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=8,
    )
    return transformers.DeepseekV3ForCausalLM(config).eval()


def test_grouped_routing_and_correction_bias_buffers_are_refused():
    with pytest.raises(
        ValueError, match=r"DeepseekV3 routes each token within the best topk_group of n_group=2"
    ):
        prune_experts_(_deepseek_v3(n_group=2), keep=2, calibration_batches=_batches())
    model = _deepseek_v3(n_group=1)  # ungrouped, but the router's e_score_correction_bias is a buffer
    with pytest.raises(
        ValueError,
        match=r"keeping 2 of 4 experts: DeepseekV3Config .*shapes \(model\.layers\.0\.mlp\.gate\.e_score_correction_bias: "
        r"pruned \(4,\) vs config \(2,\).*This family cannot express fewer experts",
    ):
        prune_experts_(model, keep=2, calibration_batches=_batches())
    assert model.config.n_routed_experts == 4


def test_experts_wrapped_by_lora_are_refused():
    model = get_peft_model(
        _mixtral(), LoraConfig(r=2, target_modules=[], target_parameters=["experts.gate_up_proj"])
    )
    with pytest.raises(
        ValueError, match=r"block 0's experts or router carry adapter weights .*merge_and_unload"
    ):
        prune_experts_(model, keep=2, calibration_batches=_batches())


def test_unusual_moe_layouts_are_refused():
    model = _mixtral()
    mlp = model.model.layers[0].mlp
    mlp.add_module("selector", mlp.gate)
    del mlp.gate
    with pytest.raises(
        ValueError, match=r"block 0 \(MixtralDecoderLayer\) has 1 experts modules and 0 routers"
    ):
        find_moe_sites(model)
    model = _mixtral()
    model.model.layers[1].extra = copy.deepcopy(model.model.layers[1].mlp)
    with pytest.raises(ValueError, match=r"block 1 \(MixtralDecoderLayer\) has 2 MoE blocks"):
        find_moe_sites(model)


def test_uneven_expert_counts_and_widths_are_refused():
    model = _mixtral()
    mlp = model.model.layers[1].mlp
    with torch.no_grad():
        for module in (mlp.gate, mlp.experts):
            for name, p in list(module.named_parameters(recurse=False)):
                setattr(module, name, torch.nn.Parameter(p[:3].clone()))
    with pytest.raises(ValueError, match=r"the MoE blocks have different numbers of experts \[3, 4\]"):
        prune_experts_(model, keep=2, calibration_batches=_batches())
    model = _mixtral()
    experts = model.model.layers[1].mlp.experts
    experts.down_proj = torch.nn.Parameter(experts.down_proj[..., :6].clone())
    with pytest.raises(ValueError, match=r"the experts have different FFN widths \[6, 32\]"):
        prune_expert_ffn_(model, 0.5)


def test_a_router_without_the_transformers_5_outputs_is_refused():
    model = _mixtral()
    model.model.layers[0].mlp.gate.register_forward_hook(lambda m, a, out: out[0])
    with pytest.raises(
        ValueError, match=r"a router returned Tensor, not \(router_logits, router_scores, router_indices\)"
    ):
        expert_load(model, _batches())


def test_expert_ffn_argument_errors():
    model = _qwen2_moe()
    with pytest.raises(
        ValueError, match=r"pass at most one of keep_ratio, intermediate_size, keep_indices .* got none"
    ):
        prune_expert_ffn_(model)
    with pytest.raises(ValueError, match=r"got keep_ratio, intermediate_size"):
        prune_expert_ffn_(model, 0.5, intermediate_size=4)
    with pytest.raises(ValueError, match=r"multiple_of=0 must be >= 1"):
        prune_expert_ffn_(model, 0.5, multiple_of=0)
    with pytest.raises(ValueError, match=r"intermediate_size=17 is outside 1\.\.16"):
        prune_expert_ffn_(model, intermediate_size=17)
    with pytest.raises(
        ValueError,
        match=r"the experts' width 12 \(from intermediate_size\) is not a multiple of multiple_of=8: .*grouped_mm"
        r".*'strides should be multiple of 16 bytes'.*multiple_of=1 .*experts_implementation='eager'",
    ):
        prune_expert_ffn_(model, intermediate_size=12)
    with pytest.raises(ValueError, match=r"the experts' width 3 \(from keep_indices\) is not a multiple of"):
        prune_expert_ffn_(model, keep_indices=[[0, 1, 2]] * 4)
    with pytest.raises(ValueError, match=r"importance='taylor' is not available for expert neurons"):
        prune_expert_ffn_(model, 0.5, importance="taylor")
    with pytest.raises(ValueError, match=r"importance='activation' needs calibration data"):
        prune_expert_ffn_(model, 0.5, importance="activation")
    with pytest.raises(ValueError, match=r"keep_indices for block 0 has 2 rows but the block has 4 experts"):
        prune_expert_ffn_(model, keep_indices=[[0, 1], [0, 1]])
    with pytest.raises(ValueError, match=r"keep_indices keeps \[2, 8\] neurons in different experts"):
        prune_expert_ffn_(model, keep_indices={0: [list(range(8))] * 4, 1: [[0, 1]] + [list(range(8))] * 3})
    with pytest.raises(ValueError, match=r"keep_indices gives blocks \[1\] but the MoE blocks are \[0, 1\]"):
        prune_expert_ffn_(model, keep_indices={1: [[0]] * 4})
    with pytest.raises(
        ValueError, match=r"shared_keep_indices gives blocks \[0\] but the MoE blocks are \[0, 1\]"
    ):
        prune_expert_ffn_(model, shared_keep_indices={0: [1, 2]})
    with pytest.raises(
        ValueError,
        match=r"shared_keep_indices keeps \[1, 2\] shared expert neurons in different blocks \(non-uniform\)",
    ):
        prune_expert_ffn_(model, shared_keep_indices={0: [1, 2], 1: [1]})
    with pytest.raises(
        ValueError, match=r"block 0 has no shared expert laid out as gate_proj/up_proj/down_proj"
    ):
        prune_expert_ffn_(_mixtral(), shared_keep_ratio=0.5)
    assert model.config.moe_intermediate_size == 16 and model.config.shared_expert_intermediate_size == 12


def test_experts_called_without_their_routing_are_refused_for_activation_scores():
    model = _mixtral()
    mlp = model.model.layers[0].mlp
    mlp.forward = lambda hidden: mlp.experts(hidden_states=hidden.reshape(-1, 16)).reshape(hidden.shape)
    with pytest.raises(
        ValueError,
        match=r"MixtralExperts is not called as experts\(hidden_states, top_k_index.* use importance='magnitude'",
    ):
        expert_neuron_scores(model, "activation", _batches())
