"""Collective requests: the vocabulary in which every commlib protocol is written.

A *protocol* is a generator that yields collective requests and receives their
results (DESIGN.md, principle 2)::

    def exchange(x):
        total = yield AllReduce(x)          # receives the sum over ranks
        return total / world_size

A protocol may also yield a tuple of requests (one *round*); it then receives a
tuple of results, and the runtime may issue the requests concurrently. A
yielded tensor is handed over: a driver may reduce into it in place, so a
protocol yields tensors it no longer needs (fresh payloads, never its input). Drivers
(``torch_driver``, ``mpi_driver``, the simulator's ``LocalGroup``) execute the
requests; the protocol never knows which runtime it is in.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

__all__ = [
    "AllReduce",
    "AllGather",
    "AllToAll",
    "Broadcast",
    "Collective",
    "Protocol",
    "check_all_to_all",
    "ordered_sum",
    "as_round",
]

T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class AllReduce:
    """Sum of ``tensor`` over all ranks; the result has ``tensor``'s shape and dtype.

    ``ordered=True`` sums the ranks' tensors in rank order (0, 1, …, n-1) with
    :func:`ordered_sum`, so every rank and every runtime (DDP, simulator, MPI)
    gets the same bits; drivers implement it as an all-gather followed by that
    sum. ``ordered=False`` uses the backend's native all-reduce (bandwidth
    optimal, but its summation order is the backend's).
    """

    tensor: Tensor
    ordered: bool = True


@dataclass(frozen=True, eq=False)
class AllGather:
    """Every rank's ``tensor``, stacked: the result has shape ``(world_size, *tensor.shape)``."""

    tensor: Tensor


@dataclass(frozen=True, eq=False)
class Broadcast:
    """Rank ``src``'s ``tensor``, delivered to every rank."""

    tensor: Tensor
    src: int = 0


@dataclass(frozen=True, eq=False)
class AllToAll:
    """Personalised exchange: ``tensor`` has shape ``(world_size, *chunk)``; rank r sends ``tensor[j]`` to rank j.

    The result has ``tensor``'s shape; on rank r its row i is rank i's
    ``tensor[r]``. Every rank sends and receives ``(world_size − 1)/world_size``
    of the tensor, so a sharded runtime can give rank j the j-th slice of every
    rank's vector with no rank ever holding more than one vector's worth.
    """

    tensor: Tensor


Collective = AllReduce | AllGather | AllToAll | Broadcast
Round = Collective | tuple[Collective, ...]
Protocol = Generator[Round, object, T]


def as_round(request: Round) -> tuple[Collective, ...]:
    """Normalise what a protocol yielded to a tuple of requests, checking each."""
    requests = request if isinstance(request, tuple) else (request,)
    for r in requests:
        if not isinstance(r, (AllReduce, AllGather, AllToAll, Broadcast)):
            raise TypeError(
                f"a protocol yielded {type(r).__name__}; expected AllReduce, AllGather, AllToAll or Broadcast")
        if not isinstance(r.tensor, Tensor):
            raise TypeError(f"{type(r).__name__}.tensor must be a torch.Tensor, got {type(r.tensor).__name__}")
        if isinstance(r, AllToAll) and r.tensor.dim() == 0:
            raise ValueError("AllToAll.tensor must have a leading world_size dimension, got a 0-d tensor")
    return requests


def check_all_to_all(req: AllToAll, world_size: int) -> None:
    """Raise ValueError unless ``req.tensor``'s leading dimension is the world size."""
    if req.tensor.shape[0] != world_size:
        raise ValueError(f"AllToAll.tensor must have shape (world_size={world_size}, ...), "
                         f"got {tuple(req.tensor.shape)}")


def ordered_sum(parts: Sequence[Tensor] | Tensor) -> Tensor:
    """Sum ``parts[0] + parts[1] + … `` left to right, elementwise.

    This is the one reduction that every runtime uses for ordered all-reduces,
    so the bits never depend on the runtime, the bucket layout or the number of
    threads. 16-bit floats are accumulated in float32 and rounded once at the end.
    """
    if len(parts) == 0:
        raise ValueError("ordered_sum needs at least one tensor")
    dtype = parts[0].dtype
    acc_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    acc = parts[0].to(acc_dtype, copy=True)
    for part in parts[1:]:
        acc.add_(part.to(acc_dtype))
    return acc.to(dtype)
