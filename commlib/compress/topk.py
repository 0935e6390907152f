"""Top-k sparsification by magnitude (Aji & Heafield 2017; Stich et al. 2018).

Each rank keeps the ``k = max(1, round(density·d))`` entries of largest
magnitude (ties to the lower index, see :func:`commlib.ops.topk_magnitude`;
selected by :func:`commlib.ops.topk_threshold`, a sampled threshold and one
streaming pass that returns exactly the same set),
sends them as fp32 values plus int32 indices (8 bytes per kept entry), and
every rank sums the n sparse tensors in rank order. The operator is
contractive: ``‖C(x) − x‖² ≤ (1 − k/d)·‖x‖²``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .. import ops
from ..comm.collectives import Protocol
from ..errors import WireFormatError
from .base import GatherCompressor, TensorContext, WireBytes, check_density
from .sparse_delta import SparseDelta

__all__ = ["TopK"]

_INT32_MAX = 2**31 - 1


@dataclass
class TopK(GatherCompressor):
    """Keep a fraction ``density`` (or a count ``k``) of entries per tensor, largest magnitude first."""

    density: float | None = None
    k: int | None = None
    name = "topk"

    def __post_init__(self) -> None:
        if (self.density is None) == (self.k is None):
            raise ValueError("TopK needs exactly one of density= or k=")
        if self.density is not None:
            check_density(self.density, "TopK")
        if self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1):
            raise ValueError(f"TopK k must be a positive integer, got {self.k!r}")

    def count(self, numel: int) -> int:
        """Entries kept from a tensor of ``numel`` elements."""
        if self.k is not None:
            if self.k > numel:
                raise ValueError(f"TopK k={self.k} exceeds the tensor's {numel} elements")
            return self.k
        return min(numel, max(1, round(self.density * numel)))

    def compressible(self, shape: torch.Size) -> bool:
        return shape.numel() > 0 and (self.k is None or self.k <= shape.numel())

    def payload_bytes(self, shape: torch.Size) -> int:
        return 8 * self.count(shape.numel())

    def wire_bytes(self, shape: torch.Size) -> WireBytes:
        k = self.count(shape.numel())
        return WireBytes(values=4 * k, indices=4 * k)

    def select(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The kept ``(values, int32 indices)`` of flat ``x``, sorted by index."""
        flat = x.reshape(-1)
        return ops.topk_threshold(flat, self.count(flat.numel()))

    def compress(self, x: Tensor, ctx: TensorContext | None = None) -> Tensor:
        """The dense tensor ``C(x)``: ``x`` with all but the top-k entries zeroed (``ctx`` unused: deterministic)."""
        values, idx = self.select(x)
        out = torch.zeros_like(x).reshape(-1)
        out[idx] = values
        return out.view_as(x)

    def encode(self, x: Tensor, ctx: TensorContext) -> Tensor:
        values, idx = self.select(x)
        return torch.cat([values.float().view(torch.uint8), idx.view(torch.uint8)])

    def decode_add(self, payload: Tensor, out: Tensor, ctx: TensorContext, subtract: bool = False) -> None:
        values, idx = self._read(payload, out.numel(), ctx)
        if subtract:
            out[idx] -= values
        else:
            out[idx] += values

    def exchange_local(self, x: Tensor, ctx: TensorContext,
                       sparse: bool = False) -> Protocol[tuple[Tensor | SparseDelta, Tensor | SparseDelta]]:
        """``(mean, local)``; with ``sparse``, both as :class:`SparseDelta` (the same values as dense).

        The sparse mean sums the ranks' entries in rank order from zero and
        divides by ``n`` (:func:`commlib.ops.sparse_mean_rows`), as the dense
        decode does, at the union of the kept indices only: no pass over ``d``.
        """
        if not sparse:
            return (yield from super().exchange_local(x, ctx))
        parts = yield from self._gather(x, ctx)
        return self.sparse_mean(parts, x.shape, ctx), self.decode_local(parts[ctx.rank], x.shape, ctx, sparse=True)

    def sparse_mean(self, parts: Tensor, shape: torch.Size, ctx: TensorContext) -> SparseDelta:
        """The mean of every rank's payload (rows of ``parts``) as a :class:`SparseDelta`; each row validated."""
        self.check_parts(parts, shape)
        k = parts.shape[1] // 8
        values = parts[:, : 4 * k].contiguous().view(torch.float32)
        indices = parts[:, 4 * k :].contiguous().view(torch.int32)
        _check_rows(indices, values, shape.numel(), ctx)
        union, mean = ops.sparse_mean_rows(indices, values, parts.shape[0])
        return SparseDelta(union, mean, shape)

    def decode_local(self, payload: Tensor, shape: torch.Size, ctx: TensorContext,
                     sparse: bool = False) -> Tensor | SparseDelta:
        """``C(x)`` from one payload; with ``sparse``, a :class:`SparseDelta` of ``shape`` (same values).

        Error feedback then updates its buffers at the ``k`` kept entries only,
        with the same bits as the dense ``C(x)`` would give (``b − 0 = b``),
        instead of passing over all ``d``.
        """
        if not sparse:
            return super().decode_local(payload, shape, ctx)
        values, idx = self._read(payload, shape.numel(), ctx)
        return SparseDelta(idx, values.clone(), shape)

    def _read(self, payload: Tensor, d: int, ctx: TensorContext) -> tuple[Tensor, Tensor]:
        """Validate one payload for a tensor of ``d`` elements: its ``(float32 values, int64 flat indices)``."""
        k = payload.numel() // 8
        values = payload[: 4 * k].view(torch.float32)
        idx = payload[4 * k :].view(torch.int32)
        _check_rows(idx.unsqueeze(0), values.unsqueeze(0), d, ctx)
        return values, idx.to(torch.int64)


def _check_rows(indices: Tensor, values: Tensor, d: int, ctx: TensorContext) -> None:
    """Raise :class:`WireFormatError` unless every row of ``indices`` (``(n, k)`` int32) is strictly increasing
    within ``[0, d)`` and every one of ``values`` is finite: all rows at once, a few passes over ``n·k``."""
    k = indices.shape[1]
    if k and (bool((indices[:, 0] < 0).any()) or (d <= _INT32_MAX and bool((indices[:, -1] >= d).any()))
              or (k > 1 and not bool((indices[:, 1:] > indices[:, :-1]).all()))):
        raise WireFormatError(f"topk: indices must be strictly increasing within [0, {d}) ({ctx.key})")
    if not ops.all_finite(values):
        raise WireFormatError(f"topk: non-finite values received ({ctx.key})")
