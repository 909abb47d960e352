"""Structural edits reload into the same model with stock ``from_pretrained``, or are refused before anything changes.

Some architectures build blocks differently by position: ModernBERT's block 0 has an ``Identity`` where every
other block has a LayerNorm ``attn_norm``; Qwen2-MoE with ``decoder_sparse_step=2`` alternates dense and
expert FFNs. Dropping a block moves later blocks to positions stock transformers builds differently, and the
saved checkpoint would reload as a different model (the moved norm discarded as an "unexpected key").

Checked: such edits are refused with a message naming the family, the differing module and what to drop
instead, and the model is untouched (same tensors, config, logits); the refused edit really would reload as a
different model; block-influence selection skips such blocks and its result reloads with logits equal within
1e-5; the predicted checkpoint names and shapes equal those of the edited model; without a buildable stock class
the per-block check runs. Dropping each block of tiny random models of fifteen families (accepted edits reloaded
in a process without hf-lite, refusals by position) is the architecture matrix's (tests/test_architecture_matrix.py).
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import transformers
from peft import LoraConfig, get_peft_model
from torch.nn.utils import prune as torch_prune

from hf_lite.pruning import sites as sites_mod
from hf_lite.pruning.importance import block_influence
from hf_lite.pruning.structural import (
    StructuralPlan,
    apply_plan_,
    plan_attention_heads,
    plan_ffn,
    plan_layers,
    prune_ffn_,
    prune_layers_,
)
from hf_lite.pruning.structural import layers as layers_mod
from hf_lite.pruning.structural import reload as reload_mod
from hf_lite.pruning.structural.checks import check_expressible
from hf_lite.pruning.structural.layers import layer_config_edits
from hf_lite.pruning.structural.reload import saved_shapes
from hf_lite.testing import build_tiny_model

_SIZES = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=64,
)
_MODERNBERT = dict(
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    cls_token_id=1,
    sep_token_id=2,
    global_attn_every_n_layers=2,
    local_attention=8,
    initializer_range=0.2,  # blocks that matter: the corrupted reload differs clearly
)
_MOE = dict(
    num_key_value_heads=2,
    num_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=16,
    shared_expert_intermediate_size=32,
)
# family: (config class, auto class, config entries besides _SIZES)
FAMILIES = {
    "qwen2": ("Qwen2Config", "AutoModelForCausalLM", dict(num_key_value_heads=2)),
    "modernbert": ("ModernBertConfig", "AutoModelForMaskedLM", _MODERNBERT),
    "qwen2_moe": ("Qwen2MoeConfig", "AutoModelForCausalLM", dict(_MOE, decoder_sparse_step=2)),
}


def _model(family: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny random ``family`` model with trained-like norms (random scales and shifts, not ones/zeros)."""
    config_cls, auto, extra = FAMILIES[family]
    config = getattr(transformers, config_cls)(**{**_SIZES, **extra, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, auto).from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln" in name.lower():
                p.add_(0.5 * torch.randn_like(p))
    return model


def _ids(seed: int = 7) -> torch.Tensor:
    return torch.randint(3, 90, (2, 10), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits


def _identity_block_0(model) -> None:
    """Zero ModernBERT block 0's output projections: the block returns its input (block influence 0)."""
    with torch.no_grad():
        model.model.layers[0].attn.Wo.weight.zero_()
        model.model.layers[0].mlp.Wo.weight.zero_()


def _batches() -> list[dict[str, torch.Tensor]]:
    return [{"input_ids": _ids(s), "attention_mask": torch.ones(2, 10, dtype=torch.long)} for s in (1, 2)]


# ----------------------------------------------------------------------------------------------------------
# refusals, before anything changes


def test_modernbert_dropping_block_0_is_refused_before_anything_changes():
    model = _model("modernbert")
    ids = _ids()
    logits = _logits(model, ids)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    config = model.config.to_dict()
    with pytest.raises(
        ValueError,
        match=r"dropping blocks \[0\] of 3: ModernBertConfig .* does not describe the pruned shapes "
        r"\(model\.layers\.0\.attn_norm: block 1 \(at position 0 after the edit\) has LayerNorm, stock "
        r"ModernBertEncoderLayer at position 0 builds Identity; model\.layers\.0\.attn_norm\.weight \(block 1\): "
        r"pruned \(32,\) vs config absent, would be discarded on reload\), so stock from_pretrained would reload "
        r"the saved checkpoint as a different ModernBert model .* ModernBert builds blocks differently by "
        r"position: keep blocks \[0\], or drop other blocks \(each of \[1, 2\] can be dropped alone\)",
    ):
        prune_layers_(model, drop=[0])
    assert model.config.to_dict() == config
    assert [b.attn.layer_idx for b in model.model.layers] == [0, 1, 2]
    after = model.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[k], v) for k, v in state.items())
    torch.testing.assert_close(_logits(model, ids), logits, rtol=0, atol=0)


def test_refusal_names_the_subset_of_the_request_that_can_be_dropped():
    with pytest.raises(ValueError, match=r"keep blocks \[0\] \(drop=\[2\] reloads as the same model\)"):
        prune_layers_(_model("modernbert"), drop=[0, 2])


def test_the_refused_edit_would_reload_as_a_different_model(tmp_path):
    # Why the refusal: applying the same edit without the check writes a checkpoint that reloads differently.
    model = _model("modernbert")
    plan = StructuralPlan(config=layer_config_edits(model.config, [1, 2], 3), drop=[0])
    apply_plan_(model, plan)
    assert "model.layers.0.attn_norm.weight" in saved_shapes(model)
    model.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert "model.layers.0.attn_norm.weight" not in reloaded.state_dict()
    ids = _ids()
    assert (_logits(model, ids) - _logits(reloaded, ids)).abs().max() > 1e-3


def test_qwen2_moe_with_alternating_expert_blocks_refuses_a_shift_by_one():
    model = _model("qwen2_moe", num_hidden_layers=4)
    with pytest.raises(
        ValueError,
        match=r"model\.layers\.1\.mlp: block 2 \(at position 1 after the edit\) has Qwen2MoeMLP, stock "
        r"Qwen2MoeDecoderLayer at position 1 builds Qwen2MoeSparseMoeBlock.*Qwen2Moe builds blocks "
        r"differently by position: keep blocks \[1\], or drop other blocks \(each of \[3\] can be dropped alone\)",
    ):
        prune_layers_(model, drop=[1])
    assert len(model.model.layers) == 4


def test_selection_that_cannot_reach_the_count_is_refused(monkeypatch):
    model = _model("qwen2")
    monkeypatch.setattr(layers_mod, "reload_mismatches", lambda *args: ["every block differs"])
    with pytest.raises(
        ValueError,
        match=r"keeping 1 of 3 blocks: Qwen2 builds blocks differently by position, and only dropping blocks "
        r"none reloads as the same model\. Keep more blocks",
    ):
        prune_layers_(model, num_hidden_layers=1, calibration_batches=_batches())
    assert len(model.model.layers) == 3


def test_block_influence_selection_skips_blocks_whose_removal_cannot_be_expressed():
    model = _model("modernbert")
    _identity_block_0(model)
    influence = block_influence(model, _batches())
    assert influence[0].abs() < 1e-6 and influence.argmin() == 0  # block 0 would be chosen first
    kept = prune_layers_(model, num_hidden_layers=2, calibration_batches=_batches())
    assert kept == [0, 2 if influence[1] <= influence[2] else 1]


# ----------------------------------------------------------------------------------------------------------
# accepted edits reload with the same logits (single drops of every block on fifteen families, in a process
# without hf-lite: tests/test_architecture_matrix.py; here the selections that must avoid a block)


@pytest.mark.integration
@pytest.mark.parametrize("case", ["modernbert-identity-block-0", "qwen2_moe-alternating"])
def test_block_influence_selection_reloads_with_identical_logits(case, tmp_path):
    if case.startswith("modernbert"):
        family, model = "modernbert", _model("modernbert", seed=1)
        _identity_block_0(model)  # the block influence would choose block 0 first
    else:
        family, model = "qwen2_moe", _model("qwen2_moe", num_hidden_layers=6)
    kept = prune_layers_(model, num_hidden_layers=2, calibration_batches=_batches())
    assert len(kept) == 2 and (family != "modernbert" or kept[0] == 0)
    model.save_pretrained(tmp_path)
    auto = getattr(transformers, FAMILIES[family][1])
    reloaded, info = auto.from_pretrained(tmp_path, output_loading_info=True)
    assert {k: v for k, v in info.items() if v and k != "error_msgs"} == {}
    ids = _ids()
    torch.testing.assert_close(_logits(reloaded.eval(), ids), _logits(model, ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("drop", [0, 1])
def test_qwen2_moe_with_alternating_expert_blocks_refuses_dropping_a_block_before_the_expert_block(drop):
    model = _model("qwen2_moe")  # blocks: dense, experts, dense (decoder_sparse_step=2)
    ids = _ids()
    before = _logits(model, ids)
    with pytest.raises(ValueError, match=r"Qwen2Moe builds blocks differently by position"):
        prune_layers_(model, drop=[drop])
    assert len(model.model.layers) == 3
    torch.testing.assert_close(_logits(model, ids), before, rtol=0, atol=0)
    assert prune_layers_(model, drop=[2]) == [0, 1]


# ----------------------------------------------------------------------------------------------------------
# the prediction the check compares


@pytest.mark.parametrize(
    ("family", "task"), [("llama", "causal-lm"), ("gpt2", "causal-lm"), ("bert", "sequence-classification")]
)
def test_predicted_checkpoint_names_and_shapes_equal_the_edited_models(family, task):
    model, _ = build_tiny_model(family, task, num_hidden_layers=3)
    plans = [lambda m: plan_ffn(m, 0.5), lambda m: plan_layers(m, drop=[0, 2])]
    if family == "llama":
        plans.append(lambda m: plan_attention_heads(m, 0.5))
    for make in plans:
        plan = make(model)
        predicted = saved_shapes(model, plan)
        apply_plan_(model, plan)
        assert predicted == {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize(("family", "task"), [("llama", "causal-lm"), ("bert", "sequence-classification")])
def test_a_lora_wrapped_model_predicts_its_base_checkpoint(family, task):
    model, _ = build_tiny_model(family, task)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrapped = get_peft_model(
        copy.deepcopy(model),
        LoraConfig(target_modules="all-linear", task_type="SEQ_CLS" if family == "bert" else "CAUSAL_LM"),
    )
    assert any("modules_to_save" in n for n, _ in wrapped.named_parameters()) == (family == "bert")
    assert saved_shapes(wrapped) == expected


def test_without_a_buildable_stock_class_one_block_is_compared(monkeypatch, caplog):
    monkeypatch.setattr(reload_mod, "stock_model", lambda *args: None)
    model, _ = build_tiny_model("llama")
    with caplog.at_level(logging.WARNING):
        prune_ffn_(model, 0.5)
    assert "compared one LlamaDecoderLayer only" in caplog.text
    assert model.config.intermediate_size == 64
    assert prune_layers_(model, drop=[0]) == [1]
    assert "nothing checks that the model without blocks [0] reloads as the same model" in caplog.text
    layouts = ((("gate_proj", "up_proj"), "down_proj", ("max_position_embeddings",)),)
    monkeypatch.setattr(sites_mod, "_FFN_LAYOUTS", layouts)
    with pytest.raises(
        ValueError,
        match=r"does not describe the pruned shapes \(mlp\.down_proj\.weight: pruned \(64, 32\) vs config \(64, 64\)",
    ):
        prune_ffn_(model, 0.5)


@pytest.mark.parametrize(
    ("layer_types", "renumber", "match"),
    [
        # the per-layer list sliced wrongly: block 2 (full attention) lands where the config says sliding
        (
            ["full_attention", "sliding_attention"],
            True,
            r"model\.layers\.1\.attn\.sliding_window: block 2 \(at position 1 after the edit\) has None, stock "
            r"ModernBertEncoderLayer at position 1 sets 5",
        ),
        # the kept block's layer_idx not renumbered
        (
            ["full_attention", "full_attention"],
            False,
            r"model\.layers\.1\.attn\.layer_idx: block 2 \(at position 1 after the edit\) has 2, stock "
            r"ModernBertEncoderLayer at position 1 sets 1",
        ),
    ],
)
def test_module_settings_that_differ_from_the_stock_block_are_refused(layer_types, renumber, match):
    model = _model("modernbert")
    plan = StructuralPlan(config={"num_hidden_layers": 2, "layer_types": layer_types}, drop=[1])
    if renumber:
        plan.attributes += [
            (m, "layer_idx", 1) for m in model.model.layers[2].modules() if hasattr(m, "layer_idx")
        ]
    with pytest.raises(
        ValueError, match=f"demo: ModernBertConfig .* does not describe the pruned shapes .*{match}"
    ):
        check_expressible(model, plan, "demo")
    plan.config["layer_types"] = ["full_attention", "full_attention"]
    if renumber:
        check_expressible(model, plan, "demo")  # the right edit passes


@pytest.mark.parametrize(
    ("prune", "why"),
    [
        (lambda m: prune_ffn_(m, 0.5), r"pruning the FFN to 64 neurons"),
        (lambda m: prune_layers_(m, drop=[1]), r"dropping blocks \[1\] of 3"),
        (
            lambda m: prune_layers_(
                m, num_hidden_layers=2, calibration_batches=[{"input_ids": _ids() % m.config.vocab_size}]
            ),
            r"keeping 2 of 3 blocks",
        ),
    ],
)
def test_a_model_that_would_not_reload_even_unedited_is_refused(prune, why):
    model, _ = build_tiny_model("llama", num_hidden_layers=3)
    torch_prune.l1_unstructured(model.model.layers[0].mlp.up_proj, "weight", amount=0.5)
    with pytest.raises(
        ValueError,
        match=f"{why}: the model as it is already differs from what stock from_pretrained builds from its own "
        r"config \(model\.layers\.0\.mlp\.up_proj\.weight: pruned absent vs config \(128, 64\), would be newly "
        r"initialized on reload; model\.layers\.0\.mlp\.up_proj\.weight_mask: .*Make re-parametrizations permanent",
    ):
        prune(model)
    assert model.config.num_hidden_layers == 3 and model.config.intermediate_size == 128
