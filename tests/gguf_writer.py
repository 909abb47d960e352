"""Tiny GGUF checkpoints for tests, written with the ``gguf`` package's writer the way llama.cpp's converter
writes a Llama: tensor names, q/k rows permuted, llama.cpp metadata keys, a byte-level BPE tokenizer (tokens,
merges, control tokens, bos/eos ids, chat template).

>>> expected, tokenizer, model = save_tiny_gguf("/tmp/tiny.Q8_0.gguf")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from hf_lite.testing import build_tiny_model

try:
    import gguf
except ImportError:  # the tests that need it skip (pytest.importorskip)
    gguf = None

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TEXTS = ["the quick brown fox jumps over the lazy dog", "to be or not to be, that is the question"]
# transformers' module name -> llama.cpp's tensor name inside a block
LEAVES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
TOP["lm_head.weight"] = "output.weight"


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 style, what ``tokenizer.ggml.model = gpt2`` describes) trained on TEXTS."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXTS * 10, vocab_size=300, special_tokens=SPECIALS, show_progress=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token=None
    )


def llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """The row order llama.cpp's converter gives q/k projections (rotary halves interleaved per head)."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_gguf(
    path: str | Path,
    model,
    tokenizer,
    *,
    quantize: tuple[str, ...] = ("mlp", "embed_tokens"),
    arch: str = "llama",
) -> dict[str, torch.Tensor]:
    """Write ``model`` (a transformers Llama) and ``tokenizer`` as llama.cpp would; the weights with a name
    containing one of ``quantize`` as Q8_0. Returns what loading must give back: the state dict with those
    weights replaced by their dequantized Q8_0 values."""
    cfg = model.config
    Q8 = gguf.GGMLQuantizationType.Q8_0
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny llama")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quantize else gguf.LlamaFileType.ALL_F32)
    tokens = [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    writer.add_token_types([3 if t in SPECIALS else 1 for t in tokens])  # 3: control (special) token
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_chat_template(CHAT_TEMPLATE)

    expected = {}
    for name, tensor in model.state_dict().items():
        value = tensor.detach().float().numpy()
        if name in TOP:
            gguf_name = TOP[name]
        else:
            _, _, layer, rest = name.split(".", 3)
            module, leaf = rest.rsplit(".", 1)
            gguf_name = f"blk.{layer}.{LEAVES[module]}.{leaf}"
        stored = value
        if name.endswith("q_proj.weight"):
            stored = llama_cpp_permute(value, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            stored = llama_cpp_permute(value, cfg.num_key_value_heads)
        if value.ndim == 2 and any(key in name for key in quantize):
            writer.add_tensor(gguf_name, gguf.quants.quantize(stored, Q8), raw_dtype=Q8)
            # Q8_0 blocks lie within a row and the q/k permutation moves whole rows: what transformers gives back
            # (rows put back in order) is the dequantized quantization of the unpermuted weight
            expected[name] = torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(value, Q8), Q8))
        else:
            writer.add_tensor(gguf_name, np.ascontiguousarray(stored))
            expected[name] = torch.from_numpy(value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


def save_tiny_gguf(
    path: str | Path, *, quantize: tuple[str, ...] = ("mlp", "embed_tokens"), seed: int = 0
) -> tuple[dict[str, torch.Tensor], PreTrainedTokenizerFast, torch.nn.Module]:
    """Write a tiny Llama (hf_lite.testing's tiny config, the byte-level tokenizer) to ``path``; returns (the state
    dict loading must give, the tokenizer, the model written)."""
    model, tokenizer = build_tiny_model("llama", tokenizer=byte_level_tokenizer(), seed=seed)
    return write_gguf(path, model, tokenizer, quantize=quantize), tokenizer, model


def write_minimal_gguf(path: str | Path, arch: str) -> None:
    """A GGUF file of architecture ``arch`` holding one F32 matrix and no other metadata."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
