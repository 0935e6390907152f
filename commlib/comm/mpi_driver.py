"""Drive protocols over an mpi4py communicator (blocking).

Each request maps to one MPI call on host (CPU) buffers: ``AllGather`` →
``Allgather``; ``AllReduce(ordered=True)`` → ``Allgather`` then
:func:`~commlib.comm.collectives.ordered_sum` (the same bits as every other
runtime); ``AllReduce(ordered=False)`` → ``Allreduce(SUM)``; ``Broadcast`` →
``Bcast``; ``AllToAll`` → ``Alltoall`` (equal blocks, one per rank). Tensors
travel as raw bytes, so bfloat16 needs no MPI datatype.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .collectives import AllGather, AllReduce, AllToAll, Collective, Protocol, as_round, check_all_to_all, ordered_sum

__all__ = ["run"]


def _bytes(t: Tensor) -> Any:
    """A uint8 NumPy view of contiguous CPU tensor ``t`` (shares its memory)."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def _execute(req: Collective, comm: Any) -> Tensor:
    from mpi4py import MPI

    src = req.tensor.detach().cpu().contiguous()
    world = comm.Get_size()
    if isinstance(req, AllToAll):
        check_all_to_all(req, world)
        received = torch.empty_like(src)
        comm.Alltoall(_bytes(src), _bytes(received))  # the byte buffers split into ``world`` equal blocks
        return received.to(req.tensor.device)
    if isinstance(req, AllReduce) and not req.ordered:
        if src.dtype == torch.bfloat16:
            raise TypeError("native MPI all-reduce has no bfloat16 type; use AllReduce(ordered=True)")
        out = torch.empty_like(src)
        comm.Allreduce(src.numpy(), out.numpy(), op=MPI.SUM)
        return out.to(req.tensor.device)
    if isinstance(req, (AllGather, AllReduce)):
        out = torch.empty((world, *src.shape), dtype=src.dtype)
        comm.Allgather(_bytes(src), _bytes(out))  # _bytes(out) is a view: MPI fills ``out`` in place
        result = ordered_sum(out) if isinstance(req, AllReduce) else out
        return result.to(req.tensor.device)
    buf = src.clone()
    comm.Bcast(_bytes(buf), root=req.src)
    return buf.to(req.tensor.device)


def run(protocol: Protocol, comm: Any) -> object:
    """Run ``protocol`` to completion on the mpi4py communicator ``comm``; return its result."""
    value: object = None
    while True:
        try:
            request = protocol.send(value)
        except StopIteration as stop:
            return stop.value
        results = [_execute(r, comm) for r in as_round(request)]
        value = results[0] if not isinstance(request, tuple) else tuple(results)
