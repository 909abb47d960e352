"""Sparsity reports count zeros: per layer, over pruned layers, over the model with and without
embeddings/heads (tied weights once), and say that this sparsity does not speed up dense CPU kernels."""

from __future__ import annotations

import json

import pytest
import torch

from hf_lite.pruning import SPEED_NOTE, magnitude_prune_, sparsity_report
from hf_lite.testing import build_tiny_model


def test_report_counts_after_magnitude_pruning_llama():
    model = build_tiny_model("llama")[0]
    masks = magnitude_prune_(model, 0.5)
    report = sparsity_report(model, masks)
    assert list(report.layers) == list(masks)
    for name, layer in report.layers.items():
        weight = model.get_submodule(name).weight
        assert layer.shape == tuple(weight.shape) and layer.total == weight.numel()
        assert layer.zeros == layer.masked == round(0.5 * weight.numel())
    assert report.targeted_zeros == sum(int((~m).sum()) for m in masks.values())
    assert report.targeted_sparsity == 0.5
    params = list(model.parameters())
    assert report.model_total == sum(p.numel() for p in params)
    assert report.model_zeros == sum(int((p == 0).sum()) for p in params)
    # untied Llama: embeddings and lm_head are both outside the body
    outer = model.model.embed_tokens.weight.numel() + model.lm_head.weight.numel()
    assert report.body_total == report.model_total - outer
    assert report.model_sparsity < report.body_sparsity < report.targeted_sparsity


def test_report_without_masks_uses_the_same_targets():
    model = build_tiny_model("llama")[0]
    masks = magnitude_prune_(model, 0.3)
    report = sparsity_report(model)
    assert list(report.layers) == list(masks) and all(s.masked is None for s in report.layers.values())
    assert report.targeted_zeros == sum(int((~m).sum()) for m in masks.values())
    only_mlp = sparsity_report(model, include=r"\.mlp\.")
    assert len(only_mlp.layers) == 6 and only_mlp.targeted_sparsity == pytest.approx(0.3, abs=1e-3)


def test_report_gpt2_tied_head_counted_once():
    model = build_tiny_model("gpt2")[0]
    assert model.lm_head.weight is model.transformer.wte.weight
    report = sparsity_report(model)
    assert report.model_total == sum(p.numel() for p in model.parameters())  # deduplicated
    embeddings = model.transformer.wte.weight.numel() + model.transformer.wpe.weight.numel()
    assert report.body_total == report.model_total - embeddings
    assert report.targeted_zeros == 0 and report.targeted_total == sum(
        s.total for s in report.layers.values()
    )


def test_markdown_and_dict():
    model = build_tiny_model("bert", "sequence-classification")[0]
    masks = magnitude_prune_(model, pattern="2:4")
    report = sparsity_report(model, masks)
    text = report.to_markdown()
    assert SPEED_NOTE in text
    assert "Unstructured and N:M (semi-structured) sparsity do not speed up dense CPU kernels" in text
    assert "Only structural pruning" in text
    assert "| `bert.encoder.layer.0.attention.self.query` | 64x64 | 2,048 | 4,096 | 50.00% | 2,048 |" in text
    assert f"| pruned layers (12) | {report.targeted_zeros:,} |" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["targeted_sparsity"] == 0.5 and data["layers"][next(iter(masks))]["shape"] == [64, 64]
    assert "classifier" not in data["layers"] and "bert.pooler.dense" not in data["layers"]
    # the classifier and pooler are heads: the body excludes them and the embeddings
    heads = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("classifier", "bert.pooler")))
    embeddings = sum(
        p.numel() for n, p in model.named_parameters() if "_embeddings." in n
    )  # word/position/type
    assert report.body_total == report.model_total - heads - embeddings


def test_report_errors():
    model = build_tiny_model("llama")[0]
    weight = model.model.layers[0].mlp.up_proj.weight
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        sparsity_report({"a": 1})
    with pytest.raises(TypeError, match="masks must be a dict"):
        sparsity_report(model, [torch.ones(2, dtype=torch.bool)])
    with pytest.raises(ValueError, match="masks name layers that LlamaForCausalLM does not have: nope"):
        sparsity_report(model, {"nope": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(TypeError, match=r"masks\['model.layers.0.mlp.up_proj'\] must be a torch.bool tensor"):
        sparsity_report(model, {"model.layers.0.mlp.up_proj": torch.ones(weight.shape)})
    with pytest.raises(
        ValueError, match=r"has shape \(64, 128\) but the layer's weight has shape \(128, 64\)"
    ):
        sparsity_report(model, {"model.layers.0.mlp.up_proj": torch.ones(64, 128, dtype=torch.bool)})


def test_structural_prune_shows_as_removed_parameters_not_zeros():
    """Issue 19 item 9: after a 50% FFN prune the sparsity is 0% but the model shrank; the report says so."""
    from hf_lite.pruning import prune_ffn_

    model = build_tiny_model("bert", "sequence-classification")[0]
    before = sum(p.numel() for p in model.parameters())
    ffn = sum(
        layer.intermediate.dense.weight.numel()
        + layer.intermediate.dense.bias.numel()
        + layer.output.dense.weight.numel()
        for layer in model.bert.encoder.layer
    )
    prune_ffn_(model, 0.5)
    report = sparsity_report(model, original_parameters=before)
    assert report.model_zeros == sum(int((p == 0).sum()) for p in model.parameters())
    assert report.removed_parameters == before - sum(p.numel() for p in model.parameters()) == ffn // 2
    assert report.removed_fraction == pytest.approx(ffn / 2 / before)
    text = report.to_markdown()
    assert (
        f"Parameters before pruning: {before:,}; now: {report.model_total:,}; removed: {ffn // 2:,}" in text
    )
    assert "The model shrank" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["removed_parameters"] == ffn // 2 and data["original_total"] == before
    # the unpruned model itself can be passed; without a count nothing is claimed
    fresh = build_tiny_model("bert", "sequence-classification")[0]
    assert sparsity_report(fresh, original_parameters=fresh).removed_parameters == 0
    assert "The model shrank" not in sparsity_report(fresh, original_parameters=fresh).to_markdown()
    plain = sparsity_report(model)
    assert plain.removed_parameters is None and "Parameters before pruning" not in plain.to_markdown()
    assert plain.to_dict()["removed_parameters"] is None


def test_original_parameters_errors():
    model = build_tiny_model("llama")[0]
    with pytest.raises(TypeError, match="original_parameters must be the parameter count before pruning"):
        sparsity_report(model, original_parameters="1000")
    with pytest.raises(ValueError, match=r"original_parameters=10 is smaller than the \d+ parameters"):
        sparsity_report(model, original_parameters=10)
