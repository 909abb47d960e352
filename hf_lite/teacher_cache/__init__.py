"""A teacher-outputs cache: run the teacher once over a dataset, then distil from disk without it.

The package in four modules: :mod:`~hf_lite.teacher_cache.fingerprint` (what decides the values),
:mod:`~hf_lite.teacher_cache.precompute` (running the teacher, resumably), :mod:`~hf_lite.teacher_cache.store`
(the layout on disk, atomic writes, loading back) and :mod:`~hf_lite.teacher_cache.collate` (batches).

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

**Sequence-level distillation** (:mod:`~hf_lite.teacher_cache.generations`, with
:mod:`~hf_lite.teacher_cache.sampling`): :func:`generate_teacher_completions` lets the teacher complete each
prompt once (greedy or sampled, stopping at EOS) and saves TRL-style ``prompt``/``completion`` columns with
``input_ids`` and ``labels`` (the prompt masked), fingerprinted and resumable like the cache above; with
``topk=k`` it is a teacher cache of the teacher's own completions.

>>> import tempfile
>>> from hf_lite.teacher_cache import generate_teacher_completions
>>> from hf_lite.testing import build_tiny_model
>>> teacher, tok = build_tiny_model("llama", seed=0)
>>> tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
>>> chats = [[{"role": "user", "content": "the cat sees"}], [{"role": "user", "content": "a big bird"}]]
>>> ds = generate_teacher_completions(teacher, tok, chats, tempfile.mkdtemp() + "/gen", max_new_tokens=3,
...                                   do_sample=True, seed=0, topk=4)
>>> ds[0]["completion"][0]["role"], len(ds[0]["teacher_topk_logprobs"]) == len(ds[0]["input_ids"])
('assistant', True)
"""

from __future__ import annotations

import importlib
from typing import Any

from hf_lite.teacher_cache.collate import TeacherCacheCollator, TeacherCacheRows
from hf_lite.teacher_cache.fingerprint import FORMAT_VERSION, teacher_fingerprint
from hf_lite.teacher_cache.precompute import precompute_teacher_cache
from hf_lite.teacher_cache.store import (
    INDICES_COLUMN,
    LOGPROBS_COLUMN,
    METADATA_FILE,
    TAIL_COLUMN,
    TEACHER_COLUMNS,
    cache_bytes_per_token,
    load_teacher_cache,
    teacher_cache_metadata,
)

__all__ = [
    "FORMAT_VERSION",
    "GENERATED_COLUMNS",
    "INDICES_COLUMN",
    "LOGPROBS_COLUMN",
    "METADATA_FILE",
    "TAIL_COLUMN",
    "TEACHER_COLUMNS",
    "TeacherCacheCollator",
    "TeacherCacheRows",
    "cache_bytes_per_token",
    "generate_teacher_completions",
    "load_teacher_cache",
    "precompute_teacher_cache",
    "teacher_cache_metadata",
    "teacher_fingerprint",
]

# public name -> the module of this package that defines it, imported on first use
_LAZY: dict[str, str] = {
    "GENERATED_COLUMNS": "generations",
    "generate_teacher_completions": "generations",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
