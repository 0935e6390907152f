"""Does compression pay? A compressor's predicted exchange time against plain fp32 all-reduce, from a TimeCost.

On a fast link the codec (top-k selection, quantization, decoding ``n``
payloads of an all-gather) can cost more than the bytes it saves; then the
runtime should send dense. :func:`compression_payoff` prices one step's
exchange of a model's tensors with :class:`~commlib.adaptive.cost.TimeCost`
(the model L-GreCo uses, Markov et al. MLSys 2024; fitted on the real process
group by :func:`~commlib.adaptive.cost.calibrate`), under the same rule
``GradientExchange`` applies (tensors of fewer than 2 dimensions or fewer than
``min_numel`` elements, and tensors the compressor cannot take, go dense):

1. dense price of a tensor: ``latency + 2(n−1)/n·4·numel·β`` (ring all-reduce);
2. compressed price: ``rounds·latency + traffic·wire_bytes·β + numel·(encode + decodes·decode)``,
   where the collective is all-reduce for the dense casts and all-gather for
   everything else (gather compressors, and PowerSGD's and sketches'
   rank-ordered all-reduces: the torch driver runs those under
   ``SPLIT_MIN_BYTES`` as all-gathers and larger ones with ring traffic, so
   this over-prices the large ones), and an all-gather decodes ``n`` payloads;
3. compression pays when the compressed total is below the dense total.

:func:`codec_seconds` measures a compressor's ``(encode, decode)`` seconds per
element on one tensor, without communication (ranks should max-reduce it so
they all decide alike).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..compress import BF16, FP16, GatherCompressor, Identity, PowerSGD, TensorContext
from ..compress.base import Compressor
from .cost import TimeCost, traffic_factor
from .options import CollectiveKind

__all__ = ["Payoff", "codec_seconds", "collective_of", "compression_payoff"]

_CASTS = (Identity, FP16, BF16)


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
    """The collective carrying ``compressor``'s payload on the wire (see the module docstring, step 2)."""
    return "allreduce" if isinstance(compressor, _CASTS) else "allgather"


def codec_seconds(
    compressor: Compressor, shape: Sequence[int] = (1024, 1024), repeats: int = 3, seed: int = 0
) -> tuple[float, float]:
    """``(encode, decode)`` seconds per element, the best of ``repeats`` on one Gaussian tensor of ``shape``.

    Gather compressors time ``encode`` and one ``decode_add``; the others run
    their whole exchange on one in-process worker and count it as encoding.
    """
    from ..comm.local import run_lockstep

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats!r}")
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    if not compressor.compressible(x.shape):
        raise ValueError(f"{type(compressor).__name__} cannot compress the timing shape {tuple(shape)}")
    ctx = TensorContext(key="codec", step=0, seed=seed, rank=0, world_size=1)
    enc = dec = math.inf
    for _ in range(repeats):
        if isinstance(compressor, GatherCompressor):
            out = torch.zeros(x.numel())  # allocated outside the timed region
            start = time.perf_counter()
            payload = compressor.encode(x, ctx)
            mid = time.perf_counter()
            compressor.decode_add(payload, out, ctx)
            enc, dec = min(enc, mid - start), min(dec, time.perf_counter() - mid)
        else:
            start = time.perf_counter()
            run_lockstep([compressor.exchange(x, ctx)])
            enc, dec = min(enc, time.perf_counter() - start), 0.0
    return enc / x.numel(), dec / x.numel()


def compression_payoff(
    compressor: Compressor,
    shapes: Sequence[Sequence[int]],
    cost: TimeCost,
    world_size: int,
    codec: tuple[float, float] = (0.0, 0.0),
    min_numel: int = 256,
) -> Payoff:
    """Price one step's exchange of tensors of ``shapes`` dense and with ``compressor`` (module docstring)."""
    if not isinstance(cost, TimeCost):
        raise TypeError(f"compression_payoff needs a TimeCost, got {type(cost).__name__}")
    if len(codec) != 2 or not all(math.isfinite(v) and v >= 0 for v in codec):
        raise ValueError(f"codec must be (encode, decode) finite seconds per element >= 0, got {codec!r}")
    dense_factor = traffic_factor("allreduce", world_size)
    kind = collective_of(compressor)
    rounds = 2 if isinstance(compressor, PowerSGD) else 1
    decodes = world_size if isinstance(compressor, GatherCompressor) else 1
    dense_total = compressed_total = 0.0
    compressed = 0
    for raw in shapes:
        shape = torch.Size(raw)
        dense = cost.latency["allreduce"] + dense_factor * 4 * shape.numel() * cost.seconds_per_byte["allreduce"]
        dense_total += dense
        if len(shape) < 2 or shape.numel() < min_numel or not compressor.compressible(shape):
            compressed_total += dense
            continue
        compressed += 1
        wire = traffic_factor(kind, world_size) * compressor.wire_bytes(shape).total
        compressed_total += (rounds * cost.latency[kind] + wire * cost.seconds_per_byte[kind]
                             + shape.numel() * (codec[0] + decodes * codec[1]))
    return Payoff(dense_total, compressed_total, compressed)
