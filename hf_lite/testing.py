"""Small checkpoints made in place: a word-level tokenizer and a randomly initialised model of a real
transformers architecture, saved with ``save_pretrained`` so they load through the same
``from_pretrained`` path as a Hub repo. The offline demo and the tests use them; nothing is downloaded.

>>> path = save_tiny_checkpoint("/tmp/tiny-llama", family="llama")  # doctest: +SKIP
>>> from hf_lite import load_model
>>> model = load_model(path, quantization="4bit", peft="lora")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from hf_lite.tasks import TASKS, normalize_task

if TYPE_CHECKING:
    from transformers import PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerFast

#: Families with a tiny config; each is a stock transformers architecture.
FAMILIES = ("llama", "gpt2", "bert", "t5")
#: Tokenizer conventions per family: BERT-style ([CLS] x [SEP], has a pad token) or GPT-style (eos only).
_BERT_STYLE = {"bert"}

_DEFAULT_WORDS = (
    "the a an one two three four five six seven eight nine ten cat dog bird fish tree house river "
    "red green blue big small old new good bad happy sad fast slow runs sees eats likes sleeps sings "
    "and or but not very is was are were to of in on at with for from by this that it he she they we you"
).split()

_WORD_RE = re.compile(r"\w+|[^\w\s]")


def build_tokenizer(
    texts: Iterable[str] | None = None,
    *,
    style: str = "gpt",
    max_vocab: int = 5000,
    model_max_length: int = 512,
) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer whose vocabulary is the most frequent words of ``texts``.

    ``style="bert"`` adds ``[PAD] [UNK] [CLS] [SEP] [MASK]`` and wraps inputs as ``[CLS] x [SEP]``;
    ``style="gpt"`` has ``<unk>`` and ``<|endoftext|>`` (bos = eos) and **no pad token**, like GPT-2.

    >>> tok = build_tokenizer(["the cat sat"], style="bert")
    >>> tok.convert_ids_to_tokens(tok("the cat")["input_ids"])
    ['[CLS]', 'the', 'cat', '[SEP]']
    """

    if style not in ("bert", "gpt"):
        raise ValueError(f"style={style!r} must be 'bert' or 'gpt'.")
    counts: Counter[str] = Counter()
    for text in texts if texts is not None else [" ".join(_DEFAULT_WORDS)]:
        counts.update(w.lower() for w in _WORD_RE.findall(text))
    specials = (
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] if style == "bert" else ["<unk>", "<|endoftext|>"]
    )
    words = [w for w, _ in counts.most_common(max_vocab - len(specials)) if w not in specials]
    vocab = {tok: i for i, tok in enumerate([*specials, *sorted(words)])}
    unk = specials[1] if style == "bert" else specials[0]
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    backend.normalizer = None

    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    if style == "bert":
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
        special_kwargs = dict(
            pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]"
        )
    else:
        special_kwargs = dict(unk_token="<unk>", bos_token="<|endoftext|>", eos_token="<|endoftext|>")

    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=model_max_length, **special_kwargs
    )


def tiny_config(
    family: str, vocab_size: int, *, special_ids: dict[str, int] | None = None, **overrides: Any
) -> PreTrainedConfig:
    """A small config of ``family`` (hidden 64, 2 layers, 4 heads; Llama with grouped-query attention).

    >>> cfg = tiny_config("llama", 100)
    >>> cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    (4, 2, 16)
    """

    ids = special_ids or {}
    common = {k: v for k, v in ids.items() if v is not None}
    if family == "llama":
        cls = transformers.LlamaConfig
        kwargs = dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=512,
            tie_word_embeddings=False,
        )
    elif family == "gpt2":
        cls = transformers.GPT2Config
        kwargs = dict(n_embd=64, n_layer=2, n_head=4, n_inner=128, n_positions=512)
    elif family == "bert":
        cls = transformers.BertConfig
        kwargs = dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=512,
        )
    elif family == "t5":
        cls = transformers.T5Config
        kwargs = dict(
            d_model=64,
            d_ff=128,
            d_kv=16,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            decoder_start_token_id=common.get("pad_token_id", 0),
        )
    else:
        raise ValueError(f"family={family!r} has no tiny config; choose one of {', '.join(FAMILIES)}.")
    return cls(vocab_size=vocab_size, **{**kwargs, **common, **overrides})


def build_tiny_model(
    family: str,
    task: str = "causal-lm",
    *,
    tokenizer: PreTrainedTokenizerFast | None = None,
    seed: int = 0,
    **config_overrides: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A randomly initialised (seeded) model of ``family`` for ``task`` and its tokenizer.

    >>> model, tok = build_tiny_model("bert", "sequence-classification", num_labels=3)  # doctest: +SKIP
    """

    task = normalize_task(task)
    if tokenizer is None:
        tokenizer = build_tokenizer(style="bert" if family in _BERT_STYLE else "gpt")
    pad = tokenizer.pad_token_id
    eos = tokenizer.eos_token_id
    special_ids = {
        "pad_token_id": pad if pad is not None else eos,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": eos,
    }
    if family == "bert":
        special_ids = {"pad_token_id": pad}
    config = tiny_config(family, len(tokenizer), special_ids=special_ids, **config_overrides)
    torch.manual_seed(seed)
    model = getattr(transformers, TASKS[task]).from_config(config)
    return model, tokenizer


def save_tiny_checkpoint(
    path: str | os.PathLike,
    family: str = "llama",
    task: str = "causal-lm",
    *,
    texts: Iterable[str] | None = None,
    seed: int = 0,
    **config_overrides: Any,
) -> Path:
    """Build a tiny ``family`` model for ``task`` (vocabulary from ``texts``) and save it with its tokenizer.

    Returns the folder, which ``from_pretrained``/``load_model`` accept like a Hub repo id.

    >>> save_tiny_checkpoint("/tmp/tiny-bert", "bert", "sequence-classification", num_labels=2)  # doctest: +SKIP
    PosixPath('/tmp/tiny-bert')
    """
    tokenizer = build_tokenizer(texts, style="bert" if family in _BERT_STYLE else "gpt")
    model, tokenizer = build_tiny_model(family, task, tokenizer=tokenizer, seed=seed, **config_overrides)
    out = Path(path)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
