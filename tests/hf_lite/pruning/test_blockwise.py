"""Block-by-block calibration on cached block inputs (hf_lite.pruning.blockwise) gives exactly what one
whole-model pass per block gives: the same block inputs, hence the same Wanda masks, on dense, sliding-window
(Gemma2), Conv1D (GPT-2), encoder (BERT) and MoE (Mixtral) models, with padded batches."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, MixtralConfig, MixtralForCausalLM

from hf_lite.pruning import blockwise
from hf_lite.pruning.blockwise import BlockInputs, block_names, blockwise_supported, calibration_passes
from hf_lite.pruning.oneshot import wanda_prune_
from hf_lite.testing import build_tiny_model


def _model(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "gemma2":  # layers alternate sliding-window and full attention: per-block masks differ
        config = Gemma2Config(
            vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
            num_key_value_heads=1, head_dim=8, sliding_window=3,
        )  # fmt: skip
        return Gemma2ForCausalLM(config).eval()
    if family == "mixtral":
        config = MixtralConfig(
            vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, num_local_experts=4, num_experts_per_tok=2,
        )  # fmt: skip
        return MixtralForCausalLM(config).eval()
    task = "sequence-classification" if family == "bert" else "causal-lm"
    return build_tiny_model(family, task)[0].eval()


def _batches() -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for lengths in ([7, 4], [5, 7]):  # right padding in each batch
        ids = torch.randint(3, 60, (2, 7), generator=gen)
        mask = torch.stack([torch.arange(7) < n for n in lengths]).long()
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert", "gemma2", "mixtral"])
def test_cached_block_inputs_equal_the_whole_model_pass(family):
    model = _model(family)
    batches = _batches()
    seen: dict[int, list[torch.Tensor]] = {}
    blocks = list(BlockInputs(model, batches).blocks)
    hooks = [
        b.register_forward_pre_hook(
            lambda m, a, kw, i=i: seen.setdefault(i, []).append((a[0] if a else kw["hidden_states"]).clone()),
            with_kwargs=True,
        )
        for i, b in enumerate(blocks)
    ]
    with torch.no_grad():
        for batch in batches:
            model(**batch)
    for h in hooks:
        h.remove()
    with torch.no_grad():
        cached = BlockInputs(model, batches)
        for i in range(len(blocks)):
            for j in range(len(batches)):
                torch.testing.assert_close(cached.hidden[j], seen[i][j], rtol=0, atol=1e-6)
            cached.advance(i)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert", "gemma2", "mixtral"])
def test_wanda_masks_equal_whole_model_passes(family, monkeypatch):
    model = _model(family)
    built = []
    monkeypatch.setattr(blockwise, "BlockInputs", lambda *a: built.append(1) or BlockInputs(*a))
    fast = wanda_prune_(copy.deepcopy(model), _batches(), 0.5)
    assert built == [1]  # the block-by-block path ran
    monkeypatch.setattr(blockwise, "blockwise_supported", lambda m: False)  # one whole-model pass per block
    slow = wanda_prune_(copy.deepcopy(model), _batches(), 0.5)
    assert fast.keys() == slow.keys() and fast
    for name in fast:
        assert torch.equal(fast[name], slow[name]), name


def test_passes_follow_block_order_and_fall_back_for_other_groups():
    model = _model("llama")
    names = block_names(model)
    with torch.no_grad():
        assert [g for g, _ in calibration_passes(model, _batches(), names[::-1])] == names
        assert [g for g, _ in calibration_passes(model, _batches(), ["lm_head", names[0]])] == [
            "lm_head",
            names[0],
        ]


def test_encoder_decoder_models_are_refused_block_by_block():
    model = build_tiny_model("t5", "seq2seq-lm")[0]
    assert not blockwise_supported(model)
    with pytest.raises(ValueError, match="encoder-decoder"):
        BlockInputs(model, _batches())
