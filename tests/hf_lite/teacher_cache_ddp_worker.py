"""Worker of tests/hf_lite/test_teacher_cache_ddp.py: a teacher cache and teacher generations of a tiny Llama.

``python teacher_cache_ddp_worker.py OUT MODE`` alone or under ``accelerate launch``; MODE is ``full`` (both
results into OUT/cache and OUT/gen), ``interrupt`` (one process, stopped after two shards of each) or
``mismatch`` (the cache with another k than an interrupted run's). One thread per process, so that every
process runs the kernels a one-process reference runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import datasets
import torch

from hf_lite.teacher_cache import generate_teacher_completions, precompute_teacher_cache
from hf_lite.teacher_cache import generations as generations_module
from hf_lite.teacher_cache import precompute as precompute_module
from hf_lite.teacher_cache.shards import process_group
from hf_lite.testing import build_tiny_model

TEXTS = [
    "the cat sees the dog",
    "a big bird flies over the red house and the small cat",
    "dog",
    "the house is big",
    "a cat and a dog and a bird",
    "red",
    "the small bird sees a big cat in the house",
    "cat dog bird",
    "the dog flies",
    "a red house",
    "the big red dog sees the small cat and the bird",
]
PROMPTS = ["the cat", "a big", "the dog sees", "red", "a bird and", "the small house", "dog"]


class Interrupted(Exception):
    pass


def stop_after(shards: int):
    """A ``write_shard`` that writes ``shards`` shards and then fails, as a killed run would."""
    real, count = precompute_module.write_shard, [0]

    def write_shard(*args, **kwargs):
        if count[0] == shards:
            raise Interrupted("simulated interruption")
        count[0] += 1
        real(*args, **kwargs)

    return write_shard


def main(out: Path, mode: str) -> None:
    torch.set_num_threads(1)
    teacher, tok = build_tiny_model("llama", seed=0)
    tokenized = datasets.Dataset.from_dict({"input_ids": tok(TEXTS)["input_ids"]})
    k = 4 if mode == "mismatch" else 8
    if mode == "interrupt":
        precompute_module.write_shard = stop_after(2)
        generations_module.write_shard = stop_after(2)
    try:
        precompute_teacher_cache(
            teacher, tokenized, out / "cache", tokenizer=tok, k=k, temperature=2.0, batch_size=2, shard_size=3
        )
    except Interrupted:
        pass
    if mode == "mismatch":
        return
    try:
        generate_teacher_completions(
            teacher, tok, PROMPTS, out / "gen", max_new_tokens=5, do_sample=True, seed=3, batch_size=2,
            shard_size=2, topk=4,
        )  # fmt: skip
    except Interrupted:
        pass
    rank, world_size = process_group()
    (out / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "world_size": world_size}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
