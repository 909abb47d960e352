"""Data for compression runs: load, map columns, split, tokenize and augment with ``datasets``.

* :mod:`~hf_lite.data.load`: :func:`load_data` reads a local ``csv``/``tsv``/``json``/``jsonl``/``parquet``/``txt``
  file, a folder of such files (one split per file: ``train.tsv``, ``dev.tsv``), a ``{split: file}`` mapping,
  or a Hub dataset id, all through ``datasets.load_dataset``. Columns are renamed to the canonical ``text``,
  optional ``text_pair`` and optional ``label``; blank rows are dropped; string labels become class ids; the
  result is a ``DatasetDict`` with ``"train"`` and (unless disabled) ``"eval"``.
* :mod:`~hf_lite.data.tokenize`: :func:`tokenize_data` tokenizes with the model's tokenizer: classification
  rows become ``input_ids``/``attention_mask``/``labels``; causal-LM text is concatenated and cut into blocks
  of ``max_length`` tokens with ``labels = input_ids`` (as transformers' ``run_clm`` example does).
* :mod:`~hf_lite.data.augment`: :func:`augment_data` is EDA (Wei & Zou, 2019: synonym replacement, random
  insertion, random swap, random deletion) plus an optional vocabulary replacement, as a seeded,
  deterministic ``datasets.map``. The word-level operations are pure functions (:func:`synonym_replacement`,
  :func:`random_insertion`, :func:`random_swap`, :func:`random_deletion`, :func:`vocabulary_replacement`)
  that take a ``random.Random``; the built-in synonym table is :mod:`~hf_lite.data.synonyms`.

>>> import pathlib, tempfile
>>> from hf_lite.data import augment_data, load_data, tokenize_data
>>> from hf_lite.testing import build_tokenizer
>>> f = pathlib.Path(tempfile.mkdtemp()) / "reviews.csv"
>>> _ = f.write_text("sentence,label\\na great movie,1\\na dull story,0\\n")
>>> ds = load_data(f, columns={"text": "sentence", "label": "label"}, eval_fraction=0)
>>> augmented = augment_data(ds["train"], seed=0, n_aug=2)
>>> tok = build_tokenizer(["a great movie", "a dull story"], style="bert")
>>> tokenized = tokenize_data(augmented, tok, task="sequence-classification", max_length=16)
>>> list(ds), augmented.num_rows, tokenized.column_names
(['train'], 6, ['input_ids', 'attention_mask', 'labels'])
"""

from __future__ import annotations

from hf_lite.data.augment import (
    STOPWORDS,
    augment_data,
    corpus_vocabulary,
    random_deletion,
    random_insertion,
    random_swap,
    synonym_replacement,
    tokenizer_vocabulary,
    vocabulary_replacement,
)
from hf_lite.data.load import CANONICAL_COLUMNS, EXTENSIONS, load_data
from hf_lite.data.synonyms import SYNONYMS
from hf_lite.data.tokenize import tokenize_data

__all__ = [
    "CANONICAL_COLUMNS",
    "EXTENSIONS",
    "STOPWORDS",
    "SYNONYMS",
    "augment_data",
    "corpus_vocabulary",
    "load_data",
    "random_deletion",
    "random_insertion",
    "random_swap",
    "synonym_replacement",
    "tokenize_data",
    "tokenizer_vocabulary",
    "vocabulary_replacement",
]
