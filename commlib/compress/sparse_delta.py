"""A compressed message that is zero but at a few entries, in the form error feedback consumes cheapest.

Top-k's messages (this rank's ``C(u)`` and the mean of all ranks' ``C(u)``) are
zero but at ``k`` (resp. at most ``n·k``) entries. Handing them to error
feedback as dense tensors costs a pass over all ``d`` elements for each
(zero fill, division by ``n``, ``buffer += Δ``); as a :class:`SparseDelta` the
buffers are updated at the kept entries only, with the same bits (``b − 0 = b``;
``b + 0 = b`` but for ``b = −0.0``, which becomes ``+0.0`` on the dense path
and stays ``−0.0`` here). Flat int64 indices, unlike a sparse COO tensor's
per-dimension coordinates, cost nothing to make from top-k's flat ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SparseDelta"]


@dataclass(frozen=True)
class SparseDelta:
    """A float32 tensor of ``shape``, zero but at the flat ``indices`` (1-D int64, strictly increasing), where it
    holds ``values`` (1-D float32, one per index). Build one with :meth:`from_coo` or from a compressor's decode."""

    indices: Tensor
    values: Tensor
    shape: torch.Size

    def __post_init__(self) -> None:
        if not isinstance(self.indices, Tensor) or self.indices.dtype != torch.int64 or self.indices.dim() != 1:
            raise ValueError(f"SparseDelta indices must be a 1-D int64 tensor, got {self.indices!r}")
        if not isinstance(self.values, Tensor) or self.values.dtype != torch.float32 \
                or self.values.shape != self.indices.shape:
            raise ValueError(f"SparseDelta values must be float32, one per index ({self.indices.numel()}), got "
                             f"{getattr(self.values, 'dtype', self.values)} {tuple(getattr(self.values, 'shape', ()))}")
        object.__setattr__(self, "shape", torch.Size(self.shape))

    @classmethod
    def from_coo(cls, coo: Tensor) -> SparseDelta:
        """The same tensor from a sparse COO one (coalesced here; float32 values)."""
        coo = coo.coalesce()
        coords = coo.indices()
        strides = torch.tensor(_contiguous_strides(coo.shape), dtype=torch.int64, device=coords.device)
        flat = (coords * strides.unsqueeze(1)).sum(0) if coords.shape[0] else coords.new_zeros(coords.shape[1])
        return cls(flat, coo.values().to(torch.float32), coo.shape)

    def numel(self) -> int:
        """Elements of the dense tensor (not the number kept)."""
        return self.shape.numel()

    def to_dense(self) -> Tensor:
        """A fresh dense float32 tensor of ``shape``."""
        out = torch.zeros(self.numel(), dtype=torch.float32, device=self.values.device)
        out[self.indices] = self.values
        return out.view(self.shape)

    def write_to(self, out: Tensor) -> Tensor:
        """``out`` ← this tensor (returned): zeroed then filled at the kept entries when contiguous, else copied."""
        if out.shape != self.shape:
            raise ValueError(f"SparseDelta.write_to: out must have shape {tuple(self.shape)}, got {tuple(out.shape)}")
        return self.add_to_(out.zero_()) if out.is_contiguous() else out.copy_(self.to_dense())

    def add_to_(self, t: Tensor, alpha: float = 1.0) -> Tensor:
        """``t += alpha·self`` at the kept entries only; ``alpha`` is ``1`` or ``-1`` (``t − v`` bit for bit)."""
        if alpha not in (1.0, -1.0):
            raise ValueError(f"SparseDelta.add_to_: alpha must be 1 or -1, got {alpha!r}")
        if t.shape != self.shape or not t.is_contiguous():
            raise ValueError(f"SparseDelta.add_to_: needs a contiguous tensor of shape {tuple(self.shape)}, "
                             f"got {tuple(t.shape)}{'' if t.is_contiguous() else ' (not contiguous)'}")
        values = self.values if alpha == 1.0 else self.values.neg()
        t.view(-1).index_add_(0, self.indices, values.to(t.dtype))
        return t


def _contiguous_strides(shape: torch.Size) -> list[int]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return strides[::-1]
