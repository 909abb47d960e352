"""Gradual structural pruning with several processes (DDP): the same slices on every rank, DDP rebuilt.

Under DDP every process holds a full copy of the model and the processes average their gradients, so they
can shrink together as long as (1) they slice **the same** indices, and (2) DDP's gradient buckets, built on
the parameter tensors when the model was wrapped, are built again on the shrunk model's new tensors:

- calibration data is split between the processes like the training batches
  (:func:`calibration_from_dataloader` draws ``per-device batch x processes x num_batches`` rows, the rows one
  process would draw with the same global batch, and gives each rank its share; :func:`shard_batches` splits
  given batches), and the per-process means (activation, block influence) are combined into the mean over all
  real tokens by :func:`average_over_processes` (a token-weighted all-reduce), so two processes score what one
  process scores with the same global batch; Taylor scores need no exchange: they read the gradients DDP has
  already averaged;
- :func:`broadcast_from_main` then hands rank 0's kept indices to every rank, so the slices agree even when
  the scores differ in the last bit;
- :class:`DdpWatch` finds the ``DistributedDataParallel`` wrapper the Trainer trains the model in (a
  callback only gets the unwrapped model): a global forward pre-hook notes the first DDP module whose module
  is the model, then removes itself; :func:`rebuild_ddp_reducer` builds that wrapper's reducer (buckets,
  autograd hooks) again around the current parameters, in place, so the Trainer's reference stays valid.

FSDP and DeepSpeed ZeRO-3 shard each parameter across the processes (:func:`sharded_parameter` finds one);
slicing a shard in place cannot be done safely, so the callback refuses them.

>>> import torch
>>> shard_batches(["b0", "b1", "b2", "b3", "b4"], rank=1, world_size=2)
['b1', 'b3']
>>> average_over_processes({0: torch.tensor([1.0, 3.0])}, weight=5)  # one process: unchanged
{0: tensor([1., 3.])}
>>> count_tokens([{"input_ids": torch.ones(2, 3), "attention_mask": torch.tensor([[1, 1, 0], [1, 0, 0]])}])
3
"""

from __future__ import annotations

import itertools
import logging
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.nn.parallel import DistributedDataParallel

from hf_lite._utils import unwrap_model, world
from hf_lite.pruning.calibration import token_mask

__all__ = [
    "DdpWatch",
    "average_over_processes",
    "broadcast_from_main",
    "calibration_from_dataloader",
    "count_tokens",
    "rebuild_ddp_reducer",
    "shard_batches",
    "sharded_parameter",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")


# ----------------------------------------------------------------------------------------------------------
# calibration data, split like the training batches


def shard_batches(batches: Sequence[T], rank: int, world_size: int) -> list[T]:
    """This rank's share of ``batches`` (every ``world_size``-th from ``rank``); all of them when there are
    fewer batches than processes (then every rank scores the same data, and the average changes nothing)."""
    if world_size <= 1 or len(batches) < world_size:
        return list(batches)
    return list(batches[rank::world_size])


def calibration_from_dataloader(
    dataloader: Any, batch_size: int, num_batches: int, seed: int, rank: int = 0, world_size: int = 1
) -> list[dict[str, torch.Tensor]]:
    """``num_batches`` global batches (``batch_size`` rows per process) of the training set built with the
    dataloader's own collator, this rank's share: a seeded random subset (same rows on resume and, for the
    same global batch, whatever the number of processes; the Trainer's data order and RNG are not touched)."""
    dataset = getattr(dataloader, "dataset", None)
    collate = getattr(dataloader, "collate_fn", None)
    if dataset is None or collate is None:
        raise ValueError(
            "calibration batches are needed (importance='activation' or num_layers) but the callback got no "
            "train dataloader with a dataset: pass calibration_batches=[...] to StructuralPruningCallback."
        )
    rows = batch_size * world_size * num_batches
    if isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__len__"):
        examples = list(itertools.islice(iter(dataset), rows))
    else:
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(dataset), generator=generator)[:rows].tolist()
        examples = [dataset[i] for i in order]
    if not examples:
        raise ValueError("the training set is empty: no calibration batches can be drawn from it.")
    chunks = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
    return [collate(chunk) for chunk in shard_batches(chunks, rank, world_size)]


def count_tokens(batches: Sequence[Mapping[str, torch.Tensor]]) -> int:
    """Real tokens of ``batches``: ones of the ``attention_mask``, or every position of ``input_ids``."""
    total = 0
    for batch in batches:
        mask = token_mask(batch)
        total += int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
    return total


# ----------------------------------------------------------------------------------------------------------
# agreeing across processes


def _device() -> torch.device:
    """Where collectives want their tensors: the current GPU under NCCL, the CPU otherwise (gloo)."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def average_over_processes(values: T, weight: float) -> T:
    """``sum_r weight_r * values_r / sum_r weight_r`` over the processes, for a tensor or a ``{key: tensor}``
    (the same keys and shapes on every rank); with per-process means and ``weight`` = the tokens they were
    taken over, the mean over all tokens. One process: ``values`` unchanged."""
    if world()[1] <= 1:
        return values
    items = values.items() if isinstance(values, Mapping) else [(None, values)]
    keys = [k for k, _ in items]
    tensors = [v for _, v in items]
    device = _device()
    flat = torch.cat([t.detach().double().reshape(-1).to(device) * float(weight) for t in tensors])
    flat = torch.cat([flat, torch.tensor([float(weight)], dtype=torch.float64, device=device)])
    torch.distributed.all_reduce(flat)  # sum over the processes
    flat = flat[:-1] / flat[-1]
    out, start = [], 0
    for t in tensors:
        out.append(flat[start : start + t.numel()].view(t.shape).to(device=t.device, dtype=t.dtype))
        start += t.numel()
    return dict(zip(keys, out, strict=True)) if isinstance(values, Mapping) else out[0]


def broadcast_from_main(indices: T) -> T:
    """Rank 0's ``indices`` on every rank: a ``{key: index tensor}`` or a list of ints, of the same lengths
    on every rank (the stage's targets fix them). One process: ``indices`` unchanged."""
    if world()[1] <= 1:
        return indices
    device = _device()
    if isinstance(indices, Mapping):
        out = {}
        for key, value in indices.items():
            tensor = value.detach().to(device=device, dtype=torch.long).clone()
            torch.distributed.broadcast(tensor, src=0)
            out[key] = tensor.to(value.device)
        return out
    tensor = torch.tensor(list(indices), dtype=torch.long, device=device)
    torch.distributed.broadcast(tensor, src=0)
    return tensor.tolist()


# ----------------------------------------------------------------------------------------------------------
# the DDP wrapper


class DdpWatch:
    """Finds the ``DistributedDataParallel`` wrapper that runs ``root``: from creation until found, a global
    forward pre-hook (``torch.nn.modules.module.register_module_forward_pre_hook``) looks at each module
    called; the first DDP module whose unwrapped module is ``root`` is kept (weakly) and the hook removed.

    >>> import torch
    >>> watch = DdpWatch(torch.nn.Linear(2, 2))
    >>> watch.wrapper is None, watch.rebuild()  # no DDP forward of the model yet: nothing to rebuild
    (True, False)
    >>> watch.close()
    """

    def __init__(self, root: nn.Module) -> None:
        self.root = root
        self._wrapper: weakref.ref | None = None
        self._handle = register_module_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any) -> None:
        if isinstance(module, DistributedDataParallel) and unwrap_model(module) is self.root:
            self._wrapper = weakref.ref(module)
            self.close()

    @property
    def wrapper(self) -> DistributedDataParallel | None:
        """The wrapper found, or ``None`` (no DDP forward of ``root`` yet, or the wrapper is gone)."""
        return None if self._wrapper is None else self._wrapper()

    def rebuild(self) -> bool:
        """After a shrink: :func:`rebuild_ddp_reducer` of the wrapper found; ``False`` (and a warning) when no
        DDP wrapper ran ``root``, so there are no buckets to rebuild (and nothing averages its gradients)."""
        wrapper = self.wrapper
        if wrapper is None:
            logger.warning(
                "[rank %d] structural pruning with %d processes, but no DistributedDataParallel wrapper ran the "
                "model; nothing averages its gradients.",
                *world(),
            )
            return False
        rebuild_ddp_reducer(wrapper)
        return True

    def close(self) -> None:
        """Remove the hook (idempotent)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def rebuild_ddp_reducer(ddp: DistributedDataParallel) -> None:
    """Build ``ddp``'s reducer (gradient buckets, autograd hooks) again around its module's current
    parameters, in place, after parameters were replaced (shrunk, or dropped with their block).

    This is the path torch takes when it unpickles a DDP module (``__getstate__``/``__setstate__``: the
    reducer is rebuilt from the module, the process group is the default one); no collective is involved.
    Registered communication hooks are registered again on the new reducer.
    """
    hooks = list(getattr(ddp, "_comm_hooks", []))
    ddp.__setstate__(ddp.__getstate__())
    # Read by DDP's compiled (python) reducer path; keep it in step with the module.
    ddp._module_parameters = [
        p for n, p in ddp.module.named_parameters() if n not in ddp.parameters_to_ignore
    ]
    ddp._comm_hooks = []
    for hook, state in hooks:
        ddp.register_comm_hook(state, hook)


# ----------------------------------------------------------------------------------------------------------
# sharded engines


def sharded_parameter(root: nn.Module) -> tuple[str, str] | None:
    """``(name, engine)`` of a parameter of ``root`` that is sharded across processes (FSDP2's ``DTensor``,
    DeepSpeed ZeRO-3's partitioned parameters), or ``None``.

    >>> import torch
    >>> sharded_parameter(torch.nn.Linear(2, 2)) is None
    True
    """
    dtensor = None
    if torch.distributed.is_available():
        from torch.distributed.tensor import DTensor

        dtensor = DTensor
    for name, param in root.named_parameters():
        if dtensor is not None and isinstance(param, dtensor):
            return name, "FSDP (a DTensor shard)"
        if hasattr(param, "ds_id"):
            return name, "DeepSpeed ZeRO-3 (a partitioned parameter)"
    return None
