"""One resumable sharded run, shared by the teacher cache and the teacher's generations, on one or more processes.

Both :func:`~hf_lite.teacher_cache.precompute_teacher_cache` and
:func:`~hf_lite.teacher_cache.generate_teacher_completions` cut their input into shards of ``shard_size`` rows,
write each finished shard into ``{output_dir}.partial/`` (complete or absent), and join the shards into
``output_dir`` at the end. Under ``accelerate launch`` / ``torchrun`` every process calls the function with the
same arguments: the main process checks and prepares the work folder, process ``r`` of ``n`` computes shards
``r, r + n, r + 2n, ...`` (a shard is the unit of both work and resumption, so the batches, and therefore the
bits, are those of a one-process run), and the main process joins them once all are written. A failure on any
process is raised on every process (with the failing rank named) instead of leaving the others waiting in a
collective.

Each process needs the whole teacher (as :func:`hf_lite.load_teacher` loads it, before a trainer shards it):
a teacher sharded by FSDP2 or ZeRO-3 would need every process to run the same forwards, and is refused.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from hf_lite._utils import world
from hf_lite.teacher_cache.store import (
    METADATA_FILE,
    partial_dir,
    prepare_partial,
    raise_on_spec_mismatch,
    read_json,
    remove_stale_temporaries,
)

__all__ = ["ShardedRun", "check_whole_teacher", "process_group", "shards_of"]


def process_group() -> tuple[int, int]:
    """``(rank, world_size)``; under a launcher (``WORLD_SIZE > 1``) the process group is set up first, by
    accelerate's ``PartialState`` as the Trainer would, so that a cache built before the trainer is split too.

    >>> process_group()
    (0, 1)
    """
    if world()[1] == 1 and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available())
    return world()


def shards_of(num_shards: int, rank: int, world_size: int) -> list[int]:
    """The shards process ``rank`` of ``world_size`` computes: every ``world_size``-th one from ``rank``.

    >>> shards_of(5, 0, 2), shards_of(5, 1, 2), shards_of(5, 0, 1)
    ([0, 2, 4], [1, 3], [0, 1, 2, 3, 4])
    """
    return list(range(rank, num_shards, world_size))


def check_whole_teacher(teacher: torch.nn.Module, world_size: int) -> None:
    """Refuse a teacher whose parameters are sharded across processes (FSDP2 DTensors, ZeRO-3 partitions)."""
    if world_size == 1:
        return
    from torch.distributed.tensor import DTensor

    for name, param in teacher.named_parameters():
        if isinstance(param, DTensor) or hasattr(param, "ds_id"):
            engine = "FSDP2" if isinstance(param, DTensor) else "DeepSpeed ZeRO-3"
            raise ValueError(
                f"teacher parameter {name!r} is sharded by {engine}: each process computes its own shards of the "
                "teacher outputs and needs the whole teacher. Load the teacher with hf_lite.load_teacher in each "
                "process (before the trainer prepares it) and pass that, or run this on one process."
            )


class ShardedRun:
    """The work folder of one run of ``num_shards`` shards towards ``output_dir``, on every process of the group.

    Use: :meth:`existing` first (the complete result, if one is there), then :meth:`start`, :meth:`mine` (the
    shards this process computes, through :meth:`done` and :meth:`compute`), and :meth:`finish`.
    """

    def __init__(self, output_dir: str | os.PathLike, spec: dict[str, Any], num_shards: int) -> None:
        self.output_dir = Path(output_dir)
        self.partial = partial_dir(self.output_dir)
        self.spec = spec
        self.num_shards = num_shards
        self.rank, self.world_size = process_group()

    def existing(self, result_keys: Sequence[str], kind: str, label: str, fix: str) -> dict[str, Any] | None:
        """The metadata of a complete result in ``output_dir`` made with the same settings, else ``None``;
        an ``output_dir`` that holds something else (not ``kind``), or a result of other settings (``label``
        and ``fix`` in the message), is an error."""
        out = self.output_dir
        if not (out.exists() and any(out.iterdir())):
            return None
        if not (out / METADATA_FILE).is_file():
            raise ValueError(
                f"output_dir={str(out)!r} exists and is not {kind}; refusing to write into it. Choose an empty or "
                "new folder."
            )
        found = read_json(out / METADATA_FILE)
        raise_on_spec_mismatch(found, self.spec, result_keys, label, fix)
        return found

    def drop_leftover_partial(self) -> None:
        """Remove a work folder left by an interruption between the final rename and its removal."""

        def run() -> None:
            if self.partial.exists():
                shutil.rmtree(self.partial)

        self._together(run)

    def start(self) -> None:
        """Main process: clear a killed writer's temporaries, make or check the work folder; all wait for it."""

        def run() -> None:
            remove_stale_temporaries(self.output_dir, self.partial)
            prepare_partial(self.partial, self.spec)

        self._together(run)

    def mine(self) -> list[int]:
        """The shards this process computes (all of them on one process)."""
        return shards_of(self.num_shards, self.rank, self.world_size)

    def my_rows(self, num_rows: int, shard_size: int) -> int:
        """How many of the ``num_rows`` rows (in shards of ``shard_size``) this process computes."""
        return sum(min((s + 1) * shard_size, num_rows) - s * shard_size for s in self.mine())

    def shard_dir(self, shard: int) -> Path:
        return self.partial / f"shard-{shard:05d}"

    def compute(self, work: Callable[[int], None]) -> None:
        """``work(shard)`` for each of this process's shards, then wait for every process; a failure anywhere is
        raised everywhere."""

        def run() -> None:
            for shard in self.mine():
                work(shard)

        self._all(run)

    def finish(self, join: Callable[[], None]) -> None:
        """Main process: ``join()`` the shards into ``output_dir`` and remove the work folder; all wait for it."""

        def run() -> None:
            join()
            shutil.rmtree(self.partial)

        self._together(run)

    def _together(self, main_work: Callable[[], Any]) -> None:
        """``main_work`` on the main process only, then every process learns whether it failed."""
        self._all(lambda: main_work() if self.rank == 0 else None)

    def _all(self, work: Callable[[], Any]) -> None:
        """Run ``work`` here; with several processes, wait for all and raise on each if any failed."""
        if self.world_size == 1:
            work()
            return
        error: BaseException | None = None
        try:
            work()
        except Exception as err:  # re-raised below, after the others know
            error = err
        reports: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(
            reports, None if error is None else f"{type(error).__name__}: {error}"
        )
        if error is not None:
            raise error
        failed = [(rank, report) for rank, report in enumerate(reports) if report is not None]
        if failed:
            rank, report = failed[0]
            raise RuntimeError(f"process {rank} of {self.world_size} failed, so this one stops too: {report}")
