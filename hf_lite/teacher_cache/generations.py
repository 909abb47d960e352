"""Sequence-level distillation data: the teacher writes a completion for every prompt, once, resumably.

:func:`generate_teacher_completions` turns prompts (plain strings, or conversations rendered with the
tokenizer's chat template) into a ``datasets`` dataset in TRL's prompt-completion format, built shard by shard
with the teacher cache's machinery (:mod:`~hf_lite.teacher_cache.store`): a ``{output_dir}.partial/`` work
folder, shards that are complete or absent, an atomic final folder, and a fingerprint of everything that
decides the result (teacher, tokenizer, chat template, prompts, generation settings), so an interrupted run
resumes to the same dataset and a folder made with other settings is refused. With ``topk=k`` the teacher's
top-k log-probabilities on ``prompt + completion`` are stored too, in the teacher cache's columns and
alignment, so token-level distillation on the teacher's own outputs needs no teacher in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import GenerationConfig

from hf_lite._utils import atomic_dir
from hf_lite.loading import load_teacher
from hf_lite.losses import IGNORE_INDEX
from hf_lite.losses._checks import check_temperature
from hf_lite.progress import progress_bar
from hf_lite.teacher_cache.collate import check_positive_int, padding_id
from hf_lite.teacher_cache.fingerprint import (
    FORMAT_VERSION,
    check_k,
    combine,
    teacher_digest,
    tokenizer_digest,
)
from hf_lite.teacher_cache.precompute import (
    score_with_teacher,
    teacher_name_of,
    teacher_vocab_size,
)
from hf_lite.teacher_cache.sampling import (
    check_sampling,
    eos_token_ids,
    generate_batch,
    prompts_dataset,
    render_prompts,
)
from hf_lite.teacher_cache.shards import ShardedRun, check_whole_teacher
from hf_lite.teacher_cache.store import (
    INDICES_COLUMN,
    LOGPROB_DTYPES,
    LOGPROBS_COLUMN,
    SHARD_FILE,
    TAIL_COLUMN,
    TEACHER_COLUMNS,
    assemble,
    cache_features,
    load_teacher_cache,
    read_json,
    write_json,
    write_shard,
)

logger = logging.getLogger(__name__)

__all__ = ["GENERATED_COLUMNS", "GENERATIONS_KIND", "generate_teacher_completions"]

#: The columns :func:`generate_teacher_completions` adds to the prompts.
GENERATED_COLUMNS = ("completion", "prompt_ids", "completion_ids", "input_ids", "labels")
#: The ``kind`` recorded in the metadata (and the fingerprint) of a generations dataset.
GENERATIONS_KIND = "teacher-generations"
#: Metadata entries that must match for an existing complete output to be the result asked for.
_RESULT_KEYS = ("format_version", "kind", "fingerprint", "k", "temperature", "dtype", "num_examples")


def generate_teacher_completions(
    teacher: torch.nn.Module | str | os.PathLike,
    tokenizer: Any,
    prompts: Sequence[Any] | datasets.Dataset,
    output_dir: str | os.PathLike,
    *,
    max_new_tokens: int = 128,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    shard_size: int = 1024,
    prompt_column: str = "prompt",
    max_prompt_length: int | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    topk: int | None = None,
    kd_temperature: float = 1.0,
    dtype: str = "float16",
    teacher_name: str | None = None,
) -> datasets.Dataset:
    """Let the teacher complete every prompt once and save the completions as a ``datasets`` dataset.

    **Prompts** are plain strings (tokenized with the tokenizer's special tokens, as ``tokenizer(prompt)``) or
    conversations, lists of ``{"role", "content"}`` messages, rendered with the tokenizer's own chat template
    and ``add_generation_prompt=True`` (then tokenized without adding special tokens again), exactly as
    :func:`hf_lite.data.chat.encode_prompt` renders them for training. Give a list, or a ``datasets.Dataset``
    whose ``prompt_column`` holds them (its other columns are kept).

    **Generation**: ``teacher.generate`` in evaluation mode under ``no_grad``, ``batch_size`` prompts at a time,
    padded on the left, with the KV cache, at most ``max_new_tokens`` new tokens, stopping at EOS
    (``eos_token_id``; by default the teacher's ``generation_config`` EOS ids and the tokenizer's). Greedy by
    default; ``do_sample=True`` samples from ``softmax(logits / temperature)`` cut to the ``top_p`` nucleus,
    each example with its own ``torch.Generator`` seeded from ``seed`` and its row number, so a resumed run, or
    one with another ``batch_size``, draws the same samples. Other entries of the teacher's ``generation_config``
    (``repetition_penalty``, ...) apply as in ``teacher.generate``; they are part of the fingerprint.

    **Columns added**: ``completion`` (the decoded text without special tokens; for a conversation, TRL's
    ``[{"role": "assistant", "content": text}]``), ``prompt_ids``, ``completion_ids`` (the EOS that ended it
    included, nothing after it), ``input_ids = prompt_ids + completion_ids`` and ``labels`` (``-100`` on the
    prompt, the completion ids after it), ready for :class:`~trainers.DistillationTrainer`: the loss counts
    the completion only. With ``topk=k`` the teacher then scores each ``input_ids`` once more and the rows
    carry :data:`~hf_lite.teacher_cache.TEACHER_COLUMNS` at ``kd_temperature``, exactly as
    :func:`~hf_lite.teacher_cache.precompute_teacher_cache` stores them (one row per position, unshifted):
    the result is a teacher cache that :func:`~hf_lite.teacher_cache.load_teacher_cache` loads and the
    trainer trains from with ``teacher_model=None``.

    **Resuming and reuse**: as :func:`~hf_lite.teacher_cache.precompute_teacher_cache` (shards of ``shard_size``
    prompts in ``{output_dir}.partial/``; ``output_dir`` complete or absent). Called again on a complete
    ``output_dir`` it loads the dataset if the fingerprint matches and otherwise raises, naming what differs.

    Args:
        teacher: a causal LM (or its Hub id or folder).
        tokenizer: the teacher's tokenizer (with a chat template for conversations).
        prompts: a list of prompts, or a dataset with a ``prompt_column``.
        output_dir: where the dataset is saved (``save_to_disk`` plus :data:`~hf_lite.teacher_cache.METADATA_FILE`).
        max_new_tokens: the most tokens generated per prompt (>= 1).
        do_sample: sample instead of greedy decoding.
        temperature: sampling temperature (> 0; with ``do_sample`` only).
        top_p: nucleus size in ``(0, 1]`` (with ``do_sample`` only).
        seed: seed of the per-example generators (with ``do_sample`` only).
        batch_size: prompts per ``generate`` call.
        shard_size: prompts per resumable shard.
        prompt_column: the prompts' column when ``prompts`` is a dataset (and the column name in the output).
        max_prompt_length: longer prompts keep their last ``max_prompt_length`` tokens (the start of a conversation
            goes first, as in :func:`hf_lite.data.chat.encode_prompt`); ``None`` keeps them whole.
        eos_token_id: the id(s) that end a completion, instead of the teacher's and tokenizer's.
        topk: also store the teacher's ``topk`` most likely tokens per position (``None``: no logits stored).
        kd_temperature: the distillation temperature of the stored log-probabilities (the training run's).
        dtype: storage of the log-probabilities, ``"float16"`` or ``"float32"``.
        teacher_name: recorded in the metadata; defaults to the teacher's ``name_or_path``.

    Returns:
        The dataset, memory-mapped from ``output_dir``.

    Example:

    >>> import tempfile
    >>> from hf_lite.testing import build_tiny_model
    >>> teacher, tok = build_tiny_model("llama", seed=0)
    >>> ds = generate_teacher_completions(teacher, tok, ["the cat sees", "a big bird"], tempfile.mkdtemp() + "/gen",
    ...                                   max_new_tokens=4)
    >>> ds.column_names[:3], [len(ids) for ids in ds["completion_ids"]]
    (['prompt', 'completion', 'prompt_ids'], [4, 4])
    """
    check_positive_int("max_new_tokens", max_new_tokens)
    check_positive_int("batch_size", batch_size)
    check_positive_int("shard_size", shard_size)
    if max_prompt_length is not None:
        check_positive_int("max_prompt_length", max_prompt_length)
    if not isinstance(do_sample, bool):
        raise TypeError(f"do_sample must be True or False; got {type(do_sample).__name__} {do_sample!r}.")
    if do_sample:
        check_sampling(temperature, top_p, seed)
    if topk is not None:
        check_k(topk)
        check_temperature(kd_temperature)
        if dtype not in LOGPROB_DTYPES:
            raise ValueError(
                f"dtype={dtype!r} is not a storage type for the log-probabilities; use 'float16' or 'float32'."
            )
    if isinstance(teacher, (str, os.PathLike)):
        teacher_name = teacher_name or str(teacher)
        teacher = load_teacher(teacher, "causal-lm")
    if not isinstance(teacher, torch.nn.Module) or not callable(getattr(teacher, "generate", None)):
        raise TypeError(
            f"teacher must be a causal LM with a generate method (e.g. AutoModelForCausalLM), its Hub id or folder; "
            f"got {type(teacher).__name__}."
        )
    if getattr(getattr(teacher, "config", None), "is_encoder_decoder", False):
        raise ValueError(
            f"teacher {type(teacher).__name__} is an encoder-decoder model; sequence-level distillation here takes a "
            "decoder-only causal LM teacher (AutoModelForCausalLM)."
        )
    source, conversational = prompts_dataset(prompts, prompt_column)
    clash = [c for c in (*GENERATED_COLUMNS, *TEACHER_COLUMNS) if c in source.column_names]
    if clash:
        raise ValueError(
            f"prompts already has the column(s) {clash} that the generations add; remove them first, e.g. "
            f"prompts.remove_columns({clash})."
        )
    values = list(source[prompt_column])
    prompt_ids = render_prompts(tokenizer, values, max_prompt_length)
    eos_ids = eos_token_ids(teacher, tokenizer, eos_token_id)
    pad_id = padding_id(tokenizer)
    vocab_size = teacher_vocab_size(teacher, tokenizer, "causal-lm")
    if topk is not None and vocab_size is not None and topk > vocab_size:
        raise ValueError(
            f"topk={topk} is larger than the teacher's {vocab_size} outputs; use topk <= {vocab_size}."
        )
    index_dtype = "uint16" if vocab_size is not None and vocab_size <= 2**16 else "int32"
    model_defaults = {
        key: value
        for key, value in getattr(teacher, "generation_config", GenerationConfig()).to_diff_dict().items()
        if key not in ("transformers_version", "eos_token_id", "pad_token_id", "bos_token_id")
    }
    parts = {
        "format_version": FORMAT_VERSION,
        "kind": GENERATIONS_KIND,
        "teacher": teacher_digest(teacher),
        "tokenizer": tokenizer_digest(tokenizer),
        "chat_template": _digest(getattr(tokenizer, "chat_template", None)) if conversational else None,
        "prompts": _digest(source.to_list()),
        "prompt_ids": _digest(prompt_ids),
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        # greedy decoding ignores these: leave them out so that they cannot make two equal results differ
        "sampling_temperature": float(temperature) if do_sample else None,
        "top_p": float(top_p) if do_sample else None,
        "seed": seed if do_sample else None,
        "eos_token_ids": eos_ids,
        "teacher_generation_config": json.loads(json.dumps(model_defaults, sort_keys=True, default=str)),
        "k": topk,
        "temperature": float(kd_temperature) if topk is not None else None,
    }
    spec = {
        "format_version": FORMAT_VERSION,
        "kind": GENERATIONS_KIND,
        "fingerprint": combine(parts),
        "fingerprint_parts": parts,
        "task": "causal-lm",
        "k": topk,
        "temperature": parts["temperature"],
        "dtype": dtype if topk is not None else None,
        "index_dtype": index_dtype if topk is not None else None,
        "vocab_size": vocab_size,
        "batch_size": batch_size,
        "shard_size": shard_size,
        "num_examples": len(source),
    }
    output_dir = Path(output_dir)
    n = len(source)
    run = ShardedRun(output_dir, spec, math.ceil(n / shard_size))
    check_whole_teacher(teacher, run.world_size)
    fix = (
        f"Pass the teacher, tokenizer, prompts and settings it was made with, choose another output_dir, or "
        f"delete {str(output_dir)!r} to generate again."
    )
    if run.existing(_RESULT_KEYS, "a teacher-generations dataset", f"{str(output_dir)!r}", fix) is not None:
        run.drop_leftover_partial()
        logger.info("teacher generations %s are already complete; loading them", output_dir)
        return _load(output_dir, topk)

    run.start()
    partial, num_shards = run.partial, run.num_shards
    features = _output_features(source.features, conversational, topk, dtype, index_dtype)
    generation_config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,  # sampling, when asked, is done by SeededSampler (reproducible per example)
        num_beams=1,
        use_cache=True,
        eos_token_id=eos_ids or None,
        pad_token_id=pad_id,
        # the global defaults, so that sampling settings of the teacher's generation_config stay unused
        temperature=1.0,
        top_k=50,
        top_p=1.0,
    )

    def work(shard: int) -> None:
        start, stop = shard * shard_size, min((shard + 1) * shard_size, n)
        shard_dir = run.shard_dir(shard)
        if shard_dir.is_dir():
            done = read_json(shard_dir / SHARD_FILE)
            if done.get("start") != start or done.get("stop") != stop:
                raise ValueError(
                    f"shard {shard} in {str(partial)!r} holds rows {done.get('start')}..{done.get('stop')}, not "
                    f"{start}..{stop}: it is damaged. Delete {str(partial)!r} to start over."
                )
            bar.update(stop - start)
            return
        completions = []
        for b in range(start, stop, batch_size):
            rows = prompt_ids[b : min(b + batch_size, stop)]
            completions += generate_batch(
                teacher, rows, b, generation_config, eos_ids, pad_id, do_sample, temperature, top_p, seed
            )
            bar.update(len(rows))
        columns = _generated_columns(tokenizer, prompt_ids[start:stop], completions, conversational)
        info = {"start": start, "stop": stop, "num_tokens": sum(len(ids) for ids in columns["input_ids"])}
        generated = datasets.Dataset.from_dict(columns, features=_generated_features(conversational))
        rows = datasets.concatenate_datasets([source.select(range(start, stop)), generated], axis=1)
        teacher_columns = None
        if topk is not None:
            teacher_columns = score_with_teacher(
                teacher, {"input_ids": columns["input_ids"]}, start, "causal-lm", topk,
                kd_temperature, batch_size, vocab_size, pad_id,
            )  # fmt: skip
        _save_shard(rows, teacher_columns, features, dtype, index_dtype, shard_dir, info)
        logger.info("teacher generations: shard %d/%d written", shard + 1, num_shards)

    was_training = teacher.training
    teacher.eval()
    bar = progress_bar(total=run.my_rows(n, shard_size), desc="teacher generations", unit="example")
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
            "conversational": conversational,
            "prompt_column": prompt_column,
            "columns": {"logprobs": LOGPROBS_COLUMN, "indices": INDICES_COLUMN, "tail_mass": TAIL_COLUMN}
            if topk is not None
            else {},
            "alignment": "input_ids = prompt_ids + completion_ids; labels are -100 on the prompt; teacher rows "
            "(with topk) unshifted: row i is the teacher's distribution at position i",
        }
        assemble(partial, num_shards, features, output_dir, metadata)

    run.finish(join)
    return _load(output_dir, topk)


def _generated_columns(
    tokenizer: Any,
    prompt_ids: Sequence[list[int]],
    completions: Sequence[list[int]],
    conversational: bool,
) -> dict[str, list]:
    texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    return {
        "completion": [[{"role": "assistant", "content": t}] for t in texts] if conversational else texts,
        "prompt_ids": list(prompt_ids),
        "completion_ids": list(completions),
        "input_ids": [p + c for p, c in zip(prompt_ids, completions, strict=True)],
        "labels": [[IGNORE_INDEX] * len(p) + c for p, c in zip(prompt_ids, completions, strict=True)],
    }


def _generated_features(conversational: bool) -> datasets.Features:
    ids = datasets.List(datasets.Value("int32"))
    text = datasets.Value("string")
    completion = datasets.List({"role": text, "content": text}) if conversational else text
    return datasets.Features(
        {"completion": completion, "prompt_ids": ids, "completion_ids": ids, "input_ids": ids, "labels": ids}
    )


def _output_features(
    own: datasets.Features, conversational: bool, topk: int | None, dtype: str, index_dtype: str
) -> datasets.Features:
    features = datasets.Features({**own, **_generated_features(conversational)})
    return features if topk is None else cache_features(features, "causal-lm", topk, dtype, index_dtype)


def _save_shard(
    rows: datasets.Dataset,
    teacher_columns: dict[str, list] | None,
    features: datasets.Features,
    dtype: str,
    index_dtype: str,
    shard_dir: Path,
    info: dict[str, Any],
) -> None:
    """Write one finished shard (complete or absent), with the teacher's top-k columns when there are some."""
    if teacher_columns is not None:
        write_shard(
            rows.with_format("arrow")[:], teacher_columns, features, dtype, index_dtype, shard_dir, info
        )
        return
    with atomic_dir(shard_dir) as tmp:
        rows.save_to_disk(str(tmp / "data"))
        write_json(tmp / SHARD_FILE, info)


def _load(output_dir: Path, topk: int | None) -> datasets.Dataset:
    if topk is not None:
        return load_teacher_cache(output_dir)
    return datasets.load_from_disk(str(output_dir))


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
