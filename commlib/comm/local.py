"""Run protocols locally: n virtual workers in lockstep, collectives computed in-process.

This is the simulator's transport and the reference semantics of every
collective: ``AllReduce(ordered=True)`` is :func:`ordered_sum` in rank order,
exactly as the torch.distributed and MPI drivers compute it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import ProtocolMismatchError
from .collectives import AllGather, AllReduce, AllToAll, Collective, Protocol, as_round, check_all_to_all, ordered_sum

__all__ = ["run_lockstep", "execute_local"]


def _check_match(requests: Sequence[Collective]) -> None:
    first = requests[0]
    for rank, req in enumerate(requests[1:], start=1):
        same = (
            type(req) is type(first)
            and req.tensor.dtype == first.tensor.dtype
            and req.tensor.shape == first.tensor.shape
            and getattr(req, "ordered", None) == getattr(first, "ordered", None)
            and getattr(req, "src", None) == getattr(first, "src", None)
        )
        if not same:
            raise ProtocolMismatchError(
                f"collective mismatch: rank 0 issued {type(first).__name__}{tuple(first.tensor.shape)} "
                f"{first.tensor.dtype}, rank {rank} issued {type(req).__name__}{tuple(req.tensor.shape)} "
                f"{req.tensor.dtype}"
            )


def execute_local(requests: Sequence[Collective]) -> list[Tensor]:
    """Compute one collective for all workers: ``requests[r]`` is rank r's request; returns each rank's result."""
    _check_match(requests)
    first = requests[0]
    n = len(requests)
    if isinstance(first, AllGather):
        stacked = torch.stack([r.tensor.detach() for r in requests])
        return [stacked.clone() for _ in range(n)]
    if isinstance(first, AllReduce):
        total = ordered_sum([r.tensor.detach() for r in requests])
        return [total.clone() for _ in range(n)]
    if isinstance(first, AllToAll):
        for req in requests:
            check_all_to_all(req, n)
        return [torch.stack([req.tensor.detach()[r] for req in requests]) for r in range(n)]
    src = requests[first.src].tensor.detach()
    return [src.clone() for _ in range(n)]


def run_lockstep(protocols: Sequence[Protocol]) -> list:
    """Advance one protocol per virtual worker in lockstep; return their results in rank order.

    Raises ``ProtocolMismatchError`` when the workers disagree on the number,
    kind, dtype or shape of their collectives — the error a real process group
    would turn into a hang or a size mismatch.
    """
    n = len(protocols)
    results: list = [None] * n
    sends: list = [None] * n
    done = [False] * n
    while True:
        rounds: list[tuple[Collective, ...] | None] = []
        single: list[bool] = []
        for r, proto in enumerate(protocols):
            try:
                req = proto.send(sends[r])
            except StopIteration as stop:
                results[r] = stop.value
                done[r] = True
                rounds.append(None)
                single.append(True)
                continue
            single.append(not isinstance(req, tuple))
            rounds.append(as_round(req))
        if all(done):
            return results
        if any(done):
            ended = [r for r in range(n) if done[r]]
            raise ProtocolMismatchError(f"ranks {ended} finished their protocol while others issued more collectives")
        lengths = {len(rd) for rd in rounds}
        if len(lengths) != 1:
            raise ProtocolMismatchError(f"workers issued rounds of different sizes: {[len(rd) for rd in rounds]}")
        per_rank: list[list[Tensor]] = [[] for _ in range(n)]
        for j in range(lengths.pop()):
            outs = execute_local([rd[j] for rd in rounds])
            for r in range(n):
                per_rank[r].append(outs[r])
        sends = [per_rank[r][0] if single[r] else tuple(per_rank[r]) for r in range(n)]
