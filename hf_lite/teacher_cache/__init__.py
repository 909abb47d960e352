"""A teacher-outputs cache: run the teacher once over a dataset, then distil from disk without it.

:func:`precompute_teacher_cache` stores, for every position of every example, the teacher's ``k`` most likely
tokens (:func:`hf_lite.losses.teacher_topk`), their log-probabilities at the distillation temperature and the
probability mass left outside them, as extra columns of a ``datasets`` dataset saved with ``save_to_disk``. A
run that is interrupted resumes from its last complete shard and gives the same result, byte for byte, as
a run that was not. :func:`load_teacher_cache` loads it back and refuses a cache computed by another teacher,
tokenizer, ``k`` or temperature (the :func:`teacher_fingerprint`). :class:`TeacherCacheCollator` pads batches
for :func:`hf_lite.losses.topk_distillation_loss`, so the training run needs no teacher in memory.

**Storage** (per position; ``k = 16`` gives 68 bytes per token, plus 4 bytes per example of list offsets):

- ``teacher_topk_logprobs``: ``(seq, k)`` float16 by default (``dtype="float32"`` doubles it). The loss rebuilds
  the tail mass as ``1 - sum(exp(logprobs))``; fp16 keeps each log-probability to a relative ``5e-4`` (``3e-3``
  absolute below ``-4``), so that sum is good to about ``1e-3`` of the top-k mass, far inside what
  distillation notices. bf16 (``~1e-2``) is refused.
- ``teacher_topk_indices``: ``(seq, k)`` uint16 when every id fits (vocabulary ``<= 65536``; *unsigned*:
  int16 would wrap ids above 32767), int32 otherwise.
- ``teacher_tail_mass``: ``(seq,)`` float32, ``1 - sum of the top-k probabilities`` computed exactly (as a
  ``logsumexp`` over the other tokens), for checks and for losses that take the tail directly.

**Alignment**: unshifted. Row ``i`` is the teacher's distribution *at* position ``i``; for a causal LM it
predicts token ``i + 1``, exactly like ``logits[:, i]``: pass it with the student's unshifted logits and
the labels aligned by :func:`hf_lite.losses.shift_labels` (or slice everything with ``[:, :-1]``). A
``sequence-classification`` cache holds one ``(k,)`` row per example.

>>> from hf_lite.teacher_cache import TeacherCacheCollator, load_teacher_cache, precompute_teacher_cache
>>> cache = precompute_teacher_cache(teacher, tokenized, "cache/teacher-k16", tokenizer=tok, k=16,
...                                  temperature=2.0)  # doctest: +SKIP
>>> cache = load_teacher_cache("cache/teacher-k16", temperature=2.0)  # doctest: +SKIP
>>> batch = TeacherCacheCollator(tok)([cache[0], cache[1]])  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hf_lite import losses

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "INDICES_COLUMN",
    "LOGPROBS_COLUMN",
    "METADATA_FILE",
    "TAIL_COLUMN",
    "TEACHER_COLUMNS",
    "TeacherCacheCollator",
    "TeacherCacheRows",
    "cache_bytes_per_token",
    "load_teacher_cache",
    "precompute_teacher_cache",
    "teacher_cache_metadata",
    "teacher_fingerprint",
]

#: Version of the on-disk layout; part of the fingerprint, so a cache of another layout never loads as this one.
FORMAT_VERSION = 1
LOGPROBS_COLUMN = "teacher_topk_logprobs"
INDICES_COLUMN = "teacher_topk_indices"
TAIL_COLUMN = "teacher_tail_mass"
TEACHER_COLUMNS = (LOGPROBS_COLUMN, INDICES_COLUMN, TAIL_COLUMN)
#: The metadata file of a complete cache, written last: its presence marks the folder complete.
METADATA_FILE = "teacher_cache.json"
_PROGRESS_FILE = "progress.json"
_SHARD_FILE = "shard.json"
_PARTIAL_SUFFIX = ".partial"
_TMP_MARK = ".tmp-"
#: Positions per top-k chunk: bounds the fp32 temporaries to ``_CHUNK_ROWS x vocab`` (512 MB at 128k tokens).
_CHUNK_ROWS = 1024
_DESCRIPTION_KEY = "hf_lite_teacher_cache"

#: Tasks the cache understands, and whether it stores one row per position (True) or per example (False).
_TASKS = {"causal-lm": True, "token-classification": True, "sequence-classification": False}
_LOGPROB_DTYPES = ("float16", "float32")
#: Inputs that go to the teacher; they are also what a shard's input digest covers.
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: Config entries that describe where or how a model was saved or called, not what it computes.
_VOLATILE_CONFIG_KEYS = frozenset(
    {
        "_name_or_path", "transformers_version", "architectures", "_commit_hash", "_attn_implementation",
        "_attn_implementation_autoset", "_attn_implementation_internal", "attn_implementation",
        "output_hidden_states", "output_attentions", "return_dict", "use_cache", "dtype", "torch_dtype",
    }
)  # fmt: skip
#: Backend tokenizer settings that transformers changes on every padded/truncated call.
_VOLATILE_TOKENIZER_KEYS = ("truncation", "padding")


# --------------------------------------------------------------------------------------------------
# fingerprint


def teacher_fingerprint(teacher: torch.nn.Module, tokenizer: Any, k: int, temperature: float) -> str:
    """A stable hash of everything that decides the cached values; equal fingerprints mean equal caches.

    What goes in, and why:

    - **the teacher's weights**: SHA-256 of the bytes, dtype, shape and name of every ``state_dict`` entry
      (quantized weights and their quantization state included), with the model class (which head) and its
      config minus bookkeeping entries (``_name_or_path``, ``transformers_version``, ``dtype``, ``use_cache``,
      ...). Weights decide the logits; the config holds what is not a weight but changes them (norm epsilon,
      RoPE base, activation, label order). Hashing every byte is the only sound digest (a sampled one misses
      a fine-tuned row) and costs about one second per 2 GB of weights.
    - **the tokenizer**: its backend JSON (vocabulary, merges, normalizer, special and added tokens), without
      the padding/truncation state that calls leave behind. The cached indices are ids of this vocabulary.
    - **k** and **temperature**: they decide which entries are kept and their values (``softmax(z / T)``).
    - **the format version** (:data:`FORMAT_VERSION`): a new layout must not be read as the old one.

    The storage dtype and the batching are not in it: they change rounding, not meaning. The result is the
    same in every process and after ``save_pretrained``/``from_pretrained``.

    Args:
        teacher: the teacher model (``nn.Module``; a ``PreTrainedModel`` gives its config too).
        tokenizer: the tokenizer the dataset was tokenized with.
        k: entries kept per position.
        temperature: the distillation temperature ``T > 0``.

    Returns:
        32 hexadecimal characters.

    Example:

    >>> from hf_lite.testing import build_tiny_model
    >>> teacher, tok = build_tiny_model("llama", seed=0)
    >>> fp = teacher_fingerprint(teacher, tok, k=16, temperature=2.0)
    >>> len(fp), fp == teacher_fingerprint(teacher, tok, k=16, temperature=1.0)
    (32, False)
    """
    return _combine(_fingerprint_parts(teacher, tokenizer, k, temperature))


def _fingerprint_parts(teacher: Any, tokenizer: Any, k: int, temperature: float) -> dict[str, Any]:
    _check_k(k)
    losses._check_temperature(temperature)
    return {
        "format_version": FORMAT_VERSION,
        "teacher": _teacher_digest(teacher),
        "tokenizer": _tokenizer_digest(tokenizer),
        "k": int(k),
        "temperature": float(temperature),
    }


def _combine(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(dict(parts), sort_keys=True).encode()).hexdigest()[:32]


def _teacher_digest(teacher: Any) -> str:
    if not isinstance(teacher, torch.nn.Module):
        raise TypeError(
            f"teacher must be a torch.nn.Module (a loaded model); got {type(teacher).__name__}. Load it first, "
            "e.g. with hf_lite.load_teacher(name_or_path, task)."
        )
    hasher = hashlib.sha256()
    hasher.update(type(teacher).__name__.encode())
    config = getattr(teacher, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        hasher.update(json.dumps(_strip_config(config.to_dict()), sort_keys=True, default=str).encode())
    for name, value in teacher.state_dict().items():
        hasher.update(name.encode())
        if not isinstance(value, torch.Tensor):
            hasher.update(repr(value).encode())
            continue
        if value.device.type == "meta":
            raise ValueError(
                f"teacher weight {name!r} is on the meta device (offloaded or not loaded), so it cannot be hashed "
                "and the cache cannot be fingerprinted. Load the teacher without disk offload (device_map on "
                "devices that hold it, or on CPU)."
            )
        hasher.update(f"{value.dtype}{tuple(value.shape)}".encode())
        data = value.detach().contiguous().cpu().reshape(-1).view(torch.uint8)
        hasher.update(memoryview(data.numpy()))
    return hasher.hexdigest()


def _strip_config(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_config(v) for k, v in value.items() if k not in _VOLATILE_CONFIG_KEYS}
    if isinstance(value, (list, tuple)):
        return [_strip_config(v) for v in value]
    return value


def _tokenizer_digest(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        for key in _VOLATILE_TOKENIZER_KEYS:
            state.pop(key, None)
    elif hasattr(tokenizer, "get_vocab"):
        # A slow (Python) tokenizer: its vocabulary, added tokens included, is what the ids mean.
        state = {"vocab": sorted(tokenizer.get_vocab().items()), "class": type(tokenizer).__name__}
    else:
        raise TypeError(
            f"tokenizer must be a transformers tokenizer (the one the dataset was tokenized with); got "
            f"{type(tokenizer).__name__}."
        )
    state = {"backend": state, "len": len(tokenizer)}
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------------------------------
# precompute


def precompute_teacher_cache(
    teacher: torch.nn.Module | str | os.PathLike,
    dataset: datasets.Dataset,
    output_dir: str | os.PathLike,
    *,
    tokenizer: Any,
    k: int = 16,
    temperature: float = 1.0,
    batch_size: int = 8,
    task: str = "causal-lm",
    shard_size: int = 1024,
    dtype: str = "float16",
    teacher_name: str | None = None,
) -> datasets.Dataset:
    """Run the teacher once over ``dataset`` and save its top-k log-probabilities beside the dataset's columns.

    The teacher runs in evaluation mode under ``no_grad`` on batches of ``batch_size`` examples, padded on
    the right to the longest one (padding never reaches a real position: causal attention, and the
    attention mask). Each example gets :data:`LOGPROBS_COLUMN`, :data:`INDICES_COLUMN` and
    :data:`TAIL_COLUMN` for each of its positions (unshifted; see the module docstring), its own columns
    kept as they are. For a causal LM the logits are cut to the tokenizer's length first, as the trainer does
    with heads padded to a multiple of 64.

    **Resuming.** Work goes to ``{output_dir}.partial/`` in shards of ``shard_size`` examples, each written
    to a temporary folder and renamed into place, so a shard is complete or absent. Called again with the same
    arguments after an interruption, the function keeps the finished shards (after checking that the teacher
    fingerprint, the settings and each shard's input ids match) and computes from the first missing one;
    the result equals an uninterrupted run's. When all shards are done they are joined into ``output_dir``
    (``save_to_disk`` files plus :data:`METADATA_FILE`, written last in a temporary folder that is renamed into
    place) and the partial folder is removed. An ``output_dir`` that already holds this cache (same settings,
    same input ids) is loaded, not recomputed. Bit-for-bit equality with an uninterrupted run assumes the
    resumed process runs the same kernels (same hardware, torch and transformers); elsewhere the new shards
    can differ in the last bits. Call it from one process only (the main one under ``accelerate``), then load
    the cache everywhere with :func:`load_teacher_cache`.

    Args:
        teacher: the teacher model, or a Hub id / folder loaded with :func:`hf_lite.load_teacher` for ``task``.
        dataset: a tokenized ``datasets.Dataset`` with ``input_ids`` (and optionally ``attention_mask``,
            ``token_type_ids``, ``labels`` and any other columns, which are kept).
        output_dir: where the cache goes; must not hold anything else.
        tokenizer: the tokenizer the dataset was made with (fingerprint, vocabulary size, padding id).
        k: entries kept per position, ``1 <= k <= vocabulary`` (or ``num_labels``).
        temperature: the distillation run's temperature ``T``: log-probabilities are ``log_softmax(z / T)``.
        batch_size: examples per teacher forward.
        task: ``"causal-lm"``, ``"token-classification"`` (one row per position) or
            ``"sequence-classification"`` (one row per example).
        shard_size: examples per resumable shard (the work lost to an interruption is at most one shard).
        dtype: ``"float16"`` (default, 2 bytes per entry) or ``"float32"`` for the log-probabilities.
        teacher_name: recorded in the metadata; defaults to the teacher's ``name_or_path``.

    Returns:
        The cache, as :func:`load_teacher_cache` returns it.

    Example:

    >>> cache = precompute_teacher_cache(teacher, tokenized, "cache/t-k16", tokenizer=tok, k=16,
    ...                                  temperature=2.0, batch_size=16)  # doctest: +SKIP
    >>> cache.column_names[-3:]  # doctest: +SKIP
    ['teacher_topk_logprobs', 'teacher_topk_indices', 'teacher_tail_mass']
    """
    import datasets

    task = _check_task(task)
    _check_k(k)
    losses._check_temperature(temperature)
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("shard_size", shard_size)
    if dtype not in _LOGPROB_DTYPES:
        raise ValueError(
            f"dtype={dtype!r} is not a storage type for the log-probabilities; use 'float16' (2 bytes, the default) "
            "or 'float32'. bfloat16 is refused: the tail mass 1 - sum(p) would only be known to about 1e-2."
        )
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(
            f"dataset must be a datasets.Dataset (tokenized); got {type(dataset).__name__}. For a DatasetDict "
            "build one cache per split, e.g. dataset['train']."
        )
    if "input_ids" not in dataset.column_names:
        raise ValueError(
            f"dataset has no 'input_ids' column (columns: {dataset.column_names}). Tokenize it first, e.g. "
            "dataset.map(lambda b: tokenizer(b['text']), batched=True)."
        )
    clash = [c for c in TEACHER_COLUMNS if c in dataset.column_names]
    if clash:
        raise ValueError(
            f"dataset already has the cache column(s) {clash}: it looks like a teacher cache itself. Pass the "
            "tokenized dataset without them (dataset.remove_columns(TEACHER_COLUMNS))."
        )
    if isinstance(teacher, (str, os.PathLike)):
        from hf_lite.loading import load_teacher

        teacher_name = teacher_name or str(teacher)
        teacher = load_teacher(teacher, task)
    if not isinstance(teacher, torch.nn.Module):
        raise TypeError(f"teacher must be a model, a Hub id or a folder; got {type(teacher).__name__}.")
    vocab_size = _vocab_size(teacher, tokenizer, task)
    if vocab_size is not None and k > vocab_size:
        raise ValueError(
            f"k={k} is larger than the teacher's {vocab_size} outputs. Use k <= {vocab_size} (k = all outputs keeps "
            "the whole distribution)."
        )
    index_dtype = "uint16" if vocab_size is not None and vocab_size <= 2**16 else "int32"
    parts = _fingerprint_parts(teacher, tokenizer, k, temperature)
    spec = {
        "format_version": FORMAT_VERSION,
        "fingerprint": _combine(parts),
        "fingerprint_parts": parts,
        "task": task,
        "k": k,
        "temperature": float(temperature),
        "dtype": dtype,
        "index_dtype": index_dtype,
        "vocab_size": vocab_size,
        "batch_size": batch_size,
        "shard_size": shard_size,
        "num_examples": len(dataset),
    }
    output_dir = Path(output_dir)
    partial = output_dir.with_name(output_dir.name + _PARTIAL_SUFFIX)

    if output_dir.exists() and any(output_dir.iterdir()):
        if not (output_dir / METADATA_FILE).is_file():
            raise ValueError(
                f"output_dir={str(output_dir)!r} exists and is not a teacher cache; refusing to write into it. "
                "Choose an empty or new folder."
            )
        found = _read_json(output_dir / METADATA_FILE)
        fix = f"Choose another output_dir, or delete {str(output_dir)!r} to recompute it."
        _raise_on_spec_mismatch(found, spec, _RESULT_KEYS, f"the cache in {str(output_dir)!r}", fix)
        if found.get("inputs_digest") != _dataset_digest(dataset, int(found.get("shard_size", shard_size))):
            raise ValueError(
                f"the cache in {str(output_dir)!r} was computed from other input_ids than this dataset's. {fix}"
            )
        if partial.exists():  # left over by an interruption between the final rename and its removal
            shutil.rmtree(partial)
        logger.info("teacher cache %s is already complete; loading it", output_dir)
        return load_teacher_cache(output_dir)

    _remove_stale_temporaries(output_dir, partial)
    _prepare_partial(partial, spec)
    n = len(dataset)
    num_shards = math.ceil(n / shard_size)
    pad_id = _pad_id(tokenizer)
    features = _cache_features(dataset.features, task, k, dtype, index_dtype)
    was_training = teacher.training
    teacher.eval()
    try:
        for shard in range(num_shards):
            start, stop = shard * shard_size, min((shard + 1) * shard_size, n)
            shard_dir = partial / f"shard-{shard:05d}"
            table, inputs = _shard_inputs(dataset, start, stop)
            digest = _inputs_digest(inputs)
            if shard_dir.is_dir():
                done = _read_json(shard_dir / _SHARD_FILE)
                if (
                    done.get("inputs_digest") != digest
                    or done.get("start") != start
                    or done.get("stop") != stop
                ):
                    raise ValueError(
                        f"shard {shard} in {str(partial)!r} was computed from other input_ids than rows "
                        f"{start}..{stop - 1} of this dataset: the dataset changed since the interrupted run. Pass the "
                        f"same dataset (same order), or delete {str(partial)!r} to start over."
                    )
                logger.info("teacher cache: shard %d/%d already done", shard + 1, num_shards)
                continue
            columns = _run_teacher(
                teacher, inputs, start, task, k, temperature, batch_size, vocab_size, pad_id
            )
            _write_shard(table, columns, features, dtype, index_dtype, shard_dir, {
                "start": start, "stop": stop, "inputs_digest": digest,
                "num_tokens": _count_tokens(inputs["input_ids"], task),
            })  # fmt: skip
            logger.info(
                "teacher cache: shard %d/%d written (%d examples)", shard + 1, num_shards, stop - start
            )
    finally:
        teacher.train(was_training)

    shard_infos = [_read_json(partial / f"shard-{s:05d}" / _SHARD_FILE) for s in range(num_shards)]
    metadata = {
        **spec,
        "teacher_name": teacher_name or _name_of(teacher),
        "num_tokens": sum(info["num_tokens"] for info in shard_infos),
        "inputs_digest": _combine_digests([info["inputs_digest"] for info in shard_infos]),
        "columns": {"logprobs": LOGPROBS_COLUMN, "indices": INDICES_COLUMN, "tail_mass": TAIL_COLUMN},
        "alignment": "unshifted: row i is the teacher's distribution at position i (for a causal LM it predicts "
        "token i + 1); shift it like the logits",
    }
    _assemble(partial, num_shards, features, output_dir, metadata)
    shutil.rmtree(partial)
    return load_teacher_cache(output_dir)


#: Metadata entries that must match for an existing complete cache to be the result asked for.
_RESULT_KEYS = (
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
_RESUME_KEYS = (*_RESULT_KEYS, "index_dtype", "batch_size", "shard_size")


def _remove_stale_temporaries(output_dir: Path, partial: Path) -> None:
    """Temporary folders that a killed run left beside ``output_dir`` (never complete, so never needed)."""
    if not output_dir.parent.is_dir():
        return
    for prefix in (f".{output_dir.name}{_TMP_MARK}", f".{partial.name}{_TMP_MARK}"):
        for entry in output_dir.parent.glob(f"{prefix}*"):
            shutil.rmtree(entry, ignore_errors=True)


def _prepare_partial(partial: Path, spec: dict[str, Any]) -> None:
    progress = partial / _PROGRESS_FILE
    if partial.is_dir() and progress.is_file():
        found = _read_json(progress)
        _raise_on_spec_mismatch(found, spec, _RESUME_KEYS, f"the interrupted run in {str(partial)!r}",
                                f"Resume with the same arguments, or delete {str(partial)!r} to start over.")  # fmt: skip
        for entry in partial.iterdir():  # temporary folders of a shard that was being written
            if _TMP_MARK in entry.name:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        done = sorted(p.name for p in partial.glob("shard-*"))
        logger.info("teacher cache: resuming %s (%d shard(s) done)", partial, len(done))
        return
    if partial.exists():
        if any(p.name != _PROGRESS_FILE and _TMP_MARK not in p.name for p in partial.iterdir()):
            raise ValueError(
                f"{str(partial)!r} exists but has no {_PROGRESS_FILE}: it is not an interrupted teacher cache run. "
                "Move or delete it."
            )
        shutil.rmtree(partial)
    partial.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=partial.parent, prefix=f".{partial.name}{_TMP_MARK}"))
    _write_json(tmp / _PROGRESS_FILE, spec)
    os.replace(tmp, partial)


def _run_teacher(
    teacher: torch.nn.Module,
    inputs: dict[str, list],
    offset: int,
    task: str,
    k: int,
    temperature: float,
    batch_size: int,
    vocab_size: int | None,
    pad_id: int,
) -> dict[str, list]:
    """Top-k log-probabilities, ids and tail mass of each example of ``inputs``, batch by batch."""
    per_position = _TASKS[task]
    device = _input_device(teacher)
    out: dict[str, list] = {LOGPROBS_COLUMN: [], INDICES_COLUMN: [], TAIL_COLUMN: []}
    ids = inputs["input_ids"]
    for b in range(0, len(ids), batch_size):
        rows = ids[b : b + batch_size]
        lengths = [len(r) for r in rows]
        if min(lengths) == 0:
            bad = offset + b + lengths.index(0)
            raise ValueError(
                f"dataset row {bad} has empty input_ids: there is nothing for the teacher to score. Filter empty "
                "rows first, e.g. dataset.filter(lambda r: len(r['input_ids']) > 0)."
            )
        batch = {"input_ids": _pad(rows, max(lengths), pad_id)}
        masks = inputs.get("attention_mask")
        batch["attention_mask"] = _pad(masks[b : b + batch_size] if masks else [[1] * n for n in lengths],
                                       max(lengths), 0)  # fmt: skip
        if "token_type_ids" in inputs:
            batch["token_type_ids"] = _pad(inputs["token_type_ids"][b : b + batch_size], max(lengths), 0)
        batch = {key: value.to(device) for key, value in batch.items()}
        extra = {"use_cache": False} if task == "causal-lm" else {}
        with torch.no_grad():
            logits = teacher(**batch, **extra).logits  # (B, L, V) or (B, C)
        if vocab_size is not None:
            logits = logits[..., :vocab_size]
        logprobs, indices, tail = _topk_in_chunks(logits, k, temperature)  # (B, L, k), (B, L, k), (B, L)
        for i, n in enumerate(lengths):
            if per_position:
                out[LOGPROBS_COLUMN].append(logprobs[i, :n])
                out[INDICES_COLUMN].append(indices[i, :n])
                out[TAIL_COLUMN].append(tail[i, :n])
            else:
                out[LOGPROBS_COLUMN].append(logprobs[i])
                out[INDICES_COLUMN].append(indices[i])
                out[TAIL_COLUMN].append(tail[i])
    return out


def _topk_in_chunks(
    logits: torch.Tensor, k: int, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`hf_lite.losses.teacher_topk` and the tail mass, on CPU, ``_CHUNK_ROWS`` positions at a time.

    The fp32 temporaries (``(rows, vocab)`` each) stay bounded whatever the batch; rows are independent, so
    the values do not depend on the chunking (which is fixed anyway, so resumed runs match bit for bit).
    """
    flat = logits.reshape(-1, logits.shape[-1])  # (N, V)
    parts = []
    for chunk in flat.split(_CHUNK_ROWS):
        logprobs, indices = losses.teacher_topk(chunk, k, temperature=temperature)  # (n, k) each
        tail = _tail_mass(chunk, indices, temperature)  # (n,)
        parts.append((logprobs.float().cpu(), indices.cpu(), tail.cpu()))
    lead = logits.shape[:-1]
    if not parts:
        return torch.empty(*lead, k), torch.empty(*lead, k, dtype=torch.long), torch.empty(lead)
    logprobs, indices, tail = (torch.cat(column) for column in zip(*parts, strict=True))
    return logprobs.reshape(*lead, k), indices.reshape(*lead, k), tail.reshape(lead)


def _tail_mass(logits: torch.Tensor, indices: torch.Tensor, temperature: float) -> torch.Tensor:
    """``1 - sum of the top-k probabilities``, as ``exp(logsumexp(others) - logsumexp(all))``: exact when tiny."""
    with torch.no_grad():
        scaled = logits.float() / temperature  # (..., V)
        total = scaled.logsumexp(-1)  # (...)
        others = scaled.scatter(-1, indices, float("-inf")).logsumexp(-1)  # (...), -inf when k = V
        return (others - total).exp()


def _write_shard(
    table: Any,
    columns: dict[str, list],
    features: Any,
    dtype: str,
    index_dtype: str,
    shard_dir: Path,
    info: dict[str, Any],
) -> None:
    import datasets
    import numpy as np

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
    tmp = Path(tempfile.mkdtemp(dir=shard_dir.parent, prefix=f".{shard_dir.name}{_TMP_MARK}"))
    shard.save_to_disk(str(tmp / "data"))
    _write_json(tmp / _SHARD_FILE, info)
    os.replace(tmp, shard_dir)


def _assemble(partial: Path, num_shards: int, features: Any, output_dir: Path, metadata: dict) -> None:
    import datasets

    shards = [datasets.load_from_disk(str(partial / f"shard-{s:05d}" / "data")) for s in range(num_shards)]
    if shards:
        full = datasets.concatenate_datasets(shards)
    else:  # an empty dataset gives an empty cache
        full = datasets.Dataset.from_dict({c: [] for c in features}, features=features)
    full.info.description = json.dumps({_DESCRIPTION_KEY: metadata}, sort_keys=True)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}{_TMP_MARK}"))
    try:
        full.save_to_disk(str(tmp))
        _write_json(tmp / METADATA_FILE, metadata)  # last: its presence marks the folder complete
        if output_dir.exists():
            output_dir.rmdir()  # empty (checked before): os.replace cannot rename onto a non-empty folder
        os.replace(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _cache_features(own: Any, task: str, k: int, dtype: str, index_dtype: str) -> Any:
    import datasets

    if _TASKS[task]:
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


# --------------------------------------------------------------------------------------------------
# load


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
    import datasets

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
    if teacher is not None and _teacher_digest(teacher) != parts.get("teacher"):
        differences.append(f"teacher weights/config: the cache was computed by {metadata.get('teacher_name')!r}, "
                           "whose weights or config differ from the teacher given")  # fmt: skip
    if tokenizer is not None and _tokenizer_digest(tokenizer) != parts.get("tokenizer"):
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
    partial = path.with_name(path.name + _PARTIAL_SUFFIX)
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
    if (path / _PROGRESS_FILE).is_file():
        raise ValueError(
            f"{str(path)!r} is the work folder of an interrupted precompute, not a cache: it is incomplete. Run "
            "precompute_teacher_cache again with the same arguments (and the output_dir without '.partial')."
        )
    if not (path / METADATA_FILE).is_file():
        raise ValueError(
            f"{str(path)!r} is not a teacher cache: it has no {METADATA_FILE} (an incomplete or foreign folder). "
            "Build the cache with precompute_teacher_cache."
        )
    metadata = _read_json(path / METADATA_FILE)
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"The teacher cache in {str(path)!r} has format version {version!r}; this hf-lite reads version "
            f"{FORMAT_VERSION}. Recompute the cache with this version of precompute_teacher_cache."
        )
    return metadata


# --------------------------------------------------------------------------------------------------
# collator


class TeacherCacheRows(torch.utils.data.Dataset):
    """A teacher cache (or any ``datasets.Dataset``) read a batch of rows at a time, as numpy arrays.

    ``datasets`` turns every value of a nested column into a Python object when a ``DataLoader`` fetches
    rows (``(seq, k)`` teacher columns: ~9 ms for 16 rows of 64 tokens at k=16 here, then as long again to
    build tensors from the lists). This view takes the rows of a batch from the Arrow table in one call and
    hands out zero-copy numpy views: list columns as ``(len,)`` arrays, list-of-``k`` columns as ``(len, k)``,
    fixed-size columns as ``(k,)``, scalars as numpy scalars, anything else (strings) as Python values. It is
    what :class:`~trainers.DistillationTrainer` trains from when its dataset is a teacher cache;
    :class:`TeacherCacheCollator` takes its rows as it takes plain ones.

    Args:
        dataset: the ``datasets.Dataset`` (any format; its Arrow table is read).

    Example:

    >>> import datasets
    >>> rows = TeacherCacheRows(datasets.Dataset.from_dict({"input_ids": [[1, 2, 3], [4]], "label": [0, 1]}))
    >>> [r["input_ids"].tolist() for r in rows.__getitems__([1, 0])]
    [[4], [1, 2, 3]]
    """

    def __init__(self, dataset: datasets.Dataset) -> None:
        import datasets

        if not isinstance(dataset, datasets.Dataset):
            raise TypeError(f"TeacherCacheRows reads a datasets.Dataset; got {type(dataset).__name__}.")
        self.dataset = dataset.with_format("arrow")
        self.column_names = dataset.column_names

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        table = self.dataset[list(indices)]  # a pyarrow.Table of these rows, in this order
        columns = {name: _numpy_rows(table.column(name).combine_chunks()) for name in table.column_names}
        return [{name: values[i] for name, values in columns.items()} for i in range(table.num_rows)]


def _numpy_rows(column: Any) -> Sequence[Any]:
    """One value per row of an Arrow array: numpy views for lists of numbers, Python values otherwise."""
    import pyarrow as pa

    kind = column.type
    if column.null_count == 0 and (pa.types.is_list(kind) or pa.types.is_large_list(kind)):
        inner = column.flatten()  # the items of every row, offsets applied
        if pa.types.is_fixed_size_list(inner.type) and _is_number(inner.type.value_type) and inner.null_count == 0:
            flat = inner.flatten().to_numpy(zero_copy_only=False).reshape(-1, inner.type.list_size)
        elif _is_number(inner.type) and inner.null_count == 0:
            flat = inner.to_numpy(zero_copy_only=False)
        else:
            return column.to_pylist()
        bounds = (column.offsets.to_numpy() - column.offsets[0].as_py()).tolist()
        return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    if pa.types.is_fixed_size_list(kind) and _is_number(kind.value_type) and column.null_count == 0:
        return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, kind.list_size)
    if _is_number(kind) and column.null_count == 0:
        return column.to_numpy(zero_copy_only=False)
    return column.to_pylist()


def _is_number(kind: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)


@dataclass
class TeacherCacheCollator:
    """Pads cache rows into a batch for training from the cache, with no teacher in memory.

    Everything is padded on the right to the longest example (or a multiple of ``pad_to_multiple_of``); the
    teacher tensors stay aligned with ``input_ids`` position by position (unshifted: shift them like the
    logits). Output, for ``B`` examples of at most ``L`` tokens and a cache of ``k`` entries:

    - ``input_ids`` ``(B, L)`` int64, padded with the tokenizer's pad id (eos, then 0, when it has none);
    - ``attention_mask`` ``(B, L)`` int64, 0 on padding (the example's own mask when it has one);
    - ``token_type_ids`` ``(B, L)`` int64 when the examples have them;
    - ``labels`` ``(B, L)`` int64 with ``-100`` on padding when the examples have ``labels`` (or ``label``;
      ``(B,)`` for sequence classification), or built from ``input_ids`` when ``labels_from_input_ids=True``;
    - ``teacher_topk_logprobs`` ``(B, L, k)`` float32, ``-inf`` on padding;
    - ``teacher_topk_indices`` ``(B, L, k)`` int64, ``0..k-1`` on padding (a legal entry, all mass in the
      tail, so an unmasked pad cannot produce NaN; mask it all the same);
    - ``teacher_tail_mass`` ``(B, L)`` float32, ``1`` on padding, only with ``return_tail_mass=True`` (the
      model's forward does not take it).

    A ``sequence-classification`` cache gives ``(B, k)`` teacher tensors. Other columns (``text``, ...) are
    dropped.

    Args:
        tokenizer: the tokenizer of the cache (for the pad id).
        pad_to_multiple_of: round ``L`` up to a multiple of this.
        label_pad_token_id: label on padded positions.
        labels_from_input_ids: when the examples have no ``labels``, use ``input_ids`` with ``-100`` where
            ``attention_mask`` is 0 (causal LM training on every token, like ``DataCollatorForLanguageModeling``).
        return_tail_mass: add ``teacher_tail_mass`` to the batch.

    Example:

    >>> import torch
    >>> from hf_lite.testing import build_tokenizer
    >>> rows = [{"input_ids": [5, 6, 7], "teacher_topk_logprobs": torch.zeros(3, 2).tolist(),
    ...          "teacher_topk_indices": [[1, 2]] * 3}, {"input_ids": [8],
    ...          "teacher_topk_logprobs": [[0.0, -1.0]], "teacher_topk_indices": [[3, 4]]}]
    >>> batch = TeacherCacheCollator(build_tokenizer(), labels_from_input_ids=True)(rows)
    >>> tuple(batch["teacher_topk_logprobs"].shape), batch["labels"].tolist()
    ((2, 3, 2), [[5, 6, 7], [8, -100, -100]])
    """

    tokenizer: Any
    pad_to_multiple_of: int | None = None
    label_pad_token_id: int = losses.IGNORE_INDEX
    labels_from_input_ids: bool = False
    return_tail_mass: bool = False

    def __post_init__(self) -> None:
        if self.pad_to_multiple_of is not None:
            _check_positive_int("pad_to_multiple_of", self.pad_to_multiple_of)

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("TeacherCacheCollator got an empty list of examples.")
        missing = [c for c in (LOGPROBS_COLUMN, INDICES_COLUMN) if c not in features[0]]
        if missing:
            raise ValueError(
                f"the examples lack {missing}: they do not come from a teacher cache. Load one with "
                "load_teacher_cache, and pass remove_unused_columns=False to the Trainer so it keeps these columns."
            )
        ids = [_as_tensor(f["input_ids"], torch.long) for f in features]
        logprobs = [_as_tensor(f[LOGPROBS_COLUMN], torch.float32) for f in features]
        indices = [_as_tensor(f[INDICES_COLUMN], torch.long) for f in features]
        per_position = logprobs[0].ndim == 2
        for i, (x, lp, ix) in enumerate(zip(ids, logprobs, indices, strict=True)):
            if lp.shape != ix.shape or (per_position and lp.shape[0] != x.shape[0]):
                raise ValueError(
                    f"example {i} has {x.shape[0]} input_ids but teacher tensors of shape {tuple(lp.shape)} and "
                    f"{tuple(ix.shape)}: the cache and the tokens are no longer aligned (truncated or re-tokenized "
                    "after caching?). Change the dataset before precompute_teacher_cache, not after."
                )
        length = max(x.shape[0] for x in ids)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {"input_ids": _stack_padded(ids, length, _pad_id(self.tokenizer))}
        masks = [_as_tensor(f["attention_mask"], torch.long) if "attention_mask" in f else torch.ones_like(x)
                 for f, x in zip(features, ids, strict=True)]  # fmt: skip
        batch["attention_mask"] = _stack_padded(masks, length, 0)
        if "token_type_ids" in features[0]:
            batch["token_type_ids"] = _stack_padded([_as_tensor(f["token_type_ids"], torch.long) for f in features],
                                                    length, 0)  # fmt: skip
        label_key = "labels" if "labels" in features[0] else "label" if "label" in features[0] else None
        if label_key is not None:  # "label" is the usual name in classification datasets
            labels = [_as_tensor(f[label_key], torch.long) for f in features]
            batch["labels"] = (
                _stack_padded(labels, length, self.label_pad_token_id)
                if labels[0].ndim
                else torch.stack(labels)
            )
        elif self.labels_from_input_ids:
            batch["labels"] = batch["input_ids"].masked_fill(
                batch["attention_mask"] == 0, self.label_pad_token_id
            )
        if per_position:
            k = logprobs[0].shape[-1]
            batch[LOGPROBS_COLUMN] = _stack_padded(logprobs, length, float("-inf"))  # (B, L, k)
            pad_ids = torch.arange(k).expand(length, k)
            batch[INDICES_COLUMN] = torch.stack(
                [torch.cat([ix, pad_ids[ix.shape[0] :]]) for ix in indices]
            )  # (B, L, k)
        else:
            batch[LOGPROBS_COLUMN] = torch.stack(logprobs)  # (B, k)
            batch[INDICES_COLUMN] = torch.stack(indices)  # (B, k)
        if self.return_tail_mass:
            tails = [_as_tensor(f[TAIL_COLUMN], torch.float32) for f in features]
            batch[TAIL_COLUMN] = _stack_padded(tails, length, 1.0) if per_position else torch.stack(tails)
        return batch


# --------------------------------------------------------------------------------------------------
# helpers


def _as_tensor(value: Any, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(dtype)
    import numpy as np

    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.astype(np.int64 if dtype == torch.long else np.float32))
    return torch.tensor(value, dtype=dtype)


def _stack_padded(rows: Sequence[torch.Tensor], length: int, value: float) -> torch.Tensor:
    out = torch.full((len(rows), length, *rows[0].shape[1:]), value, dtype=rows[0].dtype)
    for i, row in enumerate(rows):
        out[i, : row.shape[0]] = row
    return out


def _pad(rows: Sequence[Sequence[int]], length: int, value: int) -> torch.Tensor:
    return _stack_padded([torch.tensor(r, dtype=torch.long) for r in rows], length, value)


def _pad_id(tokenizer: Any) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0  # padded positions are masked out; any id will do


def _input_device(model: torch.nn.Module) -> torch.device:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and hasattr(embeddings, "weight"):
        return embeddings.weight.device
    return next(model.parameters()).device


def _vocab_size(teacher: torch.nn.Module, tokenizer: Any, task: str) -> int | None:
    """Outputs the cache ranges over: the head's size, cut to the tokenizer's length for a language model."""
    config = getattr(teacher, "config", None)
    if task == "causal-lm":
        head = teacher.get_output_embeddings() if hasattr(teacher, "get_output_embeddings") else None
        size = getattr(getattr(head, "weight", None), "shape", [None])[0]
        if size is None and config is not None:
            size = getattr(config.get_text_config() if hasattr(config, "get_text_config") else config,
                           "vocab_size", None)  # fmt: skip
        return min(size, len(tokenizer)) if size is not None else len(tokenizer)
    return getattr(config, "num_labels", None)


def _name_of(teacher: torch.nn.Module) -> str:
    name = getattr(teacher, "name_or_path", None) or getattr(
        getattr(teacher, "config", None), "_name_or_path", ""
    )
    return str(name) or type(teacher).__name__


def _shard_inputs(dataset: datasets.Dataset, start: int, stop: int) -> tuple[Any, dict[str, list]]:
    """Rows ``start:stop`` as an Arrow table (own columns, untouched) and the teacher's inputs as lists."""
    table = dataset.with_format("arrow")[start:stop]
    return table, {c: table.column(c).to_pylist() for c in _MODEL_INPUTS if c in table.column_names}


def _inputs_digest(inputs: Mapping[str, list]) -> str:
    return hashlib.sha256(json.dumps(dict(inputs), sort_keys=True).encode()).hexdigest()


def _combine_digests(digests: Sequence[str]) -> str:
    return hashlib.sha256("".join(digests).encode()).hexdigest()


def _dataset_digest(dataset: datasets.Dataset, shard_size: int) -> str:
    """The digest a cache of ``dataset`` built with ``shard_size`` records (its shards' input digests)."""
    n = len(dataset)
    starts = range(0, n, shard_size)
    return _combine_digests(
        [_inputs_digest(_shard_inputs(dataset, a, min(a + shard_size, n))[1]) for a in starts]
    )


def _count_tokens(input_ids: Sequence[Sequence[int]], task: str) -> int:
    return sum(len(r) for r in input_ids) if _TASKS[task] else len(input_ids)


def _raise_on_spec_mismatch(
    found: Mapping[str, Any], expected: Mapping[str, Any], keys: Sequence[str], what: str, fix: str
) -> None:
    keys = [key for key in keys if found.get(key) != expected[key]]
    differences = [f"{key}: {found.get(key)!r} there, {expected[key]!r} now" for key in keys]
    if "fingerprint" in keys:
        old, new = found.get("fingerprint_parts", {}), expected["fingerprint_parts"]
        names = [name for name in new if old.get(name) != new[name]]
        differences.append(f"the fingerprint differs in: {', '.join(names) or 'unknown'}")
    if differences:
        raise ValueError(f"{what} was made with other settings: {'; '.join(differences)}. {fix}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{str(path)!r} cannot be read as JSON ({err}): the teacher cache is damaged. Delete its folder and run "
            "precompute_teacher_cache again."
        ) from err


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + _TMP_MARK + "json")
    tmp.write_text(json.dumps(dict(data), indent=2, sort_keys=True))
    os.replace(tmp, path)


def _check_task(task: str) -> str:
    from hf_lite.tasks import normalize_task

    task = normalize_task(task)
    if task not in _TASKS:
        raise ValueError(
            f"task={task!r} is not supported by the teacher cache; use one of {', '.join(_TASKS)}. (seq2seq-lm "
            "teachers score decoder inputs built from the labels: distil them online.)"
        )
    return task


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int; got {type(k).__name__} {k!r}.")
    if k < 1:
        raise ValueError(f"k={k} must be >= 1 (entries kept per position); typical caches keep 16..100.")


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int; got {type(value).__name__} {value!r}.")
    if value < 1:
        raise ValueError(f"{name}={value} must be >= 1.")
