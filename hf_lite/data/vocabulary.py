"""Two tokenizers' vocabularies side by side: how they relate, and which tokens stand for the same text.

* :func:`compare_vocabularies` classifies a teacher/student pair for the distillation preflight: ``"identical"``,
  ``"padding-only"`` (same tokenizer, heads padded to different sizes), ``"same-family"`` (one vocabulary
  extends the other: the ids they share mean the same tokens) or ``"different"`` (token-level losses do not
  apply: cross-tokenizer distillation, :mod:`hf_lite.losses.cross_tokenizer`).
* :func:`shared_vocabulary` is the exact-match map of GOLD's hybrid loss: pairs of student and teacher ids whose
  tokens stand for the same text.
* :func:`token_texts` gives that text, the bytes a token decodes to under its tokenizer's convention.

The conventions (:func:`token_convention`, read from the tokenizer's decoder):

- ``"byte-level"`` (GPT-2, Llama 3, Qwen): the token's characters map back to bytes (``Ġ`` is a space).
- ``"metaspace"`` (SentencePiece: Llama 2, T5, Mistral): ``▁`` is a space; byte-fallback ``<0xNN>`` is byte NN.
- ``"wordpiece"`` (BERT): ``##x`` continues a word (``x``); a word-initial ``x`` starting with a letter or a
  digit is taken to follow a space (`` x``), other word-initial tokens (punctuation) are taken as they are.
  An approximation: a word at the start of the text or after punctuation carries no space in other vocabularies.
- ``"plain"``: the token string as UTF-8.

Special tokens match by role (the two ``eos`` tokens are the same token, and the two ``bos``), or by equal
content for other special tokens; added tokens that are not special match by content.

>>> from hf_lite.testing import build_tokenizer
>>> a, b = build_tokenizer(["the cat sat"]), build_tokenizer(["the cat sat on the mat"])
>>> compare_vocabularies(a, b).kind, len(shared_vocabulary(a, b).student_ids)
('different', 5)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "VOCABULARY_RELATIONS",
    "SharedVocabulary",
    "VocabularyComparison",
    "compare_vocabularies",
    "shared_vocabulary",
    "token_convention",
    "token_texts",
]

TokenConvention = Literal["byte-level", "metaspace", "wordpiece", "plain"]
VocabularyRelation = Literal["identical", "padding-only", "same-family", "different"]
#: What :func:`compare_vocabularies` can answer, from the closest pair to the farthest.
VOCABULARY_RELATIONS: tuple[str, ...] = ("identical", "padding-only", "same-family", "different")
_ROLES = ("eos_token", "bos_token")


def _role_order(item: tuple[str, Any]) -> int:
    return _ROLES.index(item[0]) if item[0] in _ROLES else len(_ROLES)


def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's ``bytes_to_unicode``: byte-level characters back to the bytes they stand for."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:  # unprintable bytes are shifted past 255, in order
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTES = _byte_decoder()


def _check_tokenizer(name: str, tokenizer: Any) -> dict[str, int]:
    if not callable(getattr(tokenizer, "get_vocab", None)):
        raise TypeError(
            f"{name} must be a transformers tokenizer (with get_vocab()); got {type(tokenizer).__name__}. Load it "
            "with AutoTokenizer.from_pretrained(model_id)."
        )
    return tokenizer.get_vocab()


def token_convention(tokenizer: PreTrainedTokenizerBase) -> TokenConvention:
    """How ``tokenizer``'s token strings spell text, read from its decoder (``"plain"`` when unknown).

    >>> from hf_lite.testing import build_tokenizer
    >>> token_convention(build_tokenizer(["a b"], style="bert"))
    'wordpiece'
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is None:
        return "plain"
    state = json.loads(decoder.__getstate__())
    kinds = [d.get("type") for d in state.get("decoders", [state])]
    patterns = [
        str(d.get("pattern", {}).get("String", ""))
        for d in state.get("decoders", [state])
        if d["type"] == "Replace"
    ]
    if "ByteLevel" in kinds:
        return "byte-level"
    if "Metaspace" in kinds or "▁" in patterns:
        return "metaspace"
    if "WordPiece" in kinds:
        return "wordpiece"
    return "plain"


def _text_of(token: str, convention: str) -> bytes | None:
    if convention == "byte-level":
        if any(c not in _BYTES for c in token):
            return None  # not a byte-level string (an added token): matched by content instead
        return bytes(_BYTES[c] for c in token)
    if convention == "metaspace":
        if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            try:
                return bytes([int(token[3:5], 16)])
            except ValueError:
                pass
        return token.replace("▁", " ").encode()
    if convention == "wordpiece":
        if token.startswith("##"):
            return token[2:].encode()
        return (" " + token if token[:1].isalnum() else token).encode()
    return token.encode()


def token_texts(tokenizer: PreTrainedTokenizerBase) -> dict[int, bytes | tuple[str, str]]:
    """For each token id, what it stands for: its bytes (module doc), or ``("special", role or content)``.

    >>> from hf_lite.testing import build_tokenizer
    >>> texts = token_texts(build_tokenizer(["the cat"], style="bert"))
    >>> texts[2], sorted(t for t in texts.values() if isinstance(t, bytes))
    (('special', '[CLS]'), [b' cat', b' the'])
    """
    vocab = _check_tokenizer("tokenizer", tokenizer)
    convention = token_convention(tokenizer)
    special = {}
    roles = getattr(tokenizer, "special_tokens_map", {})
    for role, content in sorted(roles.items(), key=_role_order):  # eos, bos first
        if isinstance(content, str) and content in vocab:
            special.setdefault(vocab[content], ("special", role if role in _ROLES else content))
    added = {i: str(t) for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    for i, token in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(token, "special", False) and i not in special:
            special[i] = ("special", str(token))
    texts: dict[int, bytes | tuple[str, str]] = {}
    for token, i in vocab.items():
        if i in special:
            texts[i] = special[i]
        elif i in added:
            texts[i] = added[i].encode()
        else:
            text = _text_of(token, convention)
            texts[i] = text if text is not None else token.encode()
    return texts


class SharedVocabulary(NamedTuple):
    """Ids of the tokens both vocabularies hold: ``student_ids[m]`` and ``teacher_ids[m]`` are the same text.

    Both are int64 tensors of one length, ordered by teacher id, each id at most once.

    >>> import torch
    >>> SharedVocabulary(torch.tensor([4, 1]), torch.tensor([0, 2])).student_ids.tolist()
    [4, 1]
    """

    student_ids: torch.Tensor
    teacher_ids: torch.Tensor


def _first_ids(texts: dict[int, Any]) -> dict[Any, int]:
    """Text -> the smallest id spelling it (several byte-fallback or added ids may spell one text)."""
    out: dict[Any, int] = {}
    for i in sorted(texts):
        out.setdefault(texts[i], i)
    return out


def shared_vocabulary(
    student_tokenizer: PreTrainedTokenizerBase, teacher_tokenizer: PreTrainedTokenizerBase
) -> SharedVocabulary:
    """The exact-match map between two vocabularies: tokens that stand for the same text (module doc).

    What the hybrid cross-tokenizer loss compares one to one (:func:`hf_lite.losses.hybrid_uld_loss`); the
    rest of both vocabularies goes to the sorted (ULD) comparison.

    >>> from hf_lite.testing import build_tokenizer
    >>> bert, gpt = build_tokenizer(["the cat"], style="bert"), build_tokenizer(["the dog"])
    >>> shared = shared_vocabulary(gpt, bert)  # ' the' in both, and no common special token
    >>> [gpt.convert_ids_to_tokens(i) for i in shared.student_ids.tolist()]
    ['the']
    """
    student = _first_ids(token_texts(student_tokenizer))
    teacher = _first_ids(token_texts(teacher_tokenizer))
    pairs = sorted((t_id, student[text]) for text, t_id in teacher.items() if text in student)
    return SharedVocabulary(
        torch.tensor([s for _, s in pairs], dtype=torch.long),
        torch.tensor([t for t, _ in pairs], dtype=torch.long),
    )


@dataclass(frozen=True)
class VocabularyComparison:
    """How a student's vocabulary relates to its teacher's (:func:`compare_vocabularies`).

    ``kind`` is one of :data:`VOCABULARY_RELATIONS`; ``common_size`` is the number of leading ids that mean the
    same token on both sides (token-level losses compare ``logits[..., :common_size]``; 0 for ``"different"``);
    ``shared_tokens`` counts the tokens both hold with the same text (the exact-match part of the hybrid loss);
    ``message`` says what distillation does with the pair.

    >>> VocabularyComparison("identical", 10, 10, 10, 10, "same tokenizer").token_level
    True
    """

    kind: VocabularyRelation
    student_size: int
    teacher_size: int
    common_size: int
    shared_tokens: int
    message: str

    @property
    def token_level(self) -> bool:
        """Whether token-level losses apply (on the first ``common_size`` logits)."""
        return self.kind != "different"


def compare_vocabularies(
    student_tokenizer: PreTrainedTokenizerBase,
    teacher_tokenizer: PreTrainedTokenizerBase,
    *,
    student_head_size: int | None = None,
    teacher_head_size: int | None = None,
) -> VocabularyComparison:
    """Classify a student/teacher tokenizer pair: identical, padding-only, same family or different tokenizers.

    - ``"identical"``: the same token -> id map, and the same head sizes when given.
    - ``"padding-only"``: the same map, but the heads (``*_head_size``: output rows, e.g. an embedding resized to
      a multiple of 64) differ beyond the tokenizer: compare the first ``len(tokenizer)`` logits.
    - ``"same-family"``: different sizes, but every id below the smaller size is the same token on both sides
      (special and added tokens excepted: a renamed reserved token does not change the family), e.g. a base
      tokenizer and its extension with chat tokens: compare the first ``common_size`` logits.
    - ``"different"``: anything else: the cross-tokenizer path (alignment + ULD / hybrid loss).

    Args:
        student_tokenizer: the student's tokenizer (anything with ``get_vocab()``).
        teacher_tokenizer: the teacher's.
        student_head_size: the student's number of output logits, if known (``model.get_output_embeddings()``).
        teacher_head_size: the teacher's.

    Example:

    >>> from hf_lite.testing import build_tokenizer
    >>> tok = build_tokenizer(["the cat sat"])
    >>> compare_vocabularies(tok, tok, student_head_size=len(tok), teacher_head_size=64).kind
    'padding-only'
    """
    s_vocab = _check_tokenizer("student_tokenizer", student_tokenizer)
    t_vocab = _check_tokenizer("teacher_tokenizer", teacher_tokenizer)
    for name, size in (("student_head_size", student_head_size), ("teacher_head_size", teacher_head_size)):
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(
                f"{name}={size!r} must be a positive int (the model's number of output logits) or None."
            )
    s_size, t_size = len(s_vocab), len(t_vocab)
    shared = len(shared_vocabulary(student_tokenizer, teacher_tokenizer).student_ids)
    if s_vocab == t_vocab:
        heads = (student_head_size or s_size, teacher_head_size or t_size)
        if heads[0] == heads[1]:
            return VocabularyComparison(
                "identical", s_size, t_size, s_size, shared, "same tokenizer: token-level distillation."
            )
        return VocabularyComparison(
            "padding-only",
            s_size,
            t_size,
            s_size,
            shared,
            f"same tokenizer, heads of {heads[0]} (student) and {heads[1]} (teacher) outputs: token-level "
            f"distillation on the first {s_size} logits (logits[..., :{s_size}]).",
        )
    n = min(s_size, t_size)
    s_tokens, t_tokens = {i: t for t, i in s_vocab.items()}, {i: t for t, i in t_vocab.items()}
    extra = set(getattr(student_tokenizer, "added_tokens_decoder", {})) | set(
        getattr(teacher_tokenizer, "added_tokens_decoder", {})
    )
    if all(i in extra or (i in s_tokens and s_tokens.get(i) == t_tokens.get(i)) for i in range(n)):
        return VocabularyComparison(
            "same-family",
            s_size,
            t_size,
            n,
            shared,
            f"one tokenizer extends the other ({s_size} student and {t_size} teacher tokens, the first {n} ids "
            f"the same): token-level distillation on the first {n} logits; the larger side's extra tokens are "
            "left out.",
        )
    return VocabularyComparison(
        "different",
        s_size,
        t_size,
        0,
        shared,
        f"different tokenizers ({s_size} student and {t_size} teacher tokens, {shared} with the same text): "
        "token-level losses do not apply; distil across tokenizers (span alignment + ULD or the hybrid loss) or "
        "match hidden states.",
    )
