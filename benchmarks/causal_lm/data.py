"""Tinyshakespeare for the causal LM benchmark.

The split, a character tokenizer, training windows and validation sets.
"""

from __future__ import annotations

from typing import Any


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """Training and validation text: the last ``val_fraction`` of the characters are validation.

    >>> split_text("abcdefghij", 0.1)
    ('abcdefghi', 'j')
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction} must be in (0, 1).")
    cut = len(text) - int(round(len(text) * val_fraction))
    return text[:cut], text[cut:]


def char_tokenizer(train_text: str, model_max_length: int) -> Any:
    """A character-level fast tokenizer: every character of ``train_text``, plus ``<unk>`` and
    ``<|endoftext|>`` (bos = eos, no pad token, as GPT-2); ``decode`` joins characters back exactly."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate([*specials, *sorted(set(train_text))])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # Oniguruma's (?m) makes '.' match newlines too: every character, line breaks included, is one token.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        model_max_length=model_max_length,
    )


def encode(tokenizer: Any, text: str) -> Any:
    import torch

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != len(text):
        raise RuntimeError(f"character tokenizer gave {len(ids)} tokens for {len(text)} characters.")
    return torch.tensor(ids, dtype=torch.long)


class Windows:
    """``count`` random windows of ``seq_len`` tokens of ``ids`` (start positions drawn with ``seed``), as
    a map-style dataset of ``{"input_ids", "labels"}`` (the model shifts the labels)."""

    def __init__(self, ids: Any, seq_len: int, count: int, seed: int) -> None:
        import torch

        if len(ids) <= seq_len:
            raise ValueError(f"the text has {len(ids)} tokens, fewer than seq_len={seq_len} + 1.")
        gen = torch.Generator().manual_seed(seed)
        self.ids, self.seq_len = ids, seq_len
        self.starts = torch.randint(0, len(ids) - seq_len + 1, (count,), generator=gen)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        start = int(self.starts[i])
        window = self.ids[start : start + self.seq_len]
        return {"input_ids": window, "labels": window.clone()}


def validation_set(ids: Any, seq_len: int) -> Any:
    """Non-overlapping windows of ``seq_len`` tokens covering ``ids`` (the last one shorter)."""
    from datasets import Dataset

    rows = [ids[i : i + seq_len].tolist() for i in range(0, len(ids), seq_len)]
    rows = [r for r in rows if len(r) > 1]  # a 1-token row scores nothing
    return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})


def batches_of(windows: Windows, batch_size: int, *, labels: bool) -> list[dict[str, Any]]:
    import torch

    out = []
    for i in range(0, len(windows), batch_size):
        ids = torch.stack([windows[j]["input_ids"] for j in range(i, min(i + batch_size, len(windows)))])
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if labels:
            batch["labels"] = ids.clone()
        out.append(batch)
    return out
