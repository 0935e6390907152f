"""Does compression pay? A compressor's predicted exchange time against plain fp32 all-reduce, from a TimeCost.

On a fast link the codec (top-k selection, quantization, decoding ``n``
payloads of an all-gather) can cost more than the bytes it saves; then the
runtime should send dense. :func:`compression_payoff` prices one step's
exchange of a model's tensors with :class:`~commlib.adaptive.cost.TimeCost`
(the model L-GreCo uses, Markov et al. MLSys 2024; fitted on the real process
group by :func:`~commlib.adaptive.cost.calibrate`), under the same rule
``GradientExchange`` applies (tensors of fewer than 2 dimensions or fewer than
``min_numel`` elements, and tensors the compressor cannot take, go dense):

1. dense price of a tensor: ``latency + 2(n−1)/n·4·numel·β`` (native ring all-reduce);
2. compressed price: the collectives the torch driver issues for it
   (:func:`~commlib.adaptive.cost.collective_seconds`) plus
   ``numel·(encode + decodes·decode)``: a gather compressor's payload is one
   all-gather (``n`` decodes); a cast's one native all-reduce; PowerSGD's
   ``P`` and ``Q`` and a linear compressor's (sketch) payload are rank-ordered
   all-reduces — an all-gather below ``SPLIT_MIN_BYTES``, an all-to-all plus an
   all-gather with ring traffic from there on; a tensor that stays dense in the
   compressed configuration goes through the exchange's ordered fp32 all-reduce;
3. compression pays when the compressed total is below the dense total.

:func:`codec_seconds` (from :mod:`.cost`) measures a compressor's ``(encode,
decode)`` seconds per element on one tensor, without communication; with a
process group every rank times at once and the result is max-reduced, so all
ranks decide alike and the times carry the contention of training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..compress import GatherCompressor, PowerSGD
from ..compress.base import Compressor
from .cost import TimeCost, collective_seconds, powersgd_payloads
from .measure import codec_seconds
from .options import CollectiveKind

__all__ = ["Payoff", "codec_seconds", "collective_of", "compression_payoff"]


@dataclass(frozen=True)
class Payoff:
    """Predicted seconds per step of the dense and the compressed exchange, and how many tensors compress."""

    dense_s: float
    compressed_s: float
    compressed_tensors: int

    @property
    def pays(self) -> bool:
        return self.compressed_s < self.dense_s

    @property
    def speedup(self) -> float:
        return self.dense_s / self.compressed_s if self.compressed_s > 0 else math.inf


def collective_of(compressor: Compressor) -> CollectiveKind:
    """The collective whose fit prices ``compressor``'s payload: all-reduce for casts, all-gather otherwise.

    Gather compressors all-gather; PowerSGD's and linear compressors' ordered
    all-reduces run as all-gathers or as all-to-all plus all-gather (step 2).
    """
    return "allreduce" if compressor.is_cast else "allgather"


def _compressed_seconds(compressor: Compressor, shape: torch.Size, cost: TimeCost, world_size: int) -> float:
    """Wire seconds of ``compressor``'s collectives for one tensor (step 2), without codec time."""
    if compressor.is_cast:
        return collective_seconds(cost, "allreduce", compressor.wire_bytes(shape).total, world_size)
    if isinstance(compressor, GatherCompressor):
        return collective_seconds(cost, "allgather", compressor.wire_bytes(shape).total, world_size)
    if isinstance(compressor, PowerSGD):
        payloads: Sequence[int] = powersgd_payloads(compressor, shape)
    else:
        payloads = [compressor.wire_bytes(shape).total]
    return sum(collective_seconds(cost, "allgather", p, world_size, ordered=True) for p in payloads)


def compression_payoff(
    compressor: Compressor,
    shapes: Sequence[Sequence[int]],
    cost: TimeCost,
    world_size: int,
    codec: tuple[float, float] = (0.0, 0.0),
    min_numel: int = 256,
) -> Payoff:
    """Price one step's exchange of tensors of ``shapes`` dense and with ``compressor`` (module docstring).

    A cast compressor takes every tensor (the exchange sends the whole bucket through its all-reduce).
    """
    if not isinstance(cost, TimeCost):
        raise TypeError(f"compression_payoff needs a TimeCost, got {type(cost).__name__}")
    if len(codec) != 2 or not all(math.isfinite(v) and v >= 0 for v in codec):
        raise ValueError(f"codec must be (encode, decode) finite seconds per element >= 0, got {codec!r}")
    decodes = world_size if isinstance(compressor, GatherCompressor) else 1
    dense_total = compressed_total = 0.0
    compressed = 0
    for raw in shapes:
        shape = torch.Size(raw)
        dense_total += collective_seconds(cost, "allreduce", 4 * shape.numel(), world_size)
        if not compressor.is_cast and (len(shape) < 2 or shape.numel() < min_numel
                                       or not compressor.compressible(shape)):
            compressed_total += collective_seconds(cost, "allgather", 4 * shape.numel(), world_size, ordered=True)
        else:
            compressed += 1
            compressed_total += (_compressed_seconds(compressor, shape, cost, world_size)
                                 + shape.numel() * (codec[0] + decodes * codec[1]))
    return Payoff(dense_total, compressed_total, compressed)
