"""The cache on disk: its layout and metadata, the atomic folder writes that build it, and loading it back.

A complete cache is a ``datasets`` folder (``save_to_disk``) plus :data:`METADATA_FILE`, written last in a
temporary folder that is renamed into place, so a cache is complete or absent (invariant 2). Work in progress
lives in ``{output_dir}.partial/``: :data:`PROGRESS_FILE` with the run's settings and one ``shard-NNNNN``
folder per finished shard (its rows and :data:`SHARD_FILE`). :func:`load_teacher_cache` refuses anything
else, and a cache made by another teacher, tokenizer, ``k`` or temperature.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from hf_lite._utils import TMP_MARK, atomic_dir
from hf_lite.teacher_cache.fingerprint import FORMAT_VERSION, teacher_digest, tokenizer_digest

logger = logging.getLogger(__name__)

__all__ = [
    "CACHE_TASKS",
    "INDICES_COLUMN",
    "LOGPROBS_COLUMN",
    "LOGPROB_DTYPES",
    "METADATA_FILE",
    "PARTIAL_SUFFIX",
    "RESULT_KEYS",
    "SHARD_FILE",
    "TAIL_COLUMN",
    "TEACHER_COLUMNS",
    "assemble",
    "cache_bytes_per_token",
    "cache_features",
    "load_teacher_cache",
    "partial_dir",
    "prepare_partial",
    "raise_on_spec_mismatch",
    "read_json",
    "remove_stale_temporaries",
    "teacher_cache_metadata",
    "write_shard",
]

LOGPROBS_COLUMN = "teacher_topk_logprobs"
INDICES_COLUMN = "teacher_topk_indices"
TAIL_COLUMN = "teacher_tail_mass"
TEACHER_COLUMNS = (LOGPROBS_COLUMN, INDICES_COLUMN, TAIL_COLUMN)
#: The metadata file of a complete cache, written last: its presence marks the folder complete.
METADATA_FILE = "teacher_cache.json"
#: The settings of a run in progress, in its partial folder (written first).
PROGRESS_FILE = "progress.json"
#: The range and input digest of a finished shard, in its folder.
SHARD_FILE = "shard.json"
PARTIAL_SUFFIX = ".partial"
_DESCRIPTION_KEY = "hf_lite_teacher_cache"
#: Tasks the cache understands (names of :data:`hf_lite.tasks.TASKS`), and whether it stores one row per
#: position (True) or per example (False).
CACHE_TASKS = {"causal-lm": True, "token-classification": True, "sequence-classification": False}
LOGPROB_DTYPES = ("float16", "float32")

#: Metadata entries that must match for an existing complete cache to be the result asked for.
RESULT_KEYS = (
    "format_version",
    "fingerprint",
    "task",
    "k",
    "temperature",
    "dtype",
    "vocab_size",
    "num_examples",
)
#: ... and for an interrupted run to be resumed (same batches, so the same bits).
RESUME_KEYS = (*RESULT_KEYS, "index_dtype", "batch_size", "shard_size")


def partial_dir(output_dir: Path) -> Path:
    """The work folder of a cache in progress: ``{output_dir}.partial`` beside it."""
    return output_dir.with_name(output_dir.name + PARTIAL_SUFFIX)


def remove_stale_temporaries(output_dir: Path, partial: Path) -> None:
    """Temporary folders that a killed run left beside ``output_dir`` (never complete, so never needed)."""
    if not output_dir.parent.is_dir():
        return
    for prefix in (f".{output_dir.name}{TMP_MARK}", f".{partial.name}{TMP_MARK}"):
        for entry in output_dir.parent.glob(f"{prefix}*"):
            shutil.rmtree(entry, ignore_errors=True)


def prepare_partial(partial: Path, spec: dict[str, Any]) -> None:
    """Make the work folder of a run with settings ``spec``, or check that an interrupted one can be resumed."""
    progress = partial / PROGRESS_FILE
    if partial.is_dir() and progress.is_file():
        found = read_json(progress)
        fix = f"Resume with the same arguments, or delete {str(partial)!r} to start over."
        raise_on_spec_mismatch(found, spec, RESUME_KEYS, f"the interrupted run in {str(partial)!r}", fix)
        for entry in partial.iterdir():  # temporary folders of a shard that was being written
            if TMP_MARK in entry.name:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        done = sorted(p.name for p in partial.glob("shard-*"))
        logger.info("teacher cache: resuming %s (%d shard(s) done)", partial, len(done))
        return
    if partial.exists():
        if any(p.name != PROGRESS_FILE and TMP_MARK not in p.name for p in partial.iterdir()):
            raise ValueError(
                f"{str(partial)!r} exists but has no {PROGRESS_FILE}: it is not an interrupted teacher cache run. "
                "Move or delete it."
            )
        shutil.rmtree(partial)
    with atomic_dir(partial) as tmp:
        write_json(tmp / PROGRESS_FILE, spec)


def write_shard(
    table: Any,
    columns: dict[str, list],
    features: Any,
    dtype: str,
    index_dtype: str,
    shard_dir: Path,
    info: dict[str, Any],
) -> None:
    """Save the rows ``table`` of the dataset with their teacher ``columns`` as the finished shard ``shard_dir``."""
    teacher_rows = {
        LOGPROBS_COLUMN: [t.numpy().astype(np.dtype(dtype)) for t in columns[LOGPROBS_COLUMN]],
        # via int64: torch has no uint16 arithmetic to speak of, numpy casts ids < 65536 to uint16 exactly
        INDICES_COLUMN: [t.numpy().astype(np.dtype(index_dtype)) for t in columns[INDICES_COLUMN]],
        TAIL_COLUMN: [t.numpy().astype(np.float32) for t in columns[TAIL_COLUMN]],
    }
    teacher_features = datasets.Features({c: features[c] for c in TEACHER_COLUMNS})
    teacher_part = datasets.Dataset.from_dict(teacher_rows, features=teacher_features)
    own = datasets.Dataset(table)
    shard = datasets.concatenate_datasets([own, teacher_part], axis=1)
    with atomic_dir(shard_dir) as tmp:
        shard.save_to_disk(str(tmp / "data"))
        write_json(tmp / SHARD_FILE, info)


def assemble(partial: Path, num_shards: int, features: Any, output_dir: Path, metadata: dict) -> None:
    """Join the shards of ``partial`` into the complete cache ``output_dir``, :data:`METADATA_FILE` written last."""
    shards = [datasets.load_from_disk(str(partial / f"shard-{s:05d}" / "data")) for s in range(num_shards)]
    if shards:
        full = datasets.concatenate_datasets(shards)
    else:  # an empty dataset gives an empty cache
        full = datasets.Dataset.from_dict({c: [] for c in features}, features=features)
    full.info.description = json.dumps({_DESCRIPTION_KEY: metadata}, sort_keys=True)
    with atomic_dir(output_dir) as tmp:  # output_dir is absent or empty (checked before)
        full.save_to_disk(str(tmp))
        write_json(tmp / METADATA_FILE, metadata)  # last: its presence marks the folder complete


def cache_features(own: Any, task: str, k: int, dtype: str, index_dtype: str) -> Any:
    """The dataset's own features followed by the teacher columns' (per position or per example)."""
    if CACHE_TASKS[task]:
        teacher = {
            # list<fixed_size_list<k>>: no per-position offsets (Array2D(shape=(None, k)) would add 4 bytes each)
            LOGPROBS_COLUMN: datasets.List(datasets.List(datasets.Value(dtype), length=k)),
            INDICES_COLUMN: datasets.List(datasets.List(datasets.Value(index_dtype), length=k)),
            TAIL_COLUMN: datasets.List(datasets.Value("float32")),
        }
    else:
        teacher = {
            LOGPROBS_COLUMN: datasets.List(datasets.Value(dtype), length=k),
            INDICES_COLUMN: datasets.List(datasets.Value(index_dtype), length=k),
            TAIL_COLUMN: datasets.Value("float32"),
        }
    return datasets.Features({**own, **teacher})


def load_teacher_cache(
    path: str | os.PathLike,
    *,
    teacher: torch.nn.Module | None = None,
    fingerprint: str | None = None,
    tokenizer: Any = None,
    k: int | None = None,
    temperature: float | None = None,
) -> datasets.Dataset:
    """Load a cache written by :func:`precompute_teacher_cache`, checking it is the one the caller expects.

    Every expectation given is checked against the cache's metadata; the others are not. ``fingerprint`` is
    compared whole; ``teacher`` and ``tokenizer`` are hashed as in :func:`teacher_fingerprint` and compared one
    by one, so the error says which of them differs. The dataset's ``info.description`` carries the metadata
    (see :func:`teacher_cache_metadata`), so a trainer handed the dataset alone can check the temperature.

    Args:
        path: the ``output_dir`` given to :func:`precompute_teacher_cache`.
        teacher: the teacher the cache must come from.
        fingerprint: the :func:`teacher_fingerprint` it must have (instead of ``teacher``/``tokenizer``).
        tokenizer: the tokenizer it must come from.
        k: the number of entries per position it must hold.
        temperature: the temperature it must have been computed at (the training run's).

    Returns:
        The cache as a memory-mapped ``datasets.Dataset``.

    Raises:
        ValueError: ``path`` is not a complete cache (an interrupted run, a foreign folder), or differs from
            what was asked for.

    Example:

    >>> cache = load_teacher_cache("cache/t-k16", k=16, temperature=2.0)  # doctest: +SKIP
    >>> cache.features["teacher_topk_logprobs"]  # doctest: +SKIP
    List(List(Value('float16'), length=16))
    """
    if fingerprint is not None and (teacher is not None or tokenizer is not None):
        raise ValueError(
            "Give either fingerprint or teacher/tokenizer, not both: the fingerprint already covers them."
        )
    path = Path(path)
    metadata = _read_metadata(path)
    try:
        cache = datasets.load_from_disk(str(path))
    except Exception as err:  # any failure here means the files are not a readable dataset
        raise ValueError(
            f"{str(path)!r} has {METADATA_FILE} but its dataset files cannot be read ({type(err).__name__}: {err}): "
            "the cache is damaged. Delete it and run precompute_teacher_cache again."
        ) from err
    if not isinstance(cache, datasets.Dataset) or len(cache) != metadata.get("num_examples"):
        found = len(cache) if isinstance(cache, datasets.Dataset) else type(cache).__name__
        raise ValueError(
            f"{str(path)!r} holds {found} rows but its metadata records {metadata.get('num_examples')}: the cache "
            "is incomplete or was modified. Delete it and run precompute_teacher_cache again."
        )
    missing = [c for c in TEACHER_COLUMNS if c not in cache.column_names]
    if missing:
        raise ValueError(
            f"{str(path)!r} lacks the cache column(s) {missing}: it is not a complete teacher cache. Delete it and "
            "run precompute_teacher_cache again."
        )

    differences = []
    parts = metadata.get("fingerprint_parts", {})
    if fingerprint is not None and fingerprint != metadata.get("fingerprint"):
        differences.append(f"fingerprint: cache {metadata.get('fingerprint')}, expected {fingerprint}")
    if teacher is not None and teacher_digest(teacher) != parts.get("teacher"):
        differences.append(
            f"teacher weights/config: the cache was computed by {metadata.get('teacher_name')!r}, "
            "whose weights or config differ from the teacher given"
        )
    if tokenizer is not None and tokenizer_digest(tokenizer) != parts.get("tokenizer"):
        differences.append("tokenizer: its vocabulary or settings differ from the cache's")
    if k is not None and k != metadata.get("k"):
        differences.append(f"k: cache {metadata.get('k')}, expected {k}")
    if temperature is not None and float(temperature) != metadata.get("temperature"):
        differences.append(f"temperature: cache {metadata.get('temperature')}, expected {float(temperature)}")
    if differences:
        raise ValueError(
            f"The teacher cache in {str(path)!r} does not match what was asked for: "
            + "; ".join(differences)
            + ". Recompute the cache with precompute_teacher_cache for this teacher, tokenizer, k and temperature "
            "(into another folder), or train with the settings the cache was made with."
        )
    return cache


def teacher_cache_metadata(cache: str | os.PathLike | datasets.Dataset) -> dict[str, Any]:
    """The metadata of a cache: ``fingerprint``, ``k``, ``temperature``, ``vocab_size``, ``task``, ``dtype``, ...

    Accepts the cache folder or the loaded dataset (whose ``info.description`` carries a copy, through
    ``map``/``select``/``train_test_split``). A trainer can check ``metadata["temperature"]`` against its own
    and cut the student's logits to ``metadata["vocab_size"]``.

    Args:
        cache: a cache folder or a dataset returned by :func:`load_teacher_cache`.

    Returns:
        The metadata dict written by :func:`precompute_teacher_cache`.

    Example:

    >>> teacher_cache_metadata("cache/t-k16")["temperature"]  # doctest: +SKIP
    2.0
    """
    if isinstance(cache, (str, os.PathLike)):
        return _read_metadata(Path(cache))
    description = getattr(getattr(cache, "info", None), "description", None) or ""
    try:
        metadata = json.loads(description)[_DESCRIPTION_KEY]
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(
            f"This {type(cache).__name__} carries no teacher-cache metadata: it was not loaded with "
            "load_teacher_cache (or its info was replaced). Pass the cache folder instead."
        ) from err
    return metadata


def cache_bytes_per_token(path: str | os.PathLike, *, by_column: bool = False) -> float | dict[str, float]:
    """Bytes the teacher columns take per cached position (per example for ``sequence-classification``).

    Measured, not computed from the format: the total size of the Arrow buffers of :data:`TEACHER_COLUMNS`
    as stored (memory-mapped from the files), list offsets included, divided by the number of positions. Not
    counted: the dataset's own columns (``input_ids``, ...) and the file's alignment padding (under 8 bytes
    per buffer and record batch). For the default storage this is ``4 * k + 4`` (fp16 log-probabilities,
    uint16 ids, fp32 tail) plus, per list column, 4 bytes of offsets per example (and per record batch),
    spread over the positions.

    Args:
        path: a cache folder.
        by_column: return ``{column: bytes per token}`` instead of the total.

    Returns:
        The bytes per token (a float), or a dict per column.

    Example:

    >>> cache_bytes_per_token("cache/t-k16")  # doctest: +SKIP
    68.9
    """
    cache = load_teacher_cache(path)
    tokens = max(1, int(teacher_cache_metadata(path)["num_tokens"]))
    # the buffers themselves (not .nbytes, which counts a list's offsets as one per row, not one per row + 1)
    sizes = {c: cache.data.column(c).get_total_buffer_size() / tokens for c in TEACHER_COLUMNS}
    return sizes if by_column else sum(sizes.values())


def _read_metadata(path: Path) -> dict[str, Any]:
    """The metadata of the complete cache ``path``; errors that say what the folder is instead."""
    partial = partial_dir(path)
    if not path.exists():
        if partial.is_dir():
            raise ValueError(
                f"The teacher cache {str(path)!r} is incomplete: its precompute was interrupted (shards are in "
                f"{str(partial)!r}). Run precompute_teacher_cache again with the same arguments to resume it."
            )
        raise FileNotFoundError(
            f"No teacher cache at {str(path)!r}. Build it with precompute_teacher_cache(teacher, dataset, "
            f"{str(path)!r}, tokenizer=..., k=..., temperature=...)."
        )
    if (path / PROGRESS_FILE).is_file():
        raise ValueError(
            f"{str(path)!r} is the work folder of an interrupted precompute, not a cache: it is incomplete. Run "
            "precompute_teacher_cache again with the same arguments (and the output_dir without '.partial')."
        )
    if not (path / METADATA_FILE).is_file():
        raise ValueError(
            f"{str(path)!r} is not a teacher cache: it has no {METADATA_FILE} (an incomplete or foreign folder). "
            "Build the cache with precompute_teacher_cache."
        )
    metadata = read_json(path / METADATA_FILE)
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"The teacher cache in {str(path)!r} has format version {version!r}; this hf-lite reads version "
            f"{FORMAT_VERSION}. Recompute the cache with this version of precompute_teacher_cache."
        )
    return metadata


def raise_on_spec_mismatch(
    found: Mapping[str, Any], expected: Mapping[str, Any], keys: Sequence[str], what: str, fix: str
) -> None:
    """Raise a ``ValueError`` naming each of ``keys`` whose value in ``found`` differs from ``expected``."""
    keys = [key for key in keys if found.get(key) != expected[key]]
    differences = [f"{key}: {found.get(key)!r} there, {expected[key]!r} now" for key in keys]
    if "fingerprint" in keys:
        old, new = found.get("fingerprint_parts", {}), expected["fingerprint_parts"]
        names = [name for name in new if old.get(name) != new[name]]
        differences.append(f"the fingerprint differs in: {', '.join(names) or 'unknown'}")
    if differences:
        raise ValueError(f"{what} was made with other settings: {'; '.join(differences)}. {fix}")


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; a ``ValueError`` saying the cache is damaged when it cannot be read."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{str(path)!r} cannot be read as JSON ({err}): the teacher cache is damaged. Delete its folder and run "
            "precompute_teacher_cache again."
        ) from err


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as JSON; callers write into the temporary folder of an :func:`~hf_lite._utils.atomic_dir`."""
    path.write_text(json.dumps(dict(data), indent=2, sort_keys=True))
