"""The teacher fingerprint: one hash of everything that decides a cache's values (weights, tokenizer, k, T).

:func:`teacher_fingerprint` is what :func:`~hf_lite.teacher_cache.load_teacher_cache` compares before it hands
out a cache; :func:`teacher_digest` and :func:`tokenizer_digest` are its parts, compared one by one so an
error can say which of them differs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch

from hf_lite.losses._checks import check_temperature

__all__ = [
    "FORMAT_VERSION",
    "check_k",
    "combine",
    "fingerprint_parts",
    "teacher_digest",
    "teacher_fingerprint",
    "tokenizer_digest",
]

#: Version of the on-disk layout (:mod:`~hf_lite.teacher_cache.store`); part of the fingerprint, so a cache of
#: another layout never loads as this one.
FORMAT_VERSION = 1
#: Config entries that describe where or how a model was saved or called, not what it computes.
_VOLATILE_CONFIG_KEYS = frozenset(
    {
        "_name_or_path",
        "transformers_version",
        "architectures",
        "_commit_hash",
        "_attn_implementation",
        "_attn_implementation_autoset",
        "_attn_implementation_internal",
        "attn_implementation",
        "output_hidden_states",
        "output_attentions",
        "return_dict",
        "use_cache",
        "dtype",
        "torch_dtype",
    }
)
#: Backend tokenizer settings that transformers changes on every padded/truncated call.
_VOLATILE_TOKENIZER_KEYS = ("truncation", "padding")


def teacher_fingerprint(teacher: torch.nn.Module, tokenizer: Any, k: int, temperature: float) -> str:
    """A stable hash of everything that decides the cached values; equal fingerprints mean equal caches.

    What goes in, and why:

    - **the teacher's weights**: SHA-256 of the bytes, dtype, shape and name of every ``state_dict`` entry
      (quantized weights and their quantization state included), with the model class (which head) and its
      config minus bookkeeping entries (``_name_or_path``, ``transformers_version``, ``dtype``, ``use_cache``,
      ...). Weights decide the logits; the config holds what is not a weight but changes them (norm epsilon,
      RoPE base, activation, label order). Hashing every byte is the only sound digest (a sampled one misses
      a fine-tuned row) and costs about one second per 2 GB of weights.
    - **the tokenizer**: its backend JSON (vocabulary, merges, normalizer, special and added tokens), without
      the padding/truncation state that calls leave behind. The cached indices are ids of this vocabulary.
    - **k** and **temperature**: they decide which entries are kept and their values (``softmax(z / T)``).
    - **the format version** (:data:`FORMAT_VERSION`): a new layout must not be read as the old one.

    The storage dtype and the batching are not in it: they change rounding, not meaning. The result is the
    same in every process and after ``save_pretrained``/``from_pretrained``.

    Args:
        teacher: the teacher model (``nn.Module``; a ``PreTrainedModel`` gives its config too).
        tokenizer: the tokenizer the dataset was tokenized with.
        k: entries kept per position.
        temperature: the distillation temperature ``T > 0``.

    Returns:
        32 hexadecimal characters.

    Example:

    >>> from hf_lite.testing import build_tiny_model
    >>> teacher, tok = build_tiny_model("llama", seed=0)
    >>> fp = teacher_fingerprint(teacher, tok, k=16, temperature=2.0)
    >>> len(fp), fp == teacher_fingerprint(teacher, tok, k=16, temperature=1.0)
    (32, False)
    """
    return combine(fingerprint_parts(teacher, tokenizer, k, temperature))


def fingerprint_parts(teacher: Any, tokenizer: Any, k: int, temperature: float) -> dict[str, Any]:
    """The ingredients of :func:`teacher_fingerprint`, by name (kept in the metadata to say which one differs)."""
    check_k(k)
    check_temperature(temperature)
    return {
        "format_version": FORMAT_VERSION,
        "teacher": teacher_digest(teacher),
        "tokenizer": tokenizer_digest(tokenizer),
        "k": int(k),
        "temperature": float(temperature),
    }


def combine(parts: Mapping[str, Any]) -> str:
    """The fingerprint of :func:`fingerprint_parts`: 32 hexadecimal characters of their SHA-256."""
    return hashlib.sha256(json.dumps(dict(parts), sort_keys=True).encode()).hexdigest()[:32]


def teacher_digest(teacher: Any) -> str:
    """SHA-256 of the teacher's class, config (bookkeeping entries removed) and every ``state_dict`` byte."""
    if not isinstance(teacher, torch.nn.Module):
        raise TypeError(
            f"teacher must be a torch.nn.Module (a loaded model); got {type(teacher).__name__}. Load it first, "
            "e.g. with hf_lite.load_teacher(name_or_path, task)."
        )
    hasher = hashlib.sha256()
    hasher.update(type(teacher).__name__.encode())
    config = getattr(teacher, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        hasher.update(json.dumps(_strip_config(config.to_dict()), sort_keys=True, default=str).encode())
    for name, value in teacher.state_dict().items():
        hasher.update(name.encode())
        if not isinstance(value, torch.Tensor):
            hasher.update(repr(value).encode())
            continue
        if value.device.type == "meta":
            raise ValueError(
                f"teacher weight {name!r} is on the meta device (offloaded or not loaded), so it cannot be hashed "
                "and the cache cannot be fingerprinted. Load the teacher without disk offload (device_map on "
                "devices that hold it, or on CPU)."
            )
        hasher.update(f"{value.dtype}{tuple(value.shape)}".encode())
        data = value.detach().contiguous().cpu().reshape(-1).view(torch.uint8)
        hasher.update(memoryview(data.numpy()))
    return hasher.hexdigest()


def _strip_config(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_config(v) for k, v in value.items() if k not in _VOLATILE_CONFIG_KEYS}
    if isinstance(value, (list, tuple)):
        return [_strip_config(v) for v in value]
    return value


def tokenizer_digest(tokenizer: Any) -> str:
    """SHA-256 of the tokenizer's backend JSON (or vocabulary) and length, without per-call padding state."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        for key in _VOLATILE_TOKENIZER_KEYS:
            state.pop(key, None)
    elif hasattr(tokenizer, "get_vocab"):
        # A slow (Python) tokenizer: its vocabulary, added tokens included, is what the ids mean.
        state = {"vocab": sorted(tokenizer.get_vocab().items()), "class": type(tokenizer).__name__}
    else:
        raise TypeError(
            f"tokenizer must be a transformers tokenizer (the one the dataset was tokenized with); got "
            f"{type(tokenizer).__name__}."
        )
    state = {"backend": state, "len": len(tokenizer)}
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()


def check_k(k: int) -> None:
    """Raise unless ``k`` (entries kept per position) is an int ``>= 1``."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int; got {type(k).__name__} {k!r}.")
    if k < 1:
        raise ValueError(f"k={k} must be >= 1 (entries kept per position); typical caches keep 16..100.")
