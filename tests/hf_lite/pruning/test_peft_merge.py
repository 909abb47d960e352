"""merge_adapter_keep_sparsity: a LoRA merged into a 50%-sparse base keeps exactly the base's zeros."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from hf_lite.pruning import find_prunable_modules, magnitude_prune_
from hf_lite.pruning.peft_merge import SparseMergeReport, merge_adapter_keep_sparsity
from hf_lite.testing import build_tiny_model

TARGETS = ["q_proj", "v_proj", "up_proj", "down_proj"]


def _batch(vocab: int, rows: int = 2, length: int = 12) -> dict[str, torch.Tensor]:
    ids = torch.randint(
        5, vocab, (rows, length), generator=torch.Generator().manual_seed(1)
    )  # (rows, tokens)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _sparse_lora(steps: int = 3):
    """A 50%-sparse tiny Llama (magnitude), a LoRA adapter on it trained a few Adam steps, and the masks."""
    model, tok = build_tiny_model("llama")
    masks = magnitude_prune_(model, 0.5)  # {"model.layers.0.self_attn.q_proj": bool, ...}
    base = copy.deepcopy(model)
    torch.manual_seed(0)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0)
    )
    optimizer = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    batch = _batch(len(tok))
    for _ in range(steps):
        loss = peft_model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return peft_model, base, masks, batch


def _adapter_layers(peft_model) -> dict[str, nn.Module]:
    root = peft_model.get_base_model()
    return {n: m for n, m in root.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")}


@pytest.fixture(scope="module")
def trained():
    return _sparse_lora()


def test_plain_merge_loses_sparsity_masked_merge_keeps_exact_zeros(trained):
    peft_model, base, masks, batch = trained
    adapters = _adapter_layers(peft_model)
    assert adapters, "the adapter wraps no layer"
    for name in adapters:
        assert 0 < int((~masks[name]).sum()) < masks[name].numel()
        assert (
            float(
                peft_model.get_base_model().get_submodule(name).lora_B["default"].weight.detach().abs().max()
            )
            > 0
        )

    plain = copy.deepcopy(peft_model).merge_and_unload()
    revived = {n: int((plain.get_submodule(n).weight[~masks[n]] != 0).sum()) for n in adapters}
    assert all(v > 0 for v in revived.values())  # the dense update fills the pruned positions

    merged, report = merge_adapter_keep_sparsity(copy.deepcopy(peft_model), return_report=True)
    for name, module in find_prunable_modules(merged).items():
        # exactly the base's zeros, in every prunable layer (adapter-wrapped or not)
        assert torch.equal(module.weight == 0, ~masks[name]), name
    assert report.layers == revived
    assert report.redensified == sum(revived.values())
    assert report.kept_zeros == sum(int((~masks[n]).sum()) for n in adapters)
    assert not any("lora" in n for n, _ in merged.named_modules())


def test_masked_merge_equals_hand_computed_masked_adapter(trained):
    peft_model, base, masks, batch = trained
    reference = copy.deepcopy(base)  # the sparse base before the adapter
    with torch.no_grad():
        for name, layer in _adapter_layers(peft_model).items():
            a = layer.lora_A["default"].weight  # (r, in)
            b = layer.lora_B["default"].weight  # (out, r)
            scale = layer.scaling["default"]
            weight = reference.get_submodule(name).weight  # (out, in)
            weight.copy_((weight + scale * b @ a) * masks[name])
    merged = merge_adapter_keep_sparsity(copy.deepcopy(peft_model))
    merged.eval()
    reference.eval()
    with torch.no_grad():
        expected = reference(**batch).logits
        got = merged(**batch).logits
        adapter = peft_model(**batch).logits
    # Same formula, fp32; PEFT computes B @ A * scale in another order: allow fp32 rounding.
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (adapter - expected).abs().max() > 1e-3  # the masked update really differs from the dense one


@pytest.mark.parametrize("style", ["base_layer", "plain", "peft_prefix"])
def test_given_masks_accept_base_layer_names(trained, style):
    peft_model, base, masks, batch = trained
    model = copy.deepcopy(peft_model)
    adapters = set(_adapter_layers(model))
    if style == "base_layer":  # as PruningCallback records them on a PEFT model
        names = find_prunable_modules(model.get_base_model())
        given = {n: masks[n.removesuffix(".base_layer")] for n in names}
        assert any(n.endswith(".base_layer") for n in given)
    elif style == "plain":  # as magnitude_prune_ returned them before the adapter was attached
        given = dict(masks)
    else:
        given = {f"base_model.model.{n}": m for n, m in masks.items()}
    merged, report = merge_adapter_keep_sparsity(model, given, return_report=True)
    for name, mask in masks.items():
        assert torch.equal(merged.get_submodule(name).weight == 0, ~mask), name
    assert set(report.layers) == set(masks)  # unwrapped layers listed too, with nothing revived
    assert all(report.layers[n] == 0 for n in set(masks) - adapters)
    assert all(report.layers[n] > 0 for n in adapters)


def test_conv1d_gpt2_keeps_zeros():
    model, tok = build_tiny_model("gpt2")
    masks = magnitude_prune_(model, 0.5)
    peft_model = get_peft_model(
        model, LoraConfig(r=2, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True)
    )
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)
    merged = merge_adapter_keep_sparsity(peft_model)
    for name, mask in masks.items():
        assert torch.equal(merged.get_submodule(name).weight == 0, ~mask), name


def test_merged_checkpoint_reloads_sparse(trained, tmp_path):
    from transformers import AutoModelForCausalLM

    peft_model, base, masks, batch = trained
    merged = merge_adapter_keep_sparsity(copy.deepcopy(peft_model))
    merged.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    for name, mask in masks.items():
        assert torch.equal(loaded.get_submodule(name).weight == 0, ~mask), name


# ------------------------------------------------------------------------------------------------ errors


def _small_peft(**lora):
    model, _ = build_tiny_model("llama", num_hidden_layers=1)
    magnitude_prune_(model, 0.5)
    return get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], **lora))


def test_rejects_model_without_adapter():
    model, _ = build_tiny_model("llama", num_hidden_layers=1)
    with pytest.raises(TypeError, match="peft_model must be a peft.PeftModel"):
        merge_adapter_keep_sparsity(model)


def test_rejects_masks_of_wrong_type():
    with pytest.raises(TypeError, match="masks must be a dict"):
        merge_adapter_keep_sparsity(_small_peft(), [torch.ones(2, dtype=torch.bool)])
    with pytest.raises(TypeError, match=r"masks keys must be layer names"):
        merge_adapter_keep_sparsity(_small_peft(), {0: torch.ones(2, dtype=torch.bool)})
    with pytest.raises(TypeError, match=r"is a torch.float32 tensor; a mask is a torch.bool"):
        merge_adapter_keep_sparsity(_small_peft(), {"model.layers.0.self_attn.q_proj": torch.ones(64, 64)})


def test_rejects_unknown_names_shapes_and_duplicates():
    good = torch.ones(64, 64, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"masks name layers the model does not have .*'model.layers.9.mlp'"):
        merge_adapter_keep_sparsity(_small_peft(), {"model.layers.9.mlp": good})
    with pytest.raises(ValueError, match=r"masks do not match the weights' shapes .*mask \(3, 3\)"):
        merge_adapter_keep_sparsity(
            _small_peft(), {"model.layers.0.self_attn.q_proj": torch.ones(3, 3, dtype=torch.bool)}
        )
    with pytest.raises(ValueError, match="masks has two entries for layer 'model.layers.0.self_attn.q_proj'"):
        merge_adapter_keep_sparsity(
            _small_peft(),
            {"model.layers.0.self_attn.q_proj": good, "model.layers.0.self_attn.q_proj.base_layer": good},
        )


def test_rejects_dora_merged_and_quantized_bases():
    with pytest.raises(ValueError, match="carries a DoRA adapter"):
        merge_adapter_keep_sparsity(_small_peft(use_dora=True))

    merged_already = _small_peft()
    merged_already.merge_adapter()
    with pytest.raises(ValueError, match=r"already has its adapter merged .*unmerge_adapter\(\)"):
        merge_adapter_keep_sparsity(merged_already)

    class Linear4bit(nn.Linear):  # stands for bitsandbytes.nn.Linear4bit (no GPU needed)
        __module__ = "bitsandbytes.nn.modules"

    model, _ = build_tiny_model("llama", num_hidden_layers=1)
    attn = model.model.layers[0].self_attn
    fake = Linear4bit(64, 64, bias=False)
    fake.load_state_dict(attn.q_proj.state_dict())
    attn.q_proj = fake
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="bitsandbytes-quantized base"):
        merge_adapter_keep_sparsity(peft_model)


def test_report_to_dict():
    report = SparseMergeReport(redensified=2, kept_zeros=5, layers={"a": 2})
    assert report.to_dict() == {"redensified": 2, "kept_zeros": 5, "layers": {"a": 2}}
