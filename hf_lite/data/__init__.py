"""Data for compression runs: load, map columns, split, tokenize and augment with ``datasets``.

* :mod:`~hf_lite.data.load`: :func:`load_data` reads a local ``csv``/``tsv``/``json``/``jsonl``/``parquet``/``txt``
  file, a folder of such files (one split per file: ``train.tsv``, ``dev.tsv``), a ``{split: file}`` mapping,
  or a Hub dataset id, all through ``datasets.load_dataset``. Columns are renamed to the canonical ``text``,
  optional ``text_pair`` and optional ``label``; blank rows are dropped; string labels become class ids; the
  result is a ``DatasetDict`` with ``"train"`` and (unless disabled) ``"eval"``.
* :mod:`~hf_lite.data.tokenize`: :func:`tokenize_data` tokenizes with the model's tokenizer: classification
  rows become ``input_ids``/``attention_mask``/``labels``; causal-LM text is concatenated and cut into blocks
  of ``max_length`` tokens with ``labels = input_ids`` (as transformers' ``run_clm`` example does);
  prompt/completion, prompt-only and ``messages`` data (TRL's formats, detected from the columns) become one row
  per example with the loss on the completion or the assistant turns only (:mod:`~hf_lite.data.chat`: chat
  templates, loss masks, over-long rows) and a ``prompt_length``.
* :mod:`~hf_lite.data.collate`: :class:`CompletionCollator` right-pads such rows for training and adds their
  prompts left-padded (``prompt_input_ids``, ``prompt_attention_mask``) for generation;
  :class:`CrossTokenizerCollator` tokenizes text, prompt/completion or chat rows for a student and a teacher with
  different tokenizers and adds their span alignment.
* :mod:`~hf_lite.data.alignment`: :func:`align_offsets` aligns two tokenizations of one text (a student's and a
  teacher's with different tokenizers) into spans that cover the same characters; :func:`alignment_tensors`
  turns a batch of them into the index tensors of the cross-tokenizer losses (:mod:`hf_lite.losses.cross_tokenizer`).
* :mod:`~hf_lite.data.vocabulary`: :func:`compare_vocabularies` (identical, padding-only, same family or
  different tokenizers) and :func:`shared_vocabulary` (the tokens two vocabularies spell the same).
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

from hf_lite.data.alignment import (
    ALIGNMENT_KEYS,
    AlignedSpan,
    TokenAlignment,
    align_offsets,
    align_texts,
    alignment_tensors,
    encode_with_offsets,
)
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
from hf_lite.data.chat import (
    DATA_FORMATS,
    detect_data_format,
    encode_messages,
    encode_prompt,
    encode_prompt_completion,
    tokenize_chat,
)
from hf_lite.data.collate import (
    CROSS_TOKENIZER_COLUMNS,
    CROSS_TOKENIZER_KEYS,
    PROMPT_TEXT_KEY,
    CompletionCollator,
    CrossTokenizerCollator,
    teacher_key,
)
from hf_lite.data.load import CANONICAL_COLUMNS, EXTENSIONS, load_data
from hf_lite.data.synonyms import SYNONYMS
from hf_lite.data.tokenize import tokenize_data
from hf_lite.data.vocabulary import (
    VOCABULARY_RELATIONS,
    SharedVocabulary,
    VocabularyComparison,
    compare_vocabularies,
    shared_vocabulary,
    token_convention,
    token_texts,
)

__all__ = [
    "ALIGNMENT_KEYS",
    "VOCABULARY_RELATIONS",
    "AlignedSpan",
    "SharedVocabulary",
    "TokenAlignment",
    "VocabularyComparison",
    "align_offsets",
    "align_texts",
    "alignment_tensors",
    "compare_vocabularies",
    "encode_with_offsets",
    "shared_vocabulary",
    "token_convention",
    "token_texts",
    "CANONICAL_COLUMNS",
    "DATA_FORMATS",
    "EXTENSIONS",
    "STOPWORDS",
    "CompletionCollator",
    "CROSS_TOKENIZER_COLUMNS",
    "CROSS_TOKENIZER_KEYS",
    "PROMPT_TEXT_KEY",
    "CrossTokenizerCollator",
    "teacher_key",
    "SYNONYMS",
    "augment_data",
    "corpus_vocabulary",
    "detect_data_format",
    "encode_messages",
    "encode_prompt",
    "encode_prompt_completion",
    "load_data",
    "random_deletion",
    "random_insertion",
    "random_swap",
    "synonym_replacement",
    "tokenize_chat",
    "tokenize_data",
    "tokenizer_vocabulary",
    "vocabulary_replacement",
]
