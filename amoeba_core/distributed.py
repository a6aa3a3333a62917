"""Work spread over the processes torchrun starts (``torch.distributed``; gloo on CPU, NCCL on GPUs).

Without torchrun every function here is a no-op on one process, so the same code runs alone or in a
group. Stage 2 (:mod:`amoeba_core.finetune`) splits each step's micro-batches over the ranks and
all-reduces gradients; Stage 1 and the search split the shapes an evaluator scores at once
(:func:`shard`: each rank scores its share, every rank gets every score). Rank 0 writes files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of an initialised ``torch.distributed`` group, else ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> tuple[int, int]:
    """Join the process group torchrun describes (``RANK``/``WORLD_SIZE`` in the environment): NCCL when
    CUDA is present, gloo on the CPU. Without torchrun nothing happens. Returns ``(rank, world_size)``."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return world()


def union(items: Sequence[T]) -> list[T]:
    """The items any rank holds, rank 0's first, the same list on every rank (a collective: every rank
    calls it). Ranks can disagree on what is left to do: one may have read a cache line another wrote."""
    rank, size = world()
    if size == 1:
        return list(items)
    import torch.distributed as dist

    parts: list[list[T] | None] = [None] * size
    dist.all_gather_object(parts, list(items))
    return list(dict.fromkeys(x for part in parts for x in part or []))


def shard(items: Sequence[T], fn: Callable[[list[T]], list[R]]) -> list[R]:
    """``fn(items)`` with the items dealt round-robin over the ranks: each rank computes ``fn`` of its
    share, the results are gathered (``all_gather_object``) and returned in the items' order on every
    rank. ``fn`` must return one picklable result per item; every rank must call this with the same
    items (as the DP's and the search's deterministic steps do)."""
    rank, size = world()
    items = list(items)
    if size == 1 or len(items) < 2:
        return fn(items)
    import torch.distributed as dist

    mine = fn(items[rank::size])
    parts: list[list[R] | None] = [None] * size
    dist.all_gather_object(parts, mine)
    out: list[R | None] = [None] * len(items)
    for r, part in enumerate(parts):
        out[r::size] = part  # type: ignore[assignment]
    return out  # type: ignore[return-value]


def local_device(device: str) -> str:
    """``--device`` for this process: in a group on a CUDA machine ``auto``/``cuda`` mean this rank's GPU
    (``cuda:LOCAL_RANK``); anything else is kept."""
    import torch

    if world()[1] > 1 and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device
