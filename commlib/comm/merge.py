"""Run several protocols as one, merging their collectives round by round.

A bucket holds many parameters and each has its own protocol; issuing one
collective per parameter would pay the latency many times over. ``merge``
advances all protocols in lockstep and fuses each round into few collectives:

1. all ``AllGather`` payloads of the round become one byte buffer (each segment
   padded to 8 bytes), gathered once and split again;
2. ``AllReduce`` payloads with the same dtype and ``ordered`` flag are
   concatenated into one flat tensor, reduced once and split again;
3. ``Broadcast`` payloads with the same dtype and source likewise;
4. each ``AllToAll`` passes through unfused (its rows are per-destination, so
   concatenating two would interleave their chunks).

The fused collectives of a round are yielded together as one tuple, in an order
fixed by the protocols' structure, so every rank issues the same collectives.
Fusion never changes the bits: all-gathers only move bytes and reductions are
elementwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .collectives import AllGather, AllReduce, AllToAll, Broadcast, Collective, Protocol, Round, as_round

__all__ = ["merge", "fuse_round", "split_round"]

_ALIGN = 8


@dataclass
class _Slot:
    """Where one request's data lies inside a fused collective."""

    group: int
    offset: int
    length: int  # elements (bytes for gathers)
    request: Collective


def _as_bytes(t: Tensor) -> Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def fuse_round(requests: Sequence[Collective]) -> tuple[tuple[Collective, ...], list[_Slot]]:
    """Fuse one round of requests into few collectives; return them and the slots to split results."""
    keys: dict[tuple, int] = {}
    members: list[list[Tensor]] = []
    kinds: list[tuple] = []
    slots: list[_Slot] = []
    sizes: list[int] = []
    for req in requests:
        if isinstance(req, AllGather):
            key: tuple = ("gather",)
            data = _as_bytes(req.tensor)
            pad = (-data.numel()) % _ALIGN
            if pad:
                data = torch.cat([data, data.new_zeros(pad)])
        elif isinstance(req, AllReduce):
            key = ("reduce", req.tensor.dtype, req.ordered, req.tensor.device)
            data = req.tensor.detach().reshape(-1)
        elif isinstance(req, AllToAll):
            key = ("alltoall", len(slots))
            data = req.tensor.detach()
        else:
            key = ("broadcast", req.tensor.dtype, req.src, req.tensor.device)
            data = req.tensor.detach().reshape(-1)
        if key not in keys:
            keys[key] = len(members)
            members.append([])
            kinds.append(key)
            sizes.append(0)
        g = keys[key]
        length = req.tensor.numel() * (req.tensor.element_size() if key[0] == "gather" else 1)
        slots.append(_Slot(g, sizes[g], length, req))
        members[g].append(data)
        sizes[g] += data.numel()
    fused: list[Collective] = []
    for key, parts in zip(kinds, members):
        flat = torch.cat(parts) if len(parts) > 1 else parts[0]  # an AllToAll is always alone in its group
        if key[0] == "gather":
            fused.append(AllGather(flat))
        elif key[0] == "reduce":
            fused.append(AllReduce(flat, ordered=key[2]))
        elif key[0] == "alltoall":
            fused.append(AllToAll(flat))
        else:
            fused.append(Broadcast(flat, src=key[2]))
    return tuple(fused), slots


def split_round(results: object, slots: Sequence[_Slot]) -> list[Tensor]:
    """Split the results of a fused round back into one result per original request."""
    if not isinstance(results, (tuple, list)):
        results = (results,)
    out = []
    for slot in slots:
        req = slot.request
        whole = results[slot.group]
        if isinstance(req, AllGather):
            world = whole.shape[0]
            if slot.length == 0:
                part = req.tensor.new_empty((world, *req.tensor.shape))
            else:
                rows = whole.reshape(world, -1)[:, slot.offset : slot.offset + slot.length]
                part = rows.contiguous().view(req.tensor.dtype).reshape(world, *req.tensor.shape)
        elif isinstance(req, AllToAll):
            part = whole
        else:
            part = whole[slot.offset : slot.offset + slot.length].reshape(req.tensor.shape)
        out.append(part)
    return out


def merge(protocols: Sequence[Protocol]) -> Protocol[list]:
    """Run ``protocols`` in lockstep as one protocol; return the list of their results.

    Protocols may take different numbers of rounds: those that have finished
    simply drop out of later rounds.
    """
    results: list = [None] * len(protocols)
    pending: dict[int, tuple[Collective, ...]] = {}
    single: dict[int, bool] = {}

    def advance(i: int, value: object) -> None:
        try:
            request: Round = protocols[i].send(value)
        except StopIteration as stop:
            results[i] = stop.value
            pending.pop(i, None)
            return
        single[i] = not isinstance(request, tuple)
        pending[i] = as_round(request)

    for i in range(len(protocols)):
        advance(i, None)
    while pending:
        order = sorted(pending)
        flat = [req for i in order for req in pending[i]]
        fused, slots = fuse_round(flat)
        answer = yield fused
        parts = split_round(answer if isinstance(answer, (tuple, list)) else (answer,), slots)
        cursor = 0
        for i in order:
            n = len(pending[i])
            mine = parts[cursor : cursor + n]
            cursor += n
            advance(i, mine[0] if single[i] else tuple(mine))
    return results
