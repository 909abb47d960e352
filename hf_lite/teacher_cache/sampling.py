"""The generation side of sequence-level distillation: prompts checked and rendered, batches generated.

:func:`prompts_dataset` and :func:`render_prompts` turn plain-text prompts or conversations (rendered with the
tokenizer's chat template and the generation prompt) into token ids; :func:`generate_batch` runs
``teacher.generate`` on a left-padded batch of them, greedy or sampled by :class:`SeededSampler` with one
generator per example (:func:`example_seed`), and cuts each completion after its first EOS.
:func:`~hf_lite.teacher_cache.generate_teacher_completions` builds the resumable dataset from them.
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from hf_lite.data.chat import encode_prompt
from hf_lite.teacher_cache.precompute import input_device

__all__ = [
    "SeededSampler",
    "check_sampling",
    "eos_token_ids",
    "example_seed",
    "generate_batch",
    "prompts_dataset",
    "render_prompts",
]


def check_sampling(temperature: float, top_p: float, seed: int) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a number; got {type(temperature).__name__} {temperature!r}.")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(
            f"temperature={temperature!r} cannot sample a token: logits are divided by it, so it must be a finite "
            "number > 0 (1.0 samples the teacher's own distribution). For greedy decoding pass do_sample=False."
        )
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(
            f"top_p={top_p!r} must be in (0, 1]: the probability mass of the most likely tokens kept (1.0 keeps all; "
            "0.9 is usual)."
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} must be an int >= 0.")


def prompts_dataset(prompts: Any, column: str) -> tuple[datasets.Dataset, bool]:
    """``(dataset with the prompts in column, conversational?)``, after checking every prompt's type."""
    if isinstance(prompts, datasets.DatasetDict):
        raise TypeError(
            f"prompts is a DatasetDict (splits {list(prompts)}); pass one split, e.g. prompts['train']."
        )
    if isinstance(prompts, datasets.Dataset):
        if column not in prompts.column_names:
            raise ValueError(
                f"prompts has no column prompt_column={column!r} (columns: {prompts.column_names}). Pass "
                "prompt_column=<the column holding the prompts>."
            )
        source = prompts
        values = list(prompts[column])
    elif isinstance(prompts, (list, tuple)):
        values = list(prompts)
        source = None
    else:
        raise TypeError(
            f"prompts must be a list of prompts (strings or message lists) or a datasets.Dataset; got "
            f"{type(prompts).__name__}."
        )
    if not values:
        raise ValueError("prompts is empty: there is nothing to complete. Pass at least one prompt.")
    kinds = set()
    for i, prompt in enumerate(values):
        if isinstance(prompt, str):
            kinds.add("text")
        elif (
            isinstance(prompt, (list, tuple))
            and prompt
            and all(isinstance(m, Mapping) and "role" in m and "content" in m for m in prompt)
        ):
            kinds.add("conversational")
        else:
            raise TypeError(
                f"prompt {i} is {type(prompt).__name__} {repr(prompt)[:80]}: a prompt is a string or a non-empty list "
                'of messages like {"role": "user", "content": "..."}.'
            )
    if len(kinds) > 1:
        raise ValueError(
            "prompts mixes plain strings and conversations; make them all one kind (e.g. wrap each string as "
            '[{"role": "user", "content": text}]).'
        )
    if source is None:
        source = datasets.Dataset.from_dict({column: values})
    return source, kinds == {"conversational"}


def render_prompts(tokenizer: Any, prompts: Sequence[Any], max_length: int | None = None) -> list[list[int]]:
    """Token ids of each prompt as :func:`hf_lite.data.chat.encode_prompt` gives them (the one home of prompt
    rendering, so the teacher generates from the prompt ids training uses): ``tokenizer(prompt)`` for a string,
    the chat template with the generation prompt for a conversation; longer than ``max_length``, the last
    ``max_length`` tokens.

    >>> from hf_lite.testing import build_tokenizer
    >>> render_prompts(build_tokenizer(["the cat sat"]), ["the cat sat", "cat"], max_length=2)
    [[2, 3], [2]]
    """
    ids = []
    for i, prompt in enumerate(prompts):
        row = encode_prompt(tokenizer, prompt, max_length=max_length or sys.maxsize, where=f"prompt {i}")
        if not row["input_ids"]:
            raise ValueError(
                f"prompt {i} ({str(prompt)[:80]!r}) has no tokens: there is nothing to condition the teacher on. "
                "Remove empty prompts first."
            )
        ids.append([int(t) for t in row["input_ids"]])
    return ids


def eos_token_ids(teacher: Any, tokenizer: Any, eos_token_id: Any) -> list[int]:
    if eos_token_id is not None:
        ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        if not ids or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            raise ValueError(
                f"eos_token_id={eos_token_id!r} must be a token id (an int >= 0) or a list of them."
            )
        return sorted(set(ids))
    found = getattr(getattr(teacher, "generation_config", None), "eos_token_id", None)
    ids = [found] if isinstance(found, int) else list(found or [])
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(int(i) for i in ids))


def example_seed(seed: int, index: int) -> int:
    """The seed of example ``index``'s generator: independent of batches and shards, so resuming repeats it."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8], "little") >> 1


class SeededSampler(LogitsProcessor):
    """Samples each row's next token with its own generator and returns logits that make it the argmax.

    ``generate`` runs greedy around it (KV cache, left padding, EOS handling unchanged), so the only
    randomness is these generators: ``softmax(scores / temperature)`` cut to the ``top_p`` nucleus (the
    likeliest tokens whose probabilities before each reach less than ``top_p``; the first is always kept).

    Example:

    >>> import torch
    >>> scores = torch.tensor([[2.0, 1.0, -1.0], [0.0, 0.0, 5.0]])  # (B, V)
    >>> picks = SeededSampler([example_seed(0, 0), example_seed(0, 1)], temperature=1.0, top_p=0.5)(None, scores)
    >>> picks.argmax(-1).tolist(), torch.isinf(picks).sum(-1).tolist()  # top_p=0.5 keeps the likeliest only
    ([0, 2], [2, 2])
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float) -> None:
        self.seeds, self.temperature, self.top_p = list(seeds), float(temperature), float(top_p)
        self.generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.generators is None:
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        probs = (scores.float() / self.temperature).softmax(-1)  # (B, V)
        if self.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)  # (B, V)
            before = sorted_p.cumsum(-1) - sorted_p  # mass of the likelier tokens; the first is always kept
            probs = torch.zeros_like(probs).scatter(
                -1, order, sorted_p.masked_fill(before >= self.top_p, 0.0)
            )
        picks = torch.cat(
            [torch.multinomial(p, 1, generator=g) for p, g in zip(probs, self.generators, strict=True)]
        )  # (B,)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(1, picks[:, None], 0.0)


def generate_batch(
    teacher: Any,
    rows: Sequence[Sequence[int]],
    offset: int,
    config: GenerationConfig,
    eos_ids: Sequence[int],
    pad_id: int,
    do_sample: bool,
    temperature: float,
    top_p: float,
    seed: int,
) -> list[list[int]]:
    """The completion ids of prompts ``rows`` (examples ``offset...``), cut after their first EOS."""
    length = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (length - len(r)) + list(r) for r in rows])  # (B, P), padded on the left
    mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])  # (B, P)
    device = input_device(teacher)
    processors = LogitsProcessorList()
    if do_sample:
        seeds = [example_seed(seed, offset + i) for i in range(len(rows))]
        processors.append(SeededSampler(seeds, temperature, top_p))
    with torch.no_grad():
        out = teacher.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            generation_config=config,
            logits_processor=processors,
        )  # (B, P + T)
    completions = []
    for row in out[:, length:].tolist():
        ends = [i for i, token in enumerate(row) if token in eos_ids]
        completions.append(row[: ends[0] + 1] if ends else row)
    return completions
