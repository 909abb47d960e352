"""Structural pruning on tiny real architectures (Llama with grouped-query attention, GPT-2 Conv1D, BERT).

Checked: the pruned model is smaller in memory and on disk and stock ``from_pretrained`` in a process
without hf-lite rebuilds it with the same logits; keep ratio 1.0 changes nothing; removing structures that
provably contribute nothing (zeroed output weights, identity blocks) leaves logits unchanged and the
importance scores rank them lowest; scores match their formulas; GQA stays valid; generation with a KV
cache matches generation without one; LoRA adapters are sliced consistently with their base; every
ValueError.
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_lite.pruning import sites as importance_mod
from hf_lite.pruning.importance import attention_head_scores, block_influence, ffn_neuron_scores
from hf_lite.pruning.sites import find_ffn_sites
from hf_lite.pruning.structural import prune_attention_heads_, prune_ffn_, prune_layers_
from hf_lite.testing import build_tiny_model

TASKS = {"llama": "causal-lm", "gpt2": "causal-lm", "bert": "sequence-classification"}
AUTO = {
    "llama": "AutoModelForCausalLM",
    "gpt2": "AutoModelForCausalLM",
    "bert": "AutoModelForSequenceClassification",
}


def _tiny(family: str, **overrides):
    model, tok = build_tiny_model(family, TASKS[family], **overrides)
    return model.eval(), tok


def _ids(vocab: int, seed: int = 0, shape=(2, 10)) -> torch.Tensor:
    return torch.randint(2, vocab, shape, generator=torch.Generator().manual_seed(seed))


def _batches(model, family: str, *, labels: bool = False, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """Two right-padded calibration batches (pad id 0 is fine: padded positions are masked)."""
    out = []
    for i in range(2):
        ids = _ids(model.config.vocab_size, seed + i, (3, 9))
        mask = (torch.arange(9)[None, :] < torch.tensor([9, 6, 4])[:, None]).long()
        batch = {"input_ids": ids, "attention_mask": mask}
        if labels:
            batch["labels"] = (
                torch.tensor([0, 1, 1]) if family == "bert" else ids.masked_fill(mask == 0, -100)
            )
        out.append(batch)
    return out


@torch.no_grad()
def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------
# stock from_pretrained, in a process without hf-lite

_LOADER = textwrap.dedent(
    """
    import json, sys
    import torch, transformers
    from safetensors.torch import load_file, save_file
    jobs = json.loads(sys.argv[1])
    out = {}
    for name, (folder, auto, ids_file) in jobs.items():
        model = getattr(transformers, auto).from_pretrained(folder).eval()
        ids = load_file(ids_file)["input_ids"]
        with torch.no_grad():
            out[name] = model(input_ids=ids).logits.contiguous()
    save_file(out, sys.argv[2])
    print(json.dumps({"hf_lite_loaded": any(m.split(".")[0] == "hf_lite" for m in sys.modules)}))
    """
)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """Each family pruned in memory, saved, and reloaded by stock transformers in a subprocess."""
    root = tmp_path_factory.mktemp("structural")
    results, jobs = {}, {}
    for family in ("llama", "gpt2", "bert"):
        model, _ = _tiny(family, num_hidden_layers=3)
        original = copy.deepcopy(model)
        if family == "llama":
            kept_ffn = prune_ffn_(model, 0.5, multiple_of=8)
            prune_attention_heads_(model, 0.5)
            prune_layers_(model, drop=[1])
        elif family == "gpt2":
            kept_ffn = prune_ffn_(
                model,
                intermediate_size=48,
                importance="activation",
                calibration_batches=_batches(model, family),
            )
            prune_layers_(model, drop=[2])
        else:
            kept_ffn = prune_ffn_(
                model, 0.25, importance="taylor", calibration_batches=_batches(model, family, labels=True)
            )
            prune_layers_(model, keep_ratio=0.67, calibration_batches=_batches(model, family))
        ids = _ids(model.config.vocab_size, 7)
        original.save_pretrained(root / f"{family}-original")
        model.save_pretrained(root / f"{family}-pruned")
        save_file({"input_ids": ids}, str(root / f"{family}-ids.safetensors"))
        jobs[family] = [str(root / f"{family}-pruned"), AUTO[family], str(root / f"{family}-ids.safetensors")]
        results[family] = {
            "model": model,
            "original": original,
            "ids": ids,
            "kept_ffn": kept_ffn,
            "logits": _logits(model, ids),
            "root": root,
        }
    out_file = root / "logits.safetensors"
    proc = subprocess.run(
        [sys.executable, "-c", _LOADER, json.dumps(jobs), str(out_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    flags = json.loads(proc.stdout.strip().splitlines()[-1])
    reloaded = load_file(str(out_file))
    for family in results:
        results[family]["reloaded"] = reloaded[family]
        results[family]["hf_lite_loaded"] = flags["hf_lite_loaded"]
    return results


@pytest.mark.integration
@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_stock_from_pretrained_loads_pruned_model_with_same_logits(pruned, family):
    r = pruned[family]
    assert r["hf_lite_loaded"] is False  # the subprocess never imported hf_lite
    assert r["reloaded"].shape == r["logits"].shape
    torch.testing.assert_close(r["reloaded"], r["logits"], atol=1e-5, rtol=1e-5)


@pytest.mark.integration
@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_pruned_model_is_smaller_in_memory_and_on_disk(pruned, family):
    r = pruned[family]
    assert _n_params(r["model"]) < _n_params(r["original"])
    root = r["root"]
    size = {k: (root / f"{family}-{k}" / "model.safetensors").stat().st_size for k in ("original", "pruned")}
    assert size["pruned"] < size["original"]
    config = json.loads((root / f"{family}-pruned" / "config.json").read_text())
    expected = {
        "llama": {
            "intermediate_size": 64,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "num_hidden_layers": 2,
        },
        "gpt2": {"n_inner": 48, "n_layer": 2},
        "bert": {"intermediate_size": 32, "num_hidden_layers": 2},
    }[family]
    assert {k: config[k] for k in expected} == expected
    assert all(len(v) == list(expected.values())[0] for v in r["kept_ffn"].values())


# ----------------------------------------------------------------------------------------------------------
# keep ratio 1.0 is a no-op


@pytest.mark.parametrize(
    "family, kind",
    [
        ("llama", "ffn"),
        ("llama", "heads"),
        ("llama", "layers"),
        ("gpt2", "ffn"),
        ("gpt2", "layers"),
        ("bert", "ffn"),
        ("bert", "layers"),
    ],
)
def test_keep_ratio_one_is_exact_noop(family, kind):
    model, _ = _tiny(family)
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    before_config = model.config.to_dict()
    if kind == "ffn":
        kept = prune_ffn_(model, 1.0)
        assert all(torch.equal(v, torch.arange(128)) for v in kept.values())
    elif kind == "heads":
        kept = prune_attention_heads_(model, 1.0)
        assert all(v.query.tolist() == [0, 1, 2, 3] and v.key_value.tolist() == [0, 1] for v in kept.values())
    else:
        assert prune_layers_(model, keep_ratio=1.0, calibration_batches=_batches(model, family)) == [0, 1]
    after = model.state_dict()
    assert list(after) == list(before_state)
    assert all(torch.equal(after[k], v) for k, v in before_state.items())
    assert model.config.to_dict() == before_config


# ----------------------------------------------------------------------------------------------------------
# importance scores against their formulas


def test_magnitude_scores_match_formula_linear_and_conv1d():
    llama, _ = _tiny("llama")
    mlp = llama.model.layers[1].mlp
    j = 5
    expected = (
        mlp.gate_proj.weight[j].square().sum()
        + mlp.up_proj.weight[j].square().sum()
        + mlp.down_proj.weight[:, j].square().sum()
    ).sqrt()
    torch.testing.assert_close(ffn_neuron_scores(llama)[1][j], expected)
    gpt2, _ = _tiny("gpt2")
    gmlp = gpt2.transformer.h[0].mlp  # Conv1D: c_fc weight (in, out), c_proj weight (in, out)
    expected = (gmlp.c_fc.weight[:, j].square().sum() + gmlp.c_proj.weight[j].square().sum()).sqrt()
    torch.testing.assert_close(ffn_neuron_scores(gpt2)[0][j], expected)
    attn = llama.model.layers[0].self_attn
    d = 16
    q_sq = (
        attn.q_proj.weight[3 * d : 4 * d].square().sum() + attn.o_proj.weight[:, 3 * d : 4 * d].square().sum()
    )
    g_sq = (
        attn.q_proj.weight[2 * d : 4 * d].square().sum()
        + attn.o_proj.weight[:, 2 * d : 4 * d].square().sum()
        + attn.k_proj.weight[d : 2 * d].square().sum()
        + attn.v_proj.weight[d : 2 * d].square().sum()
    )
    scores = attention_head_scores(llama)[0]
    torch.testing.assert_close(scores.query[3], q_sq.sqrt())
    torch.testing.assert_close(scores.group[1], g_sq.sqrt())


def test_activation_scores_are_mean_abs_input_of_projection_over_real_tokens():
    model, _ = _tiny("llama")
    batches = _batches(model, "llama")
    seen = []
    handle = model.model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        for b in batches:
            model(**b)
    handle.remove()
    real = torch.cat(
        [x[b["attention_mask"].bool()] for x, b in zip(seen, batches, strict=True)]
    )  # (tokens, 128)
    torch.testing.assert_close(ffn_neuron_scores(model, "activation", batches)[1], real.abs().mean(0))


def test_taylor_head_scores_sum_weight_times_grad_over_query_heads_and_groups():
    model, _ = _tiny("llama")
    batches = _batches(model, "llama", labels=True)
    ref = copy.deepcopy(model)
    for b in batches:
        (ref(**b).loss / len(batches)).backward()
    attn, d = ref.model.layers[1].self_attn, 16
    wg = {
        n: getattr(attn, n).weight * getattr(attn, n).weight.grad
        for n in ("q_proj", "k_proj", "v_proj", "o_proj")
    }
    query = wg["q_proj"].view(4, d, 64).sum((1, 2)) + wg["o_proj"].view(64, 4, d).sum((0, 2))
    group = (
        query.view(2, 2).sum(1)
        + wg["k_proj"].view(2, d, 64).sum((1, 2))
        + wg["v_proj"].view(2, d, 64).sum((1, 2))
    )
    scores = attention_head_scores(model, "taylor", iter(batches))[1]  # a generator of batches works too
    torch.testing.assert_close(scores.query, query.abs(), atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(scores.group, group.abs(), atol=1e-6, rtol=1e-4)


def test_taylor_scores_are_abs_sum_of_weight_times_grad_and_leave_grads_alone():
    model, _ = _tiny("bert")
    batches = _batches(model, "bert", labels=True)
    ref = copy.deepcopy(model)
    ref.zero_grad()
    for b in batches:
        (ref(**b).loss / len(batches)).backward()
    inter, out = ref.bert.encoder.layer[0].intermediate.dense, ref.bert.encoder.layer[0].output.dense
    expected = ((inter.weight * inter.weight.grad).sum(1) + (out.weight * out.weight.grad).sum(0)).abs()
    scores = ffn_neuron_scores(model, "taylor", batches)
    torch.testing.assert_close(scores[0], expected, atol=1e-6, rtol=1e-4)
    assert all(p.grad is None for p in model.parameters())


def test_block_influence_is_one_minus_cosine_and_zero_for_identity_block():
    model, _ = _tiny("llama", num_hidden_layers=3)
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()
    batches = _batches(model, "llama")
    out = model(**batches[0], output_hidden_states=True)
    bi = block_influence(model, batches[:1])
    hidden = out.hidden_states  # embeddings, after block 0, after block 1, final (normed)
    mask = batches[0]["attention_mask"].bool()
    cos = torch.nn.functional.cosine_similarity(hidden[0], hidden[1], dim=-1)[mask]
    torch.testing.assert_close(bi[0], 1 - cos.mean(), atol=1e-5, rtol=1e-5)
    assert abs(float(bi[1])) < 1e-5 and int(bi.argmin()) == 1


# ----------------------------------------------------------------------------------------------------------
# removing what contributes nothing changes nothing


def _zero_ffn_neurons(model, family: str, neurons: list[int], how: str) -> None:
    with torch.no_grad():
        for site in find_ffn_sites(model):
            if how == "inputs":  # activation of these neurons becomes 0 (no biases in the tiny Llama)
                for layer in site.expand:
                    layer.weight[neurons] = 0
            elif how == "all":  # every weight of these neurons (GPT-2 Conv1D: (in, out))
                site.expand[0].weight[:, neurons] = 0
                site.expand[0].bias[neurons] = 0
                site.project.weight[neurons] = 0
            else:  # output columns: the neuron's activation never reaches the output
                site.project.weight[:, neurons] = 0


@pytest.mark.parametrize(
    "family, importance, how",
    [
        ("llama", "activation", "inputs"),
        ("gpt2", "magnitude", "all"),
        ("bert", "taylor", "outputs"),
        ("llama", "taylor", "outputs"),
    ],
)
def test_pruning_ffn_neurons_that_contribute_nothing_keeps_logits(family, importance, how):
    model, _ = _tiny(family)
    zeroed = [3, 17, 40, 41, 99, 127]
    _zero_ffn_neurons(model, family, zeroed, how)
    ids = _ids(model.config.vocab_size)
    before = _logits(model, ids)
    batches = _batches(model, family, labels=importance == "taylor")
    kept = prune_ffn_(
        model, intermediate_size=128 - len(zeroed), importance=importance, calibration_batches=batches
    )
    expected = [i for i in range(128) if i not in zeroed]
    assert all(v.tolist() == expected for v in kept.values())
    torch.testing.assert_close(_logits(model, ids), before, atol=1e-5, rtol=1e-5)


def test_explicit_ffn_indices_per_block_slice_weights_and_biases():
    model, _ = _tiny("llama", mlp_bias=True)
    keep = {0: [1, 5, 7], 1: [0, 2, 127]}
    reference = copy.deepcopy(model)
    prune_ffn_(model, keep_indices=keep)
    for i, idx in keep.items():
        new, old = model.model.layers[i].mlp, reference.model.layers[i].mlp
        assert torch.equal(new.up_proj.weight, old.up_proj.weight[idx])
        assert torch.equal(new.gate_proj.bias, old.gate_proj.bias[idx])
        assert torch.equal(new.down_proj.weight, old.down_proj.weight[:, idx])
        assert torch.equal(new.down_proj.bias, old.down_proj.bias)
        assert new.intermediate_size == 3 and new.down_proj.in_features == 3


def _zero_o_columns(model, heads: dict[int, list[int]], head_dim: int = 16) -> None:
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            for h in heads.get(i, []):
                layer.self_attn.o_proj.weight[:, h * head_dim : (h + 1) * head_dim] = 0


def _check_gqa(model) -> None:
    c = model.config
    assert c.num_attention_heads % c.num_key_value_heads == 0
    for layer in model.model.layers:
        attn = layer.self_attn
        assert tuple(attn.q_proj.weight.shape) == (c.num_attention_heads * c.head_dim, c.hidden_size)
        assert tuple(attn.k_proj.weight.shape) == (c.num_key_value_heads * c.head_dim, c.hidden_size)
        assert tuple(attn.v_proj.weight.shape) == (c.num_key_value_heads * c.head_dim, c.hidden_size)
        assert tuple(attn.o_proj.weight.shape) == (c.hidden_size, c.num_attention_heads * c.head_dim)
        assert attn.num_key_value_groups == c.num_attention_heads // c.num_key_value_heads
        assert attn.head_dim == c.head_dim == 16


def test_pruning_a_group_whose_o_proj_columns_are_zero_keeps_logits():
    model, _ = _tiny("llama", attention_bias=True)
    _zero_o_columns(model, {0: [2, 3], 1: [2, 3]})  # group 1 = key/value head 1 and query heads 2, 3
    ids = _ids(model.config.vocab_size)
    before = _logits(model, ids)
    kept = prune_attention_heads_(
        model,
        num_key_value_heads=1,
        importance="taylor",
        calibration_batches=_batches(model, "llama", labels=True),
    )
    assert [(v.key_value.tolist(), v.query.tolist()) for v in kept.values()] == [([0], [0, 1])] * 2
    _check_gqa(model)
    assert model.config.num_attention_heads == 2 and model.config.num_key_value_heads == 1
    assert model.model.layers[0].self_attn.q_proj.bias.shape == (32,)
    torch.testing.assert_close(_logits(model, ids), before, atol=1e-5, rtol=1e-5)


def test_explicit_groups_per_block_and_query_heads_within_groups_keep_logits():
    model, _ = _tiny("llama")
    # block 0: group 0 silent; block 1: group 1 silent -> keep a different group in each block
    _zero_o_columns(model, {0: [0, 1], 1: [2, 3]})
    ids = _ids(model.config.vocab_size)
    before = _logits(model, ids)
    kept = prune_attention_heads_(model, keep_groups={0: [1], 1: [0]})
    assert [v.query.tolist() for v in kept.values()] == [[2, 3], [0, 1]]
    torch.testing.assert_close(_logits(model, ids), before, atol=1e-5, rtol=1e-5)

    model, _ = _tiny("llama")
    _zero_o_columns(model, {0: [1, 2], 1: [0, 3]})  # one silent query head in each group
    before = _logits(model, ids)
    kept = prune_attention_heads_(
        model,
        query_heads_per_group=1,
        importance="taylor",
        calibration_batches=_batches(model, "llama", labels=True),
    )
    assert [v.query.tolist() for v in kept.values()] == [[0, 3], [1, 2]]
    assert model.config.num_attention_heads == 2 and model.config.num_key_value_heads == 2
    _check_gqa(model)
    torch.testing.assert_close(_logits(model, ids), before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("importance", ["magnitude", "activation"])
def test_gqa_invariants_after_scored_head_pruning(importance):
    model, _ = _tiny("llama", num_attention_heads=8, num_key_value_heads=4, head_dim=16)
    kept = prune_attention_heads_(
        model,
        0.5,
        query_heads_per_group=1,
        importance=importance,
        calibration_batches=_batches(model, "llama"),
    )
    assert model.config.num_attention_heads == 2 and model.config.num_key_value_heads == 2
    for v in kept.values():
        assert (v.query // 2).tolist() == v.key_value.tolist()  # each kept query head reads a kept group
    _check_gqa(model)


def _identity_block(model, family: str, i: int) -> None:
    with torch.no_grad():
        if family == "llama":
            model.model.layers[i].self_attn.o_proj.weight.zero_()
            model.model.layers[i].mlp.down_proj.weight.zero_()
        else:
            for layer in (model.transformer.h[i].attn.c_proj, model.transformer.h[i].mlp.c_proj):
                layer.weight.zero_()
                layer.bias.zero_()


def _generate(model, ids, use_cache: bool) -> torch.Tensor:
    return model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=5,
        do_sample=False,
        use_cache=use_cache,
        pad_token_id=model.config.eos_token_id,
    )


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_dropping_identity_block_by_influence_keeps_logits_and_generation(family):
    model, _ = _tiny(family, num_hidden_layers=4)
    _identity_block(model, family, 2)
    ids = _ids(model.config.vocab_size, shape=(1, 6))
    before, generated = _logits(model, ids), _generate(model, ids, True)
    kept = prune_layers_(model, num_hidden_layers=3, calibration_batches=_batches(model, family))
    assert kept == [0, 1, 3]
    blocks = model.model.layers if family == "llama" else model.transformer.h
    attns = [b.self_attn if family == "llama" else b.attn for b in blocks]
    assert [a.layer_idx for a in attns] == [0, 1, 2]
    torch.testing.assert_close(_logits(model, ids), before, atol=1e-5, rtol=1e-5)
    with_cache = _generate(model, ids, True)
    assert with_cache.shape == (1, 11)
    assert torch.equal(with_cache, _generate(model, ids, False))
    assert torch.equal(with_cache, generated)


def test_generation_with_cache_after_head_and_layer_pruning():
    model, _ = _tiny("llama", num_hidden_layers=3)
    prune_attention_heads_(model, 0.5)
    prune_layers_(model, drop=[0])
    ids = _ids(model.config.vocab_size, shape=(1, 6))
    with_cache = _generate(model, ids, True)
    assert with_cache.shape == (1, 11)
    assert torch.equal(with_cache, _generate(model, ids, False))


def test_per_layer_config_lists_are_sliced_and_reload(tmp_path):
    import transformers

    config = transformers.Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        use_sliding_window=True,
        sliding_window=3,
        layer_types=["full_attention", "sliding_attention", "full_attention"],
    )
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(config).eval()
    assert prune_layers_(model, drop=[0]) == [1, 2]
    assert model.config.layer_types == ["sliding_attention", "full_attention"]
    ids = _ids(64, shape=(1, 8))  # longer than the window: a wrongly typed layer would change the logits
    model.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.layer_types == ["sliding_attention", "full_attention"]
    torch.testing.assert_close(_logits(reloaded, ids), _logits(model, ids), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# LoRA adapters


def _lora(model, family: str, **kwargs):
    from peft import LoraConfig, get_peft_model

    targets = {
        "llama": ["gate_proj", "up_proj", "down_proj", "q_proj", "k_proj", "v_proj", "o_proj"],
        "gpt2": ["c_fc", "mlp.c_proj"],
    }[family]
    task = "CAUSAL_LM"
    cfg = LoraConfig(
        r=4,
        target_modules=targets,
        init_lora_weights=False,
        task_type=task,
        fan_in_fan_out=family == "gpt2",
        **kwargs,
    )
    return get_peft_model(model, cfg).eval()


def _prune_fixed(model, family: str) -> None:
    prune_ffn_(model, keep_indices=list(range(0, 128, 3)))
    if family == "llama":
        prune_attention_heads_(model, keep_groups=[1])
        prune_layers_(model, drop=[1])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_lora_adapter_is_sliced_consistently_with_its_base(family):
    model = _lora(_tiny(family, num_hidden_layers=3)[0], family)
    ids = _ids(model.config.vocab_size)
    merged_then_pruned = copy.deepcopy(model).merge_and_unload()
    _prune_fixed(merged_then_pruned, family)
    _prune_fixed(model, family)  # prune the adapter-wrapped model
    expected = _logits(merged_then_pruned, ids)
    torch.testing.assert_close(_logits(model, ids), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_logits(model.merge_and_unload(), ids), expected, atol=1e-5, rtol=1e-5)


def test_lora_refusals():
    from peft import IA3Config, get_peft_model

    dora = _lora(_tiny("llama")[0], "llama", use_dora=True)
    with pytest.raises(ValueError, match="DoRA"):
        prune_ffn_(dora, 0.5)
    layered = _lora(_tiny("llama")[0], "llama", layers_to_transform=[0])
    with pytest.raises(ValueError, match="layers_to_transform"):
        prune_layers_(layered, drop=[1])
    ia3 = get_peft_model(
        _tiny("llama")[0], IA3Config(target_modules=["down_proj"], feedforward_modules=["down_proj"])
    )
    with pytest.raises(ValueError, match="only LoRA adapters"):
        prune_ffn_(ia3, 0.5)


# ----------------------------------------------------------------------------------------------------------
# errors


@pytest.fixture(scope="module")
def llama():
    return _tiny("llama")[0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"keep_ratio": 0.0}, r"keep_ratio=0.0 is outside \(0, 1\]"),
        ({"keep_ratio": 1.5}, r"keep_ratio=1.5 is outside \(0, 1\]"),
        ({"keep_ratio": math.nan}, r"is outside \(0, 1\]"),
        ({"keep_ratio": 0.003}, r"keeps round\(0.003 \* 128\) = 0 FFN neurons"),
        ({"keep_ratio": {0: 0.5, 1: 0.25}}, "non-uniform"),
        ({}, "exactly one of keep_ratio, intermediate_size, keep_indices; got none"),
        ({"keep_ratio": 0.5, "intermediate_size": 64}, "exactly one of .* got keep_ratio, intermediate_size"),
        ({"intermediate_size": 200}, r"intermediate_size=200 is outside 1..128"),
        ({"intermediate_size": [64, 32]}, "non-uniform"),
        ({"intermediate_size": 60, "multiple_of": 8}, "not a multiple of multiple_of=8"),
        ({"keep_ratio": 0.5, "multiple_of": 0}, "multiple_of=0 must be >= 1"),
        ({"keep_indices": [0, 128]}, r"keep_indices has indices \[128\] outside range\(0, 128\)"),
        ({"keep_indices": [1, 1]}, "repeats indices"),
        ({"keep_indices": []}, "is empty"),
        (
            {"keep_indices": {0: [1, 2], 1: [3]}},
            r"keeps \[1, 2\] FFN neurons in different blocks \(non-uniform\)",
        ),
        ({"keep_indices": {0: [1, 2]}}, "give every block"),
        ({"keep_ratio": 0.5, "importance": "random"}, "importance='random' is not a known method"),
        ({"keep_ratio": 0.5, "importance": "activation"}, "importance='activation' needs calibration data"),
        ({"keep_ratio": 0.5, "importance": "taylor", "calibration_batches": []}, "needs calibration data"),
        (
            {"keep_ratio": 0.5, "importance": "taylor", "calibration_batches": iter([])},
            "needs calibration data",
        ),
    ],
)
def test_prune_ffn_errors(llama, kwargs, match):
    before = copy.deepcopy(llama.state_dict())
    with pytest.raises(ValueError, match=match):
        prune_ffn_(llama, **kwargs)
    assert all(torch.equal(v, before[k]) for k, v in llama.state_dict().items())  # nothing was touched


def test_type_errors(llama):
    with pytest.raises(TypeError, match="keep_ratio must be a float"):
        prune_ffn_(llama, True)
    with pytest.raises(TypeError, match="keep_indices must be a 1-D integer tensor"):
        prune_ffn_(llama, keep_indices=torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="no transformers config"):
        prune_ffn_(torch.nn.Linear(2, 2), 0.5)
    with pytest.raises(TypeError, match="drop must be a list"):
        prune_layers_(llama, drop=1)


def test_taylor_needs_labels_and_a_loss(llama):
    with pytest.raises(ValueError, match=r"calibration batches \[0, 1\] have no 'labels'"):
        prune_ffn_(llama, 0.5, importance="taylor", calibration_batches=_batches(llama, "llama"))
    base = build_tiny_model("llama", "base")[0]
    with pytest.raises(ValueError, match="returned no loss"):
        ffn_neuron_scores(base, "taylor", _batches(base, "llama", labels=True))


def test_calibration_without_real_tokens_is_refused(llama):
    batch = {
        "input_ids": _ids(llama.config.vocab_size, shape=(1, 4)),
        "attention_mask": torch.zeros(1, 4).long(),
    }
    with pytest.raises(ValueError, match="saw no real token"):
        ffn_neuron_scores(llama, "activation", [batch])
    with pytest.raises(ValueError, match="reached no block with a real token"):
        block_influence(llama, [batch])


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_head_pruning_refused_where_config_cannot_express_it(family):
    model, _ = _tiny(family)
    with pytest.raises(
        ValueError, match=r"has no head_dim.*Prune FFN neurons \(prune_ffn_\) or whole layers"
    ):
        prune_attention_heads_(model, 0.5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "pass one of keep_ratio, num_key_value_heads or keep_groups"),
        ({"keep_ratio": 0.2}, r"keeps round\(0.2 \* 2\) = 0 key/value head groups"),
        ({"keep_ratio": 0.5, "num_key_value_heads": 1}, "exactly one of"),
        ({"num_key_value_heads": 3}, r"num_key_value_heads=3 is outside 1..2"),
        ({"num_key_value_heads": [1, 2]}, "non-uniform"),
        ({"query_heads_per_group": 3}, r"query_heads_per_group=3 is outside 1..2"),
        ({"keep_groups": [2]}, r"keep_groups has indices \[2\] outside range\(0, 2\)"),
        ({"keep_groups": {0: [0], 1: [0, 1]}}, "non-uniform"),
        ({"keep_ratio": 0.5, "importance": "taylor"}, "importance='taylor' needs calibration data"),
    ],
)
def test_prune_heads_errors(llama, kwargs, match):
    with pytest.raises(ValueError, match=match):
        prune_attention_heads_(llama, **kwargs)
    assert (
        llama.config.num_attention_heads == 4 and llama.model.layers[0].self_attn.q_proj.weight.shape[0] == 64
    )


def test_head_count_the_config_refuses_lists_valid_counts():
    model, _ = _tiny("llama", hidden_size=48, num_attention_heads=6, num_key_value_heads=6, head_dim=8)
    with pytest.raises(
        ValueError, match=r"num_attention_heads=5, which LlamaConfig refuses.*: \[1, 2, 3, 4, 6\]"
    ):
        prune_attention_heads_(model, num_key_value_heads=5)
    assert model.config.num_attention_heads == 6


def test_invalid_gqa_layout_and_missing_attention_are_refused():
    model, _ = _tiny("llama")
    model.config.num_key_value_heads = 3
    with pytest.raises(ValueError, match="not divisible by num_key_value_heads=3"):
        prune_attention_heads_(model, 0.5)
    model, _ = _tiny("llama")
    model.model.layers[1].self_attn.o_proj = torch.nn.Identity()
    with pytest.raises(ValueError, match="block 1 .* has 0 attention modules"):
        prune_attention_heads_(model, 0.5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"drop": [2]}, r"drop=\[2\] has indices \[2\] outside range\(0, 2\)"),
        ({"drop": [0, 1]}, "drops all 2 blocks; at least 1 block must remain"),
        ({"drop": [0, 0]}, "repeats indices"),
        ({"keep_ratio": 0.2}, r"keeps round\(0.2 \* 2\) = 0 blocks"),
        ({"num_hidden_layers": 0}, "num_hidden_layers=0 is outside 1..2"),
        ({"num_hidden_layers": 1}, "choosing blocks by block influence .* needs calibration data"),
        ({}, "exactly one of drop, keep_ratio, num_hidden_layers"),
    ],
)
def test_prune_layers_errors(llama, kwargs, match):
    with pytest.raises(ValueError, match=match):
        prune_layers_(llama, **kwargs)
    assert len(llama.model.layers) == llama.config.num_hidden_layers == 2


def test_layer_dropping_that_would_change_remaining_blocks_is_refused():
    model, _ = _tiny("gpt2", num_hidden_layers=3, scale_attn_by_inverse_layer_idx=True)
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx=True"):
        prune_layers_(model, drop=[0])
    assert prune_layers_(model, drop=[2]) == [0, 1]  # dropping the last blocks renumbers nothing
    model, _ = _tiny("llama", num_hidden_layers=3)
    model.config.custom_layer_scales = [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="config.custom_layer_scales=.* looks like a per-layer setting"):
        prune_layers_(model, drop=[0])


def test_unsupported_architectures_are_refused():
    import transformers

    t5 = build_tiny_model("t5", "seq2seq-lm")[0]
    with pytest.raises(ValueError, match="encoder-decoder"):
        prune_ffn_(t5, 0.5)
    bare = torch.nn.Module()
    bare.config = transformers.PretrainedConfig()
    with pytest.raises(ValueError, match="no integer num_hidden_layers"):
        prune_layers_(bare, drop=[0])
    model, _ = _tiny("llama")
    model.model.extra = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(2))
    with pytest.raises(ValueError, match="found 2 lists of 2 identical blocks"):
        prune_layers_(model, drop=[0])
    model, _ = _tiny("llama")
    model.model.layers[0].mlp.down_proj = torch.nn.Identity()
    with pytest.raises(ValueError, match="block 0 .* has no FFN it recognizes"):
        prune_ffn_(model, 0.5)
    model, _ = _tiny("llama")
    model.model.layers[1].mlp.down_proj = torch.nn.Linear(64, 64, bias=False)
    model.model.layers[1].mlp.gate_proj = torch.nn.Linear(64, 64, bias=False)
    model.model.layers[1].mlp.up_proj = torch.nn.Linear(64, 64, bias=False)
    with pytest.raises(ValueError, match=r"different FFN widths \[64, 128\]"):
        prune_ffn_(model, 0.5)


def test_per_layer_ffn_width_in_config_is_refused(llama):
    model = copy.deepcopy(llama)
    model.config.__dict__["intermediate_size"] = [128, 128]  # as configs with one width per layer store it
    with pytest.raises(ValueError, match=r"config.intermediate_size=\[128, 128\] is not one width"):
        prune_ffn_(model, 0.5)


def test_quantized_layers_are_refused(llama):
    fake_bnb = type("Linear8bitLt", (torch.nn.Linear,), {"__module__": "bitsandbytes.nn.modules"})
    model = copy.deepcopy(llama)
    model.model.layers[0].mlp.up_proj = fake_bnb(64, 128, bias=False)
    with pytest.raises(ValueError, match="bitsandbytes-quantized.*Prune the full-precision model first"):
        prune_ffn_(model, 0.5)


def test_config_that_does_not_describe_the_pruned_shapes_is_refused(llama, monkeypatch):
    # Pretend the Llama FFN width lived in a config key the block ignores: the rebuilt block keeps 128.
    layouts = ((("gate_proj", "up_proj"), "down_proj", ("max_position_embeddings",)),)
    monkeypatch.setattr(importance_mod, "_FFN_LAYOUTS", layouts)
    with pytest.raises(ValueError, match=r"does not describe the pruned shapes .*mlp.up_proj.weight"):
        prune_ffn_(llama, 0.5)
    assert llama.model.layers[0].mlp.up_proj.weight.shape == (128, 64)


def test_edited_config_that_fails_validation_is_refused(llama):
    model = copy.deepcopy(llama)
    model.config.layer_types = ["full_attention", "bogus"]
    with pytest.raises(ValueError, match="edited config would not load"):
        prune_layers_(model, drop=[0])
