"""The ranks' mean of a compressed tensor, decoded where it is consumed.

A linear compressor's mean is a transform of the summed payload that writes
every element (a sketch's ``Rᵀȳ/n``). Returned dense by ``exchange_local``, it
costs a new ``d``-element tensor, whose first touch on CPU can cost more than
the transform, and then a copy when error feedback outputs it (EF14: the mean
is the step's output, written into the DDP bucket). A :class:`LazyMean` holds
the validated sum and decodes when consumed: :meth:`~LazyMean.write_to` decodes
straight into the destination; :meth:`~LazyMean.to_dense` and
:meth:`~LazyMean.add_to_` decode into a new tensor, as before. Same bits either
way: it is the same decode.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["LazyMean"]


class LazyMean:
    """A float32 tensor of ``shape``: ``decode(into)`` writes it into ``into`` (a contiguous float32 vector of
    ``shape.numel()``, or a new one for ``None``) and returns it. Build it only from a payload already
    validated: decoding must not fail where it is consumed (after error feedback has updated its state)."""

    def __init__(self, decode: Callable[[Tensor | None], Tensor], shape: torch.Size) -> None:
        self._decode = decode
        self.shape = torch.Size(shape)

    def numel(self) -> int:
        return self.shape.numel()

    def to_dense(self) -> Tensor:
        """A new dense float32 tensor of ``shape``."""
        return self._decode(None).view(self.shape)

    def write_to(self, out: Tensor) -> Tensor:
        """``out`` ← the mean (returned): decoded in place into a contiguous float32 ``out``, else copied in."""
        if out.shape != self.shape:
            raise ValueError(f"LazyMean.write_to: out must have shape {tuple(self.shape)}, got {tuple(out.shape)}")
        if out.dtype == torch.float32 and out.is_contiguous():
            flat = out.view(-1)
            decoded = self._decode(flat)
            if decoded.data_ptr() != flat.data_ptr():  # a decode that does not honour ``into``
                flat.copy_(decoded.reshape(-1))
            return out
        return out.copy_(self.to_dense())

    def add_to_(self, t: Tensor, alpha: float = 1.0) -> Tensor:
        """``t += alpha·mean`` (decodes into a new tensor first: the sum's rounding needs the whole mean)."""
        return t.add_(self.to_dense(), alpha=alpha)
