"""A compressed tensor decoded where it is consumed: into its destination, not into a new tensor first.

Error feedback consumes the two results of an exchange (this rank's ``C(u)``
and the ranks' mean) by adding them to its buffers or writing them out. Handed
over dense, each costs a new ``d``-element tensor, whose first touch on CPU can
cost more than the decode, and then a pass to add or copy it. A
:class:`LazyDelta` holds what is needed to decode and does it on use:

* :meth:`~LazyDelta.write_to` decodes straight into the destination (a linear
  compressor's mean: EF14's output, the DDP bucket);
* :meth:`~LazyDelta.add_to_` decodes into the buffer being updated when the
  compressor can accumulate (QSGD and sign decode ``t ± C(u)`` in one pass:
  EF14's ``e' = u − C(u)``, EF21's ``hᵢ += C(u)``), else through a new tensor;
* :meth:`~LazyDelta.to_dense` makes the new tensor, as before.

Same bits as decoding first, then adding (``t + v`` and ``t − v`` round
once either way; only a ``−0.0`` decoded value may leave a different zero
sign, as ``0 + v`` would have made it ``+0.0``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["LazyDelta"]


class LazyDelta:
    """A float32 tensor of ``shape``, decoded on use.

    ``decode(into)`` writes it into ``into`` (a contiguous float32 vector of
    ``shape.numel()``, or a new one for ``None``) and returns it.
    ``accumulate(t, subtract)``, when given, adds it to (or subtracts it from)
    a contiguous float32 vector ``t`` in place. Build one only from a payload
    already validated: decoding must not fail where it is consumed, after error
    feedback has updated its state.
    """

    def __init__(self, decode: Callable[[Tensor | None], Tensor], shape: torch.Size,
                 accumulate: Callable[[Tensor, bool], None] | None = None) -> None:
        self._decode = decode
        self._accumulate = accumulate
        self.shape = torch.Size(shape)

    def numel(self) -> int:
        return self.shape.numel()

    def to_dense(self) -> Tensor:
        """A new dense float32 tensor of ``shape``."""
        return self._decode(None).view(self.shape)

    def write_to(self, out: Tensor) -> Tensor:
        """``out`` ← this tensor (returned): decoded in place into a contiguous float32 ``out``, else copied in."""
        if out.shape != self.shape:
            raise ValueError(f"LazyDelta.write_to: out must have shape {tuple(self.shape)}, got {tuple(out.shape)}")
        if out.dtype == torch.float32 and out.is_contiguous():
            flat = out.view(-1)
            decoded = self._decode(flat)
            if decoded.data_ptr() != flat.data_ptr():  # a decode that does not honour ``into``
                flat.copy_(decoded.reshape(-1))
            return out
        return out.copy_(self.to_dense())

    def add_to_(self, t: Tensor, alpha: float = 1.0) -> Tensor:
        """``t += alpha·self`` in place; decoded into ``t`` itself when the compressor accumulates, ``alpha`` is
        ±1 and ``t`` a contiguous float32 tensor of ``shape``; else through a new dense tensor."""
        if self._accumulate is not None and alpha in (1.0, -1.0) and t.shape == self.shape \
                and t.dtype == torch.float32 and t.is_contiguous():
            self._accumulate(t.view(-1), alpha == -1.0)
            return t
        return t.add_(self.to_dense(), alpha=alpha)
