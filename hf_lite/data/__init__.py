"""Data for compression runs: load, map columns, split, tokenize and augment with ``datasets``.

* :func:`load_data` reads a local ``csv``/``tsv``/``json``/``jsonl``/``parquet``/``txt`` file, a folder
  of such files (one split per file: ``train.tsv``, ``dev.tsv``), a ``{split: file}`` mapping, or a Hub
  dataset id, all through ``datasets.load_dataset``. Columns are renamed to the canonical ``text``,
  optional ``text_pair`` and optional ``label``; blank rows are dropped; string labels become class ids;
  the result is a ``DatasetDict`` with ``"train"`` and (unless disabled) ``"eval"``.
* :func:`tokenize_data` tokenizes with the model's tokenizer: classification rows become
  ``input_ids``/``attention_mask``/``labels``; causal-LM text is concatenated and cut into blocks of
  ``max_length`` tokens with ``labels = input_ids`` (as transformers' ``run_clm`` example does).
* :func:`augment_data` is EDA (Wei & Zou, 2019: synonym replacement, random insertion, random swap,
  random deletion) plus an optional vocabulary replacement, as a seeded, deterministic ``datasets.map``.
  The word-level operations are pure functions (:func:`synonym_replacement`, :func:`random_insertion`,
  :func:`random_swap`, :func:`random_deletion`, :func:`vocabulary_replacement`) that take a
  ``random.Random``.

>>> from hf_lite.data import load_data, tokenize_data, augment_data
>>> ds = load_data("../shared/data/sst2", columns={"text": "sentence", "label": "label"})  # doctest: +SKIP
>>> ds["train"].column_names, list(ds)  # doctest: +SKIP
(['text', 'label'], ['train', 'eval'])
>>> augmented = augment_data(ds["train"], seed=0, n_aug=4)  # doctest: +SKIP
>>> tokenized = tokenize_data(ds, tokenizer, task="sequence-classification", max_length=64)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import difflib
import math
import os
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from transformers import PreTrainedTokenizerBase

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

#: File extension -> ``datasets`` builder. ``.tsv`` is read as csv with a tab delimiter and quoting disabled.
EXTENSIONS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".txt": "text",
}
#: Column names of a loaded dataset: ``text`` is required, ``text_pair`` and ``label`` are optional.
CANONICAL_COLUMNS = ("text", "text_pair", "label")
# Split names taken as the evaluation split when the source has one (never "test": often unlabelled).
_EVAL_SPLIT_NAMES = ("validation", "eval", "dev", "valid")
# Columns recognised when columns=None, in order of preference.
_AUTO_TEXT = ("text", "sentence", "content", "review", "document")
_AUTO_PAIRS = (
    ("sentence1", "sentence2"),
    ("question1", "question2"),
    ("premise", "hypothesis"),
    ("question", "sentence"),
)
_AUTO_LABEL = ("label", "labels")
_TASKS = ("sequence-classification", "causal-lm")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _did_you_mean(value: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ------------------------------------------------------------------------------------------------ loading


def _local_files(source: Any, split: str) -> dict[str, list[Path]] | None:
    """``{split: [files]}`` for a local source, ``None`` for a Hub id; raises for a missing local path."""
    if isinstance(source, Mapping):
        files: dict[str, list[Path]] = {}
        for key, value in source.items():
            if not isinstance(key, str) or not isinstance(value, (str, os.PathLike)):
                raise TypeError(
                    f"source as a mapping must be {{split name: file path}}; got {key!r}: {type(value).__name__}."
                )
            path = Path(value).expanduser()
            if not path.is_file():
                raise ValueError(
                    f"source[{key!r}]={str(value)!r} is not a file; pass an existing csv/tsv/json/jsonl/"
                    "parquet/txt file."
                )
            files[key] = [path]
        if not files:
            raise ValueError("source is an empty mapping; pass {'train': 'train.csv', ...}.")
        return files
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"source must be a file path, a folder, a {{split: path}} mapping or a Hub dataset id; got "
            f"{type(source).__name__}."
        )
    path = Path(source).expanduser()
    if path.is_file():
        return {split: [path]}
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)
        if not found:
            raise ValueError(
                f"source={str(source)!r} is a folder without data files ({', '.join(EXTENSIONS)}); pass a file "
                "or a {split: path} mapping."
            )
        by_split: dict[str, list[Path]] = {}
        for p in found:
            by_split.setdefault(p.stem, []).append(p)
        return by_split
    text = os.fspath(source)
    looks_local = (
        Path(text).suffix.lower() in EXTENSIONS
        or text.startswith((".", "~", os.sep))
        or text.count("/") > 1
        or not _HUB_ID.match(text)
    )
    if looks_local:
        parent = path.parent
        siblings = [p.name for p in parent.iterdir()] if parent.is_dir() else []
        raise ValueError(
            f"source={text!r} does not exist{_did_you_mean(path.name, siblings)}; pass an existing file or "
            "folder, or a Hub dataset id such as 'stanfordnlp/sst2'."
        )
    return None


def _builder(files: list[Path], sep: str | None, sample_by: str) -> tuple[str, dict[str, Any]]:
    suffixes = {p.suffix.lower() for p in files}
    if len(suffixes) > 1:
        raise ValueError(
            f"source mixes file types {sorted(suffixes)} in one split; use one format per split."
        )
    suffix = suffixes.pop()
    builder = EXTENSIONS.get(suffix)
    if builder is None:
        if sep is None:
            raise ValueError(
                f"source file {files[0].name!r} has extension {suffix!r}, which is not supported; use one of "
                f"{', '.join(EXTENSIONS)}, or pass sep=... to read it as delimited text."
            )
        builder = "csv"
    if builder == "csv":
        tsv = suffix == ".tsv"
        delimiter = sep if sep is not None else ("\t" if tsv else ",")
        # TSV: quote characters are literal text (GLUE/SST-2 ship unbalanced quotes); keep "null"/"NA" as text.
        kwargs: dict[str, Any] = {"sep": delimiter, "keep_default_na": False}
        if tsv or delimiter == "\t":
            kwargs["quoting"] = csv.QUOTE_NONE
        return "csv", kwargs
    if builder == "text":
        return "text", {"sample_by": sample_by, "keep_linebreaks": True}
    return builder, {}


def _load_hub(source: str, name: str | None, revision: str | None, cache_dir: str | None) -> DatasetDict:
    import datasets
    from huggingface_hub import is_offline_mode

    try:
        loaded = datasets.load_dataset(source, name, revision=revision, cache_dir=cache_dir)
    except ConnectionError as err:
        if is_offline_mode() or getattr(datasets.config, "HF_HUB_OFFLINE", False):
            raise OSError(
                f"source={source!r} is not in the local datasets cache and the Hub is offline (HF_HUB_OFFLINE=1); "
                "no local file or folder of that name exists either. "
                f'Download it while online (`python -c "import datasets; datasets.load_dataset({source!r})"`), '
                "point HF_HOME at a cache that has it, or pass a local csv/tsv/json/jsonl/parquet/txt file."
            ) from err
        raise OSError(
            f"source={source!r} could not be fetched from the Hub ({err}); check the network, the dataset id, "
            "or pass a local file."
        ) from err
    if not isinstance(loaded, datasets.DatasetDict):
        loaded = datasets.DatasetDict({"train": loaded})
    return loaded


def _resolve_columns(columns: Mapping[str, str] | None, available: list[str], where: str) -> dict[str, str]:
    """canonical name -> column of the source, checked against ``available``."""
    if columns is not None:
        if not isinstance(columns, Mapping):
            raise TypeError(
                f"columns must be a mapping {{canonical name: source column}} such as "
                f"{{'text': 'sentence', 'label': 'label'}}; got {type(columns).__name__}."
            )
        for key, value in columns.items():
            if key not in CANONICAL_COLUMNS:
                raise ValueError(
                    f"columns has key {key!r}{_did_you_mean(str(key), CANONICAL_COLUMNS)}; keys are the canonical "
                    f"names {list(CANONICAL_COLUMNS)} and values the columns of the source."
                )
            if not isinstance(value, str):
                raise TypeError(f"columns[{key!r}] must be a column name (str); got {type(value).__name__}.")
            if value not in available:
                raise ValueError(
                    f"columns[{key!r}]={value!r} is not a column of {where}{_did_you_mean(value, available)}; its "
                    f"columns are {available}."
                )
        if "text" not in columns:
            raise ValueError(
                f"columns={dict(columns)!r} has no 'text' entry; map 'text' to one of {available}."
            )
        return dict(columns)
    mapping: dict[str, str] = {}
    for first, second in _AUTO_PAIRS:
        if first in available and second in available and "text" not in available:
            mapping = {"text": first, "text_pair": second}
            break
    if not mapping:
        text = next((c for c in _AUTO_TEXT if c in available), None)
        if text is None:
            raise ValueError(
                f"{where} has no column named one of {list(_AUTO_TEXT)} (columns: {available}); pass "
                f"columns={{'text': <column>, 'label': <column>}}."
            )
        mapping["text"] = text
        if "text_pair" in available:
            mapping["text_pair"] = "text_pair"
    label = next((c for c in _AUTO_LABEL if c in available), None)
    if label is not None:
        mapping["label"] = label
    return mapping


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _encode_labels(splits: dict[str, Dataset]) -> dict[str, Dataset]:
    """String labels -> ints (when all are integers written as text) or a shared ClassLabel (sorted names)."""
    from datasets import ClassLabel, Value

    labelled = {k: ds for k, ds in splits.items() if "label" in ds.column_names}
    textual = [
        k
        for k, ds in labelled.items()
        if isinstance(ds.features["label"], Value)
        and ds.features["label"].dtype in ("string", "large_string")
    ]
    if not textual:
        return splits
    names = sorted({str(v) for k in textual for v in labelled[k]["label"]})
    if all(re.fullmatch(r"[+-]?\d+", n.strip()) for n in names):
        return {
            k: ds.cast_column("label", Value("int64")) if k in textual else ds for k, ds in splits.items()
        }
    if len(textual) != len(labelled):
        raise ValueError(
            f"labels are text in splits {textual} but not in {sorted(set(labelled) - set(textual))}; use one label "
            "format (class ids or class names) in every split."
        )
    label_feature = ClassLabel(names=names)
    return {k: ds.cast_column("label", label_feature) if k in textual else ds for k, ds in splits.items()}


def load_data(
    source: str | os.PathLike | Mapping[str, str | os.PathLike],
    *,
    split: str = "train",
    columns: Mapping[str, str] | None = None,
    eval_split: str | None = None,
    eval_fraction: float = 0.1,
    seed: int = 0,
    max_rows: int | None = None,
    sep: str | None = None,
    name: str | None = None,
    revision: str | None = None,
    sample_by: str = "line",
    holdout: str = "auto",
    cache_dir: str | None = None,
) -> DatasetDict:
    """Load a training set (and an evaluation set) with canonical columns ``text``[, ``text_pair``][, ``label``].

    Local files go through ``datasets.load_dataset``'s builders: ``csv`` (``.tsv`` with a tab delimiter
    and quoting disabled, so quote characters stay text; values such as ``"null"`` stay text), ``json``
    (``.json`` arrays or ``.jsonl`` lines), ``parquet`` and ``text`` (``.txt``: one row per line, line
    breaks kept for language modelling). A Hub id is loaded with ``load_dataset(source, name)``; offline it
    must be in the local cache.

    Rows whose text is empty or whitespace only, or whose label is missing, are dropped. String labels
    become class ids (integers written as text are parsed; other strings become a ``ClassLabel`` whose
    sorted names are shared by all splits). Columns other than the canonical ones are dropped.

    Args:
        source: a file; a folder of data files (each file is a split named by its stem, e.g.
            ``train.tsv`` and ``dev.tsv``); a mapping ``{split: file}``; or a Hub dataset id.
        split: the split used for training.
        columns: ``{canonical: source column}``, e.g. ``{"text": "sentence", "label": "label"}``. Default:
            ``text`` from a column named text/sentence/content/review/document (or a pair such as
            sentence1/sentence2), ``label`` from label/labels when present.
        eval_split: split used for evaluation. Default: the first of validation/eval/dev/valid that the
            source has; without one, ``eval_fraction`` of the training rows are held out.
        eval_fraction: fraction of training rows held out (seeded shuffle) when there is no evaluation
            split; ``0`` returns no ``"eval"`` split.
        seed: seed of the held-out sample (``holdout="random"``).
        max_rows: keep at most this many rows of each split (the first ones, after dropping blank rows and
            before holding out ``eval_fraction``).
        sep: delimiter for csv-like files (overrides the extension's; lets other extensions be read as csv).
        name: configuration of a Hub dataset (e.g. ``"sst2"`` of ``"nyu-mll/glue"``).
        revision: revision of a Hub dataset.
        sample_by: for ``.txt``: ``"line"``, ``"paragraph"`` or ``"document"`` per row.
        holdout: which training rows ``eval_fraction`` holds out: ``"random"`` (a seeded sample),
            ``"last"`` (the final rows: contiguous text, the usual split of a corpus such as Tiny
            Shakespeare) or ``"auto"`` (``"last"`` for ``.txt`` sources, else ``"random"``). Both parts keep
            the source order either way.
        cache_dir: ``datasets`` cache folder (default ``HF_DATASETS_CACHE``).

    Returns:
        ``DatasetDict`` with ``"train"`` and, unless ``eval_fraction=0`` without an evaluation split, ``"eval"``.

    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "reviews.tsv"
    >>> _ = f.write_text('sentence\\tlabel\\na "great film\\t1\\nbad\\t0\\n\\t1\\nfine\\t1\\n')
    >>> ds = load_data(f, columns={"text": "sentence", "label": "label"}, eval_fraction=0.34)
    >>> ds["train"].num_rows + ds["eval"].num_rows, sorted(ds["train"].column_names)
    (3, ['label', 'text'])
    """
    from datasets import DatasetDict, Value, load_dataset

    for arg, value in (("split", split), ("sample_by", sample_by), ("holdout", holdout)):
        if not isinstance(value, str):
            raise TypeError(f"{arg} must be a string; got {type(value).__name__} {value!r}.")
    if holdout not in ("auto", "random", "last"):
        raise ValueError(f"holdout={holdout!r} must be 'auto', 'random' or 'last'.")
    if sample_by not in ("line", "paragraph", "document"):
        raise ValueError(f"sample_by={sample_by!r} must be 'line', 'paragraph' or 'document'.")
    if (
        isinstance(eval_fraction, bool)
        or not isinstance(eval_fraction, (int, float))
        or not 0 <= eval_fraction < 1
    ):
        raise ValueError(
            f"eval_fraction={eval_fraction!r} must be a number in [0, 1), e.g. 0.1 (0: no eval split)."
        )
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1):
        raise ValueError(f"max_rows={max_rows!r} must be a positive integer or None (all rows).")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer; got {type(seed).__name__} {seed!r}.")
    if sep is not None and (not isinstance(sep, str) or len(sep) != 1):
        raise ValueError(f"sep={sep!r} must be a single character such as ',' or '\\t', or None.")

    local = _local_files(source, split)
    text_source = local is not None and all(p.suffix.lower() == ".txt" for fs in local.values() for p in fs)
    if local is None:
        loaded = dict(_load_hub(os.fspath(source), name, revision, cache_dir))
        label = f"Hub dataset {os.fspath(source)!r}"
    else:
        loaded = {}
        for split_name, files in local.items():
            builder, kwargs = _builder(files, sep, sample_by)
            data_files = {split_name: [str(p) for p in files]}
            loaded[split_name] = load_dataset(
                builder, data_files=data_files, split=split_name, cache_dir=cache_dir, **kwargs
            )
        label = "the source" if isinstance(source, Mapping) else f"{Path(source).name!r}"
    if split not in loaded:
        raise ValueError(
            f"split={split!r} is not a split of {label}{_did_you_mean(split, loaded)}; its splits are {sorted(loaded)}."
        )
    if eval_split is not None:
        if not isinstance(eval_split, str):
            raise TypeError(
                f"eval_split must be a split name (str) or None; got {type(eval_split).__name__}."
            )
        if eval_split not in loaded:
            raise ValueError(
                f"eval_split={eval_split!r} is not a split of {label}{_did_you_mean(eval_split, loaded)}; its "
                f"splits are {sorted(loaded)}. Leave it None to hold out eval_fraction of the training rows."
            )
        chosen_eval: str | None = eval_split
    else:
        chosen_eval = next((s for s in _EVAL_SPLIT_NAMES if s in loaded and s != split), None)

    wanted = {"train": split, **({"eval": chosen_eval} if chosen_eval else {})}
    splits: dict[str, Dataset] = {}
    for out_name, src_name in wanted.items():
        ds = loaded[src_name]
        where = f"split {src_name!r} of {label}"
        mapping = _resolve_columns(columns, list(ds.column_names), where)
        ds = ds.select_columns(list(mapping.values()))
        ds = ds.rename_columns({v: k for k, v in mapping.items() if k != v})
        before = ds.num_rows
        text_cols = [c for c in ("text", "text_pair") if c in ds.column_names]
        has_label = "label" in ds.column_names

        checked = [*text_cols, *(["label"] if has_label else [])]

        def keep(batch: dict[str, list[Any]], checked: list[str] = checked) -> list[bool]:
            return [
                not any(_is_blank(v) for v in values)
                for values in zip(*(batch[c] for c in checked), strict=True)
            ]

        ds = ds.filter(keep, batched=True)
        if ds.num_rows == 0:
            raise ValueError(
                f"{where} has no usable rows: all {before} rows have an empty text"
                f"{' or label' if has_label else ''} (blank lines are removed). Check the file and columns="
                f"{mapping!r}."
            )
        for c in text_cols:
            if not isinstance(ds.features[c], Value) or ds.features[c].dtype not in (
                "string",
                "large_string",
            ):
                ds = ds.cast_column(c, Value("string"))  # e.g. a column of numbers read as int64
        if max_rows is not None and ds.num_rows > max_rows:
            ds = ds.select(range(max_rows))
        splits[out_name] = ds
    splits = _encode_labels(splits)

    if "eval" not in splits and eval_fraction > 0:
        train = splits["train"]
        n_eval = math.ceil(eval_fraction * train.num_rows)
        if train.num_rows - n_eval < 1:
            raise ValueError(
                f"split {split!r} of {label} has {train.num_rows} row(s): too few to hold out "
                f"eval_fraction={eval_fraction} for evaluation. Pass eval_fraction=0 or an eval_split."
            )
        if holdout == "auto":
            holdout = "last" if text_source else "random"
        if holdout == "last":
            eval_rows = set(range(train.num_rows - n_eval, train.num_rows))
        else:
            eval_rows = set(random.Random(seed).sample(range(train.num_rows), n_eval))
        # Both parts keep the source order (text stays contiguous for causal-LM blocks).
        splits = {
            "train": train.select([i for i in range(train.num_rows) if i not in eval_rows]),
            "eval": train.select(sorted(eval_rows)),
        }
    return DatasetDict(splits)


# ------------------------------------------------------------------------------------------------ tokenizing


def tokenize_data(
    dataset: Dataset | DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    *,
    task: str,
    max_length: int = 128,
    padding: bool = False,
    add_eos: bool = False,
    batch_size: int = 1000,
    num_proc: int | None = None,
) -> Dataset | DatasetDict:
    """Tokenize canonical ``text`` (and ``text_pair``/``label``) columns for ``task`` with ``datasets.map``.

    * ``"sequence-classification"``: ``tokenizer(text[, text_pair], truncation=True, max_length=...)``
      gives ``input_ids``, ``attention_mask`` (and ``token_type_ids`` if the tokenizer makes them);
      ``label`` becomes ``labels``. Rows are unpadded unless ``padding=True`` (pad to ``max_length``);
      pad per batch with ``DataCollatorWithPadding``.
    * ``"causal-lm"``: every text is tokenized (special tokens as the tokenizer adds them, plus the eos
      token after each text when ``add_eos``), the ids of each map batch of ``batch_size`` texts are
      concatenated and cut into blocks of exactly ``max_length`` tokens; the remainder of each map batch is
      dropped. ``labels`` = ``input_ids`` (the model shifts them), ``attention_mask`` is all ones.

    Token classification is not supported yet. All original columns are removed.

    Args:
        dataset: a ``Dataset`` or ``DatasetDict`` from :func:`load_data` (or any with a ``text`` column).
        tokenizer: the model's tokenizer.
        task: ``"sequence-classification"`` or ``"causal-lm"`` (aliases such as ``"text-classification"`` work).
        max_length: truncation length (classification) or block length (causal LM).
        padding: pad classification rows to ``max_length``.
        add_eos: append ``tokenizer.eos_token_id`` after each text (causal LM; use it for document datasets).
        batch_size: texts per ``map`` batch.
        num_proc: processes for ``map``.

    >>> from datasets import Dataset
    >>> from hf_lite.testing import build_tokenizer
    >>> tok = build_tokenizer(["the cat sat on the mat"], style="bert")
    >>> ds = Dataset.from_dict({"text": ["the cat sat", "the mat"], "label": [1, 0]})
    >>> out = tokenize_data(ds, tok, task="classification", max_length=8)
    >>> out.column_names, tok.convert_ids_to_tokens(out[1]["input_ids"]), out[1]["labels"]
    (['input_ids', 'attention_mask', 'labels'], ['[CLS]', 'the', 'mat', '[SEP]'], 0)
    """
    from datasets import Dataset, DatasetDict

    from hf_lite.tasks import normalize_task

    task = normalize_task(task)
    if task not in _TASKS:
        raise ValueError(
            f"task={task!r} is not supported by tokenize_data; choose one of {list(_TASKS)} "
            "(token classification is not implemented yet)."
        )
    if not isinstance(dataset, (Dataset, DatasetDict)):
        raise TypeError(f"dataset must be a datasets.Dataset or DatasetDict; got {type(dataset).__name__}.")
    if not callable(tokenizer) or not hasattr(tokenizer, "convert_tokens_to_ids"):
        raise TypeError(
            f"tokenizer must be a transformers tokenizer (AutoTokenizer.from_pretrained(...)); got "
            f"{type(tokenizer).__name__}."
        )
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length={max_length!r} must be an integer >= 2.")
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and model_max < 1_000_000 and max_length > model_max:
        raise ValueError(
            f"max_length={max_length} exceeds the tokenizer's model_max_length={model_max}; the model has no "
            f"positions beyond it. Use max_length <= {model_max}."
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer.")
    splits = dataset.values() if isinstance(dataset, DatasetDict) else [dataset]
    for ds in splits:
        if "text" not in ds.column_names:
            raise ValueError(
                f"dataset has no 'text' column (columns: {ds.column_names}); load it with load_data(columns="
                "{'text': <column>, ...}) or rename the column."
            )

    if task == "sequence-classification":
        if padding and tokenizer.pad_token_id is None:
            raise ValueError(
                "padding=True needs a pad token, but the tokenizer has none; set tokenizer.pad_token = "
                "tokenizer.eos_token (and the model's config.pad_token_id), or keep padding=False."
            )

        def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
            pair = batch.get("text_pair")
            enc = tokenizer(
                batch["text"],
                pair,
                truncation=True,
                max_length=max_length,
                padding="max_length" if padding else False,
            )
            out = dict(enc)
            if "label" in batch:
                out["labels"] = batch["label"]
            return out

    else:
        if padding:
            raise ValueError(
                "padding=True applies to classification; causal-LM blocks all have max_length tokens."
            )
        eos = tokenizer.eos_token_id
        if add_eos and eos is None:
            raise ValueError("add_eos=True but the tokenizer has no eos token; pass add_eos=False.")

        def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
            ids = tokenizer(batch["text"], verbose=False)["input_ids"]
            flat = [t for seq in ids for t in ([*seq, eos] if add_eos else seq)]
            n_blocks = len(flat) // max_length
            blocks = [flat[i * max_length : (i + 1) * max_length] for i in range(n_blocks)]
            return {
                "input_ids": blocks,
                "attention_mask": [[1] * max_length for _ in blocks],
                "labels": blocks,
            }

    def tokenize(ds: Dataset) -> Dataset:  # per split: splits may have different columns (e.g. no label)
        return ds.map(
            encode,
            batched=True,
            batch_size=batch_size,
            num_proc=num_proc,
            remove_columns=ds.column_names,
            desc=f"Tokenizing ({task})",
        )

    out = (
        DatasetDict({k: tokenize(v) for k, v in dataset.items()})
        if isinstance(dataset, DatasetDict)
        else tokenize(dataset)
    )
    if task == "causal-lm":
        for split_name, ds in out.items() if isinstance(out, DatasetDict) else [("dataset", out)]:
            if ds.num_rows == 0:
                raise ValueError(
                    f"{split_name} gives no block of max_length={max_length} tokens: each map batch of "
                    f"{batch_size} texts has fewer tokens than that. Use a smaller max_length or more text."
                )
    return out


# ------------------------------------------------------------------------------------------------ augmentation

#: Small built-in synonym groups (general English and review vocabulary); each word maps to the rest of its
#: group. No WordNet: nothing is downloaded. Pass ``synonyms=`` for a domain table.
_SYNONYM_GROUPS = (
    "good fine nice decent solid",
    "great excellent superb wonderful terrific outstanding",
    "bad poor awful lousy",
    "terrible horrible dreadful atrocious",
    "boring dull tedious tiresome",
    "funny amusing hilarious comic",
    "interesting engaging intriguing absorbing",
    "beautiful lovely gorgeous stunning",
    "ugly hideous unsightly",
    "smart clever intelligent bright",
    "stupid dumb silly foolish",
    "big large huge enormous",
    "small little tiny minor",
    "fast quick rapid swift",
    "slow sluggish plodding",
    "happy glad cheerful joyful",
    "sad unhappy gloomy melancholy",
    "strange odd weird peculiar",
    "easy simple effortless",
    "hard difficult tough",
    "new fresh novel",
    "old ancient dated",
    "important significant major",
    "real genuine authentic",
    "strong powerful forceful",
    "weak feeble flimsy",
    "movie film picture",
    "story tale narrative plot",
    "actor performer player",
    "director filmmaker",
    "scene sequence episode",
    "character figure role",
    "ending finale conclusion",
    "audience viewers spectators",
    "work effort piece",
    "love adore enjoy",
    "hate loathe detest",
    "like enjoy appreciate",
    "make create produce",
    "show display reveal",
    "seem appear look",
    "try attempt",
    "begin start commence",
    "end finish conclude",
    "help aid assist",
    "very really extremely truly",
    "often frequently regularly",
    "almost nearly virtually",
    "quite rather fairly",
    "completely totally entirely utterly",
)
SYNONYMS: dict[str, tuple[str, ...]] = {}
for _group in _SYNONYM_GROUPS:
    _words = _group.split()
    for _w in _words:
        SYNONYMS[_w] = tuple(dict.fromkeys([*SYNONYMS.get(_w, ()), *(o for o in _words if o != _w)]))
del _group, _words, _w

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
    from datasets import Dataset, DatasetDict

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
