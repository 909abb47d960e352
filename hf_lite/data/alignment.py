r"""Align two tokenizations of one text: the spans of student and teacher tokens that cover the same characters.

Distilling across tokenizers (ULD, Boizard et al. 2024; TRL's GOLD) compares the two models where their
tokenizations agree on a boundary. :func:`align_offsets` computes those places from the offset mappings of
fast tokenizers (``return_offsets_mapping=True``), so it is a pure function of the text and two lists of
``(start, end)`` character offsets; :func:`alignment_tensors` turns a batch of alignments into the index
tensors :mod:`hf_lite.losses.cross_tokenizer` reads.

The rules, in order:

1. **Offsets, not strings.** Both offset mappings index the characters of the *same* Python string, so tokens
   are compared by the characters they came from, never by their text: a lower-casing WordPiece (``Hello`` ->
   ``hello``), accent stripping or NFKC still aligns as long as its offsets map back to the original text
   (fast tokenizers guarantee this). A character a normalizer deletes (BERT drops control characters) is
   covered by one side only; the span around it closes at the next common boundary.
2. **Tokens covering nothing** (``start == end``: BOS/EOS/CLS/SEP added by a post-processor, offsets trimmed
   to nothing) match nothing: before the first span and after the last they stay unmatched (so a BOS on one
   side only is harmless); between two spans they join the later one (spans tile the tokens between them).
   Special tokens written in the text (a chat template's ``<|im_start|>``) cover their characters and align
   like any token; a tokenizer that does not know them splits them into pieces, which then form one span
   with the other side's single token. Tokenize the rendered conversation (``apply_chat_template(...,
   tokenize=False)``) with both tokenizers, so that both offset mappings index the same string.
3. **Overlapping tokens form one unit.** Byte-fallback tokens (``<0xF0>`` ``<0x9F>`` ...) and byte-level
   pieces of one character share that character's offsets; consecutive tokens whose offsets overlap are kept
   together, so no span boundary falls inside a character.
4. **Whitespace belongs to either side.** ``Ġworld``/``▁world`` carry the space before a word, a WordPiece
   ``world`` does not, some tokenizers emit whitespace runs as their own tokens. Boundaries are therefore
   compared by the number of non-whitespace characters before them (``str.isspace``): a span closes when both
   sides end after the same non-whitespace character. A span with no non-whitespace character closes only
   where both sides end at the very same character (whitespace runs are walked character by character to find
   one); otherwise whitespace-only tokens join the next span (and those after the last span stay unmatched).
   A span's ``chars`` range ends where both sides end when they agree, else just after its last
   non-whitespace character (the whitespace between two spans then goes to the later one, the ``Ġ``/``▁``
   convention); the two sides' tokens of a span cover exactly the non-whitespace characters of its range.
   So two identical tokenizers give one span per token (per unit).
5. **Greedy, two pointers.** Walk both sides' units, advancing the one that ends earlier; a span closes as soon
   as both end at the same place, so spans are as short as possible. Units left when one side runs out
   (truncation) stay unmatched.

Causal LMs: the logits at token ``i - 1`` predict token ``i``. The losses compare, for each span, the student's
distribution at the position before the span's first student token with the teacher's at the position before
its first teacher token (both predict how the span starts), and multiply in the probabilities of the span's
later tokens (chain rule). A span whose first token is the first of its sequence (no BOS) has no predicting
position and is not counted.

>>> text = "Hello world"
>>> student = [(0, 5), (5, 11)]  # "Hello", " world" (byte-level BPE: the space leads)
>>> teacher = [(0, 0), (0, 3), (3, 5), (6, 11), (0, 0)]  # [CLS] "hel" "##lo" "world" [SEP]
>>> [(s.student, s.teacher, text[slice(*s.chars)]) for s in align_offsets(text, student, teacher).spans]
[((0, 1), (1, 3), 'Hello'), ((1, 2), (3, 4), ' world')]
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from hf_lite.losses import IGNORE_INDEX
from hf_lite.losses.cross_tokenizer import ALIGNMENT_KEYS

if TYPE_CHECKING:
    from transformers import BatchEncoding, PreTrainedTokenizerBase

__all__ = [
    "ALIGNMENT_KEYS",
    "AlignedSpan",
    "TokenAlignment",
    "align_offsets",
    "align_texts",
    "alignment_tensors",
    "encode_with_offsets",
]


class AlignedSpan(NamedTuple):
    """One aligned span: student tokens ``[start, end)``, teacher tokens ``[start, end)``, characters ``[start, end)``.

    >>> span = AlignedSpan(student=(1, 3), teacher=(2, 3), chars=(5, 11))
    >>> span.student, span.chars
    ((1, 3), (5, 11))
    """

    student: tuple[int, int]
    teacher: tuple[int, int]
    chars: tuple[int, int]


@dataclass(frozen=True)
class TokenAlignment:
    """The aligned spans of one text, in order, with both tokenizations' lengths.

    Consecutive spans tile the tokens between the first and the last span on each side; tokens outside
    ``[spans[0].student[0], spans[-1].student[1])`` (BOS, EOS, a tail cut by truncation) are unmatched.

    >>> alignment = align_offsets("a b", [(0, 1), (1, 3)], [(0, 1), (2, 3)])
    >>> len(alignment.spans), alignment.student_length, alignment.unmatched_student()
    (2, 2, [])
    """

    spans: tuple[AlignedSpan, ...]
    student_length: int
    teacher_length: int

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and ints (a ``datasets`` column can hold it: compute the alignment once per example).

        >>> alignment = align_offsets("a b", [(0, 1), (1, 3)], [(0, 1), (2, 3)])
        >>> alignment.to_dict()
        {'spans': [[0, 1, 0, 1, 0, 1], [1, 2, 1, 2, 1, 3]], 'student_length': 2, 'teacher_length': 2}
        >>> TokenAlignment.from_dict(alignment.to_dict()) == alignment
        True
        """
        return {
            "spans": [[*span.student, *span.teacher, *span.chars] for span in self.spans],
            "student_length": self.student_length,
            "teacher_length": self.teacher_length,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenAlignment:
        """The alignment :meth:`to_dict` wrote."""
        try:
            spans = tuple(AlignedSpan((a, b), (c, d), (e, f)) for a, b, c, d, e, f in data["spans"])
            return cls(spans, int(data["student_length"]), int(data["teacher_length"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"data is not a TokenAlignment.to_dict() result ({err}): expected {{'spans': [[s0, s1, t0, t1, c0, "
                "c1], ...], 'student_length': int, 'teacher_length': int}."
            ) from None

    def unmatched_student(self) -> list[int]:
        """Student token indices in no span."""
        return _unmatched(self.spans, 0, self.student_length)

    def unmatched_teacher(self) -> list[int]:
        """Teacher token indices in no span."""
        return _unmatched(self.spans, 1, self.teacher_length)


def _unmatched(spans: Sequence[AlignedSpan], side: int, length: int) -> list[int]:
    inside = {i for span in spans for i in range(*span[side])}
    return [i for i in range(length) if i not in inside]


class _Unit(NamedTuple):
    first: int  # first token of the unit
    stop: int  # one past its last token
    end: int  # non-whitespace characters before the unit's end (the comparable boundary)
    start: int  # character range of the unit
    stop_char: int


def _check_offsets(name: str, offsets: Any, text_length: int) -> list[tuple[int, int]]:
    if isinstance(offsets, torch.Tensor):
        offsets = offsets.tolist()
    if isinstance(offsets, (str, bytes)) or not isinstance(offsets, Sequence):
        raise TypeError(
            f"{name} must be a sequence of (start, end) character offsets, one per token (a fast tokenizer's "
            f"offset_mapping); got {type(offsets).__name__}."
        )
    checked = []
    for i, pair in enumerate(offsets):
        try:
            start, end = (int(x) for x in pair)
        except (TypeError, ValueError):
            raise TypeError(f"{name}[{i}]={pair!r} is not a (start, end) pair of ints.") from None
        if not 0 <= start <= end <= text_length:
            raise ValueError(
                f"{name}[{i}]=({start}, {end}) is outside the text (0..{text_length} characters): the offsets "
                "must come from tokenizing this very text (same string, no prefix added after tokenizing)."
            )
        checked.append((start, end))
    return checked


def _units(offsets: list[tuple[int, int]], non_space: list[int]) -> list[_Unit]:
    """Group the tokens that cover characters into units whose character ranges do not overlap (rule 3)."""
    units: list[_Unit] = []
    first, stop, start, end = -1, -1, 0, 0
    for i, (a, b) in enumerate(offsets):
        if a == b:
            continue  # covers nothing (rule 2)
        if first >= 0 and a < end:  # overlaps the unit being built: same character(s)
            stop, end = i + 1, max(end, b)
            start = min(start, a)
            continue
        if first >= 0:
            units.append(_Unit(first, stop, non_space[end], start, end))
        first, stop, start, end = i, i + 1, a, b
    if first >= 0:
        units.append(_Unit(first, stop, non_space[end], start, end))
    return units


def align_offsets(text: str, student_offsets: Any, teacher_offsets: Any) -> TokenAlignment:
    """Aligned spans of two tokenizations of ``text``, from their offset mappings (the rules in the module doc).

    Args:
        text: the string both tokenizers were given.
        student_offsets: the student tokenizer's ``offset_mapping`` for ``text``: one ``(start, end)`` character
            range per token (a list of pairs or a ``(seq, 2)`` tensor), ``(0, 0)`` for added special tokens.
        teacher_offsets: the teacher tokenizer's, likewise.

    Returns:
        A :class:`TokenAlignment`; for each span, the non-whitespace characters under its student tokens and
        under its teacher tokens are the same characters of ``text``.

    Raises:
        ValueError: when no span aligns (different texts, an empty side, offsets of only special tokens).

    Example:

    >>> text = "naïve café"
    >>> student = [(0, 1), (1, 3), (3, 5), (5, 9), (9, 10)]  # byte pieces, "ï" in one token
    >>> teacher = [(0, 0), (0, 5), (6, 10)]  # <s> "▁naïve" "▁café" (no space in the first offsets)
    >>> [(s.student, s.teacher) for s in align_offsets(text, student, teacher).spans]
    [((0, 3), (1, 2)), ((3, 5), (2, 3))]
    """
    if not isinstance(text, str):
        raise TypeError(
            f"text must be a str (the text both tokenizers were given); got {type(text).__name__}."
        )
    student = _check_offsets("student_offsets", student_offsets, len(text))
    teacher = _check_offsets("teacher_offsets", teacher_offsets, len(text))
    # non_space[p]: non-whitespace characters in text[:p]; after[k]: the position just after the k-th of them
    non_space = [0, *itertools.accumulate(not c.isspace() for c in text)]
    after = [0] * (non_space[-1] + 1)
    for p in range(len(text)):
        if not text[p].isspace():
            after[non_space[p + 1]] = p + 1
    s_units, t_units = _units(student, non_space), _units(teacher, non_space)
    spans: list[AlignedSpan] = []
    if s_units and t_units:
        i = j = 0
        s_from, t_from = s_units[0].first, t_units[0].first
        c_from, closed = (
            min(s_units[0].start, t_units[0].start),
            non_space[min(s_units[0].start, t_units[0].start)],
        )
        while i < len(s_units) and j < len(t_units):
            s_end, t_end = s_units[i].end, t_units[j].end
            if s_end < t_end:
                i += 1
            elif t_end < s_end:
                j += 1
            elif s_end > closed or s_units[i].stop_char == t_units[j].stop_char:
                # both end after the same non-whitespace character, or at the very same character (rule 4)
                same = s_units[i].stop_char == t_units[j].stop_char
                c_to = s_units[i].stop_char if same else after[s_end]
                spans.append(
                    AlignedSpan((s_from, s_units[i].stop), (t_from, t_units[j].stop), (c_from, c_to))
                )
                s_from, t_from, c_from, closed = s_units[i].stop, t_units[j].stop, c_to, s_end
                i += 1
                j += 1
            elif (
                s_units[i].stop_char < t_units[j].stop_char
            ):  # whitespace only on both sides: walk it by character
                i += 1
            else:
                j += 1
    if not spans:
        raise ValueError(
            f"no span of student and teacher tokens covers the same characters of text={text[:60]!r} "
            f"({len(student)} student and {len(teacher)} teacher offsets): both offset mappings must come from "
            "tokenizing this same text with fast tokenizers (return_offsets_mapping=True), and each side must "
            "cover some non-whitespace character (not only special tokens)."
        )
    return TokenAlignment(tuple(spans), len(student), len(teacher))


def encode_with_offsets(
    tokenizer: PreTrainedTokenizerBase, texts: str | Sequence[str], *, name: str = "tokenizer", **kwargs: Any
) -> BatchEncoding:
    """``tokenizer(texts, return_offsets_mapping=True, **kwargs)``, refusing tokenizers without offset mappings.

    Slow (pure Python) tokenizers cannot map tokens back to characters; the alignment needs fast ones.

    >>> from hf_lite.testing import build_tokenizer
    >>> tok = build_tokenizer(["hello world"], style="bert")
    >>> encode_with_offsets(tok, "Hello world")["offset_mapping"]
    [(0, 0), (0, 5), (6, 11), (0, 0)]
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"{name} ({type(tokenizer).__name__}) is not a fast tokenizer, so it has no offset mapping to align "
            "tokens by character: load it with AutoTokenizer.from_pretrained(..., use_fast=True) (a "
            "tokenizer.json backed PreTrainedTokenizerFast)."
        )
    return tokenizer(texts, return_offsets_mapping=True, **kwargs)


def align_texts(
    texts: str | Sequence[str],
    student_tokenizer: PreTrainedTokenizerBase,
    teacher_tokenizer: PreTrainedTokenizerBase,
    **tokenizer_kwargs: Any,
) -> list[TokenAlignment]:
    """Tokenize each text with both tokenizers (``tokenizer_kwargs`` passed to both) and align the two.

    >>> from hf_lite.testing import build_tokenizer
    >>> bert, gpt = build_tokenizer(["a cat sat"], style="bert"), build_tokenizer(["a cat sat"])
    >>> [s.student for s in align_texts("a cat sat", gpt, bert)[0].spans]
    [(0, 1), (1, 2), (2, 3)]
    """
    batch = [texts] if isinstance(texts, str) else list(texts)
    student = encode_with_offsets(student_tokenizer, batch, name="student_tokenizer", **tokenizer_kwargs)
    teacher = encode_with_offsets(teacher_tokenizer, batch, name="teacher_tokenizer", **tokenizer_kwargs)
    return [
        align_offsets(text, s, t)
        for text, s, t in zip(batch, student["offset_mapping"], teacher["offset_mapping"], strict=True)
    ]


def _positions(name: str, mask: torch.Tensor | None, row: int, seq: int, length: int) -> list[int]:
    """Padded positions of an example's tokens, in order."""
    if mask is None:
        if length > seq:
            raise ValueError(f"example {row} has {length} {name} tokens but the batch holds {seq} positions.")
        return list(range(length))
    positions = mask[row].nonzero().flatten().tolist()
    if len(positions) != length:
        raise ValueError(
            f"{name}_attention_mask row {row} has {len(positions)} tokens but its alignment has {length}: align "
            "the very encodings the batch is padded from (same truncation, same special tokens)."
        )
    return positions


def _check_ids(name: str, ids: Any, rows: int) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2:
        raise TypeError(f"{name} must be a (batch, seq) tensor of token ids; got {type(ids).__name__}.")
    if ids.shape[0] != rows:
        raise ValueError(f"{name} has {ids.shape[0]} rows but {rows} alignments were given: one per example.")
    return ids


def alignment_tensors(
    alignments: Sequence[TokenAlignment],
    *,
    student_input_ids: torch.Tensor,
    teacher_input_ids: torch.Tensor,
    student_attention_mask: torch.Tensor | None = None,
    teacher_attention_mask: torch.Tensor | None = None,
    student_labels: torch.Tensor | None = None,
    teacher_labels: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """A batch of alignments as padded index tensors for the cross-tokenizer losses (keys :data:`ALIGNMENT_KEYS`).

    With ``K`` the most spans of any example:

    - ``student_index``/``teacher_index`` ``(batch, K)``: the position whose logits predict the span's first
      student/teacher token (the token before it); 0 where ``span_mask`` is False.
    - ``span_mask`` ``(batch, K)`` bool: the span exists and counts: both first tokens have a predicting
      position, and every token of the span is a target (label not ``-100``) on the student side and, when
      ``teacher_labels`` are given, on the teacher side.
    - ``student_span``/``teacher_span`` ``(batch, seq)``: ``k`` where the position predicts a *later* token of
      span ``k`` (a factor of the chain rule), ``-1`` elsewhere.
    - ``student_next_ids``/``teacher_next_ids`` ``(batch, seq)``: the token each position predicts
      (``input_ids`` shifted left, ``0`` at the last position).

    Args:
        alignments: one :class:`TokenAlignment` per row, from the encodings the batch is padded from.
        student_input_ids: ``(batch, seq_s)``, left or right padded.
        teacher_input_ids: ``(batch, seq_t)``.
        student_attention_mask: ``(batch, seq_s)``; where the real tokens are (default: all, unpadded).
        teacher_attention_mask: ``(batch, seq_t)``.
        student_labels: ``(batch, seq_s)`` *unshifted* labels (``input_ids`` with ``-100`` where not a target).
        teacher_labels: ``(batch, seq_t)``, likewise; optional.

    Example:

    >>> import torch
    >>> alignment = align_offsets("Hi there", [(0, 2), (2, 8)], [(0, 0), (0, 2), (3, 8)])
    >>> out = alignment_tensors([alignment], student_input_ids=torch.tensor([[5, 6]]),
    ...                         teacher_input_ids=torch.tensor([[1, 7, 8]]))
    >>> out["student_index"].tolist(), out["teacher_index"].tolist(), out["span_mask"].tolist()
    ([[0, 0]], [[0, 1]], [[False, True]])
    """
    if isinstance(alignments, TokenAlignment) or not isinstance(alignments, Sequence):
        raise TypeError("alignments must be a sequence of TokenAlignment, one per row of the batch.")
    rows = len(alignments)
    for row, alignment in enumerate(alignments):
        if not isinstance(alignment, TokenAlignment):
            raise TypeError(f"alignments[{row}] is a {type(alignment).__name__}, not a TokenAlignment.")
    s_ids = _check_ids("student_input_ids", student_input_ids, rows)
    t_ids = _check_ids("teacher_input_ids", teacher_input_ids, rows)
    k_max = max([len(a.spans) for a in alignments] + [1])
    device = s_ids.device
    out = {
        "student_index": torch.zeros(rows, k_max, dtype=torch.long),
        "teacher_index": torch.zeros(rows, k_max, dtype=torch.long),
        "span_mask": torch.zeros(rows, k_max, dtype=torch.bool),
        "student_span": torch.full(tuple(s_ids.shape), -1, dtype=torch.long),
        "teacher_span": torch.full(tuple(t_ids.shape), -1, dtype=torch.long),
    }
    sides = (
        ("student", s_ids, student_attention_mask, student_labels),
        ("teacher", t_ids, teacher_attention_mask, teacher_labels),
    )
    for row, alignment in enumerate(alignments):
        counted = [True] * len(alignment.spans)
        for side, (name, ids, mask, labels) in enumerate(sides):
            length = alignment.student_length if side == 0 else alignment.teacher_length
            pos = _positions(name, mask, row, ids.shape[1], length)
            labelled = None if labels is None else (labels[row].cpu() != IGNORE_INDEX).tolist()
            for k, span in enumerate(alignment.spans):
                start, stop = span[side]
                if start == 0 or (
                    labelled is not None and not all(labelled[pos[i]] for i in range(start, stop))
                ):
                    counted[k] = False
                    continue
                out[f"{name}_index"][row, k] = pos[start - 1]
                for i in range(start + 1, stop):
                    out[f"{name}_span"][row, pos[i - 1]] = k
        out["span_mask"][row, : len(counted)] = torch.tensor(counted, dtype=torch.bool)
    for name, ids, _, _ in sides:
        out[f"{name}_next_ids"] = torch.nn.functional.pad(ids[:, 1:], (0, 1), value=0).long()
    out["student_index"] *= out["span_mask"]
    out["teacher_index"] *= out["span_mask"]
    # continuation positions of spans that do not count are cleared, so the loss never reads them
    for name in ("student", "teacher"):
        span = out[f"{name}_span"]
        keep = (span >= 0) & out["span_mask"].gather(1, span.clamp(min=0))
        out[f"{name}_span"] = torch.where(keep, span, -1)
    return {key: value.to(device) for key, value in out.items()}
