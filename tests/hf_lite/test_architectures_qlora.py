"""QLoRA on the CPU across evaluation: bitsandbytes repacks 4-bit weights for its bf16 inference kernel at
the first eval-mode forward; ``load_model`` puts the trainable layout back before the next training forward.

A Trainer evaluating after every step trains with the gradients of a run without evaluation on every family of
the architecture matrix (``tests/test_architecture_matrix.py``: Qwen2 with biases, Mistral, Qwen3, Gemma
without, ...); here: the failure without the hook, the hook's exact restoration, and where it is installed."""

from __future__ import annotations

import copy

import bitsandbytes as bnb
import pytest
import torch
import transformers

from hf_lite import load_model
from hf_lite.quantization import bnb_training_layout_hook, keep_bnb_layout_trainable_
from hf_lite.testing import save_tiny_checkpoint

AVX512_BF16 = bnb.functional.has_avx512bf16()
NEEDS_REPACK = pytest.mark.skipif(
    not AVX512_BF16 or torch.cuda.is_available(),
    reason="bitsandbytes repacks 4-bit weights only on CPUs with AVX512-BF16 (this one has none)",
)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    """A tiny Llama (no biases) and a tiny Qwen2 (biases on q/k/v), saved as checkpoints."""
    root = tmp_path_factory.mktemp("qlora-arch")
    llama = save_tiny_checkpoint(root / "llama", "llama")
    config = transformers.Qwen2Config(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(config).save_pretrained(root / "qwen2")
    return {"llama": str(llama), "qwen2": str(root / "qwen2")}


def _packed(model: torch.nn.Module) -> int:
    return sum(
        bool(getattr(m.weight.quant_state, "packing_format_for_cpu", False))
        for m in model.modules()
        if isinstance(m, bnb.nn.Linear4bit)
    )


@NEEDS_REPACK
def test_without_the_hook_evaluation_does_break_training(checkpoints):
    """The failure the hook prevents, shown on stock bitsandbytes (so the test above can fail)."""
    torch.manual_seed(0)
    model = load_model(checkpoints["qwen2"], quantization="4bit", peft={"lora_dropout": 0.0})
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m._forward_pre_hooks.clear()
    ids = torch.randint(3, 90, (2, 8))
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    assert _packed(model) == 14
    model.train()
    with pytest.raises(RuntimeError, match="in-place operation"):
        model(input_ids=ids, labels=ids).loss.backward()


def _layer_and_input(checkpoints):
    model = load_model(checkpoints["qwen2"], quantization="4bit")
    layer = model.model.layers[0].self_attn.q_proj  # has a bias
    return model, layer, torch.randn(3, layer.in_features)


def test_hook_restores_the_exact_layout_after_a_repack(checkpoints):
    """Runs on any CPU: the repacking bitsandbytes does in an eval forward is applied by hand."""
    model, layer, x = _layer_and_input(checkpoints)
    data, state = layer.weight.data.clone(), copy.deepcopy(layer.weight.quant_state)
    assert state.nested  # double quantization: the repacking dequantizes the scales to bf16
    reference = layer(x.requires_grad_(True))  # training path, standard layout

    layer.eval()
    layer.support_avx512bf16_for_cpu = True
    inference_input = x.detach()
    bnb_training_layout_hook(layer, (inference_input,))  # what runs before bitsandbytes repacks
    layer.weight.data, _ = bnb.functional._convert_weight_packed_for_cpu(
        layer.weight.data, layer.weight.quant_state
    )
    assert layer.weight.quant_state.packing_format_for_cpu and not layer.weight.quant_state.nested

    bnb_training_layout_hook(layer, (inference_input,))  # another inference forward: left packed
    assert layer.weight.quant_state.packing_format_for_cpu
    layer.train()
    out = layer(x)  # the hook runs first and puts back the standard layout
    restored = layer.weight.quant_state
    assert not getattr(restored, "packing_format_for_cpu", False)
    assert torch.equal(layer.weight.data, data)
    assert restored.nested and torch.equal(restored.absmax, state.absmax)
    assert torch.equal(restored.state2.absmax, state.state2.absmax) and restored.dtype == state.dtype
    assert layer.quant_state is restored
    assert torch.equal(out, reference)
    out.sum().backward()  # the bias path that bitsandbytes' inference kernel breaks
    assert x.grad is not None


def test_hook_without_a_saved_state_falls_back_to_the_kernels_scales(checkpoints):
    model, layer, x = _layer_and_input(checkpoints)
    data = layer.weight.data.clone()
    # Repacked before any hook saw it (e.g. a model evaluated before keep_bnb_layout_trainable_).
    layer.weight.data, packed_state = bnb.functional._convert_weight_packed_for_cpu(
        layer.weight.data, layer.weight.quant_state
    )
    kernel_absmax = packed_state.absmax.T.reshape(-1).float()
    bnb_training_layout_hook(layer, (x.requires_grad_(True),))
    state = layer.weight.quant_state
    assert not getattr(state, "packing_format_for_cpu", False) and not state.nested
    assert torch.equal(layer.weight.data, data)  # the codes are a permutation: exact
    assert torch.equal(state.absmax, kernel_absmax)  # the scales as the bf16 kernel used them


def test_load_model_hooks_every_4bit_layer_once(checkpoints):
    model = load_model(checkpoints["llama"], quantization="4bit")
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 14
    assert all(list(m._forward_pre_hooks.values()) == [bnb_training_layout_hook] for m in layers)
    assert keep_bnb_layout_trainable_(model) == 0  # already there: nothing added twice
    assert keep_bnb_layout_trainable_(load_model(checkpoints["llama"], quantization="8bit")) == 0
