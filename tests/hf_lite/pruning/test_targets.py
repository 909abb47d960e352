"""Choosing the layers to prune in the four tiny families: defaults, regexes, output embeddings, errors."""

from __future__ import annotations

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from hf_lite.pruning import DEFAULT_EXCLUDE, find_prunable_modules, in_features_dim, is_prunable
from hf_lite.testing import build_tiny_model


@pytest.fixture(scope="module")
def models():
    return {
        "llama": build_tiny_model("llama")[0],
        "gpt2": build_tiny_model("gpt2")[0],
        "bert": build_tiny_model("bert", "sequence-classification")[0],
        "t5": build_tiny_model("t5", "seq2seq-lm")[0],
    }


def test_llama_defaults_are_the_block_linears(models):
    names = list(find_prunable_modules(models["llama"]))
    leaves = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    expected = [
        f"model.layers.{i}.{'self_attn' if j < 4 else 'mlp'}.{leaf}"
        for i in range(2)
        for j, leaf in enumerate(leaves)
    ]
    assert names == expected  # lm_head (the output embeddings) is left out


def test_gpt2_conv1d_layers_and_tied_head(models):
    found = find_prunable_modules(models["gpt2"])
    assert len(found) == 8 and all(isinstance(m, Conv1D) for m in found.values())
    assert "lm_head" not in found


def test_bert_classifier_and_pooler_excluded(models):
    names = list(find_prunable_modules(models["bert"]))
    assert len(names) == 12 and all(n.startswith("bert.encoder.layer.") for n in names)
    with_heads = find_prunable_modules(models["bert"], exclude=None)
    assert {"bert.pooler.dense", "classifier"} <= set(with_heads)


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_masked_lm_head_transform_excluded(family):
    """BERT's cls.predictions.transform.dense and DistilBERT's vocab_transform belong to the MLM head."""
    from transformers import BertConfig, BertForMaskedLM, DistilBertConfig, DistilBertForMaskedLM

    if family == "bert":
        model = BertForMaskedLM(
            BertConfig(
                vocab_size=50,
                hidden_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=32,
            )
        )
    else:
        model = DistilBertForMaskedLM(
            DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=32)
        )
    names = list(find_prunable_modules(model))
    assert len(names) == 6 and all(".layer.0." in n for n in names)
    heads = set(find_prunable_modules(model, exclude=None)) - set(names)
    assert heads == ({"cls.predictions.transform.dense"} if family == "bert" else {"vocab_transform"})


def test_t5_all_attention_and_ffn_layers(models):
    names = find_prunable_modules(models["t5"])
    assert len(names) == 2 * 6 + 2 * 10 and "lm_head" not in names


def test_include_and_exclude_regexes(models):
    llama = models["llama"]
    assert list(find_prunable_modules(llama, include=[r"layers\.1\.", "q_proj$"])) == [
        "model.layers.0.self_attn.q_proj",
        *[n for n in find_prunable_modules(llama) if n.startswith("model.layers.1.")],
    ]
    no_attn = find_prunable_modules(llama, exclude=[*DEFAULT_EXCLUDE, "self_attn"])
    assert len(no_attn) == 6 and all(".mlp." in n for n in no_attn)


def test_output_embeddings_only_when_named(models):
    llama = models["llama"]
    assert "lm_head" not in find_prunable_modules(llama, exclude=None)
    assert list(find_prunable_modules(llama, include="lm_head", exclude=None)) == ["lm_head"]


def test_output_embeddings_found_by_identity_whatever_their_name():
    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(4, 4)
            self.vocab = torch.nn.Linear(4, 10)

        def get_output_embeddings(self):
            return self.vocab

    assert list(find_prunable_modules(Toy())) == list(find_prunable_modules(Toy(), exclude=None)) == ["body"]
    assert list(find_prunable_modules(Toy(), include="vocab")) == ["vocab"]


def test_in_features_dim_and_is_prunable():
    assert in_features_dim(torch.nn.Linear(3, 5)) == 1 and in_features_dim(Conv1D(5, 3)) == 0
    assert Conv1D(5, 3).weight.shape == (3, 5)  # (in, out): the input dim is 0
    assert is_prunable(Conv1D(5, 3)) and not is_prunable(torch.nn.Embedding(3, 2))
    with pytest.raises(TypeError, match="module must be a torch.nn.Linear or a transformers Conv1D"):
        in_features_dim(torch.nn.LayerNorm(3))


def test_pattern_matching_nothing_lists_available_names(models):
    with pytest.raises(
        ValueError, match=r"include pattern 'qproj' matches no .*model\.layers\.\*\.self_attn\.q_proj"
    ):
        find_prunable_modules(models["llama"], include="qproj")
    with pytest.raises(ValueError, match=r"exclude pattern 'atn' matches no Linear/Conv1D layer"):
        find_prunable_modules(models["llama"], exclude=[*DEFAULT_EXCLUDE, "atn"])


def test_nothing_left_to_prune(models):
    with pytest.raises(ValueError, match="leave no layer of LlamaForCausalLM to prune"):
        find_prunable_modules(models["llama"], include="lm_head")  # lm_head is in DEFAULT_EXCLUDE


def test_pattern_type_and_regex_errors(models):
    with pytest.raises(TypeError, match="include must be a regex string, a list of them, or None"):
        find_prunable_modules(models["llama"], include=5)
    with pytest.raises(TypeError, match="exclude must contain regex strings"):
        find_prunable_modules(models["llama"], exclude=["mlp", 3])
    with pytest.raises(ValueError, match=r"include pattern '\(' is not a valid regular expression"):
        find_prunable_modules(models["llama"], include="(")


def test_model_errors():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        find_prunable_modules({"a": torch.nn.Linear(2, 2)})
    with pytest.raises(ValueError, match="Sequential has no nn.Linear or Conv1D layer to prune"):
        find_prunable_modules(torch.nn.Sequential(torch.nn.ReLU()))


def test_quantized_layers_refused():
    bnb = pytest.importorskip("bitsandbytes")
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), bnb.nn.Linear8bitLt(8, 8, has_fp16_weights=False))
    with pytest.raises(
        ValueError, match="layers 1 are bitsandbytes-quantized.*Prune the full-precision model first"
    ):
        find_prunable_modules(model)
