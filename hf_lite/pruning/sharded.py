"""Pruning masks on sharded weights: FSDP2's ``DTensor`` parameters, each process holding one shard.

Under FSDP2 (``torch.distributed.fsdp.fully_shard``, accelerate's ``fsdp_version: 2``) a weight is a
``DTensor``: ``weight.shape`` is the full shape and ``weight.to_local()`` this process's shard (rows of the
weight, ``Shard(0)``). Masks, movement scores and the in-place multiplications stay on the local shard, and
the masks are exactly those the single-process functions of :mod:`hf_lite.pruning.masks` give on the full
tensors (same count, same ties), without any process holding all the scores:

- **one threshold over shards** (:func:`sharded_unstructured_masks`): the exact ``k``-th smallest score of
  all shards is found by a radix select on the scores' float32 bit patterns, four rounds of a 256-bin
  histogram summed over processes (``all_reduce``); ties at the threshold are pruned in the single-process
  order (tensor by tensor, then by flat index), which for row shards on a 1-D mesh is shard after shard in
  rank order, so only the per-shard tie counts are gathered;
- **N:M groups** along the input dimension of ``nn.Linear`` lie inside a row, hence inside a shard;
- any other layout (a 2-D mesh as in HSDP, shards along another dimension, ``Conv1D`` groups across rows)
  gathers the full scores (``full_tensor``), runs the single-process function and keeps the local part.

:func:`gather_full` and :func:`shard_like` move masks between the local shards and the full tensors that a
checkpoint holds (the same files as a single-process run, so a run resumes on any number of processes).

>>> import torch
>>> is_sharded(torch.ones(2)), local_tensor(torch.ones(2)).shape
(False, torch.Size([2]))
>>> keys = sortable_keys(torch.tensor([-float("inf"), -1.0, -0.0, 0.0, 0.5, float("inf")]))
>>> bool((keys[1:] >= keys[:-1]).all()), int(keys[2]) == int(keys[3])  # order kept, -0.0 equals 0.0
(True, True)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from hf_lite.pruning.masks import global_unstructured_masks, nm_mask, pruned_count

__all__ = [
    "check_engine",
    "is_sharded",
    "local_tensor",
    "local_state",
    "gather_full",
    "unsharded",
    "shard_like",
    "sortable_keys",
    "sharded_unstructured_masks",
    "sharded_pruning_masks",
]


def _dtensor_class() -> type | None:
    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


def is_sharded(tensor: Any) -> bool:
    """Whether ``tensor`` is a ``DTensor`` (an FSDP2 / tensor-parallel parameter, gradient or moment)."""
    cls = _dtensor_class()
    return cls is not None and isinstance(tensor, cls)


def check_engine(model: torch.nn.Module, modules: Mapping[str, torch.nn.Module]) -> None:
    """Refuse sharding engines whose weights masks cannot follow: DeepSpeed ZeRO-3 (partitioned flat
    parameters, ``ds_id``), FSDP1 (``FullyShardedDataParallel``'s flat parameters) and a mix of sharded and
    unsharded targeted weights. FSDP2 (every targeted weight a ``DTensor``), DDP and one process pass.

    Args:
        model: the model as the Trainer holds it (wrappers included).
        modules: ``{name: module}`` of the targeted layers.

    >>> check_engine(torch.nn.Linear(2, 2), {"fc": torch.nn.Linear(2, 2)})  # one process: no error
    """
    zero3 = [name for name, m in modules.items() if hasattr(m.weight, "ds_id")]
    if zero3:
        raise ValueError(
            f"the targeted weights are partitioned by DeepSpeed ZeRO-3 (e.g. {zero3[0]} has ds_id="
            f"{modules[zero3[0]].weight.ds_id}): each process holds a flat slice with no layout a mask can "
            "follow, so pruning masks are not supported there. Use FSDP2 (accelerate's fsdp_version: 2, "
            "examples/accelerate/fsdp.yaml) or DeepSpeed ZeRO stage 1/2 (deepspeed_zero2.yaml)."
        )
    if torch.distributed.is_available():
        from torch.distributed.fsdp import FullyShardedDataParallel

        if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            raise ValueError(
                "the model is wrapped by FSDP1 (FullyShardedDataParallel): its flat parameters "
                "change shape between forward and step, so pruning masks cannot follow them. Use FSDP2: "
                "fsdp_version: 2 in the accelerate config (examples/accelerate/fsdp.yaml)."
            )
    sharded = [name for name, m in modules.items() if is_sharded(m.weight)]
    if sharded and len(sharded) != len(modules):
        plain = next(name for name in modules if name not in sharded)
        raise ValueError(
            f"{len(sharded)} of the {len(modules)} targeted weights are sharded (FSDP2 DTensor, e.g. {sharded[0]}) "
            f"but {plain} is not: one threshold cannot mix shards and full copies. Apply fully_shard to the "
            "root model too (accelerate does), or exclude the unsharded layers."
        )


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a ``DTensor`` (a view: writing into it writes the parameter), else ``tensor``."""
    return tensor.to_local() if is_sharded(tensor) else tensor


def local_state(state: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """One parameter's optimizer state with its ``DTensor`` moments replaced by their local shards.

    >>> local_state({"step": 3, "exp_avg": torch.zeros(2)})["exp_avg"].shape
    torch.Size([2])
    """
    if not state:
        return None
    return {
        key: local_tensor(value) if isinstance(value, torch.Tensor) else value for key, value in state.items()
    }


def gather_full(local: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The full tensor whose shards, laid out like the ``DTensor`` ``like``, are the processes' ``local``.

    A collective: every process of ``like``'s mesh calls it; each gets the full tensor (bool is sent as uint8).
    """
    from torch.distributed.tensor import DTensor

    send = local.to(torch.uint8) if local.dtype == torch.bool else local
    full = DTensor.from_local(
        send.to(like.device), like.device_mesh, like.placements, shape=like.shape, stride=like.stride()
    ).full_tensor()
    return full.to(torch.bool) if local.dtype == torch.bool else full


@contextlib.contextmanager
def unsharded(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Inside the block, the FSDP2 modules of ``model`` hold their full weights as plain tensors (``unshard()``;
    ``reshard()`` on exit), for code that reads whole weights (counting zeros: reductions of a ``DTensor``
    read back with ``int()`` give this shard's part only). Every weight is gathered on every process at once:
    a collective, for one-off reports. Without FSDP2 modules, nothing happens.

    >>> with unsharded(torch.nn.Linear(2, 2)) as model:
    ...     model.weight.shape
    torch.Size([2, 2])
    """
    modules = []
    if torch.distributed.is_available():
        from torch.distributed.fsdp import FSDPModule

        modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for module in modules:
        module.unshard()
    try:
        yield model
    finally:
        for module in modules:
            module.reshard()


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This process's part of ``full`` (every process holds it), laid out like the ``DTensor`` ``like``.

    No communication: each process cuts its own shard, as ``fully_shard`` cut the weight.
    """
    from torch.distributed.tensor import distribute_tensor

    if tuple(full.shape) != tuple(like.shape):
        raise ValueError(
            f"a tensor of shape {tuple(full.shape)} cannot be sharded like a weight of shape {tuple(like.shape)}; "
            "pass the full mask or scores of this very weight."
        )
    return distribute_tensor(
        full.to(like.device), like.device_mesh, like.placements, src_data_rank=None
    ).to_local()


def sortable_keys(scores: torch.Tensor) -> torch.Tensor:
    """int64 keys in ``[0, 2**32)`` ordered as the float32 ``scores`` are (``-0.0`` and ``0.0`` one key).

    A float32's bits read as int32 sort positive values correctly and negative ones backwards; flipping the
    negative ones and shifting the rest above them gives one order for all (``-inf`` lowest, ``inf`` highest).
    """
    bits = (scores.detach().float() + 0.0).view(torch.int32).to(torch.int64)  # + 0.0 turns -0.0 into 0.0
    return torch.where(bits < 0, -1 - bits, bits + 2**31)


def _kth_key(keys: list[torch.Tensor], k: int, group: Any) -> int:
    """The ``k``-th smallest (1-based) of all processes' ``keys``: radix select, 8 bits per round."""
    device = keys[0].device
    prefix, need = 0, k
    for shift in (24, 16, 8, 0):
        hist = torch.zeros(256, dtype=torch.int64, device=device)
        for key in keys:
            candidates = key[(key >> (shift + 8)) == prefix]  # keys whose higher digits are decided
            hist += torch.bincount((candidates >> shift) & 255, minlength=256)
        torch.distributed.all_reduce(hist, group=group)
        cumulative = hist.cumsum(0)
        digit = int(torch.searchsorted(cumulative, torch.tensor(need, device=device)))
        need -= int(cumulative[digit - 1]) if digit else 0
        prefix = prefix * 256 + digit
    return prefix


def _row_sharded(weight: torch.Tensor) -> bool:
    """Whether ``weight`` is a DTensor cut into row blocks in rank order (FSDP2's ``Shard(0)`` on a 1-D mesh)."""
    from torch.distributed.tensor import Shard

    return is_sharded(weight) and weight.device_mesh.ndim == 1 and tuple(weight.placements) == (Shard(0),)


def _via_full(
    fn: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
    scores: Mapping[str, torch.Tensor],
    weights: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """``fn`` on the gathered full scores, each resulting mask cut back to the local shard."""
    full = {name: gather_full(s, weights[name]) for name, s in scores.items()}
    return {name: shard_like(mask, weights[name]) for name, mask in fn(full).items()}


def sharded_unstructured_masks(
    scores: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor], sparsity: float
) -> dict[str, torch.Tensor]:
    """:func:`hf_lite.pruning.masks.global_unstructured_masks` over sharded weights: one threshold over all of
    them, exactly ``round(sparsity * total)`` entries pruned, returned as the local shards of the masks.

    A collective: every process calls it with its shards of the same weights in the same order.

    Args:
        scores: ``{name: local scores}``, shaped like each weight's local shard.
        weights: ``{name: DTensor weight}`` (only their layout is read).
        sparsity: total fraction to prune, in ``[0, 1)``.

    Returns:
        ``{name: bool mask of the local shard}``, equal to the local part of the single-process masks.
    """
    if not all(_row_sharded(weights[name]) for name in scores):
        return _via_full(lambda full: global_unstructured_masks(full, sparsity), scores, weights)
    group = next(iter(weights.values())).device_mesh.get_group()
    total = sum(weights[name].numel() for name in scores)
    k = pruned_count(total, sparsity)
    if k == 0 or k >= total:
        return {
            name: torch.full(s.shape, k == 0, dtype=torch.bool, device=s.device) for name, s in scores.items()
        }
    keys = [sortable_keys(s.reshape(-1)) for s in scores.values()]
    threshold = _kth_key(keys, k, group)
    # Per tensor: (entries below the threshold, ties at it) on this shard, then on every shard.
    counts = torch.tensor([[int((key < threshold).sum()), int((key == threshold).sum())] for key in keys])
    gathered = [torch.empty_like(counts) for _ in range(torch.distributed.get_world_size(group))]
    torch.distributed.all_gather(gathered, counts, group=group)
    rank = torch.distributed.get_rank(group)
    budget = k - sum(int(c[:, 0].sum()) for c in gathered)  # ties still to prune, in single-process order
    masks = {}
    for index, (name, key) in enumerate(zip(scores, keys, strict=True)):
        keep = key >= threshold
        for shard_rank, shard_counts in enumerate(gathered):
            take = min(budget, int(shard_counts[index, 1]))
            budget -= take
            if shard_rank == rank and take:
                keep[(key == threshold).nonzero().squeeze(1)[:take]] = False
        masks[name] = keep.reshape(scores[name].shape)
    return masks


def sharded_pruning_masks(
    scores: Mapping[str, torch.Tensor],
    weights: Mapping[str, torch.Tensor],
    sparsity: float,
    *,
    scope: str = "layer",
    nm: tuple[int, int] | None = None,
    dims: Mapping[str, int] | None = None,
) -> dict[str, torch.Tensor]:
    """The masks of a gradual pruning update on sharded weights, as ``PruningCallback`` computes them on full
    ones: ``scope="global"`` one threshold over all layers, ``"layer"`` one per layer, and with ``nm`` the
    ``sparsity`` fraction of each layer pruned among the ``m - n`` lowest of every group of ``m``.

    A collective (see :func:`sharded_unstructured_masks`). ``dims`` gives each layer's input-feature
    dimension (``-1`` for ``nn.Linear``, ``0`` for ``Conv1D``; needed with ``nm``).
    """
    if nm is None and scope == "global":
        return sharded_unstructured_masks(scores, weights, sparsity)
    masks = {}
    for name, s in scores.items():
        weight = weights[name]
        if nm is not None:
            dim = (dims or {}).get(name, -1) % s.dim()
            if _row_sharded(weight) and dim != 0:  # groups run along a row: inside this shard
                group_keep = nm_mask(s, *nm, dim=dim)
            else:  # Conv1D (groups down the rows) or another layout: the groups of the full scores

                def groups(full: dict[str, torch.Tensor], d: int = dim) -> dict[str, torch.Tensor]:
                    return {key: nm_mask(value, *nm, dim=d) for key, value in full.items()}

                group_keep = _via_full(groups, {name: s}, {name: weight})[name]
            s = s.masked_fill(group_keep, math.inf)
        masks[name] = sharded_unstructured_masks({name: s}, {name: weight}, sparsity)[name]
    return masks
