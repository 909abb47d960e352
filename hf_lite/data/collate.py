"""Batches of prompt/completion rows: right-padded for training, prompts left-padded for generation; and
batches tokenized twice, for a student and a teacher with different tokenizers.

:class:`CompletionCollator` takes the rows of :func:`hf_lite.data.tokenize_data` (or
:func:`~hf_lite.data.chat.tokenize_chat`): ``input_ids``, optional ``attention_mask``, ``labels`` and
``prompt_length``. :class:`CrossTokenizerCollator` takes text rows (``text``, or ``prompt`` + ``completion``),
tokenizes each with both tokenizers and adds the span alignment the cross-tokenizer losses read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from hf_lite.data.alignment import TokenAlignment, align_offsets, alignment_tensors, encode_with_offsets
from hf_lite.losses.cross_tokenizer import ALIGNMENT_KEYS

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "CROSS_TOKENIZER_COLUMNS",
    "CROSS_TOKENIZER_KEYS",
    "PROMPT_TEXT_KEY",
    "CompletionCollator",
    "CrossTokenizerCollator",
    "teacher_key",
]

_KNOWN = ("input_ids", "attention_mask", "labels", "prompt_length")


class CompletionCollator:
    """Pad tokenized causal-LM rows into a batch; with ``prompt_length``, add the prompts left-padded.

    Returns ``input_ids`` (right-padded with the pad token, else the EOS token), ``attention_mask`` (0 on
    padding; all ones when the rows have none) and, when the rows have them, ``labels`` (``-100`` on padding).
    When the rows have ``prompt_length``, also ``prompt_input_ids`` = ``input_ids[:prompt_length]`` of each row
    and ``prompt_attention_mask``, both **left**-padded, so the prompts end together where generation starts
    (``model.generate(prompt_input_ids, attention_mask=prompt_attention_mask)``); ``prompt_length`` itself is not
    in the batch (it is ``prompt_attention_mask.sum(-1)``). The tokenizer's ``padding_side`` is not used.

    Args:
        tokenizer: the model's tokenizer (its pad token id, or its EOS token id without one).
        pad_to_multiple_of: round both padded lengths up to a multiple of this (e.g. 8 for tensor cores).

    Raises:
        ValueError: a tokenizer with neither a pad nor an EOS token; rows with columns other than
            input_ids/attention_mask/labels/prompt_length, or with labels on some rows only.

    >>> from hf_lite.testing import build_tokenizer
    >>> tok = build_tokenizer(["a b c"])  # GPT-style: no pad token, EOS id 1 pads
    >>> batch = CompletionCollator(tok)([
    ...     {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "prompt_length": 1},
    ...     {"input_ids": [5, 6], "labels": [-100, -100], "prompt_length": 2}])
    >>> batch["input_ids"].tolist(), batch["labels"].tolist()
    ([[5, 6, 7], [5, 6, 1]], [[-100, 6, 7], [-100, -100, -100]])
    >>> batch["prompt_input_ids"].tolist(), batch["prompt_attention_mask"].tolist()
    ([[1, 5], [5, 6]], [[0, 1], [1, 1]])
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None = None) -> None:
        if pad_to_multiple_of is not None and (
            isinstance(pad_to_multiple_of, bool)
            or not isinstance(pad_to_multiple_of, int)
            or pad_to_multiple_of < 1
        ):
            raise ValueError(
                f"pad_to_multiple_of={pad_to_multiple_of!r} must be a positive integer (e.g. 8) or None."
            )
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "eos_token_id", None)
        if pad is None:
            raise ValueError(
                "the tokenizer has neither a pad token nor an eos token to pad input_ids with; set "
                "tokenizer.pad_token (hf_lite.load_tokenizer does) before collating."
            )
        self.tokenizer = tokenizer
        self.pad_token_id = int(pad)
        self.pad_to_multiple_of = pad_to_multiple_of

    def _width(self, lengths: Sequence[int]) -> int:
        width = max(lengths)
        m = self.pad_to_multiple_of
        return -(-width // m) * m if m else width

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("CompletionCollator got no rows; the batch must hold at least one.")
        unknown = sorted({k for f in features for k in f} - set(_KNOWN))
        if unknown:
            raise ValueError(
                f"CompletionCollator got columns {unknown} it does not pad; it takes {list(_KNOWN)}. Remove the "
                "other columns (dataset.remove_columns) or use the Trainer's remove_unused_columns."
            )
        ids = [list(f["input_ids"]) for f in features]
        masks = [list(f.get("attention_mask") or [1] * len(i)) for f, i in zip(features, ids, strict=True)]
        width = self._width([len(i) for i in ids])
        batch = {
            "input_ids": _pad(ids, width, self.pad_token_id, left=False),  # (batch, width)
            "attention_mask": _pad(masks, width, 0, left=False),
        }
        with_labels = ["labels" in f for f in features]
        if any(with_labels):
            if not all(with_labels):
                raise ValueError("some rows have labels and others not; tokenize all rows of a batch alike.")
            batch["labels"] = _pad([list(f["labels"]) for f in features], width, -100, left=False)
        if any("prompt_length" in f for f in features):
            lengths = [int(f.get("prompt_length", len(i))) for f, i in zip(features, ids, strict=True)]
            p_width = self._width(lengths)
            prompts = [i[:n] for i, n in zip(ids, lengths, strict=True)]
            p_masks = [m[:n] for m, n in zip(masks, lengths, strict=True)]
            batch["prompt_input_ids"] = _pad(
                prompts, p_width, self.pad_token_id, left=True
            )  # (batch, p_width)
            batch["prompt_attention_mask"] = _pad(p_masks, p_width, 0, left=True)
        return batch


#: What :class:`CrossTokenizerCollator` adds to a batch beside the student's ``input_ids``/``attention_mask``/
#: ``labels``: the teacher's own tokens and the alignment tensors (no model input of the student's).
CROSS_TOKENIZER_KEYS = ("teacher_input_ids", "teacher_attention_mask", *ALIGNMENT_KEYS)
#: The prompts' text in a batch of prompt/completion rows (a list of str), for re-tokenizing generated text.
PROMPT_TEXT_KEY = "prompt_text"
#: The columns :class:`CrossTokenizerCollator` reads: its text columns and those :meth:`~CrossTokenizerCollator.encode`
#: writes (the last two for prompt/completion rows only).
CROSS_TOKENIZER_COLUMNS = (
    *(
        "text",
        "prompt",
        "completion",
        "messages",
        "input_ids",
        "attention_mask",
        "labels",
        "teacher_input_ids",
    ),
    *("teacher_labels", "alignment", "prompt_length", PROMPT_TEXT_KEY),
)


def teacher_key(key: str, teacher: int) -> str:
    """The batch key or column of teacher ``teacher`` (the first's as named, the others' with ``_{teacher}``).

    >>> teacher_key("teacher_input_ids", 0), teacher_key("span_mask", 2)
    ('teacher_input_ids', 'span_mask_2')
    """
    return key if teacher == 0 else f"{key}_{teacher}"


class CrossTokenizerCollator:
    """Tokenize each text for the student *and* the teacher, align the two, and pad both into one batch.

    Rows are text: ``{"text": str}`` (every token a target) or ``{"prompt": str, "completion": str}`` (the
    targets are the tokens that cover completion characters; both are concatenated as they are), or chat:
    ``{"messages": [...]}`` or conversational ``prompt``/``completion`` lists, rendered once with the student
    tokenizer's chat template (both tokenizers read that string, so it aligns), the last (assistant) message being
    the completion. Each text is
    tokenized by both fast tokenizers with offsets (:func:`hf_lite.data.encode_with_offsets`), truncated to
    ``max_length`` tokens on each side if given, and aligned (:func:`hf_lite.data.align_offsets`). Rows that
    :meth:`encode` already turned into token ids (``dataset.map(collator.encode)``: the alignment computed once
    per example and kept in the dataset) are padded as they are.

    The batch: ``input_ids``, ``attention_mask``, ``labels`` (the student's, right-padded, ``-100`` on padding and
    non-targets), ``teacher_input_ids``, ``teacher_attention_mask`` and the alignment tensors
    (:data:`hf_lite.data.ALIGNMENT_KEYS`, from :func:`hf_lite.data.alignment_tensors`: a span counts when all of
    its tokens are targets on both sides); :data:`CROSS_TOKENIZER_KEYS` are those beyond the student's. Batches
    of prompt/completion rows also hold the student's prompts left-padded for generation (``prompt_input_ids``,
    ``prompt_attention_mask``: the tokens before the first target, as :class:`CompletionCollator` gives them)
    and the prompts' text (``prompt_text``, a list of str), so that on-policy completions can be decoded and
    tokenized again for both models.

    With several teacher tokenizers (one per teacher) every teacher's tokens and alignment come under
    :func:`teacher_key` names: the first's as above, teacher ``j``'s with the suffix ``_j``.

    Args:
        tokenizer: the student's tokenizer (fast).
        teacher_tokenizer: the teacher's tokenizer (fast), or a sequence of them (one per teacher).
        max_length: cut each side to this many tokens (None: no truncation).
        pad_to_multiple_of: round both padded lengths up to a multiple of this.

    Raises:
        TypeError: a tokenizer without offset mappings (a slow, pure-Python tokenizer).
        ValueError: a row with neither ``text`` nor ``prompt``/``completion`` strings; a text where no span of
            the two tokenizations covers the same characters (empty or whitespace-only text).

    >>> from hf_lite.testing import build_tokenizer
    >>> gpt, bert = build_tokenizer(["the cat sat"]), build_tokenizer(["the cat sat"], style="bert")
    >>> batch = CrossTokenizerCollator(gpt, bert)([{"text": "the cat sat"}, {"text": "the cat"}])
    >>> batch["input_ids"].tolist(), batch["teacher_input_ids"].tolist()
    ([[4, 2, 3], [4, 2, 1]], [[2, 7, 5, 6, 3], [2, 7, 5, 3, 0]])
    >>> batch["span_mask"].tolist()  # 'the' has no predicting student position (no BOS): not counted
    [[False, True, True], [False, True, False]]
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        teacher_tokenizer: PreTrainedTokenizerBase | Sequence[PreTrainedTokenizerBase],
        *,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        if max_length is not None and (
            isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1
        ):
            raise ValueError(f"max_length={max_length!r} must be a positive number of tokens or None.")
        several = isinstance(teacher_tokenizer, (list, tuple))
        teachers = list(teacher_tokenizer) if several else [teacher_tokenizer]
        names = [f"teacher_tokenizer[{j}]" if several else "teacher_tokenizer" for j in range(len(teachers))]
        for name, tok in (("tokenizer", tokenizer), *zip(names, teachers, strict=True)):
            if not getattr(tok, "is_fast", False):
                encode_with_offsets(tok, "", name=name)  # raises the TypeError that names the fix
        self.student = CompletionCollator(tokenizer, pad_to_multiple_of)
        self.teachers = [CompletionCollator(t, pad_to_multiple_of) for t in teachers]
        self.max_length = max_length

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns this collator reads (:data:`CROSS_TOKENIZER_COLUMNS`, and the other teachers')."""
        extra = ("teacher_input_ids", "teacher_labels", "alignment")
        return (
            *CROSS_TOKENIZER_COLUMNS,
            *(teacher_key(k, j) for j in range(1, len(self.teachers)) for k in extra),
        )

    def _text(self, example: Mapping[str, Any]) -> tuple[str, int]:
        """``(text, first target character)``."""
        if isinstance(example.get("text"), str):
            return example["text"], 0
        prompt, completion = example.get("prompt"), example.get("completion")
        if isinstance(prompt, str) and isinstance(completion, str):
            return prompt + completion, len(prompt)
        if isinstance(prompt, list) and isinstance(completion, list):  # conversational prompt/completion
            return self._chat([*prompt, *completion])
        if isinstance(example.get("messages"), list) and example["messages"]:
            return self._chat(example["messages"])
        raise ValueError(
            f"CrossTokenizerCollator got a row with columns {sorted(example)}: it needs 'text' (a string), "
            "'prompt' and 'completion' (strings, or lists of messages), 'messages', or the columns of "
            "CrossTokenizerCollator.encode."
        )

    def _chat(self, messages: list[Mapping[str, Any]]) -> tuple[str, int]:
        """A conversation rendered once, with the student's chat template (both tokenizers read that string); the
        last message, the assistant's, is the completion."""
        tok = self.student.tokenizer
        if not getattr(tok, "chat_template", None):
            raise ValueError(
                "chat rows are rendered with the student tokenizer's chat template, and it has none: set "
                "tokenizer.chat_template, or give 'prompt'/'completion' strings."
            )
        if not isinstance(messages[-1], Mapping) or messages[-1].get("role") != "assistant":
            raise ValueError(
                f"the last message of a chat row must be the assistant's (the completion distilled); got "
                f"{messages[-1]!r:.80}."
            )
        prompt = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        text = tok.apply_chat_template(messages, tokenize=False)
        if not text.startswith(prompt):
            raise ValueError(
                "the chat template renders the conversation's start differently with and without its last "
                "message, so the completion cannot be told apart: give 'prompt'/'completion' strings."
            )
        return text, len(prompt)

    def encode(self, example: Mapping[str, Any]) -> dict[str, Any]:
        """One text row -> token ids of both sides, their labels and the alignment (plain lists: a dataset column).

        >>> from hf_lite.testing import build_tokenizer
        >>> gpt, bert = build_tokenizer(["a b"]), build_tokenizer(["a b"], style="bert")
        >>> row = CrossTokenizerCollator(gpt, bert).encode({"prompt": "a", "completion": " b"})
        >>> row["labels"], row["teacher_labels"], row["alignment"]["spans"]
        ([-100, 3], [-100, -100, 6, -100], [[0, 1, 1, 2, 0, 1], [1, 2, 2, 3, 1, 3]])
        """
        text, first = self._text(example)
        kwargs = {"truncation": True, "max_length": self.max_length} if self.max_length else {}
        sides = []
        for name, tok in (
            ("tokenizer", self.student.tokenizer),
            *(("teacher_tokenizer", t.tokenizer) for t in self.teachers),
        ):
            enc = encode_with_offsets(tok, text, name=name, **kwargs)
            ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
            # a target: a token that covers a character of the completion (special tokens cover none)
            labels = [
                i if end > first and end > start else -100
                for i, (start, end) in zip(ids, offsets, strict=True)
            ]
            sides.append((ids, offsets, labels))
        s_ids, s_offsets, s_labels = sides[0]
        row = {"input_ids": s_ids, "attention_mask": [1] * len(s_ids), "labels": s_labels}
        for j, (t_ids, t_offsets, t_labels) in enumerate(sides[1:]):
            try:
                alignment = align_offsets(text, s_offsets, t_offsets)
            except ValueError as err:
                raise ValueError(
                    f"text={text[:60]!r}: {err} Drop empty or whitespace-only rows (dataset.filter) before training."
                ) from None
            row[teacher_key("teacher_input_ids", j)] = t_ids
            row[teacher_key("teacher_labels", j)] = t_labels
            row[teacher_key("alignment", j)] = alignment.to_dict()
        if first:  # the prompt: the tokens before the first target
            targets = [i for i, label in enumerate(s_labels) if label != -100]
            row.update(prompt_length=targets[0] if targets else len(s_ids), prompt_text=text[:first])
        return row

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("CrossTokenizerCollator got no rows; the batch must hold at least one.")
        rows = [f if "alignment" in f else self.encode(f) for f in features]
        prompts = all(PROMPT_TEXT_KEY in r for r in rows)
        keys = ("input_ids", "attention_mask", "labels", *(("prompt_length",) if prompts else ()))
        student = self.student([{k: r[k] for k in keys} for r in rows])
        batch = dict(student)
        for j, collate in enumerate(self.teachers):
            teacher = collate(
                [
                    {
                        "input_ids": r[teacher_key("teacher_input_ids", j)],
                        "labels": r[teacher_key("teacher_labels", j)],
                    }
                    for r in rows
                ]
            )
            tensors = alignment_tensors(
                [TokenAlignment.from_dict(r[teacher_key("alignment", j)]) for r in rows],
                student_input_ids=student["input_ids"],
                teacher_input_ids=teacher["input_ids"],
                student_attention_mask=student["attention_mask"],
                teacher_attention_mask=teacher["attention_mask"],
                student_labels=student["labels"],
                teacher_labels=teacher["labels"],
            )
            tensors.update(
                teacher_input_ids=teacher["input_ids"], teacher_attention_mask=teacher["attention_mask"]
            )
            batch.update({teacher_key(k, j): tensors[k] for k in CROSS_TOKENIZER_KEYS})
        if prompts:
            batch[PROMPT_TEXT_KEY] = [r[PROMPT_TEXT_KEY] for r in rows]
        return batch


def _pad(rows: list[list[int]], width: int, value: int, *, left: bool) -> torch.Tensor:
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for r, row in enumerate(rows):
        if row:
            if left:
                out[r, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            else:
                out[r, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out
