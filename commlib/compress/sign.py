"""Scaled sign compression, one bit per element (Karimireddy et al., ICML 2019, "EF-SignSGD").

The flat tensor is cut into chunks of ``chunk_size`` consecutive elements (the
last one shorter). A chunk ``x_c`` is sent as its sign bits and one float32
scale, the mean magnitude ``‖x_c‖₁/|c|``, and decodes to

    C(x_c) = (‖x_c‖₁/|c|) · sign(x_c),   sign(0) = +1.

This is the paper's scaled sign operator applied chunk by chunk; it is a
δ-approximate compressor with ``δ = min_c ‖x_c‖₁²/(|c|·‖x_c‖₂²)``, meant to be used
with error feedback.

Wire format (fixed by shape and config): one float32 scale per chunk,
then ``ceil(d/8)`` bytes of sign bits (bit 1 means ``x ≥ 0``), packed with
:func:`commlib.ops.pack_bits`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .. import ops
from .base import ScaledCodesCompressor, TensorContext

__all__ = ["Sign"]


@dataclass
class Sign(ScaledCodesCompressor):
    """One sign bit per element plus one float32 mean magnitude per chunk of ``chunk_size`` elements."""

    chunk_size: int = 1024
    name = "sign"

    def __post_init__(self) -> None:
        if isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ValueError(f"Sign chunk_size must be a positive integer, got {self.chunk_size!r}")

    @property
    def group_size(self) -> int:
        return self.chunk_size

    @property
    def code_bits(self) -> int:
        return 1

    def _lengths(self, numel: int, device: torch.device) -> Tensor:
        """Elements per chunk (float32): ``chunk_size`` for all but a shorter last chunk."""
        lengths = torch.full((self.num_groups(numel),), float(self.chunk_size), device=device)
        if numel % self.chunk_size:
            lengths[-1] = numel % self.chunk_size
        return lengths

    def encode(self, x: Tensor, ctx: TensorContext) -> Tensor:
        flat = x.reshape(-1).to(torch.float32)
        scales = self.groups(flat).abs().sum(dim=1).div_(self._lengths(flat.numel(), flat.device))
        if not bool(torch.isfinite(scales).all()):
            raise ValueError(f"sign: a chunk scale of {ctx.key!r} is not finite (NaN/Inf input or float32 overflow)")
        bits = ops.pack_bits((flat >= 0).to(torch.uint8), 1)
        return torch.cat([scales.view(torch.uint8), bits])

    def decode_add(self, payload: Tensor, out: Tensor, ctx: TensorContext, subtract: bool = False) -> None:
        numel = out.numel()
        scales, body = self.split_scaled(payload, out.shape, ctx)
        signs = ops.unpack_bits(body, 1, numel).to(torch.float32).mul_(2).sub_(1)
        out.add_(self.groups(signs).mul_(scales.unsqueeze(1)).reshape(-1)[:numel], alpha=-1.0 if subtract else 1.0)
