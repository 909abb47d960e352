"""Run the teacher once over a tokenized dataset and write its top-k log-probabilities as a resumable cache.

:func:`precompute_teacher_cache` works shard by shard (each shard a complete folder or absent, see
:mod:`~hf_lite.teacher_cache.store`), so an interrupted run resumes from its last complete shard and gives the
same result, byte for byte, as a run that was not interrupted. A progress bar
(:func:`hf_lite.progress.progress_bar`, main process only) counts the examples scored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import torch

from hf_lite.loading import load_teacher
from hf_lite.losses import teacher_topk
from hf_lite.losses._checks import check_temperature
from hf_lite.progress import progress_bar
from hf_lite.tasks import normalize_task
from hf_lite.teacher_cache.collate import check_positive_int, padding_id, stack_padded
from hf_lite.teacher_cache.fingerprint import FORMAT_VERSION, check_k, combine, fingerprint_parts
from hf_lite.teacher_cache.shards import ShardedRun, check_whole_teacher
from hf_lite.teacher_cache.store import (
    CACHE_TASKS,
    INDICES_COLUMN,
    LOGPROB_DTYPES,
    LOGPROBS_COLUMN,
    RESULT_KEYS,
    SHARD_FILE,
    TAIL_COLUMN,
    TEACHER_COLUMNS,
    assemble,
    cache_features,
    load_teacher_cache,
    read_json,
    write_shard,
)

logger = logging.getLogger(__name__)

__all__ = [
    "input_device",
    "precompute_teacher_cache",
    "score_with_teacher",
    "teacher_name_of",
    "teacher_vocab_size",
]

#: Positions per top-k chunk: bounds the fp32 temporaries to ``_CHUNK_ROWS x vocab`` (512 MB at 128k tokens).
_CHUNK_ROWS = 1024
#: Inputs that go to the teacher; they are also what a shard's input digest covers.
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


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
    :data:`TAIL_COLUMN` for each of its positions (unshifted; see :mod:`hf_lite.teacher_cache`), its own columns
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
    can differ in the last bits.

    **Several processes.** Under ``accelerate launch`` or ``torchrun`` call it on every process with the same
    arguments and a whole teacher in each: the shards are shared out (process ``r`` of ``n`` computes shards
    ``r, r + n, ...``), the main process joins them, and every process returns the same cache, equal to a
    one-process run's (see :mod:`hf_lite.teacher_cache.shards`). A teacher sharded by FSDP2 or ZeRO-3 is refused.

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

    >>> import tempfile
    >>> from hf_lite.testing import build_tiny_model
    >>> teacher, tok = build_tiny_model("llama", seed=0)
    >>> ids = tok(["the cat sees the dog", "a big bird"])["input_ids"]
    >>> tokenized = datasets.Dataset.from_dict({"input_ids": ids})
    >>> cache = precompute_teacher_cache(teacher, tokenized, tempfile.mkdtemp() + "/t-k16", tokenizer=tok, k=16,
    ...                                  temperature=2.0, batch_size=16)
    >>> cache.column_names[-3:], len(cache[0]["teacher_topk_logprobs"]) == len(cache[0]["input_ids"])
    (['teacher_topk_logprobs', 'teacher_topk_indices', 'teacher_tail_mass'], True)
    """
    task = _check_task(task)
    check_k(k)
    check_temperature(temperature)
    check_positive_int("batch_size", batch_size)
    check_positive_int("shard_size", shard_size)
    if dtype not in LOGPROB_DTYPES:
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
        teacher_name = teacher_name or str(teacher)
        teacher = load_teacher(teacher, task)
    if not isinstance(teacher, torch.nn.Module):
        raise TypeError(f"teacher must be a model, a Hub id or a folder; got {type(teacher).__name__}.")
    vocab_size = teacher_vocab_size(teacher, tokenizer, task)
    if vocab_size is not None and k > vocab_size:
        raise ValueError(
            f"k={k} is larger than the teacher's {vocab_size} outputs. Use k <= {vocab_size} (k = all outputs keeps "
            "the whole distribution)."
        )
    index_dtype = "uint16" if vocab_size is not None and vocab_size <= 2**16 else "int32"
    parts = fingerprint_parts(teacher, tokenizer, k, temperature)
    spec = {
        "format_version": FORMAT_VERSION,
        "fingerprint": combine(parts),
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
    n = len(dataset)
    run = ShardedRun(output_dir, spec, math.ceil(n / shard_size))
    check_whole_teacher(teacher, run.world_size)
    fix = f"Choose another output_dir, or delete {str(output_dir)!r} to recompute it."
    found = run.existing(RESULT_KEYS, "a teacher cache", f"the cache in {str(output_dir)!r}", fix)
    if found is not None:
        if found.get("inputs_digest") != _dataset_digest(dataset, int(found.get("shard_size", shard_size))):
            raise ValueError(
                f"the cache in {str(output_dir)!r} was computed from other input_ids than this dataset's. {fix}"
            )
        run.drop_leftover_partial()
        logger.info("teacher cache %s is already complete; loading it", output_dir)
        return load_teacher_cache(output_dir)

    run.start()
    partial, num_shards = run.partial, run.num_shards
    pad_id = padding_id(tokenizer)
    features = cache_features(dataset.features, task, k, dtype, index_dtype)

    def work(shard: int) -> None:
        start, stop = shard * shard_size, min((shard + 1) * shard_size, n)
        shard_dir = run.shard_dir(shard)
        table, inputs = _shard_inputs(dataset, start, stop)
        digest = _inputs_digest(inputs)
        if shard_dir.is_dir():
            done = read_json(shard_dir / SHARD_FILE)
            if done.get("inputs_digest") != digest or done.get("start") != start or done.get("stop") != stop:
                raise ValueError(
                    f"shard {shard} in {str(partial)!r} was computed from other input_ids than rows "
                    f"{start}..{stop - 1} of this dataset: the dataset changed since the interrupted run. Pass the "
                    f"same dataset (same order), or delete {str(partial)!r} to start over."
                )
            logger.info("teacher cache: shard %d/%d already done", shard + 1, num_shards)
            bar.update(stop - start)
            return
        columns = score_with_teacher(
            teacher, inputs, start, task, k, temperature, batch_size, vocab_size, pad_id, bar
        )
        num_tokens = _count_tokens(inputs["input_ids"], task)
        info = {"start": start, "stop": stop, "inputs_digest": digest, "num_tokens": num_tokens}
        write_shard(table, columns, features, dtype, index_dtype, shard_dir, info)
        logger.info("teacher cache: shard %d/%d written (%d examples)", shard + 1, num_shards, stop - start)

    was_training = teacher.training
    teacher.eval()
    bar = progress_bar(
        total=run.my_rows(n, shard_size), desc="teacher cache", unit="example"
    )  # this process's examples, done ones too
    try:
        run.compute(work)
    finally:
        bar.close()
        teacher.train(was_training)

    def join() -> None:
        shard_infos = [read_json(run.shard_dir(s) / SHARD_FILE) for s in range(num_shards)]
        metadata = {
            **spec,
            "teacher_name": teacher_name or teacher_name_of(teacher),
            "num_tokens": sum(info["num_tokens"] for info in shard_infos),
            "inputs_digest": _combine_digests([info["inputs_digest"] for info in shard_infos]),
            "columns": {"logprobs": LOGPROBS_COLUMN, "indices": INDICES_COLUMN, "tail_mass": TAIL_COLUMN},
            "alignment": "unshifted: row i is the teacher's distribution at position i (for a causal LM it "
            "predicts token i + 1); shift it like the logits",
        }
        assemble(partial, num_shards, features, output_dir, metadata)

    run.finish(join)
    return load_teacher_cache(output_dir)


def _check_task(task: str) -> str:
    """The canonical name of ``task``, which must be one of :data:`~hf_lite.teacher_cache.store.CACHE_TASKS`."""
    task = normalize_task(task)
    if task not in CACHE_TASKS:
        raise ValueError(
            f"task={task!r} is not supported by the teacher cache; use one of {', '.join(CACHE_TASKS)}. (seq2seq-lm "
            "teachers score decoder inputs built from the labels: distil them online.)"
        )
    return task


def score_with_teacher(
    teacher: torch.nn.Module,
    inputs: dict[str, list],
    offset: int,
    task: str,
    k: int,
    temperature: float,
    batch_size: int,
    vocab_size: int | None,
    pad_id: int,
    bar: Any = None,
) -> dict[str, list]:
    """Top-k log-probabilities, ids and tail mass of each example of ``inputs``, batch by batch (``bar``, a
    progress bar, moves by each batch's examples)."""
    per_position = CACHE_TASKS[task]
    device = input_device(teacher)
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
        mask_rows = masks[b : b + batch_size] if masks else [[1] * n for n in lengths]
        batch["attention_mask"] = _pad(mask_rows, max(lengths), 0)
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
        if bar is not None:
            bar.update(len(rows))
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
        logprobs, indices = teacher_topk(chunk, k, temperature=temperature)  # (n, k) each
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


def _pad(rows: Sequence[Sequence[int]], length: int, value: int) -> torch.Tensor:
    return stack_padded([torch.tensor(r, dtype=torch.long) for r in rows], length, value)


def input_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s input embeddings (where its ``input_ids`` go), else of its first parameter."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and hasattr(embeddings, "weight"):
        return embeddings.weight.device
    return next(model.parameters()).device


def teacher_vocab_size(teacher: torch.nn.Module, tokenizer: Any, task: str) -> int | None:
    """Outputs the cache ranges over: the head's size, cut to the tokenizer's length for a language model."""
    config = getattr(teacher, "config", None)
    if task == "causal-lm":
        head = teacher.get_output_embeddings() if hasattr(teacher, "get_output_embeddings") else None
        size = getattr(getattr(head, "weight", None), "shape", [None])[0]
        if size is None and config is not None:
            text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
            size = getattr(text_config, "vocab_size", None)
        return min(size, len(tokenizer)) if size is not None else len(tokenizer)
    return getattr(config, "num_labels", None)


def teacher_name_of(teacher: torch.nn.Module) -> str:
    """The teacher's ``name_or_path`` (recorded in the metadata), else its class name."""
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
    return sum(len(r) for r in input_ids) if CACHE_TASKS[task] else len(input_ids)
