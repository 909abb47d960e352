"""Real tokenizer kinds trained in a second on a few hundred lines, for the cross-tokenizer tests.

- :func:`byte_level_bpe`: GPT-2/Qwen style (``Ġ``), byte-level, ChatML markers as special tokens, no BOS.
- :func:`metaspace_bpe`: SentencePiece/Llama-2 style (``▁``), byte fallback (``<0xNN>``), ``<s>`` added in front.
- :func:`lowercase_wordpiece`: BERT style, lower-casing and accent-stripping normalizer, ``[CLS] x [SEP]``.
- :func:`permuted_copy`: the same tokenizer with its ids shuffled (another vocabulary order, the same tokens).

:data:`TEXTS` holds the texts the alignment is checked on: Unicode, whitespace runs, numbers, code, and
:func:`chat_text` renders a conversation with a ChatML template.
"""

from __future__ import annotations

import json
import random

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_WORDS = (
    "the quick brown fox jumps over lazy dog distillation teacher student token model learns from "
    "café naïve résumé Ünïcödé straße façade jalapeño déjà vu"
).split()
_CODE = [
    "def f(x):\n    return {'k': [x**2 for x in range(10)]}  # squares",
    "for (int i = 0; i < n; ++i) { total += a[i]; }",
    'if __name__ == "__main__":\n\tmain()',
]
TEXTS = [
    "Héllo wörld! Ünïcödé: naïve café, 日本語のテキスト and Ω≈ç√ 🙂👍🏽.",
    "a  b\t\tc\n\n\n   d    e   ",
    "   leading spaces, then 3.14159 and 1,000,000 and 2026-12-03 and 0x1F 42nd",
    _CODE[0],
    "Emoji🙂glued and ALL CAPS and MiXeD cAsE with numbers123abc.",
]


def corpus(lines: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(lines):
        words = rng.choices(_WORDS, k=rng.randint(4, 12))
        if i % 5 == 0:
            words.append(str(rng.randint(0, 10**6)))
        if i % 7 == 0:
            words.append(rng.choice(_CODE))
        if i % 11 == 0:
            words.append("日本語 🙂")
        out.append(" ".join(words))
    return out


def byte_level_bpe(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(
        corpus(),
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    return tok


def metaspace_bpe(vocab_size: int = 500) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    specials = ["<unk>", "<s>", "</s>", *[f"<0x{i:02X}>" for i in range(256)]]
    backend.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials))
    # as in Llama 2's tokenizer.json, the <0xNN> byte tokens are ordinary vocabulary entries, not added tokens
    state = json.loads(backend.to_str())
    state["added_tokens"] = [t for t in state["added_tokens"] if not t["content"].startswith("<0x")]
    backend = Tokenizer.from_str(json.dumps(state))
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", backend.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>"
    )


def lowercase_wordpiece(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    backend.train_from_iterator(
        corpus(), trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials)
    )
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )


def permuted_copy(
    tokenizer: PreTrainedTokenizerFast, seed: int = 0
) -> tuple[PreTrainedTokenizerFast, list[int]]:
    """``(copy, perm)``: the copy spells token ``i`` of ``tokenizer`` with id ``perm[i]`` (BPE models)."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    size = len(state["model"]["vocab"])
    perm = list(range(size))
    random.Random(seed).shuffle(perm)
    state["model"]["vocab"] = {t: perm[i] for t, i in state["model"]["vocab"].items()}
    for added in state["added_tokens"]:
        added["id"] = perm[added["id"]]
    backend = Tokenizer.from_str(json.dumps(state))
    specials = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    return PreTrainedTokenizerFast(tokenizer_object=backend, **specials), perm


def chat_text(tokenizer: PreTrainedTokenizerFast) -> str:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Wie viel ist 12 × 7? Réponds en code."},
        {"role": "assistant", "content": "```python\nprint(12 * 7)  # 84\n```"},
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False)
