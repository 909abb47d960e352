"""EDA text augmentation: pure word operations on a ``random.Random`` and a seeded ``datasets.map``.

:func:`augment_data` is EDA (Wei & Zou, 2019: synonym replacement, random insertion, random swap, random
deletion) plus an optional vocabulary replacement, as a seeded, deterministic ``datasets.map``. The word-level
operations are pure functions (:func:`synonym_replacement`, :func:`random_insertion`, :func:`random_swap`,
:func:`random_deletion`, :func:`vocabulary_replacement`) that take a ``random.Random``; the built-in synonym
table is :data:`hf_lite.data.synonyms.SYNONYMS`.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from datasets import Dataset, DatasetDict

from hf_lite.data.synonyms import SYNONYMS

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "STOPWORDS",
    "augment_data",
    "corpus_vocabulary",
    "random_deletion",
    "random_insertion",
    "random_swap",
    "synonym_replacement",
    "tokenizer_vocabulary",
    "vocabulary_replacement",
]

#: Words that synonym replacement leaves alone (as in EDA).
STOPWORDS = frozenset(
    "a an the and or but if then so than that this these those there here of in on at to for from by with "
    "about as into over under again further once is are was were be been being am do does did have has had "
    "i me my we our you your he him his she her it its they them their what which who whom whose when where "
    "why how all any both each few more most other some such no nor not only own same too can will just "
    "should now".split()
)


def _check_rng(rng: Any) -> random.Random:
    if not isinstance(rng, random.Random):
        raise TypeError(f"rng must be a random.Random (e.g. random.Random(0)); got {type(rng).__name__}.")
    return rng


def _check_count(n: Any, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{name}={n!r} must be an integer >= 0.")
    return n


def _check_probability(p: Any, name: str) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"{name}={p!r} must be a probability in [0, 1].")
    return float(p)


def _synonyms_of(word: str, synonyms: Mapping[str, Sequence[str]]) -> Sequence[str]:
    return [s for s in synonyms.get(word.lower(), ()) if s.lower() != word.lower()]


def synonym_replacement(
    words: Sequence[str],
    n: int,
    rng: random.Random,
    synonyms: Mapping[str, Sequence[str]] | None = None,
    stopwords: Iterable[str] = STOPWORDS,
) -> list[str]:
    """Replace up to ``n`` words (not stopwords, with a synonym) by a random synonym each (EDA's SR).

    Positions are distinct; fewer than ``n`` words change when fewer are eligible. Lookup is lower-case.

    >>> synonym_replacement(["a", "great", "movie"], 2, random.Random(0))  # doctest: +SKIP
    ['a', 'superb', 'film']
    >>> synonym_replacement(["a", "great", "movie"], 0, random.Random(0))
    ['a', 'great', 'movie']
    """
    _check_count(n)
    _check_rng(rng)
    table = SYNONYMS if synonyms is None else synonyms
    stop = set(stopwords)
    out = list(words)
    eligible = [i for i, w in enumerate(out) if w.lower() not in stop and _synonyms_of(w, table)]
    rng.shuffle(eligible)
    for i in eligible[:n]:
        out[i] = rng.choice(list(_synonyms_of(out[i], table)))
    return out


def random_insertion(
    words: Sequence[str], n: int, rng: random.Random, synonyms: Mapping[str, Sequence[str]] | None = None
) -> list[str]:
    """Insert ``n`` words, each a synonym of a random word of the sentence, at random positions (EDA's RI).

    Exactly ``n`` words are added when at least one word has a synonym; otherwise the words are returned
    unchanged.

    >>> out = random_insertion(["a", "good", "film"], 2, random.Random(0))
    >>> len(out)
    5
    """
    _check_count(n)
    _check_rng(rng)
    table = SYNONYMS if synonyms is None else synonyms
    out = list(words)
    candidates = [w for w in words if _synonyms_of(w, table)]
    if not candidates:
        return out
    for _ in range(n):
        synonym = rng.choice(list(_synonyms_of(rng.choice(candidates), table)))
        out.insert(rng.randint(0, len(out)), synonym)
    return out


def random_swap(words: Sequence[str], n: int, rng: random.Random) -> list[str]:
    """Swap two distinct random positions, ``n`` times (EDA's RS). The multiset of words is unchanged.

    >>> sorted(random_swap(["a", "b", "c"], 3, random.Random(0)))
    ['a', 'b', 'c']
    """
    _check_count(n)
    _check_rng(rng)
    out = list(words)
    if len(out) < 2:
        return out
    for _ in range(n):
        i = rng.randrange(len(out))
        j = rng.randrange(len(out) - 1)
        j += j >= i  # a position other than i, uniformly
        out[i], out[j] = out[j], out[i]
    return out


def random_deletion(words: Sequence[str], p: float, rng: random.Random) -> list[str]:
    """Delete each word with probability ``p`` (EDA's RD); one random word survives if all would go.

    Never empties a non-empty sentence; a one-word sentence is returned unchanged.

    >>> random_deletion(["only"], 1.0, random.Random(0)), len(random_deletion(["a", "b"], 1.0, random.Random(0)))
    (['only'], 1)
    """
    p = _check_probability(p, "p")
    _check_rng(rng)
    out = list(words)
    if len(out) <= 1 or p == 0:
        return out
    kept = [w for w in out if rng.random() >= p]
    return kept if kept else [rng.choice(out)]


def vocabulary_replacement(
    words: Sequence[str], p: float, rng: random.Random, vocabulary: Sequence[str]
) -> list[str]:
    """Replace each word with probability ``p`` by a word drawn uniformly from ``vocabulary``.

    TinyBERT's augmentation picks replacement candidates with a BERT masked-LM (single-piece words) or
    GloVe neighbours (multi-piece words); without a teacher MLM this keeps only its replacement step, with
    candidates from a tokenizer's or a corpus' vocabulary (:func:`tokenizer_vocabulary`,
    :func:`corpus_vocabulary`). It does not preserve meaning, so use it for distillation transfer sets,
    where the teacher labels the augmented text.

    >>> vocabulary_replacement(["a", "b"], 1.0, random.Random(0), ["z"])
    ['z', 'z']
    """
    p = _check_probability(p, "p")
    _check_rng(rng)
    if isinstance(vocabulary, str) or not isinstance(vocabulary, Sequence) or not vocabulary:
        raise ValueError(
            "vocabulary must be a non-empty sequence of words (see corpus_vocabulary/tokenizer_vocabulary)."
        )
    return [rng.choice(vocabulary) if p and rng.random() < p else w for w in words]


def corpus_vocabulary(
    texts: Iterable[str] | Dataset, *, min_count: int = 2, max_size: int = 20_000
) -> list[str]:
    """Alphabetic words of a corpus seen at least ``min_count`` times, most frequent first (for ``vocabulary=``).

    ``texts`` is an iterable of strings or a dataset with a ``text`` column. Stopwords are excluded.

    >>> corpus_vocabulary(["the cat saw a cat", "a dog saw the cat"], min_count=2)
    ['cat', 'saw']
    """
    if hasattr(texts, "column_names"):
        if "text" not in texts.column_names:
            raise ValueError(f"texts (a dataset) has no 'text' column (columns: {texts.column_names}).")
        texts = texts["text"]
    if isinstance(texts, str):
        raise TypeError(
            "texts must be an iterable of strings (or a dataset), not a single string; wrap it: [text]."
        )
    _check_count(min_count, "min_count")
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(w for w in text.split() if w.isalpha() and w.lower() not in STOPWORDS)
    return [w for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_count][:max_size]


def tokenizer_vocabulary(tokenizer: PreTrainedTokenizerBase, *, min_length: int = 2) -> list[str]:
    """Whole alphabetic words in a tokenizer's vocabulary (word-start pieces, markers stripped), sorted.

    Byte-level BPE (GPT-2 ``Ġword``) and SentencePiece (``▁word``) keep only word-initial tokens; WordPiece
    drops ``##`` continuations. Special tokens are excluded.

    >>> from hf_lite.testing import build_tokenizer
    >>> tokenizer_vocabulary(build_tokenizer(["the cat sat"], style="bert"))
    ['cat', 'sat', 'the']
    """
    if not hasattr(tokenizer, "get_vocab"):
        raise TypeError(
            f"tokenizer must be a transformers tokenizer with get_vocab(); got {type(tokenizer).__name__}."
        )
    vocab = list(tokenizer.get_vocab())
    special = set(getattr(tokenizer, "all_special_tokens", []))
    for marker in ("Ġ", "▁"):
        if any(t.startswith(marker) for t in vocab):
            vocab = [t[len(marker) :] for t in vocab if t.startswith(marker)]
            break
    else:
        vocab = [t for t in vocab if not t.startswith("##") and t not in special]
    return sorted({t for t in vocab if t.isalpha() and len(t) >= min_length})


def _example_rng(seed: int, index: int) -> random.Random:
    # A string seed is hashed with SHA-512 by random.Random: stable across processes, platforms and
    # PYTHONHASHSEED, and independent streams for neighbouring indices.
    return random.Random(f"hf-lite-augment:{seed}:{index}")


def augment_data(
    dataset: Dataset,
    *,
    seed: int,
    n_aug: int = 4,
    p_insert: float = 0.1,
    p_delete: float = 0.1,
    p_swap: float = 0.1,
    p_synonym: float = 0.1,
    p_vocab: float = 0.0,
    synonyms: Mapping[str, Sequence[str]] | None = None,
    vocabulary: Sequence[str] | None = None,
    keep_original: bool = True,
    columns: Sequence[str] = ("text",),
    num_proc: int | None = None,
) -> Dataset:
    """EDA text augmentation as a seeded ``datasets.map``: ``n_aug`` new rows per row, labels kept.

    Each new row applies one operation, cycling through the enabled ones (probability > 0) from a random
    start, as EDA balances its four techniques: synonym replacement, random insertion and random swap
    change ``n = max(1, int(p * number of words))`` words; random deletion drops each word with
    probability ``p_delete``; vocabulary replacement (``p_vocab``) replaces each word with that
    probability by a word of ``vocabulary`` (see :func:`vocabulary_replacement`). Text is split on
    whitespace and joined with single spaces.

    Determinism: the random stream of row ``i`` is ``random.Random(f"hf-lite-augment:{seed}:{i}")`` (``i``
    is the row's index in ``dataset``, which ``datasets.map(with_indices=True)`` passes unchanged to every
    process), so the output depends only on ``seed`` and the data, not on ``num_proc`` or batch size.

    Args:
        dataset: a ``Dataset`` with the ``columns`` to augment (other columns, e.g. ``label``, are copied).
        seed: seed of the augmentation.
        n_aug: augmented rows per original row.
        p_insert, p_delete, p_swap, p_synonym: EDA's alpha per operation (0 disables it).
        p_vocab: probability of replacing each word from ``vocabulary`` (0, the default, disables it).
        synonyms: ``{word: [synonyms]}`` replacing the built-in :data:`SYNONYMS` table.
        vocabulary: words for vocabulary replacement (:func:`corpus_vocabulary`, :func:`tokenizer_vocabulary`).
        keep_original: keep each original row before its augmented copies.
        columns: text columns to augment (the same operation is applied to each, e.g. ``text`` and ``text_pair``).
        num_proc: processes for ``map``.

    Returns:
        A ``Dataset`` with the same columns and features; ``(1 + n_aug) * len(dataset)`` rows with
        ``keep_original``, else ``n_aug * len(dataset)``.

    >>> from datasets import Dataset
    >>> ds = Dataset.from_dict({"text": ["a great movie with a good story"], "label": [1]})
    >>> out = augment_data(ds, seed=0, n_aug=3)
    >>> out.num_rows, list(out["label"]), out[0]["text"]
    (4, [1, 1, 1, 1], 'a great movie with a good story')
    """
    if isinstance(dataset, DatasetDict):
        raise TypeError(
            f"dataset must be one split (a datasets.Dataset), got a DatasetDict with {list(dataset)}; augment the "
            "training split only: augment_data(ds['train'], ...)."
        )
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be a datasets.Dataset; got {type(dataset).__name__}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer; got {type(seed).__name__} {seed!r}.")
    if isinstance(n_aug, bool) or not isinstance(n_aug, int) or n_aug < 1:
        raise ValueError(f"n_aug={n_aug!r} must be an integer >= 1 (augmented rows per row).")
    probs = {
        name: _check_probability(p, name)
        for name, p in (
            ("p_synonym", p_synonym),
            ("p_insert", p_insert),
            ("p_swap", p_swap),
            ("p_delete", p_delete),
            ("p_vocab", p_vocab),
        )
    }
    ops = [name for name, p in probs.items() if p > 0]
    if not ops:
        raise ValueError(
            "every probability is 0, so augmentation would copy the rows; set p_synonym, p_insert, "
            "p_swap, p_delete or p_vocab > 0."
        )
    if synonyms is not None:
        if not isinstance(synonyms, Mapping) or any(
            isinstance(v, str) or not isinstance(v, Sequence) for v in synonyms.values()
        ):
            raise TypeError(
                "synonyms must be a mapping {word: [synonym, ...]}, e.g. {'good': ['fine', 'nice']}."
            )
        synonyms = {str(k).lower(): tuple(v) for k, v in synonyms.items()}
    if probs["p_vocab"] > 0 and (vocabulary is None or isinstance(vocabulary, str) or len(vocabulary) == 0):
        raise ValueError(
            "p_vocab > 0 needs vocabulary=[words]; build one with corpus_vocabulary(dataset) or "
            "tokenizer_vocabulary(tokenizer)."
        )
    if isinstance(columns, str):
        columns = (columns,)
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"columns {missing} are not in the dataset (columns: {dataset.column_names}); pass the text columns "
            "to augment, e.g. columns=('text',)."
        )
    vocab = list(vocabulary) if vocabulary is not None else []

    def apply(op: str, words: list[str], rng: random.Random) -> list[str]:
        n = max(1, int(probs[op] * len(words)))
        if op == "p_synonym":
            return synonym_replacement(words, n, rng, synonyms)
        if op == "p_insert":
            return random_insertion(words, n, rng, synonyms)
        if op == "p_swap":
            return random_swap(words, n, rng)
        if op == "p_delete":
            return random_deletion(words, probs[op], rng)
        return vocabulary_replacement(words, probs[op], rng, vocab)

    all_columns = dataset.column_names

    def augment(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {c: [] for c in all_columns}
        for row, index in enumerate(indices):
            rng = _example_rng(seed, index)
            start = rng.randrange(len(ops))
            copies = []
            for k in range(n_aug):
                op = ops[(start + k) % len(ops)]
                copies.append({c: " ".join(apply(op, (batch[c][row] or "").split(), rng)) for c in columns})
            for copy in ([{}] if keep_original else []) + copies:
                for c in all_columns:
                    out[c].append(copy.get(c, batch[c][row]))
        return out

    return dataset.map(
        augment,
        batched=True,
        with_indices=True,
        remove_columns=all_columns,
        features=dataset.features,
        num_proc=num_proc,
        desc="Augmenting (EDA)",
    )
