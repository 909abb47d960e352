"""Load a data source into a ``DatasetDict``: files, folders or Hub ids, canonical columns, train/eval splits.

:func:`load_data` reads a local ``csv``/``tsv``/``json``/``jsonl``/``parquet``/``txt`` file, a folder of such
files (one split per file: ``train.tsv``, ``dev.tsv``), a ``{split: file}`` mapping, or a Hub dataset id, all
through ``datasets.load_dataset``. Columns are renamed to the canonical ``text``, optional ``text_pair`` and
optional ``label`` (or kept as the chat columns ``prompt``/``completion``/``messages``); blank rows are dropped; string labels become class ids; the result has ``"train"`` and
(unless disabled) ``"eval"``.
"""

from __future__ import annotations

import csv
import math
import os
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
from datasets import ClassLabel, Dataset, DatasetDict, Value, load_dataset
from huggingface_hub import is_offline_mode

from hf_lite._utils import did_you_mean, is_hub_id

__all__ = ["CANONICAL_COLUMNS", "CHAT_COLUMNS", "EVAL_SPLIT_NAMES", "EXTENSIONS", "load_data"]

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
#: Columns of prompt/completion and conversational data (:mod:`hf_lite.data.chat`), loaded in place of ``text``:
#: ``messages``, or ``prompt`` with an optional ``completion`` (strings or lists of messages).
CHAT_COLUMNS = ("prompt", "completion", "messages")
#: Split names taken as the evaluation split when the source has one (never "test": often unlabelled).
EVAL_SPLIT_NAMES = ("validation", "eval", "dev", "valid")
# Columns recognised when columns=None, in order of preference.
_AUTO_TEXT = ("text", "sentence", "content", "review", "document")
_AUTO_PAIRS = (
    ("sentence1", "sentence2"),
    ("question1", "question2"),
    ("premise", "hypothesis"),
    ("question", "sentence"),
)
_AUTO_LABEL = ("label", "labels")


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
    if Path(text).suffix.lower() in EXTENSIONS or not is_hub_id(text):
        parent = path.parent
        siblings = [p.name for p in parent.iterdir()] if parent.is_dir() else []
        raise ValueError(
            f"source={text!r} does not exist{did_you_mean(path.name, siblings)}; pass an existing file or "
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
    try:
        loaded = load_dataset(source, name, revision=revision, cache_dir=cache_dir)
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
    if not isinstance(loaded, DatasetDict):
        loaded = DatasetDict({"train": loaded})
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
            if key not in CANONICAL_COLUMNS + CHAT_COLUMNS:
                raise ValueError(
                    f"columns has key {key!r}{did_you_mean(str(key), CANONICAL_COLUMNS + CHAT_COLUMNS)}; keys are "
                    f"the canonical names {list(CANONICAL_COLUMNS + CHAT_COLUMNS)} and values the columns of the "
                    "source."
                )
            if not isinstance(value, str):
                raise TypeError(f"columns[{key!r}] must be a column name (str); got {type(value).__name__}.")
            if value not in available:
                raise ValueError(
                    f"columns[{key!r}]={value!r} is not a column of {where}{did_you_mean(value, available)}; its "
                    f"columns are {available}."
                )
        if not {"text", "messages", "prompt"} & set(columns):
            raise ValueError(
                f"columns={dict(columns)!r} has no 'text' entry; map 'text' (or, for chat data, 'messages' or "
                f"'prompt' and 'completion') to one of {available}."
            )
        mapping = dict(columns)
        if "text" not in mapping:
            return mapping  # chat data: no labels
        # A mapping that renames only the text still keeps the source's own label column, as columns=None does.
        label = next((c for c in _AUTO_LABEL if c in available and c not in mapping.values()), None)
        if "label" not in mapping and label is not None:
            mapping["label"] = label
        return mapping
    if "messages" in available:
        return {"messages": "messages"}
    if "prompt" in available:
        return {c: c for c in ("prompt", "completion") if c in available}
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
    return value is None or (isinstance(value, str) and not value.strip()) or value == []


def _encode_labels(splits: dict[str, Dataset]) -> dict[str, Dataset]:
    """String labels -> ints (when all are integers written as text) or a shared ClassLabel (sorted names)."""
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

    Chat data keeps its ``messages`` column (lists of ``{"role", "content"}`` messages, e.g. a ``.jsonl`` file),
    or its ``prompt`` and optional ``completion`` columns (strings or message lists); it has no labels
    (:func:`hf_lite.data.tokenize_data` makes them from the completion or the assistant turns).

    Rows whose text is empty or whitespace only, or whose label is missing, are dropped. String labels
    become class ids (integers written as text are parsed; other strings become a ``ClassLabel`` whose
    sorted names are shared by all splits). Columns other than the canonical ones are dropped.

    Args:
        source: a file; a folder of data files (each file is a split named by its stem, e.g.
            ``train.tsv`` and ``dev.tsv``); a mapping ``{split: file}``; or a Hub dataset id.
        split: the split used for training.
        columns: ``{canonical: source column}``, e.g. ``{"text": "sentence", "label": "label"}``. Default:
            ``text`` from a column named text/sentence/content/review/document (or a pair such as
            sentence1/sentence2), ``label`` from label/labels when present; a ``messages`` or ``prompt`` column
            (with ``completion``) is taken as chat data first. A mapping without ``label``
            still takes a label/labels column of the source (``{"text": "sentence"}`` on SST-2 keeps its
            labels).
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
            f"split={split!r} is not a split of {label}{did_you_mean(split, loaded)}; its splits are {sorted(loaded)}."
        )
    if eval_split is not None:
        if not isinstance(eval_split, str):
            raise TypeError(
                f"eval_split must be a split name (str) or None; got {type(eval_split).__name__}."
            )
        if eval_split not in loaded:
            raise ValueError(
                f"eval_split={eval_split!r} is not a split of {label}{did_you_mean(eval_split, loaded)}; its "
                f"splits are {sorted(loaded)}. Leave it None to hold out eval_fraction of the training rows."
            )
        chosen_eval: str | None = eval_split
    else:
        chosen_eval = next((s for s in EVAL_SPLIT_NAMES if s in loaded and s != split), None)

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

        chat_cols = [c for c in CHAT_COLUMNS if c in ds.column_names]
        checked = [*text_cols, *chat_cols, *(["label"] if has_label else [])]

        def keep(batch: dict[str, list[Any]], checked: list[str] = checked) -> list[bool]:
            return [
                not any(_is_blank(v) for v in values)
                for values in zip(*(batch[c] for c in checked), strict=True)
            ]

        ds = ds.filter(keep, batched=True)
        if ds.num_rows == 0:
            raise ValueError(
                f"{where} has no usable rows: all {before} rows have an empty {'/'.join(text_cols + chat_cols)}"
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
