"""One head/transform list (hf_lite.heads) used by pruning's defaults, quantization's skips and LoRA's defaults,
checked on tiny encoders whose heads have transforms: DistilBERT, ModernBERT, BERT (pooler, MLM), RoBERTa."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch
import transformers
from peft.tuners.lora import LoraLayer

from hf_lite import load_model
from hf_lite.heads import HEAD_PATTERNS, head_module_names, is_head
from hf_lite.pruning import (
    DEFAULT_EXCLUDE,
    find_prunable_modules,
    wanda_prune_,
)
from hf_lite.pruning import (
    HEAD_PATTERNS as PRUNING_HEADS,
)
from hf_lite.quantization import plan_unquantized_modules

SMALL = dict(vocab_size=100, num_labels=3)


def _encoder(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "distilbert":
        config = transformers.DistilBertConfig(dim=64, n_layers=2, n_heads=4, hidden_dim=128, **SMALL)
        return transformers.DistilBertForSequenceClassification(config)
    if family == "modernbert":
        config = transformers.ModernBertConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            cls_token_id=1,
            sep_token_id=2,
            **SMALL,
        )
        return transformers.ModernBertForSequenceClassification(config)
    bert = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, **SMALL)
    if family == "bert":
        return transformers.BertForSequenceClassification(transformers.BertConfig(**bert))
    if family == "bert-mlm":
        return transformers.BertForMaskedLM(transformers.BertConfig(**bert))
    assert family == "roberta"
    config = transformers.RobertaConfig(pad_token_id=1, max_position_embeddings=64, **bert)
    return transformers.RobertaForSequenceClassification(config)


#: The outermost head modules of each family, and the Linear layers inside them.
HEADS = {
    "distilbert": (["pre_classifier", "classifier"], {"pre_classifier", "classifier"}),
    "modernbert": (["head", "classifier"], {"head.dense", "classifier"}),
    "bert": (["bert.pooler", "classifier"], {"bert.pooler.dense", "classifier"}),
    "bert-mlm": (["cls"], {"cls.predictions.transform.dense", "cls.predictions.decoder"}),
    "roberta": (["classifier"], {"classifier.dense", "classifier.out_proj"}),
}


def _linears(model) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


@pytest.mark.parametrize("family", sorted(HEADS))
def test_head_modules_of_each_encoder(family):
    model = _encoder(family)
    outer, linears = HEADS[family]
    assert head_module_names(model) == outer
    assert {n for n in _linears(model) if is_head(n)} == linears


def test_is_head_matches_whole_name_components_only():
    assert is_head("lm_head") and is_head("base_model.model.lm_head.base_layer")
    assert is_head("model.head.dense") and is_head("cls.predictions.transform.dense")
    for body in ("model.layers.0.mlp.gate_proj", "encoder.layer.0.attention.self.query", "heads", "header.x"):
        assert not is_head(body), body
    assert not is_head("model.layers.0.self_attn.head_proj") and not is_head("sub_classifier")


def test_pruning_uses_the_one_list():
    assert PRUNING_HEADS == HEAD_PATTERNS and set(HEAD_PATTERNS) <= set(DEFAULT_EXCLUDE)


@pytest.mark.parametrize("family", sorted(HEADS))
def test_pruning_defaults_leave_every_head_layer_dense(family):
    model = _encoder(family)
    chosen = set(find_prunable_modules(model))
    _, head_linears = HEADS[family]
    assert not chosen & head_linears
    # everything else that is a Linear in the body is chosen
    output = model.get_output_embeddings()
    body = {n for n in _linears(model) - head_linears if model.get_submodule(n) is not output}
    assert chosen == body and len(body) >= 8


@pytest.mark.parametrize("family", ["distilbert", "modernbert"])
def test_wanda_with_default_exclusions_keeps_the_head_transform(family):
    model = _encoder(family).eval()
    heads = {n: model.get_submodule(n).weight.detach().clone() for n in HEADS[family][1]}
    batches = [{"input_ids": torch.randint(3, 100, (2, 12))} for _ in range(2)]
    masks = wanda_prune_(model, batches, 0.5)
    assert masks and not set(masks) & set(heads)
    for name, mask in masks.items():  # body layers: half of each output row pruned
        weight = model.get_submodule(name).weight
        assert (weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.02), name
        assert torch.equal(weight != 0, mask)  # True = kept (random weights have no exact zeros)
    for name, before in heads.items():
        assert torch.equal(model.get_submodule(name).weight, before), name


def _skeleton(family):
    with torch.device("meta"):
        return _encoder(family)


@pytest.mark.parametrize("family", sorted(set(HEADS) - {"bert-mlm"}))
def test_quantization_skips_every_head_of_a_classifier(family):
    config = transformers.BitsAndBytesConfig(load_in_4bit=True)
    planned, unpackable = plan_unquantized_modules(
        config, "sequence-classification", _skeleton(family), on_cpu=False
    )
    assert unpackable == [] and config.llm_int8_skip_modules is None  # the caller's config is not changed
    assert set(HEADS[family][0]) <= set(planned.llm_int8_skip_modules)
    # A skip list the user wrote is kept as is.
    mine = transformers.BitsAndBytesConfig(load_in_4bit=True, llm_int8_skip_modules=["classifier"])
    kept, _ = plan_unquantized_modules(mine, "sequence-classification", _skeleton(family), on_cpu=False)
    assert kept.llm_int8_skip_modules == ["classifier"]
    # Other tasks keep transformers' defaults (nothing to add here).
    same, _ = plan_unquantized_modules(config, "causal-lm", _skeleton(family), on_cpu=False)
    assert same is config


def _save(model, path) -> str:
    model.save_pretrained(path)
    return str(path)


@pytest.mark.integration
def test_distilbert_4bit_lora_keeps_heads_full_precision_and_trains_them_fully(tmp_path):
    path = _save(_encoder("distilbert"), tmp_path / "distilbert")
    model = load_model(path, "sequence-classification", quantization="4bit", peft="lora")
    inner = model.base_model.model
    for name in ("pre_classifier", "classifier"):
        wrapper = inner.get_submodule(name)
        head = wrapper.modules_to_save["default"]  # trained fully, not adapted
        assert type(head) is torch.nn.Linear and head.weight.requires_grad
        assert not isinstance(wrapper.original_module, (bnb.nn.Linear4bit, LoraLayer))
    adapted = {n.removesuffix(".lora_A") for n, m in inner.named_modules() if n.endswith(".lora_A")}
    assert len(adapted) == 12 and not any(is_head(n) for n in adapted)
    body = inner.distilbert.transformer.layer[0].ffn.lin1.base_layer
    assert isinstance(body, bnb.nn.Linear4bit)
