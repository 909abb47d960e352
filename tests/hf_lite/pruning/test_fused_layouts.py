"""FFN and head pruning on fused and non-standard layouts, and on configs without ``head_dim``.

Families: Qwen2 (attention reads ``head_dim`` from the config when present, but the config has none: head
pruning writes it), Phi3 (fused ``gate_up_proj`` and ``qkv_proj``), GPT-NeoX and Falcon (``dense_h_to_4h``/
``dense_4h_to_h``; their attention derives the head size from ``hidden_size``, so head pruning is refused),
DistilBERT (``ffn.lin1``/``ffn.lin2``, width in ``hidden_dim``), ModernBERT (fused gated ``Wi``, ``Wo``), OPT
(``fc1``/``fc2``, width in ``ffn_dim``).

Checked here: pruning structures that provably contribute nothing (zeroed output columns) leaves the logits
unchanged, so fused rows are sliced with the right neurons and heads; magnitude and Taylor scores of fused
layers match their formulas; LoRA on fused layers is sliced with its base. That each accepted FFN/head pruning
of these families (and the other families of the issue) reloads with stock classes as the same model, in this
process and in one without hf-lite, and that each refusal names the family and the alternative and leaves the
model untouched, is checked by the architecture matrix (``tests/test_architecture_matrix.py``).
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers
from peft import LoraConfig, get_peft_model

from hf_lite.pruning.importance import attention_head_scores, ffn_neuron_scores
from hf_lite.pruning.sites import find_attention_sites, find_ffn_sites, neuron_rows
from hf_lite.pruning.structural import prune_attention_heads_, prune_ffn_

_SIZES = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
)
# family: (config class, auto class, config entries besides _SIZES)
FAMILIES = {
    "qwen2": ("Qwen2Config", "AutoModelForCausalLM", dict(num_key_value_heads=2)),
    "phi3": ("Phi3Config", "AutoModelForCausalLM", dict(num_key_value_heads=2, pad_token_id=0)),
    "gpt_neox": ("GPTNeoXConfig", "AutoModelForCausalLM", {}),
    "falcon": ("FalconConfig", "AutoModelForCausalLM", dict(ffn_hidden_size=48)),
    "opt": ("OPTConfig", "AutoModelForCausalLM", dict(ffn_dim=48, word_embed_proj_dim=32)),
    "distilbert": (
        "DistilBertConfig",
        "AutoModelForSequenceClassification",
        dict(dim=32, hidden_dim=48, n_layers=2, n_heads=4),
    ),
    "modernbert": (
        "ModernBertConfig",
        "AutoModelForMaskedLM",
        dict(
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            cls_token_id=1,
            sep_token_id=2,
            global_attn_every_n_layers=2,
            local_attention=8,
        ),
    ),
}
FFN_FAMILIES = ["qwen2", "phi3", "gpt_neox", "falcon", "opt", "distilbert", "modernbert"]
HEAD_FAMILIES = ["qwen2", "phi3"]


def _model(family: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random ``family`` model, with trained-like norms and biases (not ones/zeros)."""
    config_cls, auto, extra = FAMILIES[family]
    config = getattr(transformers, config_cls)(**{**_SIZES, **extra})
    torch.manual_seed(seed)
    model = getattr(transformers, auto).from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn_like(p))
    return model


def _ids() -> torch.Tensor:
    return torch.randint(3, 90, (2, 10), generator=torch.Generator().manual_seed(7))


@torch.no_grad()
def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits


# ----------------------------------------------------------------------------------------------------------
# FFN pruning


def _zero_ffn_neurons(model, keep: torch.Tensor) -> None:
    """Zero the projecting layer's input columns of every neuron outside ``keep``: they contribute nothing."""
    with torch.no_grad():
        for site in find_ffn_sites(model):
            dropped = torch.ones(site.width, dtype=torch.bool)
            dropped[keep] = False
            site.project.weight[:, dropped] = 0


@pytest.mark.parametrize("family", FFN_FAMILIES)
def test_removing_silent_ffn_neurons_keeps_the_logits(family):
    # A fused layer sliced with the wrong rows (gate of one neuron with the up of another) changes the logits.
    model = _model(family)
    keep = torch.tensor([1, 4, 5, 9, 20, 33, 40, 47])
    _zero_ffn_neurons(model, keep)
    ids = _ids()
    before = _logits(model, ids)
    prune_ffn_(model, keep_indices=keep)
    torch.testing.assert_close(_logits(model, ids), before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["phi3", "modernbert"])
def test_fused_expand_rows_and_magnitude_scores(family):
    model = _model(family)
    site = find_ffn_sites(model)[0]
    assert site.fused == 2 and len(site.expand) == 1
    fused, project = site.expand[0].weight.detach(), site.project.weight.detach()  # (2W, hidden), (hidden, W)
    width = site.width
    expected = (fused[:width].pow(2).sum(1) + fused[width:].pow(2).sum(1) + project.pow(2).sum(0)).sqrt()
    torch.testing.assert_close(ffn_neuron_scores(model)[0], expected)
    keep = torch.tensor([0, 7, 30])
    prune_ffn_(model, keep_indices=keep)
    torch.testing.assert_close(site.expand[0].weight, fused[neuron_rows(keep, width, 2)], rtol=0, atol=0)
    torch.testing.assert_close(site.expand[0].weight[3:], fused[keep + width], rtol=0, atol=0)


def test_width_key_is_the_config_entry_holding_the_width():
    model = _model("falcon")
    model.config.intermediate_size = 7  # a stray entry: the width lives in ffn_hidden_size
    assert find_ffn_sites(model)[0].config_key == "ffn_hidden_size"
    assert find_ffn_sites(_model("distilbert"))[0].config_key == "hidden_dim"


# ----------------------------------------------------------------------------------------------------------
# head pruning


@pytest.mark.parametrize("family", HEAD_FAMILIES)
def test_removing_silent_heads_keeps_the_logits(family):
    # Zero o_proj's columns of query heads 0 and 1 (group 0): group 0 contributes nothing and can go. Fused
    # qkv rows taken from the wrong heads (keys of group 0, queries of another) would change the logits.
    model = _model(family)
    with torch.no_grad():
        for site in find_attention_sites(model):
            site.o.weight[:, :16] = 0
    ids = _ids()
    before = _logits(model, ids)
    kept = prune_attention_heads_(model, keep_groups=[1])
    assert kept[0].query.tolist() == [2, 3]
    torch.testing.assert_close(_logits(model, ids), before, rtol=1e-5, atol=1e-6)
    # and keeping query heads within groups: heads 1 and 3 zeroed (query rows and o_proj columns) score 0 and go
    model = _model(family, seed=1)
    with torch.no_grad():
        for site in find_attention_sites(model):
            for cols in (slice(8, 16), slice(24, 32)):
                site.o.weight[:, cols] = 0
                site.q.weight[cols] = 0
    before = _logits(model, ids)
    kept = prune_attention_heads_(model, query_heads_per_group=1)
    assert all(k.query.tolist() == [0, 2] for k in kept.values())
    torch.testing.assert_close(_logits(model, ids), before, rtol=1e-5, atol=1e-6)


def test_fused_qkv_magnitude_scores_match_their_formula():
    model = _model("phi3")
    site = find_attention_sites(model)[0]
    assert site.fused_qkv and site.q is site.k is site.v
    w, o = site.q.weight.detach(), site.o.weight.detach()  # (4*8 + 2*2*8, 32), (32, 4*8)
    q = w[:32].pow(2).view(4, 8, -1).sum((1, 2)) + o.pow(2).view(-1, 4, 8).sum((0, 2))
    k, v = w[32:48].pow(2).view(2, -1).sum(1), w[48:].pow(2).view(2, -1).sum(1)
    scores = attention_head_scores(model)[0]
    torch.testing.assert_close(scores.query, q.sqrt())
    torch.testing.assert_close(scores.group, (q.view(2, 2).sum(1) + k + v).sqrt())


def test_fused_taylor_scores_match_a_reference_gradient():
    model = _model("phi3")
    ids = _ids()
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    ffn, attn = find_ffn_sites(model)[0], find_attention_sites(model)[0]
    weights = [ffn.expand[0].weight, ffn.project.weight, attn.q.weight, attn.o.weight]
    grads = torch.autograd.grad(model(**batch).loss, weights)
    gate_up, down, qkv, o = (w.detach() * g for w, g in zip(weights, grads, strict=True))
    neuron = gate_up[:48].sum(1) + gate_up[48:].sum(1) + down.sum(0)
    torch.testing.assert_close(ffn_neuron_scores(model, "taylor", [batch])[0], neuron.abs())
    query = qkv[:32].view(4, -1).sum(1) + o.view(32, 4, 8).sum((0, 2))
    group = query.view(2, 2).sum(1) + qkv[32:48].view(2, -1).sum(1) + qkv[48:].view(2, -1).sum(1)
    scores = attention_head_scores(model, "taylor", [batch])[0]
    torch.testing.assert_close(scores.query, query.abs())
    torch.testing.assert_close(scores.group, group.abs())


@pytest.mark.parametrize("family", ["phi3", "modernbert"])
def test_lora_on_fused_layers_is_sliced_with_its_base(family):
    # Pruning the LoRA-wrapped model then merging equals merging then pruning with the same indices.
    model = _model(family)
    torch.manual_seed(3)
    wrapped = get_peft_model(
        copy.deepcopy(model), LoraConfig(target_modules="all-linear", init_lora_weights=False, r=4)
    )
    reference = copy.deepcopy(wrapped).merge_and_unload()
    keep = torch.tensor([2, 3, 11, 17, 40])
    prune_ffn_(wrapped, keep_indices=keep)
    prune_ffn_(reference, keep_indices=keep)
    if family == "phi3":
        prune_attention_heads_(wrapped, keep_groups=[1])
        prune_attention_heads_(reference, keep_groups=[1])
    ids = _ids()
    torch.testing.assert_close(
        _logits(wrapped.merge_and_unload(), ids), _logits(reference, ids), rtol=1e-5, atol=1e-5
    )
